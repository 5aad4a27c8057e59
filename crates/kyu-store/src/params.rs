//! Parameters and answers of [`crate::Store`] methods.

pub use kyu_core::transition::{Failure, Outcome};
use kyu_core::{ValidationError, validate};
use kyu_core::{ClaimedJob, Job, JobId, JobState, Millis, NewJob, QueueName, RateLimit};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Jobs to insert in one transaction.
#[derive(Clone, Debug, Default)]
pub struct JobInsertManyParams {
    /// In order; a dependency must come before its dependents.
    pub jobs: Vec<NewJob>,
}

/// One inserted (or found duplicate) job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inserted {
    /// The job's id: the new job's, or the existing one's for a duplicate.
    pub id: JobId,
    /// State after the insert.
    pub state: JobState,
    /// Nothing was created: the id or unique key was already taken.
    pub duplicate: bool,
}

/// Most jobs one claim may take.
pub const MAX_CLAIM: usize = 10_000;

/// A claim request.
#[derive(Clone, Debug)]
pub struct JobClaimParams {
    /// Queues to take from.
    pub queues: Vec<QueueName>,
    /// Name recorded on the job, for operators.
    pub worker: String,
    /// Most jobs to claim.
    pub max: usize,
    /// Lease length.
    pub lease_ms: i64,
}

impl JobClaimParams {
    /// Checks the worker name, the batch size and the lease; both backends
    /// call this before claiming.
    pub fn check(&self) -> Result<(), ValidationError> {
        validate::label("worker", &self.worker)?;
        if self.max > MAX_CLAIM {
            return Err(ValidationError::new("max", format!("at most {MAX_CLAIM}")));
        }
        validate::positive_duration("lease_ms", self.lease_ms).map(|_| ())
    }
}

/// What a claim returned.
#[derive(Clone, Debug, Default)]
pub struct ClaimResult {
    /// The claimed jobs, each with its token.
    pub jobs: Vec<ClaimedJob>,
    /// When fewer than `max` were claimed: the earliest `run_at` of a
    /// scheduled job in those queues, so an idle worker knows when to look again.
    pub next_run_at: Option<Millis>,
}

/// A worker's report on one claimed job.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The job.
    pub id: JobId,
    /// Its claim token.
    pub token: String,
    /// How it ended.
    pub outcome: Outcome,
}

/// Leases to extend.
#[derive(Clone, Debug)]
pub struct JobHeartbeatParams {
    /// `(id, token)` of each running job.
    pub jobs: Vec<(JobId, String)>,
    /// New lease length from now.
    pub lease_ms: i64,
}

impl JobHeartbeatParams {
    /// Checks the lease; both backends call this first.
    pub fn check(&self) -> Result<(), ValidationError> {
        validate::positive_duration("lease_ms", self.lease_ms).map(|_| ())
    }
}

/// Answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The new lease end.
    pub lease_expires_at: Millis,
    /// An operator asked the job to stop.
    pub cancel_requested: bool,
}

/// A checkpoint and/or progress write by a running job.
#[derive(Clone, Debug)]
pub struct JobSaveParams {
    /// The job.
    pub id: JobId,
    /// Its claim token.
    pub token: String,
    /// New checkpoint, if any.
    pub checkpoint: Option<Value>,
    /// New progress, if any.
    pub progress: Option<Value>,
}

/// Children added by a running job.
#[derive(Clone, Debug)]
pub struct JobAddChildrenParams {
    /// The running (parent) job.
    pub id: JobId,
    /// Its claim token.
    pub token: String,
    /// The children, inserted as one batch (a child may depend on an earlier one).
    pub jobs: Vec<NewJob>,
    /// Wait for them: the parent moves to `waiting` and runs again once they completed.
    pub wait: bool,
}

/// What adding children did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedChildren {
    /// The children (duplicates name the existing job).
    pub children: Vec<Inserted>,
    /// The parent now waits for them (false if not asked to, or if they had all completed already).
    pub waiting: bool,
}

/// Create or replace a schedule.
#[derive(Clone, Debug)]
pub struct SchedulePutParams {
    /// Unique name (checked by the caller).
    pub name: String,
    /// The definition (checked by the caller).
    pub spec: kyu_core::ScheduleSpec,
    /// Its first tick from now; `None` when disabled.
    pub next_run_at: Option<Millis>,
}

/// Move a schedule on after firing its due ticks.
#[derive(Clone, Debug)]
pub struct ScheduleAdvanceParams {
    /// The schedule.
    pub name: String,
    /// The `next_run_at` the caller read: nothing changes unless it still is.
    pub from: Millis,
    /// The new `next_run_at`.
    pub to: Option<Millis>,
    /// The latest tick fired, recorded as `last_run_at`.
    pub ran_at: Option<Millis>,
}

/// `GET /v1/schedules`' answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScheduleList {
    /// By name.
    pub schedules: Vec<kyu_core::Schedule>,
}

/// A page request for [`crate::Store::job_list`].
#[derive(Clone, Debug, Default)]
pub struct JobListParams {
    /// Only this queue.
    pub queue: Option<QueueName>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only jobs with this tag.
    pub tag: Option<String>,
    /// Only jobs whose last error contains this text.
    pub error_contains: Option<String>,
    /// Only jobs created at or after this.
    pub since: Option<Millis>,
    /// Only jobs created before this.
    pub until: Option<Millis>,
    /// Page size (capped at 1000; default 100).
    pub limit: Option<usize>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl JobListParams {
    /// Checks the filters (a kind is a name, a tag a label, a cursor a
    /// number); both backends call this first.
    pub fn check(&self) -> Result<Option<i64>, ValidationError> {
        if let Some(k) = &self.kind {
            validate::name("kind", k)?;
        }
        if let Some(t) = &self.tag {
            validate::label("tag", t)?;
        }
        if let Some(e) = &self.error_contains {
            validate::search_text("error", e)?;
        }
        if let Some(s) = self.since {
            validate::timestamp("since", s)?;
        }
        if let Some(u) = self.until {
            validate::timestamp("until", u)?;
        }
        self.cursor
            .as_deref()
            .map(|c| c.parse::<i64>().map_err(|_| ValidationError::new("cursor", "not a cursor from a previous page")))
            .transpose()
    }
}

/// One page of jobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<Job>,
    /// Pass back for the next page; null at the end.
    pub next_cursor: Option<String>,
}

/// `GET /v1/queues`' answer.
#[derive(Clone, Debug, Serialize)]
pub struct QueueList {
    /// Every known queue, by name.
    pub queues: Vec<kyu_core::QueueInfo>,
}

/// An operator retry of one job.
#[derive(Clone, Debug)]
pub struct JobRetryParams {
    /// The failed or cancelled job.
    pub id: JobId,
    /// Also revive the jobs that failed only because this one did (and
    /// theirs, down the tree): they go back to `waiting`, so retrying step
    /// 3 of a failed chain runs steps 3 and 4.
    pub dependents: bool,
}

impl JobRetryParams {
    /// A retry of `id` alone.
    pub fn one(id: JobId) -> JobRetryParams {
        JobRetryParams { id, dependents: false }
    }
}

/// Lines a running job adds to its log, fenced by its token.
#[derive(Clone, Debug)]
pub struct JobLogAppendParams {
    /// The job.
    pub id: JobId,
    /// Its claim token.
    pub token: String,
    /// The lines, oldest first (a line longer than
    /// [`kyu_core::log::MAX_LINE_BYTES`] is cut).
    pub lines: Vec<String>,
}

/// Which log lines to read.
#[derive(Clone, Debug)]
pub struct JobLogParams {
    /// The job.
    pub id: JobId,
    /// Only this attempt's lines.
    pub attempt: Option<i32>,
}

/// One line of a job's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When it was written.
    pub at: Millis,
    /// The attempt that wrote it.
    pub attempt: i32,
    /// The text.
    pub line: String,
}

/// `GET /v1/jobs/{id}/log`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogLines {
    /// Oldest first, attempt by attempt.
    pub lines: Vec<LogLine>,
}

/// Filter for a bulk redrive or delete of the dead-letter set.
#[derive(Clone, Debug, Default)]
pub struct JobRetryManyParams {
    /// Only this queue.
    pub queue: Option<QueueName>,
    /// Only this kind.
    pub kind: Option<String>,
    /// `failed` (default) or `cancelled`.
    pub state: Option<JobState>,
    /// Finished at or after.
    pub since: Option<Millis>,
    /// Finished before.
    pub until: Option<Millis>,
    /// Last error contains this text.
    pub error_contains: Option<String>,
}

impl JobRetryManyParams {
    /// Checks the filters; both backends call this first.
    pub fn check(&self) -> Result<JobState, ValidationError> {
        if let Some(k) = &self.kind {
            validate::name("kind", k)?;
        }
        if let Some(e) = &self.error_contains {
            validate::search_text("error", e)?;
        }
        if let Some(s) = self.since {
            validate::timestamp("since", s)?;
        }
        if let Some(u) = self.until {
            validate::timestamp("until", u)?;
        }
        let state = self.state.unwrap_or(JobState::Failed);
        if !matches!(state, JobState::Failed | JobState::Cancelled) {
            return Err(ValidationError::new("state", "must be failed or cancelled"));
        }
        Ok(state)
    }
}

/// What [`crate::Store::job_rescue`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RescueCounts {
    /// Running jobs whose lease had expired.
    pub expired: u64,
    /// Scheduled jobs moved to queued.
    pub promoted: u64,
}

/// A prune pass. Each finished job's deletion time was fixed when it
/// finished, from its own `keep_result_ms` or the store's defaults.
#[derive(Clone, Copy, Debug)]
pub struct JobPruneParams {
    /// Most rows deleted in this call, so a prune never holds the lock long.
    pub batch: usize,
}

impl Default for JobPruneParams {
    fn default() -> Self {
        JobPruneParams { batch: 1000 }
    }
}

/// A change to a queue's settings; `None` leaves a setting as it is, and
/// `Some(None)` clears a limit.
#[derive(Clone, Debug, Default)]
pub struct QueueUpdateParams {
    /// The queue.
    pub name: QueueName,
    /// Pause or resume.
    pub paused: Option<bool>,
    /// Running jobs across all workers.
    pub concurrency: Option<Option<i32>>,
    /// Claims per window.
    pub rate_limit: Option<Option<RateLimit>>,
    /// Running jobs per group.
    pub group_concurrency: Option<Option<i32>>,
    /// Default per-attempt time limit.
    pub timeout_ms: Option<Option<i64>>,
}

impl QueueUpdateParams {
    /// Checks the new limits; both backends call this before writing.
    pub fn check(&self) -> Result<(), ValidationError> {
        if let Some(Some(c)) = self.concurrency
            && c < 0
        {
            return Err(ValidationError::new("concurrency", "must be >= 0 or null"));
        }
        if let Some(Some(c)) = self.group_concurrency
            && c < 1
        {
            return Err(ValidationError::new("group_concurrency", "must be >= 1 or null"));
        }
        if let Some(Some(r)) = self.rate_limit {
            if r.max < 1 {
                return Err(ValidationError::new("rate_limit.max", "must be >= 1"));
            }
            kyu_core::validate::positive_duration("rate_limit.per_ms", r.per_ms)?;
        }
        if let Some(Some(t)) = self.timeout_ms {
            kyu_core::validate::positive_duration("timeout_ms", t)?;
        }
        Ok(())
    }
}

/// A store notification, sent after the transaction that caused it commits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StoreEvent {
    /// Jobs were put on this queue, claimable now or at a later `run_at`:
    /// idle workers should claim, and learn the next `run_at` if nothing is due.
    JobsAvailable(QueueName),
    /// This job reached a terminal state (or `waiting` for children).
    JobFinished(JobId),
}

/// A worker saying it is alive (`POST /v1/workers` or implied by its claims
/// and heartbeats). Fields it did not give keep what an earlier call said.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerSeenParams {
    /// The name it claims with.
    pub name: String,
    /// Its machine.
    pub host: Option<String>,
    /// Its process id.
    pub pid: Option<i64>,
    /// Queues it serves.
    pub queues: Vec<QueueName>,
    /// Jobs it runs at once.
    pub concurrency: Option<i64>,
    /// What it runs (a command, handler kinds, `http`).
    pub runs: Option<String>,
}

/// Which per-minute statistics to read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsParams {
    /// One queue, or all.
    pub queue: Option<QueueName>,
    /// From this minute on (inclusive).
    pub since: Millis,
}

/// Receives what each committed transaction did. Called on the thread that
/// committed, after the commit: keep it quick (count, send on a channel).
pub trait Observer: Send + Sync + 'static {
    /// `at` is the transaction's time.
    fn observe(&self, at: Millis, happenings: &[kyu_core::tally::Happening]);
}

/// The observers of one store (shared by its clones).
#[derive(Clone, Default)]
pub struct Observers(std::sync::Arc<std::sync::RwLock<Vec<std::sync::Arc<dyn Observer>>>>);

impl Observers {
    /// Adds an observer for the life of the store.
    pub fn add(&self, o: std::sync::Arc<dyn Observer>) {
        self.0.write().expect("observers").push(o);
    }

    /// Tells every observer; nothing to do when no one observes.
    pub fn tell(&self, at: Millis, happenings: &[kyu_core::tally::Happening]) {
        if happenings.is_empty() {
            return;
        }
        for o in self.0.read().expect("observers").iter() {
            o.observe(at, happenings);
        }
    }

    /// Whether anyone listens.
    pub fn any(&self) -> bool {
        !self.0.read().expect("observers").is_empty()
    }
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Observers({})", self.0.read().map(|v| v.len()).unwrap_or(0))
    }
}
