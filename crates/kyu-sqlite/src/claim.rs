//! The claim: K jobs at a time, under a lease and a fresh token.
//!
//! SQLite has one writer, so there is no `SKIP LOCKED` here: the claim runs on
//! the writer thread, where nothing else can touch the rows between the
//! select and the update.

use std::collections::BTreeMap;

use kyu_core::{ClaimedJob, JobId, Millis, QueueName, new_token};
use kyu_store::{ClaimResult, JobClaimParams, StoreError};
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};

use crate::error::SqlResultExt;
use crate::finish::{next_run_at, promote_due};
use crate::read::{Json, State, Ts};
use crate::writer::Tx;

struct Limits {
    paused: bool,
    concurrency: Option<i64>,
    rate: Option<(i64, i64)>,
    window_start: Option<Millis>,
    window_count: i64,
}

pub(crate) fn claim(tx: &mut Tx<'_>, p: JobClaimParams) -> Result<ClaimResult, StoreError> {
    promote_due(tx)?;
    let token = new_token();
    let lease = tx.now.plus_ms(p.lease_ms).to_rfc3339();
    let mut jobs: Vec<(i64, ClaimedJob)> = Vec::new();
    let mut seen = Vec::new();
    // Queues are served in the order given, as Celery and arq do.
    for queue in &p.queues {
        if jobs.len() >= p.max || seen.contains(&queue) {
            continue;
        }
        seen.push(queue);
        let Some((allowed, window)) = allowance(tx, queue, p.max - jobs.len())? else { continue };
        // The limit is part of the SQL text, not a parameter: SQLite
        // recompiles a statement whenever a bound LIMIT changes (measured:
        // one re-prepare per claim), while one cached statement per distinct
        // limit costs nothing after its first use.
        let sql = format!(
            "UPDATE kyu_jobs SET state = 'running', attempt = attempt + 1, token = ?2, worker = ?3, \
               started_at = ?4, lease_expires_at = ?5 \
             WHERE seq IN (SELECT seq FROM kyu_jobs WHERE queue = ?1 AND state = 'queued' \
                           ORDER BY priority DESC, run_at, seq LIMIT {allowed}) \
             RETURNING seq, id, kind, payload, checkpoint, attempt, max_attempts, timeout_ms, depends_on, \
               priority, run_at"
        );
        let mut stmt = tx.conn.prepare_cached(&sql).db()?;
        let rows = stmt
            .query_map(params![queue.as_str(), token, p.worker, tx.now_str, lease], |r| {
                let claimed = ClaimedJob {
                    id: JobId::new(r.get::<_, String>(1)?).map_err(rusqlite::Error::InvalidColumnName)?,
                    queue: queue.clone(),
                    kind: r.get(2)?,
                    payload: r.get::<_, Json<Value>>(3)?.0,
                    checkpoint: r.get::<_, Option<Json<Value>>>(4)?.map(|j| j.0),
                    attempt: r.get(5)?,
                    max_attempts: r.get(6)?,
                    timeout_ms: r.get(7)?,
                    token: token.clone(),
                    lease_expires_at: tx.now,
                    dependency_results: BTreeMap::new(),
                };
                let deps: Option<Json<Vec<String>>> = r.get(8)?;
                let order = (-(r.get::<_, i64>(9)?), r.get::<_, Ts>(10)?.0, r.get::<_, i64>(0)?);
                Ok((order, claimed, deps.map(|d| d.0)))
            })
            .db()?;
        let mut batch = Vec::new();
        for row in rows {
            batch.push(row.db()?);
        }
        drop(stmt);
        // RETURNING does not promise the subquery's order; restore it.
        batch.sort_by_key(|a| a.0);
        count_claims(tx, queue, window, batch.len())?;
        for (order, mut job, deps) in batch {
            if let Some(deps) = deps {
                job.dependency_results = dependency_results(tx, &deps)?;
            }
            jobs.push((order.2, job));
        }
    }
    let lease_at = tx.now.plus_ms(p.lease_ms);
    let next = if jobs.len() < p.max { next_run_at(tx, &p.queues)? } else { None };
    Ok(ClaimResult {
        jobs: jobs
            .into_iter()
            .map(|(_, mut j)| {
                j.lease_expires_at = lease_at;
                j
            })
            .collect(),
        next_run_at: next,
    })
}

/// How many jobs `queue` may hand out now, at most `want` (`None` if none),
/// and for a rate-limited queue its current window `(start, claims so far)`.
/// Limits are read inside the claim's transaction, so they hold across every
/// process sharing the file. The rate limit is a fixed window.
fn allowance(tx: &Tx<'_>, queue: &QueueName, want: usize) -> Result<Option<(usize, Option<RateWindow>)>, StoreError> {
    let limits = tx
        .conn
        .prepare_cached(
            "SELECT paused, concurrency, rate_max, rate_per_ms, rate_window_start, rate_window_count \
             FROM kyu_queues WHERE name = ?1",
        )
        .db()?
        .query_row([queue.as_str()], |r| {
            let rate = match (r.get::<_, Option<i64>>(2)?, r.get::<_, Option<i64>>(3)?) {
                (Some(m), Some(p)) => Some((m, p)),
                _ => None,
            };
            Ok(Limits {
                paused: r.get(0)?,
                concurrency: r.get(1)?,
                rate,
                window_start: r.get::<_, Option<Ts>>(4)?.map(|t| t.0),
                window_count: r.get(5)?,
            })
        })
        .optional()
        .db()?;
    let Some(l) = limits else { return Ok(None) };
    if l.paused {
        return Ok(None);
    }
    let mut allowed = want as i64;
    if let Some(max_running) = l.concurrency {
        let running: i64 = tx
            .conn
            .prepare_cached("SELECT count(*) FROM kyu_jobs WHERE queue = ?1 AND state = 'running'")
            .db()?
            .query_row([queue.as_str()], |r| r.get(0))
            .db()?;
        allowed = allowed.min(max_running - running);
    }
    let mut window = None;
    if let Some((max, per_ms)) = l.rate {
        let current = match l.window_start {
            Some(start) if tx.now < start.plus_ms(per_ms) => (start, l.window_count),
            _ => (tx.now, 0),
        };
        allowed = allowed.min(max - current.1);
        window = Some(current);
    }
    Ok((allowed > 0).then_some((allowed as usize, window)))
}

/// A rate-limited queue's current window: when it opened, claims so far.
type RateWindow = (Millis, i64);

/// Records `n` more claims in the queue's current rate window.
fn count_claims(tx: &Tx<'_>, queue: &QueueName, window: Option<RateWindow>, n: usize) -> Result<(), StoreError> {
    let Some((start, used)) = window else { return Ok(()) };
    if n == 0 {
        return Ok(());
    }
    tx.conn
        .prepare_cached("UPDATE kyu_queues SET rate_window_start = ?2, rate_window_count = ?3 WHERE name = ?1")
        .db()?
        .execute(params![queue.as_str(), start.to_rfc3339(), used + n as i64])
        .db()?;
    Ok(())
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
