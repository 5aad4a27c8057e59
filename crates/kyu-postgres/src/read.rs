//! Reads: rows to [`Job`] and [`QueueInfo`], listing, counting.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kyu_core::{Backoff, Job, JobId, JobState, Millis, QueueInfo, QueueName, RateLimit};
use kyu_store::{JobListParams, JobPage, StoreError};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::conn::Conn;

use crate::error::PgResultExt;

/// A waiting job's dependencies still pending, for a query over `kyu_jobs j`:
/// `pending_deps` less those counted in `kyu_dep_done` (see `settle.rs`).
macro_rules! pending {
    () => {
        "greatest(j.pending_deps - coalesce((SELECT sum(x.n) FROM kyu_dep_done x WHERE x.job_seq = j.seq), 0), 0)::int4"
    };
}
pub(crate) const PENDING: &str = pending!();

/// The seqs of jobs a claim listed in `kyu_claims` (migration 15), for
/// `j.seq IN (...)`: of those, the ones running are `j.state = 'running'`.
macro_rules! claimed {
    () => {
        "SELECT unnest(seqs) FROM kyu_claims"
    };
}
pub(crate) const CLAIMED: &str = claimed!();
pub(crate) use claimed;

/// The columns [`job_from_row`] reads, in its order, for a query over `kyu_jobs j`.
pub(crate) const JOB_COLUMNS: &str = concat!(
    "j.id, j.queue, j.kind, j.payload, j.checkpoint, j.state, j.priority, j.run_at, j.attempt, \
     j.max_attempts, j.backoff, j.timeout_ms, j.unique_key, j.unique_for_ms, j.depends_on, ",
    pending!(),
    ", j.continue_on_failure, \
     j.result, j.keep_result_ms, j.errors, j.progress, j.tags, j.group_key, j.cancel_requested, j.created_at, \
     j.started_at, j.finished_at, j.lease_expires_at, j.worker, j.keep_failed_ms"
);

/// A stored backoff: NULL is the default (schema version 12).
pub(crate) fn backoff_of(v: Option<Value>) -> Result<Backoff, serde_json::Error> {
    v.map_or(Ok(Backoff::default()), serde_json::from_value)
}

/// What to store for `b`: NULL for the default.
pub(crate) fn backoff_to_store(b: &Backoff) -> Option<String> {
    (*b != Backoff::default()).then(|| serde_json::to_string(b).expect("backoffs serialise"))
}

/// Millis to a `timestamptz` parameter.
pub(crate) fn ts(m: Millis) -> SystemTime {
    if m.0 >= 0 {
        UNIX_EPOCH + Duration::from_millis(m.0 as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(m.0.unsigned_abs())
    }
}

/// A `timestamptz` column to Millis.
pub(crate) fn millis(t: SystemTime) -> Millis {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Millis(d.as_millis() as i64),
        Err(e) => Millis(-(e.duration().as_millis() as i64)),
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("unreadable {what} in kyu_jobs: {e}").into())
}

pub(crate) fn state_of(s: &str) -> Result<JobState, StoreError> {
    s.parse().map_err(|e| bad("state", e))
}

pub(crate) fn job_id(s: String) -> Result<JobId, StoreError> {
    JobId::new(s).map_err(|e| bad("id", e))
}

pub(crate) fn job_from_row(r: &Row) -> Result<Job, StoreError> {
    let get_ts = |i: usize| -> Result<Option<Millis>, StoreError> { Ok(r.try_get::<_, Option<SystemTime>>(i).db()?.map(millis)) };
    let json_list = |i: usize| -> Result<Option<Value>, StoreError> { r.try_get::<_, Option<Value>>(i).db() };
    Ok(Job {
        id: job_id(r.try_get(0).db()?)?,
        queue: QueueName::new(r.try_get::<_, String>(1).db()?).map_err(|e| bad("queue", e))?,
        kind: r.try_get(2).db()?,
        payload: r.try_get(3).db()?,
        checkpoint: r.try_get(4).db()?,
        state: state_of(r.try_get(5).db()?)?,
        priority: r.try_get(6).db()?,
        run_at: get_ts(7)?.unwrap_or_default(),
        attempt: r.try_get(8).db()?,
        max_attempts: r.try_get(9).db()?,
        backoff: backoff_of(r.try_get(10).db()?).map_err(|e| bad("backoff", e))?,
        timeout_ms: r.try_get(11).db()?,
        unique_key: r.try_get(12).db()?,
        unique_for_ms: r.try_get(13).db()?,
        depends_on: match json_list(14)? {
            Some(v) => serde_json::from_value(v).map_err(|e| bad("depends_on", e))?,
            None => Vec::new(),
        },
        dependents: Vec::new(),
        pending_dependencies: i64::from(r.try_get::<_, i32>(15).db()?),
        continue_on_failure: r.try_get(16).db()?,
        result: r.try_get(17).db()?,
        keep_result_ms: r.try_get(18).db()?,
        errors: serde_json::from_value(r.try_get(19).db()?).map_err(|e| bad("errors", e))?,
        progress: r.try_get(20).db()?,
        tags: match json_list(21)? {
            Some(v) => serde_json::from_value(v).map_err(|e| bad("tags", e))?,
            None => Vec::new(),
        },
        group: r.try_get(22).db()?,
        cancel_requested: r.try_get(23).db()?,
        created_at: get_ts(24)?.unwrap_or_default(),
        started_at: get_ts(25)?,
        finished_at: get_ts(26)?,
        lease_expires_at: get_ts(27)?,
        worker: r.try_get(28).db()?,
        keep_failed_ms: r.try_get(29).db()?,
        duplicate: false,
    })
}

pub(crate) async fn job_get(c: &impl Conn, id: &str) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM kyu_jobs j WHERE id = $1");
    let Some(row) = c.query_opt(&sql, &[&id]).await.db()? else { return Ok(None) };
    let mut job = job_from_row(&row)?;
    let rows = c
        .query(
            "SELECT j.id FROM kyu_job_deps d JOIN kyu_jobs j ON j.seq = d.job_seq \
             WHERE d.dep_seq = (SELECT seq FROM kyu_jobs WHERE id = $1) ORDER BY j.seq",
            &[&id],
        )
        .await
        .db()?;
    for r in rows {
        job.dependents.push(job_id(r.try_get(0).db()?)?);
    }
    Ok(Some(job))
}

pub(crate) async fn job_must(c: &impl Conn, id: &JobId) -> Result<Job, StoreError> {
    job_get(c, id.as_str()).await?.ok_or_else(|| StoreError::job_not_found(id))
}

pub(crate) async fn job_list(c: &impl Conn, p: &JobListParams) -> Result<JobPage, StoreError> {
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let mut wheres: Vec<String> = Vec::new();
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    // Jobs of a state other than completed are walked from their narrow
    // rows (migrations 14 and 15), newest first by (queue, seq) or seq; completed
    // jobs, most of what is kept, along the primary key. The state is a
    // literal of a closed set of plain words.
    let mut from = "kyu_jobs j".to_owned();
    let mut order = "j.seq";
    if let Some(s) = p.state {
        wheres.push(format!("j.state = '{}'", s.as_str()));
        let narrow = match s {
            JobState::Queued => Some(("kyu_ready", String::new())),
            JobState::Running => Some(("(SELECT DISTINCT unnest(seqs) AS seq, queue FROM kyu_claims)", String::new())),
            JobState::Completed => None,
            other => Some(("kyu_parked", format!(" AND n.state = '{}'", other.as_str()))),
        };
        if let Some((table, state)) = narrow {
            from = format!("{table} n JOIN kyu_jobs j ON j.seq = n.seq{state}");
            order = "n.seq";
            if p.queue.is_some() {
                wheres.push("n.queue = j.queue".to_owned());
            }
        }
    }
    let mut filter = |clause: &str, v: Box<dyn ToSql + Sync + Send>, args: &mut Vec<Box<dyn ToSql + Sync + Send>>| {
        args.push(v);
        wheres.push(clause.replace('$', &format!("${}", args.len())));
    };
    if let Some(q) = &p.queue {
        filter("j.queue = $", Box::new(q.as_str().to_owned()), &mut args);
    }
    if let Some(k) = &p.kind {
        filter("j.kind = $", Box::new(k.clone()), &mut args);
    }
    if let Some(t) = &p.tag {
        filter("j.tags ? $", Box::new(t.clone()), &mut args);
    }
    if let Some(e) = &p.error_contains {
        filter("strpos(j.errors -> -1 ->> 'message', $) > 0", Box::new(e.clone()), &mut args);
    }
    if let Some(t) = p.since {
        filter("j.created_at >= $", Box::new(ts(t)), &mut args);
    }
    if let Some(t) = p.until {
        filter("j.created_at < $", Box::new(ts(t)), &mut args);
    }
    if let Some(seq) = p.check()? {
        filter(&format!("{order} < $"), Box::new(seq), &mut args);
    }
    let filter = if wheres.is_empty() { String::new() } else { format!("WHERE {}", wheres.join(" AND ")) };
    // The page size is a parameter, so one prepared statement serves every size.
    args.push(Box::new((limit + 1) as i64));
    let sql = format!("SELECT {JOB_COLUMNS}, j.seq FROM {from} {filter} ORDER BY {order} DESC LIMIT ${}", args.len());
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
    let rows = c.query(&sql, &params).await.db()?;
    let more = rows.len() > limit;
    let mut jobs = Vec::with_capacity(limit);
    let mut last = 0i64;
    for r in rows.iter().take(limit) {
        jobs.push(job_from_row(r)?);
        last = r.try_get(30).db()?;
    }
    Ok(JobPage { jobs, next_cursor: more.then(|| last.to_string()) })
}

pub(crate) async fn queue_list(c: &impl Conn, only: Option<&str>) -> Result<Vec<QueueInfo>, StoreError> {
    let rows = c
        .query(
            "SELECT name, paused, concurrency, rate_max, rate_per_ms, group_concurrency, timeout_ms FROM kyu_queues \
             WHERE $1::text IS NULL OR name = $1 ORDER BY name",
            &[&only],
        )
        .await
        .db()?;
    let mut queues: BTreeMap<String, QueueInfo> = BTreeMap::new();
    for r in rows {
        let name: String = r.try_get(0).db()?;
        let rate = match (r.try_get::<_, Option<i64>>(3).db()?, r.try_get::<_, Option<i64>>(4).db()?) {
            (Some(max), Some(per_ms)) => Some(RateLimit { max, per_ms }),
            _ => None,
        };
        let info = QueueInfo {
            name: QueueName::new(name.clone()).map_err(|e| bad("queue name", e))?,
            paused: r.try_get(1).db()?,
            concurrency: r.try_get(2).db()?,
            rate_limit: rate,
            group_concurrency: r.try_get(5).db()?,
            timeout_ms: r.try_get(6).db()?,
            counts: JobState::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect(),
            oldest_ready_at: None,
        };
        queues.insert(name, info);
    }
    // Kept by triggers (totals plus deltas not folded yet): O(queues),
    // however many jobs are retained.
    let rows = c
        .query(
            "SELECT queue, state, sum(n)::int8 FROM ( \
               SELECT queue, state, n FROM kyu_queue_counts WHERE $1::text IS NULL OR queue = $1 \
               UNION ALL \
               SELECT queue, state, n FROM kyu_queue_count_deltas WHERE $1::text IS NULL OR queue = $1) AS c \
             GROUP BY queue, state",
            &[&only],
        )
        .await
        .db()?;
    for r in rows {
        let (queue, state, n): (String, String, i64) = (r.try_get(0).db()?, r.try_get(1).db()?, r.try_get(2).db()?);
        if let Some(q) = queues.get_mut(&queue) {
            q.counts.insert(state, n);
        }
    }
    // The oldest ready job: one index seek per queue and distinct priority
    // of its queued jobs (a loose index scan of the claim index), for the
    // queues that have any. Right after a burst the claim index still holds
    // the claimed jobs' dead entries, and each seek visits them all (256 ms
    // per call after W1's 20,000 jobs): a queue counted empty is not looked at.
    let waiting: Vec<&str> =
        queues.values().filter(|q| q.counts.get("queued").is_some_and(|n| *n > 0)).map(|q| q.name.as_str()).collect();
    if waiting.is_empty() {
        return Ok(queues.into_values().collect());
    }
    let rows = c
        .query(
            "WITH RECURSIVE p(queue, pr) AS ( \
               SELECT name, (SELECT max(priority) FROM kyu_ready WHERE queue = name) \
                 FROM kyu_queues WHERE name = ANY($1) \
               UNION ALL \
               SELECT queue, (SELECT max(priority) FROM kyu_ready r WHERE r.queue = p.queue AND priority < p.pr) \
                 FROM p WHERE pr IS NOT NULL) \
             SELECT queue, min((SELECT min(run_at) FROM kyu_ready r WHERE r.queue = p.queue AND priority = p.pr)) \
             FROM p WHERE pr IS NOT NULL GROUP BY queue",
            &[&waiting],
        )
        .await
        .db()?;
    for r in rows {
        let queue: String = r.try_get(0).db()?;
        if let Some(q) = queues.get_mut(&queue) {
            q.oldest_ready_at = r.try_get::<_, Option<SystemTime>>(1).db()?.map(millis);
        }
    }
    Ok(queues.into_values().collect())
}
