//! Children added by a running job (BullMQ's `moveToWaitingChildren`).

use kyu_core::transition::{AfterFailure, Dependency, dependency};
use kyu_core::{JobId, JobState};
use kyu_store::{AddedChildren, JobAddChildrenParams, StoreError, StoreEvent};
use serde_json::Value;

use crate::conn::Conn;
use crate::error::PgResultExt;
use crate::finish::{end_attempt, held};
use crate::insert::insert_many;
use crate::read::state_of;
use crate::tx::Tx;

pub(crate) async fn add_children<C: Conn>(tx: &Tx<'_, C>, p: JobAddChildrenParams) -> Result<AddedChildren, StoreError> {
    // `held` locks the parent's row until commit.
    let parent = held(tx, &p.id, &p.token).await?;
    let children = insert_many(tx, p.jobs).await?;
    if !p.wait {
        return Ok(AddedChildren { children, waiting: false });
    }
    if parent.cancel_requested {
        end_attempt(tx, &parent, AfterFailure::Final(JobState::Cancelled), None).await?;
        return Ok(AddedChildren { children, waiting: false });
    }
    let row = tx.c.query_one("SELECT depends_on, continue_on_failure FROM kyu_jobs WHERE seq = $1", &[&parent.seq]).await.db()?;
    let mut ids: Vec<String> = match row.try_get::<_, Option<Value>>(0).db()? {
        Some(v) => serde_json::from_value(v).map_err(|e| StoreError::Backend(e.into()))?,
        None => Vec::new(),
    };
    let continue_on_failure: bool = row.try_get(1).db()?;
    let mut pending: Vec<i64> = Vec::new();
    let mut failed: Option<JobId> = None;
    for c in &children {
        if !ids.iter().any(|i| i == c.id.as_str()) {
            ids.push(c.id.to_string());
        }
        // FOR SHARE: a child cannot finish between this read and our commit.
        let r = tx
            .c
            .query_one("SELECT seq, state FROM kyu_jobs WHERE id = $1 FOR SHARE", &[&c.id.as_str()])
            .await
            .db()?;
        let (seq, state): (i64, JobState) = (r.try_get(0).db()?, state_of(r.try_get(1).db()?)?);
        match dependency(state, continue_on_failure) {
            Dependency::Satisfied => {}
            Dependency::Broken => failed = failed.or(Some(c.id.clone())),
            Dependency::Pending => pending.push(seq),
        }
    }
    if let Some(dep) = failed {
        let msg = format!("dependency `{dep}` did not complete");
        end_attempt(tx, &parent, AfterFailure::Final(JobState::Failed), Some(&msg)).await?;
        return Ok(AddedChildren { children, waiting: false });
    }
    if !pending.is_empty() {
        tx.c.execute(
            "INSERT INTO kyu_job_deps (dep_seq, job_seq) SELECT unnest($1::int8[]), $2 ON CONFLICT DO NOTHING",
            &[&pending, &parent.seq],
        )
        .await
        .db()?;
        tx.c.execute("UPDATE kyu_jobs SET has_dependents = true WHERE seq = ANY($1) AND NOT has_dependents", &[&pending])
            .await
            .db()?;
    }
    let waiting = !pending.is_empty();
    let state = if waiting { JobState::Waiting } else { JobState::Queued };
    tx.c.execute(
        "UPDATE kyu_jobs SET state = $2, pending_deps = pending_deps + $3, depends_on = $4::text::jsonb, \
         attempt = attempt - 1, token = NULL, lease_expires_at = NULL WHERE seq = $1",
        &[&parent.seq, &state.as_str(), &(pending.len() as i32), &serde_json::to_string(&ids).expect("ids")],
    )
    .await
    .db()?;
    if !waiting {
        tx.event(StoreEvent::JobsAvailable(kyu_core::QueueName::new(parent.queue.clone()).unwrap_or_default()));
    }
    Ok(AddedChildren { children, waiting })
}
