//! Enqueue: one transaction for a whole batch.

use kyu_core::dependency::plan_insert;
use kyu_core::tally::Happening;
use kyu_core::timeline::at_insert;
use kyu_core::transition::wakes_workers;
use kyu_core::{Backoff, JobId, JobState, NewJob};
use kyu_store::{Inserted, StoreError, StoreEvent};
use rusqlite::{OptionalExtension, params};

use crate::error::SqlResultExt;
use crate::read::State;
use crate::writer::Tx;

pub(crate) fn insert_many(tx: &mut Tx<'_>, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, StoreError> {
    let default_backoff = serde_json::to_string(&Backoff::default()).expect("backoff serialises");
    let mut out = Vec::with_capacity(jobs.len());
    let mut last_queue: Option<String> = None;
    for job in jobs {
        if last_queue.as_deref() != Some(job.queue.as_str()) {
            ensure_queue(tx, job.queue.as_str())?;
            last_queue = Some(job.queue.as_str().to_owned());
        }
        out.push(insert_one(tx, job, &default_backoff)?);
    }
    Ok(out)
}

/// Queues are created on first use.
pub(crate) fn ensure_queue(tx: &Tx<'_>, name: &str) -> Result<(), StoreError> {
    tx.conn
        .prepare_cached("INSERT INTO kyu_queues (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")
        .db()?
        .execute(params![name, tx.now_str])
        .db()?;
    Ok(())
}

fn existing(tx: &Tx<'_>, sql: &str, key: &str) -> Result<Option<(i64, JobId, JobState)>, StoreError> {
    tx.conn
        .prepare_cached(sql)
        .db()?
        .query_row(params![key, tx.now_str], |r| {
            Ok((r.get(0)?, JobId::new(r.get::<_, String>(1)?).map_err(rusqlite::Error::InvalidColumnName)?, r.get::<_, State>(2)?.0))
        })
        .optional()
        .db()
}

fn insert_one(tx: &mut Tx<'_>, job: NewJob, default_backoff: &str) -> Result<Inserted, StoreError> {
    if let Some(key) = &job.unique_key {
        let taken = existing(
            tx,
            "SELECT seq, id, state FROM kyu_jobs WHERE unique_key = ?1 \
             AND (state NOT IN ('completed', 'failed', 'cancelled') OR unique_until > ?2) LIMIT 1",
            key,
        )?;
        if let Some((_, id, state)) = taken {
            return Ok(Inserted { id, state, duplicate: true });
        }
    }

    // Dependencies must exist already (or earlier in this batch, which is
    // the same transaction), so a cycle can never be formed.
    let mut found: Vec<Option<(i64, JobState)>> = Vec::with_capacity(job.depends_on.len());
    for dep in &job.depends_on {
        let row = existing(tx, "SELECT seq, id, state FROM kyu_jobs WHERE id = ?1 AND ?2 IS NOT NULL", dep.as_str())?;
        found.push(row.map(|(seq, _, state)| (seq, state)));
    }
    let states: Vec<(&JobId, Option<JobState>)> =
        job.depends_on.iter().zip(&found).map(|(id, f)| (id, f.map(|(_, s)| s))).collect();
    let plan = plan_insert(tx.now, job.run_at, job.continue_on_failure, &states)?;
    let pending: Vec<i64> = plan.pending.iter().map(|&i| found[i].expect("pending dependencies exist").0).collect();
    let state = plan.state;
    let errors = match &plan.error {
        Some(entry) => serde_json::to_string(&[entry]).expect("errors serialise"),
        None => "[]".to_owned(),
    };
    let (finished, expires) = if state.is_terminal() {
        let expires = tx.opts.retention.expires_at(state, tx.now, job.keep_result_ms, job.keep_failed_ms);
        (Some(tx.now_str.clone()), Some(expires.to_rfc3339()))
    } else {
        (None, None)
    };

    let backoff = if job.backoff == Backoff::default() {
        default_backoff.to_owned()
    } else {
        serde_json::to_string(&job.backoff).expect("backoff serialises")
    };
    let unique_until = job.unique_for_ms.map(|ms| tx.now.plus_ms(ms).to_rfc3339());
    let depends_on = (!job.depends_on.is_empty()).then(|| serde_json::to_string(&job.depends_on).expect("ids serialise"));
    let tags = (!job.tags.is_empty()).then(|| serde_json::to_string(&job.tags).expect("tags serialise"));
    let events = at_insert(tx.now, state, job.run_at, pending.len() as i64, plan.error.as_ref().map(|e| e.message.as_str()));
    let seq: Option<i64> = tx
        .conn
        .prepare_cached(
            "INSERT INTO kyu_jobs (id, queue, kind, payload, state, priority, run_at, max_attempts, backoff, \
               timeout_ms, unique_key, unique_for_ms, unique_until, depends_on, pending_deps, continue_on_failure, \
               keep_result_ms, errors, tags, group_key, created_at, finished_at, expires_at, keep_failed_ms, events) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, \
               ?22, ?23, ?24, coalesce(?25, '[]')) \
             ON CONFLICT (id) DO NOTHING RETURNING seq",
        )
        .db()?
        .query_row(
            params![
                job.id.as_str(),
                job.queue.as_str(),
                job.kind,
                job.payload,
                state.as_str(),
                job.priority,
                job.run_at.to_rfc3339(),
                job.max_attempts,
                backoff,
                job.timeout_ms,
                job.unique_key,
                job.unique_for_ms,
                unique_until,
                depends_on,
                pending.len() as i64,
                job.continue_on_failure,
                job.keep_result_ms,
                errors,
                tags,
                job.group,
                tx.now_str,
                finished,
                expires,
                job.keep_failed_ms,
                events,
            ],
            |r| r.get(0),
        )
        .optional()
        .db()?;
    let Some(seq) = seq else {
        // The id exists: nothing was created.
        let (_, id, state) = existing(tx, "SELECT seq, id, state FROM kyu_jobs WHERE id = ?1 AND ?2 IS NOT NULL", job.id.as_str())?
            .ok_or_else(|| StoreError::Backend("duplicate id vanished inside its transaction".into()))?;
        return Ok(Inserted { id, state, duplicate: true });
    };
    link_dependencies(tx, seq, &pending)?;
    tx.counted.moved(job.queue.as_str(), None, state, 1);
    tx.tally.add(Happening::Enqueued { id: job.id.clone(), queue: job.queue.clone(), kind: job.kind.clone(), state });
    if wakes_workers(state) {
        tx.events.push(StoreEvent::JobsAvailable(job.queue));
    } else if state.is_terminal() {
        tx.events.push(StoreEvent::JobFinished(job.id.clone()));
    }
    Ok(Inserted { id: job.id, state, duplicate: false })
}

/// Records that job `seq` waits for each of `deps`, and marks them as
/// having dependents (so finishing them looks for waiters).
pub(crate) fn link_dependencies(tx: &Tx<'_>, seq: i64, deps: &[i64]) -> Result<(), StoreError> {
    for &dep_seq in deps {
        tx.conn
            .prepare_cached("INSERT INTO kyu_job_deps (dep_seq, job_seq) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
            .db()?
            .execute(params![dep_seq, seq])
            .db()?;
        tx.conn
            .prepare_cached("UPDATE kyu_jobs SET has_dependents = 1 WHERE seq = ?1 AND has_dependents = 0")
            .db()?
            .execute([dep_seq])
            .db()?;
    }
    Ok(())
}
