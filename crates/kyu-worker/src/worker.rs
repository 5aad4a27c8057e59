//! Worker configuration and construction.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kyu_core::QueueName;
use kyu_store::Store;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::handler::{ErasedHandler, erase};
use crate::{JobContext, JobError};

/// How a worker runs. The defaults suit one machine.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Queues to take jobs from, first listed first.
    pub queues: Vec<QueueName>,
    /// Name recorded on claimed jobs (default: host name and process id).
    pub name: String,
    /// Most handlers running at once.
    pub concurrency: usize,
    /// Most jobs claimed in one call. `None` (the default): as many as it
    /// can take, its free slots and what it may hold ahead of them (at most
    /// [`MOST_PER_CLAIM`]): while the queue has a backlog one transaction
    /// claims many jobs, when it has none a claim takes what is there.
    pub batch: Option<usize>,
    /// Most jobs claimed ahead of free slots, started as slots free. Only
    /// while the queue has a backlog and handlers are short enough that a
    /// held job starts within about 50 ms; long jobs are never held.
    /// `None` (the default): [`PREFETCH_PER_SLOT`] × `concurrency`;
    /// `Some(0)` claims only into free slots.
    pub prefetch: Option<usize>,
    /// Lease per claim; heartbeats extend it every `lease / 3`.
    pub lease: Duration,
    /// How often an idle worker looks for jobs when no event woke it. Events
    /// come only from this process on SQLite, so this bounds how soon jobs
    /// enqueued by other processes start.
    pub poll_interval: Duration,
    /// On shutdown, how long to wait for running handlers before releasing them.
    pub shutdown_grace: Duration,
    /// After a timeout or cancel signal, how long a handler has to stop before it is aborted.
    pub abort_grace: Duration,
    /// Also run lease rescue and pruning in this process (see
    /// [`crate::run_maintenance`]); on by default, since any live node may.
    pub maintenance: Option<crate::MaintenanceConfig>,
    /// Claim at most this many jobs in all, then stop once they have
    /// finished ("take K and stop").
    pub max_jobs: Option<u64>,
    /// Stop once no job is ready and none is running (a drain, as a cron
    /// task or an Airflow task runs a worker).
    pub burst: bool,
    /// Largest result a handler may return, in bytes of JSON; a larger one
    /// fails its attempt at once, without retry (the same result would be
    /// refused again). 1 MiB by default, the server's default.
    pub max_result_bytes: usize,
    /// What this worker runs, as `GET /v1/workers` shows it (`kyu work`
    /// gives its command); by default the kinds it handles.
    pub runs: Option<String>,
}

/// Jobs a worker may hold ahead of each of its slots by default (see
/// [`WorkerConfig::prefetch`]). Measured on PostgreSQL W1 (concurrency 16,
/// no-op jobs), jobs/s and commits per job by the most a claim takes:
/// 16: 8,200 and 0.08; 64: 13,900 and 0.034; 128: 16,800 and 0.019.
/// Celery holds 4 per slot whatever the jobs' length; kyu holds only what
/// starts within 50 ms, so long jobs are never held.
pub const PREFETCH_PER_SLOT: usize = 7;

/// Most jobs in one claim: what the HTTP API takes.
pub const MOST_PER_CLAIM: usize = 1000;

impl WorkerConfig {
    /// The most jobs held ahead of free slots.
    pub(crate) fn most_prefetch(&self) -> usize {
        self.prefetch.unwrap_or(self.concurrency * PREFETCH_PER_SLOT)
    }

    /// The most jobs one claim asks for, `capacity` being what the worker
    /// can take now.
    pub(crate) fn claim_size(&self, capacity: usize) -> usize {
        self.batch.unwrap_or(capacity).min(MOST_PER_CLAIM)
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: Vec::new(),
            name: default_name(),
            concurrency: 10,
            batch: None,
            prefetch: None,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(30),
            abort_grace: Duration::from_secs(5),
            maintenance: Some(crate::MaintenanceConfig::default()),
            max_jobs: None,
            burst: false,
            max_result_bytes: kyu_core::Limits::default().max_payload_bytes,
            runs: None,
        }
    }
}

fn default_name() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

/// This machine's name.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kyu".into())
}

/// A configured worker; [`Worker::run`] runs it until told to stop.
pub struct Worker<S: Store> {
    pub(crate) store: S,
    pub(crate) config: WorkerConfig,
    pub(crate) handlers: HashMap<String, ErasedHandler>,
    pub(crate) fallback: Option<ErasedHandler>,
}

impl<S: Store> Worker<S> {
    /// Starts building a worker on `store`.
    pub fn builder(store: S) -> WorkerBuilder<S> {
        WorkerBuilder { store, config: WorkerConfig::default(), handlers: HashMap::new(), fallback: None }
    }

    /// The configuration in force.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }
}

/// Builds a [`Worker`].
pub struct WorkerBuilder<S: Store> {
    store: S,
    config: WorkerConfig,
    handlers: HashMap<String, ErasedHandler>,
    fallback: Option<ErasedHandler>,
}

impl<S: Store> WorkerBuilder<S> {
    /// Adds a queue to take jobs from (`"default"` if none is added).
    pub fn queue(mut self, name: &str) -> Self {
        self.config.queues.push(QueueName::new(name).unwrap_or_else(|e| panic!("{e}")));
        self
    }

    /// Replaces the whole configuration (queues included).
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Most handlers running at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n.max(1);
        self
    }

    /// Most jobs per claim (at least 1), or `None` for the worker's own
    /// choice (see [`WorkerConfig::batch`]).
    pub fn batch(mut self, n: impl Into<Option<usize>>) -> Self {
        self.config.batch = n.into().map(|n| n.max(1));
        self
    }

    /// Most jobs claimed ahead of free slots (see [`WorkerConfig::prefetch`]).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.config.prefetch = Some(n);
        self
    }

    /// Lease per claim.
    pub fn lease(mut self, d: Duration) -> Self {
        self.config.lease = d;
        self
    }

    /// Idle polling interval.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.config.poll_interval = d;
        self
    }

    /// Shutdown grace period.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.config.shutdown_grace = d;
        self
    }

    /// How long a handler has to stop after a timeout or cancel signal before it is aborted.
    pub fn abort_grace(mut self, d: Duration) -> Self {
        self.config.abort_grace = d;
        self
    }

    /// Turns this process's lease rescue and pruning on (`Some`) or off.
    pub fn maintenance(mut self, m: Option<crate::MaintenanceConfig>) -> Self {
        self.config.maintenance = m;
        self
    }

    /// Claims at most `n` jobs in all, then stops once they finished.
    pub fn max_jobs(mut self, n: u64) -> Self {
        self.config.max_jobs = Some(n);
        self
    }

    /// Stops once no job is ready and none is running.
    pub fn burst(mut self, on: bool) -> Self {
        self.config.burst = on;
        self
    }

    /// Worker name shown on its jobs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Registers the handler for jobs of `kind`: it gets the payload
    /// deserialised as `T` and returns a serialisable result or a [`JobError`].
    pub fn handle<T, R, F, Fut>(mut self, kind: &str, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(T, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, JobError>> + Send + 'static,
    {
        self.handlers.insert(kind.to_owned(), erase(f));
        self
    }

    /// Registers a handler for every kind without its own (`kyu work -- CMD`
    /// uses this). Without one, a job of an unknown kind fails and is retried
    /// per policy, in case another worker knows the kind.
    pub fn fallback<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Value, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
    {
        self.fallback = Some(erase(f));
        self
    }

    /// The worker.
    pub fn build(mut self) -> Worker<S> {
        if self.config.queues.is_empty() {
            self.config.queues.push(QueueName::default());
        }
        self.config.concurrency = self.config.concurrency.max(1);
        let most = self.config.concurrency + self.config.most_prefetch();
        self.config.batch = self.config.batch.map(|b| b.clamp(1, most.min(MOST_PER_CLAIM)));
        Worker { store: self.store, config: self.config, handlers: self.handlers, fallback: self.fallback }
    }
}

pub(crate) type Handlers = Arc<(HashMap<String, ErasedHandler>, Option<ErasedHandler>)>;
