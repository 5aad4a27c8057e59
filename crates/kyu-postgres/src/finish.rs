//! How attempts end: reports, heartbeats, saves, lost jobs, and what a
//! finished job means for the jobs that depend on it. Each decision is
//! kyu-core's ([`plan_report`], [`plan_lost`], [`dependency`]); this file
//! reads the rows those decisions need (locked, in one statement per batch)
//! and writes what they answer (one statement per kind of change).

use std::collections::HashMap;
use std::time::SystemTime;

use kyu_core::tally::{AttemptOutcome, Happening, Running, outcome};
use kyu_core::timeline::{self, Entry};
use kyu_core::transition::{Attempt, Lost, Outcome, Step, check_token, lost, plan_lost, plan_report};
use kyu_core::{JobId, JobState, Millis, QueueName};
use kyu_store::{Heartbeat, JobHeartbeatParams, JobSaveParams, Report, RescueCounts, StoreError, StoreEvent};
use tokio_postgres::Row;

use crate::conn::Conn;
use crate::error::PgResultExt;
use crate::read::{CLAIMED, job_id, millis, state_of, ts};
use crate::settle::settle_dependents;
use crate::tx::Tx;

/// The parts of a running job its end needs.
pub(crate) struct Held {
    pub seq: i64,
    pub id: JobId,
    pub queue: String,
    pub attempt: Attempt,
    pub keep_failed_ms: Option<i64>,
    pub has_dependents: bool,
    pub kind: String,
    pub started_at: Option<Millis>,
}

impl Held {
    /// What ending this attempt with `outcome`, leaving the job in `state`, counts as.
    fn ended(&self, now: Millis, outcome: AttemptOutcome, state: JobState) -> Happening {
        let job = Running { id: &self.id, queue: &self.queue, kind: &self.kind, attempt: self.attempt.attempt, started_at: self.started_at };
        Happening::ended(job, now, outcome, state)
    }
}

const HELD_COLUMNS: &str =
    "seq, id, queue, attempt, max_attempts, backoff, cancel_requested, keep_failed_ms, has_dependents, kind, started_at";

fn held_from_row(r: &Row) -> Result<Held, StoreError> {
    Ok(Held {
        seq: r.try_get(0).db()?,
        id: job_id(r.try_get(1).db()?)?,
        queue: r.try_get(2).db()?,
        attempt: Attempt {
            attempt: r.try_get(3).db()?,
            max_attempts: r.try_get(4).db()?,
            backoff: crate::read::backoff_of(r.try_get(5).db()?).map_err(|e| StoreError::Backend(e.into()))?,
            cancel_requested: r.try_get(6).db()?,
        },
        keep_failed_ms: r.try_get(7).db()?,
        has_dependents: r.try_get(8).db()?,
        kind: r.try_get(9).db()?,
        started_at: r.try_get::<_, Option<SystemTime>>(10).db()?.map(millis),
    })
}

/// Column arrays of up to two timeline events per row: `(type, message)` twice.
#[derive(Default)]
struct EventColumns<'a> {
    t1: Vec<Option<&'static str>>,
    m1: Vec<Option<&'a str>>,
    t2: Vec<Option<&'static str>>,
    m2: Vec<Option<&'a str>>,
}

impl<'a> EventColumns<'a> {
    fn push(&mut self, entries: &'a [Entry]) {
        let (first, second) = (entries.first(), entries.get(1));
        self.t1.push(first.map(|e| e.kind.as_str()));
        self.m1.push(first.and_then(|e| e.message.as_deref()));
        self.t2.push(second.map(|e| e.kind.as_str()));
        self.m2.push(second.and_then(|e| e.message.as_deref()));
    }
}

/// A held job's end, with the timeline entries it writes.
pub(crate) struct Ending {
    pub held: Held,
    pub step: Step,
    pub entries: Vec<Entry>,
    pub lost: Option<Lost>,
}

/// A job ending failed or cancelled (see [`finish_many`]).
pub(crate) struct End {
    pub seq: i64,
    pub state: JobState,
    pub error: Option<String>,
    pub keep_failed_ms: Option<i64>,
    pub entries: Vec<Entry>,
}

/// The running jobs of `claims` (id, token), locked until commit in `seq`
/// order (so concurrent batches cannot deadlock), each checked against its
/// token: one statement for the whole batch.
pub(crate) async fn hold_many<C: Conn>(tx: &Tx<'_, C>, claims: &[(&JobId, &str)]) -> Result<Vec<Result<Held, StoreError>>, StoreError> {
    let ids: Vec<&str> = claims.iter().map(|(id, _)| id.as_str()).collect();
    let sql = format!("SELECT {HELD_COLUMNS}, state, token FROM kyu_jobs WHERE id = ANY($1) ORDER BY seq FOR UPDATE");
    let rows = tx.c.query(&sql, &[&ids]).await.db()?;
    let mut found: HashMap<String, (Held, JobState, Option<String>)> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let h = held_from_row(r)?;
        found.insert(h.id.to_string(), (h, state_of(r.try_get(11).db()?)?, r.try_get(12).db()?));
    }
    Ok(claims
        .iter()
        .map(|(id, token)| {
            let Some((h, state, current)) = found.remove(id.as_str()) else { return Err(StoreError::job_not_found(id)) };
            check_token(state, current.as_deref(), token).map_err(|why| StoreError::refused(id, why))?;
            Ok(h)
        })
        .collect())
}

/// One job's hold: [`hold_many`] of one.
pub(crate) async fn held<C: Conn>(tx: &Tx<'_, C>, id: &JobId, token: &str) -> Result<Held, StoreError> {
    hold_many(tx, &[(id, token)]).await?.remove(0)
}

pub(crate) fn queue_name(q: &str) -> QueueName {
    QueueName::new(q).unwrap_or_default()
}

/// A job that reached a terminal state, for its dependents to learn of.
pub(crate) struct Finished {
    pub seq: i64,
    pub id: JobId,
    pub state: JobState,
}

/// Applies a batch of reports. Each is checked on its own first (its token,
/// what it carries), so a refused one is answered in its slot and holds back
/// nothing. Completions, the common case, are one statement for the batch;
/// failures and snoozes are read in one and written in one per kind.
pub(crate) async fn report_many<C: Conn>(
    tx: &Tx<'_, C>,
    reports: Vec<Report>,
) -> Result<Vec<Result<JobState, StoreError>>, StoreError> {
    let mut out: Vec<Option<Result<JobState, StoreError>>> = (0..reports.len()).map(|_| None).collect();
    for (i, r) in reports.iter().enumerate() {
        if let Err(e) = r.outcome.check() {
            out[i] = Some(Err(e.into()));
        }
    }
    let mut finished: Vec<Finished> = Vec::new();
    // Completions: one UPDATE whose WHERE is the token fence. Only a
    // running job has a token (a CHECK of the table, migration 11), so the
    // state is not tested: that let the planner scan the running jobs'
    // index, dead entries and all, instead of looking each id up.
    let completions: Vec<usize> =
        (0..reports.len()).filter(|&i| out[i].is_none() && matches!(reports[i].outcome, Outcome::Complete { .. })).collect();
    if !completions.is_empty() {
        let ids: Vec<&str> = completions.iter().map(|&i| reports[i].id.as_str()).collect();
        let tokens: Vec<&str> = completions.iter().map(|&i| reports[i].token.as_str()).collect();
        let results: Vec<String> = completions
            .iter()
            .map(|&i| match &reports[i].outcome {
                Outcome::Complete { result } => result.to_string(),
                _ => unreachable!("filtered above"),
            })
            .collect();
        // The retention rule is kyu-core's `Retention::expires_at`, written
        // in SQL here so the whole batch stays one statement.
        let rows = tx
            .c
            .query(
                "WITH done AS ( \
                   UPDATE kyu_jobs j SET state = 'completed', result = r.result::jsonb, finished_at = $1::timestamptz, \
                     expires_at = $1::timestamptz + coalesce(j.keep_result_ms, $2::int8) * interval '1 millisecond', \
                     lease_expires_at = NULL, deadline_at = NULL, token = NULL \
                   FROM unnest($3::text[], $4::text[], $5::text[]) AS r(id, token, result) \
                   WHERE j.id = r.id AND j.token = r.token \
                   RETURNING j.id, j.seq, j.has_dependents, j.queue, j.kind, j.attempt, j.started_at, j.finish_watched, \
                     j.expires_at, r.token), \
                 kept AS (INSERT INTO kyu_expiry (expires_at, seqs) SELECT expires_at, array_agg(seq) FROM done \
                   GROUP BY expires_at) \
                 SELECT id, seq, has_dependents, queue, kind, attempt, started_at, finish_watched, token FROM done",
                &[&tx.now_ts, &tx.settings.retention.keep_result_ms, &ids, &tokens, &results],
            )
            .await
            .db()?;
        // By id and token: of two reports of one job in a batch, the one
        // with the current token is the one that completed it.
        let mut done: HashMap<(String, String), (i64, bool, bool)> = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get(0).db()?;
            let queue: &str = r.try_get(3).db()?;
            let started: Option<SystemTime> = r.try_get(6).db()?;
            // Counted by the transaction (running -1, completed +1; see migration 8);
            // placed by the statement above (migration 14).
            tx.moved(queue, "running", "completed", 1);
            tx.happened(Happening::Ended {
                id: job_id(id.clone())?,
                queue: queue_name(queue),
                kind: r.try_get(4).db()?,
                attempt: r.try_get(5).db()?,
                outcome: AttemptOutcome::Completed,
                state: JobState::Completed,
                run_ms: started.map_or(0, |s| (tx.now.0 - millis(s).0).max(0)),
            });
            done.insert((id, r.try_get(8).db()?), (r.try_get(1).db()?, r.try_get(2).db()?, r.try_get(7).db()?));
        }
        let mut missed = Vec::new();
        for &i in &completions {
            match done.remove(&(reports[i].id.to_string(), reports[i].token.clone())) {
                Some((seq, has_dependents, watched)) => {
                    // Announced only to those waiting (see Store::job_watch).
                    if watched {
                        tx.event(StoreEvent::JobFinished(reports[i].id.clone()));
                    }
                    if has_dependents {
                        finished.push(Finished { seq, id: reports[i].id.clone(), state: JobState::Completed });
                    }
                    out[i] = Some(Ok(JobState::Completed));
                }
                None => missed.push(i),
            }
        }
        // Not updated: say why (stale token, terminal, unknown, or the same
        // job twice in one batch).
        if !missed.is_empty() {
            let claims: Vec<(&JobId, &str)> = missed.iter().map(|&i| (&reports[i].id, reports[i].token.as_str())).collect();
            for (&i, h) in missed.iter().zip(hold_many(tx, &claims).await?) {
                let id = &reports[i].id;
                out[i] = Some(Err(h.err().unwrap_or_else(|| StoreError::Conflict(format!("job `{id}` was reported twice in one batch")))));
            }
        }
    }
    // Failures and snoozes: decided per job from its attempt and policy.
    let others: Vec<usize> = (0..reports.len()).filter(|&i| out[i].is_none()).collect();
    if !others.is_empty() {
        let claims: Vec<(&JobId, &str)> = others.iter().map(|&i| (&reports[i].id, reports[i].token.as_str())).collect();
        let mut steps = Vec::new();
        for (&i, h) in others.iter().zip(hold_many(tx, &claims).await?) {
            match h {
                Ok(h) => {
                    let step = plan_report(tx.now, &h.attempt, &reports[i].outcome);
                    out[i] = Some(Ok(step.state()));
                    let entries = timeline::for_report(&step, &reports[i].outcome);
                    steps.push(Ending { held: h, step, entries, lost: None });
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        finished.extend(apply(tx, steps).await?);
    }
    settle_dependents(tx, finished).await?;
    Ok(out.into_iter().map(|o| o.expect("every report answered")).collect())
}

/// Writes non-completion [`Step`]s on held jobs: one statement for those
/// going back to the queue, one for those ending. Returns the ended jobs
/// that have dependents, which the caller settles.
pub(crate) async fn apply<C: Conn>(tx: &Tx<'_, C>, steps: Vec<Ending>) -> Result<Vec<Finished>, StoreError> {
    let mut requeue = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut requeue_entries: Vec<Vec<Entry>> = Vec::new();
    let mut ends: Vec<End> = Vec::new();
    let mut finished = Vec::new();
    for Ending { held: h, step, entries, lost } in steps {
        tx.happened(h.ended(tx.now, outcome(&step, lost), step.state()));
        match step {
            Step::Complete => unreachable!("completions carry a result and are written by `report_many`"),
            Step::Requeue { state, run_at, error, give_back_attempt } => {
                requeue.0.push(h.seq);
                requeue.1.push(state.as_str());
                requeue.2.push(ts(run_at));
                requeue.3.push(i32::from(give_back_attempt));
                requeue.4.push(error);
                requeue_entries.push(entries);
                tx.event(StoreEvent::JobsAvailable(queue_name(&h.queue)));
            }
            Step::Finish { state, error } => {
                if h.has_dependents {
                    finished.push(Finished { seq: h.seq, id: h.id.clone(), state });
                }
                ends.push(End { seq: h.seq, state, error, keep_failed_ms: h.keep_failed_ms, entries });
            }
        }
    }
    if !requeue.0.is_empty() {
        let mut ev = EventColumns::default();
        for e in &requeue_entries {
            ev.push(e);
        }
        tx.c.execute(
            "UPDATE kyu_jobs j SET state = x.state, run_at = x.run_at, attempt = j.attempt - x.give_back, \
               lease_expires_at = NULL, deadline_at = NULL, token = NULL, \
               errors = CASE WHEN x.error IS NULL THEN j.errors ELSE j.errors || jsonb_build_array(jsonb_build_object(\
                 'attempt', j.attempt, 'at', $1::text, 'message', x.error)) END, \
               events = kyu_event_push(kyu_event_push(kyu_event_archive(j.events, j.state, j.started_at, j.attempt, j.worker), $1::text, x.t1, j.attempt, j.worker, x.m1), \
                 $1::text, x.t2, j.attempt, j.worker, x.m2) \
             FROM unnest($2::int8[], $3::text[], $4::timestamptz[], $5::int4[], $6::text[], $7::text[], $8::text[], \
               $9::text[], $10::text[]) AS x(seq, state, run_at, give_back, error, t1, m1, t2, m2) \
             WHERE j.seq = x.seq",
            &[&tx.now_str, &requeue.0, &requeue.1, &requeue.2, &requeue.3, &requeue.4, &ev.t1, &ev.m1, &ev.t2, &ev.m2],
        )
        .await
        .db()?;
    }
    finish_many(tx, ends).await?;
    Ok(finished)
}

/// Ends jobs in a failed or cancelled state, each with its error (if any),
/// its retention and its timeline entries.
pub(crate) async fn finish_many<C: Conn>(tx: &Tx<'_, C>, ends: Vec<End>) -> Result<(), StoreError> {
    if ends.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = ends.iter().map(|e| e.seq).collect();
    let states: Vec<&str> = ends.iter().map(|e| e.state.as_str()).collect();
    let errors: Vec<Option<&str>> = ends.iter().map(|e| e.error.as_deref()).collect();
    let expires: Vec<SystemTime> =
        ends.iter().map(|e| ts(tx.settings.retention.expires_at(e.state, tx.now, None, e.keep_failed_ms))).collect();
    let mut ev = EventColumns::default();
    for e in &ends {
        ev.push(&e.entries);
    }
    let watched = tx.c.query(
        "UPDATE kyu_jobs j SET state = x.state, finished_at = $1, expires_at = x.expires_at, lease_expires_at = NULL, \
           deadline_at = NULL, token = NULL, \
           errors = CASE WHEN x.error IS NULL THEN j.errors ELSE j.errors || jsonb_build_array(jsonb_build_object(\
             'attempt', j.attempt, 'at', $2::text, 'message', x.error)) END, \
           events = kyu_event_push(kyu_event_push(kyu_event_archive(j.events, j.state, j.started_at, j.attempt, j.worker), $2::text, x.t1, j.attempt, j.worker, x.m1), \
             $2::text, x.t2, j.attempt, j.worker, x.m2) \
         FROM unnest($3::int8[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[]) \
           AS x(seq, state, expires_at, error, t1, m1, t2, m2) \
         WHERE j.seq = x.seq RETURNING j.id, j.finish_watched",
        &[&tx.now_ts, &tx.now_str, &seqs, &states, &expires, &errors, &ev.t1, &ev.m1, &ev.t2, &ev.m2],
    )
    .await
    .db()?;
    // Announced only to those waiting (see Store::job_watch).
    for r in watched {
        if r.try_get::<_, bool>(1).db()? {
            tx.event(StoreEvent::JobFinished(job_id(r.try_get(0).db()?)?));
        }
    }
    Ok(())
}

pub(crate) async fn heartbeat_many<C: Conn>(
    tx: &Tx<'_, C>,
    p: JobHeartbeatParams,
) -> Result<Vec<Result<Heartbeat, StoreError>>, StoreError> {
    let lease = tx.now.plus_ms(p.lease_ms);
    let ids: Vec<&str> = p.jobs.iter().map(|(id, _)| id.as_str()).collect();
    let tokens: Vec<&str> = p.jobs.iter().map(|(_, t)| t.as_str()).collect();
    // Fenced by the token alone, as completions are (see report_many).
    let rows = tx
        .c
        .query(
            "UPDATE kyu_jobs j SET lease_expires_at = $1 FROM unnest($2::text[], $3::text[]) AS r(id, token) \
             WHERE j.id = r.id AND j.token = r.token RETURNING j.id, j.cancel_requested",
            &[&ts(lease), &ids, &tokens],
        )
        .await
        .db()?;
    let mut hit: HashMap<String, bool> = HashMap::new();
    for r in rows {
        hit.insert(r.try_get(0).db()?, r.try_get(1).db()?);
    }
    let missed: Vec<(&JobId, &str)> =
        p.jobs.iter().filter(|(id, _)| !hit.contains_key(id.as_str())).map(|(id, t)| (id, t.as_str())).collect();
    let mut refusals = if missed.is_empty() { Vec::new() } else { hold_many(tx, &missed).await? }.into_iter();
    Ok(p.jobs
        .iter()
        .map(|(id, _)| match hit.get(id.as_str()) {
            Some(&cancel_requested) => Ok(Heartbeat { lease_expires_at: lease, cancel_requested }),
            None => Err(refusals.next().and_then(Result::err).unwrap_or_else(|| StoreError::Conflict("stale token".into()))),
        })
        .collect())
}

pub(crate) async fn save<C: Conn>(tx: &Tx<'_, C>, p: JobSaveParams) -> Result<(), StoreError> {
    if let Some(c) = &p.checkpoint {
        kyu_core::validate::no_nul("checkpoint", c)?;
    }
    if let Some(pr) = &p.progress {
        kyu_core::validate::no_nul("progress", pr)?;
    }
    let entry = timeline::for_save(p.progress.as_ref(), p.checkpoint.is_some());
    let n = tx
        .c
        .execute(
            "UPDATE kyu_jobs SET checkpoint = coalesce($3::jsonb, checkpoint), progress = coalesce($4::jsonb, progress), \
               events = kyu_event_push(events, $5::text, $6::text, attempt, worker, $7::text) \
             WHERE id = $1 AND token = $2 AND state = 'running'",
            &[
                &p.id.as_str(),
                &p.token,
                &p.checkpoint,
                &p.progress,
                &tx.now_str,
                &entry.as_ref().map(|e| e.kind.as_str()),
                &entry.as_ref().and_then(|e| e.message.as_deref()),
            ],
        )
        .await
        .db()?;
    if n == 0 {
        held(tx, &p.id, &p.token).await?;
    }
    Ok(())
}

/// Running jobs whose lease ran out or which passed their deadline end as
/// failed attempts ([`plan_lost`]); due scheduled jobs become queued. `SKIP
/// LOCKED`, so every node can run it at once without waiting on the others.
pub(crate) async fn rescue<C: Conn>(tx: &Tx<'_, C>) -> Result<RescueCounts, StoreError> {
    let sql = format!(
        "SELECT {HELD_COLUMNS}, lease_expires_at, deadline_at FROM kyu_jobs \
         WHERE seq IN ({CLAIMED}) AND state = 'running' \
           AND (lease_expires_at < $1 OR deadline_at < $1) \
         ORDER BY lease_expires_at LIMIT {} FOR UPDATE SKIP LOCKED",
        kyu_core::transition::MAINTENANCE_BATCH
    );
    let rows = tx.c.query(&sql, &[&tx.now_ts]).await.db()?;
    let mut steps = Vec::new();
    for r in &rows {
        let h = held_from_row(r)?;
        let lease = millis(r.try_get(11).db()?);
        let deadline = r.try_get::<_, Option<SystemTime>>(12).db()?.map(millis);
        if let Some(why) = lost(tx.now, lease, deadline) {
            let step = plan_lost(tx.now, &h.attempt, why);
            let entries = timeline::for_step(&step, Some(why));
            steps.push(Ending { held: h, step, entries, lost: Some(why) });
        }
    }
    let expired = steps.len() as u64;
    let finished = apply(tx, steps).await?;
    settle_dependents(tx, finished).await?;
    // Claims none of whose jobs still run under their token (migration 15).
    tx.c.execute(
        &format!(
            "DELETE FROM kyu_claims WHERE ctid = ANY(ARRAY( \
               SELECT c.ctid FROM kyu_claims c \
               WHERE NOT EXISTS (SELECT 1 FROM kyu_jobs j WHERE j.seq = ANY(c.seqs) AND j.token = c.token) \
               LIMIT {} FOR UPDATE SKIP LOCKED))",
            kyu_core::transition::MAINTENANCE_BATCH
        ),
        &[],
    )
    .await
    .db()?;
    crate::settle::sweep(tx).await?;
    let promoted = promote_due(tx, None).await?;
    Ok(RescueCounts { expired, promoted })
}

/// Scheduled jobs whose time has come become queued (of these queues, or
/// all), a bounded batch at a time. The statement sends the notifications
/// itself (delivered at commit, as the transaction's others), so nothing
/// in the transaction waits for its answer: a claim commits with it in one
/// round trip (`claim::claim_at_once`).
pub(crate) async fn promote_due<C: Conn>(tx: &Tx<'_, C>, queues: Option<&[String]>) -> Result<u64, StoreError> {
    let sql = format!(
        "WITH promoted AS ( \
           UPDATE kyu_jobs SET state = 'queued' WHERE seq IN ( \
             SELECT j.seq FROM kyu_jobs j WHERE j.seq IN ( \
                 SELECT seq FROM kyu_parked WHERE state = 'scheduled' AND run_at <= $1 \
                   AND ($2::text[] IS NULL OR queue = ANY($2)) \
                 ORDER BY run_at LIMIT {}) \
               AND j.state = 'scheduled' FOR UPDATE OF j SKIP LOCKED) \
           RETURNING queue), \
         notified AS (SELECT pg_notify($3, 'a:' || queue) FROM (SELECT DISTINCT queue FROM promoted) AS q) \
         SELECT (SELECT count(*) FROM promoted), (SELECT count(*) FROM notified)",
        kyu_core::transition::MAINTENANCE_BATCH
    );
    let row = tx.c.query_one(&sql, &[&tx.now_ts, &queues, &tx.settings.channel]).await.db()?;
    Ok(row.try_get::<_, i64>(0).db()? as u64)
}

/// The earliest `run_at` among scheduled jobs of these queues.
pub(crate) async fn next_run_at<C: Conn>(tx: &Tx<'_, C>, queues: &[String]) -> Result<Option<Millis>, StoreError> {
    let row = tx
        .c
        .query_one("SELECT min(run_at) FROM kyu_parked WHERE state = 'scheduled' AND queue = ANY($1)", &[&queues])
        .await
        .db()?;
    Ok(row.try_get::<_, Option<SystemTime>>(0).db()?.map(millis))
}
