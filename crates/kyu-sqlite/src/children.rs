//! Children added by a running job (BullMQ's `moveToWaitingChildren`).

use kyu_core::transition::{AfterFailure, Dependency, dependency};
use kyu_core::{JobId, JobState};
use kyu_store::{AddedChildren, JobAddChildrenParams, StoreError, StoreEvent};
use rusqlite::{OptionalExtension, params};

use crate::error::SqlResultExt;
use crate::finish::{end_attempt, held};
use crate::insert::insert_many;
use crate::read::{Json, State};
use crate::writer::Tx;

pub(crate) fn add_children(tx: &mut Tx<'_>, p: JobAddChildrenParams) -> Result<AddedChildren, StoreError> {
    let parent = held(tx, &p.id, &p.token)?;
    let children = insert_many(tx, p.jobs)?;
    if !p.wait {
        return Ok(AddedChildren { children, waiting: false });
    }
    if parent.cancel_requested {
        end_attempt(tx, &parent, AfterFailure::Final(JobState::Cancelled), None)?;
        return Ok(AddedChildren { children, waiting: false });
    }
    let (depends_on, continue_on_failure): (Option<Json<Vec<String>>>, bool) = tx
        .conn
        .prepare_cached("SELECT depends_on, continue_on_failure FROM kyu_jobs WHERE seq = ?1")
        .db()?
        .query_row([parent.seq], |r| Ok((r.get(0)?, r.get(1)?)))
        .db()?;
    let mut ids: Vec<String> = depends_on.map(|j| j.0).unwrap_or_default();
    let mut pending: Vec<i64> = Vec::new();
    let mut failed: Option<JobId> = None;
    for c in &children {
        if !ids.iter().any(|i| i == c.id.as_str()) {
            ids.push(c.id.to_string());
        }
        let (seq, state): (i64, JobState) = tx
            .conn
            .prepare_cached("SELECT seq, state FROM kyu_jobs WHERE id = ?1")
            .db()?
            .query_row([c.id.as_str()], |r| Ok((r.get(0)?, r.get::<_, State>(1)?.0)))
            .optional()
            .db()?
            .ok_or_else(|| StoreError::job_not_found(&c.id))?;
        match dependency(state, continue_on_failure) {
            Dependency::Satisfied => {}
            Dependency::Broken => failed = failed.or(Some(c.id.clone())),
            Dependency::Pending => pending.push(seq),
        }
    }
    if let Some(dep) = failed {
        let msg = format!("dependency `{dep}` did not complete");
        end_attempt(tx, &parent, AfterFailure::Final(JobState::Failed), Some(&msg))?;
        return Ok(AddedChildren { children, waiting: false });
    }
    for &seq in &pending {
        tx.conn
            .prepare_cached("INSERT INTO kyu_job_deps (dep_seq, job_seq) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
            .db()?
            .execute(params![seq, parent.seq])
            .db()?;
        tx.conn
            .prepare_cached("UPDATE kyu_jobs SET has_dependents = 1 WHERE seq = ?1 AND has_dependents = 0")
            .db()?
            .execute([seq])
            .db()?;
    }
    let waiting = !pending.is_empty();
    let state = if waiting { JobState::Waiting } else { JobState::Queued };
    tx.conn
        .prepare_cached(
            "UPDATE kyu_jobs SET state = ?2, pending_deps = pending_deps + ?3, depends_on = ?4, attempt = attempt - 1, \
             token = NULL, lease_expires_at = NULL WHERE seq = ?1",
        )
        .db()?
        .execute(params![parent.seq, state.as_str(), pending.len() as i64, serde_json::to_string(&ids).expect("ids")])
        .db()?;
    if !waiting {
        tx.events.push(StoreEvent::JobsAvailable(kyu_core::QueueName::new(parent.queue.clone()).unwrap_or_default()));
    }
    Ok(AddedChildren { children, waiting })
}
