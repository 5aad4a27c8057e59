//! How attempts end: reports, heartbeats, saves, lost jobs, and what a
//! finished job means for the jobs that depend on it. Each decision is
//! kyu-core's ([`plan_report`], [`plan_lost`], [`dependency`]); this file
//! reads the rows those decisions need and writes what they answer.

use std::collections::HashMap;

use kyu_core::dependency::{Settled, settle};
use kyu_core::tally::{AttemptOutcome, Happening, Running, outcome};
use kyu_core::timeline::{self, Entry, EventType};
use kyu_core::transition::{Attempt, Lost, Outcome, Step, check_token, lost, plan_lost, plan_report, wakes_workers};
use kyu_core::{Backoff, JobId, JobState, Millis, QueueName};
use kyu_store::{Heartbeat, JobHeartbeatParams, JobSaveParams, Report, RescueCounts, StoreError, StoreEvent};
use rusqlite::{OptionalExtension, params};

use crate::error::SqlResultExt;
use crate::read::{Json, State, Ts};
use crate::writer::Tx;

/// The parts of a running job its end needs, read once by id.
pub(crate) struct Held {
    pub seq: i64,
    pub id: JobId,
    pub queue: String,
    pub attempt: Attempt,
    pub keep_result_ms: Option<i64>,
    pub keep_failed_ms: Option<i64>,
    pub has_dependents: bool,
    pub kind: String,
    pub started_at: Option<Millis>,
}

const HELD_COLUMNS: &str = "seq, id, queue, attempt, max_attempts, backoff, cancel_requested, keep_result_ms, \
     keep_failed_ms, has_dependents, kind, started_at";

fn held_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Held> {
    Ok(Held {
        seq: r.get(0)?,
        id: JobId::new(r.get::<_, String>(1)?).map_err(rusqlite::Error::InvalidColumnName)?,
        queue: r.get(2)?,
        attempt: Attempt {
            attempt: r.get(3)?,
            max_attempts: r.get(4)?,
            backoff: r.get::<_, Json<Backoff>>(5)?.0,
            cancel_requested: r.get(6)?,
        },
        keep_result_ms: r.get(7)?,
        keep_failed_ms: r.get(8)?,
        has_dependents: r.get(9)?,
        kind: r.get(10)?,
        started_at: r.get::<_, Option<Ts>>(11)?.map(|t| t.0),
    })
}

impl Held {
    /// What ending this attempt with `outcome`, leaving the job in `state`, counts as.
    pub fn ended(&self, now: Millis, outcome: AttemptOutcome, state: JobState) -> Happening {
        let job = Running { id: &self.id, queue: &self.queue, kind: &self.kind, attempt: self.attempt.attempt, started_at: self.started_at };
        Happening::ended(job, now, outcome, state)
    }
}

/// The parameters of up to two timeline events: `(type, message)` twice.
pub(crate) fn two(entries: &[Entry]) -> (Option<&'static str>, Option<&str>, Option<&'static str>, Option<&str>) {
    let first = entries.first();
    let second = entries.get(1);
    (
        first.map(|e| e.kind.as_str()),
        first.and_then(|e| e.message.as_deref()),
        second.map(|e| e.kind.as_str()),
        second.and_then(|e| e.message.as_deref()),
    )
}

/// The running job `id` if `token` holds it, or the refusal that says why not.
pub(crate) fn held(tx: &Tx<'_>, id: &JobId, token: &str) -> Result<Held, StoreError> {
    let sql = format!("SELECT {HELD_COLUMNS}, state, token FROM kyu_jobs WHERE id = ?1");
    let row = tx
        .conn
        .prepare_cached(&sql)
        .db()?
        .query_row([id.as_str()], |r| Ok((held_from_row(r)?, r.get::<_, State>(12)?.0, r.get::<_, Option<String>>(13)?)))
        .optional()
        .db()?;
    let (held, state, current) = row.ok_or_else(|| StoreError::job_not_found(id))?;
    check_token(state, current.as_deref(), token).map_err(|why| StoreError::refused(id, why))?;
    Ok(held)
}

/// Applies a batch of reports, each in a savepoint of its own so a refused
/// or failing one writes nothing and never holds back the others. Completed
/// jobs' dependents are settled once for the whole batch (a parent with
/// 10,000 children is updated once per batch, not once per child).
pub(crate) fn report_many(tx: &mut Tx<'_>, reports: Vec<Report>) -> Result<Vec<Result<JobState, StoreError>>, StoreError> {
    let mut completed = Vec::new();
    let alone = reports.len() == 1;
    let mut out = Vec::with_capacity(reports.len());
    for r in reports {
        let answer = if alone {
            report(tx, r, &mut completed)
        } else {
            savepoint(tx, "report")?;
            let answer = report(tx, r, &mut completed);
            end_savepoint(tx, "report", answer.is_ok())?;
            answer
        };
        out.push(answer);
    }
    // An error here fails the whole operation, which rolls it all back.
    settle_dependents(tx, completed)?;
    Ok(out)
}

pub(crate) fn savepoint(tx: &Tx<'_>, name: &str) -> Result<(), StoreError> {
    tx.conn.prepare_cached(&format!("SAVEPOINT {name}")).db()?.execute([]).db()?;
    Ok(())
}

pub(crate) fn end_savepoint(tx: &Tx<'_>, name: &str, keep: bool) -> Result<(), StoreError> {
    if !keep {
        tx.conn.prepare_cached(&format!("ROLLBACK TO {name}")).db()?.execute([]).db()?;
    }
    tx.conn.prepare_cached(&format!("RELEASE {name}")).db()?.execute([]).db()?;
    Ok(())
}

fn report(tx: &mut Tx<'_>, r: Report, completed: &mut Vec<Finished>) -> Result<JobState, StoreError> {
    r.outcome.check()?;
    let h = held(tx, &r.id, &r.token)?;
    let step = plan_report(tx.now, &h.attempt, &r.outcome);
    if let Outcome::Complete { result } = r.outcome {
        let expires = tx.opts.retention.expires_at(JobState::Completed, tx.now, h.keep_result_ms, h.keep_failed_ms);
        let result = serde_json::to_string(&result).map_err(|e| StoreError::Backend(e.into()))?;
        tx.conn
            .prepare_cached(
                "UPDATE kyu_jobs SET state = 'completed', result = ?2, finished_at = ?3, expires_at = ?4, \
                 lease_expires_at = NULL, deadline_at = NULL, token = NULL WHERE seq = ?1",
            )
            .db()?
            .execute(params![h.seq, result, tx.now_str, expires.to_rfc3339()])
            .db()?;
        tx.events.push(StoreEvent::JobFinished(h.id.clone()));
        tx.counted.moved(&h.queue, Some(JobState::Running), JobState::Completed, 1);
        tx.tally.add(h.ended(tx.now, AttemptOutcome::Completed, JobState::Completed));
        if h.has_dependents {
            completed.push(Finished { seq: h.seq, id: h.id, state: JobState::Completed });
        }
        return Ok(JobState::Completed);
    }
    let entries = timeline::for_report(&step, &r.outcome);
    apply(tx, &h, step, &entries, None)
}

/// A job that reached a terminal state, for its dependents to learn of.
pub(crate) struct Finished {
    pub seq: i64,
    pub id: JobId,
    pub state: JobState,
}

/// Writes a non-completion [`Step`] on a held job (with its timeline
/// `entries`; `lost` if its worker did not report): back to the queue, or
/// terminal (and then its dependents learn of it).
pub(crate) fn apply(tx: &mut Tx<'_>, h: &Held, step: Step, entries: &[Entry], lost: Option<Lost>) -> Result<JobState, StoreError> {
    tx.tally.add(h.ended(tx.now, outcome(&step, lost), step.state()));
    let (t1, m1, t2, m2) = two(entries);
    match step {
        Step::Complete => unreachable!("completions carry a result and are written by `report`"),
        Step::Requeue { state, run_at, error, give_back_attempt } => {
            tx.counted.moved(&h.queue, Some(JobState::Running), state, 1);
            tx.conn
                .prepare_cached(
                    "UPDATE kyu_jobs SET state = ?2, run_at = ?3, attempt = attempt - ?6, lease_expires_at = NULL, \
                     deadline_at = NULL, token = NULL, \
                     errors = CASE WHEN ?5 IS NULL THEN errors ELSE json_insert(errors, '$[#]', \
                       json_object('attempt', attempt, 'at', ?4, 'message', ?5)) END, \
                     events = kyu_event_push(kyu_event_push(kyu_event_archive(events, state, started_at, attempt, worker), ?4, ?7, attempt, worker, ?8), ?4, ?9, attempt, worker, ?10) \
                     WHERE seq = ?1",
                )
                .db()?
                .execute(params![h.seq, state.as_str(), run_at.to_rfc3339(), tx.now_str, error, i32::from(give_back_attempt), t1, m1, t2, m2])
                .db()?;
            tx.events.push(StoreEvent::JobsAvailable(queue_name(&h.queue)));
            Ok(state)
        }
        Step::Finish { state, error } => {
            let was = Was { queue: &h.queue, state: JobState::Running };
            finish(tx, h.seq, &h.id, was, state, error.as_deref(), h.keep_failed_ms, entries)?;
            if h.has_dependents {
                settle_dependents(tx, vec![Finished { seq: h.seq, id: h.id.clone(), state }])?;
            }
            Ok(state)
        }
    }
}

/// Where a job was before a change of state: what the queue counts move it from.
///
/// The writer counts every change of state itself (schema version 9): a
/// row trigger cost the claim and the completion of every job a trigger
/// program run, about 6 % of W1, even with a `WHEN` that skipped them.
pub(crate) struct Was<'a> {
    pub queue: &'a str,
    pub state: JobState,
}

/// Ends job `seq`, which `was` somewhere, in a failed or cancelled `state`,
/// recording `error` and the timeline `entries`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish(
    tx: &mut Tx<'_>,
    seq: i64,
    id: &JobId,
    was: Was<'_>,
    state: JobState,
    error: Option<&str>,
    keep_failed_ms: Option<i64>,
    entries: &[Entry],
) -> Result<(), StoreError> {
    let expires = tx.opts.retention.expires_at(state, tx.now, None, keep_failed_ms);
    let (t1, m1, t2, m2) = two(entries);
    tx.conn
        .prepare_cached(
            "UPDATE kyu_jobs SET state = ?2, finished_at = ?3, expires_at = ?4, lease_expires_at = NULL, \
             deadline_at = NULL, token = NULL, errors = CASE WHEN ?5 IS NULL THEN errors ELSE json_insert(errors, '$[#]', \
               json_object('attempt', attempt, 'at', ?3, 'message', ?5)) END, \
             events = kyu_event_push(kyu_event_push(kyu_event_archive(events, state, started_at, attempt, worker), ?3, ?6, attempt, worker, ?7), ?3, ?8, attempt, worker, ?9) \
             WHERE seq = ?1",
        )
        .db()?
        .execute(params![seq, state.as_str(), tx.now_str, expires.to_rfc3339(), error, t1, m1, t2, m2])
        .db()?;
    tx.counted.moved(was.queue, Some(was.state), state, 1);
    tx.events.push(StoreEvent::JobFinished(id.clone()));
    Ok(())
}

pub(crate) fn queue_name(q: &str) -> QueueName {
    // Stored names were validated on the way in.
    QueueName::new(q).unwrap_or_default()
}

/// One waiting dependent of a finished job, as read for [`settle_dependents`].
struct Dependent {
    seq: i64,
    id: JobId,
    queue: String,
    run_at: Millis,
    pending: i64,
    continue_on_failure: bool,
    keep_failed_ms: Option<i64>,
    kind: String,
    attempt: i32,
    /// The finished dependencies it learns of now.
    deps: Vec<i64>,
}

/// Jobs that reached a terminal state: each waiting dependent is settled
/// ([`settle`]): released when none is left pending, or failed, naming a
/// broken one, and its own dependents learn that in turn, down the tree.
/// All in the caller's transaction.
pub(crate) fn settle_dependents(tx: &mut Tx<'_>, mut finished: Vec<Finished>) -> Result<(), StoreError> {
    while !finished.is_empty() {
        let by_seq: HashMap<i64, (JobId, JobState)> = finished.drain(..).map(|f| (f.seq, (f.id, f.state))).collect();
        let seqs = serde_json::to_string(&by_seq.keys().collect::<Vec<_>>()).expect("seqs");
        let mut dependents: Vec<Dependent> = Vec::new();
        {
            let mut stmt = tx
                .conn
                .prepare_cached(
                    "SELECT d.dep_seq, j.seq, j.id, j.queue, j.run_at, j.pending_deps, j.continue_on_failure, \
                       j.keep_failed_ms, j.kind, j.attempt \
                     FROM kyu_job_deps d JOIN kyu_jobs j ON j.seq = d.job_seq \
                     WHERE d.dep_seq IN (SELECT value FROM json_each(?1)) AND j.state = 'waiting' ORDER BY j.seq",
                )
                .db()?;
            let mut rows = stmt.query([seqs]).db()?;
            while let Some(r) = rows.next().db()? {
                let dep: i64 = r.get(0).db()?;
                let seq: i64 = r.get(1).db()?;
                match dependents.last_mut() {
                    Some(d) if d.seq == seq => d.deps.push(dep),
                    _ => dependents.push(Dependent {
                        seq,
                        id: JobId::new(r.get::<_, String>(2).db()?).map_err(|e| StoreError::Backend(e.into()))?,
                        queue: r.get(3).db()?,
                        run_at: r.get::<_, Ts>(4).db()?.0,
                        pending: r.get(5).db()?,
                        continue_on_failure: r.get(6).db()?,
                        keep_failed_ms: r.get(7).db()?,
                        kind: r.get(8).db()?,
                        attempt: r.get(9).db()?,
                        deps: vec![dep],
                    }),
                }
            }
        }
        for d in dependents {
            let deps: Vec<(&JobId, JobState)> = d.deps.iter().map(|dep| (&by_seq[dep].0, by_seq[dep].1)).collect();
            let changed = |state| Happening::Changed {
                id: d.id.clone(),
                queue: queue_name(&d.queue),
                kind: d.kind.clone(),
                state,
                attempt: d.attempt,
            };
            match settle(tx.now, d.run_at, d.pending, d.continue_on_failure, &deps) {
                Settled::Fail { error, .. } => {
                    tx.tally.add(changed(JobState::Failed));
                    let entries = [Entry::with(EventType::Failed, error.clone())];
                    let was = Was { queue: &d.queue, state: JobState::Waiting };
                    finish(tx, d.seq, &d.id, was, JobState::Failed, Some(&error), d.keep_failed_ms, &entries)?;
                    finished.push(Finished { seq: d.seq, id: d.id, state: JobState::Failed });
                }
                Settled::Count { pending, state } => {
                    let ready = (state != JobState::Waiting).then(|| EventType::Ready.as_str());
                    if ready.is_some() {
                        tx.tally.add(changed(state));
                        tx.counted.moved(&d.queue, Some(JobState::Waiting), state, 1);
                    }
                    tx.conn
                        .prepare_cached(
                            "UPDATE kyu_jobs SET pending_deps = ?2, state = ?3, \
                             events = kyu_event_push(events, ?4, ?5, NULL, NULL, NULL) WHERE seq = ?1",
                        )
                        .db()?
                        .execute(params![d.seq, pending, state.as_str(), tx.now_str, ready])
                        .db()?;
                    if wakes_workers(state) {
                        tx.events.push(StoreEvent::JobsAvailable(queue_name(&d.queue)));
                    }
                }
            }
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
    if let Some(c) = &p.checkpoint {
        kyu_core::validate::no_nul("checkpoint", c)?;
    }
    if let Some(pr) = &p.progress {
        kyu_core::validate::no_nul("progress", pr)?;
    }
    let entry = timeline::for_save(p.progress.as_ref(), p.checkpoint.is_some());
    let json = |v: Option<serde_json::Value>| v.map(|v| v.to_string());
    let n = tx
        .conn
        .prepare_cached(
            "UPDATE kyu_jobs SET checkpoint = coalesce(?3, checkpoint), progress = coalesce(?4, progress), \
               events = kyu_event_push(events, ?5, ?6, attempt, worker, ?7) \
             WHERE id = ?1 AND token = ?2 AND state = 'running'",
        )
        .db()?
        .execute(params![
            p.id.as_str(),
            p.token,
            json(p.checkpoint),
            json(p.progress),
            tx.now_str,
            entry.as_ref().map(|e| e.kind.as_str()),
            entry.as_ref().and_then(|e| e.message.as_deref())
        ])
        .db()?;
    if n == 0 {
        held(tx, &p.id, &p.token)?;
    }
    Ok(())
}

/// Running jobs whose lease ran out or which passed their deadline end as
/// failed attempts ([`plan_lost`]); due scheduled jobs become queued.
pub(crate) fn rescue(tx: &mut Tx<'_>) -> Result<RescueCounts, StoreError> {
    let sql = format!(
        // The running rows only (few), sorted: no index is keyed by the lease,
        // so heartbeats write none (migration 8).
        "SELECT {HELD_COLUMNS}, lease_expires_at, deadline_at FROM kyu_jobs INDEXED BY kyu_jobs_running \
         WHERE state = 'running' AND (lease_expires_at < ?1 OR deadline_at < ?1) \
         ORDER BY lease_expires_at LIMIT {}",
        kyu_core::transition::MAINTENANCE_BATCH
    );
    let candidates: Vec<(Held, Millis, Option<Millis>)> = tx
        .conn
        .prepare_cached(&sql)
        .db()?
        .query_map([&tx.now_str], |r| Ok((held_from_row(r)?, r.get::<_, Ts>(12)?.0, r.get::<_, Option<Ts>>(13)?.map(|t| t.0))))
        .db()?
        .collect::<Result<_, _>>()
        .db()?;
    let mut expired = 0;
    for (h, lease, deadline) in &candidates {
        let Some(why) = lost(tx.now, *lease, *deadline) else { continue };
        let step = plan_lost(tx.now, &h.attempt, why);
        let entries = timeline::for_step(&step, Some(why));
        apply(tx, h, step, &entries, Some(why))?;
        expired += 1;
    }
    let promoted = promote_due(tx)?;
    Ok(RescueCounts { expired, promoted })
}

/// Scheduled jobs whose time has come become queued, a bounded batch at a time.
pub(crate) fn promote_due(tx: &mut Tx<'_>) -> Result<u64, StoreError> {
    let sql = format!(
        "UPDATE kyu_jobs SET state = 'queued' WHERE seq IN (SELECT seq FROM kyu_jobs \
         WHERE state = 'scheduled' AND run_at <= ?1 ORDER BY run_at LIMIT {}) RETURNING queue",
        kyu_core::transition::MAINTENANCE_BATCH
    );
    let mut stmt = tx.conn.prepare_cached(&sql).db()?;
    let queues: Vec<String> = stmt.query_map([&tx.now_str], |r| r.get(0)).db()?.collect::<Result<_, _>>().db()?;
    let n = queues.len() as u64;
    for q in queues {
        tx.counted.moved(&q, Some(JobState::Scheduled), JobState::Queued, 1);
        tx.events.push(StoreEvent::JobsAvailable(queue_name(&q)));
    }
    Ok(n)
}

/// The earliest `run_at` among scheduled jobs of these queues.
pub(crate) fn next_run_at(tx: &Tx<'_>, queues: &[QueueName]) -> Result<Option<Millis>, StoreError> {
    let mut best: Option<Millis> = None;
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
