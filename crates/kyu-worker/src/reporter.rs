//! Reports and heartbeats go to the store in batches: many handlers
//! finishing at once cost one store call, not one each.

use std::sync::Arc;
use std::time::Duration;

use kyu_core::JobId;
use kyu_store::{JobHeartbeatParams, Report, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::run::Shared;

/// Most reports per store call.
const MAX_BATCH: usize = 1000;
/// Attempts at a batch the store could not take (busy, unreachable) before
/// leaving those jobs to lease expiry, which retries them.
const MAX_TRIES: u32 = 12;

pub(crate) async fn report_loop<S: Store>(
    shared: Arc<Shared<S>>,
    mut rx: mpsc::UnboundedReceiver<Report>,
    done: CancellationToken,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            // Every handler has finished by now: drain what is left, then stop.
            _ = done.cancelled() => match rx.try_recv() { Ok(r) => r, Err(_) => return },
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        send(&shared, std::mem::take(&mut batch)).await;
    }
}

async fn send<S: Store>(shared: &Shared<S>, batch: Vec<Report>) {
    let keys: Vec<(JobId, String)> = batch.iter().map(|r| (r.id.clone(), r.token.clone())).collect();
    let mut pause = Duration::from_millis(50);
    for attempt in 1..=MAX_TRIES {
        match shared.store.job_report_many(batch.clone()).await {
            Ok(results) => {
                for ((id, _), r) in keys.iter().zip(results) {
                    if let Err(e) = r {
                        tracing::warn!(job = %id, error = %e, "report refused");
                    }
                }
                break;
            }
            Err(e) if attempt < MAX_TRIES => {
                tracing::warn!(error = %e, jobs = batch.len(), "report failed; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "giving up on reports; lease expiry will retry these jobs");
            }
        }
    }
    let mut running = shared.running.lock().expect("running map");
    for (id, token) in keys {
        if running.get(&id).is_some_and(|r| r.token == token) {
            running.remove(&id);
        }
    }
}

/// Extends every running job's lease every lease/3, and passes on operator
/// cancels (and lost leases) to the handlers.
pub(crate) async fn heartbeat_loop<S: Store>(shared: Arc<Shared<S>>, done: CancellationToken) {
    let lease = shared.config.lease;
    let every = (lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let jobs: Vec<(JobId, String)> = {
            let running = shared.running.lock().expect("running map");
            running.iter().map(|(id, r)| (id.clone(), r.token.clone())).collect()
        };
        if jobs.is_empty() {
            continue;
        }
        let params = JobHeartbeatParams { jobs: jobs.clone(), lease_ms: lease.as_millis() as i64 };
        match shared.store.job_heartbeat_many(params).await {
            Ok(results) => {
                let running = shared.running.lock().expect("running map");
                for ((id, token), r) in jobs.into_iter().zip(results) {
                    let Some(entry) = running.get(&id).filter(|e| e.token == token) else { continue };
                    match r {
                        Ok(hb) if hb.cancel_requested => entry.cancel.cancel(),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(job = %id, error = %e, "lease lost; stopping its handler");
                            entry.cancel.cancel();
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
