//! kyu-postgres: kyu's distributed backend on PostgreSQL.
//!
//! Many servers and workers on many machines share one database. Claims use
//! `FOR UPDATE SKIP LOCKED`, so concurrent claimers never wait on each other
//! or take the same job; completions of a whole batch are one statement;
//! `LISTEN/NOTIFY` wakes idle workers and result waiters on every node within
//! milliseconds, with polling as the fallback. Time comes from the store's
//! clock (passed as parameters), as on SQLite, so both backends behave alike.
//!
//! A Rust caller can enqueue inside its own transaction with
//! [`PgStore::enqueue_in`]: the jobs exist if and only if it commits. A
//! handler can likewise report its job inside the transaction that writes its
//! effects with [`PgStore::report_in`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), kyu_store::StoreError> {
//! use kyu_store::Store;
//! let store = kyu_postgres::PgStore::connect("postgres://localhost/app", Default::default()).await?;
//! let queues = store.queue_list().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod admin;
mod children;
mod claim;
mod conn;
mod error;
mod finish;
mod head;
mod insert;
mod listen;
mod log;
mod migrate;
mod observe;
mod read;
mod schedules;
mod settle;
mod tls;
mod tx;

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(test)]
mod tests {
    #[test]
    fn schema_parameter_is_taken_out_of_the_url() {
        assert_eq!(super::split_schema("postgres://h/db"), ("postgres://h/db".into(), None));
        assert_eq!(super::split_schema("postgres://h/db?schema=kyu"), ("postgres://h/db".into(), Some("kyu".into())));
        assert_eq!(
            super::split_schema("postgres://h/db?sslmode=disable&schema=k2"),
            ("postgres://h/db?sslmode=disable".into(), Some("k2".into()))
        );
    }
}

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
/// The pool behind [`PgStore::pool`] and the connections it hands out.
pub use deadpool_postgres::{Object as PooledClient, Pool};
use kyu_core::transition::Retention;
use kyu_core::{Clock, Job, JobId, NewJob, QueueInfo};
use kyu_store::*;
use tokio::sync::broadcast;

pub use conn::Conn;
pub use tls::{SslMode, TlsSettings};

use crate::error::{PgResultExt, pool_err};
use crate::tx::{Settings, Tx};

/// Settings of a PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Where "now" comes from.
    pub clock: Clock,
    /// How long finished jobs are kept unless they say otherwise.
    pub retention: Retention,
    /// How long past its time limit a job may run before the store takes it
    /// back ("timeout"), heartbeats or not (the server's `--kill-grace`).
    pub timeout_grace_ms: i64,
    /// Schema for kyu's tables (created if missing); `None` uses the
    /// connection's search path (normally `public`).
    pub schema: Option<String>,
    /// Most pooled connections this process opens (plus one for LISTEN);
    /// `?pool_size=N` in the URL sets it.
    pub pool_size: usize,
    /// LISTEN for other processes' notifications (jobs available, jobs
    /// finished): workers and servers need it. Off for connections that only
    /// look, since every listening connection in the database runs a
    /// transaction to read each notification.
    pub listen: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            clock: Clock::system(),
            retention: Retention::default(),
            timeout_grace_ms: 10_000,
            schema: None,
            pool_size: 16,
            listen: true,
        }
    }
}

/// A kyu store on PostgreSQL. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    clock: Clock,
    settings: Settings,
    events: broadcast::Sender<StoreEvent>,
    listening: Arc<listen::Listening>,
    listener: tokio::task::JoinHandle<()>,
    heads: head::Resets,
    /// Queues lately found to have limits, which [`claim::claim_at_once`]
    /// cannot serve, so their claims skip it for a while.
    limited: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// How long a queue found to have limits skips [`claim::claim_at_once`];
/// then one claim tries it again (its limits may have been lifted).
const LIMITED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Runs `$body` (an expression using `$tx`) in a transaction on a pooled
/// connection, sends its notifications, and commits, in as few round trips
/// as the body's statements allow (see [`conn::Pipelined`]).
macro_rules! in_tx {
    ($store:expr, $tx:ident => $body:expr) => {{
        let t = crate::conn::Pipelined::new($store.inner.pool.get().await.map_err(pool_err)?);
        let $tx = Tx::own(&t, $store.inner.clock.now(), &$store.inner.settings);
        // The last statement (the notifications) carries the COMMIT.
        let done = match $body {
            Ok(out) => $tx.notify().await.map(|()| out),
            Err(e) => Err(e),
        };
        let (now, happened) = $tx.take_tally();
        let recheck = $tx.take_recheck();
        drop($tx);
        let out = match done {
            Ok(out) => out,
            Err(e) => {
                t.rollback().await;
                return Err(e);
            }
        };
        let mut client = t.commit().await.db()?;
        $store.committed(now, &happened).await;
        if !recheck.is_empty() {
            $store.settle_after_commit(&mut client, recheck).await;
        }
        Ok(out)
    }};
}

impl PgStore {
    /// Connects to `url`, brings the schema up to date (safe when several
    /// nodes start at once), and starts listening for notifications.
    ///
    /// A `schema=NAME` query parameter in the URL (`postgres://host/db?schema=kyu`)
    /// puts kyu's tables in that schema, like [`PgOptions::schema`].
    pub async fn connect(url: &str, mut opts: PgOptions) -> Result<PgStore, StoreError> {
        let (url, schema) = split_schema(url);
        if schema.is_some() {
            opts.schema = schema;
        }
        let (url, pool_size) = split_param(&url, "pool_size");
        if let Some(n) = pool_size {
            opts.pool_size = n
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| StoreError::Backend(format!("pool_size `{n}`: give 1 to 1000 connections").into()))?;
        }
        let (url, tls) = tls::split_tls(&url)?;
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| StoreError::Backend(format!("bad PostgreSQL URL: {e}").into()))?;
        config.ssl_mode(tls.mode.driver());
        let connector = tls::connector(&tls)?;
        if let Some(schema) = &opts.schema {
            if schema.is_empty() || !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                return Err(StoreError::Backend(format!("schema `{schema}` must be [a-z0-9_]+").into()));
            }
            config.options(format!("-c search_path={schema} -c client_min_messages=warning"));
        } else {
            config.options("-c client_min_messages=warning");
        }
        // Named so operators can find kyu in pg_stat_activity, unless the
        // URL names it (`?application_name=kyu-worker-3`).
        if config.get_application_name().is_none() {
            config.application_name("kyu");
        }
        let (mut client, connection) = config.connect(connector.clone()).await.map_err(|e| {
            let why = crate::error::PgError::from(e);
            StoreError::Unavailable(format!("cannot connect to PostgreSQL (sslmode={}): {why}", sslmode_name(tls.mode)).into())
        })?;
        let conn_task = tokio::spawn(connection);
        migrate::run(&mut client, opts.schema.as_deref()).await.db()?;
        let found: i32 = client.query_one("SELECT max(version) FROM kyu_migrations", &[]).await.db()?.get(0);
        drop(client);
        let _ = conn_task.await;
        if found > migrate::latest() {
            return Err(StoreError::Backend(
                format!("the database has kyu schema version {found}, newer than this kyu ({})", migrate::latest()).into(),
            ));
        }
        let manager = Manager::from_config(config.clone(), connector.clone(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            // The most recently used connection first: a few backends stay
            // busy and warm instead of every one taking turns (W1 +7 %).
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .build()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let channel = format!("kyu:{}", opts.schema.as_deref().unwrap_or("public"));
        let (events, _) = broadcast::channel(4096);
        let listening = Arc::new(listen::Listening::default());
        let listener = if opts.listen {
            tokio::spawn(listen::run(config, connector, channel.clone(), events.clone(), listening.clone()))
        } else {
            tokio::spawn(async {})
        };
        let settings =
            Settings {
                retention: opts.retention,
                timeout_grace_ms: opts.timeout_grace_ms,
                channel,
                observers: Observers::default(),
                pending: Default::default(),
            };
        Ok(PgStore {
            inner: Arc::new(Inner { pool, clock: opts.clock, settings, events, listening, listener, heads: Default::default(), limited: Default::default() }),
        })
    }

    /// After one of the store's own transactions commits: its statistics
    /// join the pending ones, its changes go to observers. The first
    /// pending row starts a timer that writes them all a second later; a
    /// commit finding them overdue (the timer's write failed) writes them.
    async fn committed(&self, now: kyu_core::Millis, happened: &kyu_core::tally::Tally) {
        let pending = &self.inner.settings.pending;
        let (started, due) = {
            let mut rows = pending.rows.lock().expect("pending statistics");
            let was_empty = rows.is_empty();
            rows.add(happened.minutes(now));
            (was_empty && !rows.is_empty(), rows.is_due())
        };
        self.inner.settings.observers.tell(now, &happened.happenings);
        if due && let Ok(writing) = pending.writing.try_lock() {
            let _ = self.write_pending(writing).await;
        }
        if started {
            let store = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                tokio::time::sleep(kyu_core::tally::PendingStats::FLUSH_AFTER).await;
                if let Some(inner) = store.upgrade() {
                    let _ = PgStore { inner }.flush().await;
                }
            });
        }
    }

    /// After a commit that counted finished dependencies of waiting jobs:
    /// settles those whose count is now zero (see `settle.rs`), and so on
    /// for what that settling counted. On failure maintenance does it.
    async fn settle_after_commit(&self, client: &mut deadpool_postgres::Client, mut seqs: Vec<i64>) {
        while !seqs.is_empty() {
            let due = match settle::due_for_release(&*client, &seqs).await {
                Ok(due) if due.is_empty() => return,
                Ok(due) => due,
                Err(e) => return tracing::warn!(error = %e, "checking waiting jobs after a commit failed; maintenance will"),
            };
            let settled: Result<Vec<i64>, StoreError> = async {
                let t = client.transaction().await.db()?;
                let tx = Tx::own(&t, self.inner.clock.now(), &self.inner.settings);
                settle::settle_counted(&tx, &due, false).await?;
                tx.notify().await?;
                let (now, happened) = tx.take_tally();
                let next = tx.take_recheck();
                drop(tx);
                t.commit().await.db()?;
                self.committed(now, &happened).await;
                Ok(next)
            }
            .await;
            match settled {
                Ok(next) => seqs = next,
                Err(e) => return tracing::warn!(error = %e, "settling waiting jobs after a commit failed; maintenance will"),
            }
        }
    }

    /// A claim of one queue in one round trip ([`claim::claim_at_once`]),
    /// unless the claim names several queues or its queue lately had
    /// limits; `None` to claim the usual way.
    async fn claim_at_once(&self, p: &JobClaimParams) -> Result<Option<ClaimResult>, StoreError> {
        let queue = p.queues[0].as_str();
        if p.queues.iter().any(|q| q.as_str() != queue) {
            return Ok(None);
        }
        {
            let mut limited = self.inner.limited.lock().expect("limited");
            match limited.get(queue) {
                Some(since) if since.elapsed() < LIMITED_FOR => return Ok(None),
                Some(_) => {
                    limited.remove(queue);
                }
                None => {}
            }
        }
        let done: Result<_, StoreError> = async { in_tx!(self, tx => claim::claim_at_once(&tx, p).await) }.await;
        match done? {
            claim::AtOnce::Claimed(claimed) => {
                self.reset_heads(&claimed);
                Ok(Some(claimed))
            }
            claim::AtOnce::Limited => {
                self.inner.limited.lock().expect("limited").insert(queue.to_owned(), std::time::Instant::now());
                Ok(None)
            }
        }
    }

    /// After a claim: resets the head of the queues it took jobs from, in
    /// the background, if due (see `head.rs`); a failed reset only leaves
    /// claims more to walk.
    fn reset_heads(&self, claimed: &ClaimResult) {
        let due = self.inner.heads.due(claimed.jobs.iter().map(|j| j.queue.as_str()));
        if due.is_empty() {
            return;
        }
        let store = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let Some(inner) = store.upgrade() else { return };
            let Ok(client) = inner.pool.get().await else { return };
            for queue in due {
                if let Err(e) = head::reset(&client, &queue).await {
                    tracing::debug!(error = %e, queue, "resetting the queue's head failed; the next claim will");
                }
            }
        });
    }

    /// Writes the pending statistics in one insert; on failure they stay pending.
    async fn write_pending(&self, _writing: tokio::sync::MutexGuard<'_, ()>) -> Result<(), StoreError> {
        let pending = &self.inner.settings.pending;
        let rows = pending.rows.lock().expect("pending statistics").take();
        if rows.is_empty() {
            return Ok(());
        }
        let written = match self.inner.pool.get().await.map_err(pool_err) {
            Ok(client) => observe::add_minutes(&client, &rows).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &written {
            tracing::warn!(error = %e, "writing per-minute statistics failed; they stay pending");
            pending.rows.lock().expect("pending statistics").add(rows);
        }
        written
    }

    /// Drops a schema and everything in it (what `kyu bench` does with the
    /// scratch schema it measured in).
    pub async fn drop_schema(&self, schema: &str) -> Result<(), StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", migrate::quote_ident(schema))).await.db()
    }

    /// Enqueues inside the caller's transaction: the jobs exist if and only
    /// if `tx` commits, and waiters are notified only then.
    pub async fn enqueue_in(&self, tx: &tokio_postgres::Transaction<'_>, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, StoreError> {
        let t = Tx::new(tx, self.inner.clock.now(), &self.inner.settings);
        let out = insert::insert_many(&t, jobs).await?;
        t.notify().await?;
        // Observers hear of it now, before the caller's commit: metrics
        // count what this process did, and the live views only hint.
        t.tell();
        Ok(out)
    }

    /// Reports on claimed jobs inside the caller's transaction, so a job is
    /// completed if and only if the handler's own writes commit with it.
    pub async fn report_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        reports: Vec<Report>,
    ) -> Result<Vec<Result<JobState, StoreError>>, StoreError> {
        let t = Tx::new(tx, self.inner.clock.now(), &self.inner.settings);
        let out = finish::report_many(&t, reports).await?;
        t.notify().await?;
        t.tell();
        Ok(out)
    }

    /// The connection pool, for callers that want their own transactions.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Whether the LISTEN connection is up right now.
    pub fn is_listening(&self) -> bool {
        self.inner.listening.up.load(Ordering::Relaxed)
    }

    /// How many times the LISTEN connection has come up (1 until it is
    /// lost and reconnects).
    pub fn listen_connects(&self) -> u64 {
        self.inner.listening.connects.load(Ordering::Relaxed)
    }
}

fn sslmode_name(m: SslMode) -> &'static str {
    match m {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// Takes kyu's own `schema=` parameter out of a URL, which the driver would
/// refuse as unknown.
fn split_schema(url: &str) -> (String, Option<String>) {
    split_param(url, "schema")
}

/// Takes the parameter `name` (one of kyu's own: `schema`, `pool_size`) out
/// of a URL's query.
fn split_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
    let mut found = None;
    let prefix = format!("{name}=");
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix(prefix.as_str()) {
            Some(v) => {
                found = Some(v.to_owned());
                false
            }
            None => true,
        })
        .collect();
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    (url, found)
}

impl Store for PgStore {
    async fn job_insert_many(&self, p: JobInsertManyParams) -> Result<Vec<Inserted>, StoreError> {
        let plain = p.jobs.iter().all(|j| j.unique_key.is_none() && j.depends_on.is_empty());
        if plain {
            // One statement that inserts, creates queues and notifies: it is
            // atomic on its own, so no explicit transaction (one round trip).
            // Its statistics join the pending ones, as a transaction's do.
            let client = self.inner.pool.get().await.map_err(pool_err)?;
            let t = Tx::own(&client, self.inner.clock.now(), &self.inner.settings);
            let out = insert::insert_many(&t, p.jobs).await?;
            let (now, happened) = t.take_tally();
            // The connection goes back first: writing the pending
            // statistics may need one (a pool of one would wait forever).
            drop(t);
            drop(client);
            self.committed(now, &happened).await;
            return Ok(out);
        }
        in_tx!(self, tx => insert::insert_many(&tx, p.jobs).await)
    }

    async fn job_claim(&self, p: JobClaimParams) -> Result<ClaimResult, StoreError> {
        p.check()?;
        if p.max == 0 || p.queues.is_empty() {
            return Ok(ClaimResult::default());
        }
        if let Some(claimed) = self.claim_at_once(&p).await? {
            return Ok(claimed);
        }
        let claimed: Result<ClaimResult, StoreError> = async { in_tx!(self, tx => claim::claim(&tx, p).await) }.await;
        let claimed = claimed?;
        self.reset_heads(&claimed);
        Ok(claimed)
    }

    async fn job_report_and_claim(
        &self,
        reports: Vec<Report>,
        p: JobClaimParams,
    ) -> Result<(Vec<Result<JobState, StoreError>>, ClaimResult), StoreError> {
        p.check()?;
        if reports.is_empty() && p.max > 0 && !p.queues.is_empty() {
            return Ok((Vec::new(), self.job_claim(p).await?));
        }
        let done: Result<_, StoreError> = async { in_tx!(self, tx => claim::report_and_claim(&tx, reports, p).await) }.await;
        let (reported, claimed) = done?;
        self.reset_heads(&claimed);
        Ok((reported, claimed))
    }

    async fn job_report_many(&self, reports: Vec<Report>) -> Result<Vec<Result<JobState, StoreError>>, StoreError> {
        in_tx!(self, tx => finish::report_many(&tx, reports).await)
    }

    async fn job_heartbeat_many(&self, p: JobHeartbeatParams) -> Result<Vec<Result<Heartbeat, StoreError>>, StoreError> {
        p.check()?;
        in_tx!(self, tx => finish::heartbeat_many(&tx, p).await)
    }

    async fn job_add_children(&self, p: JobAddChildrenParams) -> Result<AddedChildren, StoreError> {
        in_tx!(self, tx => children::add_children(&tx, p).await)
    }

    async fn job_save(&self, p: JobSaveParams) -> Result<(), StoreError> {
        in_tx!(self, tx => finish::save(&tx, p).await)
    }

    async fn job_get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        read::job_get(&client, id.as_str()).await
    }

    async fn job_list(&self, p: JobListParams) -> Result<JobPage, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        read::job_list(&client, &p).await
    }

    async fn job_cancel(&self, id: &JobId) -> Result<Job, StoreError> {
        in_tx!(self, tx => admin::cancel(&tx, id).await)
    }

    async fn job_retry(&self, p: JobRetryParams) -> Result<Job, StoreError> {
        in_tx!(self, tx => admin::retry(&tx, p).await)
    }

    async fn job_log_append(&self, p: JobLogAppendParams) -> Result<(), StoreError> {
        if p.lines.is_empty() {
            return Ok(());
        }
        in_tx!(self, tx => log::append(&tx, p).await)
    }

    async fn job_log(&self, p: JobLogParams) -> Result<Vec<LogLine>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        log::read(&client, &p).await
    }

    async fn job_retry_many(&self, p: JobRetryManyParams) -> Result<u64, StoreError> {
        p.check()?;
        in_tx!(self, tx => admin::retry_many(&tx, p).await)
    }

    async fn job_delete_many(&self, p: JobRetryManyParams) -> Result<u64, StoreError> {
        p.check()?;
        in_tx!(self, tx => admin::delete_many(&tx, p).await)
    }

    async fn job_delete(&self, id: &JobId) -> Result<(), StoreError> {
        in_tx!(self, tx => admin::delete(&tx, id).await)
    }

    async fn job_rescue(&self) -> Result<RescueCounts, StoreError> {
        let counts: Result<RescueCounts, StoreError> = in_tx!(self, tx => finish::rescue(&tx).await);
        // Folding rides on the rescue's tick, in its own short transaction.
        let folded: Result<(), StoreError> = in_tx!(self, tx => observe::fold(&tx).await);
        folded?;
        // And the statistics pending when no transaction came to write them.
        let _ = self.flush().await;
        counts
    }

    async fn job_events(&self, id: &JobId) -> Result<Vec<kyu_core::timeline::JobEvent>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        observe::job_events(&client, id).await
    }

    async fn worker_seen(&self, p: WorkerSeenParams) -> Result<(), StoreError> {
        in_tx!(self, tx => observe::worker_seen(&tx, p).await)
    }

    async fn worker_list(&self) -> Result<Vec<kyu_core::tally::WorkerInfo>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        observe::worker_list(&client, self.inner.clock.now()).await
    }

    async fn stats(&self, p: StatsParams) -> Result<Vec<kyu_core::tally::StatsPoint>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        let pending = &self.inner.settings.pending;
        let _writing = pending.writing.lock().await;
        let mut rows = observe::stats(&client, &p).await?;
        pending.rows.lock().expect("pending statistics").add_to(&mut rows, p.since, p.queue.as_ref().map(|q| q.as_str()));
        Ok(kyu_core::tally::points(rows))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let writing = self.inner.settings.pending.writing.lock().await;
        self.write_pending(writing).await
    }

    fn observers(&self) -> &Observers {
        &self.inner.settings.observers
    }

    async fn job_prune(&self, p: JobPruneParams) -> Result<u64, StoreError> {
        in_tx!(self, tx => admin::prune(&tx, p.batch).await)
    }

    async fn queue_list(&self) -> Result<Vec<QueueInfo>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        read::queue_list(&client, None).await
    }

    async fn queue_update(&self, p: QueueUpdateParams) -> Result<QueueInfo, StoreError> {
        in_tx!(self, tx => admin::queue_update(&tx, p).await)
    }

    async fn schedule_put(&self, p: SchedulePutParams) -> Result<kyu_core::Schedule, StoreError> {
        in_tx!(self, tx => schedules::put(&tx, p).await)
    }

    async fn schedule_get(&self, name: &str) -> Result<Option<kyu_core::Schedule>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        schedules::get(&client, name).await
    }

    async fn schedule_list(&self) -> Result<Vec<kyu_core::Schedule>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        schedules::list(&client).await
    }

    async fn schedule_delete(&self, name: &str) -> Result<(), StoreError> {
        in_tx!(self, tx => schedules::delete(&tx, name).await)
    }

    async fn schedule_advance(&self, p: ScheduleAdvanceParams) -> Result<bool, StoreError> {
        in_tx!(self, tx => schedules::advance(&tx, p).await)
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    async fn job_watch(&self, id: &JobId) -> Result<(), StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        client
            .execute(
                "UPDATE kyu_jobs SET finish_watched = true \
                 WHERE id = $1 AND NOT finish_watched AND state NOT IN ('completed', 'failed', 'cancelled')",
                &[&id.as_str()],
            )
            .await
            .db()?;
        Ok(())
    }

    fn supports_listen_notify(&self) -> bool {
        true
    }

    fn clock(&self) -> &Clock {
        &self.inner.clock
    }
}
