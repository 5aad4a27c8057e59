//! kyu-sqlite: kyu's embedded backend, one SQLite file.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kyu_store::StoreError> {
//! use kyu_store::Store;
//! let store = kyu_sqlite::SqliteStore::open("kyu.db", Default::default())?;
//! let queues = store.queue_list().await?;
//! # Ok(()) }
//! ```
//!
//! Writes go to one writer thread that folds concurrent operations into
//! shared transactions ([`writer`]); reads use a small pool of read-only
//! connections, which WAL lets run beside the writer. The file is durable as
//! shipped: WAL with `synchronous = FULL`, so an acknowledged transaction
//! survives power loss. Several processes may open one file; each has its own
//! writer, and SQLite's lock (with a busy timeout) orders them. Events reach
//! only this process, so other processes' workers find new jobs by polling.
#![warn(missing_docs)]

mod admin;
mod children;
mod claim;
mod error;
mod finish;
mod insert;
mod log;
mod migrate;
mod observe;
mod read;
mod schedules;
mod writer;

#[cfg(feature = "testing")]
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kyu_core::transition::Retention;
use kyu_core::{Clock, Job, JobId, QueueInfo};
use kyu_store::*;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::broadcast;

use crate::error::SqlResultExt;
use crate::writer::Writer;

/// Settings of a SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Where "now" comes from.
    pub clock: Clock,
    /// How long finished jobs are kept unless they say otherwise.
    pub retention: Retention,
    /// How long past its time limit a job may run before the store takes it
    /// back ("timeout"), heartbeats or not (the server's `--kill-grace`).
    pub timeout_grace_ms: i64,
    /// How long to wait for another process's write lock before giving up.
    pub busy_timeout: Duration,
    /// `FULL` (default) makes each commit durable; `NORMAL` trades the last
    /// commits on power loss for speed.
    pub synchronous: Synchronous,
}

/// SQLite's `synchronous` setting in WAL mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: durable.
    Full,
    /// fsync at checkpoints only: an OS crash or power loss may lose recent commits.
    Normal,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            clock: Clock::system(),
            retention: Retention::default(),
            timeout_grace_ms: 10_000,
            busy_timeout: Duration::from_secs(5),
            synchronous: Synchronous::Full,
        }
    }
}

/// A kyu store on one SQLite file. Cheap to clone; clones share the writer.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    opts: SqliteOptions,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    events: broadcast::Sender<StoreEvent>,
    observers: Observers,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its
    /// schema up to date.
    pub fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = connect(&path, &opts, false)?;
        migrate::run(&mut conn).db()?;
        let found: i64 = conn.query_row("SELECT max(version) FROM kyu_migrations", [], |r| r.get(0)).db()?;
        if found > migrate::latest() {
            return Err(StoreError::Backend(
                format!("{} has schema version {found}, newer than this kyu ({})", path.display(), migrate::latest())
                    .into(),
            ));
        }
        let (events, _) = broadcast::channel(4096);
        let observers = Observers::default();
        let writer = Writer::start(conn, opts.clone(), events.clone(), observers.clone());
        Ok(SqliteStore { inner: Arc::new(Inner { path, opts, writer, readers: Mutex::new(Vec::new()), events, observers }) })
    }

    /// The file this store is on.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Writes a consistent copy of the database to `dest` (a new file) while
    /// it is in use: `VACUUM INTO` on a reader, so writers go on meanwhile
    /// and the copy holds every committed transaction up to its start,
    /// unlike copying the file, which can miss what sits in the WAL.
    pub async fn backup(&self, dest: &Path) -> Result<(), StoreError> {
        if dest.exists() {
            return Err(StoreError::Backend(format!("{} exists already: give a new file", dest.display()).into()));
        }
        let dest = dest.to_string_lossy().into_owned();
        self.read(move |c| {
            c.execute("VACUUM INTO ?1", [&dest]).map(|_| ()).map_err(|e| StoreError::Backend(format!("backup to {dest}: {e}").into()))
        })
        .await
    }

    /// `(transactions, operations)` the writer has run: their ratio is how
    /// many operations group commit folds into each transaction (and fsync).
    pub fn writer_stats(&self) -> (u64, u64) {
        self.inner.writer.stats()
    }

    /// Runs a read on a pooled read-only connection, off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().expect("reader pool").pop();
            let conn = match pooled {
                Some(c) => c,
                None => connect(&inner.path, &inner.opts, true)?,
            };
            let out = f(&conn);
            let mut pool = inner.readers.lock().expect("reader pool");
            if pool.len() < 4 {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))?
    }
}

fn connect(path: &Path, opts: &SqliteOptions, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        StoreError::Unavailable(format!("cannot open SQLite database {}: {e}", path.display()).into())
    })?;
    conn.busy_timeout(opts.busy_timeout).db()?;
    observe::register(&conn).db()?;
    conn.set_prepared_statement_cache_capacity(64);
    if !read_only {
        let sync = match opts.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.execute_batch(&format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};")).db()?;
    }
    Ok(conn)
}

impl Store for SqliteStore {
    async fn job_insert_many(&self, p: JobInsertManyParams) -> Result<Vec<Inserted>, StoreError> {
        self.inner.writer.write(move |tx| insert::insert_many(tx, p.jobs)).await
    }

    async fn job_claim(&self, p: JobClaimParams) -> Result<ClaimResult, StoreError> {
        p.check()?;
        if p.max == 0 || p.queues.is_empty() {
            return Ok(ClaimResult::default());
        }
        self.inner.writer.write(move |tx| claim::claim(tx, p)).await
    }

    async fn job_report_many(&self, reports: Vec<Report>) -> Result<Vec<Result<JobState, StoreError>>, StoreError> {
        // One operation for the whole batch, so it shares one savepoint; each
        // report still fails alone because a refused report writes nothing.
        self.inner.writer.write(move |tx| finish::report_many(tx, reports)).await
    }

    async fn job_report_and_claim(
        &self,
        reports: Vec<Report>,
        claim: JobClaimParams,
    ) -> Result<(Vec<Result<JobState, StoreError>>, ClaimResult), StoreError> {
        claim.check()?;
        self.inner
            .writer
            .write(move |tx| {
                let reported = finish::report_many(tx, reports)?;
                let claimed = if claim.max == 0 || claim.queues.is_empty() {
                    ClaimResult::default()
                } else {
                    claim::claim(tx, claim)?
                };
                Ok((reported, claimed))
            })
            .await
    }

    async fn job_heartbeat_many(&self, p: JobHeartbeatParams) -> Result<Vec<Result<Heartbeat, StoreError>>, StoreError> {
        p.check()?;
        self.inner.writer.write(move |tx| Ok(finish::heartbeat_many(tx, p))).await
    }

    async fn job_add_children(&self, p: JobAddChildrenParams) -> Result<AddedChildren, StoreError> {
        self.inner.writer.write(move |tx| children::add_children(tx, p)).await
    }

    async fn job_save(&self, p: JobSaveParams) -> Result<(), StoreError> {
        self.inner.writer.write(move |tx| finish::save(tx, p)).await
    }

    async fn job_get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let id = id.clone();
        self.read(move |c| read::job_get(c, id.as_str())).await
    }

    async fn job_list(&self, p: JobListParams) -> Result<JobPage, StoreError> {
        p.check()?;
        self.read(move |c| read::job_list(c, &p)).await
    }

    async fn job_cancel(&self, id: &JobId) -> Result<Job, StoreError> {
        let id = id.clone();
        self.inner.writer.write(move |tx| admin::cancel(tx, &id)).await
    }

    async fn job_retry(&self, p: JobRetryParams) -> Result<Job, StoreError> {
        self.inner.writer.write(move |tx| admin::retry(tx, p)).await
    }

    async fn job_log_append(&self, p: JobLogAppendParams) -> Result<(), StoreError> {
        if p.lines.is_empty() {
            return Ok(());
        }
        self.inner.writer.write(move |tx| log::append(tx, p)).await
    }

    async fn job_log(&self, p: JobLogParams) -> Result<Vec<LogLine>, StoreError> {
        self.read(move |c| log::read(c, &p)).await
    }

    async fn job_retry_many(&self, p: JobRetryManyParams) -> Result<u64, StoreError> {
        p.check()?;
        self.inner.writer.write(move |tx| admin::retry_many(tx, p)).await
    }

    async fn job_delete_many(&self, p: JobRetryManyParams) -> Result<u64, StoreError> {
        p.check()?;
        self.inner.writer.write(move |tx| admin::delete_many(tx, p)).await
    }

    async fn job_delete(&self, id: &JobId) -> Result<(), StoreError> {
        let id = id.clone();
        self.inner.writer.write(move |tx| admin::delete(tx, &id)).await
    }

    async fn job_rescue(&self) -> Result<RescueCounts, StoreError> {
        self.inner.writer.write(finish::rescue).await
    }

    async fn job_prune(&self, p: JobPruneParams) -> Result<u64, StoreError> {
        self.inner
            .writer
            .write(move |tx| {
                observe::prune(tx)?;
                admin::prune(tx, p.batch)
            })
            .await
    }

    async fn job_events(&self, id: &JobId) -> Result<Vec<kyu_core::timeline::JobEvent>, StoreError> {
        let id = id.clone();
        self.read(move |c| observe::job_events(c, &id)).await
    }

    async fn worker_seen(&self, p: WorkerSeenParams) -> Result<(), StoreError> {
        self.inner.writer.write(move |tx| observe::worker_seen(tx, p)).await
    }

    async fn worker_list(&self) -> Result<Vec<kyu_core::tally::WorkerInfo>, StoreError> {
        let now = self.inner.opts.clock.now();
        self.read(move |c| observe::worker_list(c, now)).await
    }

    async fn stats(&self, p: StatsParams) -> Result<Vec<kyu_core::tally::StatsPoint>, StoreError> {
        // On the writer thread, which holds the statistics not written yet.
        self.inner.writer.write(move |tx| observe::stats(tx.conn, &p, tx.pending)).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.writer.write(|tx| {
            tx.flush = true;
            Ok(())
        })
        .await
    }

    fn observers(&self) -> &Observers {
        &self.inner.observers
    }

    async fn queue_list(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.read(|c| read::queue_list(c, None)).await
    }

    async fn queue_update(&self, p: QueueUpdateParams) -> Result<QueueInfo, StoreError> {
        self.inner.writer.write(move |tx| admin::queue_update(tx, p)).await
    }

    async fn schedule_put(&self, p: SchedulePutParams) -> Result<kyu_core::Schedule, StoreError> {
        self.inner.writer.write(move |tx| schedules::put(tx, p)).await
    }

    async fn schedule_get(&self, name: &str) -> Result<Option<kyu_core::Schedule>, StoreError> {
        let name = name.to_owned();
        self.read(move |c| schedules::get(c, &name)).await
    }

    async fn schedule_list(&self) -> Result<Vec<kyu_core::Schedule>, StoreError> {
        self.read(schedules::list).await
    }

    async fn schedule_delete(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.inner.writer.write(move |tx| schedules::delete(tx, &name)).await
    }

    async fn schedule_advance(&self, p: ScheduleAdvanceParams) -> Result<bool, StoreError> {
        self.inner.writer.write(move |tx| schedules::advance(tx, p)).await
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    fn supports_listen_notify(&self) -> bool {
        false
    }

    fn clock(&self) -> &Clock {
        &self.inner.opts.clock
    }
}
