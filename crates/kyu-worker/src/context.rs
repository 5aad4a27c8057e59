//! What a handler knows about its job, and how it talks back.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kyu_core::{ClaimedJob, JobId};
use kyu_core::{JobSpec, Limits};
use kyu_store::{AddedChildren, JobAddChildrenParams, JobLogAppendParams, JobSaveParams, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::JobError;
use crate::handler::BoxFuture;

/// The store calls a running job makes, erased from the worker's store type
/// so handlers have one context type whatever the backend.
pub(crate) trait JobStore: Send + Sync {
    fn save(&self, p: JobSaveParams) -> BoxFuture<Result<(), StoreError>>;
    fn add_children(&self, p: JobAddChildrenParams) -> BoxFuture<Result<AddedChildren, StoreError>>;
    fn get(&self, id: JobId) -> BoxFuture<Result<Option<kyu_core::Job>, StoreError>>;
    fn log(&self, p: JobLogAppendParams) -> BoxFuture<Result<(), StoreError>>;
    fn now(&self) -> kyu_core::Millis;
}

impl<S: kyu_store::Store> JobStore for S {
    fn save(&self, p: JobSaveParams) -> BoxFuture<Result<(), StoreError>> {
        let s = self.clone();
        Box::pin(async move { s.job_save(p).await })
    }
    fn add_children(&self, p: JobAddChildrenParams) -> BoxFuture<Result<AddedChildren, StoreError>> {
        let s = self.clone();
        Box::pin(async move { s.job_add_children(p).await })
    }
    fn get(&self, id: JobId) -> BoxFuture<Result<Option<kyu_core::Job>, StoreError>> {
        let s = self.clone();
        Box::pin(async move { s.job_get(&id).await })
    }
    fn log(&self, p: JobLogAppendParams) -> BoxFuture<Result<(), StoreError>> {
        let s = self.clone();
        Box::pin(async move { s.job_log_append(p).await })
    }
    fn now(&self) -> kyu_core::Millis {
        self.clock().now()
    }
}

pub(crate) type Saver = Arc<dyn JobStore>;

/// The key under which [`JobContext::step`] keeps finished steps' outputs
/// inside an object checkpoint.
pub const STEPS_KEY: &str = "steps";

/// A running job's context: who it is, what earlier attempts and its
/// dependencies left, a cancellation signal, and fenced writes back to the
/// store. Cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<Inner>,
}

struct Inner {
    job: ClaimedJob,
    cancel: CancellationToken,
    checkpoint: Mutex<Option<Value>>,
    /// The claim's dependency results, joined by children that had
    /// completed by the time [`JobContext::wait_for_children`] added them.
    dependency_results: Mutex<BTreeMap<String, Value>>,
    saver: Saver,
}

impl JobContext {
    pub(crate) fn new(job: ClaimedJob, cancel: CancellationToken, saver: Saver) -> JobContext {
        let checkpoint = Mutex::new(job.checkpoint.clone());
        let dependency_results = Mutex::new(job.dependency_results.clone());
        JobContext { inner: Arc::new(Inner { job, cancel, checkpoint, dependency_results, saver }) }
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.inner.job.id
    }

    /// The job's kind.
    pub fn kind(&self) -> &str {
        &self.inner.job.kind
    }

    /// The job's queue.
    pub fn queue(&self) -> &str {
        self.inner.job.queue.as_str()
    }

    /// This run's number, from 1.
    pub fn attempt(&self) -> i32 {
        self.inner.job.attempt
    }

    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> i32 {
        self.inner.job.max_attempts
    }

    /// The claim token fencing this attempt's writes.
    pub fn token(&self) -> &str {
        &self.inner.job.token
    }

    /// The checkpoint as last saved (by this attempt or an earlier one).
    pub fn checkpoint(&self) -> Option<Value> {
        self.inner.checkpoint.lock().expect("checkpoint lock").clone()
    }

    /// The checkpoint decoded as `T`, if there is one and it fits.
    pub fn checkpoint_as<T: DeserializeOwned>(&self) -> Option<T> {
        self.checkpoint().and_then(|v| serde_json::from_value(v).ok())
    }

    /// Results of the jobs this one depends on, keyed by id (children it
    /// waited for included).
    pub fn dependency_results(&self) -> BTreeMap<String, Value> {
        self.inner.dependency_results.lock().expect("results lock").clone()
    }

    /// Whether the job has been asked to stop (cancelled by an operator,
    /// timed out, or the worker is shutting down past its grace period).
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when the job is asked to stop; `select!` on it in long loops.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await
    }

    /// Replaces the checkpoint, durably, fenced by this attempt's token: a
    /// later attempt gets it back. Refused if this attempt lost its lease.
    pub async fn save_checkpoint(&self, checkpoint: impl Serialize) -> Result<(), JobError> {
        let value = serde_json::to_value(checkpoint).map_err(|e| JobError::fatal(format!("checkpoint is not JSON: {e}")))?;
        self.write(Some(value.clone()), None).await?;
        *self.inner.checkpoint.lock().expect("checkpoint lock") = Some(value);
        Ok(())
    }

    /// Records progress for observers (`GET /v1/jobs/{id}` shows it).
    pub async fn progress(&self, progress: impl Serialize) -> Result<(), JobError> {
        let value = serde_json::to_value(progress).map_err(|e| JobError::fatal(format!("progress is not JSON: {e}")))?;
        self.write(None, Some(value)).await
    }

    /// Writes a line to the job's log (`GET /v1/jobs/{id}/log`, the
    /// dashboard's job page), under this attempt, fenced by its token.
    pub async fn log(&self, line: impl Into<String>) -> Result<(), JobError> {
        self.log_lines(vec![line.into()]).await
    }

    /// Writes several lines to the job's log in one store call.
    pub async fn log_lines(&self, lines: Vec<String>) -> Result<(), JobError> {
        let p = JobLogAppendParams { id: self.inner.job.id.clone(), token: self.inner.job.token.clone(), lines };
        self.inner.saver.log(p).await.map_err(|e| match e {
            StoreError::Conflict(m) | StoreError::NotFound(m) => JobError::fatal(format!("log refused: {m}")),
            other => JobError::retry(format!("could not write the log: {other}")),
        })
    }

    /// Adds child jobs without waiting for them (they run independently).
    pub async fn add_children(&self, jobs: Vec<JobSpec>) -> Result<Vec<JobId>, JobError> {
        Ok(self.children(jobs, false).await?.children.into_iter().map(|c| c.id).collect())
    }

    /// Adds child jobs and waits for them (BullMQ's `moveToWaitingChildren`):
    /// `ctx.wait_for_children(jobs).await?;`. While any child is still to
    /// run, the `?` ends this run: the job is released and runs again once
    /// every child completed, with the same attempt number, its checkpoint,
    /// and the children's results in [`JobContext::dependency_results`]. Save
    /// a checkpoint first, so the next run knows the children were added. If
    /// every child had completed already (ids that ran before), it returns
    /// at once and this run goes on, their results added to
    /// [`JobContext::dependency_results`].
    pub async fn wait_for_children(&self, jobs: Vec<JobSpec>) -> Result<(), JobError> {
        let added = self.children(jobs, true).await?;
        if added.waiting {
            return Err(JobError { kind: crate::error::ErrorKind::Waiting, message: String::new() });
        }
        for child in added.children {
            let job = self.inner.saver.get(child.id.clone()).await.map_err(|e| JobError::retry(format!("reading child results: {e}")))?;
            if let Some(job) = job {
                let v = job.result.unwrap_or(Value::Null);
                self.inner.dependency_results.lock().expect("results lock").insert(child.id.to_string(), v);
            }
        }
        Ok(())
    }

    async fn children(&self, jobs: Vec<JobSpec>, wait: bool) -> Result<AddedChildren, JobError> {
        let now = self.inner.saver.now();
        let jobs = jobs
            .into_iter()
            .map(|s| s.validate(now, &Limits::default()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| JobError::fatal(format!("a child job is invalid: {e}")))?;
        let p = JobAddChildrenParams { id: self.inner.job.id.clone(), token: self.inner.job.token.clone(), jobs, wait };
        self.inner.saver.add_children(p).await.map_err(|e| match e {
            StoreError::Conflict(m) | StoreError::NotFound(m) => JobError::fatal(format!("adding children refused: {m}")),
            StoreError::Invalid(v) => JobError::fatal(format!("a child job is invalid: {v}")),
            other => JobError::retry(format!("could not add children: {other}")),
        })
    }

    /// The error to return to snooze: `return Err(ctx.snooze(d))`. The job
    /// runs again after `delay` with the same attempt number.
    pub fn snooze(&self, delay: Duration) -> JobError {
        JobError::snooze(delay)
    }

    /// Runs `body` once across all attempts. When it succeeds its output is
    /// saved in the checkpoint (under `"steps"`, fenced by the token); on a
    /// later attempt a finished step returns the saved output without running.
    /// Steps are named, so their order may change between deploys.
    pub async fn step<T, F>(&self, name: &str, body: F) -> Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, JobError>>,
    {
        if let Some(saved) = self.saved_step(name) {
            return serde_json::from_value(saved)
                .map_err(|e| JobError::fatal(format!("saved output of step `{name}` does not fit its type: {e}")));
        }
        let out = body.await?;
        let value = serde_json::to_value(&out).map_err(|e| JobError::fatal(format!("step `{name}` output is not JSON: {e}")))?;
        let mut checkpoint = self.checkpoint().unwrap_or(Value::Null);
        if !checkpoint.is_object() {
            checkpoint = Value::Object(Map::new());
        }
        let steps = checkpoint
            .as_object_mut()
            .expect("object")
            .entry(STEPS_KEY)
            .or_insert_with(|| Value::Object(Map::new()));
        if !steps.is_object() {
            *steps = Value::Object(Map::new());
        }
        steps.as_object_mut().expect("object").insert(name.to_owned(), value);
        self.save_checkpoint(checkpoint).await?;
        Ok(out)
    }

    fn saved_step(&self, name: &str) -> Option<Value> {
        let cp = self.inner.checkpoint.lock().expect("checkpoint lock");
        cp.as_ref()?.get(STEPS_KEY)?.get(name).cloned()
    }

    async fn write(&self, checkpoint: Option<Value>, progress: Option<Value>) -> Result<(), JobError> {
        let p = JobSaveParams { id: self.inner.job.id.clone(), token: self.inner.job.token.clone(), checkpoint, progress };
        self.inner.saver.save(p).await.map_err(|e| match e {
            StoreError::Conflict(m) | StoreError::NotFound(m) => JobError::fatal(format!("write refused: {m}")),
            other => JobError::retry(format!("could not save: {other}")),
        })
    }
}
