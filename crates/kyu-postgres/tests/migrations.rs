//! A database made by an older kyu, with jobs in every state, is brought
//! up to date on open and keeps working: nothing lost, tokens still fence,
//! dependencies still release.

use std::time::{Duration, Instant};

use kyu_core::{JobId, JobState, QueueName};
use kyu_postgres::{PgOptions, PgStore};
use kyu_store::{JobClaimParams, JobListParams, Outcome, Report, Store, StoreEvent};
use serde_json::json;

/// The migrations of schema version 6, as an older kyu applied them.
const UP_TO_6: &[&str] = &[
    include_str!("../src/migrations/0001_init.sql"),
    include_str!("../src/migrations/0002_schedules.sql"),
    include_str!("../src/migrations/0003_groups.sql"),
    include_str!("../src/migrations/0004_deadlines.sql"),
    include_str!("../src/migrations/0005_logs.sql"),
    include_str!("../src/migrations/0006_observability.sql"),
];

/// Jobs as version 6 stored them: queued, running (token `tok`), completed,
/// failed, scheduled, and waiting for the queued one.
const POPULATE: &str = "
    INSERT INTO kyu_queues (name, created_at) VALUES ('m', now());
    INSERT INTO kyu_jobs (id, queue, kind, payload, state, run_at, max_attempts, backoff, created_at, has_dependents)
        VALUES ('q1', 'm', 'k', '{\"n\": 1}', 'queued', now() - interval '1 minute', 3, '{\"kind\":\"fixed\",\"delay_ms\":0}', now(), true);
    INSERT INTO kyu_jobs (id, queue, kind, payload, state, run_at, max_attempts, backoff, created_at, attempt, token,
                          worker, started_at, lease_expires_at)
        VALUES ('r1', 'm', 'k', '{}', 'running', now(), 3, '{\"kind\":\"fixed\",\"delay_ms\":0}', now(), 1, 'tok', 'old-worker',
                now(), now() + interval '1 hour');
    INSERT INTO kyu_jobs (id, queue, kind, payload, state, run_at, max_attempts, backoff, created_at, attempt, result,
                          started_at, finished_at, expires_at)
        VALUES ('c1', 'm', 'k', '{}', 'completed', now(), 3, '{\"kind\":\"fixed\",\"delay_ms\":0}', now(), 1, '{\"ok\": 1}',
                now(), now(), now() + interval '1 day');
    INSERT INTO kyu_jobs (id, queue, kind, payload, state, run_at, max_attempts, backoff, created_at, attempt, errors,
                          finished_at, expires_at, events)
        VALUES ('f1', 'm', 'k', '{}', 'failed', now(), 1, '{\"kind\":\"fixed\",\"delay_ms\":0}', now(), 1,
                '[{\"attempt\": 1, \"at\": \"2026-11-30T10:00:00.000Z\", \"message\": \"boom\"}]', now(), now() + interval '7 days',
                '[[1796000000000, \"claimed\", 1, \"old-worker\", null], [1796000000100, \"failed\", 1, \"old-worker\", \"boom\"]]');
    INSERT INTO kyu_jobs (id, queue, kind, payload, state, run_at, max_attempts, backoff, created_at, depends_on, pending_deps)
        VALUES ('w1', 'm', 'k', '{}', 'waiting', now(), 3, '{\"kind\":\"fixed\",\"delay_ms\":0}', now(), '[\"q1\"]', 1);
    INSERT INTO kyu_jobs (id, queue, kind, payload, state, run_at, max_attempts, backoff, created_at)
        VALUES ('s1', 'm', 'k', '{}', 'scheduled', now() + interval '1 hour', 3, '{\"kind\":\"fixed\",\"delay_ms\":0}', now());
    INSERT INTO kyu_job_deps (dep_seq, job_seq) SELECT d.seq, w.seq FROM kyu_jobs d, kyu_jobs w WHERE d.id = 'q1' AND w.id = 'w1';
";

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_populated_version_6_database_is_migrated_and_keeps_working() {
    let url = kyu_postgres::testing::test_url();
    let schema = format!("kyu_t_{}", uuid::Uuid::now_v7().simple());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client.batch_execute(&format!("CREATE SCHEMA {schema}; SET search_path = {schema}")).await.unwrap();
    client
        .batch_execute("CREATE TABLE kyu_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        .await
        .unwrap();
    for (i, sql) in UP_TO_6.iter().enumerate() {
        client.batch_execute(sql).await.unwrap();
        client.execute("INSERT INTO kyu_migrations (version) VALUES ($1)", &[&(i as i32 + 1)]).await.unwrap();
    }
    client.batch_execute(POPULATE).await.unwrap();

    let opts = PgOptions { schema: Some(schema.clone()), pool_size: 4, ..PgOptions::default() };
    let store = PgStore::connect(&url, opts).await.expect("opens and migrates");
    let version: i32 = client.query_one("SELECT max(version) FROM kyu_migrations", &[]).await.unwrap().get(0);
    assert!(version > 6, "migrated past 6, to {version}");
    // Every job has the narrow rows of its state (version 14), and the lists
    // that walk them find it.
    let misplaced = "SELECT kyu_misplaced()";
    assert_eq!(client.query_one(misplaced, &[]).await.unwrap().get::<_, i64>(0), 0);
    // The queue's head is its queued job (version 16), where claims start.
    let head: i64 = client.query_one("SELECT seq FROM kyu_ready_head WHERE queue = 'm'", &[]).await.unwrap().get(0);
    let q1: i64 = client.query_one("SELECT seq FROM kyu_jobs WHERE id = $1", &[&id("q1").as_str()]).await.unwrap().get(0);
    assert_eq!(head, q1);
    for (state, job) in [(JobState::Queued, "q1"), (JobState::Running, "r1"), (JobState::Scheduled, "s1"),
        (JobState::Waiting, "w1"), (JobState::Failed, "f1"), (JobState::Completed, "c1")] {
        let p = JobListParams { queue: Some(QueueName::new("m").unwrap()), state: Some(state), ..JobListParams::default() };
        let listed: Vec<String> = store.job_list(p).await.unwrap().jobs.into_iter().map(|j| j.id.to_string()).collect();
        assert_eq!(listed, vec![job.to_owned()], "{state} listed");
    }

    // Nothing lost.
    let get = |s: &'static str| {
        let store = store.clone();
        async move { store.job_get(&id(s)).await.unwrap().unwrap_or_else(|| panic!("{s} is still there")) }
    };
    assert_eq!(get("q1").await.state, JobState::Queued);
    assert_eq!(get("q1").await.payload, json!({"n": 1}));
    assert_eq!(get("r1").await.state, JobState::Running);
    assert_eq!(get("c1").await.result, Some(json!({"ok": 1})));
    let failed = get("f1").await;
    assert_eq!((failed.state, failed.errors[0].message.as_str()), (JobState::Failed, "boom"));
    let timeline = store.job_events(&id("f1")).await.unwrap();
    assert!(timeline.iter().any(|e| e.message.as_deref() == Some("boom")), "{timeline:?}");
    assert_eq!(get("w1").await.state, JobState::Waiting);
    let queue = store.queue_list().await.unwrap().into_iter().find(|q| q.name.as_str() == "m").unwrap();
    for (state, n) in [("queued", 1), ("running", 1), ("completed", 1), ("failed", 1), ("waiting", 1), ("scheduled", 1)] {
        assert_eq!(queue.counts[state], n, "{state} counted");
    }

    // The running job's token still fences its report.
    let done = store
        .job_report_many(vec![Report { id: id("r1"), token: "tok".into(), outcome: Outcome::Complete { result: json!(2) } }])
        .await
        .unwrap();
    assert_eq!(done[0].as_ref().unwrap(), &JobState::Completed);

    // Completing the queued job releases the one waiting for it, and its end
    // reaches a watcher.
    // (Notifications reach a store once its listening connection is up;
    // under a loaded test run that can come after the work above.)
    let up = Instant::now() + Duration::from_secs(10);
    while !store.is_listening() {
        assert!(Instant::now() < up, "the store listens");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut events = store.subscribe();
    store.job_watch(&id("w1")).await.unwrap();
    let claim = |n| JobClaimParams { queues: vec![QueueName::new("m").unwrap()], worker: "new".into(), max: n, lease_ms: 30_000 };
    let q1 = store.job_claim(claim(10)).await.unwrap().jobs;
    assert_eq!(q1.len(), 1);
    store
        .job_report_many(vec![Report { id: q1[0].id.clone(), token: q1[0].token.clone(), outcome: Outcome::Complete { result: json!(3) } }])
        .await
        .unwrap();
    assert_eq!(get("w1").await.state, JobState::Queued);
    let w1 = store.job_claim(claim(10)).await.unwrap().jobs.remove(0);
    assert_eq!(w1.dependency_results.get("q1"), Some(&json!(3)));
    store
        .job_report_many(vec![Report { id: w1.id.clone(), token: w1.token, outcome: Outcome::Complete { result: json!(4) } }])
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("the watched end is announced").unwrap();
        if ev == StoreEvent::JobFinished(id("w1")) {
            break;
        }
    }
    assert_eq!(client.query_one(misplaced, &[]).await.unwrap().get::<_, i64>(0), 0);
}
