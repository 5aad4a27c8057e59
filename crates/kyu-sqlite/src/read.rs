//! Reads: mapping rows to [`Job`] and [`QueueInfo`], listing and counting.
//! These run on reader connections, never on the writer thread.

use std::collections::BTreeMap;

use kyu_core::{Backoff, Job, JobId, JobState, Millis, QueueInfo, QueueName, RateLimit};
use kyu_store::{JobListParams, JobPage, StoreError};
use rusqlite::types::{FromSql, FromSqlError, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter};
use serde::de::DeserializeOwned;

use crate::error::SqlResultExt;

/// The columns [`job_from_row`] reads, in its order.
pub(crate) const JOB_COLUMNS: &str = "id, queue, kind, payload, checkpoint, state, priority, run_at, attempt, \
     max_attempts, backoff, timeout_ms, unique_key, unique_for_ms, depends_on, pending_deps, continue_on_failure, \
     result, keep_result_ms, errors, progress, tags, group_key, cancel_requested, created_at, started_at, \
     finished_at, lease_expires_at, worker, keep_failed_ms";

/// JSON text in a column, decoded.
pub(crate) struct Json<T>(pub T);

impl<T: DeserializeOwned> FromSql for Json<T> {
    fn column_result(v: ValueRef<'_>) -> Result<Self, FromSqlError> {
        let s = v.as_str()?;
        serde_json::from_str(s).map(Json).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// A timestamp column.
pub(crate) struct Ts(pub Millis);

impl FromSql for Ts {
    fn column_result(v: ValueRef<'_>) -> Result<Self, FromSqlError> {
        Millis::parse(v.as_str()?).map(Ts).map_err(|e| FromSqlError::Other(e.into()))
    }
}

fn parsed<T: std::str::FromStr<Err = String>>(v: ValueRef<'_>) -> Result<T, FromSqlError> {
    v.as_str()?.parse().map_err(|e: String| FromSqlError::Other(e.into()))
}

/// A state column.
pub(crate) struct State(pub JobState);
impl FromSql for State {
    fn column_result(v: ValueRef<'_>) -> Result<Self, FromSqlError> {
        parsed(v).map(State)
    }
}

fn opt<T: FromSql>(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<T>> {
    row.get::<_, Option<T>>(i)
}

pub(crate) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let text = |i: usize| -> rusqlite::Result<String> { row.get(i) };
    Ok(Job {
        id: JobId::new(text(0)?).map_err(|e| conversion(0, e))?,
        queue: QueueName::new(text(1)?).map_err(|e| conversion(1, e))?,
        kind: text(2)?,
        payload: row.get::<_, Json<_>>(3)?.0,
        checkpoint: opt::<Json<_>>(row, 4)?.map(|j| j.0),
        state: row.get::<_, State>(5)?.0,
        priority: row.get(6)?,
        run_at: row.get::<_, Ts>(7)?.0,
        attempt: row.get(8)?,
        max_attempts: row.get(9)?,
        backoff: row.get::<_, Json<Backoff>>(10)?.0,
        timeout_ms: row.get(11)?,
        unique_key: row.get(12)?,
        unique_for_ms: row.get(13)?,
        depends_on: opt::<Json<_>>(row, 14)?.map(|j| j.0).unwrap_or_default(),
        dependents: Vec::new(),
        pending_dependencies: row.get(15)?,
        continue_on_failure: row.get(16)?,
        result: opt::<Json<_>>(row, 17)?.map(|j| j.0),
        keep_result_ms: row.get(18)?,
        errors: row.get::<_, Json<_>>(19)?.0,
        progress: opt::<Json<_>>(row, 20)?.map(|j| j.0),
        tags: opt::<Json<_>>(row, 21)?.map(|j| j.0).unwrap_or_default(),
        group: row.get(22)?,
        cancel_requested: row.get(23)?,
        created_at: row.get::<_, Ts>(24)?.0,
        started_at: opt::<Ts>(row, 25)?.map(|t| t.0),
        finished_at: opt::<Ts>(row, 26)?.map(|t| t.0),
        lease_expires_at: opt::<Ts>(row, 27)?.map(|t| t.0),
        worker: row.get(28)?,
        keep_failed_ms: row.get(29)?,
        duplicate: false,
    })
}

fn conversion(i: usize, e: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
}

pub(crate) fn job_get(conn: &Connection, id: &str) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM kyu_jobs WHERE id = ?1");
    let Some(mut job) = conn.prepare_cached(&sql).db()?.query_row([id], job_from_row).optional().db()? else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT j.id FROM kyu_job_deps d JOIN kyu_jobs j ON j.seq = d.job_seq \
             WHERE d.dep_seq = (SELECT seq FROM kyu_jobs WHERE id = ?1) ORDER BY j.seq",
        )
        .db()?;
    let ids = stmt.query_map([id], |r| r.get::<_, String>(0)).db()?;
    for i in ids {
        job.dependents.push(JobId::new(i.db()?).map_err(|e| StoreError::Backend(e.into()))?);
    }
    Ok(Some(job))
}

/// Like [`job_get`], but a missing job is an error.
pub(crate) fn job_must(conn: &Connection, id: &JobId) -> Result<Job, StoreError> {
    job_get(conn, id.as_str())?.ok_or_else(|| StoreError::job_not_found(id))
}

pub(crate) fn job_list(conn: &Connection, p: &JobListParams) -> Result<JobPage, StoreError> {
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    // The SQL names only the filters given, so SQLite can pick an index for
    // them (`?1 IS NULL OR queue = ?1` would force a scan).
    let mut wheres: Vec<String> = Vec::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(q) = &p.queue {
        wheres.push("queue = ?".into());
        args.push(q.as_str().to_owned().into());
    }
    if let Some(s) = p.state {
        // A literal, so SQLite can prove the partial listing indexes apply
        // (migration 7); states are a closed set of plain words.
        wheres.push(format!("state = '{}'", s.as_str()));
    }
    if let Some(k) = &p.kind {
        wheres.push("kind = ?".into());
        args.push(k.clone().into());
    }
    if let Some(t) = &p.tag {
        wheres.push("EXISTS (SELECT 1 FROM json_each(kyu_jobs.tags) WHERE value = ?)".into());
        args.push(t.clone().into());
    }
    if let Some(e) = &p.error_contains {
        wheres.push("instr(json_extract(errors, '$[#-1].message'), ?) > 0".into());
        args.push(e.clone().into());
    }
    if let Some(t) = p.since {
        wheres.push("created_at >= ?".into());
        args.push(t.to_rfc3339().into());
    }
    if let Some(t) = p.until {
        wheres.push("created_at < ?".into());
        args.push(t.to_rfc3339().into());
    }
    if let Some(seq) = p.check()? {
        wheres.push("seq < ?".into());
        args.push(seq.into());
    }
    let filter = if wheres.is_empty() { String::new() } else { format!("WHERE {}", wheres.join(" AND ")) };
    // `seq` comes last so the job columns keep the indexes job_from_row
    // expects. The page size is bound, so one cached statement serves all sizes.
    args.push(((limit + 1) as i64).into());
    // Running jobs are few: read them from their partial index (in seq
    // order), rather than walk the rowids newest first, which SQLite picks
    // for the LIMIT and which visits every job kept.
    let table = if p.state == Some(JobState::Running) { "kyu_jobs INDEXED BY kyu_jobs_running" } else { "kyu_jobs" };
    let sql = format!("SELECT {JOB_COLUMNS}, seq FROM {table} {filter} ORDER BY seq DESC LIMIT ?");
    let mut stmt = conn.prepare_cached(&sql).db()?;
    let mut rows = stmt.query(params_from_iter(args)).db()?;
    let mut jobs = Vec::with_capacity(limit);
    let mut last_seq = 0i64;
    let mut more = false;
    while let Some(row) = rows.next().db()? {
        if jobs.len() == limit {
            more = true;
            break;
        }
        last_seq = row.get(30).db()?;
        jobs.push(job_from_row(row).db()?);
    }
    Ok(JobPage { jobs, next_cursor: more.then(|| last_seq.to_string()) })
}

pub(crate) fn queue_list(conn: &Connection, only: Option<&str>) -> Result<Vec<QueueInfo>, StoreError> {
    let mut queues: BTreeMap<String, QueueInfo> = BTreeMap::new();
    let sql = "SELECT name, paused, concurrency, rate_max, rate_per_ms, group_concurrency, timeout_ms FROM kyu_queues \
               WHERE ?1 IS NULL OR name = ?1";
    let mut stmt = conn.prepare_cached(sql).db()?;
    let rows = stmt
        .query_map([only], |r| {
            let name: String = r.get(0)?;
            let rate = match (r.get::<_, Option<i64>>(3)?, r.get::<_, Option<i64>>(4)?) {
                (Some(max), Some(per_ms)) => Some(RateLimit { max, per_ms }),
                _ => None,
            };
            Ok(QueueInfo {
                name: QueueName::new(name).map_err(|e| conversion(0, e))?,
                paused: r.get(1)?,
                concurrency: r.get(2)?,
                rate_limit: rate,
                group_concurrency: r.get(5)?,
                timeout_ms: r.get(6)?,
                counts: JobState::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect(),
                oldest_ready_at: None,
            })
        })
        .db()?;
    for q in rows {
        let q = q.db()?;
        queues.insert(q.name.as_str().to_owned(), q);
    }
    // Kept by triggers: O(queues), however many jobs are retained.
    let sql = "SELECT queue, state, n FROM kyu_queue_counts WHERE ?1 IS NULL OR queue = ?1";
    let mut stmt = conn.prepare_cached(sql).db()?;
    let mut rows = stmt.query([only]).db()?;
    while let Some(r) = rows.next().db()? {
        let (queue, state, n): (String, String, i64) = (r.get(0).db()?, r.get(1).db()?, r.get(2).db()?);
        if let Some(q) = queues.get_mut(&queue) {
            q.counts.insert(state, n);
        }
    }
    // The oldest ready job: one index seek per queue and distinct priority
    // of its queued jobs (a loose index scan of the claim index).
    let sql = "WITH RECURSIVE p(queue, pr) AS ( \
                 SELECT name, (SELECT max(priority) FROM kyu_jobs WHERE queue = name AND state = 'queued') \
                   FROM kyu_queues WHERE ?1 IS NULL OR name = ?1 \
                 UNION ALL \
                 SELECT queue, (SELECT max(priority) FROM kyu_jobs WHERE queue = p.queue AND state = 'queued' AND priority < p.pr) \
                   FROM p WHERE pr IS NOT NULL) \
               SELECT queue, min((SELECT min(run_at) FROM kyu_jobs WHERE queue = p.queue AND state = 'queued' AND priority = p.pr)) \
               FROM p WHERE pr IS NOT NULL GROUP BY queue";
    let mut stmt = conn.prepare_cached(sql).db()?;
    let mut rows = stmt.query([only]).db()?;
    while let Some(r) = rows.next().db()? {
        let queue: String = r.get(0).db()?;
        let oldest: Option<Ts> = r.get(1).db()?;
        if let Some(q) = queues.get_mut(&queue) {
            q.oldest_ready_at = oldest.map(|t| t.0);
        }
    }
    Ok(queues.into_values().collect())
}
