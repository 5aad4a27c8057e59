//! Enqueue. The common case (no unique key, no dependencies) is one
//! statement: an insert of the whole batch (`unnest` over its columns, or
//! one job's values) that also creates new queues and sends the NOTIFY, so
//! a single enqueue is one round trip.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use kyu_core::dependency::plan_insert;
use kyu_core::tally::Happening;
use kyu_core::timeline::at_insert;
use kyu_core::transition::runnable_state;
use kyu_core::{JobId, JobState, NewJob};
use kyu_store::{Inserted, StoreError, StoreEvent};
use crate::conn::Conn;

use crate::error::PgResultExt;
use crate::read::{job_id, state_of, ts};
use crate::tx::Tx;
use tokio_postgres::types::ToSql;

/// Column arrays for the `unnest` insert.
#[derive(Default)]
struct Rows {
    id: Vec<String>,
    queue: Vec<String>,
    kind: Vec<String>,
    payload: Vec<String>,
    state: Vec<String>,
    priority: Vec<i32>,
    run_at: Vec<SystemTime>,
    max_attempts: Vec<i32>,
    backoff: Vec<Option<String>>,
    timeout_ms: Vec<Option<i64>>,
    unique_key: Vec<Option<String>>,
    unique_for_ms: Vec<Option<i64>>,
    unique_until: Vec<Option<SystemTime>>,
    depends_on: Vec<Option<String>>,
    pending: Vec<i32>,
    continue_on_failure: Vec<bool>,
    keep_result_ms: Vec<Option<i64>>,
    keep_failed_ms: Vec<Option<i64>>,
    errors: Vec<String>,
    tags: Vec<Option<String>>,
    group: Vec<Option<String>>,
    finished_at: Vec<Option<SystemTime>>,
    expires_at: Vec<Option<SystemTime>>,
    events: Vec<Option<String>>,
}

impl Rows {
    fn push(
        &mut self,
        job: &NewJob,
        state: JobState,
        pending: i32,
        error: Option<&kyu_core::ErrorEntry>,
        now: kyu_core::Millis,
        expiry: Option<SystemTime>,
    ) {
        let errors = match error {
            Some(entry) => to_json(&[entry]),
            None => "[]".to_owned(),
        };
        self.events.push(at_insert(now, state, job.run_at, i64::from(pending), error.map(|e| e.message.as_str())));
        self.id.push(job.id.to_string());
        self.queue.push(job.queue.to_string());
        self.kind.push(job.kind.clone());
        self.payload.push(job.payload.clone());
        self.state.push(state.as_str().to_owned());
        self.priority.push(job.priority);
        self.run_at.push(ts(job.run_at));
        self.max_attempts.push(job.max_attempts);
        self.backoff.push(crate::read::backoff_to_store(&job.backoff));
        self.timeout_ms.push(job.timeout_ms);
        self.unique_key.push(job.unique_key.clone());
        self.unique_for_ms.push(job.unique_for_ms);
        self.unique_until.push(job.unique_for_ms.map(|ms| ts(now.plus_ms(ms))));
        self.depends_on.push((!job.depends_on.is_empty()).then(|| to_json(&job.depends_on)));
        self.pending.push(pending);
        self.continue_on_failure.push(job.continue_on_failure);
        self.keep_result_ms.push(job.keep_result_ms);
        self.keep_failed_ms.push(job.keep_failed_ms);
        self.errors.push(errors);
        self.tags.push((!job.tags.is_empty()).then(|| to_json(&job.tags)));
        self.group.push(job.group.clone());
        self.finished_at.push(expiry.map(|_| ts(now)));
        self.expires_at.push(expiry);
    }
}

fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("kyu types serialise")
}

/// Inserts the rows, creating their queues and notifying waiters, in one
/// statement. Returns `(id, seq)` of each row actually inserted.
async fn insert_rows<C: Conn>(tx: &Tx<'_, C>, r: &Rows) -> Result<Vec<(String, i64)>, StoreError> {
    // The rows' columns in parameter order: whole arrays for `unnest`, or
    // the one row's values.
    macro_rules! columns {
        ($($i:tt)?) => {
            [
                &r.id$([$i])? as &(dyn ToSql + Sync), &r.queue$([$i])?, &r.kind$([$i])?, &r.payload$([$i])?,
                &r.state$([$i])?, &r.priority$([$i])?, &r.run_at$([$i])?, &r.max_attempts$([$i])?,
                &r.backoff$([$i])?, &r.timeout_ms$([$i])?, &r.unique_key$([$i])?, &r.unique_for_ms$([$i])?,
                &r.unique_until$([$i])?, &r.depends_on$([$i])?, &r.pending$([$i])?,
                &r.continue_on_failure$([$i])?, &r.keep_result_ms$([$i])?, &r.errors$([$i])?, &r.tags$([$i])?,
                &r.group$([$i])?, &r.finished_at$([$i])?, &r.expires_at$([$i])?, &tx.now_ts, &tx.settings.channel,
                &r.keep_failed_ms$([$i])?, &r.events$([$i])?,
            ]
        };
    }
    let parts = Parts::of(r);
    let rows = if parts.one {
        tx.c.query(insert_sql(parts), &columns!(0)).await
    } else {
        tx.c.query(insert_sql(parts), &columns!()).await
    }
    .db()?;
    rows.iter().map(|row| Ok((row.try_get(0).db()?, row.try_get(1).db()?))).collect()
}

/// Which of the insert's narrow tables a batch writes. Each part the batch
/// does not need is left out of the statement: PostgreSQL sets up every
/// node of a plan at each execution, even one that writes no row, and a
/// single enqueue is mostly that setup (W2, docs/benchmarks.md).
#[derive(Clone, Copy)]
struct Parts {
    /// A single row: its values as parameters, not arrays to `unnest`
    /// (which sets up a function scan per column).
    one: bool,
    /// A queued job: its ready row, and maybe the queue's head moved back.
    ready: bool,
    /// A scheduled, waiting or finished job: its parked row.
    parked: bool,
    /// A job finished at insert: its expiry row.
    kept: bool,
}

impl Parts {
    fn of(r: &Rows) -> Parts {
        Parts {
            one: r.id.len() == 1,
            ready: r.state.iter().any(|s| s == "queued"),
            parked: r.state.iter().any(|s| s != "queued"),
            kept: r.expires_at.iter().any(Option::is_some),
        }
    }

    fn index(self) -> usize {
        usize::from(self.one) | usize::from(self.ready) << 1 | usize::from(self.parked) << 2 | usize::from(self.kept) << 3
    }

    fn from_index(i: usize) -> Parts {
        Parts { one: i & 1 != 0, ready: i & 2 != 0, parked: i & 4 != 0, kept: i & 8 != 0 }
    }
}

/// The insert statement for `parts`, built once per combination (so each
/// is one prepared statement per connection).
fn insert_sql(parts: Parts) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| (0..16).map(|i| build_insert_sql(Parts::from_index(i))).collect());
    &all[parts.index()]
}

fn build_insert_sql(parts: Parts) -> String {
    // Parameter number and type of each input column ($23 and $24 are the
    // time and the channel).
    const INPUT: [(u8, &str); 24] = [
        (1, "text"), (2, "text"), (3, "text"), (4, "text"), (5, "text"), (6, "int4"), (7, "timestamptz"), (8, "int4"),
        (9, "text"), (10, "int8"), (11, "text"), (12, "int8"), (13, "timestamptz"), (14, "text"), (15, "int4"),
        (16, "bool"), (17, "int8"), (18, "text"), (19, "text"), (20, "text"), (21, "timestamptz"), (22, "timestamptz"),
        (25, "int8"), (26, "text"),
    ];
    let suffix = if parts.one { "" } else { "[]" };
    let values: Vec<String> = INPUT.iter().map(|(n, t)| format!("${n}::{t}{suffix}")).collect();
    let source = match parts.one {
        true => format!("(VALUES ({}))", values.join(", ")),
        false => format!("unnest({})", values.join(", ")),
    };
    let mut sql = format!(
        "WITH input AS ( \
           SELECT * FROM {source} \
           AS t(id, queue, kind, payload, state, priority, run_at, max_attempts, backoff, timeout_ms, unique_key, \
             unique_for_ms, unique_until, depends_on, pending, continue_on_failure, keep_result_ms, errors, tags, \
             group_key, finished_at, expires_at, keep_failed_ms, events) \
         ), queues AS ( \
           INSERT INTO kyu_queues (name, created_at) SELECT DISTINCT queue, $23::timestamptz FROM input \
           ON CONFLICT (name) DO NOTHING \
         ), inserted AS ( \
           INSERT INTO kyu_jobs (id, queue, kind, payload, state, priority, run_at, max_attempts, backoff, timeout_ms, \
             unique_key, unique_for_ms, unique_until, depends_on, pending_deps, continue_on_failure, keep_result_ms, \
             errors, tags, group_key, created_at, finished_at, expires_at, keep_failed_ms, events) \
           SELECT id, queue, kind, payload::jsonb, state, priority, run_at, max_attempts, backoff::jsonb, timeout_ms, \
             unique_key, unique_for_ms, unique_until, depends_on::jsonb, pending, continue_on_failure, keep_result_ms, \
             errors::jsonb, tags::jsonb, group_key, $23::timestamptz, finished_at, expires_at, keep_failed_ms, \
             coalesce(events::jsonb, '[]'::jsonb) \
           FROM input \
           ON CONFLICT (id) DO NOTHING \
           RETURNING id, seq, queue, state, priority, run_at, group_key, expires_at)"
    );
    if parts.ready {
        // Each job's narrow row (migration 14: kyu_place's rule, set-wise);
        // a queue's first new job ahead of its head moves it back
        // (migration 16: kyu_place's rule, set-wise).
        sql.push_str(
            ", ready AS ( \
               INSERT INTO kyu_ready (seq, queue, priority, run_at, group_key) \
               SELECT seq, queue, priority, run_at, group_key FROM inserted WHERE state = 'queued' \
             ), ahead AS ( \
               SELECT kyu_head_back(k.queue, k.priority, k.run_at, k.seq) FROM ( \
                 SELECT DISTINCT ON (i.queue) i.queue, i.priority, i.run_at, i.seq \
                 FROM inserted i JOIN kyu_ready_head h ON h.queue = i.queue \
                 WHERE i.state = 'queued' AND kyu_ahead(i.priority, i.run_at, i.seq, h.priority, h.run_at, h.seq) \
                 ORDER BY i.queue, i.priority DESC, i.run_at, i.seq) AS k)",
        );
    }
    if parts.parked {
        sql.push_str(
            ", parked AS ( \
               INSERT INTO kyu_parked (seq, queue, state, run_at) \
               SELECT seq, queue, state, run_at FROM inserted \
               WHERE state IN ('scheduled', 'waiting', 'failed', 'cancelled'))",
        );
    }
    if parts.kept {
        sql.push_str(
            ", kept AS ( \
               INSERT INTO kyu_expiry (expires_at, seqs) SELECT expires_at, array_agg(seq) FROM inserted \
               WHERE expires_at IS NOT NULL GROUP BY expires_at)",
        );
    }
    sql.push_str(
        ", notified AS ( \
           SELECT pg_notify($24::text, 'a:' || queue) FROM (SELECT DISTINCT queue FROM inserted \
             WHERE state IN ('queued', 'scheduled')) AS q) \
         SELECT id, seq, (SELECT count(*) FROM notified)",
    );
    // A CTE that only reads runs only if the statement reads it.
    if parts.ready {
        sql.push_str(", (SELECT count(*) FROM ahead)");
    }
    sql.push_str(" FROM inserted");
    sql
}

/// Inserts in the given order: each run of jobs without unique keys or
/// dependencies in one statement, the others one at a time (a flow's
/// 10,000 children are one statement, its parent one more).
pub(crate) async fn insert_many<C: Conn>(tx: &Tx<'_, C>, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, StoreError> {
    let plain = |j: &NewJob| j.unique_key.is_none() && j.depends_on.is_empty();
    let mut out = Vec::with_capacity(jobs.len());
    let mut run: Vec<NewJob> = Vec::new();
    for job in jobs {
        if plain(&job) {
            run.push(job);
            continue;
        }
        if !run.is_empty() {
            out.extend(insert_plain(tx, std::mem::take(&mut run)).await?);
        }
        out.push(insert_one(tx, job).await?);
    }
    if !run.is_empty() {
        out.extend(insert_plain(tx, run).await?);
    }
    Ok(out)
}

/// No unique keys, no dependencies: the whole batch in one statement.
async fn insert_plain<C: Conn>(tx: &Tx<'_, C>, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, StoreError> {
    let mut rows = Rows::default();
    let states: Vec<JobState> = jobs.iter().map(|j| runnable_state(tx.now, j.run_at)).collect();
    for (job, state) in jobs.iter().zip(&states) {
        rows.push(job, *state, 0, None, tx.now, None);
    }
    let mut fresh: HashSet<String> = insert_rows(tx, &rows).await?.into_iter().map(|(id, _)| id).collect();
    let mut out = Vec::with_capacity(jobs.len());
    let mut dups: Vec<usize> = Vec::new();
    for (i, (job, state)) in jobs.iter().zip(states).enumerate() {
        // `remove`, so a second copy of an id in the same batch is a duplicate.
        if fresh.remove(job.id.as_str()) {
            tx.happened(Happening::Enqueued { id: job.id.clone(), queue: job.queue.clone(), kind: job.kind.clone(), state });
            out.push(Inserted { id: job.id.clone(), state, duplicate: false });
        } else {
            dups.push(i);
            out.push(Inserted { id: job.id.clone(), state, duplicate: true });
        }
    }
    if !dups.is_empty() {
        let ids: Vec<String> = dups.iter().map(|&i| jobs[i].id.to_string()).collect();
        let found: HashMap<String, JobState> = tx
            .c
            .query("SELECT id, state FROM kyu_jobs WHERE id = ANY($1)", &[&ids])
            .await
            .db()?
            .iter()
            .map(|r| Ok((r.try_get::<_, String>(0).db()?, state_of(r.try_get(1).db()?)?)))
            .collect::<Result<_, StoreError>>()?;
        for i in dups {
            if let Some(s) = found.get(out[i].id.as_str()) {
                out[i].state = *s;
            }
        }
    }
    Ok(out)
}

/// With a unique key or dependencies: checked one job at a time, under locks
/// that keep concurrent producers and finishing dependencies consistent.
async fn insert_one<C: Conn>(tx: &Tx<'_, C>, job: NewJob) -> Result<Inserted, StoreError> {
    if let Some(key) = &job.unique_key {
        // Two producers with the same key must not both see "free".
        tx.c.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", &[key]).await.db()?;
        let taken = tx
            .c
            .query_opt(
                "SELECT id, state FROM kyu_jobs WHERE unique_key = $1 \
                 AND (state NOT IN ('completed', 'failed', 'cancelled') OR unique_until > $2) LIMIT 1",
                &[key, &tx.now_ts],
            )
            .await
            .db()?;
        if let Some(row) = taken {
            return Ok(Inserted { id: job_id(row.try_get(0).db()?)?, state: state_of(row.try_get(1).db()?)?, duplicate: true });
        }
    }
    let mut found: HashMap<String, (i64, JobState)> = HashMap::new();
    if !job.depends_on.is_empty() {
        let ids: Vec<&str> = job.depends_on.iter().map(|d| d.as_str()).collect();
        // FOR SHARE: a dependency cannot finish between this read and our
        // commit, so it cannot miss the dependency row written below.
        let rows = tx.c.query("SELECT id, seq, state FROM kyu_jobs WHERE id = ANY($1) FOR SHARE", &[&ids]).await.db()?;
        for r in rows {
            found.insert(r.try_get(0).db()?, (r.try_get(1).db()?, state_of(r.try_get(2).db()?)?));
        }
    }
    let states: Vec<(&JobId, Option<JobState>)> =
        job.depends_on.iter().map(|d| (d, found.get(d.as_str()).map(|f| f.1))).collect();
    let plan = plan_insert(tx.now, job.run_at, job.continue_on_failure, &states)?;
    let pending: Vec<i64> = plan.pending.iter().map(|&i| found[job.depends_on[i].as_str()].0).collect();
    let state = plan.state;
    let expiry = state
        .is_terminal()
        .then(|| ts(tx.settings.retention.expires_at(state, tx.now, job.keep_result_ms, job.keep_failed_ms)));
    let mut rows = Rows::default();
    rows.push(&job, state, pending.len() as i32, plan.error.as_ref(), tx.now, expiry);
    let Some((_, seq)) = insert_rows(tx, &rows).await?.pop() else {
        let row = tx.c.query_one("SELECT state FROM kyu_jobs WHERE id = $1", &[&job.id.as_str()]).await.db()?;
        return Ok(Inserted { id: job.id, state: state_of(row.try_get(0).db()?)?, duplicate: true });
    };
    link_dependencies(tx, seq, &pending).await?;
    tx.happened(Happening::Enqueued { id: job.id.clone(), queue: job.queue.clone(), kind: job.kind.clone(), state });
    if state.is_terminal() {
        tx.event(StoreEvent::JobFinished(job.id.clone()));
    }
    Ok(Inserted { id: job.id, state, duplicate: false })
}

/// Records that job `seq` waits for each of `deps`, and marks them as
/// having dependents (so finishing them looks for waiters).
pub(crate) async fn link_dependencies<C: Conn>(tx: &Tx<'_, C>, seq: i64, deps: &[i64]) -> Result<(), StoreError> {
    if deps.is_empty() {
        return Ok(());
    }
    tx.c.execute(
        "INSERT INTO kyu_job_deps (dep_seq, job_seq) SELECT unnest($1::int8[]), $2 ON CONFLICT DO NOTHING",
        &[&deps, &seq],
    )
    .await
    .db()?;
    tx.c.execute("UPDATE kyu_jobs SET has_dependents = true WHERE seq = ANY($1) AND NOT has_dependents", &[&deps])
        .await
        .db()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form of the enqueue statement is valid SQL against the schema,
    /// including those no caller builds today (a batch with a job finished
    /// at insert): a part added later must not break a rare form unseen.
    #[tokio::test]
    async fn every_form_of_the_insert_statement_prepares() {
        let (store, _schema) = crate::testing::fresh_store().await;
        let client = store.pool().get().await.unwrap();
        for i in 0..16 {
            let parts = Parts::from_index(i);
            assert_eq!(parts.index(), i);
            let st = client.prepare(insert_sql(parts)).await.unwrap_or_else(|e| panic!("form {i}: {e}"));
            assert_eq!(st.params().len(), 26, "form {i}");
        }
    }
}
