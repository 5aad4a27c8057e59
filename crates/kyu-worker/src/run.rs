//! The worker's main loop: claim into free slots, run handlers, shut down.

use std::collections::{HashMap, VecDeque};
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
    /// A handler finished and freed its slot.
    freed: tokio::sync::Notify,
    /// Handlers' recent run time, microseconds (a moving average; `u64::MAX`
    /// until one has finished): how far ahead claims may go.
    run_avg_us: std::sync::atomic::AtomicU64,
    /// The claim loop has a backlog to claim: reports can wait for its next claim.
    pub claiming: std::sync::atomic::AtomicBool,
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
            freed: tokio::sync::Notify::new(),
            run_avg_us: std::sync::atomic::AtomicU64::new(u64::MAX),
            claiming: std::sync::atomic::AtomicBool::new(false),
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
        if let Err(e) = shared.store.flush().await {
            tracing::warn!(error = %e, "writing the last per-minute statistics failed");
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

/// Claims at the store at once: while one is on its way, the next can go,
/// so a worker is not held to one round trip per batch. A worker whose
/// claims are capped below what it can hold (`batch`, as HTTP workers set
/// it) keeps more on their way, up to [`MOST_CLAIMS_IN_FLIGHT`], enough to
/// fill it: measured on W1 over HTTP (claims of 50), four in flight
/// processed 8-10 % more than two; through the Rust API, whose claims
/// are not capped, two and four measured the same.
fn claims_in_flight(capacity: usize, batch: usize) -> usize {
    capacity.div_ceil(batch.max(1)).clamp(2, MOST_CLAIMS_IN_FLIGHT)
}

/// See [`claims_in_flight`].
const MOST_CLAIMS_IN_FLIGHT: usize = 4;

/// Jobs are claimed ahead of free slots only as far as they would start
/// within this, judging by how long handlers have been taking: a job held
/// in the worker is claimed (its time limit running) but not started.
const PREFETCH_WAIT: Duration = Duration::from_millis(50);

/// A claim that came back from the store.
struct Claimed {
    reports: Vec<Report>,
    asked: usize,
    result: Result<(Vec<Result<kyu_store::JobState, kyu_store::StoreError>>, kyu_store::ClaimResult), kyu_store::StoreError>,
}

/// How many jobs to hold beyond the handlers' slots: none until handlers
/// have shown they are short; then as many as start within [`PREFETCH_WAIT`],
/// at most `prefetch`.
fn prefetch_allowance<S>(shared: &Shared<S>) -> usize {
    let cfg = &shared.config;
    let avg_us = shared.run_avg_us.load(std::sync::atomic::Ordering::Relaxed);
    let most = cfg.most_prefetch();
    if most == 0 || avg_us == u64::MAX {
        return 0;
    }
    let starts = PREFETCH_WAIT.as_micros() as u64 * cfg.concurrency as u64 / avg_us.max(1);
    (starts as usize).min(most)
}

/// Claims into free slots (and, while the queue has a backlog and handlers
/// are short, a little ahead of them), up to [`claims_in_flight`] claims at
/// once, each carrying the reports that finished since the last; starts
/// held jobs as slots free. Returns once told to stop (jobs held but not
/// started are given back, attempt not spent) or done.
async fn claim_loop<S: Store>(shared: &Arc<Shared<S>>, tracker: &TaskTracker, shutdown: &CancellationToken) -> End {
    let cfg = &shared.config;
    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    let mut events = shared.store.subscribe();
    let mut error_pause = Duration::from_millis(50);
    let mut claimed_total: u64 = 0;
    let mut held: VecDeque<(ClaimedJob, CancellationToken)> = VecDeque::new();
    let mut inflight: tokio::task::JoinSet<Claimed> = tokio::task::JoinSet::new();
    let mut asked_inflight = 0usize;
    // Set when a claim came back short (nothing more ready) or failed: no
    // claim goes out until news arrives or `idle_until` passes.
    let mut idle = false;
    let mut idle_until = tokio::time::Instant::now();
    loop {
        while !held.is_empty() {
            let Ok(permit) = slots.clone().try_acquire_owned() else { break };
            let (job, cancel) = held.pop_front().expect("not empty");
            tracker.spawn(run_job(shared.clone(), job, cancel, permit));
        }
        let left = cfg.max_jobs.map(|m| m.saturating_sub(claimed_total + asked_inflight as u64));
        let stopping = shutdown.is_cancelled() || left == Some(0);
        if stopping && inflight.is_empty() {
            if shutdown.is_cancelled() {
                give_back(shared, held);
                return End::Shutdown;
            }
            if held.is_empty() {
                return End::Done;
            }
        }
        // Nothing more is ready: a burst worker is done once its last jobs are.
        if cfg.burst && idle && inflight.is_empty() && held.is_empty() && tracker.is_empty() && shared.reports.is_empty() {
            return End::Done;
        }
        shared.claiming.store(!stopping && !idle, std::sync::atomic::Ordering::Relaxed);
        let capacity = cfg.concurrency + prefetch_allowance(shared);
        let batch = cfg.claim_size(capacity);
        if !stopping && !idle && inflight.len() < claims_in_flight(capacity, batch) {
            let running = cfg.concurrency - slots.available_permits();
            let mut want = capacity.saturating_sub(running + held.len() + asked_inflight).min(batch);
            if let Some(l) = left {
                want = want.min(l as usize);
            }
            // A second claim waits until it is worth a round trip.
            let worth = if inflight.is_empty() { 1 } else { (batch / 2).max(1) };
            if want >= worth {
                let params = JobClaimParams {
                    queues: cfg.queues.clone(),
                    worker: cfg.name.clone(),
                    max: want,
                    lease_ms: cfg.lease.as_millis() as i64,
                };
                // Finished jobs' reports ride along with the claim.
                let reports = shared.reports.take();
                let store = shared.store.clone();
                asked_inflight += want;
                inflight.spawn(async move {
                    let result = store.job_report_and_claim(reports.clone(), params).await;
                    Claimed { reports, asked: want, result }
                });
                continue;
            }
        }
        let idle_wait = idle && inflight.is_empty() && !stopping;
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                let Ok(done) = done else { continue };
                asked_inflight -= done.asked;
                match done.result {
                    Ok((reported, c)) => {
                        reporter::settle(shared, &done.reports, reported);
                        error_pause = Duration::from_millis(50);
                        let got = c.jobs.len();
                        claimed_total += got as u64;
                        for job in c.jobs {
                            let cancel = CancellationToken::new();
                            let entry = Running {
                                token: job.token.clone(),
                                lease_expires_at: job.lease_expires_at,
                                cancel: cancel.clone(),
                                reported: false,
                            };
                            shared.running.lock().expect("running map").insert(job.id.clone(), entry);
                            held.push_back((job, cancel));
                        }
                        if got < done.asked {
                            // Events that arrived during the claim count, so
                            // none is missed between claim and wait.
                            idle = !drain_relevant(&mut events, &cfg.queues);
                            let mut wait = cfg.poll_interval;
                            if let Some(at) = c.next_run_at {
                                let until = (at.0 - shared.store.clock().now().0).max(0) as u64;
                                wait = wait.min(Duration::from_millis(until));
                            }
                            if cfg.burst {
                                // Look again as soon as a running job finishes
                                // (its report rides with the next claim) or
                                // anything becomes ready.
                                wait = wait.min(Duration::from_millis(50));
                            }
                            idle_until = tokio::time::Instant::now() + wait;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claim failed; retrying in {error_pause:?}");
                        shared.reports.put_back(done.reports);
                        idle = true;
                        idle_until = tokio::time::Instant::now() + error_pause;
                        error_pause = (error_pause * 2).min(Duration::from_secs(2));
                    }
                }
            }
            _ = shared.freed.notified() => {
                // Handlers that finish together free their slots a few
                // microseconds apart; one yield lets them all land, so the
                // next claim (and the reports it carries) covers a batch.
                if slots.available_permits() + 1 < cfg.batch.map_or(cfg.concurrency, |b| b.min(cfg.concurrency)) {
                    tokio::task::yield_now().await;
                }
            }
            _ = tokio::time::sleep_until(idle_until), if idle_wait => idle = false,
            _ = next_relevant(&mut events, &cfg.queues), if idle_wait => idle = false,
        }
    }
}

/// Jobs claimed but not started when the worker stops go back to their
/// queue at once, the attempt not spent, for another worker to take.
fn give_back<S>(shared: &Shared<S>, held: VecDeque<(ClaimedJob, CancellationToken)>) {
    for (job, _) in held {
        if let Some(r) = shared.running.lock().expect("running map").get_mut(&job.id) {
            r.reported = true;
        }
        shared.reports.push(Report { id: job.id, token: job.token, outcome: Outcome::Snooze { delay_ms: 0 } });
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
    let started = std::time::Instant::now();
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
    let took = started.elapsed().as_micros() as u64;
    let avg = &shared.run_avg_us;
    let _ = avg.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |a| {
        Some(if a == u64::MAX { took } else { a - a / 8 + took / 8 })
    });
    drop(permit);
    shared.freed.notify_one();
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
