//! `kyu bench` runs every workload on both backends and both paths at tiny
//! sizes. It checks that the command works, never how fast.

use crate::support::{Kyu, heavy};

fn tiny(k: &Kyu, via: &str) -> serde_json::Value {
    k.json(&[
        "bench", "--runs", "1", "--workloads", "w1,w2,w3,w4,w5", "--jobs", "200", "--single-jobs", "20",
        "--latency-jobs", "5", "--retained", "300", "--children", "50", "--ceiling-secs", "1", "--via", via,
    ])
}

fn check(report: &serde_json::Value, backend: &str, via: &str) {
    assert_eq!((report["backend"].as_str(), report["via"].as_str()), (Some(backend), Some(via)), "{report}");
    let names: Vec<&str> = report["rows"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    for want in ["W1 enqueue", "W1 process", "W2 enqueue", "W3 p50", "W3 p99", "W4 process (empty)", "W4 process (retained)", "W5 parent done", "W5 without parent"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    if backend == "postgresql" {
        for want in ["W1 WAL/job", "W1 commits/job", "W1 dead tuples", "W1 checkpoints", "PostgreSQL ceiling k=100 checkpoints"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }
    assert!(names.iter().any(|n| n.contains("ceiling")), "a baseline from the same run: {names:?}");
    assert!(report["ratios"].as_object().is_some_and(|r| !r.is_empty()));
}

#[test]
fn bench_runs_on_sqlite_both_paths() {
    let _h = heavy();
    let k = Kyu::new();
    check(&tiny(&k, "rust"), "sqlite", "rust");
    check(&tiny(&k, "http"), "sqlite", "http");
}

#[test]
fn bench_runs_on_postgres_both_paths_and_cleans_up() {
    let _h = heavy();
    let k = Kyu::postgres();
    k.ok(&["queues"]); // the schema the database URL names
    check(&tiny(&k, "rust"), "postgresql", "rust");
    check(&tiny(&k, "http"), "postgresql", "http");
}
