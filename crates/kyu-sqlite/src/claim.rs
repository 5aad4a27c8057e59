//! The claim: K jobs at a time, under a lease and a fresh token.
//!
//! SQLite has one writer, so there is no `SKIP LOCKED` here: the claim runs on
//! the writer thread, where nothing else can touch the rows between the
//! select and the update.

use std::collections::BTreeMap;

use kyu_core::claim::{QueueLimits, RateWindow, plan_claim};
use kyu_core::tally::Happening;
use kyu_core::transition::deadline;
use kyu_core::{ClaimedJob, JobId, JobState, Millis, QueueName, RateLimit, new_token};
use kyu_store::{ClaimResult, JobClaimParams, StoreError};
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};

use crate::error::SqlResultExt;
use crate::finish::{next_run_at, promote_due};
use crate::read::{Json, State, Ts};
use crate::writer::Tx;

type Row = ((i64, Millis, i64), ClaimedJob, Option<Vec<String>>);

pub(crate) fn claim(tx: &mut Tx<'_>, p: JobClaimParams) -> Result<ClaimResult, StoreError> {
    promote_due(tx)?;
    let token = new_token();
    let lease = tx.now.plus_ms(p.lease_ms).to_rfc3339();
    let mut jobs: Vec<ClaimedJob> = Vec::new();
    let mut seen = Vec::new();
    // Queues are served in the order given, as Celery and arq do.
    for queue in &p.queues {
        if jobs.len() >= p.max || seen.contains(&queue) {
            continue;
        }
        seen.push(queue);
        let Some((limits, queue_timeout)) = queue_limits(tx, queue)? else { continue };
        let running = if limits.concurrency.is_some() { running_count(tx, queue)? } else { 0 };
        let Some(a) = plan_claim(tx.now, p.max - jobs.len(), &limits, running) else { continue };
        let take = |tx: &Tx<'_>, filter: &str, group: Option<&str>, n: usize| take(tx, queue, filter, group, n, &token, &p.worker, &lease);
        let mut batch: Vec<Row> = Vec::new();
        match &a.groups {
            None => batch = take(tx, "", None, a.n)?,
            Some((cap, cursor)) => {
                let cap = *cap;
                let groups = group_heads(tx, queue)?;
                let running = running_per_group(tx, queue)?;
                let quotas = kyu_core::claim::group_quotas(&groups, cursor.as_deref(), &running, cap, a.n);
                let mut last = None;
                for (group, n) in &quotas {
                    let got = take(tx, "AND group_key = ?6", Some(group), *n)?;
                    if !got.is_empty() {
                        last = Some(group.clone());
                    }
                    batch.extend(got);
                }
                // Jobs without a group are not limited; they fill what is left.
                if batch.len() < a.n {
                    let rest = take(tx, "AND group_key IS NULL", None, a.n - batch.len())?;
                    batch.extend(rest);
                }
                if let Some(last) = last {
                    tx.conn
                        .prepare_cached("UPDATE kyu_queues SET group_cursor = ?2 WHERE name = ?1")
                        .db()?
                        .execute(params![queue.as_str(), last])
                        .db()?;
                }
            }
        }
        // RETURNING does not promise the subquery's order; restore it, except
        // across groups, where the round-robin order is the point.
        if a.groups.is_none() {
            batch.sort_by_key(|x| x.0);
        }
        if let Some(w) = a.window_after(batch.len()) {
            tx.conn
                .prepare_cached("UPDATE kyu_queues SET rate_window_start = ?2, rate_window_count = ?3 WHERE name = ?1")
                .db()?
                .execute(params![queue.as_str(), w.start.to_rfc3339(), w.used])
                .db()?;
        }
        tx.counted.moved(queue.as_str(), Some(JobState::Queued), JobState::Running, batch.len() as i64);
        for (seq, ((_, ready_at, _), mut job, deps)) in batch.into_iter().map(|b| ((b.0).2, b)) {
            tx.tally.add(Happening::Started {
                id: job.id.clone(),
                queue: job.queue.clone(),
                kind: job.kind.clone(),
                attempt: job.attempt,
                wait_ms: (tx.now.0 - ready_at.0).max(0),
            });
            if let Some(deps) = deps {
                job.dependency_results = dependency_results(tx, &deps)?;
            }
            // The queue's default time limit applies to jobs without their
            // own; the store enforces it through the job's deadline.
            job.timeout_ms = job.timeout_ms.or(queue_timeout);
            if let Some(deadline) = deadline(tx.now, job.timeout_ms, tx.opts.timeout_grace_ms) {
                tx.conn
                    .prepare_cached("UPDATE kyu_jobs SET deadline_at = ?2 WHERE seq = ?1")
                    .db()?
                    .execute(params![seq, deadline.to_rfc3339()])
                    .db()?;
            }
            jobs.push(job);
        }
    }
    let lease_at = tx.now.plus_ms(p.lease_ms);
    let next = if jobs.len() < p.max { next_run_at(tx, &p.queues)? } else { None };
    for j in &mut jobs {
        j.lease_expires_at = lease_at;
    }
    Ok(ClaimResult { jobs, next_run_at: next })
}

/// Claims up to `n` of `queue`'s head (narrowed by `filter`, which may use
/// `?6` for `group`), under one token and lease.
#[allow(clippy::too_many_arguments)]
fn take(
    tx: &Tx<'_>,
    queue: &QueueName,
    filter: &str,
    group: Option<&str>,
    n: usize,
    token: &str,
    worker: &str,
    lease: &str,
) -> Result<Vec<Row>, StoreError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    // The limit is part of the SQL text, not a parameter: SQLite recompiles
    // a statement whenever a bound LIMIT changes (measured: one re-prepare
    // per claim), while one cached statement per distinct limit costs
    // nothing after its first use.
    let sql = format!(
        "UPDATE kyu_jobs SET state = 'running', attempt = attempt + 1, token = ?2, worker = ?3, \
           started_at = ?4, lease_expires_at = ?5 \
         WHERE seq IN (SELECT seq FROM kyu_jobs WHERE queue = ?1 AND state = 'queued' {filter} \
                       ORDER BY priority DESC, run_at, seq LIMIT {n}) \
         RETURNING seq, id, kind, payload, checkpoint, attempt, max_attempts, timeout_ms, depends_on, \
           priority, run_at"
    );
    let mut stmt = tx.conn.prepare_cached(&sql).db()?;
    let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Row> {
        let claimed = ClaimedJob {
            id: JobId::new(r.get::<_, String>(1)?).map_err(rusqlite::Error::InvalidColumnName)?,
            queue: queue.clone(),
            kind: r.get(2)?,
            payload: r.get::<_, Json<Value>>(3)?.0,
            checkpoint: r.get::<_, Option<Json<Value>>>(4)?.map(|j| j.0),
            attempt: r.get(5)?,
            max_attempts: r.get(6)?,
            timeout_ms: r.get(7)?,
            token: token.to_owned(),
            lease_expires_at: tx.now,
            dependency_results: BTreeMap::new(),
        };
        let deps: Option<Json<Vec<String>>> = r.get(8)?;
        let order = (-(r.get::<_, i64>(9)?), r.get::<_, Ts>(10)?.0, r.get::<_, i64>(0)?);
        Ok((order, claimed, deps.map(|d| d.0)))
    };
    let rows = match group {
        Some(g) => stmt.query_map(params![queue.as_str(), token, worker, tx.now_str, lease, g], map),
        None => stmt.query_map(params![queue.as_str(), token, worker, tx.now_str, lease], map),
    }
    .db()?;
    rows.collect::<Result<_, _>>().db()
}

/// The groups with queued jobs on `queue`, ascending: a loose index scan,
/// one index seek per group, so a million jobs in one group cost no more
/// than ten. At most 1,000 groups per claim.
fn group_heads(tx: &Tx<'_>, queue: &QueueName) -> Result<Vec<String>, StoreError> {
    let mut stmt = tx
        .conn
        .prepare_cached(
            "WITH RECURSIVE g(k) AS ( \
               SELECT (SELECT min(group_key) FROM kyu_jobs WHERE queue = ?1 AND state = 'queued' AND group_key IS NOT NULL) \
               UNION ALL \
               SELECT (SELECT min(group_key) FROM kyu_jobs WHERE queue = ?1 AND state = 'queued' AND group_key > g.k) \
               FROM g WHERE g.k IS NOT NULL LIMIT 1000) \
             SELECT k FROM g WHERE k IS NOT NULL",
        )
        .db()?;
    let rows = stmt.query_map([queue.as_str()], |r| r.get(0)).db()?;
    rows.collect::<Result<_, _>>().db()
}

fn running_per_group(tx: &Tx<'_>, queue: &QueueName) -> Result<std::collections::HashMap<String, i64>, StoreError> {
    let mut stmt = tx
        .conn
        .prepare_cached(
            "SELECT group_key, count(*) FROM kyu_jobs WHERE queue = ?1 AND state = 'running' AND group_key IS NOT NULL \
             GROUP BY group_key",
        )
        .db()?;
    let rows = stmt.query_map([queue.as_str()], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
    rows.collect::<Result<_, _>>().db()
}

/// The queue's limits and limiter state, read inside the claim's
/// transaction so they hold across every process sharing the file; `None`
/// for a queue that was never created. Also its default time limit.
fn queue_limits(tx: &Tx<'_>, queue: &QueueName) -> Result<Option<(QueueLimits, Option<i64>)>, StoreError> {
    tx.conn
        .prepare_cached(
            "SELECT paused, concurrency, rate_max, rate_per_ms, rate_window_start, rate_window_count, \
               group_concurrency, group_cursor, timeout_ms FROM kyu_queues WHERE name = ?1",
        )
        .db()?
        .query_row([queue.as_str()], |r| {
            let rate = match (r.get::<_, Option<i64>>(2)?, r.get::<_, Option<i64>>(3)?) {
                (Some(max), Some(per_ms)) => Some(RateLimit { max, per_ms }),
                _ => None,
            };
            let used: i64 = r.get(5)?;
            let limits = QueueLimits {
                paused: r.get(0)?,
                concurrency: r.get(1)?,
                rate,
                window: r.get::<_, Option<Ts>>(4)?.map(|t| RateWindow { start: t.0, used }),
                group_concurrency: r.get(6)?,
                group_cursor: r.get(7)?,
            };
            Ok((limits, r.get(8)?))
        })
        .optional()
        .db()
}

fn running_count(tx: &Tx<'_>, queue: &QueueName) -> Result<i64, StoreError> {
    tx.conn
        .prepare_cached("SELECT count(*) FROM kyu_jobs WHERE queue = ?1 AND state = 'running'")
        .db()?
        .query_row([queue.as_str()], |r| r.get(0))
        .db()
}

/// What each dependency left: its result if it completed, else its state and
/// last error (a dependent that continues on failure sees why).
fn dependency_results(tx: &Tx<'_>, deps: &[String]) -> Result<BTreeMap<String, Value>, StoreError> {
    let mut out = BTreeMap::new();
    for id in deps {
        let row = tx
            .conn
            .prepare_cached(
                "SELECT state, result, json_extract(errors, '$[#-1].message') FROM kyu_jobs WHERE id = ?1",
            )
            .db()?
            .query_row([id], |r| {
                Ok((r.get::<_, State>(0)?.0, r.get::<_, Option<Json<Value>>>(1)?, r.get::<_, Option<String>>(2)?))
            })
            .optional()
            .db()?;
        if let Some((state, result, error)) = row {
            let v = match state {
                kyu_core::JobState::Completed => result.map_or(Value::Null, |j| j.0),
                _ => json!({"state": state, "error": error}),
            };
            out.insert(id.clone(), v);
        }
    }
    Ok(out)
}
