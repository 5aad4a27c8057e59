//! Children added by a running job (BullMQ's `moveToWaitingChildren`); what
//! that does to the parent is kyu-core's [`plan_children`].

use std::collections::HashMap;

use kyu_core::dependency::{ChildrenPlan, plan_children, with_children};
use kyu_core::{JobId, JobState};
use kyu_store::{AddedChildren, JobAddChildrenParams, StoreError};
use serde_json::Value;

use crate::conn::Conn;
use crate::error::PgResultExt;
use crate::finish::{Ending, apply, held, queue_name};
use crate::settle::settle_dependents;
use kyu_core::tally::Happening;
use crate::insert::{insert_many, link_dependencies};
use crate::read::state_of;
use crate::tx::Tx;

pub(crate) async fn add_children<C: Conn>(tx: &Tx<'_, C>, p: JobAddChildrenParams) -> Result<AddedChildren, StoreError> {
    // `held` locks the parent's row until commit.
    let parent = held(tx, &p.id, &p.token).await?;
    let children = insert_many(tx, p.jobs).await?;
    let row = tx.c.query_one("SELECT depends_on, continue_on_failure FROM kyu_jobs WHERE seq = $1", &[&parent.seq]).await.db()?;
    let depends_on: Option<Value> = row.try_get(0).db()?;
    let continue_on_failure: bool = row.try_get(1).db()?;
    // FOR SHARE: a child cannot finish between this read and our commit.
    let ids: Vec<&str> = children.iter().map(|c| c.id.as_str()).collect();
    let rows = tx.c.query("SELECT id, seq, state FROM kyu_jobs WHERE id = ANY($1) FOR SHARE", &[&ids]).await.db()?;
    let mut found: HashMap<String, (i64, JobState)> = HashMap::with_capacity(rows.len());
    for r in rows {
        found.insert(r.try_get(0).db()?, (r.try_get(1).db()?, state_of(r.try_get(2).db()?)?));
    }
    let mut seqs = Vec::with_capacity(children.len());
    let mut states: Vec<(&JobId, JobState)> = Vec::with_capacity(children.len());
    for c in &children {
        let &(seq, state) = found.get(c.id.as_str()).ok_or_else(|| StoreError::job_not_found(&c.id))?;
        seqs.push(seq);
        states.push((&c.id, state));
    }
    let plan = plan_children(p.wait, parent.attempt.cancel_requested, continue_on_failure, &states);
    let waiting = match plan {
        ChildrenPlan::Wait(pending) => {
            let pending: Vec<i64> = pending.into_iter().map(|i| seqs[i]).collect();
            link_dependencies(tx, parent.seq, &pending).await?;
            let known: Vec<String> = match depends_on {
                Some(v) => serde_json::from_value(v).map_err(|e| StoreError::Backend(e.into()))?,
                None => Vec::new(),
            };
            let ids = with_children(known, &states.iter().map(|s| s.0).collect::<Vec<_>>());
            // Counts from an earlier wait (it was retried since) are stale.
            tx.c.execute("DELETE FROM kyu_dep_done WHERE job_seq = $1", &[&parent.seq]).await.db()?;
            tx.c.execute(
                "UPDATE kyu_jobs SET state = 'waiting', pending_deps = pending_deps + $2, depends_on = $3::text::jsonb, \
                 attempt = attempt - 1, token = NULL, lease_expires_at = NULL, deadline_at = NULL, \
                 events = kyu_event_push(kyu_event_archive(events, state, started_at, attempt, worker), $4::text, 'waiting', attempt, worker, $5::text) \
                 WHERE seq = $1",
                &[
                    &parent.seq,
                    &(pending.len() as i32),
                    &serde_json::to_string(&ids).expect("ids"),
                    &tx.now_str,
                    &format!("waiting for {} children", pending.len()),
                ],
            )
            .await
            .db()?;
            tx.happened(Happening::Changed {
                id: parent.id.clone(),
                queue: queue_name(&parent.queue),
                kind: parent.kind.clone(),
                state: JobState::Waiting,
                attempt: parent.attempt.attempt - 1,
            });
            true
        }
        other => {
            if let Some(step) = other.ending() {
                let entries = kyu_core::timeline::for_step(&step, None);
                let finished = apply(tx, vec![Ending { held: parent, step, entries, lost: None }]).await?;
                settle_dependents(tx, finished).await?;
            }
            false
        }
    };
    Ok(AddedChildren { children, waiting })
}
