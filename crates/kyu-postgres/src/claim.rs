//! The claim: `FOR UPDATE SKIP LOCKED`, so claimers on any number of nodes
//! take disjoint jobs without waiting for each other.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use kyu_core::claim::{ClaimPlan, QueueLimits, RateWindow, plan_claim};
use kyu_core::tally::Happening;
use kyu_core::transition::deadline;
use kyu_core::{ClaimedJob, JobState, Millis, QueueName, RateLimit, new_token};
use kyu_store::{ClaimResult, JobClaimParams, Report, StoreError};
use serde_json::{Value, json};
use crate::conn::{Conn, Pipelined};

use crate::error::PgResultExt;
use crate::finish::{next_run_at, promote_due, report_many};
use crate::read::{job_id, millis, state_of, ts};
use crate::tx::Tx;

pub(crate) async fn claim<C: Conn>(tx: &Tx<'_, C>, p: JobClaimParams) -> Result<ClaimResult, StoreError> {
    Ok(report_and_claim(tx, Vec::new(), p).await?.1)
}

/// What [`claim_at_once`] found.
pub(crate) enum AtOnce {
    Claimed(ClaimResult),
    /// The queue has limits: nothing was claimed, serve it with [`claim`].
    Limited,
}

/// A claim of one queue that carries no reports, in one round trip: the
/// transaction's BEGIN, the promotion of due jobs, the read of the queue's
/// settings and next scheduled time, the claim of its head (only if it has
/// no limits, [`UNLIMITED`]) and the COMMIT go to the server together, since
/// each statement counts and notifies for itself. An idle worker woken for
/// one job waits for this round trip only (it was two: the commit waited
/// for the claim's answer). A queue with limits is served by [`claim`],
/// whose limits need the queue locked and read first.
///
/// What follows the commit needs the claimed rows: the deadlines of jobs
/// with a time limit (kyu-core's rule), set before the jobs are handed out,
/// fenced by the claim's token; and the results of their dependencies.
pub(crate) async fn claim_at_once(tx: &Tx<'_, Pipelined>, p: &JobClaimParams) -> Result<AtOnce, StoreError> {
    let names = vec![p.queues[0].as_str().to_owned()];
    let token = new_token();
    let lease = tx.now.plus_ms(p.lease_ms);
    let settings = async {
        tx.c.query_opt(
            "SELECT paused, concurrency IS NOT NULL OR rate_max IS NOT NULL OR group_concurrency IS NOT NULL, timeout_ms \
             FROM kyu_queues WHERE name = $1",
            &[&names[0]],
        )
        .await
        .db()
    };
    let commit = async { tx.c.commit_pipelined().await.db() };
    let (_, settings, next, batch, ()) = tokio::try_join!(
        promote_due(tx, Some(&names)),
        settings,
        next_run_at(tx, &names),
        take(tx, &p.queues[0], UNLIMITED, "", None, p.max as i64, &token, &p.worker, lease),
        commit
    )?;
    // The settings were read by an earlier statement than the claim's: a
    // queue created between the two has claimed jobs and no settings read.
    let (paused, limited, timeout): (bool, bool, Option<i64>) = match settings {
        Some(r) => (r.try_get(0).db()?, r.try_get(1).db()?, r.try_get(2).db()?),
        None => (false, false, None),
    };
    if batch.is_empty() && limited && !paused {
        return Ok(AtOnce::Limited);
    }
    let mut jobs = Vec::new();
    start(tx, batch, timeout, true, &mut jobs);
    deadlines(tx, &jobs).await?;
    let jobs = with_dependency_results(tx, jobs).await?;
    let next = if jobs.len() < p.max { next } else { None };
    Ok(AtOnce::Claimed(ClaimResult { jobs, next_run_at: next }))
}

/// Applies `reports`, then claims. The promotion of due scheduled jobs, the
/// read of the queues' limits, the next scheduled time, the reports and the
/// claim of the first queue's head do not wait for each other's answers
/// (only the claim waits for the reports, so that a job they release is
/// claimed by this call), so they go to the server pipelined, with the
/// transaction's BEGIN; its COMMIT goes with the notifications. A claim of
/// a queue without limits is two round trips, three if it carries reports
/// (it was five and six; one for a single queue without reports,
/// [`claim_at_once`]). That first claim is taken
/// only if its queue has no limits and is not paused ([`UNLIMITED`]);
/// otherwise the queue is served after the limits are read, as every other
/// queue is.
pub(crate) async fn report_and_claim<C: Conn>(
    tx: &Tx<'_, C>,
    reports: Vec<Report>,
    p: JobClaimParams,
) -> Result<(Vec<Result<JobState, StoreError>>, ClaimResult), StoreError> {
    let mut names: Vec<String> = Vec::new();
    for q in &p.queues {
        if !names.iter().any(|n| n == q.as_str()) {
            names.push(q.as_str().to_owned());
        }
    }
    let limits = async {
        tx.c.query(
            "SELECT name, paused, concurrency IS NOT NULL OR rate_max IS NOT NULL OR group_concurrency IS NOT NULL, \
               timeout_ms FROM kyu_queues WHERE name = ANY($1)",
            &[&names],
        )
        .await
        .db()
    };
    let token = new_token();
    let lease = tx.now.plus_ms(p.lease_ms);
    let claiming = p.max > 0 && !names.is_empty();
    // The reports go first: a job they release is claimed by this call.
    let reported_then_first = async {
        let reported = if reports.is_empty() { Vec::new() } else { report_many(tx, reports).await? };
        let first = match names.first() {
            Some(name) if claiming => {
                let queue = QueueName::new(name.clone()).map_err(|e| StoreError::Backend(e.into()))?;
                Some(take(tx, &queue, UNLIMITED, "", None, p.max as i64, &token, &p.worker, lease).await?)
            }
            _ => None,
        };
        Ok::<_, StoreError>((reported, first))
    };
    let next = async { if claiming { next_run_at(tx, &names).await } else { Ok(None) } };
    let (_, limits, next, (reported, mut first)) =
        tokio::try_join!(promote_due(tx, Some(&names)), limits, next, reported_then_first)?;
    if !claiming {
        return Ok((reported, ClaimResult::default()));
    }
    let mut known: BTreeMap<String, (bool, bool, Option<i64>)> = BTreeMap::new();
    for r in limits {
        known.insert(r.try_get(0).db()?, (r.try_get(1).db()?, r.try_get(2).db()?, r.try_get(3).db()?));
    }
    let mut jobs: Vec<(ClaimedJob, Option<Value>)> = Vec::new();
    // Queues are served in the order given, as Celery and arq do.
    for name in &names {
        if jobs.len() >= p.max {
            break;
        }
        let early = first.take();
        let Some(&(paused, limited, queue_timeout)) = known.get(name) else { continue };
        // The first queue's head, claimed with the first statements: it
        // stands if it got jobs (the queue had no limits then) or the queue
        // has none now; else the queue is served below, within its limits.
        if let Some(batch) = early
            && (!batch.is_empty() || (!paused && !limited))
        {
            start(tx, batch, queue_timeout, true, &mut jobs);
            continue;
        }
        if paused {
            continue;
        }
        let mut want = (p.max - jobs.len()) as i64;
        let mut plan = None;
        if limited {
            let Some(a) = allowance(tx, name, want as usize).await? else { continue };
            want = a.n as i64;
            plan = Some(a);
        }
        let groups = plan.as_ref().and_then(|a| a.groups.clone());
        let queue = QueueName::new(name.clone()).map_err(|e| StoreError::Backend(e.into()))?;
        let mut batch = Vec::new();
        match &groups {
            None => batch = take(tx, &queue, "TRUE", "", None, want, &token, &p.worker, lease).await?,
            Some((cap, cursor)) => {
                let heads = group_heads(tx, name).await?;
                let running = running_per_group(tx, name).await?;
                let quotas = kyu_core::claim::group_quotas(&heads, cursor.as_deref(), &running, *cap, want as usize);
                let mut last = None;
                for (group, n) in &quotas {
                    let got = take(tx, &queue, "TRUE", "AND group_key = $7", Some(group), *n as i64, &token, &p.worker, lease).await?;
                    if !got.is_empty() {
                        last = Some(group.clone());
                    }
                    batch.extend(got);
                }
                // Jobs without a group are not limited; they fill what is left.
                if (batch.len() as i64) < want {
                    let rest = want - batch.len() as i64;
                    batch.extend(take(tx, &queue, "TRUE", "AND group_key IS NULL", None, rest, &token, &p.worker, lease).await?);
                }
                if let Some(last) = last {
                    tx.c.execute("UPDATE kyu_queues SET group_cursor = $2 WHERE name = $1", &[name, &last]).await.db()?;
                }
            }
        }
        if let Some(w) = plan.as_ref().and_then(|a| a.window_after(batch.len())) {
            tx.c.execute(
                "UPDATE kyu_queues SET rate_window_start = $2, rate_window_count = $3 WHERE name = $1",
                &[name, &ts(w.start), &w.used],
            )
            .await
            .db()?;
        }
        start(tx, batch, queue_timeout, groups.is_none(), &mut jobs);
    }
    deadlines(tx, &jobs).await?;
    let jobs = with_dependency_results(tx, jobs).await?;
    let next = if jobs.len() < p.max { next } else { None };
    Ok((reported, ClaimResult { jobs, next_run_at: next }))
}

/// For [`take`]: claim only while the queue `$1` has no limits and is not
/// paused (evaluated once per statement, not per row).
const UNLIMITED: &str = "EXISTS (SELECT 1 FROM kyu_queues q WHERE q.name = $1 AND NOT q.paused \
    AND q.concurrency IS NULL AND q.rate_max IS NULL AND q.group_concurrency IS NULL)";

/// Records the start of a queue's claimed jobs and adds them to `jobs`, in
/// claim order unless `sort` is false (across groups the round-robin order
/// is the point). The queue's default time limit applies to jobs without
/// their own.
fn start<C: Conn>(tx: &Tx<'_, C>, mut batch: Vec<Row>, queue_timeout: Option<i64>, sort: bool, jobs: &mut Vec<(ClaimedJob, Option<Value>)>) {
    // RETURNING does not promise the subquery's order; restore it.
    if sort {
        batch.sort_by_key(|a| a.0);
    }
    for ((_, ready_at, _), mut job, deps) in batch {
        tx.happened(Happening::Started {
            id: job.id.clone(),
            queue: job.queue.clone(),
            kind: job.kind.clone(),
            attempt: job.attempt,
            wait_ms: (tx.now.0 - millis(ready_at).0).max(0),
        });
        job.timeout_ms = job.timeout_ms.or(queue_timeout);
        jobs.push((job, deps));
    }
}

/// The store takes a job with a time limit back at its deadline, whatever
/// its heartbeats: set it for the claimed jobs that have one.
async fn deadlines<C: Conn>(tx: &Tx<'_, C>, jobs: &[(ClaimedJob, Option<Value>)]) -> Result<(), StoreError> {
    let (mut ids, mut at) = (Vec::new(), Vec::new());
    let Some(token) = jobs.first().map(|(j, _)| j.token.as_str()) else { return Ok(()) };
    for (job, _) in jobs {
        if let Some(d) = deadline(tx.now, job.timeout_ms, tx.settings.timeout_grace_ms) {
            ids.push(job.id.as_str());
            at.push(ts(d));
        }
    }
    if !ids.is_empty() {
        tx.c.execute(
            "UPDATE kyu_jobs j SET deadline_at = x.at FROM unnest($1::text[], $2::timestamptz[]) AS x(id, at) \
             WHERE j.id = x.id AND j.token = $3",
            &[&ids, &at, &token],
        )
        .await
        .db()?;
    }
    Ok(())
}

/// Fills in what each claimed job's dependencies left: one query for the
/// whole claim, whatever the number of jobs and dependencies.
async fn with_dependency_results<C: Conn>(
    tx: &Tx<'_, C>,
    jobs: Vec<(ClaimedJob, Option<Value>)>,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let mut wanted: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, (_, deps)) in jobs.iter().enumerate() {
        if let Some(deps) = deps {
            let ids: Vec<String> = serde_json::from_value(deps.clone()).map_err(|e| StoreError::Backend(e.into()))?;
            wanted.push((i, ids));
        }
    }
    let mut jobs: Vec<ClaimedJob> = jobs.into_iter().map(|(j, _)| j).collect();
    if wanted.is_empty() {
        return Ok(jobs);
    }
    let all: Vec<&str> = wanted.iter().flat_map(|(_, ids)| ids.iter().map(String::as_str)).collect();
    let rows = tx
        .c
        .query("SELECT id, state, result, errors -> -1 ->> 'message' FROM kyu_jobs WHERE id = ANY($1)", &[&all])
        .await
        .db()?;
    let mut left: HashMap<String, Value> = HashMap::with_capacity(rows.len());
    for r in rows {
        let state = state_of(r.try_get(1).db()?)?;
        let v = match state {
            JobState::Completed => r.try_get::<_, Option<Value>>(2).db()?.unwrap_or(Value::Null),
            _ => json!({"state": state, "error": r.try_get::<_, Option<String>>(3).db()?}),
        };
        left.insert(r.try_get(0).db()?, v);
    }
    for (i, ids) in wanted {
        jobs[i].dependency_results = ids.into_iter().filter_map(|id| left.get(&id).cloned().map(|v| (id, v))).collect();
    }
    Ok(jobs)
}

/// For a queue with limits: what it may hand out now ([`plan_claim`]). The
/// queue row is locked until commit, so concurrent claimers on any node take
/// turns and the limits hold across all of them; queues without limits
/// never take this lock.
async fn allowance<C: Conn>(tx: &Tx<'_, C>, name: &str, want: usize) -> Result<Option<ClaimPlan>, StoreError> {
    let r = tx
        .c
        .query_one(
            "SELECT paused, concurrency, rate_max, rate_per_ms, rate_window_start, rate_window_count, group_concurrency, \
               group_cursor FROM kyu_queues WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await
        .db()?;
    let rate = match (r.try_get::<_, Option<i64>>(2).db()?, r.try_get::<_, Option<i64>>(3).db()?) {
        (Some(max), Some(per_ms)) => Some(RateLimit { max, per_ms }),
        _ => None,
    };
    let used: i64 = r.try_get(5).db()?;
    let limits = QueueLimits {
        paused: r.try_get(0).db()?,
        concurrency: r.try_get::<_, Option<i32>>(1).db()?.map(i64::from),
        rate,
        window: r.try_get::<_, Option<SystemTime>>(4).db()?.map(|t| RateWindow { start: millis(t), used }),
        group_concurrency: r.try_get::<_, Option<i32>>(6).db()?.map(i64::from),
        group_cursor: r.try_get(7).db()?,
    };
    let running: i64 = match limits.concurrency {
        Some(_) => tx
            .c
            .query_one(&format!("SELECT count(*) FROM kyu_jobs j WHERE {RUNNING_OF_QUEUE} AND j.state = 'running'"), &[&name])
            .await
            .db()?
            .get(0),
        None => 0,
    };
    Ok(plan_claim(tx.now, want, &limits, running))
}

/// For a query over `kyu_jobs j`: the jobs of queue `$1` claimed and maybe
/// still running (migration 15); `j.state = 'running'` says which are.
const RUNNING_OF_QUEUE: &str = concat!("j.seq IN (", crate::read::claimed!(), " WHERE queue = $1)");

type Row = ((i32, SystemTime, i64), ClaimedJob, Option<Value>);

/// Claims up to `n` of `queue`'s head (narrowed by `filter`, which may use
/// `$7` for `group`), `SKIP LOCKED`, under one token and lease; nothing
/// unless `guard` (a condition on the queue) holds. The statement counts
/// its claim itself (queued -1, running +1 in `kyu_queue_count_deltas`; see
/// migration 8), so nothing after it needs its answer before the commit.
#[allow(clippy::too_many_arguments)]
async fn take<C: Conn>(
    tx: &Tx<'_, C>,
    queue: &QueueName,
    guard: &str,
    filter: &str,
    group: Option<&str>,
    n: i64,
    token: &str,
    worker: &str,
    lease: Millis,
) -> Result<Vec<Row>, StoreError> {
    if n <= 0 {
        return Ok(Vec::new());
    }
    // Ready rows first, then the jobs' rows, both SKIP LOCKED: every other
    // writer locks a job's row before its narrow rows (migration 14), and
    // the claim, never waiting, cannot close a cycle with them. A job whose
    // row someone holds keeps its ready row for the next claim.
    // The scan starts at the queue's head as last seen (migration 16,
    // `head.rs`): its priority from the head's key on, then the lower
    // priorities; then what came before the head unseen, if the claim is
    // not full yet. The outer LIMIT stops each scan once the claim is full.
    let sql = format!(
        "WITH head AS MATERIALIZED ( \
           SELECT coalesce(h.priority, 2147483647) AS priority, coalesce(h.run_at, '-infinity') AS run_at, coalesce(h.seq, 0) AS seq \
           FROM (VALUES (1)) AS one LEFT JOIN kyu_ready_head h ON h.queue = $1 WHERE {guard}), \
         candidates AS MATERIALIZED (SELECT rid, seq FROM ( \
           SELECT * FROM (SELECT ctid AS rid, seq FROM kyu_ready WHERE queue = $1 {filter} \
             AND priority = (SELECT priority FROM head) AND (run_at, seq) >= ((SELECT run_at FROM head), (SELECT seq FROM head)) \
             ORDER BY priority DESC, run_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED) from_head \
           UNION ALL \
           SELECT * FROM (SELECT ctid AS rid, seq FROM kyu_ready WHERE queue = $1 {filter} \
             AND priority < (SELECT priority FROM head) \
             ORDER BY priority DESC, run_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED) lower \
           UNION ALL \
           SELECT * FROM (SELECT ctid AS rid, seq FROM kyu_ready WHERE queue = $1 {filter} \
             AND priority > (SELECT priority FROM head) \
             ORDER BY priority DESC, run_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED) higher_unseen \
           UNION ALL \
           SELECT * FROM (SELECT ctid AS rid, seq FROM kyu_ready WHERE queue = $1 {filter} \
             AND priority = (SELECT priority FROM head) AND (run_at, seq) < ((SELECT run_at FROM head), (SELECT seq FROM head)) \
             ORDER BY priority DESC, run_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED) earlier_unseen \
         ) c LIMIT $2), \
         picked AS ( \
           SELECT j.seq, c.rid FROM kyu_jobs j JOIN candidates c ON j.seq = c.seq WHERE j.state = 'queued' \
           FOR UPDATE OF j SKIP LOCKED), \
         taken AS (DELETE FROM kyu_ready WHERE ctid = ANY(ARRAY(SELECT rid FROM picked))), \
         claimed AS ( \
           UPDATE kyu_jobs j SET state = 'running', attempt = j.attempt + 1, token = $3, worker = $4, \
             started_at = $5, lease_expires_at = $6 \
           FROM picked WHERE j.seq = picked.seq \
           RETURNING j.id, j.kind, j.payload, j.checkpoint, j.attempt, j.max_attempts, j.timeout_ms, \
             j.depends_on, j.priority, j.run_at, j.seq), \
         running AS (INSERT INTO kyu_claims (token, queue, seqs) SELECT $3, $1, array_agg(seq) FROM claimed HAVING count(*) > 0), \
         counted AS (INSERT INTO kyu_queue_count_deltas (queue, state, n) \
           SELECT $1, s.state, s.sign * c.n FROM (SELECT count(*) AS n FROM claimed) AS c \
           CROSS JOIN (VALUES ('queued', -1), ('running', 1)) AS s(state, sign) WHERE c.n > 0) \
         SELECT id, kind, payload, checkpoint, attempt, max_attempts, timeout_ms, depends_on, priority, run_at, seq \
         FROM claimed"
    );
    let lease_ts = ts(lease);
    let rows = match group {
        Some(g) => tx.c.query(&sql, &[&queue.as_str(), &n, &token, &worker, &tx.now_ts, &lease_ts, &g]).await,
        None => tx.c.query(&sql, &[&queue.as_str(), &n, &token, &worker, &tx.now_ts, &lease_ts]).await,
    }
    .db()?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let deps: Option<Value> = r.try_get(7).db()?;
        let order = (-(r.try_get::<_, i32>(8).db()?), r.try_get::<_, SystemTime>(9).db()?, r.try_get::<_, i64>(10).db()?);
        let job = ClaimedJob {
            id: job_id(r.try_get(0).db()?)?,
            queue: queue.clone(),
            kind: r.try_get(1).db()?,
            payload: r.try_get(2).db()?,
            checkpoint: r.try_get(3).db()?,
            attempt: r.try_get(4).db()?,
            max_attempts: r.try_get(5).db()?,
            timeout_ms: r.try_get(6).db()?,
            token: token.to_owned(),
            lease_expires_at: lease,
            dependency_results: BTreeMap::new(),
        };
        out.push((order, job, deps));
    }
    Ok(out)
}

/// The groups with queued jobs on `queue`, ascending: a loose index scan,
/// one index seek per group. At most 1,000 groups per claim.
async fn group_heads<C: Conn>(tx: &Tx<'_, C>, queue: &str) -> Result<Vec<String>, StoreError> {
    let rows = tx
        .c
        .query(
            "WITH RECURSIVE g(k) AS ( \
               SELECT (SELECT min(group_key) FROM kyu_ready WHERE queue = $1 AND group_key IS NOT NULL) \
               UNION ALL \
               SELECT (SELECT min(group_key) FROM kyu_ready WHERE queue = $1 AND group_key > g.k) \
               FROM g WHERE g.k IS NOT NULL) \
             SELECT k FROM g WHERE k IS NOT NULL LIMIT 1000",
            &[&queue],
        )
        .await
        .db()?;
    rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().db()
}

async fn running_per_group<C: Conn>(tx: &Tx<'_, C>, queue: &str) -> Result<std::collections::HashMap<String, i64>, StoreError> {
    let rows = tx
        .c
        .query(
            &format!(
                "SELECT j.group_key, count(*) FROM kyu_jobs j WHERE {RUNNING_OF_QUEUE} AND j.state = 'running' \
                 AND j.group_key IS NOT NULL GROUP BY j.group_key"
            ),
            &[&queue],
        )
        .await
        .db()?;
    rows.iter().map(|r| Ok((r.try_get(0).db()?, r.try_get(1).db()?))).collect()
}
