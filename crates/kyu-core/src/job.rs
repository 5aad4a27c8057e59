//! What a job, a claim and a queue look like on the wire.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Backoff, JobState, Millis};

/// Most characters an id, queue, kind, tag, group or unique key may have.
pub const MAX_NAME_LEN: usize = 128;
/// Most characters a job id may have (room for caller-made composite ids).
pub const MAX_ID_LEN: usize = 255;

/// A job's public id: caller-chosen, or a generated UUIDv7 (time-ordered, so
/// generated ids sort in enqueue order). Validated once, at the edge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// A fresh time-ordered id.
    pub fn generate() -> JobId {
        JobId(uuid::Uuid::now_v7().to_string())
    }

    /// Accepts 1–255 printable ASCII characters without spaces or `/`, so an
    /// id is always safe in a URL path segment and a shell argument.
    pub fn new(s: impl Into<String>) -> Result<JobId, String> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= MAX_ID_LEN
            && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'?' && b != b'#' && b != b'%');
        if ok {
            Ok(JobId(s))
        } else {
            Err(format!("job id `{}` must be 1-{MAX_ID_LEN} printable ASCII characters without spaces, `/`, `?`, `#` or `%`", truncate(&s)))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        JobId::new(s)
    }
}
impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}
impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A queue name: `[A-Za-z0-9_.:-]{1,128}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueName(String);

impl QueueName {
    /// Validates a queue name.
    pub fn new(s: impl Into<String>) -> Result<QueueName, String> {
        let s = s.into();
        if is_name(&s) {
            Ok(QueueName(s))
        } else {
            Err(format!("queue name `{}` must match [A-Za-z0-9_.:-]{{1,{MAX_NAME_LEN}}}", truncate(&s)))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for QueueName {
    fn default() -> Self {
        QueueName("default".into())
    }
}
impl TryFrom<String> for QueueName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        QueueName::new(s)
    }
}
impl From<QueueName> for String {
    fn from(q: QueueName) -> String {
        q.0
    }
}
impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[A-Za-z0-9_.:-]{1,128}`: the charset of queue names and job kinds.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

pub(crate) fn truncate(s: &str) -> String {
    if s.chars().count() > 40 { format!("{}...", s.chars().take(40).collect::<String>()) } else { s.to_string() }
}

/// One failed attempt, kept in the job's `errors` list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// The attempt that failed.
    pub attempt: i32,
    /// When it failed.
    pub at: Millis,
    /// What went wrong: the handler's error, `"timeout"`, or `"lease expired"`.
    pub message: String,
}

/// A job as the API shows it. The claim token is deliberately absent: it is
/// given only to the worker that claimed the job, since it authorises reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Public id.
    pub id: JobId,
    /// Queue it runs on.
    pub queue: QueueName,
    /// Which handler runs it.
    pub kind: String,
    /// Input, immutable after enqueue.
    pub payload: Value,
    /// Last checkpoint the handler saved, given back on every later attempt.
    pub checkpoint: Option<Value>,
    /// Current state.
    pub state: JobState,
    /// Higher runs first.
    pub priority: i32,
    /// Not claimable before this.
    pub run_at: Millis,
    /// Number of the current or last run.
    pub attempt: i32,
    /// Attempts allowed before the job fails for good.
    pub max_attempts: i32,
    /// Delay policy between attempts.
    pub backoff: Backoff,
    /// Per-attempt time limit.
    pub timeout_ms: Option<i64>,
    /// Deduplication key.
    pub unique_key: Option<String>,
    /// How long after enqueue the key stays taken (besides while non-terminal).
    pub unique_for_ms: Option<i64>,
    /// Jobs this one waits for.
    pub depends_on: Vec<JobId>,
    /// Of `depends_on`, how many have not completed yet.
    pub pending_dependencies: i64,
    /// Jobs waiting for this one. Filled in when one job is read by id
    /// (`GET /v1/jobs/{id}`, `kyu status`); empty in lists.
    #[serde(default)]
    pub dependents: Vec<JobId>,
    /// Run even if a dependency failed or was cancelled.
    pub continue_on_failure: bool,
    /// The handler's return value.
    pub result: Option<Value>,
    /// How long a completed job is kept; null means the server's default.
    pub keep_result_ms: Option<i64>,
    /// How long a failed or cancelled job is kept; null means the server's default.
    #[serde(default)]
    pub keep_failed_ms: Option<i64>,
    /// One entry per failed attempt.
    pub errors: Vec<ErrorEntry>,
    /// Last progress the handler reported.
    pub progress: Option<Value>,
    /// Free labels.
    pub tags: Vec<String>,
    /// Fairness key.
    pub group: Option<String>,
    /// An operator asked a running job to stop.
    pub cancel_requested: bool,
    /// When it was enqueued.
    pub created_at: Millis,
    /// When the current or last attempt started.
    pub started_at: Option<Millis>,
    /// When it reached a terminal state.
    pub finished_at: Option<Millis>,
    /// While running: when the lease runs out unless heartbeated.
    pub lease_expires_at: Option<Millis>,
    /// Worker that runs or last ran it.
    pub worker: Option<String>,
    /// Set on an enqueue answer when the job already existed (same id, or
    /// same unique key inside its window) and nothing new was created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// What a worker receives for each job it claims.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimedJob {
    /// Public id.
    pub id: JobId,
    /// Queue.
    pub queue: QueueName,
    /// Handler name.
    pub kind: String,
    /// Input.
    pub payload: Value,
    /// Saved by an earlier attempt, if any.
    pub checkpoint: Option<Value>,
    /// This run's number, from 1.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Per-attempt time limit.
    pub timeout_ms: Option<i64>,
    /// Fences every report of this attempt.
    pub token: String,
    /// When the lease runs out unless heartbeated.
    pub lease_expires_at: Millis,
    /// Results of the jobs this one depends on, keyed by id. A dependency
    /// that did not complete (with `continue_on_failure`) maps to
    /// `{"state": ..., "error": ...}`.
    pub dependency_results: BTreeMap<String, Value>,
}

/// At most `max` claims per `per_ms` window, across all workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Claims per window.
    #[serde(deserialize_with = "crate::wire::i64")]
    pub max: i64,
    /// Window length.
    #[serde(deserialize_with = "crate::wire::i64")]
    pub per_ms: i64,
}

/// A queue's settings and job counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// Name.
    pub name: QueueName,
    /// Claims return nothing while paused.
    pub paused: bool,
    /// Most jobs running at once across all workers; null is unlimited.
    pub concurrency: Option<i32>,
    /// Claim rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Most jobs running at once per `group` value.
    pub group_concurrency: Option<i32>,
    /// Default per-attempt time limit of its jobs (a job's own `timeout_ms` wins).
    #[serde(default)]
    pub timeout_ms: Option<i64>,
    /// Jobs per state; every state is present.
    pub counts: BTreeMap<String, i64>,
    /// When the job that has been ready longest became ready (its `run_at`);
    /// null when none is queued.
    #[serde(default)]
    pub oldest_ready_at: Option<Millis>,
}

/// A fresh claim token: 128 random bits as hex. A token only fences reports
/// of one attempt; it is not an API credential.
pub fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
