//! What the console and `/metrics` read: timelines, per-minute statistics,
//! the worker registry. Counts per queue and state are kept by triggers
//! (migration 6).

use std::collections::BTreeMap;

use kyu_core::tally::{Histogram, Minute, Minutes, PendingStats, STATS_KEEP_MS, StatsPoint, WORKER_GONE_MS, WorkerInfo};
use kyu_core::timeline::{self, JobEvent};
use kyu_core::{JobId, JobState, Millis};
use kyu_store::{StatsParams, StoreError, WorkerSeenParams};
use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::SqlResultExt;
use crate::read::{Json, State, Ts};
use crate::writer::Tx;

/// Registers `kyu_event_push(events, at, type, attempt, worker, message)`,
/// which appends to a timeline by [`timeline::push_json`]'s rule, and
/// `kyu_event_archive(events, state, started_at, attempt, worker)`, which
/// stores a running job's claim when its run ends
/// ([`timeline::archive_claim_json`]).
pub(crate) fn register(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("kyu_event_archive", 5, flags, |ctx| {
        let events: String = ctx.get(0)?;
        let state: String = ctx.get(1)?;
        let started_at = match ctx.get::<Option<String>>(2)? {
            Some(t) => Some(Millis::parse(&t).map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?),
            None => None,
        };
        let attempt: Option<i64> = ctx.get(3)?;
        let worker: Option<String> = ctx.get(4)?;
        timeline::archive_claim_json(&events, &state, started_at, attempt, worker.as_deref())
            .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
    })?;
    conn.create_scalar_function("kyu_event_push", 6, flags, |ctx| {
        let events: String = ctx.get(0)?;
        let at = Millis::parse(&ctx.get::<String>(1)?).map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?;
        let kind: Option<String> = ctx.get(2)?;
        let attempt: Option<i64> = ctx.get(3)?;
        let worker: Option<String> = ctx.get(4)?;
        let message: Option<String> = ctx.get(5)?;
        timeline::push_json(&events, at, kind.as_deref(), attempt, worker.as_deref(), message.as_deref())
            .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
    })
}

/// Changes to `kyu_queue_counts` for the transitions every job takes
/// (insert, claim, completion), gathered over a group and written once per
/// queue and state at its commit: per-row triggers cost two statements per
/// job and transition on the writer's thread, the hot path's one thread.
/// The triggers of migration 0006 count every other change.
#[derive(Default)]
pub(crate) struct Counted(BTreeMap<(String, &'static str), i64>);

impl Counted {
    /// `n` jobs of `queue` moved from `from` (None: inserted) to `to`.
    pub fn moved(&mut self, queue: &str, from: Option<JobState>, to: JobState, n: i64) {
        if n == 0 {
            return;
        }
        if let Some(from) = from {
            *self.0.entry((queue.to_owned(), from.as_str())).or_default() -= n;
        }
        *self.0.entry((queue.to_owned(), to.as_str())).or_default() += n;
    }

    pub fn append(&mut self, other: &mut Counted) {
        for (k, n) in std::mem::take(&mut other.0) {
            *self.0.entry(k).or_default() += n;
        }
    }

    pub fn write(&self, conn: &Connection) -> Result<(), StoreError> {
        for ((queue, state), n) in &self.0 {
            if *n != 0 {
                conn.prepare_cached(
                    "INSERT INTO kyu_queue_counts (queue, state, n) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (queue, state) DO UPDATE SET n = n + ?3",
                )
                .db()?
                .execute(params![queue, state, n])
                .db()?;
            }
        }
        Ok(())
    }
}

/// Adds statistics to their minutes' rows.
pub(crate) fn write_minutes(conn: &Connection, rows: &Minutes) -> Result<(), StoreError> {
    for ((minute, queue), add) in rows {
        let mut row = read_minute(conn, *minute, queue)?.unwrap_or_default();
        row.merge(add);
        conn.prepare_cached(
            "INSERT INTO kyu_stats (minute, queue, enqueued, completed, failed, retried, wait_hist, run_hist) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (minute, queue) DO UPDATE SET enqueued = ?3, completed = ?4, failed = ?5, retried = ?6, \
               wait_hist = ?7, run_hist = ?8",
        )
        .db()?
        .execute(params![
            minute.0,
            queue,
            row.enqueued,
            row.completed,
            row.failed,
            row.retried,
            hist(&row.wait),
            hist(&row.run)
        ])
        .db()?;
    }
    Ok(())
}

fn hist(h: &Histogram) -> String {
    serde_json::to_string(h).expect("histograms serialise")
}

fn minute_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Minute> {
    Ok(Minute {
        enqueued: r.get(at)?,
        completed: r.get(at + 1)?,
        failed: r.get(at + 2)?,
        retried: r.get(at + 3)?,
        wait: r.get::<_, Json<Histogram>>(at + 4)?.0,
        run: r.get::<_, Json<Histogram>>(at + 5)?.0,
    })
}

fn read_minute(conn: &Connection, minute: Millis, queue: &str) -> Result<Option<Minute>, StoreError> {
    conn.prepare_cached(
        "SELECT enqueued, completed, failed, retried, wait_hist, run_hist FROM kyu_stats WHERE minute = ?1 AND queue = ?2",
    )
    .db()?
    .query_row(params![minute.0, queue], |r| minute_from_row(r, 0))
    .optional()
    .db()
}

/// The rows asked for, with the statistics this process has not written yet.
pub(crate) fn stats(conn: &Connection, p: &StatsParams, pending: &PendingStats) -> Result<Vec<StatsPoint>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT minute, queue, enqueued, completed, failed, retried, wait_hist, run_hist FROM kyu_stats \
             WHERE minute >= ?1 AND (?2 IS NULL OR queue = ?2) ORDER BY minute, queue",
        )
        .db()?;
    let rows = stmt
        .query_map(params![kyu_core::tally::minute_of(p.since).0, p.queue.as_ref().map(|q| q.as_str())], |r| {
            Ok(((Millis(r.get(0)?), r.get::<_, String>(1)?), minute_from_row(r, 2)?))
        })
        .db()?;
    let mut read: Minutes = rows.collect::<Result<_, _>>().db()?;
    pending.add_to(&mut read, p.since, p.queue.as_ref().map(|q| q.as_str()));
    Ok(kyu_core::tally::points(read))
}

pub(crate) fn job_events(conn: &Connection, id: &JobId) -> Result<Vec<JobEvent>, StoreError> {
    let found: Option<(String, timeline::Row)> = conn
        .prepare_cached("SELECT events, state, created_at, started_at, finished_at, attempt, worker FROM kyu_jobs WHERE id = ?1")
        .db()?
        .query_row([id.as_str()], |r| {
            let row = timeline::Row {
                state: r.get::<_, State>(1)?.0,
                created_at: r.get::<_, Ts>(2)?.0,
                started_at: r.get::<_, Option<Ts>>(3)?.map(|t| t.0),
                finished_at: r.get::<_, Option<Ts>>(4)?.map(|t| t.0),
                attempt: r.get(5)?,
                worker: r.get(6)?,
            };
            Ok((r.get(0)?, row))
        })
        .optional()
        .db()?;
    let (events, row) = found.ok_or_else(|| StoreError::job_not_found(id))?;
    timeline::decode(&events, &row).map_err(|e| StoreError::Backend(format!("unreadable events of job `{id}`: {e}").into()))
}

pub(crate) fn worker_seen(tx: &mut Tx<'_>, p: WorkerSeenParams) -> Result<(), StoreError> {
    kyu_core::validate::label("worker", &p.name)?;
    let queues = serde_json::to_string(&p.queues).expect("queue names serialise");
    tx.conn
        .prepare_cached(
            "INSERT INTO kyu_workers (name, host, pid, queues, concurrency, runs, started_at, last_seen_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
             ON CONFLICT (name) DO UPDATE SET host = coalesce(?2, host), pid = coalesce(?3, pid), \
               queues = CASE WHEN ?4 = '[]' THEN queues ELSE ?4 END, concurrency = coalesce(?5, concurrency), \
               runs = coalesce(?6, runs), last_seen_at = ?7, \
               started_at = CASE WHEN ?3 IS NOT NULL AND pid IS NOT ?3 THEN ?7 ELSE started_at END",
        )
        .db()?
        .execute(params![p.name, p.host, p.pid, queues, p.concurrency, p.runs, tx.now_str])
        .db()?;
    Ok(())
}

pub(crate) fn worker_list(conn: &Connection, now: Millis) -> Result<Vec<WorkerInfo>, StoreError> {
    let since = Millis(now.0 - WORKER_GONE_MS).to_rfc3339();
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, host, pid, queues, concurrency, runs, started_at, last_seen_at FROM kyu_workers \
             WHERE last_seen_at >= ?1 ORDER BY name",
        )
        .db()?;
    let rows = stmt
        .query_map([since], |r| {
            Ok(WorkerInfo {
                name: r.get(0)?,
                host: r.get(1)?,
                pid: r.get(2)?,
                queues: r.get::<_, Json<Vec<String>>>(3)?.0,
                concurrency: r.get(4)?,
                runs: r.get(5)?,
                running: Vec::new(),
                started_at: r.get::<_, Ts>(6)?.0,
                last_seen_at: r.get::<_, Ts>(7)?.0,
            })
        })
        .db()?;
    let mut workers: BTreeMap<String, WorkerInfo> = BTreeMap::new();
    for w in rows {
        let w = w.db()?;
        workers.insert(w.name.clone(), w);
    }
    // What each runs now, from the jobs themselves: never out of date. No
    // ORDER BY: sorting by seq in SQL would make SQLite walk the whole
    // table in rowid order instead of the partial index of running rows.
    let mut stmt = conn.prepare_cached("SELECT seq, worker, id FROM kyu_jobs WHERE state = 'running'").db()?;
    let mut rows = stmt.query([]).db()?;
    let mut running: Vec<(i64, String, String)> = Vec::new();
    while let Some(r) = rows.next().db()? {
        if let Some(worker) = r.get::<_, Option<String>>(1).db()? {
            running.push((r.get(0).db()?, worker, r.get(2).db()?));
        }
    }
    running.sort_unstable_by_key(|r| r.0);
    for (_, worker, id) in running {
        if let (Some(w), Ok(id)) = (workers.get_mut(&worker), JobId::new(id)) {
            w.running.push(id);
        }
    }
    Ok(workers.into_values().collect())
}

/// Forgets statistics past [`STATS_KEEP_MS`] and workers gone for a day.
pub(crate) fn prune(tx: &mut Tx<'_>) -> Result<u64, StoreError> {
    let old = kyu_core::tally::minute_of(Millis(tx.now.0 - STATS_KEEP_MS)).0;
    let stats = tx.conn.prepare_cached("DELETE FROM kyu_stats WHERE minute < ?1").db()?.execute([old]).db()?;
    let gone = Millis(tx.now.0 - 24 * 3_600_000).to_rfc3339();
    let workers = tx.conn.prepare_cached("DELETE FROM kyu_workers WHERE last_seen_at < ?1").db()?.execute([gone]).db()?;
    Ok((stats + workers) as u64)
}
