//! How attempts end: reports, heartbeats, saves, lease expiry, and what a
//! finished job means for the jobs that depend on it.

use std::collections::HashMap;

use kyu_core::transition::{AfterFailure, Failure, after_failure, runnable_state};
use kyu_core::{Backoff, JobId, JobState, Millis, QueueName};
use kyu_store::{Heartbeat, JobHeartbeatParams, JobSaveParams, Outcome, Report, RescueCounts, StoreError, StoreEvent};
use tokio_postgres::Row;

use crate::conn::Conn;

use crate::error::PgResultExt;
use crate::read::{job_id, state_of, ts};
use crate::tx::Tx;

/// The parts of a running job a report needs, read under a row lock.
pub(crate) struct Held {
    pub seq: i64,
    pub id: JobId,
    pub queue: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub backoff: Backoff,
    pub cancel_requested: bool,
    pub has_dependents: bool,
}

const HELD_COLUMNS: &str = "seq, id, queue, attempt, max_attempts, backoff, cancel_requested, has_dependents";

fn held_from_row(r: &Row) -> Result<Held, StoreError> {
    Ok(Held {
        seq: r.try_get(0).db()?,
        id: job_id(r.try_get(1).db()?)?,
        queue: r.try_get(2).db()?,
        attempt: r.try_get(3).db()?,
        max_attempts: r.try_get(4).db()?,
        backoff: serde_json::from_value(r.try_get(5).db()?).map_err(|e| StoreError::Backend(e.into()))?,
        cancel_requested: r.try_get(6).db()?,
        has_dependents: r.try_get(7).db()?,
    })
}

/// The running job `id` if `token` holds it (locked until commit), or the
/// error that says why not.
pub(crate) async fn held<C: Conn>(tx: &Tx<'_, C>, id: &JobId, token: &str) -> Result<Held, StoreError> {
    let sql = format!("SELECT {HELD_COLUMNS}, state, token FROM kyu_jobs WHERE id = $1 FOR UPDATE");
    let row = tx.c.query_opt(&sql, &[&id.as_str()]).await.db()?.ok_or_else(|| StoreError::job_not_found(id))?;
    let state = state_of(row.try_get(8).db()?)?;
    let current: Option<String> = row.try_get(9).db()?;
    if state.is_terminal() {
        return Err(StoreError::Conflict(format!("job `{id}` is already {state}")));
    }
    if state != JobState::Running || current.as_deref() != Some(token) {
        return Err(StoreError::Conflict(format!(
            "stale token: job `{id}` is no longer held by this claim (it is {state} now; its lease expired or it was released)"
        )));
    }
    held_from_row(&row)
}

fn queue_name(q: &str) -> QueueName {
    QueueName::new(q).unwrap_or_default()
}

pub(crate) async fn report_many<C: Conn>(
    tx: &Tx<'_, C>,
    reports: Vec<Report>,
) -> Result<Vec<Result<JobState, StoreError>>, StoreError> {
    let mut out: Vec<Option<Result<JobState, StoreError>>> = (0..reports.len()).map(|_| None).collect();
    // Completions, the common case, go in one statement for the whole batch.
    let (mut ids, mut tokens, mut results, mut slots) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, r) in reports.iter().enumerate() {
        if let Outcome::Complete { result } = &r.outcome {
            ids.push(r.id.to_string());
            tokens.push(r.token.clone());
            results.push(result.to_string());
            slots.push(i);
        }
    }
    if !ids.is_empty() {
        let rows = tx
            .c
            .query(
                "UPDATE kyu_jobs j SET state = 'completed', result = r.result::jsonb, finished_at = $1::timestamptz, \
                   expires_at = $1::timestamptz + coalesce(j.keep_result_ms, $2::int8) * interval '1 millisecond', \
                   lease_expires_at = NULL, token = NULL \
                 FROM unnest($3::text[], $4::text[], $5::text[]) AS r(id, token, result) \
                 WHERE j.id = r.id AND j.token = r.token AND j.state = 'running' \
                 RETURNING j.id, j.seq, j.has_dependents",
                &[&tx.now_ts, &tx.settings.keep_result_ms, &ids, &tokens, &results],
            )
            .await
            .db()?;
        let mut done: HashMap<String, (i64, bool)> = HashMap::with_capacity(rows.len());
        for r in rows {
            done.insert(r.try_get(0).db()?, (r.try_get(1).db()?, r.try_get(2).db()?));
        }
        // Dependents are released once for the whole batch: a parent with
        // 10,000 children is updated once per batch, not once per child.
        let released: Vec<i64> = done.values().filter(|(_, deps)| *deps).map(|(seq, _)| *seq).collect();
        release_completed(tx, &released).await?;
        for (k, i) in slots.into_iter().enumerate() {
            out[i] = Some(match done.get(&ids[k]) {
                Some(_) => {
                    tx.event(StoreEvent::JobFinished(reports[i].id.clone()));
                    Ok(JobState::Completed)
                }
                // Not updated: say why (stale token, terminal, unknown).
                None => Err(held(tx, &reports[i].id, &reports[i].token).await.err().unwrap_or_else(|| {
                    StoreError::Conflict(format!("job `{}` was not completed", reports[i].id))
                })),
            });
        }
    }
    for (i, r) in reports.into_iter().enumerate() {
        if out[i].is_none() {
            out[i] = Some(report_other(tx, r).await);
        }
    }
    Ok(out.into_iter().map(|o| o.expect("every report answered")).collect())
}

/// Waiting jobs whose dependencies among `seqs` just completed: one fewer
/// pending each, released at zero. Concurrent batches serialise on each
/// dependent's row lock and re-read it (READ COMMITTED), so a parent is
/// released exactly once however its children race.
async fn release_completed<C: Conn>(tx: &Tx<'_, C>, seqs: &[i64]) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let rows = tx
        .c
        .query(
            "UPDATE kyu_jobs j SET pending_deps = j.pending_deps - c.n, \
               state = CASE WHEN j.pending_deps = c.n THEN CASE WHEN j.run_at <= $2 THEN 'queued' ELSE 'scheduled' END \
                       ELSE j.state END \
             FROM (SELECT job_seq, count(*)::int AS n FROM kyu_job_deps WHERE dep_seq = ANY($1) GROUP BY job_seq) AS c \
             WHERE j.seq = c.job_seq AND j.state = 'waiting' \
             RETURNING j.queue, j.state",
            &[&seqs, &tx.now_ts],
        )
        .await
        .db()?;
    for r in rows {
        if state_of(r.try_get(1).db()?)? != JobState::Waiting {
            tx.event(StoreEvent::JobsAvailable(queue_name(r.try_get(0).db()?)));
        }
    }
    Ok(())
}

/// A failure or a snooze: decided per job, from its attempt and policy.
async fn report_other<C: Conn>(tx: &Tx<'_, C>, r: Report) -> Result<JobState, StoreError> {
    let h = held(tx, &r.id, &r.token).await?;
    match r.outcome {
        Outcome::Complete { .. } => unreachable!("completions are batched"),
        Outcome::Fail { error, failure } => {
            let next = after_failure(tx.now, h.attempt, h.max_attempts, &h.backoff, h.cancel_requested, &failure);
            end_attempt(tx, &h, next, Some(&error)).await
        }
        Outcome::Snooze { delay_ms } => {
            if h.cancel_requested {
                return end_attempt(tx, &h, AfterFailure::Final(JobState::Cancelled), None).await;
            }
            let run_at = tx.now.plus_ms(delay_ms.max(0));
            let state = runnable_state(tx.now, run_at);
            tx.c.execute(
                "UPDATE kyu_jobs SET state = $2, run_at = $3, attempt = attempt - 1, lease_expires_at = NULL, \
                 token = NULL WHERE seq = $1",
                &[&h.seq, &state.as_str(), &ts(run_at)],
            )
            .await
            .db()?;
            tx.event(StoreEvent::JobsAvailable(queue_name(&h.queue)));
            Ok(state)
        }
    }
}

/// Ends a failed attempt: back to the queue for a retry, or terminal.
pub(crate) async fn end_attempt<C: Conn>(
    tx: &Tx<'_, C>,
    h: &Held,
    next: AfterFailure,
    error: Option<&str>,
) -> Result<JobState, StoreError> {
    const APPEND: &str = "CASE WHEN $5::text IS NULL THEN errors ELSE errors || jsonb_build_array(jsonb_build_object(\
        'attempt', attempt, 'at', $4::text, 'message', $5::text)) END";
    match next {
        AfterFailure::Retry { run_at } => {
            let state = runnable_state(tx.now, run_at);
            let sql = format!(
                "UPDATE kyu_jobs SET state = $2, run_at = $3, lease_expires_at = NULL, token = NULL, errors = {APPEND} \
                 WHERE seq = $1"
            );
            tx.c.execute(&sql, &[&h.seq, &state.as_str(), &ts(run_at), &tx.now_str, &error]).await.db()?;
            tx.event(StoreEvent::JobsAvailable(queue_name(&h.queue)));
            Ok(state)
        }
        AfterFailure::Final(state) => {
            let sql = format!(
                "UPDATE kyu_jobs SET state = $2, finished_at = $3, expires_at = $6, lease_expires_at = NULL, \
                 token = NULL, errors = {APPEND} WHERE seq = $1"
            );
            let expiry = tx.failed_expiry();
            tx.c.execute(&sql, &[&h.seq, &state.as_str(), &tx.now_ts, &tx.now_str, &error, &expiry]).await.db()?;
            tx.event(StoreEvent::JobFinished(h.id.clone()));
            if h.has_dependents {
                fail_dependents(tx, h.seq, &h.id).await?;
            }
            Ok(state)
        }
    }
}

/// Job `dep_seq` completed (or failed, for dependents that continue on
/// failure): each waiting dependent has one fewer pending dependency, and the
/// last one releases it, in this transaction. Concurrent finishers serialise
/// on the dependent's row lock, and READ COMMITTED re-reads the row after the
/// wait, so a parent is released exactly once however its children race.
pub(crate) async fn release_dependents<C: Conn>(
    tx: &Tx<'_, C>,
    dep_seq: i64,
    only_continuing: bool,
) -> Result<(), StoreError> {
    let rows = tx
        .c
        .query(
            "UPDATE kyu_jobs SET pending_deps = pending_deps - 1, \
               state = CASE WHEN pending_deps = 1 THEN CASE WHEN run_at <= $2 THEN 'queued' ELSE 'scheduled' END \
                       ELSE state END \
             WHERE state = 'waiting' AND (NOT $3 OR continue_on_failure) \
               AND seq IN (SELECT job_seq FROM kyu_job_deps WHERE dep_seq = $1) \
             RETURNING queue, state",
            &[&dep_seq, &tx.now_ts, &only_continuing],
        )
        .await
        .db()?;
    for r in rows {
        let state = state_of(r.try_get(1).db()?)?;
        if state != JobState::Waiting {
            tx.event(StoreEvent::JobsAvailable(queue_name(r.try_get(0).db()?)));
        }
    }
    Ok(())
}

/// Job `seq` ended failed or cancelled: dependents that continue on failure
/// are released; the others fail, naming it, and so on down the tree.
pub(crate) async fn fail_dependents<C: Conn>(tx: &Tx<'_, C>, seq: i64, id: &JobId) -> Result<(), StoreError> {
    let expiry = tx.failed_expiry();
    let mut work = vec![(seq, id.clone())];
    while let Some((seq, id)) = work.pop() {
        release_dependents(tx, seq, true).await?;
        let message = format!("dependency `{id}` did not complete");
        let rows = tx
            .c
            .query(
                "UPDATE kyu_jobs SET state = 'failed', finished_at = $2, expires_at = $3, \
                   errors = errors || jsonb_build_array(jsonb_build_object('attempt', attempt, 'at', $4::text, 'message', $5::text)) \
                 WHERE state = 'waiting' AND NOT continue_on_failure \
                   AND seq IN (SELECT job_seq FROM kyu_job_deps WHERE dep_seq = $1) \
                 RETURNING seq, id",
                &[&seq, &tx.now_ts, &expiry, &tx.now_str, &message],
            )
            .await
            .db()?;
        for r in rows {
            let id = job_id(r.try_get(1).db()?)?;
            tx.event(StoreEvent::JobFinished(id.clone()));
            work.push((r.try_get(0).db()?, id));
        }
    }
    Ok(())
}

pub(crate) async fn heartbeat_many<C: Conn>(
    tx: &Tx<'_, C>,
    p: JobHeartbeatParams,
) -> Result<Vec<Result<Heartbeat, StoreError>>, StoreError> {
    let lease = tx.now.plus_ms(p.lease_ms);
    let ids: Vec<String> = p.jobs.iter().map(|(id, _)| id.to_string()).collect();
    let tokens: Vec<String> = p.jobs.iter().map(|(_, t)| t.clone()).collect();
    let rows = tx
        .c
        .query(
            "UPDATE kyu_jobs j SET lease_expires_at = $1 FROM unnest($2::text[], $3::text[]) AS r(id, token) \
             WHERE j.id = r.id AND j.token = r.token AND j.state = 'running' RETURNING j.id, j.cancel_requested",
            &[&ts(lease), &ids, &tokens],
        )
        .await
        .db()?;
    let mut hit: HashMap<String, bool> = HashMap::new();
    for r in rows {
        hit.insert(r.try_get(0).db()?, r.try_get(1).db()?);
    }
    let mut out = Vec::with_capacity(p.jobs.len());
    for (id, token) in &p.jobs {
        out.push(match hit.get(id.as_str()) {
            Some(&cancel_requested) => Ok(Heartbeat { lease_expires_at: lease, cancel_requested }),
            None => Err(held(tx, id, token).await.err().unwrap_or_else(|| StoreError::Conflict("stale token".into()))),
        });
    }
    Ok(out)
}

pub(crate) async fn save<C: Conn>(tx: &Tx<'_, C>, p: JobSaveParams) -> Result<(), StoreError> {
    let n = tx
        .c
        .execute(
            "UPDATE kyu_jobs SET checkpoint = coalesce($3::jsonb, checkpoint), progress = coalesce($4::jsonb, progress) \
             WHERE id = $1 AND token = $2 AND state = 'running'",
            &[&p.id.as_str(), &p.token, &p.checkpoint, &p.progress],
        )
        .await
        .db()?;
    if n == 0 {
        held(tx, &p.id, &p.token).await?;
    }
    Ok(())
}

/// Expired leases end like failed attempts; due scheduled jobs become
/// queued. `SKIP LOCKED`, so every node can run it at once without waiting
/// on the others.
pub(crate) async fn rescue<C: Conn>(tx: &Tx<'_, C>) -> Result<RescueCounts, StoreError> {
    let sql = format!(
        "SELECT {HELD_COLUMNS} FROM kyu_jobs WHERE state = 'running' AND lease_expires_at < $1 \
         ORDER BY lease_expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED"
    );
    let rows = tx.c.query(&sql, &[&tx.now_ts]).await.db()?;
    let retry = Failure { retry: true, retry_in_ms: None };
    for r in &rows {
        let h = held_from_row(r)?;
        let next = after_failure(tx.now, h.attempt, h.max_attempts, &h.backoff, h.cancel_requested, &retry);
        let error = if h.cancel_requested { None } else { Some("lease expired") };
        end_attempt(tx, &h, next, error).await?;
    }
    let promoted = promote_due(tx, None).await?;
    Ok(RescueCounts { expired: rows.len() as u64, promoted })
}

/// Scheduled jobs whose time has come become queued (of these queues, or all).
pub(crate) async fn promote_due<C: Conn>(tx: &Tx<'_, C>, queues: Option<&[String]>) -> Result<u64, StoreError> {
    let rows = tx
        .c
        .query(
            "UPDATE kyu_jobs SET state = 'queued' WHERE seq IN ( \
               SELECT seq FROM kyu_jobs WHERE state = 'scheduled' AND run_at <= $1 \
                 AND ($2::text[] IS NULL OR queue = ANY($2)) \
               ORDER BY run_at LIMIT 1000 FOR UPDATE SKIP LOCKED) \
             RETURNING queue",
            &[&tx.now_ts, &queues],
        )
        .await
        .db()?;
    for r in &rows {
        tx.event(StoreEvent::JobsAvailable(queue_name(r.try_get(0).db()?)));
    }
    Ok(rows.len() as u64)
}

/// The earliest `run_at` among scheduled jobs of these queues.
pub(crate) async fn next_run_at<C: Conn>(tx: &Tx<'_, C>, queues: &[String]) -> Result<Option<Millis>, StoreError> {
    let row = tx
        .c
        .query_one("SELECT min(run_at) FROM kyu_jobs WHERE state = 'scheduled' AND queue = ANY($1)", &[&queues])
        .await
        .db()?;
    Ok(row.try_get::<_, Option<std::time::SystemTime>>(0).db()?.map(crate::read::millis))
}
