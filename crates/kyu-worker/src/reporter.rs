//! Reports and heartbeats go to the store in batches: many handlers
//! finishing at once cost one store call, not one each.
//!
//! Finished jobs' reports wait in a shared buffer. When the claim loop has
//! free slots it takes them all and sends them with its claim, one store
//! call (one transaction on SQLite) for both; measured on W1, this halved
//! the transactions per job. When no claim comes soon (slots busy with long
//! jobs) the reporter sends them on its own after a short linger.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kyu_core::JobId;
use kyu_core::transition::Failure;
use kyu_store::{JobHeartbeatParams, JobState, Outcome, Report, Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::run::Shared;

/// How long the reporter leaves reports for the claim loop to carry.
const LINGER: Duration = Duration::from_millis(2);
/// The same while the claim loop is busy claiming (a backlog): its next
/// claim goes out within a few milliseconds and carries them, one
/// transaction for both.
const LINGER_CLAIMING: Duration = Duration::from_millis(20);
/// Attempts at a batch the store could not take (busy, unreachable) before
/// leaving those jobs to lease expiry, which retries them.
const MAX_TRIES: u32 = 12;

/// Reports waiting to be sent.
#[derive(Default)]
pub(crate) struct Reports {
    buf: Mutex<Vec<Report>>,
    ready: Notify,
}

impl Reports {
    pub fn push(&self, r: Report) {
        self.buf.lock().expect("report buffer").push(r);
        self.ready.notify_one();
    }

    pub fn is_empty(&self) -> bool {
        self.buf.lock().expect("report buffer").is_empty()
    }

    pub fn take(&self) -> Vec<Report> {
        std::mem::take(&mut *self.buf.lock().expect("report buffer"))
    }

    /// Returns reports whose sending failed, so the reporter tries again.
    pub fn put_back(&self, mut reports: Vec<Report>) {
        let mut buf = self.buf.lock().expect("report buffer");
        reports.append(&mut buf);
        *buf = reports;
        drop(buf);
        self.ready.notify_one();
    }
}

pub(crate) async fn report_loop<S: Store>(shared: Arc<Shared<S>>, done: CancellationToken) {
    loop {
        tokio::select! {
            _ = shared.reports.ready.notified() => {}
            // Every handler has finished by now: flush what is left, then stop.
            // A refused completion comes back as a failure to send: send
            // until nothing is left.
            _ = done.cancelled() => loop {
                let last = shared.reports.take();
                if last.is_empty() {
                    return;
                }
                send(&shared, last).await;
            },
        }
        let claiming = shared.claiming.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(if claiming { LINGER_CLAIMING } else { LINGER }).await;
        let batch = shared.reports.take();
        if !batch.is_empty() {
            send(&shared, batch).await;
        }
    }
}

async fn send<S: Store>(shared: &Shared<S>, batch: Vec<Report>) {
    let mut pause = Duration::from_millis(50);
    for attempt in 1..=MAX_TRIES {
        match shared.store.job_report_many(batch.clone()).await {
            Ok(results) => return settle(shared, &batch, results),
            Err(e) if attempt < MAX_TRIES => {
                tracing::warn!(error = %e, jobs = batch.len(), "report failed; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "giving up on reports; lease expiry will retry these jobs");
                let nothing: Vec<Result<JobState, StoreError>> = Vec::new();
                settle(shared, &batch, nothing);
            }
        }
    }
}

/// Logs refused reports and forgets the reported jobs, so heartbeats stop.
/// A completion refused for what it carries (a result over the server's
/// size limit, say) is turned into a failure without retry and sent again,
/// so the attempt ends now rather than at its lease.
pub(crate) fn settle<S: Store>(shared: &Shared<S>, batch: &[Report], results: Vec<Result<JobState, StoreError>>) {
    let mut again = Vec::new();
    for (r, res) in batch.iter().zip(results) {
        match res {
            Err(StoreError::Invalid(e)) if matches!(r.outcome, Outcome::Complete { .. }) => {
                tracing::warn!(job = %r.id, error = %e, "result refused; failing the attempt");
                let error = if e.too_large { e.message.clone() } else { format!("result refused: {e}") };
                let failure = Failure { retry: false, retry_in_ms: None };
                again.push(Report { id: r.id.clone(), token: r.token.clone(), outcome: Outcome::Fail { error, failure } });
            }
            Err(e) => tracing::warn!(job = %r.id, error = %e, "report refused"),
            Ok(_) => {}
        }
    }
    let mut running = shared.running.lock().expect("running map");
    for r in batch {
        if again.iter().any(|a| a.id == r.id) {
            continue;
        }
        if running.get(&r.id).is_some_and(|e| e.token == r.token) {
            running.remove(&r.id);
        }
    }
    drop(running);
    for r in again {
        shared.reports.push(r);
    }
}

/// Extends every running job's lease every lease/3, and passes on operator
/// cancels (and lost leases) to the handlers. A failed heartbeat (store
/// unreachable, a network blip to the server) is not a lost lease: it is
/// tried again soon, with backoff, and a job's handler is stopped only once
/// its lease has really run out, when another worker may hold the job.
pub(crate) async fn heartbeat_loop<S: Store>(shared: Arc<Shared<S>>, done: CancellationToken) {
    let lease = shared.config.lease;
    let every = (lease / 3).max(Duration::from_millis(10));
    let mut wait = every;
    let mut retry = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let jobs: Vec<(JobId, String)> = {
            let running = shared.running.lock().expect("running map");
            running.iter().map(|(id, r)| (id.clone(), r.token.clone())).collect()
        };
        if jobs.is_empty() {
            wait = every;
            continue;
        }
        let params = JobHeartbeatParams { jobs: jobs.clone(), lease_ms: lease.as_millis() as i64 };
        match shared.store.job_heartbeat_many(params).await {
            Ok(results) => {
                wait = every;
                retry = Duration::from_millis(100);
                let mut running = shared.running.lock().expect("running map");
                for ((id, token), r) in jobs.into_iter().zip(results) {
                    let Some(entry) = running.get_mut(&id).filter(|e| e.token == token && !e.reported) else { continue };
                    match r {
                        Ok(hb) => {
                            entry.lease_expires_at = hb.lease_expires_at;
                            if hb.cancel_requested {
                                entry.cancel.cancel();
                            }
                        }
                        Err(e) if e.is_transient() => {}
                        Err(e) => {
                            tracing::warn!(job = %id, error = %e, "lease lost; stopping its handler");
                            entry.cancel.cancel();
                        }
                    }
                }
            }
            Err(e) => {
                // Stop only the handlers whose lease has run out meanwhile.
                let now = shared.store.clock().now();
                let running = shared.running.lock().expect("running map");
                let mut lost = 0;
                for entry in running.values().filter(|e| !e.reported && e.lease_expires_at < now) {
                    entry.cancel.cancel();
                    lost += 1;
                }
                tracing::warn!(error = %e, leases_run_out = lost, "heartbeat failed; trying again in {retry:?}");
                wait = retry.min(every);
                retry = (retry * 2).min(every);
            }
        }
    }
}
