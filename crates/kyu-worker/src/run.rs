//! The worker's main loop: claim into free slots, run handlers, shut down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kyu_core::transition::Failure;
use kyu_core::{ClaimedJob, JobId};
use kyu_store::{JobClaimParams, Outcome, Report, Store, StoreEvent, WorkerSeenParams};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::{JobContext, Saver};
use crate::error::{ErrorKind, JobError};
use crate::worker::{Handlers, Worker, WorkerConfig};
use crate::reporter;

/// State shared by the claim loop, the handlers, the reporter and the heartbeater.
pub(crate) struct Shared<S> {
    pub store: S,
    pub config: WorkerConfig,
    handlers: Handlers,
    /// Jobs claimed and not yet reported, by id: what heartbeats extend.
    pub running: Mutex<HashMap<JobId, Running>>,
    /// Finished jobs' reports, until the claim loop or the reporter sends them.
    pub reports: reporter::Reports,
    /// Set when the shutdown grace period runs out: handlers are aborted and
    /// their jobs released.
    hard_stop: CancellationToken,
}

pub(crate) struct Running {
    pub token: String,
    /// The lease as last extended; past it, another worker may hold the job.
    pub lease_expires_at: kyu_core::Millis,
    /// The handler's cancel signal (operator cancel, lost lease, timeout).
    pub cancel: CancellationToken,
    /// The handler finished and its report is on the way: a heartbeat
    /// refused now is a race with that report, not a lost lease.
    pub reported: bool,
}

impl<S: Store> Worker<S> {
    /// Runs until `shutdown` is cancelled, then stops claiming, waits up to
    /// the shutdown grace period for running handlers, releases the jobs of
    /// those still running (so other workers take them at once, with the
    /// attempt given back), flushes reports, and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let shared = Arc::new(Shared {
            store: self.store,
            config: self.config,
            handlers: Arc::new((self.handlers, self.fallback)),
            running: Mutex::new(HashMap::new()),
            reports: reporter::Reports::default(),
            hard_stop: CancellationToken::new(),
        });
        let background = CancellationToken::new();
        let reporter = tokio::spawn(reporter::report_loop(shared.clone(), background.clone()));
        let heartbeater = tokio::spawn(reporter::heartbeat_loop(shared.clone(), background.clone()));
        let presence = tokio::spawn(presence_loop(shared.clone(), background.clone()));
        let tracker = TaskTracker::new();
        let maintenance = shared
            .config
            .maintenance
            .map(|m| tokio::spawn(crate::run_maintenance(shared.store.clone(), m, background.clone())));

        let end = claim_loop(&shared, &tracker, &shutdown).await;

        tracker.close();
        if end == End::Done {
            // max_jobs reached or drained (burst): let the jobs in hand
            // finish, unless told to stop meanwhile.
            tokio::select! {
                _ = tracker.wait() => {}
                _ = shutdown.cancelled() => {}
            }
        }
        let grace = shared.config.shutdown_grace;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(running = tracker.len(), "shutdown grace period over; releasing running jobs");
            shared.hard_stop.cancel();
            tracker.wait().await;
        }
        background.cancel();
        let _ = reporter.await;
        let _ = heartbeater.await;
        let _ = presence.await;
        if let Some(m) = maintenance {
            let _ = m.await;
        }
    }
}

/// Keeps this worker listed in `GET /v1/workers`: at start, then every
/// [`PRESENCE_EVERY`]. A failure is logged and tried again next time.
async fn presence_loop<S: Store>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let cfg = &shared.config;
    let runs = cfg.runs.clone().unwrap_or_else(|| {
        let mut kinds: Vec<&str> = shared.handlers.0.keys().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds.join(", ")
    });
    let hello = WorkerSeenParams {
        name: cfg.name.clone(),
        host: Some(crate::worker::host_name()),
        pid: Some(i64::from(std::process::id())),
        queues: cfg.queues.clone(),
        concurrency: Some(cfg.concurrency as i64),
        runs: Some(runs),
    };
    let mut every = tokio::time::interval(PRESENCE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {
                if let Err(e) = shared.store.worker_seen(hello.clone()).await {
                    tracing::debug!(error = %e, "could not record this worker as alive");
                }
            }
        }
    }
}

/// How often a worker says it is alive (well inside
/// [`kyu_core::tally::WORKER_GONE_MS`]).
const PRESENCE_EVERY: Duration = Duration::from_secs(30);

/// Why the claim loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Told to stop.
    Shutdown,
    /// `max_jobs` claimed, or (burst) nothing left to do.
    Done,
}

async fn claim_loop<S: Store>(shared: &Arc<Shared<S>>, tracker: &TaskTracker, shutdown: &CancellationToken) -> End {
    let cfg = &shared.config;
    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    let mut events = shared.store.subscribe();
    let mut error_pause = Duration::from_millis(50);
    let mut claimed_total: u64 = 0;
    loop {
        let left = cfg.max_jobs.map(|m| m.saturating_sub(claimed_total));
        if left == Some(0) {
            return End::Done;
        }
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return End::Shutdown,
            p = slots.clone().acquire_owned() => p.expect("slots are never closed"),
        };
        let mut permits = vec![first];
        // Handlers that finish together free their slots a few microseconds
        // apart; one yield lets them all land, so this claim (and the reports
        // it carries) covers a batch rather than one job at a time.
        if slots.available_permits() + 1 < cfg.batch {
            tokio::task::yield_now().await;
        }
        let batch = left.map_or(cfg.batch, |l| cfg.batch.min(l as usize));
        while permits.len() < batch {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let asked = permits.len();
        let params = JobClaimParams {
            queues: cfg.queues.clone(),
            worker: cfg.name.clone(),
            max: asked,
            lease_ms: cfg.lease.as_millis() as i64,
        };
        // Finished jobs' reports ride along with the claim.
        let reports = shared.reports.take();
        let claimed = match shared.store.job_report_and_claim(reports.clone(), params).await {
            Ok((reported, c)) => {
                reporter::settle(shared, &reports, reported);
                error_pause = Duration::from_millis(50);
                c
            }
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; retrying in {error_pause:?}");
                shared.reports.put_back(reports);
                drop(permits);
                tokio::select! {
                    _ = shutdown.cancelled() => return End::Shutdown,
                    _ = tokio::time::sleep(error_pause) => {}
                }
                error_pause = (error_pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let got = claimed.jobs.len();
        claimed_total += got as u64;
        for job in claimed.jobs {
            let permit = permits.pop().expect("never more jobs than permits");
            let cancel = CancellationToken::new();
            let entry = Running { token: job.token.clone(), lease_expires_at: job.lease_expires_at, cancel: cancel.clone(), reported: false };
            shared.running.lock().expect("running map").insert(job.id.clone(), entry);
            tracker.spawn(run_job(shared.clone(), job, cancel, permit));
        }
        drop(permits);
        if got == asked {
            continue;
        }
        // Nothing more is ready: a burst worker is done once its last jobs are.
        if cfg.burst && got == 0 && tracker.is_empty() && shared.reports.is_empty() {
            return End::Done;
        }
        // Fewer jobs than free slots: wait for news. Events that arrived
        // during the claim count, so none is missed between claim and wait.
        if drain_relevant(&mut events, &cfg.queues) {
            continue;
        }
        let mut wait = cfg.poll_interval;
        if let Some(at) = claimed.next_run_at {
            let until = (at.0 - shared.store.clock().now().0).max(0) as u64;
            wait = wait.min(Duration::from_millis(until));
        }
        if cfg.burst {
            // Look again as soon as a running job finishes (its report rides
            // with the next claim) or anything becomes ready.
            wait = wait.min(Duration::from_millis(50));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return End::Shutdown,
            _ = tokio::time::sleep(wait) => {}
            _ = next_relevant(&mut events, &cfg.queues) => {}
        }
    }
}

fn relevant(ev: &StoreEvent, queues: &[kyu_core::QueueName]) -> bool {
    matches!(ev, StoreEvent::JobsAvailable(q) if queues.contains(q))
}

/// Whether an event for our queues is already waiting (a lagged receiver
/// counts: something was missed, so look).
fn drain_relevant(events: &mut broadcast::Receiver<StoreEvent>, queues: &[kyu_core::QueueName]) -> bool {
    let mut found = false;
    loop {
        match events.try_recv() {
            Ok(ev) => found |= relevant(&ev, queues),
            Err(broadcast::error::TryRecvError::Lagged(_)) => found = true,
            Err(_) => return found,
        }
    }
}

async fn next_relevant(events: &mut broadcast::Receiver<StoreEvent>, queues: &[kyu_core::QueueName]) {
    loop {
        match events.recv().await {
            Ok(ev) if relevant(&ev, queues) => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            // The store is gone; only the poll timer is left.
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

async fn run_job<S: Store>(shared: Arc<Shared<S>>, mut job: ClaimedJob, cancel: CancellationToken, permit: OwnedSemaphorePermit) {
    let id = job.id.clone();
    let token = job.token.clone();
    let timeout = job.timeout_ms.map(|ms| Duration::from_millis(ms.max(0) as u64));
    let handler = shared.handlers.0.get(&job.kind).or(shared.handlers.1.as_ref()).cloned();
    let outcome = match handler {
        None => Some(Outcome::Fail {
            error: format!("no handler for kind `{}` on worker {}", job.kind, shared.config.name),
            failure: Failure { retry: true, retry_in_ms: None },
        }),
        Some(handler) => {
            let payload = std::mem::take(&mut job.payload);
            let ctx = JobContext::new(job, cancel.clone(), saver(&shared.store));
            let task = tokio::spawn(handler(payload, ctx));
            supervise(task, timeout, &cancel, &shared.hard_stop, shared.config.abort_grace).await
        }
    };
    let outcome = outcome.map(|o| checked(o, shared.config.max_result_bytes));
    // The reporter removes the job from `running` once the report is applied,
    // so heartbeats keep its lease alive until then.
    match outcome {
        Some(outcome) => {
            if let Some(r) = shared.running.lock().expect("running map").get_mut(&id) {
                r.reported = true;
            }
            shared.reports.push(Report { id, token, outcome })
        }
        // Waiting for children: the store released the job already.
        None => {
            shared.running.lock().expect("running map").remove(&id);
        }
    }
    drop(permit);
}

/// Waits for a handler, enforcing its timeout, an operator's cancel and the
/// worker's hard stop, and turns how it ended into a report (none when the
/// job went to wait for its children).
async fn supervise(
    mut task: JoinHandle<Result<Value, JobError>>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    hard_stop: &CancellationToken,
    grace: Duration,
) -> Option<Outcome> {
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    enum Stop {
        Timeout,
        Cancelled,
        Shutdown,
    }
    let stop = tokio::select! {
        r = &mut task => return outcome_of(r),
        _ = deadline => Stop::Timeout,
        _ = cancel.cancelled() => Stop::Cancelled,
        _ = hard_stop.cancelled() => Stop::Shutdown,
    };
    cancel.cancel();
    let fail = |error: &str| Some(Outcome::Fail { error: error.into(), failure: Failure { retry: true, retry_in_ms: None } });
    match stop {
        // The shutdown grace is over: the handler is told to stop and gets
        // the abort grace to clean up (a `kyu work` command gets SIGTERM,
        // then SIGKILL). Its job is released for another worker, attempt
        // given back, unless it completed meanwhile.
        Stop::Shutdown => {
            let finished = tokio::select! {
                r = &mut task => Some(r),
                _ = tokio::time::sleep(grace) => None,
            };
            match finished {
                Some(Ok(Ok(result))) => Some(Outcome::Complete { result }),
                Some(_) => Some(Outcome::Snooze { delay_ms: 0 }),
                None => {
                    task.abort();
                    Some(Outcome::Snooze { delay_ms: 0 })
                }
            }
        }
        Stop::Timeout => {
            tokio::select! {
                _ = &mut task => {}
                _ = tokio::time::sleep(grace) => task.abort(),
                _ = hard_stop.cancelled() => task.abort(),
            }
            fail("timeout")
        }
        // Asked to stop: a result that still arrives is accepted (the work
        // happened); a failure ends the job cancelled (the store sees the
        // request); silence past the grace period is aborted.
        Stop::Cancelled => tokio::select! {
            r = &mut task => outcome_of(r),
            _ = tokio::time::sleep(grace) => {
                task.abort();
                fail("cancelled")
            }
            _ = hard_stop.cancelled() => {
                task.abort();
                Some(Outcome::Snooze { delay_ms: 0 })
            }
        },
    }
}

fn outcome_of(r: Result<Result<Value, JobError>, tokio::task::JoinError>) -> Option<Outcome> {
    Some(match r {
        Ok(Ok(result)) => Outcome::Complete { result },
        Ok(Err(e)) => match e.kind {
            ErrorKind::Retry { after } => Outcome::Fail {
                error: e.message,
                failure: Failure { retry: true, retry_in_ms: after.map(|d| d.as_millis() as i64) },
            },
            ErrorKind::Fatal => Outcome::Fail { error: e.message, failure: Failure { retry: false, retry_in_ms: None } },
            ErrorKind::Snooze(d) => Outcome::Snooze { delay_ms: d.as_millis() as i64 },
            ErrorKind::Waiting => return None,
        },
        Err(join) => {
            let error = if join.is_panic() {
                let p = join.into_panic();
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                format!("handler panicked: {msg}")
            } else {
                "handler aborted".into()
            };
            Outcome::Fail { error, failure: Failure { retry: true, retry_in_ms: None } }
        }
    })
}

/// A completion the store could not take (a result over the size limit, a
/// NUL character) fails its attempt at once, without retry: the same
/// result would be refused again, and leaving the job to its lease would
/// retry it for nothing.
pub(crate) fn checked(outcome: Outcome, max_result_bytes: usize) -> Outcome {
    let Outcome::Complete { result } = &outcome else { return outcome };
    let size = serde_json::to_string(result).map_or(0, |s| s.len());
    let problem = if size > max_result_bytes {
        Some(format!("result is {size} bytes, over the limit of {max_result_bytes}"))
    } else {
        outcome.check().err().map(|e| format!("result refused: {e}"))
    };
    match problem {
        Some(error) => Outcome::Fail { error, failure: Failure { retry: false, retry_in_ms: None } },
        None => outcome,
    }
}

fn saver<S: Store>(store: &S) -> Saver {
    Arc::new(store.clone())
}
