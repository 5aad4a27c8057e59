//! What the console and `/metrics` read: timelines, per-minute statistics,
//! the worker registry, and the folding of the insert-only delta tables
//! (migration 6) into their totals.

use std::collections::BTreeMap;
use std::time::SystemTime;

use kyu_core::tally::{Histogram, Minute, Minutes, STATS_KEEP_MS, WORKER_GONE_MS, WorkerInfo, minute_of};
use kyu_core::timeline::JobEvent;
use kyu_core::{JobId, Millis};
use kyu_store::{StatsParams, StoreError, WorkerSeenParams};
use serde_json::Value;
use tokio_postgres::Row;

use crate::conn::Conn;
use crate::error::PgResultExt;
use crate::read::{CLAIMED, job_id, millis, ts};
use crate::tx::{MinuteArrays, Tx};

pub(crate) async fn job_events(c: &impl Conn, id: &JobId) -> Result<Vec<JobEvent>, StoreError> {
    let row = c
        .query_opt(
            "SELECT events::text, state, created_at, started_at, finished_at, attempt, worker FROM kyu_jobs WHERE id = $1",
            &[&id.as_str()],
        )
        .await
        .db()?;
    let Some(r) = row else { return Err(StoreError::job_not_found(id)) };
    let events: String = r.try_get(0).db()?;
    let state: String = r.try_get(1).db()?;
    let row = kyu_core::timeline::Row {
        state: state.parse().map_err(|e: String| StoreError::Backend(e.into()))?,
        created_at: millis(r.try_get::<_, SystemTime>(2).db()?),
        started_at: r.try_get::<_, Option<SystemTime>>(3).db()?.map(millis),
        finished_at: r.try_get::<_, Option<SystemTime>>(4).db()?.map(millis),
        attempt: r.try_get(5).db()?,
        worker: r.try_get(6).db()?,
    };
    kyu_core::timeline::decode(&events, &row)
        .map_err(|e| StoreError::Backend(format!("unreadable events of job `{id}`: {e}").into()))
}

fn hist(v: Value) -> Result<Histogram, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Backend(e.into()))
}

fn minute_from_row(r: &Row, at: usize) -> Result<Minute, StoreError> {
    Ok(Minute {
        enqueued: r.try_get(at).db()?,
        completed: r.try_get(at + 1).db()?,
        failed: r.try_get(at + 2).db()?,
        retried: r.try_get(at + 3).db()?,
        wait: hist(r.try_get(at + 4).db()?)?,
        run: hist(r.try_get(at + 5).db()?)?,
    })
}

/// Totals plus the deltas not folded yet, so a read is exact at any time
/// (the caller adds what this process has not written yet).
pub(crate) async fn stats(c: &impl Conn, p: &StatsParams) -> Result<Minutes, StoreError> {
    let queue = p.queue.as_ref().map(|q| q.as_str());
    let rows = c
        .query(
            "SELECT minute, queue, enqueued, completed, failed, retried, wait_hist, run_hist FROM kyu_stats \
               WHERE minute >= $1 AND ($2::text IS NULL OR queue = $2) \
             UNION ALL \
             SELECT minute, queue, enqueued, completed, failed, retried, wait_hist, run_hist FROM kyu_stats_deltas \
               WHERE minute >= $1 AND ($2::text IS NULL OR queue = $2)",
            &[&minute_of(p.since).0, &queue],
        )
        .await
        .db()?;
    let mut out = Minutes::new();
    for r in &rows {
        let key = (Millis(r.try_get::<_, i64>(0).db()?), r.try_get::<_, String>(1).db()?);
        out.entry(key).or_default().merge(&minute_from_row(r, 2)?);
    }
    Ok(out)
}

/// Appends statistics to `kyu_stats_deltas`, folded later like the rest.
pub(crate) async fn add_minutes(c: &impl Conn, rows: &Minutes) -> Result<(), StoreError> {
    let m = MinuteArrays::of(rows);
    c.execute(
        "INSERT INTO kyu_stats_deltas (minute, queue, enqueued, completed, failed, retried, wait_hist, run_hist) \
         SELECT minute, queue, enqueued, completed, failed, retried, wait_hist::jsonb, run_hist::jsonb \
         FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::text[], $8::text[]) \
           AS t(minute, queue, enqueued, completed, failed, retried, wait_hist, run_hist)",
        &[&m.0, &m.1, &m.2, &m.3, &m.4, &m.5, &m.6, &m.7],
    )
    .await
    .db()?;
    Ok(())
}

pub(crate) async fn worker_seen<C: Conn>(tx: &Tx<'_, C>, p: WorkerSeenParams) -> Result<(), StoreError> {
    kyu_core::validate::label("worker", &p.name)?;
    let queues = serde_json::to_string(&p.queues).expect("queue names serialise");
    tx.c.execute(
        "INSERT INTO kyu_workers AS w (name, host, pid, queues, concurrency, runs, started_at, last_seen_at) \
         VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7, $7) \
         ON CONFLICT (name) DO UPDATE SET host = coalesce($2, w.host), pid = coalesce($3, w.pid), \
           queues = CASE WHEN $4 = '[]' THEN w.queues ELSE $4::text::jsonb END, \
           concurrency = coalesce($5, w.concurrency), runs = coalesce($6, w.runs), last_seen_at = $7, \
           started_at = CASE WHEN $3 IS NOT NULL AND w.pid IS DISTINCT FROM $3 THEN $7 ELSE w.started_at END",
        &[&p.name, &p.host, &p.pid, &queues, &p.concurrency, &p.runs, &tx.now_ts],
    )
    .await
    .db()?;
    Ok(())
}

pub(crate) async fn worker_list(c: &impl Conn, now: Millis) -> Result<Vec<WorkerInfo>, StoreError> {
    let rows = c
        .query(
            "SELECT name, host, pid, queues, concurrency, runs, started_at, last_seen_at FROM kyu_workers \
             WHERE last_seen_at >= $1 ORDER BY name",
            &[&ts(Millis(now.0 - WORKER_GONE_MS))],
        )
        .await
        .db()?;
    let mut workers: BTreeMap<String, WorkerInfo> = BTreeMap::new();
    for r in &rows {
        let w = WorkerInfo {
            name: r.try_get(0).db()?,
            host: r.try_get(1).db()?,
            pid: r.try_get(2).db()?,
            queues: serde_json::from_value(r.try_get(3).db()?).map_err(|e| StoreError::Backend(e.into()))?,
            concurrency: r.try_get(4).db()?,
            runs: r.try_get(5).db()?,
            running: Vec::new(),
            started_at: millis(r.try_get::<_, SystemTime>(6).db()?),
            last_seen_at: millis(r.try_get::<_, SystemTime>(7).db()?),
        };
        workers.insert(w.name.clone(), w);
    }
    // What each runs now, from the jobs themselves: never out of date.
    let sql = format!("SELECT j.worker, j.id FROM kyu_jobs j WHERE j.seq IN ({CLAIMED}) AND j.state = 'running' ORDER BY j.seq");
    let rows = c.query(&sql, &[]).await.db()?;
    for r in rows {
        let worker: Option<String> = r.try_get(0).db()?;
        if let Some(w) = worker.and_then(|w| workers.get_mut(&w)) {
            w.running.push(job_id(r.try_get(1).db()?)?);
        }
    }
    Ok(workers.into_values().collect())
}

/// Folds the delta tables into their totals, and forgets old statistics
/// and long-gone workers. One node at a time (the others skip): the
/// folding is cheap, and readers add unfolded deltas anyway.
pub(crate) async fn fold<C: Conn>(tx: &Tx<'_, C>) -> Result<(), StoreError> {
    let got: bool = tx
        .c
        .query_one("SELECT pg_try_advisory_xact_lock(hashtextextended('kyu_fold:' || current_schema(), 0))", &[])
        .await
        .db()?
        .get(0);
    if !got {
        return Ok(());
    }
    tx.c.execute(
        "WITH moved AS (DELETE FROM kyu_queue_count_deltas RETURNING queue, state, n) \
         INSERT INTO kyu_queue_counts AS c (queue, state, n) \
         SELECT queue, state, sum(n) FROM moved GROUP BY queue, state ORDER BY queue, state \
         ON CONFLICT (queue, state) DO UPDATE SET n = c.n + excluded.n",
        &[],
    )
    .await
    .db()?;
    let rows = tx
        .c
        .query(
            "DELETE FROM kyu_stats_deltas RETURNING minute, queue, enqueued, completed, failed, retried, wait_hist, run_hist",
            &[],
        )
        .await
        .db()?;
    let mut sums: BTreeMap<(i64, String), Minute> = BTreeMap::new();
    for r in &rows {
        let key = (r.try_get::<_, i64>(0).db()?, r.try_get::<_, String>(1).db()?);
        sums.entry(key).or_default().merge(&minute_from_row(r, 2)?);
    }
    for ((minute, queue), add) in sums {
        let existing = tx
            .c
            .query_opt(
                "SELECT enqueued, completed, failed, retried, wait_hist, run_hist FROM kyu_stats \
                 WHERE minute = $1 AND queue = $2 FOR UPDATE",
                &[&minute, &queue],
            )
            .await
            .db()?;
        let mut row = match existing {
            Some(r) => minute_from_row(&r, 0)?,
            None => Minute::default(),
        };
        row.merge(&add);
        tx.c.execute(
            "INSERT INTO kyu_stats (minute, queue, enqueued, completed, failed, retried, wait_hist, run_hist) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb) \
             ON CONFLICT (minute, queue) DO UPDATE SET enqueued = $3, completed = $4, failed = $5, retried = $6, \
               wait_hist = $7::text::jsonb, run_hist = $8::text::jsonb",
            &[
                &minute,
                &queue,
                &row.enqueued,
                &row.completed,
                &row.failed,
                &row.retried,
                &serde_json::to_string(&row.wait).expect("histograms serialise"),
                &serde_json::to_string(&row.run).expect("histograms serialise"),
            ],
        )
        .await
        .db()?;
    }
    let old = minute_of(Millis(tx.now.0 - STATS_KEEP_MS)).0;
    tx.c.execute("DELETE FROM kyu_stats WHERE minute < $1", &[&old]).await.db()?;
    tx.c.execute("DELETE FROM kyu_workers WHERE last_seen_at < $1", &[&ts(Millis(tx.now.0 - 24 * 3_600_000))]).await.db()?;
    Ok(())
}
