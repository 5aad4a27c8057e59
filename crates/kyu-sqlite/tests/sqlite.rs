//! Behaviour particular to the SQLite backend.

use kyu_core::{Clock, JobSpec, Limits};
use kyu_sqlite::{SqliteOptions, SqliteStore};
use kyu_store::{JobInsertManyParams, Store};
use serde_json::json;

/// Two stores on one file, as two processes would open it.
fn two_handles() -> (tempfile::TempDir, SqliteStore, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let b = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    (dir, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_file_see_each_other() {
    let (_dir, a, b) = two_handles();
    let now = Clock::system().now();
    let job = JobSpec::new("q", "k", json!(1)).validate(now, &Limits::default()).unwrap();
    let id = job.id.clone();
    a.job_insert_many(JobInsertManyParams { jobs: vec![job] }).await.unwrap();
    let seen = b.job_get(&id).await.unwrap().expect("visible through the other handle");
    assert_eq!(seen.payload, json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_reach_another_handle() {
    let (_dir, a, b) = two_handles();
    kyu_storetest::observe::stats_reach_other_handles(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_jobs_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kyu.db");
    let id = {
        let s = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let job = JobSpec::new("q", "k", json!({"keep": true})).validate(Clock::system().now(), &Limits::default()).unwrap();
        let id = job.id.clone();
        s.job_insert_many(JobInsertManyParams { jobs: vec![job] }).await.unwrap();
        id
    };
    let s = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    assert_eq!(s.job_get(&id).await.unwrap().unwrap().payload, json!({"keep": true}));
}

#[tokio::test]
async fn unopenable_path_is_a_clear_error() {
    let err = SqliteStore::open("/nonexistent-dir/x/kyu.db", SqliteOptions::default()).err().expect("refused");
    assert!(err.to_string().contains("/nonexistent-dir/x/kyu.db"), "{err}");
}
