//! kyu-store: the storage seam between kyu and its databases.
//!
//! [`Store`] is implemented by `kyu-sqlite` and `kyu-postgres`, and the
//! `kyu-storetest` conformance suite runs the same cases against each.
//! Internal seam: changes here are not breaking changes for users, who reach
//! kyu through the worker runtime, the HTTP API and the CLI.
//!
//! Methods are domain operations named noun-then-verb, each taking one params
//! struct. Batch methods are the normal case: on SQLite one call is one
//! closure in one transaction on the writer thread, on PostgreSQL one round
//! trip, so a worker reporting 50 completions pays for one, not 50.
#![warn(missing_docs)]

mod error;
mod params;

use std::future::Future;

pub use error::{BoxError, StoreError};
pub use params::*;

use kyu_core::tally::{StatsPoint, WorkerInfo};
use kyu_core::timeline::JobEvent;
use kyu_core::{Clock, Job, JobId, QueueInfo};
use tokio::sync::broadcast;

/// Storage for jobs and queues. Every method that changes state does so in
/// one transaction; see each method for what it guarantees.
pub trait Store: Clone + Send + Sync + 'static {
    /// Inserts jobs atomically: all of them or none. A job whose id exists,
    /// or whose `unique_key` is taken, creates nothing and comes back as a
    /// duplicate naming the existing job. A dependency must already exist or
    /// come earlier in the same batch (so no cycle can ever be made); an
    /// unknown one refuses the whole batch with [`StoreError::Invalid`].
    fn job_insert_many(
        &self,
        p: JobInsertManyParams,
    ) -> impl Future<Output = Result<Vec<Inserted>, StoreError>> + Send;

    /// Claims up to `max` claimable jobs from `queues` in priority, then
    /// `run_at`, then enqueue order; each gets a lease and a fresh token and
    /// its attempt counted. Respects pause, concurrency and rate limits.
    fn job_claim(&self, p: JobClaimParams) -> impl Future<Output = Result<ClaimResult, StoreError>> + Send;

    /// Applies the reports of finished attempts. Each is checked against its
    /// token separately: a stale or misdirected report is refused in its slot
    /// of the answer and changes nothing, without affecting the others. The
    /// outer error means none was applied.
    fn job_report_many(
        &self,
        reports: Vec<Report>,
    ) -> impl Future<Output = Result<Vec<Result<JobState, StoreError>>, StoreError>> + Send;

    /// Applies `reports`, then claims: what a worker with finished jobs and
    /// free slots does in one call, so one transaction (SQLite) or one round
    /// trip (PostgreSQL) carries both. The default does them one after the other.
    fn job_report_and_claim(
        &self,
        reports: Vec<Report>,
        claim: JobClaimParams,
    ) -> impl Future<Output = Result<(Vec<Result<JobState, StoreError>>, ClaimResult), StoreError>> + Send {
        async move {
            let reported = if reports.is_empty() { Vec::new() } else { self.job_report_many(reports).await? };
            let claimed = self.job_claim(claim).await?;
            Ok((reported, claimed))
        }
    }

    /// Extends the leases of running jobs and tells each whether it was asked to stop.
    fn job_heartbeat_many(
        &self,
        p: JobHeartbeatParams,
    ) -> impl Future<Output = Result<Vec<Result<Heartbeat, StoreError>>, StoreError>> + Send;

    /// A running job adds child jobs, fenced by its token. With `wait`, the
    /// job moves to `waiting` in the same transaction (lease released,
    /// attempt given back, the children added to its `depends_on`) and
    /// becomes claimable again once every child completed, its checkpoint
    /// intact and the children's results in `dependency_results`.
    fn job_add_children(&self, p: JobAddChildrenParams) -> impl Future<Output = Result<AddedChildren, StoreError>> + Send;

    /// Saves a running job's checkpoint and/or progress, fenced by its token.
    fn job_save(&self, p: JobSaveParams) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One job, if it exists.
    fn job_get(&self, id: &JobId) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;

    /// Jobs newest first, filtered, a page at a time.
    fn job_list(&self, p: JobListParams) -> impl Future<Output = Result<JobPage, StoreError>> + Send;

    /// Operator cancel. A queued, scheduled or waiting job ends `cancelled`
    /// at once; a running one gets `cancel_requested` and ends when its
    /// worker reports or its lease expires. A terminal job is a conflict.
    fn job_cancel(&self, id: &JobId) -> impl Future<Output = Result<Job, StoreError>> + Send;

    /// Operator retry of a `failed` or `cancelled` job: back to `queued` with
    /// a fresh set of attempts. Other states are a conflict. With
    /// `dependents`, the jobs that failed only because of it go back to
    /// `waiting` ([`kyu_core::dependency::plan_revival`]).
    fn job_retry(&self, p: JobRetryParams) -> impl Future<Output = Result<Job, StoreError>> + Send;

    /// Appends lines to a running job's log, under its current attempt,
    /// fenced by its token. Each attempt keeps at most
    /// [`kyu_core::log::MAX_ATTEMPT_BYTES`]; older lines give way.
    fn job_log_append(&self, p: JobLogAppendParams) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A job's log, oldest first; where lines gave way, a marker line says
    /// how many.
    fn job_log(&self, p: JobLogParams) -> impl Future<Output = Result<Vec<LogLine>, StoreError>> + Send;

    /// A job's timeline, oldest first ([`kyu_core::timeline`]).
    fn job_events(&self, id: &JobId) -> impl Future<Output = Result<Vec<JobEvent>, StoreError>> + Send;

    /// Bulk redrive of the dead-letter set by filter; returns how many.
    fn job_retry_many(&self, p: JobRetryManyParams) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Bulk delete of the dead-letter set (failed or cancelled jobs) by
    /// filter, with their logs; returns how many.
    fn job_delete_many(&self, p: JobRetryManyParams) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Removes a job that is not running.
    fn job_delete(&self, id: &JobId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Fails every running job whose lease has expired (`"lease expired"`,
    /// the attempt counted, retried per its policy) and moves due scheduled
    /// jobs to `queued`. Safe to run on every node at once.
    fn job_rescue(&self) -> impl Future<Output = Result<RescueCounts, StoreError>> + Send;

    /// Deletes finished jobs past their retention, at most `batch` per call.
    fn job_prune(&self, p: JobPruneParams) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every known queue with its settings and counts.
    fn queue_list(&self) -> impl Future<Output = Result<Vec<QueueInfo>, StoreError>> + Send;

    /// Changes a queue's settings (creating it if new) and returns it.
    fn queue_update(&self, p: QueueUpdateParams) -> impl Future<Output = Result<QueueInfo, StoreError>> + Send;

    /// Creates or replaces a schedule (keeping its `created_at` and `last_run_at`).
    fn schedule_put(&self, p: SchedulePutParams) -> impl Future<Output = Result<kyu_core::Schedule, StoreError>> + Send;

    /// One schedule, if it exists.
    fn schedule_get(&self, name: &str) -> impl Future<Output = Result<Option<kyu_core::Schedule>, StoreError>> + Send;

    /// Every schedule, by name.
    fn schedule_list(&self) -> impl Future<Output = Result<Vec<kyu_core::Schedule>, StoreError>> + Send;

    /// Removes a schedule (jobs it enqueued stay).
    fn schedule_delete(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Compare-and-set of `next_run_at`: of several nodes that fired the same
    /// tick, exactly one moves the schedule on. True if this call did.
    fn schedule_advance(&self, p: ScheduleAdvanceParams) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records that a worker is alive, creating or refreshing its entry.
    fn worker_seen(&self, p: WorkerSeenParams) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Workers seen in the last [`kyu_core::tally::WORKER_GONE_MS`], by
    /// name, each with the jobs it runs now.
    fn worker_list(&self) -> impl Future<Output = Result<Vec<WorkerInfo>, StoreError>> + Send;

    /// Per-minute statistics per queue, oldest first, cluster-wide.
    fn stats(&self, p: StatsParams) -> impl Future<Output = Result<Vec<StatsPoint>, StoreError>> + Send;

    /// Who learns of each committed change in this process (metrics, live views).
    fn observers(&self) -> &Observers;

    /// Events after commit: jobs available on a queue, a job finished.
    /// A hint, never the source of truth: a lagged receiver re-checks the store.
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;

    /// Asks for a [`StoreEvent::JobFinished`] when `id` ends, whichever
    /// process ends it. Stores may announce only the ends someone asked for
    /// (on PostgreSQL each announcement costs every listening connection a
    /// transaction), so a waiter calls this after subscribing and before
    /// reading the job's state. Unknown or finished jobs are not an error.
    fn job_watch(&self, id: &JobId) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = id;
        async { Ok(()) }
    }

    /// Writes what the store holds in memory for at most a second (per-minute
    /// statistics, see [`kyu_core::tally::PendingStats`]). Stores do this on
    /// their own; a process calls it before it exits so nothing is left.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// Whether events arrive from other processes too (PostgreSQL's
    /// LISTEN/NOTIFY) or only from this one (SQLite), so waiters know how
    /// often they must poll.
    fn supports_listen_notify(&self) -> bool;

    /// The store's clock; tests move it forward.
    fn clock(&self) -> &Clock;
}

/// Re-exported so callers name states through the store crate too.
pub use kyu_core::JobState;
