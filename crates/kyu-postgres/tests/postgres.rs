//! Behaviour particular to the PostgreSQL backend.

use std::time::{Duration, Instant};

use kyu_core::{Clock, JobSpec, JobState, Limits};
use kyu_postgres::{PgOptions, PgStore};
use kyu_store::{JobClaimParams, JobInsertManyParams, Outcome, Report, Store, StoreEvent};
use serde_json::json;

fn spec(queue: &str) -> kyu_core::NewJob {
    JobSpec::new(queue, "k", json!({"n": 1})).validate(Clock::system().now(), &Limits::default()).unwrap()
}

/// Claims the next job of `queue`, which must have one.
async fn claim_one(store: &PgStore, queue: &str) -> kyu_core::ClaimedJob {
    let params = JobClaimParams { queues: vec![kyu_core::QueueName::new(queue).unwrap()], worker: "w".into(), max: 1, lease_ms: 30_000 };
    store.job_claim(params).await.unwrap().jobs.remove(0)
}

async fn other_process_view(schema: &str) -> PgStore {
    let opts = PgOptions { schema: Some(schema.to_owned()), pool_size: 4, ..PgOptions::default() };
    PgStore::connect(&kyu_postgres::testing::test_url(), opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_in_a_caller_transaction_exists_only_if_it_commits() {
    let (store, _schema) = kyu_postgres::testing::fresh_store().await;
    let mut client = store.pool().get().await.unwrap();

    let rolled_back = spec("tx");
    let id = rolled_back.id.clone();
    let tx = client.transaction().await.unwrap();
    store.enqueue_in(&tx, vec![rolled_back]).await.unwrap();
    assert!(store.job_get(&id).await.unwrap().is_none(), "invisible before commit");
    tx.rollback().await.unwrap();
    assert!(store.job_get(&id).await.unwrap().is_none(), "gone with the rollback");

    let committed = spec("tx");
    let id = committed.id.clone();
    let tx = client.transaction().await.unwrap();
    tx.execute("CREATE TABLE app_orders (n int)", &[]).await.unwrap();
    store.enqueue_in(&tx, vec![committed]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.job_get(&id).await.unwrap().unwrap().state, JobState::Queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_in_the_handler_transaction() {
    let (store, _schema) = kyu_postgres::testing::fresh_store().await;
    store.job_insert_many(JobInsertManyParams { jobs: vec![spec("h")] }).await.unwrap();
    let job = claim_one(&store, "h").await;
    let report = || Report { id: job.id.clone(), token: job.token.clone(), outcome: Outcome::Complete { result: json!("done") } };
    let mut client = store.pool().get().await.unwrap();
    // The handler's transaction fails after reporting: the job stays running.
    let tx = client.transaction().await.unwrap();
    store.report_in(&tx, vec![report()]).await.unwrap().remove(0).unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(store.job_get(&job.id).await.unwrap().unwrap().state, JobState::Running);
    // It succeeds: effects and completion commit together.
    let tx = client.transaction().await.unwrap();
    store.report_in(&tx, vec![report()]).await.unwrap().remove(0).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.job_get(&job.id).await.unwrap().unwrap().result, Some(json!("done")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_at_once_migrate_once() {
    let schema = format!("kyu_t_{}", uuid_like());
    let url = kyu_postgres::testing::test_url();
    let opts = PgOptions { schema: Some(schema), pool_size: 2, ..PgOptions::default() };
    let starts: Vec<_> = (0..4).map(|_| {
        let (url, opts) = (url.clone(), opts.clone());
        tokio::spawn(async move { PgStore::connect(&url, opts).await.map(|_| ()) })
    }).collect();
    for s in starts {
        s.await.unwrap().expect("every node starts");
    }
}

fn uuid_like() -> String {
    format!("{:x}{:x}", std::process::id(), Instant::now().elapsed().as_nanos() ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()))
}

/// Heartbeats set `lease_expires_at`, saves `checkpoint`, `progress` and
/// `events`: none may be in an index (key or predicate), or the update is
/// never HOT; and pages keep room for the new version (fillfactor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_saves_change_no_indexed_column() {
    let (store, schema) = kyu_postgres::testing::fresh_store().await;
    let client = store.pool().get().await.unwrap();
    let rows = client
        .query(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE t.relname = 'kyu_jobs' AND n.nspname = $1",
            &[&&*schema],
        )
        .await
        .unwrap();
    assert!(rows.len() >= 3, "indexes of kyu_jobs found: {}", rows.len());
    // Nor on anything the claim or the completion sets (migration 14).
    let claimed_or_ended = ["state", "token", "worker", "started_at", "attempt", "result", "finished_at", "expires_at", "deadline_at"];
    for r in &rows {
        let (name, def): (String, String) = (r.get(0), r.get(1));
        for column in ["lease_expires_at", "checkpoint", "progress", "events"].into_iter().chain(claimed_or_ended) {
            assert!(!def.contains(column), "{name} is on {column}, so updates of it are never HOT: {def}");
        }
    }
    let options: Option<Vec<String>> = client
        .query_one(
            "SELECT t.reloptions FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE t.relname = 'kyu_jobs' AND n.nspname = $1",
            &[&&*schema],
        )
        .await
        .unwrap()
        .get(0);
    assert!(options.unwrap_or_default().iter().any(|o| o.starts_with("fillfactor=")), "kyu_jobs keeps room on its pages");
}

/// Reports and heartbeats are fenced by the token alone, so the table
/// itself holds that only a running job has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_running_job_holds_a_token() {
    let (store, _schema) = kyu_postgres::testing::fresh_store().await;
    let job = spec("tokens");
    let id = job.id.clone();
    store.job_insert_many(JobInsertManyParams { jobs: vec![job] }).await.unwrap();
    let client = store.pool().get().await.unwrap();
    let err = client.execute("UPDATE kyu_jobs SET token = 'forged' WHERE id = $1", &[&id.as_str()]).await.unwrap_err();
    assert_eq!(err.as_db_error().and_then(|e| e.constraint()), Some("kyu_jobs_token_only_running"), "{err:?}");
    let claimed = claim_one(&store, "tokens").await;
    let report = |token: String| Report { id: id.clone(), token, outcome: Outcome::Complete { result: json!(1) } };
    assert_eq!(store.job_report_many(vec![report(claimed.token.clone())]).await.unwrap().remove(0).unwrap(), JobState::Completed);
    let token: Option<String> =
        client.query_one("SELECT token FROM kyu_jobs WHERE id = $1", &[&id.as_str()]).await.unwrap().get(0);
    assert_eq!(token, None, "completing clears it");
    assert!(store.job_report_many(vec![report(claimed.token)]).await.unwrap().remove(0).is_err(), "a second report is refused");
}

/// The default backoff is stored as NULL (a third of a plain job's row,
/// written at each of its transitions); any other is stored, and both read
/// back as they were given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_backoff_is_not_stored() {
    let (store, _schema) = kyu_postgres::testing::fresh_store().await;
    let plain = spec("backoffs");
    let mut custom = JobSpec::new("backoffs", "k", json!(null));
    custom.backoff = Some(kyu_core::Backoff::Fixed { delay_ms: 250 });
    let custom = custom.validate(Clock::system().now(), &Limits::default()).unwrap();
    let (plain_id, custom_id) = (plain.id.clone(), custom.id.clone());
    store.job_insert_many(JobInsertManyParams { jobs: vec![plain, custom] }).await.unwrap();
    let client = store.pool().get().await.unwrap();
    let stored = |id: &kyu_core::JobId| {
        let (client, id) = (&client, id.to_string());
        async move {
            client.query_one("SELECT backoff IS NULL FROM kyu_jobs WHERE id = $1", &[&id]).await.unwrap().get::<_, bool>(0)
        }
    };
    assert!(stored(&plain_id).await, "the default is NULL");
    assert!(!stored(&custom_id).await, "another is stored");
    assert_eq!(store.job_get(&plain_id).await.unwrap().unwrap().backoff, kyu_core::Backoff::default());
    assert_eq!(store.job_get(&custom_id).await.unwrap().unwrap().backoff, kyu_core::Backoff::Fixed { delay_ms: 250 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_reach_other_nodes() {
    let (store, schema) = kyu_postgres::testing::fresh_store().await;
    let other = other_process_view(&schema).await;
    kyu_storetest::observe::stats_reach_other_handles(store, other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_other_nodes() {
    let (store, schema) = kyu_postgres::testing::fresh_store().await;
    let other = other_process_view(&schema).await;
    let mut events = other.subscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !other.is_listening() {
        assert!(Instant::now() < deadline, "the LISTEN connection came up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let job = spec("wake");
    let id = job.id.clone();
    store.job_insert_many(JobInsertManyParams { jobs: vec![job] }).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("notified").unwrap();
    assert_eq!(ev, StoreEvent::JobsAvailable(kyu_core::QueueName::new("wake").unwrap()));
    // The other process waits for the end, so it is announced.
    other.job_watch(&id).await.unwrap();
    let claimed = claim_one(&store, "wake").await;
    store
        .job_report_many(vec![Report { id: id.clone(), token: claimed.token, outcome: Outcome::Complete { result: json!(1) } }])
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("notified").unwrap();
        if ev == StoreEvent::JobFinished(id.clone()) {
            break;
        }
    }
    // An end nobody waits for is not announced: NOTIFY costs every listener
    // a transaction. Notifications arrive in commit order, so once the
    // watched job's end arrives, the unwatched one's would have too.
    let (quiet, loud) = (spec("wake"), spec("wake"));
    let (quiet_id, loud_id) = (quiet.id.clone(), loud.id.clone());
    store.job_insert_many(JobInsertManyParams { jobs: vec![quiet, loud] }).await.unwrap();
    other.job_watch(&loud_id).await.unwrap();
    for want in [&quiet_id, &loud_id] {
        let claimed = claim_one(&store, "wake").await;
        assert_eq!(&claimed.id, want, "claimed in enqueue order");
        store
            .job_report_many(vec![Report { id: claimed.id, token: claimed.token, outcome: Outcome::Complete { result: json!(1) } }])
            .await
            .unwrap();
    }
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("notified").unwrap();
        assert_ne!(ev, StoreEvent::JobFinished(quiet_id.clone()), "an unwatched end was announced");
        if ev == StoreEvent::JobFinished(loud_id.clone()) {
            break;
        }
    }
}

/// A parent (queue `parents`) waiting on `n` children (queue `kids`), all
/// of them claimed.
async fn parent_with_claimed_children(store: &PgStore, n: usize) -> (kyu_core::JobId, Vec<kyu_core::ClaimedJob>) {
    let now = Clock::system().now();
    let children: Vec<_> = (0..n).map(|_| JobSpec::new("kids", "k", json!(null)).validate(now, &Limits::default()).unwrap()).collect();
    let mut parent = JobSpec::new("parents", "p", json!(null));
    parent.depends_on = children.iter().map(|c| c.id.to_string()).collect();
    let parent = parent.validate(now, &Limits::default()).unwrap();
    let parent_id = parent.id.clone();
    let mut jobs = children;
    jobs.push(parent);
    store.job_insert_many(JobInsertManyParams { jobs }).await.unwrap();
    let claimed = store
        .job_claim(JobClaimParams { queues: vec![kyu_core::QueueName::new("kids").unwrap()], worker: "w".into(), max: n, lease_ms: 60_000 })
        .await
        .unwrap()
        .jobs;
    (parent_id, claimed)
}

/// Many children finishing at the same instant, on separate connections,
/// release their parent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_finishing_at_once_release_the_parent_once() {
    let (store, _schema) = kyu_postgres::testing::fresh_store().await;
    let n = 64;
    let (parent_id, claimed) = parent_with_claimed_children(&store, n).await;
    assert_eq!(claimed.len(), n);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = claimed
        .into_iter()
        .map(|j| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .job_report_many(vec![Report { id: j.id, token: j.token, outcome: Outcome::Complete { result: json!(1) } }])
                    .await
                    .unwrap()
                    .remove(0)
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), JobState::Completed);
    }
    let parent = store.job_get(&parent_id).await.unwrap().unwrap();
    assert_eq!(parent.state, JobState::Queued);
    assert_eq!(parent.pending_dependencies, 0);
    let got = store
        .job_claim(JobClaimParams { queues: vec![kyu_core::QueueName::new("parents").unwrap()], worker: "w".into(), max: 10, lease_ms: 60_000 })
        .await
        .unwrap()
        .jobs;
    assert_eq!(got.len(), 1, "released exactly once");
    assert_eq!(got[0].dependency_results.len(), n);
}

/// A child that fails while its siblings complete on other connections
/// fails the parent once, naming it; the siblings' completions, counted
/// without waiting for the parent, change nothing after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_child_among_concurrent_completions_fails_the_parent_once() {
    let (store, _schema) = kyu_postgres::testing::fresh_store().await;
    let n = 48;
    let (parent_id, claimed) = parent_with_claimed_children(&store, n).await;
    let broken = claimed[n / 2].id.clone();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = claimed
        .into_iter()
        .map(|j| {
            let (store, barrier, fail) = (store.clone(), barrier.clone(), j.id == broken);
            tokio::spawn(async move {
                barrier.wait().await;
                let outcome = if fail {
                    Outcome::Fail { error: "boom".into(), failure: kyu_core::transition::Failure { retry: false, retry_in_ms: None } }
                } else {
                    Outcome::Complete { result: json!(1) }
                };
                store.job_report_many(vec![Report { id: j.id, token: j.token, outcome }]).await.unwrap().remove(0).unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let parent = store.job_get(&parent_id).await.unwrap().unwrap();
    assert_eq!(parent.state, JobState::Failed);
    assert_eq!(parent.errors.len(), 1, "failed once: {:?}", parent.errors);
    assert!(parent.errors[0].message.contains(broken.as_str()), "{}", parent.errors[0].message);
    store.job_rescue().await.unwrap();
    let left: i64 = store.pool().get().await.unwrap().query_one("SELECT count(*) FROM kyu_dep_done", &[]).await.unwrap().get(0);
    assert_eq!(left, 0, "maintenance clears counts of jobs no longer waiting");
}

/// Completions counted by a node that stopped between its commit and its
/// check: maintenance releases the parent; a parent still waiting keeps a
/// few counts as they are, and has many folded into its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_settles_counts_no_commit_checked() {
    let (store, _schema) = kyu_postgres::testing::fresh_store().await;
    let now = Clock::system().now();
    let children: Vec<_> = (0..3).map(|_| JobSpec::new("kids", "k", json!(null)).validate(now, &Limits::default()).unwrap()).collect();
    let mut released = JobSpec::new("parents", "p", json!(null));
    released.depends_on = vec![children[0].id.to_string()];
    let released = released.validate(now, &Limits::default()).unwrap();
    let mut waiting = JobSpec::new("parents", "p", json!(null));
    waiting.depends_on = vec![children[1].id.to_string(), children[2].id.to_string()];
    let waiting = waiting.validate(now, &Limits::default()).unwrap();
    let (released_id, waiting_id) = (released.id.clone(), waiting.id.clone());
    let mut jobs = children;
    jobs.extend([released, waiting]);
    store.job_insert_many(JobInsertManyParams { jobs }).await.unwrap();
    // What a completion appends; the check after its commit never ran.
    let client = store.pool().get().await.unwrap();
    client
        .execute(
            "INSERT INTO kyu_dep_done (job_seq, n) SELECT seq, 1 FROM kyu_jobs WHERE id = ANY($1)",
            &[&vec![released_id.as_str(), waiting_id.as_str()]],
        )
        .await
        .unwrap();
    assert_eq!(store.job_get(&released_id).await.unwrap().unwrap().pending_dependencies, 0);
    assert_eq!(store.job_get(&waiting_id).await.unwrap().unwrap().pending_dependencies, 1);
    store.job_rescue().await.unwrap();
    assert_eq!(store.job_get(&released_id).await.unwrap().unwrap().state, JobState::Queued);
    let w = store.job_get(&waiting_id).await.unwrap().unwrap();
    assert_eq!((w.state, w.pending_dependencies), (JobState::Waiting, 1));
    let (rows, folded): (i64, i32) = {
        let r = client
            .query_one(
                "SELECT (SELECT count(*) FROM kyu_dep_done), (SELECT pending_deps FROM kyu_jobs WHERE id = $1)",
                &[&waiting_id.as_str()],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((rows, folded), (1, 2), "a few counts stay as they are");
    // Many rows (here 99 of nothing and the one above) are folded.
    client
        .execute("INSERT INTO kyu_dep_done (job_seq, n) SELECT seq, 0 FROM kyu_jobs, generate_series(1, 99) WHERE id = $1", &[&waiting_id.as_str()])
        .await
        .unwrap();
    store.job_rescue().await.unwrap();
    let r = client
        .query_one("SELECT (SELECT count(*) FROM kyu_dep_done), (SELECT pending_deps FROM kyu_jobs WHERE id = $1)", &[&waiting_id.as_str()])
        .await
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i32>(1)), (0, 1), "counts folded into the row");
    let w = store.job_get(&waiting_id).await.unwrap().unwrap();
    assert_eq!((w.state, w.pending_dependencies), (JobState::Waiting, 1));
}

/// The LISTEN connection is killed: the store reconnects on its own and
/// notifications flow again (polling covers the gap meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_reconnects_after_its_connection_dies() {
    let (store, schema) = kyu_postgres::testing::fresh_store().await;
    let other = other_process_view(&schema).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !other.is_listening() {
        assert!(Instant::now() < deadline, "the LISTEN connection came up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let admin = store.pool().get().await.unwrap();
    // Only this schema's listeners: other tests run beside this one.
    let listen = format!("LISTEN \"kyu:{schema}\"");
    let killed = admin
        .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()", &[&listen])
        .await
        .unwrap();
    assert!(!killed.is_empty(), "a LISTEN connection to kill");
    // It notices, reconnects, and listens again.
    let deadline = Instant::now() + Duration::from_secs(15);
    while other.listen_connects() < 2 || !other.is_listening() {
        assert!(Instant::now() < deadline, "the listener reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut events = other.subscribe();
    store.job_insert_many(JobInsertManyParams { jobs: vec![spec("after-reconnect")] }).await.unwrap();
    let want = StoreEvent::JobsAvailable(kyu_core::QueueName::new("after-reconnect").unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv()).await.expect("a notification after reconnecting").unwrap();
        if ev == want {
            break;
        }
    }
}

/// A claim is one row of `kyu_claims` and a batch of completions one row of
/// `kyu_expiry` (schema 15): maintenance drops a claim's row once none of
/// its jobs runs, and the pruner deletes what is due, leaving a job someone
/// holds listed for its next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_expiries_are_kept_per_batch_and_swept() {
    let (store, schema) = kyu_postgres::testing::fresh_store().await;
    let c = store.pool().get().await.unwrap();
    let count = |table: &'static str| {
        let c = &c;
        async move { c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get::<_, i64>(0) }
    };
    store.job_insert_many(JobInsertManyParams { jobs: (0..3).map(|_| spec("b")).collect() }).await.unwrap();
    let params = JobClaimParams { queues: vec![kyu_core::QueueName::new("b").unwrap()], worker: "w".into(), max: 10, lease_ms: 30_000 };
    let jobs = store.job_claim(params).await.unwrap().jobs;
    assert_eq!((jobs.len(), count("kyu_claims").await), (3, 1));
    let report = |j: &kyu_core::ClaimedJob| Report { id: j.id.clone(), token: j.token.clone(), outcome: Outcome::Complete { result: json!(1) } };
    store.job_report_many(jobs[..2].iter().map(report).collect()).await.unwrap();
    store.job_rescue().await.unwrap();
    assert_eq!(count("kyu_claims").await, 1, "one of its jobs still runs");
    store.job_report_many(vec![report(&jobs[2])]).await.unwrap();
    assert_eq!(count("kyu_expiry").await, 2, "one row per batch of completions");
    store.job_rescue().await.unwrap();
    assert_eq!(count("kyu_claims").await, 0, "none of its jobs runs");

    store.clock().advance(30 * 86_400_000);
    let other = other_process_view(&schema).await;
    let oc = other.pool().get().await.unwrap();
    oc.batch_execute("BEGIN").await.unwrap();
    oc.execute("SELECT 1 FROM kyu_jobs WHERE id = $1 FOR UPDATE", &[&jobs[0].id.as_str()]).await.unwrap();
    assert_eq!(store.job_prune(kyu_store::JobPruneParams { batch: 100 }).await.unwrap(), 2);
    assert_eq!(count("kyu_expiry").await, 1, "the held job is listed again");
    oc.batch_execute("COMMIT").await.unwrap();
    assert_eq!(store.job_prune(kyu_store::JobPruneParams { batch: 100 }).await.unwrap(), 1);
    assert_eq!((count("kyu_expiry").await, count("kyu_jobs").await), (0, 0));
}

/// The claim never waits on a job's row (schema 14): a queued job another
/// transaction holds, here `FOR SHARE` as an enqueue of a job depending on
/// it takes in a caller's transaction, is skipped and keeps its ready row,
/// and the claim takes the next job at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_skips_a_held_job_and_leaves_it_ready() {
    let (store, schema) = kyu_postgres::testing::fresh_store().await;
    let ids: Vec<_> = store
        .job_insert_many(JobInsertManyParams { jobs: vec![spec("h"), spec("h")] })
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let other = other_process_view(&schema).await;
    let oc = other.pool().get().await.unwrap();
    oc.batch_execute("BEGIN").await.unwrap();
    oc.execute("SELECT 1 FROM kyu_jobs WHERE id = $1 FOR SHARE", &[&ids[0].as_str()]).await.unwrap();
    let params = || JobClaimParams { queues: vec![kyu_core::QueueName::new("h").unwrap()], worker: "w".into(), max: 10, lease_ms: 30_000 };
    let got = tokio::time::timeout(Duration::from_secs(5), store.job_claim(params())).await.expect("the claim does not wait").unwrap();
    assert_eq!(got.jobs.iter().map(|j| &j.id).collect::<Vec<_>>(), vec![&ids[1]]);
    oc.batch_execute("COMMIT").await.unwrap();
    let got = store.job_claim(params()).await.unwrap();
    assert_eq!(got.jobs.iter().map(|j| &j.id).collect::<Vec<_>>(), vec![&ids[0]], "still ready once released");
}

/// Claimers, completions and operators' cancels and deletes racing on one
/// queue: none waits on another in a cycle (no deadlock error), every job
/// ends completed, cancelled or deleted, and the narrow rows agree with the
/// jobs when it is over (checked by the test's guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_race_cancels_and_deletes_without_deadlock() {
    let (store, _schema) = kyu_postgres::testing::fresh_store().await;
    let ids: Vec<_> = store
        .job_insert_many(JobInsertManyParams { jobs: (0..400).map(|_| spec("race")).collect() })
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let mut tasks = Vec::new();
    for w in 0..3 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let params = JobClaimParams { queues: vec![kyu_core::QueueName::new("race").unwrap()], worker: format!("w{w}"), max: 7, lease_ms: 30_000 };
            loop {
                let jobs = store.job_claim(params.clone()).await.expect("claims never fail").jobs;
                if jobs.is_empty() {
                    break;
                }
                let reports = jobs.iter().map(|j| Report { id: j.id.clone(), token: j.token.clone(), outcome: Outcome::Complete { result: json!(1) } }).collect();
                store.job_report_many(reports).await.expect("reports never fail");
            }
        }));
    }
    let operator = {
        let (store, ids) = (store.clone(), ids.clone());
        tokio::spawn(async move {
            for (i, id) in ids.iter().enumerate().rev() {
                let done = if i % 3 == 0 { store.job_delete(id).await } else { store.job_cancel(id).await.map(|_| ()) };
                match done {
                    Ok(()) | Err(kyu_store::StoreError::Conflict(_)) => {}
                    Err(e) => panic!("an operator's action failed: {e}"),
                }
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    operator.await.unwrap();
    for id in &ids {
        if let Some(job) = store.job_get(id).await.unwrap() {
            assert!(matches!(job.state, JobState::Completed | JobState::Cancelled), "{id} ended {}", job.state);
        }
    }
}

/// The store's transactions send BEGIN with their first statements and
/// COMMIT with their last (`conn::Pipelined`). A transaction abandoned
/// mid-flight (its future dropped, as a timeout does) must commit nothing,
/// and its connection, closed rather than returned mid-transaction, must
/// not cost the pool its only slot. A statement that fails must roll back
/// what the transaction had done before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_or_failed_transaction_commits_nothing() {
    let (_store, schema) = kyu_postgres::testing::fresh_store().await;
    let opts = PgOptions { schema: Some(schema.to_string()), pool_size: 1, ..PgOptions::default() };
    let one = PgStore::connect(&kyu_postgres::testing::test_url(), opts).await.unwrap();
    let job = spec("p");
    let id = job.id.clone();
    one.job_insert_many(JobInsertManyParams { jobs: vec![job] }).await.unwrap();
    let claimed = claim_one(&one, "p").await;
    let report = Report { id: id.clone(), token: claimed.token.clone(), outcome: Outcome::Complete { result: json!(1) } };
    let params = || JobClaimParams { queues: vec![kyu_core::QueueName::new("p").unwrap()], worker: "w".into(), max: 5, lease_ms: 30_000 };

    // Another session holds the job's row: the report waits on it, and is abandoned.
    let other = other_process_view(&schema).await;
    let oc = other.pool().get().await.unwrap();
    oc.batch_execute("BEGIN").await.unwrap();
    oc.execute("SELECT 1 FROM kyu_jobs WHERE id = $1 FOR UPDATE", &[&id.as_str()]).await.unwrap();
    let abandoned = tokio::time::timeout(Duration::from_millis(300), one.job_report_and_claim(vec![report.clone()], params())).await;
    assert!(abandoned.is_err(), "the report waited on the held row");
    oc.batch_execute("COMMIT").await.unwrap();

    let later = spec("p");
    one.job_insert_many(JobInsertManyParams { jobs: vec![later.clone()] }).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), one.job_claim(params())).await.expect("the pool has a connection again").unwrap();
    assert_eq!(got.jobs.iter().map(|j| &j.id).collect::<Vec<_>>(), vec![&later.id]);
    let job = one.job_get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Running, "the abandoned report was not committed");

    // A failing statement (a cancelled job's completion refused by a check
    // added for the test) after the report's first statements: nothing stays.
    oc.batch_execute(
        "ALTER TABLE kyu_jobs ADD CONSTRAINT test_no_results CHECK (result IS NULL OR state <> 'completed') NOT VALID",
    )
    .await
    .unwrap();
    let failed = one.job_report_and_claim(vec![report.clone()], params()).await;
    assert!(failed.is_err(), "{failed:?}");
    oc.batch_execute("ALTER TABLE kyu_jobs DROP CONSTRAINT test_no_results").await.unwrap();
    assert_eq!(one.job_get(&id).await.unwrap().unwrap().state, JobState::Running, "rolled back");
    let done = one.job_report_many(vec![report]).await.unwrap().remove(0).unwrap();
    assert_eq!(done, JobState::Completed, "the connection is usable after the rollback");
}

/// The queue's head as the claims start from it (migration 16).
async fn head_seq(store: &PgStore, queue: &str) -> Option<i64> {
    let c = store.pool().get().await.unwrap();
    c.query_opt("SELECT seq FROM kyu_ready_head WHERE queue = $1", &[&queue]).await.unwrap().map(|r| r.get(0))
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < until, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn prioritised(queue: &str, priority: i32) -> kyu_core::NewJob {
    let mut s = JobSpec::new(queue, "k", json!({}));
    s.priority = Some(priority);
    s.validate(Clock::system().now(), &Limits::default()).unwrap()
}

/// While another session holds a snapshot, so claimed rows cannot be
/// pruned, claims start at the queue's head: the store moves it along as
/// it claims, an insert ahead of it (a higher priority) moves it back, and
/// a row that lands ahead of it unseen (here: the head set past it by hand)
/// is still claimed, in order, once the claim cannot fill up without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_start_at_the_head_and_miss_nothing_behind_it() {
    let (store, schema) = kyu_postgres::testing::fresh_store().await;
    let other = other_process_view(&schema).await;
    let held = other.pool().get().await.unwrap();
    held.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").await.unwrap();

    let jobs: Vec<_> = (0..200).map(|_| spec("hd")).collect();
    let ids: Vec<_> = store.job_insert_many(JobInsertManyParams { jobs }).await.unwrap().into_iter().map(|i| i.id).collect();
    let params = |max| JobClaimParams { queues: vec![kyu_core::QueueName::new("hd").unwrap()], worker: "w".into(), max, lease_ms: 30_000 };
    let mut taken = Vec::new();
    for _ in 0..5 {
        taken.extend(store.job_claim(params(20)).await.unwrap().jobs.into_iter().map(|j| j.id));
    }
    assert_eq!(taken, ids[..100].to_vec(), "claimed in order");
    // The store resets the head after claims (in the background).
    wait_for("the head moves past the claimed jobs", async || head_seq(&store, "hd").await.is_some_and(|s| s > 1)).await;

    // A higher priority goes first.
    let urgent = prioritised("hd", 5);
    let urgent_id = urgent.id.clone();
    store.job_insert_many(JobInsertManyParams { jobs: vec![urgent] }).await.unwrap();
    assert_eq!(claim_one(&store, "hd").await.id, urgent_id, "the insert moved the head back");
    // So does a job made ready later (kyu_place): a promoted scheduled job.
    let mut later = JobSpec::new("hd", "k", json!({}));
    later.priority = Some(7);
    later.delay_ms = Some(1_000);
    let later = later.validate(store.clock().now(), &Limits::default()).unwrap();
    let later_id = later.id.clone();
    store.job_insert_many(JobInsertManyParams { jobs: vec![later] }).await.unwrap();
    store.clock().advance(2_000);
    assert_eq!(claim_one(&store, "hd").await.id, later_id, "the promotion moved the head back");

    // The head set past ready rows by hand: they are claimed after the
    // rest, and none is lost.
    let c = store.pool().get().await.unwrap();
    c.execute(
        "UPDATE kyu_ready_head h SET priority = r.priority, run_at = r.run_at, seq = r.seq \
         FROM (SELECT * FROM kyu_ready WHERE queue = 'hd' ORDER BY priority DESC, run_at, seq OFFSET 50 LIMIT 1) r WHERE h.queue = 'hd'",
        &[],
    )
    .await
    .unwrap();
    let got: Vec<_> = store.job_claim(params(1000)).await.unwrap().jobs.into_iter().map(|j| j.id).collect();
    assert_eq!(got, ids[100..].to_vec(), "every ready job, in order");
    held.batch_execute("COMMIT").await.unwrap();
}

/// A job enqueued ahead of the head by a transaction that cannot move it
/// (REPEATABLE READ: its snapshot may predate the head it would compare
/// with) waits at most until the store resets the head, while claims keep
/// coming back full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_ahead_of_the_head_unseen_is_claimed_after_the_next_reset() {
    let (store, _schema) = kyu_postgres::testing::fresh_store().await;
    let jobs: Vec<_> = (0..400).map(|_| spec("rr")).collect();
    store.job_insert_many(JobInsertManyParams { jobs }).await.unwrap();
    let params = || JobClaimParams { queues: vec![kyu_core::QueueName::new("rr").unwrap()], worker: "w".into(), max: 5, lease_ms: 30_000 };
    store.job_claim(params()).await.unwrap();
    wait_for("a head", async || head_seq(&store, "rr").await.is_some()).await;

    let mut client = store.pool().get().await.unwrap();
    let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).start().await.unwrap();
    let urgent = prioritised("rr", 9);
    let urgent_id = urgent.id.clone();
    store.enqueue_in(&tx, vec![urgent]).await.unwrap();
    tx.commit().await.unwrap();

    let mut claims = 0;
    loop {
        let got = store.job_claim(params()).await.unwrap().jobs;
        assert_eq!(got.len(), 5, "full claims while the queue has a backlog");
        if got.iter().any(|j| j.id == urgent_id) {
            assert!(claims > 0, "the enqueue could not move the head, so the first claim starts behind the urgent job");
            break;
        }
        claims += 1;
        assert!(claims < 70, "the urgent job was claimed within a few resets");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
