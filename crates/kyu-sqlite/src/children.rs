//! Children added by a running job (BullMQ's `moveToWaitingChildren`); what
//! that does to the parent is kyu-core's [`plan_children`].

use kyu_core::JobState;
use kyu_core::dependency::{ChildrenPlan, plan_children, with_children};
use kyu_store::{AddedChildren, JobAddChildrenParams, StoreError};
use rusqlite::params;

use crate::error::SqlResultExt;
use crate::finish::{apply, held, queue_name};
use kyu_core::tally::Happening;
use crate::insert::{insert_many, link_dependencies};
use crate::read::{Json, State};
use crate::writer::Tx;

pub(crate) fn add_children(tx: &mut Tx<'_>, p: JobAddChildrenParams) -> Result<AddedChildren, StoreError> {
    let parent = held(tx, &p.id, &p.token)?;
    let children = insert_many(tx, p.jobs)?;
    let (depends_on, continue_on_failure): (Option<Json<Vec<String>>>, bool) = tx
        .conn
        .prepare_cached("SELECT depends_on, continue_on_failure FROM kyu_jobs WHERE seq = ?1")
        .db()?
        .query_row([parent.seq], |r| Ok((r.get(0)?, r.get(1)?)))
        .db()?;
    let mut seqs = Vec::with_capacity(children.len());
    let mut states = Vec::with_capacity(children.len());
    for c in &children {
        let (seq, state): (i64, JobState) = tx
            .conn
            .prepare_cached("SELECT seq, state FROM kyu_jobs WHERE id = ?1")
            .db()?
            .query_row([c.id.as_str()], |r| Ok((r.get(0)?, r.get::<_, State>(1)?.0)))
            .db()?;
        seqs.push(seq);
        states.push((&c.id, state));
    }
    let plan = plan_children(p.wait, parent.attempt.cancel_requested, continue_on_failure, &states);
    let waiting = match plan {
        ChildrenPlan::Wait(pending) => {
            let pending: Vec<i64> = pending.into_iter().map(|i| seqs[i]).collect();
            link_dependencies(tx, parent.seq, &pending)?;
            let ids = with_children(depends_on.map(|j| j.0).unwrap_or_default(), &states.iter().map(|s| s.0).collect::<Vec<_>>());
            tx.conn
                .prepare_cached(
                    "UPDATE kyu_jobs SET state = 'waiting', pending_deps = pending_deps + ?2, depends_on = ?3, \
                     attempt = attempt - 1, token = NULL, lease_expires_at = NULL, deadline_at = NULL, \
                     events = kyu_event_push(kyu_event_archive(events, state, started_at, attempt, worker), ?4, 'waiting', attempt, worker, ?5) \
                     WHERE seq = ?1",
                )
                .db()?
                .execute(params![
                    parent.seq,
                    pending.len() as i64,
                    serde_json::to_string(&ids).expect("ids"),
                    tx.now_str,
                    format!("waiting for {} children", pending.len())
                ])
                .db()?;
            tx.counted.moved(&parent.queue, Some(JobState::Running), JobState::Waiting, 1);
            tx.tally.add(Happening::Changed {
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
                apply(tx, &parent, step, &entries, None)?;
            }
            false
        }
    };
    Ok(AddedChildren { children, waiting })
}
