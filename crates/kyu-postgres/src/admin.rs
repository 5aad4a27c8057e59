//! Operator actions and retention: cancel, retry, delete, prune, queue settings.

use kyu_core::{Job, JobId, JobState, QueueInfo, QueueName};
use kyu_core::dependency::{Candidate, failed_because_of, plan_revival};
use kyu_store::{JobRetryManyParams, JobRetryParams, QueueUpdateParams, StoreError, StoreEvent};
use crate::conn::Conn;
use tokio_postgres::types::ToSql;

use crate::error::PgResultExt;
use crate::finish::{End, Finished, finish_many, queue_name};
use crate::settle::settle_dependents;
use crate::read::{job_id, job_must, queue_list, state_of, ts};
use kyu_core::tally::Happening;
use kyu_core::timeline::{Entry, EventType};
use crate::tx::Tx;

/// What an operator action needs of a job, read under its row lock.
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

async fn lock_job<C: Conn>(tx: &Tx<'_, C>, id: &JobId) -> Result<Target, StoreError> {
    let row = tx
        .c
        .query_opt(
            "SELECT seq, state, keep_failed_ms, queue, kind, attempt FROM kyu_jobs WHERE id = $1 FOR UPDATE",
            &[&id.as_str()],
        )
        .await
        .db()?
        .ok_or_else(|| StoreError::job_not_found(id))?;
    Ok(Target {
        seq: row.try_get(0).db()?,
        state: state_of(row.try_get(1).db()?)?,
        keep_failed_ms: row.try_get(2).db()?,
        queue: row.try_get(3).db()?,
        kind: row.try_get(4).db()?,
        attempt: row.try_get(5).db()?,
    })
}

pub(crate) async fn cancel<C: Conn>(tx: &Tx<'_, C>, id: &JobId) -> Result<Job, StoreError> {
    let t = lock_job(tx, id).await?;
    let seq = t.seq;
    match t.state {
        s if s.is_terminal() => return Err(StoreError::Conflict(format!("job `{id}` is already {s}"))),
        // Stored, not only signalled: the worker learns it at its next heartbeat.
        JobState::Running => {
            tx.c.execute(
                "UPDATE kyu_jobs SET cancel_requested = true, \
                 events = kyu_event_push(events, $2::text, 'cancel_requested', attempt, worker, NULL) WHERE seq = $1",
                &[&seq, &tx.now_str],
            )
            .await
            .db()?;
        }
        _ => {
            tx.c.execute("UPDATE kyu_jobs SET cancel_requested = true WHERE seq = $1", &[&seq]).await.db()?;
            tx.happened(t.changed(id, JobState::Cancelled));
            let end = End {
                seq,
                state: JobState::Cancelled,
                error: None,
                keep_failed_ms: t.keep_failed_ms,
                entries: vec![Entry::with(EventType::Cancelled, "cancelled by an operator")],
            };
            finish_many(tx, vec![end]).await?;
            settle_dependents(tx, vec![Finished { seq, id: id.clone(), state: JobState::Cancelled }]).await?;
        }
    }
    job_must(tx.c, id).await
}

/// Back to `queued` with a fresh set of attempts; `$1` is now.
const RETRY_SET: &str = "state = 'queued', attempt = 0, run_at = $1, finished_at = NULL, expires_at = NULL, \
     cancel_requested = false, token = NULL, lease_expires_at = NULL, pending_deps = 0, \
     events = kyu_event_push(events, to_char($1 AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), 'retried', \
       NULL, NULL, 'sent back to the queue by an operator')";

pub(crate) async fn retry<C: Conn>(tx: &Tx<'_, C>, p: JobRetryParams) -> Result<Job, StoreError> {
    let id = &p.id;
    let t = lock_job(tx, id).await?;
    let (seq, state) = (t.seq, t.state);
    if !matches!(state, JobState::Failed | JobState::Cancelled) {
        return Err(StoreError::Conflict(format!("job `{id}` is {state}; only failed or cancelled jobs can be retried")));
    }
    tx.happened(t.changed(id, JobState::Queued));
    tx.c.execute(&format!("UPDATE kyu_jobs SET {RETRY_SET} WHERE seq = $2"), &[&tx.now_ts, &seq]).await.db()?;
    if p.dependents {
        revive_dependents(tx, seq, id).await?;
    }
    let job = job_must(tx.c, id).await?;
    tx.event(StoreEvent::JobsAvailable(job.queue.clone()));
    Ok(job)
}

/// The failed jobs that failed because job `seq` did, and theirs in turn,
/// go back to `waiting` if [`plan_revival`] says so. They are locked as
/// they are found.
async fn revive_dependents<C: Conn>(tx: &Tx<'_, C>, seq: i64, id: &JobId) -> Result<(), StoreError> {
    let mut frontier = vec![(seq, id.clone())];
    let mut found: Vec<(i64, JobId, bool)> = Vec::new();
    while let Some((dep_seq, dep_id)) = frontier.pop() {
        let rows = tx
            .c
            .query(
                "SELECT j.seq, j.id, j.continue_on_failure, j.errors -> -1 ->> 'message' \
                 FROM kyu_job_deps d JOIN kyu_jobs j ON j.seq = d.job_seq WHERE d.dep_seq = $1 AND j.state = 'failed' \
                 ORDER BY j.seq FOR UPDATE OF j",
                &[&dep_seq],
            )
            .await
            .db()?;
        for r in rows {
            let (s, i, cof, last): (i64, String, bool, Option<String>) =
                (r.try_get(0).db()?, r.try_get(1).db()?, r.try_get(2).db()?, r.try_get(3).db()?);
            let i = JobId::new(i).map_err(|e| StoreError::Backend(e.into()))?;
            if failed_because_of(last.as_deref(), &dep_id) && !found.iter().any(|f| f.0 == s) {
                frontier.push((s, i.clone()));
                found.push((s, i, cof));
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = found.iter().map(|f| f.0).collect();
    let rows = tx
        .c
        .query("SELECT d.job_seq, j.id, j.state FROM kyu_job_deps d JOIN kyu_jobs j ON j.seq = d.dep_seq WHERE d.job_seq = ANY($1)", &[&seqs])
        .await
        .db()?;
    let mut deps: Vec<Vec<(JobId, JobState)>> = vec![Vec::new(); found.len()];
    for r in rows {
        let owner: i64 = r.try_get(0).db()?;
        let k = found.iter().position(|f| f.0 == owner).expect("asked for these");
        deps[k].push((JobId::new(r.try_get::<_, String>(1).db()?).map_err(|e| StoreError::Backend(e.into()))?, state_of(r.try_get(2).db()?)?));
    }
    let candidates: Vec<Candidate<'_>> = found
        .iter()
        .zip(&deps)
        .map(|((_, i, cof), d)| Candidate { id: i, continue_on_failure: *cof, deps: d.iter().map(|(i, s)| (i, *s)).collect() })
        .collect();
    let (mut revived, mut pending) = (Vec::new(), Vec::new());
    for (i, n) in plan_revival(id, &candidates) {
        revived.push(found[i].0);
        pending.push(n as i32);
    }
    // Counts from an earlier wait; the pending counts above are whole.
    tx.c.execute("DELETE FROM kyu_dep_done WHERE job_seq = ANY($1)", &[&revived]).await.db()?;
    let message = format!("waiting again: `{id}` was retried");
    let rows = tx
        .c
        .query(
            "UPDATE kyu_jobs j SET state = 'waiting', pending_deps = x.pending, finished_at = NULL, expires_at = NULL, \
               events = kyu_event_push(j.events, $3::text, 'waiting', NULL, NULL, $4::text) \
             FROM unnest($1::int8[], $2::int4[]) AS x(seq, pending) WHERE j.seq = x.seq \
             RETURNING j.id, j.queue, j.kind, j.attempt",
            &[&revived, &pending, &tx.now_str, &message],
        )
        .await
        .db()?;
    for r in rows {
        tx.happened(Happening::Changed {
            id: job_id(r.try_get(0).db()?)?,
            queue: queue_name(r.try_get(1).db()?),
            kind: r.try_get(2).db()?,
            state: JobState::Waiting,
            attempt: r.try_get(3).db()?,
        });
    }
    Ok(())
}

type Args = Vec<Box<dyn ToSql + Sync + Send>>;

/// The WHERE clause of a dead-letter filter, its arguments after `first`.
fn dead_letter_filter(p: &JobRetryManyParams, first: Args) -> Result<(String, Args), StoreError> {
    let state = p.check()?;
    let mut args = first;
    let mut wheres: Vec<String> = Vec::new();
    // Found from the narrow rows of dead letters (migration 14), by queue
    // when one is given; the state is a literal of a closed set.
    let parked = match &p.queue {
        Some(q) => {
            args.push(Box::new(q.as_str().to_owned()));
            format!("queue = ${} AND state = '{}'", args.len(), state.as_str())
        }
        None => format!("state = '{}'", state.as_str()),
    };
    wheres.push(format!("seq IN (SELECT seq FROM kyu_parked WHERE {parked})"));
    wheres.push(format!("state = '{}'", state.as_str()));
    let mut filter = |clause: &str, v: Box<dyn ToSql + Sync + Send>| {
        args.push(v);
        wheres.push(clause.replace('$', &format!("${}", args.len())));
    };
    if let Some(k) = &p.kind {
        filter("kind = $", Box::new(k.clone()));
    }
    if let Some(s) = p.since {
        filter("finished_at >= $", Box::new(ts(s)));
    }
    if let Some(u) = p.until {
        filter("finished_at < $", Box::new(ts(u)));
    }
    if let Some(e) = &p.error_contains {
        filter("strpos(errors -> -1 ->> 'message', $) > 0", Box::new(e.clone()));
    }
    Ok((wheres.join(" AND "), args))
}

pub(crate) async fn retry_many<C: Conn>(tx: &Tx<'_, C>, p: JobRetryManyParams) -> Result<u64, StoreError> {
    let (wheres, args) = dead_letter_filter(&p, vec![Box::new(tx.now_ts)])?;
    let sql = format!("UPDATE kyu_jobs SET {RETRY_SET} WHERE {wheres} RETURNING queue, id, kind");
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
    let rows = tx.c.query(&sql, &params).await.db()?;
    let mut queues: Vec<String> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().db()?;
    for r in &rows {
        tx.happened(Happening::Changed {
            id: job_id(r.try_get(1).db()?)?,
            queue: queue_name(r.try_get(0).db()?),
            kind: r.try_get(2).db()?,
            state: JobState::Queued,
            attempt: 0,
        });
    }
    let count = queues.len() as u64;
    queues.sort();
    queues.dedup();
    for q in queues.into_iter().filter_map(|q| QueueName::new(q).ok()) {
        tx.event(StoreEvent::JobsAvailable(q));
    }
    Ok(count)
}

/// Deletes the dead-letter jobs `p` selects, at most 100,000 per call;
/// rows another transaction holds are left for the next call.
pub(crate) async fn delete_many<C: Conn>(tx: &Tx<'_, C>, p: JobRetryManyParams) -> Result<u64, StoreError> {
    let (wheres, args) = dead_letter_filter(&p, Vec::new())?;
    let sql = format!("SELECT seq FROM kyu_jobs WHERE {wheres} LIMIT 100000 FOR UPDATE SKIP LOCKED");
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
    let rows = tx.c.query(&sql, &params).await.db()?;
    let seqs: Vec<i64> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().db()?;
    if !seqs.is_empty() {
        remove(tx, &seqs).await?;
    }
    Ok(seqs.len() as u64)
}

pub(crate) async fn delete<C: Conn>(tx: &Tx<'_, C>, id: &JobId) -> Result<(), StoreError> {
    let Target { seq, state, .. } = lock_job(tx, id).await?;
    if state == JobState::Running {
        return Err(StoreError::Conflict(format!("job `{id}` is running; cancel it first")));
    }
    if !state.is_terminal() {
        // Its dependents would otherwise wait forever: to them it is as if
        // it had been cancelled.
        settle_dependents(tx, vec![Finished { seq, id: id.clone(), state: JobState::Cancelled }]).await?;
    }
    remove(tx, &[seq]).await
}

async fn remove<C: Conn>(tx: &Tx<'_, C>, seqs: &[i64]) -> Result<(), StoreError> {
    tx.c.execute("DELETE FROM kyu_jobs WHERE seq = ANY($1)", &[&seqs]).await.db()?;
    tx.c.execute("DELETE FROM kyu_job_deps WHERE dep_seq = ANY($1) OR job_seq = ANY($1)", &[&seqs]).await.db()?;
    tx.c.execute("DELETE FROM kyu_dep_done WHERE job_seq = ANY($1)", &[&seqs]).await.db()?;
    tx.c.execute("DELETE FROM kyu_job_logs WHERE job_seq = ANY($1)", &[&seqs]).await.db()?;
    tx.c.execute("DELETE FROM kyu_job_log_sizes WHERE job_seq = ANY($1)", &[&seqs]).await.db()?;
    Ok(())
}

/// Deletes finished jobs whose retention has passed, from up to `batch`
/// rows of `kyu_expiry` (migration 15); `SKIP LOCKED` on both tables lets
/// every node prune at once without waiting on another. A listed job is
/// deleted only if its own expiry is still due; one someone holds is
/// listed again for the next call.
pub(crate) async fn prune<C: Conn>(tx: &Tx<'_, C>, batch: usize) -> Result<u64, StoreError> {
    let rows = tx
        .c
        .query(
            &format!(
                "WITH due AS MATERIALIZED ( \
                   SELECT ctid AS eid, seqs FROM kyu_expiry WHERE expires_at <= $1 ORDER BY expires_at LIMIT {batch} \
                   FOR UPDATE SKIP LOCKED), \
                 listed AS MATERIALIZED (SELECT DISTINCT unnest(seqs) AS seq FROM due), \
                 held AS MATERIALIZED ( \
                   SELECT j.seq FROM kyu_jobs j WHERE j.seq IN (SELECT seq FROM listed) AND j.expires_at <= $1 \
                   FOR UPDATE OF j SKIP LOCKED), \
                 again AS ( \
                   INSERT INTO kyu_expiry (expires_at, seqs) \
                   SELECT j.expires_at, array_agg(j.seq) FROM kyu_jobs j \
                   WHERE j.seq IN (SELECT seq FROM listed) AND j.seq NOT IN (SELECT seq FROM held) AND j.expires_at <= $1 \
                   GROUP BY j.expires_at), \
                 gone AS (DELETE FROM kyu_expiry WHERE ctid = ANY(ARRAY(SELECT eid FROM due))) \
                 SELECT seq FROM held"
            ),
            &[&tx.now_ts],
        )
        .await
        .db()?;
    let seqs: Vec<i64> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().db()?;
    if !seqs.is_empty() {
        remove(tx, &seqs).await?;
    }
    Ok(seqs.len() as u64)
}

pub(crate) async fn queue_update<C: Conn>(tx: &Tx<'_, C>, p: QueueUpdateParams) -> Result<QueueInfo, StoreError> {
    p.check()?;
    let name = p.name.as_str();
    tx.c.execute(
        "INSERT INTO kyu_queues (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&name, &tx.now_ts],
    )
    .await
    .db()?;
    if let Some(paused) = p.paused {
        tx.c.execute("UPDATE kyu_queues SET paused = $2 WHERE name = $1", &[&name, &paused]).await.db()?;
        if !paused {
            tx.event(StoreEvent::JobsAvailable(p.name.clone()));
        }
    }
    if let Some(c) = p.concurrency {
        tx.c.execute("UPDATE kyu_queues SET concurrency = $2 WHERE name = $1", &[&name, &c]).await.db()?;
    }
    if let Some(g) = p.group_concurrency {
        tx.c.execute("UPDATE kyu_queues SET group_concurrency = $2 WHERE name = $1", &[&name, &g]).await.db()?;
    }
    if let Some(t) = p.timeout_ms {
        tx.c.execute("UPDATE kyu_queues SET timeout_ms = $2 WHERE name = $1", &[&name, &t]).await.db()?;
    }
    if let Some(r) = p.rate_limit {
        tx.c.execute(
            "UPDATE kyu_queues SET rate_max = $2, rate_per_ms = $3, rate_window_start = NULL, rate_window_count = 0 \
             WHERE name = $1",
            &[&name, &r.map(|r| r.max), &r.map(|r| r.per_ms)],
        )
        .await
        .db()?;
    }
    queue_list(tx.c, Some(name)).await?.pop().ok_or_else(|| StoreError::NotFound(format!("queue `{name}`")))
}
