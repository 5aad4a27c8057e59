//! kyu: a durable job queue for Rust applications.
//!
//! Open a store, enqueue jobs, run a worker with typed handlers:
//!
//! ```no_run
//! use kyu::{Client, JobContext, JobError, JobSpec, SqliteStore, Worker};
//! # async fn demo() -> Result<(), kyu::StoreError> {
//! let store = SqliteStore::open("kyu.db", Default::default())?;
//! let client = Client::new(store.clone());
//! let job = client.enqueue(JobSpec::new("mail", "send", serde_json::json!({"to": "a@b.c"}))).await?;
//!
//! let worker = Worker::builder(store)
//!     .queue("mail")
//!     .handle("send", |p: serde_json::Value, _ctx: JobContext| async move { Ok(p) })
//!     .build();
//! let stop = kyu::CancellationToken::new();
//! tokio::spawn(worker.run(stop.clone()));
//! let done = client.wait(&job.id, std::time::Duration::from_secs(10)).await?;
//! stop.cancel();
//! # Ok(()) }
//! ```
//!
//! Delivery is at least once: a handler may run again after a crash, so
//! handlers should be idempotent (or use [`JobContext::step`] to save
//! finished steps).
#![warn(missing_docs)]

use std::time::Duration;

pub use kyu_core::{Backoff, ClaimedJob, Clock, Flow, ErrorEntry, Job, JobId, JobSpec, JobState, Limits, QueueInfo, QueueName, RateLimit};
pub use kyu_sqlite::{SqliteOptions, SqliteStore};
pub use kyu_store::{Inserted, JobListParams, JobPage, QueueUpdateParams, Store, StoreError, StoreEvent};
pub use kyu_worker::{CancellationToken, JobContext, JobError, Worker, WorkerBuilder, WorkerConfig};

/// The producer side: enqueue jobs and look at them.
#[derive(Clone)]
pub struct Client<S: Store> {
    store: S,
    limits: Limits,
}

impl<S: Store> Client<S> {
    /// A client on `store`.
    pub fn new(store: S) -> Client<S> {
        Client { store, limits: Limits::default() }
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Enqueues one job. An existing id (or a taken unique key) creates
    /// nothing and comes back with `duplicate: true`.
    pub async fn enqueue(&self, spec: JobSpec) -> Result<Inserted, StoreError> {
        Ok(self.enqueue_many(vec![spec]).await?.remove(0))
    }

    /// Enqueues jobs atomically: all or none. A job may depend on jobs
    /// earlier in the same batch.
    pub async fn enqueue_many(&self, specs: Vec<JobSpec>) -> Result<Vec<Inserted>, StoreError> {
        let now = self.store.clock().now();
        let jobs = specs.into_iter().map(|s| s.validate(now, &self.limits)).collect::<Result<Vec<_>, _>>()?;
        self.store.job_insert_many(kyu_store::JobInsertManyParams { jobs }).await
    }

    /// Enqueues a tree (each parent depends on its children) atomically;
    /// returns the root's id and every job in insert order.
    pub async fn flow(&self, flow: Flow) -> Result<(JobId, Vec<Inserted>), StoreError> {
        let (root, specs) = flow.flatten()?;
        Ok((root, self.enqueue_many(specs).await?))
    }

    /// Enqueues steps that run one after another, each seeing the one
    /// before's result in `dependency_results` (Celery's chain).
    pub async fn chain(&self, steps: Vec<JobSpec>) -> Result<Vec<Inserted>, StoreError> {
        self.enqueue_many(kyu_core::flow::chain(steps)).await
    }

    /// Enqueues independent jobs atomically (Celery's group).
    pub async fn group(&self, jobs: Vec<JobSpec>) -> Result<Vec<Inserted>, StoreError> {
        self.enqueue_many(jobs).await
    }

    /// Enqueues a group and a callback that runs once all of it completed,
    /// with every result (Celery's chord); the callback is the last entry.
    pub async fn chord(&self, group: Vec<JobSpec>, callback: JobSpec) -> Result<Vec<Inserted>, StoreError> {
        self.enqueue_many(kyu_core::flow::chord(group, callback)).await
    }

    /// A job, if it exists.
    pub async fn job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.store.job_get(id).await
    }

    /// Waits until the job is terminal (or `timeout` passes) and returns it
    /// as it is then.
    pub async fn wait(&self, id: &JobId, timeout: Duration) -> Result<Job, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.store.subscribe();
        self.store.job_watch(id).await?;
        loop {
            let job = self.store.job_get(id).await?.ok_or_else(|| StoreError::job_not_found(id))?;
            if job.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(job);
            }
            let poll = tokio::time::Instant::now() + Duration::from_millis(100);
            tokio::select! {
                _ = tokio::time::sleep_until(poll.min(deadline)) => {}
                _ = async {
                    loop {
                        match events.recv().await {
                            Ok(StoreEvent::JobFinished(done)) if &done == id => return,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            _ => {}
                        }
                    }
                } => {}
            }
        }
    }
}
