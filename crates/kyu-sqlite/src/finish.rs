//! How attempts end: reports, heartbeats, saves, lease expiry, and what a
//! finished job means for the jobs that depend on it.

use kyu_core::transition::{AfterFailure, Failure, after_failure, runnable_state};
use kyu_core::{Backoff, JobId, JobState, QueueName};
use kyu_store::{Heartbeat, JobHeartbeatParams, JobSaveParams, Outcome, Report, RescueCounts, StoreError, StoreEvent};
use rusqlite::{OptionalExtension, params};

use crate::error::SqlResultExt;
use crate::read::{Json, State, Ts};
use crate::writer::Tx;

/// The parts of a job a report needs, read once by id.
pub(crate) struct Held {
    pub seq: i64,
    pub id: JobId,
    pub queue: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub backoff: Backoff,
    pub cancel_requested: bool,
    pub keep_result_ms: Option<i64>,
    pub has_dependents: bool,
}

const HELD_COLUMNS: &str = "seq, id, queue, attempt, max_attempts, backoff, cancel_requested, keep_result_ms, has_dependents";

fn held_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Held> {
    Ok(Held {
        seq: r.get(0)?,
        id: JobId::new(r.get::<_, String>(1)?).map_err(rusqlite::Error::InvalidColumnName)?,
        queue: r.get(2)?,
        attempt: r.get(3)?,
        max_attempts: r.get(4)?,
        backoff: r.get::<_, Json<Backoff>>(5)?.0,
        cancel_requested: r.get(6)?,
        keep_result_ms: r.get(7)?,
        has_dependents: r.get(8)?,
    })
}

/// The running job `id` if `token` holds it, or the error that says why not.
pub(crate) fn held(tx: &Tx<'_>, id: &JobId, token: &str) -> Result<Held, StoreError> {
    let sql = format!("SELECT {HELD_COLUMNS}, state, token FROM kyu_jobs WHERE id = ?1");
    let row = tx
        .conn
        .prepare_cached(&sql)
        .db()?
        .query_row([id.as_str()], |r| Ok((held_from_row(r)?, r.get::<_, State>(9)?.0, r.get::<_, Option<String>>(10)?)))
        .optional()
        .db()?;
    let (held, state, current) = row.ok_or_else(|| StoreError::job_not_found(id))?;
    if state.is_terminal() {
        return Err(StoreError::Conflict(format!("job `{id}` is already {state}")));
    }
    if state != JobState::Running || current.as_deref() != Some(token) {
        return Err(StoreError::Conflict(format!(
            "stale token: job `{id}` is no longer held by this claim (it is {state} now; its lease expired or it was released)"
        )));
    }
    Ok(held)
}

/// Applies a batch of reports. Completed jobs' dependents are released once
/// for the whole batch (a parent with 10,000 children is updated once per
/// batch, not once per child), in this same transaction.
pub(crate) fn report_many(tx: &mut Tx<'_>, reports: Vec<Report>) -> Result<Vec<Result<JobState, StoreError>>, StoreError> {
    let mut completed = Vec::new();
    let out = reports.into_iter().map(|r| report(tx, r, &mut completed)).collect();
    // An error here fails the whole operation, which rolls it all back.
    release_completed(tx, &completed)?;
    Ok(out)
}

/// Waiting jobs whose dependencies among `seqs` just completed: one fewer
/// pending each (per completed dependency), released at zero.
fn release_completed(tx: &mut Tx<'_>, seqs: &[i64]) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let list = serde_json::to_string(seqs).expect("seqs");
    let mut stmt = tx
        .conn
        .prepare_cached(
            "UPDATE kyu_jobs SET pending_deps = pending_deps - c.n, \
               state = CASE WHEN pending_deps = c.n THEN CASE WHEN run_at <= ?2 THEN 'queued' ELSE 'scheduled' END \
                       ELSE state END \
             FROM (SELECT job_seq, count(*) AS n FROM kyu_job_deps \
                   WHERE dep_seq IN (SELECT value FROM json_each(?1)) GROUP BY job_seq) AS c \
             WHERE kyu_jobs.seq = c.job_seq AND kyu_jobs.state = 'waiting' \
             RETURNING queue, state",
        )
        .db()?;
    let rows = stmt.query_map(params![list, tx.now_str], |r| Ok((r.get::<_, String>(0)?, r.get::<_, State>(1)?.0))).db()?;
    for row in rows {
        let (queue, state) = row.db()?;
        if state != JobState::Waiting {
            tx.events.push(StoreEvent::JobsAvailable(queue_name(&queue)));
        }
    }
    Ok(())
}

fn report(tx: &mut Tx<'_>, r: Report, completed: &mut Vec<i64>) -> Result<JobState, StoreError> {
    let h = held(tx, &r.id, &r.token)?;
    match r.outcome {
        Outcome::Complete { result } => {
            let keep = h.keep_result_ms.unwrap_or(tx.opts.keep_result_ms);
            let result = serde_json::to_string(&result).map_err(|e| StoreError::Backend(e.into()))?;
            tx.conn
                .prepare_cached(
                    "UPDATE kyu_jobs SET state = 'completed', result = ?2, finished_at = ?3, expires_at = ?4, \
                     lease_expires_at = NULL, token = NULL WHERE seq = ?1",
                )
                .db()?
                .execute(params![h.seq, result, tx.now_str, tx.now.plus_ms(keep).to_rfc3339()])
                .db()?;
            if h.has_dependents {
                completed.push(h.seq);
            }
            tx.events.push(StoreEvent::JobFinished(h.id));
            Ok(JobState::Completed)
        }
        Outcome::Fail { error, failure } => {
            let next = after_failure(tx.now, h.attempt, h.max_attempts, &h.backoff, h.cancel_requested, &failure);
            end_attempt(tx, &h, next, Some(&error))
        }
        Outcome::Snooze { delay_ms } => {
            if h.cancel_requested {
                return end_attempt(tx, &h, AfterFailure::Final(JobState::Cancelled), None);
            }
            let run_at = tx.now.plus_ms(delay_ms.max(0));
            let state = runnable_state(tx.now, run_at);
            tx.conn
                .prepare_cached(
                    "UPDATE kyu_jobs SET state = ?2, run_at = ?3, attempt = attempt - 1, lease_expires_at = NULL, \
                     token = NULL WHERE seq = ?1",
                )
                .db()?
                .execute(params![h.seq, state.as_str(), run_at.to_rfc3339()])
                .db()?;
            tx.events.push(StoreEvent::JobsAvailable(queue_name(&h.queue)));
            Ok(state)
        }
    }
}

/// Ends a failed attempt: back to the queue for a retry, or terminal.
/// `error` is recorded in the job's `errors` (a cancel records none).
pub(crate) fn end_attempt(
    tx: &mut Tx<'_>,
    h: &Held,
    next: AfterFailure,
    error: Option<&str>,
) -> Result<JobState, StoreError> {
    match next {
        AfterFailure::Retry { run_at } => {
            let state = runnable_state(tx.now, run_at);
            tx.conn
                .prepare_cached(
                    "UPDATE kyu_jobs SET state = ?2, run_at = ?3, lease_expires_at = NULL, token = NULL, \
                     errors = CASE WHEN ?5 IS NULL THEN errors ELSE json_insert(errors, '$[#]', \
                       json_object('attempt', attempt, 'at', ?4, 'message', ?5)) END \
                     WHERE seq = ?1",
                )
                .db()?
                .execute(params![h.seq, state.as_str(), run_at.to_rfc3339(), tx.now_str, error])
                .db()?;
            tx.events.push(StoreEvent::JobsAvailable(queue_name(&h.queue)));
            Ok(state)
        }
        AfterFailure::Final(state) => {
            tx.conn
                .prepare_cached(
                    "UPDATE kyu_jobs SET state = ?2, finished_at = ?3, expires_at = ?4, lease_expires_at = NULL, \
                     token = NULL, errors = CASE WHEN ?5 IS NULL THEN errors ELSE json_insert(errors, '$[#]', \
                       json_object('attempt', attempt, 'at', ?3, 'message', ?5)) END \
                     WHERE seq = ?1",
                )
                .db()?
                .execute(params![h.seq, state.as_str(), tx.now_str, failed_expiry(tx), error])
                .db()?;
            tx.events.push(StoreEvent::JobFinished(h.id.clone()));
            if h.has_dependents {
                fail_dependents(tx, h.seq, &h.id)?;
            }
            Ok(state)
        }
    }
}

pub(crate) fn failed_expiry(tx: &Tx<'_>) -> String {
    tx.now.plus_ms(tx.opts.keep_failed_ms).to_rfc3339()
}

fn queue_name(q: &str) -> QueueName {
    // Stored names were validated on the way in.
    QueueName::new(q).unwrap_or_default()
}

/// Job `dep_seq` completed (or failed, for dependents that continue on
/// failure): each waiting dependent has one fewer pending dependency, and
/// the last one moves it to `queued` (or `scheduled` if its run_at is ahead),
/// in this same transaction.
fn release_dependents(tx: &mut Tx<'_>, dep_seq: i64, only_continuing: bool) -> Result<(), StoreError> {
    let mut stmt = tx
        .conn
        .prepare_cached(
            "UPDATE kyu_jobs SET pending_deps = pending_deps - 1, \
               state = CASE WHEN pending_deps = 1 THEN CASE WHEN run_at <= ?2 THEN 'queued' ELSE 'scheduled' END \
                       ELSE state END \
             WHERE state = 'waiting' AND (?3 = 0 OR continue_on_failure = 1) \
               AND seq IN (SELECT job_seq FROM kyu_job_deps WHERE dep_seq = ?1) \
             RETURNING queue, state",
        )
        .db()?;
    let rows = stmt
        .query_map(params![dep_seq, tx.now_str, only_continuing], |r| Ok((r.get::<_, String>(0)?, r.get::<_, State>(1)?.0)))
        .db()?;
    for row in rows {
        let (queue, state) = row.db()?;
        if state == JobState::Queued {
            tx.events.push(StoreEvent::JobsAvailable(queue_name(&queue)));
        }
    }
    Ok(())
}

/// Job `seq` ended failed or cancelled. Dependents that continue on failure
/// are released as if it had completed; the others fail, naming it, and so
/// on down the tree.
pub(crate) fn fail_dependents(tx: &mut Tx<'_>, seq: i64, id: &JobId) -> Result<(), StoreError> {
    let expiry = failed_expiry(tx);
    let mut work = vec![(seq, id.clone())];
    while let Some((seq, id)) = work.pop() {
        release_dependents(tx, seq, true)?;
        let message = format!("dependency `{id}` did not complete");
        let mut stmt = tx
            .conn
            .prepare_cached(
                "UPDATE kyu_jobs SET state = 'failed', finished_at = ?2, expires_at = ?3, \
                   errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', ?2, 'message', ?4)) \
                 WHERE state = 'waiting' AND continue_on_failure = 0 \
                   AND seq IN (SELECT job_seq FROM kyu_job_deps WHERE dep_seq = ?1) \
                 RETURNING seq, id",
            )
            .db()?;
        let rows = stmt
            .query_map(params![seq, tx.now_str, expiry, message], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .db()?;
        for row in rows {
            let (seq, id) = row.db()?;
            let id = JobId::new(id).map_err(|e| StoreError::Backend(e.into()))?;
            tx.events.push(StoreEvent::JobFinished(id.clone()));
            work.push((seq, id));
        }
    }
    Ok(())
}

pub(crate) fn heartbeat_many(tx: &mut Tx<'_>, p: JobHeartbeatParams) -> Vec<Result<Heartbeat, StoreError>> {
    let lease = tx.now.plus_ms(p.lease_ms);
    let lease_str = lease.to_rfc3339();
    p.jobs
        .into_iter()
        .map(|(id, token)| {
            let hit = tx
                .conn
                .prepare_cached(
                    "UPDATE kyu_jobs SET lease_expires_at = ?2 WHERE id = ?1 AND token = ?3 AND state = 'running' \
                     RETURNING cancel_requested",
                )
                .db()?
                .query_row(params![id.as_str(), lease_str, token], |r| r.get::<_, bool>(0))
                .optional()
                .db()?;
            match hit {
                Some(cancel_requested) => Ok(Heartbeat { lease_expires_at: lease, cancel_requested }),
                None => Err(held(tx, &id, &token).err().unwrap_or_else(|| StoreError::Conflict("stale token".into()))),
            }
        })
        .collect()
}

pub(crate) fn save(tx: &mut Tx<'_>, p: JobSaveParams) -> Result<(), StoreError> {
    let json = |v: Option<serde_json::Value>| v.map(|v| v.to_string());
    let n = tx
        .conn
        .prepare_cached(
            "UPDATE kyu_jobs SET checkpoint = coalesce(?3, checkpoint), progress = coalesce(?4, progress) \
             WHERE id = ?1 AND token = ?2 AND state = 'running'",
        )
        .db()?
        .execute(params![p.id.as_str(), p.token, json(p.checkpoint), json(p.progress)])
        .db()?;
    if n == 0 {
        held(tx, &p.id, &p.token)?;
    }
    Ok(())
}

/// Expired leases end like failed attempts ("lease expired"); due scheduled
/// jobs become queued.
pub(crate) fn rescue(tx: &mut Tx<'_>) -> Result<RescueCounts, StoreError> {
    let sql = format!(
        "SELECT {HELD_COLUMNS} FROM kyu_jobs WHERE state = 'running' AND lease_expires_at < ?1 \
         ORDER BY lease_expires_at LIMIT 1000"
    );
    let expired: Vec<Held> = tx
        .conn
        .prepare_cached(&sql)
        .db()?
        .query_map([&tx.now_str], held_from_row)
        .db()?
        .collect::<Result<_, _>>()
        .db()?;
    let retry = Failure { retry: true, retry_in_ms: None };
    for h in &expired {
        let next = after_failure(tx.now, h.attempt, h.max_attempts, &h.backoff, h.cancel_requested, &retry);
        let error = if h.cancel_requested { None } else { Some("lease expired") };
        end_attempt(tx, h, next, error)?;
    }
    let promoted = promote_due(tx)?;
    Ok(RescueCounts { expired: expired.len() as u64, promoted })
}

/// Scheduled jobs whose time has come become queued.
pub(crate) fn promote_due(tx: &mut Tx<'_>) -> Result<u64, StoreError> {
    let mut stmt = tx
        .conn
        .prepare_cached(
            "UPDATE kyu_jobs SET state = 'queued' WHERE state = 'scheduled' AND run_at <= ?1 RETURNING queue",
        )
        .db()?;
    let queues: Vec<String> = stmt.query_map([&tx.now_str], |r| r.get(0)).db()?.collect::<Result<_, _>>().db()?;
    let n = queues.len() as u64;
    for q in queues {
        tx.events.push(StoreEvent::JobsAvailable(queue_name(&q)));
    }
    Ok(n)
}

/// The earliest `run_at` among scheduled jobs of these queues.
pub(crate) fn next_run_at(tx: &Tx<'_>, queues: &[QueueName]) -> Result<Option<kyu_core::Millis>, StoreError> {
    let mut best: Option<kyu_core::Millis> = None;
    for q in queues {
        let t: Option<Ts> = tx
            .conn
            .prepare_cached("SELECT min(run_at) FROM kyu_jobs WHERE state = 'scheduled' AND queue = ?1")
            .db()?
            .query_row([q.as_str()], |r| r.get(0))
            .db()?;
        if let Some(Ts(t)) = t {
            best = Some(best.map_or(t, |b| b.min(t)));
        }
    }
    Ok(best)
}
