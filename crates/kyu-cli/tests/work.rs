//! `kyu work` with real commands, real processes, and a real crash.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Kyu, heavy, terminate};

#[test]
fn command_success_result_and_environment() {
    let k = Kyu::new();
    k.ok(&["enqueue", "q", "echo", r#"{"n":41}"#, "--id", "e1"]);
    let script = r#"p=$(cat); echo "{\"payload\": $p, \"id\": \"$KYU_JOB_ID\", \"attempt\": $KYU_ATTEMPT, \"kind\": \"$KYU_KIND\"}""#;
    k.ok(&["work", "--queue", "q", "--max-jobs", "1", "--", "sh", "-c", script]);
    let job = k.job("e1");
    assert_eq!(job["state"], "completed");
    assert_eq!(job["result"], json!({"payload": {"n": 41}, "id": "e1", "attempt": 1, "kind": "echo"}));
    // Plain text output becomes a string result.
    k.ok(&["enqueue", "q", "echo", "null", "--id", "e2"]);
    k.ok(&["work", "--queue", "q", "--max-jobs", "1", "--", "echo", "hello world"]);
    assert_eq!(k.job("e2")["result"], "hello world");
    assert_eq!(k.ok(&["result", "e2"]).trim(), "\"hello world\"");
}

#[test]
fn command_failure_keeps_stderr_tail_and_retries_then_fails() {
    let k = Kyu::new();
    k.ok(&["enqueue", "q", "bad", "{}", "--id", "f1", "--max-attempts", "2", "--backoff", "fixed:10ms"]);
    let script = r#"echo "starting" >&2; echo "broke on attempt $KYU_ATTEMPT" >&2; exit 3"#;
    k.ok(&["work", "--queue", "q", "--max-jobs", "2", "--", "sh", "-c", script]);
    let job = k.job("f1");
    assert_eq!(job["state"], "failed");
    assert_eq!(job["attempt"], 2);
    let errors: Vec<&str> = job["errors"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(errors, ["exit status 3: starting\nbroke on attempt 1", "exit status 3: starting\nbroke on attempt 2"]);
    let out = k.run(&["result", "f1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broke on attempt 2"));
}

#[test]
fn timeout_kills_the_command() {
    let k = Kyu::new();
    k.ok(&["enqueue", "q", "slow", "{}", "--id", "t1", "--max-attempts", "1", "--timeout", "200ms"]);
    let started = Instant::now();
    k.ok(&["work", "--queue", "q", "--max-jobs", "1", "--", "sleep", "30"]);
    assert!(started.elapsed() < Duration::from_secs(20), "the command was killed, not waited for");
    let job = k.job("t1");
    assert_eq!(job["state"], "failed");
    assert_eq!(job["errors"][0]["message"], "timeout");
}

#[test]
fn result_wait_sees_another_process_finish_the_job() {
    let k = Kyu::new();
    k.ok(&["enqueue", "q", "k", "7", "--id", "w1"]);
    let waiter = k.command(&["result", "w1", "--wait", "30s"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // The worker runs in another process, whenever the waiter reads: the
    // waiter must see the job finish either way.
    k.ok(&["work", "--queue", "q", "--max-jobs", "1", "--", "cat"]);
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
}

/// The crash test: a worker process is SIGKILLed while it holds jobs. Every
/// job still completes exactly once, by another worker, with the killed
/// attempt counted and recorded as a lost lease.
#[test]
fn sigkilled_worker_jobs_complete_exactly_once_elsewhere() {
    let _heavy = heavy();
    let k = Kyu::new();
    for i in 0..8 {
        k.ok(&["enqueue", "crash", "job", &format!("{{\"i\":{i}}}"), "--id", &format!("j{i}")]);
    }
    let victim = k.spawn("victim", &["work", "-q", "crash", "--concurrency", "3", "--lease", "1s", "--", "sleep", "60"]);
    k.wait_count("running", 3);
    let held: Vec<String> = k.json(&["jobs", "--state", "running"])["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(held.len(), 3);
    let mut victim = victim;
    victim.kill().unwrap(); // SIGKILL: no chance to release anything
    victim.wait().unwrap();

    let log = k.path("runs.txt");
    let script = format!(r#"echo "$KYU_JOB_ID $KYU_ATTEMPT" >> {}; cat"#, log.display());
    let rescuer = k.spawn("rescuer", &["work", "-q", "crash", "--concurrency", "4", "--", "sh", "-c", &script]);
    k.wait_count("completed", 8);
    assert!(terminate(rescuer).success());

    let runs = std::fs::read_to_string(&log).unwrap();
    let mut per_job: HashMap<&str, usize> = HashMap::new();
    for line in runs.lines() {
        *per_job.entry(line.split(' ').next().unwrap()).or_default() += 1;
    }
    for i in 0..8 {
        let id = format!("j{i}");
        let job = k.job(&id);
        assert_eq!(job["state"], "completed", "{job}");
        assert_eq!(job["result"], json!({"i": i}));
        assert_eq!(per_job.get(id.as_str()), Some(&1), "{id} completed exactly once by the rescuer");
        if held.contains(&id) {
            assert_eq!(job["attempt"], 2, "the killed attempt counts: {job}");
            assert_eq!(job["errors"][0]["message"], "lease expired");
            assert_eq!(job["errors"][0]["attempt"], 1);
        } else {
            assert_eq!(job["attempt"], 1);
            assert_eq!(job["errors"], json!([]));
        }
    }
}

/// Several worker processes race for jobs on one file: no job is ever run by
/// two of them.
#[test]
fn racing_worker_processes_never_share_a_job() {
    let _heavy = heavy();
    let k = Kyu::new();
    let n = 150;
    for i in 0..n {
        k.ok(&["enqueue", "race", "job", &i.to_string()]);
    }
    let log = k.path("runs.txt");
    let script = format!(r#"echo "$KYU_JOB_ID" >> {}"#, log.display());
    let workers: Vec<_> = (0..3)
        .map(|w| k.spawn(&format!("w{w}"), &["work", "-q", "race", "--concurrency", "4", "--batch", "2", "--", "sh", "-c", &script]))
        .collect();
    k.wait_count("completed", n);
    for w in workers {
        assert!(terminate(w).success());
    }
    let runs = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = runs.lines().collect();
    let unique: std::collections::HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(lines.len(), n, "every job ran once");
    assert_eq!(unique.len(), n, "no job ran twice");
    let workers: std::collections::HashSet<String> = k.json(&["jobs", "--limit", "1000"])["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["worker"].as_str().unwrap().to_string())
        .collect();
    assert!(workers.len() >= 2, "the work was shared: {workers:?}");
}
