//! Operator actions and retention: cancel, retry, delete, prune, queue settings.

use kyu_core::{Job, JobId, JobState, QueueInfo};
use kyu_core::dependency::{Candidate, failed_because_of, plan_revival};
use kyu_core::tally::Happening;
use kyu_core::timeline::{Entry, EventType};
use kyu_store::{JobRetryManyParams, JobRetryParams, QueueUpdateParams, StoreError, StoreEvent};
use rusqlite::{OptionalExtension, params, params_from_iter};

use crate::error::SqlResultExt;
use crate::finish::{Finished, Was, finish, queue_name, settle_dependents};
use crate::insert::ensure_queue;
use crate::read::{State, job_must, queue_list};
use crate::writer::Tx;

/// What an operator action needs of a job.
struct Target {
    seq: i64,
    state: JobState,
    keep_failed_ms: Option<i64>,
    queue: String,
    kind: String,
    attempt: i32,
}

impl Target {
    fn changed(&self, id: &JobId, state: JobState) -> Happening {
        Happening::Changed { id: id.clone(), queue: queue_name(&self.queue), kind: self.kind.clone(), state, attempt: self.attempt }
    }
}

fn target(tx: &Tx<'_>, id: &JobId) -> Result<Target, StoreError> {
    tx.conn
        .prepare_cached("SELECT seq, state, keep_failed_ms, queue, kind, attempt FROM kyu_jobs WHERE id = ?1")
        .db()?
        .query_row([id.as_str()], |r| {
            Ok(Target {
                seq: r.get(0)?,
                state: r.get::<_, State>(1)?.0,
                keep_failed_ms: r.get(2)?,
                queue: r.get(3)?,
                kind: r.get(4)?,
                attempt: r.get(5)?,
            })
        })
        .optional()
        .db()?
        .ok_or_else(|| StoreError::job_not_found(id))
}

pub(crate) fn cancel(tx: &mut Tx<'_>, id: &JobId) -> Result<Job, StoreError> {
    let t = target(tx, id)?;
    let seq = t.seq;
    match t.state {
        s if s.is_terminal() => return Err(StoreError::Conflict(format!("job `{id}` is already {s}"))),
        // Stored, not only signalled: the worker learns it at its next heartbeat.
        JobState::Running => {
            tx.conn
                .prepare_cached(
                    "UPDATE kyu_jobs SET cancel_requested = 1, \
                     events = kyu_event_push(events, ?2, 'cancel_requested', attempt, worker, NULL) WHERE seq = ?1",
                )
                .db()?
                .execute(params![seq, tx.now_str])
                .db()?;
        }
        _ => {
            tx.conn.prepare_cached("UPDATE kyu_jobs SET cancel_requested = 1 WHERE seq = ?1").db()?.execute([seq]).db()?;
            tx.tally.add(t.changed(id, JobState::Cancelled));
            let entries = [Entry::with(EventType::Cancelled, "cancelled by an operator")];
            let was = Was { queue: &t.queue, state: t.state };
            finish(tx, seq, id, was, JobState::Cancelled, None, t.keep_failed_ms, &entries)?;
            settle_dependents(tx, vec![Finished { seq, id: id.clone(), state: JobState::Cancelled }])?;
        }
    }
    job_must(tx.conn, id)
}

/// Back to `queued` with a fresh set of attempts; `?1` is now.
const RETRY_SET: &str = "state = 'queued', attempt = 0, run_at = ?1, finished_at = NULL, expires_at = NULL, \
     cancel_requested = 0, token = NULL, lease_expires_at = NULL, pending_deps = 0, \
     events = kyu_event_push(events, ?1, 'retried', NULL, NULL, 'sent back to the queue by an operator')";

pub(crate) fn retry(tx: &mut Tx<'_>, p: JobRetryParams) -> Result<Job, StoreError> {
    let id = &p.id;
    let t = target(tx, id)?;
    let (seq, state) = (t.seq, t.state);
    if !matches!(state, JobState::Failed | JobState::Cancelled) {
        return Err(StoreError::Conflict(format!("job `{id}` is {state}; only failed or cancelled jobs can be retried")));
    }
    tx.tally.add(t.changed(id, JobState::Queued));
    tx.counted.moved(&t.queue, Some(state), JobState::Queued, 1);
    tx.conn
        .prepare_cached(&format!("UPDATE kyu_jobs SET {RETRY_SET} WHERE seq = ?2"))
        .db()?
        .execute(params![tx.now_str, seq])
        .db()?;
    if p.dependents {
        revive_dependents(tx, seq, id)?;
    }
    let job = job_must(tx.conn, id)?;
    tx.events.push(StoreEvent::JobsAvailable(job.queue.clone()));
    Ok(job)
}

/// The failed jobs that failed because job `seq` did, and theirs in turn,
/// go back to `waiting` if [`plan_revival`] says so.
fn revive_dependents(tx: &mut Tx<'_>, seq: i64, id: &JobId) -> Result<(), StoreError> {
    let mut frontier = vec![(seq, id.clone())];
    let mut found: Vec<(i64, JobId, bool)> = Vec::new();
    while let Some((dep_seq, dep_id)) = frontier.pop() {
        let rows: Vec<(i64, String, bool, Option<String>)> = tx
            .conn
            .prepare_cached(
                "SELECT j.seq, j.id, j.continue_on_failure, json_extract(j.errors, '$[#-1].message') \
                 FROM kyu_job_deps d JOIN kyu_jobs j ON j.seq = d.job_seq WHERE d.dep_seq = ?1 AND j.state = 'failed'",
            )
            .db()?
            .query_map([dep_seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .db()?
            .collect::<Result<_, _>>()
            .db()?;
        for (s, i, cof, last) in rows {
            let i = JobId::new(i).map_err(|e| StoreError::Backend(e.into()))?;
            if failed_because_of(last.as_deref(), &dep_id) && !found.iter().any(|f| f.0 == s) {
                frontier.push((s, i.clone()));
                found.push((s, i, cof));
            }
        }
    }
    let mut deps: Vec<Vec<(JobId, JobState)>> = Vec::with_capacity(found.len());
    for (s, ..) in &found {
        let rows: Vec<(String, State)> = tx
            .conn
            .prepare_cached("SELECT j.id, j.state FROM kyu_job_deps d JOIN kyu_jobs j ON j.seq = d.dep_seq WHERE d.job_seq = ?1")
            .db()?
            .query_map([s], |r| Ok((r.get(0)?, r.get(1)?)))
            .db()?
            .collect::<Result<_, _>>()
            .db()?;
        deps.push(rows.into_iter().filter_map(|(i, st)| JobId::new(i).ok().map(|i| (i, st.0))).collect());
    }
    let candidates: Vec<Candidate<'_>> = found
        .iter()
        .zip(&deps)
        .map(|((_, i, cof), d)| Candidate { id: i, continue_on_failure: *cof, deps: d.iter().map(|(i, s)| (i, *s)).collect() })
        .collect();
    let message = format!("waiting again: `{id}` was retried");
    for (i, pending) in plan_revival(id, &candidates) {
        let (queue, kind, attempt): (String, String, i32) = tx
            .conn
            .prepare_cached(
                "UPDATE kyu_jobs SET state = 'waiting', pending_deps = ?2, finished_at = NULL, expires_at = NULL, \
                 events = kyu_event_push(events, ?3, 'waiting', NULL, NULL, ?4) WHERE seq = ?1 RETURNING queue, kind, attempt",
            )
            .db()?
            .query_row(params![found[i].0, pending, tx.now_str, message], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .db()?;
        let id = found[i].1.clone();
        tx.counted.moved(&queue, Some(JobState::Failed), JobState::Waiting, 1);
        tx.tally.add(Happening::Changed { id, queue: queue_name(&queue), kind, state: JobState::Waiting, attempt });
    }
    Ok(())
}

/// The WHERE clause of a dead-letter filter, its arguments after `first`.
fn dead_letter_filter(p: &JobRetryManyParams, first: Vec<rusqlite::types::Value>) -> Result<(String, Vec<rusqlite::types::Value>), StoreError> {
    let state = p.check()?;
    let mut args = first;
    let mut wheres: Vec<String> = Vec::new();
    // A literal, so the partial index of failed and cancelled jobs applies.
    wheres.push(format!("state = '{}'", state.as_str()));
    let mut filter = |clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        wheres.push(clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(q) = &p.queue {
        filter("queue = ?", q.as_str().to_owned().into());
    }
    if let Some(k) = &p.kind {
        filter("kind = ?", k.clone().into());
    }
    if let Some(s) = p.since {
        filter("finished_at >= ?", s.to_rfc3339().into());
    }
    if let Some(u) = p.until {
        filter("finished_at < ?", u.to_rfc3339().into());
    }
    if let Some(e) = &p.error_contains {
        filter("instr(json_extract(errors, '$[#-1].message'), ?) > 0", e.clone().into());
    }
    Ok((wheres.join(" AND "), args))
}

pub(crate) fn retry_many(tx: &mut Tx<'_>, p: JobRetryManyParams) -> Result<u64, StoreError> {
    let from = p.check()?;
    let (wheres, args) = dead_letter_filter(&p, vec![tx.now_str.clone().into()])?;
    let sql = format!("UPDATE kyu_jobs SET {RETRY_SET} WHERE {wheres} RETURNING queue, id, kind");
    let mut stmt = tx.conn.prepare(&sql).db()?;
    let rows: Vec<(String, String, String)> =
        stmt.query_map(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).db()?.collect::<Result<_, _>>().db()?;
    drop(stmt);
    let count = rows.len() as u64;
    let mut queues = Vec::with_capacity(rows.len());
    for (queue, id, kind) in rows {
        tx.counted.moved(&queue, Some(from), JobState::Queued, 1);
        if let Ok(id) = JobId::new(id) {
            tx.tally.add(Happening::Changed { id, queue: queue_name(&queue), kind, state: JobState::Queued, attempt: 0 });
        }
        queues.push(queue);
    }
    queues.sort();
    queues.dedup();
    tx.events.extend(queues.into_iter().filter_map(|q| kyu_core::QueueName::new(q).ok()).map(StoreEvent::JobsAvailable));
    Ok(count)
}

/// Deletes the dead-letter jobs `p` selects, at most 100,000 per call.
pub(crate) fn delete_many(tx: &mut Tx<'_>, p: JobRetryManyParams) -> Result<u64, StoreError> {
    let (wheres, args) = dead_letter_filter(&p, Vec::new())?;
    let sql = format!("SELECT seq FROM kyu_jobs WHERE {wheres} LIMIT 100000");
    let seqs: Vec<i64> = tx.conn.prepare(&sql).db()?.query_map(params_from_iter(args), |r| r.get(0)).db()?.collect::<Result<_, _>>().db()?;
    for &seq in &seqs {
        remove(tx, seq)?;
    }
    Ok(seqs.len() as u64)
}

pub(crate) fn delete(tx: &mut Tx<'_>, id: &JobId) -> Result<(), StoreError> {
    let Target { seq, state, .. } = target(tx, id)?;
    if state == JobState::Running {
        return Err(StoreError::Conflict(format!("job `{id}` is running; cancel it first")));
    }
    if !state.is_terminal() {
        // Its dependents would otherwise wait forever: to them it is as if
        // it had been cancelled.
        settle_dependents(tx, vec![Finished { seq, id: id.clone(), state: JobState::Cancelled }])?;
    }
    remove(tx, seq)
}

fn remove(tx: &Tx<'_>, seq: i64) -> Result<(), StoreError> {
    tx.conn.prepare_cached("DELETE FROM kyu_jobs WHERE seq = ?1").db()?.execute([seq]).db()?;
    tx.conn.prepare_cached("DELETE FROM kyu_job_deps WHERE dep_seq = ?1").db()?.execute([seq]).db()?;
    tx.conn.prepare_cached("DELETE FROM kyu_job_deps WHERE job_seq = ?1").db()?.execute([seq]).db()?;
    tx.conn.prepare_cached("DELETE FROM kyu_job_logs WHERE job_seq = ?1").db()?.execute([seq]).db()?;
    tx.conn.prepare_cached("DELETE FROM kyu_job_log_sizes WHERE job_seq = ?1").db()?.execute([seq]).db()?;
    Ok(())
}

/// Deletes up to `batch` finished jobs whose retention has passed.
pub(crate) fn prune(tx: &mut Tx<'_>, batch: usize) -> Result<u64, StoreError> {
    let seqs: Vec<i64> = tx
        .conn
        .prepare_cached(&format!("SELECT seq FROM kyu_jobs WHERE expires_at <= ?1 ORDER BY expires_at LIMIT {batch}"))
        .db()?
        .query_map(params![tx.now_str], |r| r.get(0))
        .db()?
        .collect::<Result<_, _>>()
        .db()?;
    for &seq in &seqs {
        remove(tx, seq)?;
    }
    Ok(seqs.len() as u64)
}

pub(crate) fn queue_update(tx: &mut Tx<'_>, p: QueueUpdateParams) -> Result<QueueInfo, StoreError> {
    p.check()?;
    ensure_queue(tx, p.name.as_str())?;
    let name = p.name.as_str();
    if let Some(paused) = p.paused {
        tx.conn.execute("UPDATE kyu_queues SET paused = ?2 WHERE name = ?1", params![name, paused]).db()?;
        if !paused {
            tx.events.push(StoreEvent::JobsAvailable(p.name.clone()));
        }
    }
    if let Some(c) = p.concurrency {
        tx.conn.execute("UPDATE kyu_queues SET concurrency = ?2 WHERE name = ?1", params![name, c]).db()?;
    }
    if let Some(g) = p.group_concurrency {
        tx.conn.execute("UPDATE kyu_queues SET group_concurrency = ?2 WHERE name = ?1", params![name, g]).db()?;
    }
    if let Some(t) = p.timeout_ms {
        tx.conn.execute("UPDATE kyu_queues SET timeout_ms = ?2 WHERE name = ?1", params![name, t]).db()?;
    }
    if let Some(r) = p.rate_limit {
        tx.conn
            .execute(
                "UPDATE kyu_queues SET rate_max = ?2, rate_per_ms = ?3, rate_window_start = NULL, \
                 rate_window_count = 0 WHERE name = ?1",
                params![name, r.map(|r| r.max), r.map(|r| r.per_ms)],
            )
            .db()?;
    }
    queue_list(tx.conn, Some(name))?
        .pop()
        .ok_or_else(|| StoreError::NotFound(format!("queue `{name}`")))
}
