//! What a finished job means for the jobs waiting on it (schema version 11).
//!
//! A waiting job's count of pending dependencies is `pending_deps` minus the
//! rows of `kyu_dep_done` naming it. The store's own transactions append
//! those rows under a KEY SHARE lock on the waiting job, which concurrent
//! appenders share, so completions of one parent's children never wait for
//! each other. Changing a waiting job's state (releasing it, failing it)
//! takes it FOR UPDATE, which waits for the appenders in flight, and then
//! reads its count afresh, so it is released exactly once. Appenders in
//! flight at once cannot see each other's rows, so one that leaves a count
//! above zero, as far as it sees, checks again after its commit
//! ([`due_for_release`]): the last to commit finds it at zero. A caller's
//! transaction, whose commit kyu does not see, takes the lock instead. Each
//! decision is kyu-core's ([`satisfied`], [`settle`]).

use std::collections::HashMap;

use kyu_core::dependency::{Settled, satisfied, settle};
use kyu_core::tally::Happening;
use kyu_core::timeline::{Entry, EventType};
use kyu_core::transition::wakes_workers;
use kyu_core::{JobId, JobState};
use kyu_store::{StoreError, StoreEvent};

use crate::conn::Conn;
use crate::error::PgResultExt;
use crate::finish::{End, Finished, finish_many, queue_name};
use crate::read::{PENDING, job_id, millis};
use crate::tx::Tx;

/// Finished dependencies of one waiting job, by its seq.
type Unrecorded = HashMap<i64, Vec<(JobId, JobState)>>;

/// Jobs that reached a terminal state: their waiting dependents count them,
/// are released when none is left pending, or fail naming a broken one, and
/// their own dependents learn of that in turn.
pub(crate) async fn settle_dependents<C: Conn>(tx: &Tx<'_, C>, mut finished: Vec<Finished>) -> Result<(), StoreError> {
    while !finished.is_empty() {
        let by_seq: HashMap<i64, (JobId, JobState)> = finished.drain(..).map(|f| (f.seq, (f.id, f.state))).collect();
        let seqs: Vec<i64> = by_seq.keys().copied().collect();
        // Driven from kyu_job_deps, each waiting job looked up by its key
        // (in seq order, so locks are taken in the order settle_locked takes
        // them): with `j.state = 'waiting'` in a join, the planner may scan a
        // whole partial index of waiting jobs instead (measured: 3.7 ms per
        // batch in W5 on a table whose statistics lagged its growth).
        let lock = if tx.own { "FOR KEY SHARE" } else { "" };
        let rows = tx
            .c
            .query(
                &format!(
                    "SELECT d.job_seq, d.deps, j.pending, j.continue_on_failure \
                     FROM (SELECT job_seq, array_agg(dep_seq) AS deps FROM kyu_job_deps WHERE dep_seq = ANY($1) \
                           GROUP BY job_seq ORDER BY job_seq OFFSET 0) AS d \
                     CROSS JOIN LATERAL (SELECT {PENDING} AS pending, j.continue_on_failure FROM kyu_jobs j \
                                         WHERE j.seq = d.job_seq AND j.state = 'waiting' {lock}) AS j"
                ),
                &[&seqs],
            )
            .await
            .db()?;
        let (mut locked, mut unrecorded) = (Vec::new(), Unrecorded::new());
        let (mut record_seq, mut record_n) = (Vec::new(), Vec::new());
        for r in &rows {
            // A waiting job, its pending count as seen now, whether it goes
            // on when a dependency fails, and which of `finished` it waits for.
            let seq: i64 = r.try_get(0).db()?;
            let dep_seqs: Vec<i64> = r.try_get(1).db()?;
            let pending = i64::from(r.try_get::<_, i32>(2).db()?);
            let continue_on_failure: bool = r.try_get(3).db()?;
            let deps: Vec<(JobId, JobState)> = dep_seqs.iter().map(|d| by_seq[d].clone()).collect();
            let refs: Vec<(&JobId, JobState)> = deps.iter().map(|(id, s)| (id, *s)).collect();
            match satisfied(continue_on_failure, &refs).filter(|_| tx.own) {
                Some(n) => {
                    record_seq.push(seq);
                    record_n.push(n as i32);
                    if pending - n <= 0 {
                        locked.push(seq);
                    } else {
                        tx.recheck_after_commit(seq);
                    }
                }
                None => {
                    locked.push(seq);
                    unrecorded.insert(seq, deps);
                }
            }
        }
        if !record_seq.is_empty() {
            tx.c.execute(
                "INSERT INTO kyu_dep_done (job_seq, n) SELECT * FROM unnest($1::int8[], $2::int4[])",
                &[&record_seq, &record_n],
            )
            .await
            .db()?;
        }
        finished = settle_locked(tx, &locked, &unrecorded, false).await?;
    }
    Ok(())
}

/// Locks waiting jobs (all, or those nobody holds with `skip_locked`),
/// reads their pending counts afresh and settles each with the finished
/// dependencies its count does not hold yet: released at zero, failed by a
/// broken one, its count folded into `pending_deps` otherwise. Returns
/// those that failed, for their own dependents.
async fn settle_locked<C: Conn>(
    tx: &Tx<'_, C>,
    seqs: &[i64],
    unrecorded: &Unrecorded,
    skip_locked: bool,
) -> Result<Vec<Finished>, StoreError> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let skip = if skip_locked { " SKIP LOCKED" } else { "" };
    let locked: Vec<i64> = tx
        .c
        .query(&format!("SELECT seq FROM kyu_jobs WHERE seq = ANY($1) ORDER BY seq FOR UPDATE{skip}"), &[&seqs])
        .await
        .db()?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .db()?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    // A statement of its own, after the lock: it sees what the appenders
    // the lock waited for committed. Looked up by key; jobs no longer
    // waiting are left as they are.
    let rows = tx
        .c
        .query(
            &format!(
                "SELECT j.seq, j.id, j.queue, j.run_at, {PENDING}, j.continue_on_failure, j.keep_failed_ms, j.kind, j.attempt, \
                   j.state = 'waiting' FROM kyu_jobs j WHERE j.seq = ANY($1)"
            ),
            &[&locked],
        )
        .await
        .db()?;
    let (mut seqs, mut left, mut states, mut ready) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ends, mut failed) = (Vec::new(), Vec::new());
    for r in rows {
        if !r.try_get::<_, bool>(9).db()? {
            continue;
        }
        let seq: i64 = r.try_get(0).db()?;
        let id = job_id(r.try_get(1).db()?)?;
        let queue: String = r.try_get(2).db()?;
        let kind: String = r.try_get(7).db()?;
        let attempt: i32 = r.try_get(8).db()?;
        let deps: Vec<(&JobId, JobState)> =
            unrecorded.get(&seq).map(|d| d.iter().map(|(id, s)| (id, *s)).collect()).unwrap_or_default();
        let changed = |state| Happening::Changed { id: id.clone(), queue: queue_name(&queue), kind: kind.clone(), state, attempt };
        let pending = i64::from(r.try_get::<_, i32>(4).db()?);
        match settle(tx.now, millis(r.try_get(3).db()?), pending, r.try_get(5).db()?, &deps) {
            Settled::Fail { error, .. } => {
                tx.happened(changed(JobState::Failed));
                let entries = vec![Entry::with(EventType::Failed, error.clone())];
                let keep_failed_ms = r.try_get(6).db()?;
                ends.push(End { seq, state: JobState::Failed, error: Some(error), keep_failed_ms, entries });
                failed.push(Finished { seq, id, state: JobState::Failed });
            }
            Settled::Count { pending, state } => {
                if wakes_workers(state) {
                    tx.event(StoreEvent::JobsAvailable(queue_name(&queue)));
                }
                let is_ready = state != JobState::Waiting;
                if is_ready {
                    tx.happened(changed(state));
                }
                ready.push(is_ready.then(|| EventType::Ready.as_str()));
                seqs.push(seq);
                left.push(pending as i32);
                states.push(state.as_str());
            }
        }
    }
    if !seqs.is_empty() {
        tx.c.execute(
            "UPDATE kyu_jobs j SET pending_deps = x.remaining, state = x.state, \
               events = kyu_event_push(j.events, $4::text, x.ready, NULL, NULL, NULL) \
             FROM unnest($1::int8[], $2::int4[], $3::text[], $5::text[]) AS x(seq, remaining, state, ready) \
             WHERE j.seq = x.seq",
            &[&seqs, &left, &states, &tx.now_str, &ready],
        )
        .await
        .db()?;
    }
    // Counted into pending_deps above, or of jobs no longer waiting.
    tx.c.execute("DELETE FROM kyu_dep_done WHERE job_seq = ANY($1)", &[&locked]).await.db()?;
    finish_many(tx, ends).await?;
    Ok(failed)
}

/// Of waiting jobs whose dependencies a committed transaction counted,
/// those whose count it may have left at zero. Outside any transaction,
/// after that commit.
pub(crate) async fn due_for_release<C: Conn>(c: &C, seqs: &[i64]) -> Result<Vec<i64>, StoreError> {
    let rows = c
        .query(&format!("SELECT j.seq, j.state = 'waiting' AND {PENDING} = 0 FROM kyu_jobs j WHERE j.seq = ANY($1)"), &[&seqs])
        .await
        .db()?;
    let mut due = Vec::new();
    for r in rows {
        if r.try_get::<_, bool>(1).db()? {
            due.push(r.try_get(0).db()?);
        }
    }
    Ok(due)
}

/// Settles waiting jobs found by [`due_for_release`] (or by maintenance),
/// and the dependents of those that fail.
pub(crate) async fn settle_counted<C: Conn>(tx: &Tx<'_, C>, seqs: &[i64], skip_locked: bool) -> Result<(), StoreError> {
    let failed = settle_locked(tx, seqs, &Unrecorded::new(), skip_locked).await?;
    settle_dependents(tx, failed).await
}

/// Past this many rows in `kyu_dep_done`, maintenance folds a waiting
/// job's counts into its row, so reading its count stays short.
const FOLD_AT: i64 = 100;

/// Maintenance (every node's rescue tick): settles waiting jobs whose count
/// reached zero with no commit checking it (a node stopped between its
/// commit and the check), folds the counts of jobs with [`FOLD_AT`] rows,
/// and clears the counts of jobs no longer waiting. Jobs with a few rows
/// and dependencies still pending are left alone, so ticks write nothing
/// while fan-ins run. Skips jobs someone holds; a bounded batch per tick.
pub(crate) async fn sweep<C: Conn>(tx: &Tx<'_, C>) -> Result<(), StoreError> {
    let rows = tx
        .c
        .query(
            &format!(
                "SELECT x.job_seq, coalesce(j.state = 'waiting', false) \
                 FROM (SELECT job_seq, sum(n) AS done, count(*) AS rows FROM kyu_dep_done GROUP BY job_seq LIMIT {}) AS x \
                 LEFT JOIN kyu_jobs j ON j.seq = x.job_seq \
                 WHERE j.seq IS NULL OR j.state <> 'waiting' OR j.pending_deps <= x.done OR x.rows >= {FOLD_AT}",
                kyu_core::transition::MAINTENANCE_BATCH
            ),
            &[],
        )
        .await
        .db()?;
    let (mut waiting, mut gone) = (Vec::new(), Vec::new());
    for r in rows {
        let seq: i64 = r.try_get(0).db()?;
        if r.try_get(1).db()? { waiting.push(seq) } else { gone.push(seq) }
    }
    settle_counted(tx, &waiting, true).await?;
    if !gone.is_empty() {
        tx.c.execute(
            "DELETE FROM kyu_dep_done x WHERE x.job_seq = ANY($1) \
               AND NOT EXISTS (SELECT 1 FROM kyu_jobs j WHERE j.seq = x.job_seq AND j.state = 'waiting')",
            &[&gone],
        )
        .await
        .db()?;
    }
    Ok(())
}
