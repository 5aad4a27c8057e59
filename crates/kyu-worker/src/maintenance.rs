//! Background upkeep any live node may run, and every one safely can:
//! expired leases are rescued, due scheduled jobs promoted, finished jobs
//! pruned past their retention, cron schedules fired. Each pass is one short store transaction,
//! so running it on every node at once costs little and needs no leader.

use std::time::Duration;

use kyu_store::{JobPruneParams, Store};
use tokio_util::sync::CancellationToken;

/// How often each task runs.
#[derive(Clone, Copy, Debug)]
pub struct MaintenanceConfig {
    /// Lease reaper and scheduled promotion.
    pub rescue_every: Duration,
    /// Retention pruner (DESIGN: at least every 30 s).
    pub prune_every: Duration,
    /// Rows per prune transaction.
    pub prune_batch: usize,
    /// Cron schedules (see [`crate::scheduler_pass`]); `None` turns them off.
    pub schedule_every: Option<Duration>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            rescue_every: Duration::from_secs(1),
            prune_every: Duration::from_secs(15),
            prune_batch: 1000,
            schedule_every: Some(Duration::from_secs(1)),
        }
    }
}

/// Runs rescue and prune passes until `stop` is cancelled.
pub async fn run_maintenance<S: Store>(store: S, config: MaintenanceConfig, stop: CancellationToken) {
    let mut rescue = tokio::time::interval(config.rescue_every);
    let mut prune = tokio::time::interval(config.prune_every);
    let mut schedules = tokio::time::interval(config.schedule_every.unwrap_or(Duration::from_secs(3600)));
    schedules.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = rescue.tick() => match store.job_rescue().await {
                Ok(c) if c.expired > 0 => tracing::info!(expired = c.expired, "rescued jobs with expired leases"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "lease rescue failed"),
            },
            _ = schedules.tick(), if config.schedule_every.is_some() => {
                if let Err(e) = crate::scheduler_pass(&store).await {
                    tracing::warn!(error = %e, "scheduler pass failed");
                }
            }
            _ = prune.tick() => {
                // Keep going while full batches come back, one short
                // transaction at a time.
                loop {
                    match store.job_prune(JobPruneParams { batch: config.prune_batch }).await {
                        Ok(n) if n as usize == config.prune_batch && !stop.is_cancelled() => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "prune failed");
                            break;
                        }
                    }
                }
            }
        }
    }
}
