//! `kyu work` with real commands, real processes, and a real crash.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Kyu, heavy, kill9, terminate, wait_until};

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
    // Each job takes a little while, so one worker cannot finish them all
    // before the others have started: the race is what is tested.
    let script = format!(r#"echo "$KYU_JOB_ID" >> {}; sleep 0.05"#, log.display());
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

/// Whether a process is running (a zombie is not: it waits to be reaped).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| !s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

fn pids(k: &Kyu, file: &str) -> Vec<u32> {
    std::fs::read_to_string(k.path(file)).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// A command that traps SIGTERM (noting it in a file), starts a child, and
/// waits for it: what it does when told to stop shows in `term.txt`, and
/// its child's pid is in `kids.txt`.
fn trapping_command(k: &Kyu) -> String {
    format!(
        r#"trap 'echo "TERM $KYU_JOB_ID" >> {term}; exit 143' TERM; sleep 60 & echo $! >> {kids}; echo "started" >&2; wait"#,
        term = k.path("term.txt").display(),
        kids = k.path("kids.txt").display()
    )
}

#[test]
fn timeout_stops_the_whole_group_sigterm_first() {
    let k = Kyu::new();
    k.ok(&["enqueue", "q", "slow", "{}", "--id", "t1", "--max-attempts", "1", "--timeout", "1s"]);
    let started = Instant::now();
    k.ok(&["work", "-q", "q", "--max-jobs", "1", "--kill-grace", "5s", "--", "sh", "-c", &trapping_command(&k)]);
    assert!(started.elapsed() < Duration::from_secs(20));
    let job = k.job("t1");
    assert_eq!((job["state"].as_str(), job["errors"][0]["message"].as_str()), (Some("failed"), Some("timeout")));
    assert_eq!(std::fs::read_to_string(k.path("term.txt")).unwrap().trim(), "TERM t1", "the trap ran");
    let kids = pids(&k, "kids.txt");
    assert_eq!(kids.len(), 1);
    assert!(!running(kids[0]), "the command's child is gone with it");
    assert!(k.ok(&["log", "t1"]).contains("started"), "stderr went to the job log");
}

#[test]
fn a_command_that_ignores_sigterm_is_killed_after_the_grace() {
    let k = Kyu::new();
    k.ok(&["enqueue", "q", "stubborn", "{}", "--id", "s1", "--max-attempts", "1", "--timeout", "500ms"]);
    let script = format!(r#"trap '' TERM; sleep 60 & echo $! >> {}; wait; wait"#, k.path("kids.txt").display());
    let started = Instant::now();
    k.ok(&["work", "-q", "q", "--max-jobs", "1", "--kill-grace", "1s", "--", "sh", "-c", &script]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(k.job("s1")["errors"][0]["message"], "timeout");
    assert!(pids(&k, "kids.txt").iter().all(|p| !running(*p)), "SIGKILL after the kill grace");
}

#[test]
fn cancel_and_worker_sigterm_stop_the_group() {
    let k = Kyu::new();
    k.ok(&["enqueue", "q", "long", "{}", "--id", "c1"]);
    k.ok(&["enqueue", "q", "long", "{}", "--id", "c2"]);
    let worker = k.spawn("w", &["work", "-q", "q", "-c", "2", "--kill-grace", "5s", "--grace", "500ms", "--", "sh", "-c", &trapping_command(&k)]);
    k.wait_count("running", 2);
    wait_until("both commands started", Duration::from_secs(10), || pids(&k, "kids.txt").len() == 2);
    // An operator's cancel: the command gets SIGTERM, its group goes, the job ends cancelled.
    k.ok(&["cancel", "c1"]);
    wait_until("c1 cancelled", Duration::from_secs(30), || k.job("c1")["state"] == "cancelled");
    assert!(std::fs::read_to_string(k.path("term.txt")).unwrap().contains("TERM c1"));
    // SIGTERM to the worker: after its grace, c2's command gets SIGTERM too,
    // and the job is released (attempt given back) for another worker.
    assert!(terminate(worker).success());
    assert!(std::fs::read_to_string(k.path("term.txt")).unwrap().contains("TERM c2"));
    let c2 = k.job("c2");
    assert_eq!((c2["state"].as_str(), c2["attempt"].as_i64()), (Some("queued"), Some(0)), "{c2}");
    assert!(pids(&k, "kids.txt").iter().all(|p| !running(*p)), "no process of either command remains");
}

#[test]
fn killed_worker_leaves_no_command_running_and_jobs_complete_elsewhere() {
    let _heavy = heavy();
    let k = Kyu::new();
    for i in 0..3 {
        k.ok(&["enqueue", "q", "long", "{}", "--id", &format!("k{i}")]);
    }
    let script = format!(r#"if [ "$KYU_ATTEMPT" = 1 ]; then sleep 60 & echo $! >> {}; wait; fi; echo done"#, k.path("kids.txt").display());
    let victim = k.spawn("victim", &["work", "-q", "q", "-c", "3", "--lease", "1s", "--kill-grace", "1s", "--", "sh", "-c", &script]);
    wait_until("the commands started", Duration::from_secs(10), || pids(&k, "kids.txt").len() == 3);
    kill9(victim);
    // The watchdog stops the commands' groups at once.
    wait_until("no command left", Duration::from_secs(10), || pids(&k, "kids.txt").iter().all(|p| !running(*p)));
    // Another worker takes them once their leases run out (its own lease
    // rescue finds them), and stops after those three.
    k.ok(&["work", "-q", "q", "-c", "3", "--max-jobs", "3", "--", "sh", "-c", &script]);
    for i in 0..3 {
        let job = k.job(&format!("k{i}"));
        assert_eq!((job["state"].as_str(), job["attempt"].as_i64(), job["result"].as_str()), (Some("completed"), Some(2), Some("done")), "{job}");
        assert_eq!(job["errors"][0]["message"], "lease expired");
    }
}

#[test]
fn control_lines_decide_retries_snoozes_and_checkpoints() {
    let k = Kyu::new();
    for (id, line) in [
        ("later", r#"{"retry_in_ms": 30000}"#),
        ("never", r#"{"retry": false}"#),
        ("snooze", r#"{"snooze_ms": 60000}"#),
    ] {
        k.ok(&["enqueue", "q", id, "{}", "--id", id]);
        std::fs::write(k.path(&format!("{id}.line")), format!("{line}\n")).unwrap();
    }
    let script = format!(r#"cat {dir}/$KYU_KIND.line >> "$KYU_CONTROL"; echo no >&2; exit 1"#, dir = k.dir.path().display());
    let before = std::time::SystemTime::now();
    k.ok(&["work", "-q", "q", "-c", "3", "--burst", "--", "sh", "-c", &script]);
    let later = k.job("later");
    assert_eq!((later["state"].as_str(), later["attempt"].as_i64()), (Some("scheduled"), Some(1)));
    let run_at = later["run_at"].as_str().unwrap();
    let in_30s = kyu_core::Millis(before.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 + 29_000);
    assert!(kyu_core::Millis::parse(run_at).unwrap() >= in_30s, "retried after 30 s: {run_at}");
    let never = k.job("never");
    assert_eq!((never["state"].as_str(), never["attempt"].as_i64()), (Some("failed"), Some(1)), "no retry though attempts remain");
    let snooze = k.job("snooze");
    assert_eq!((snooze["state"].as_str(), snooze["attempt"].as_i64()), (Some("scheduled"), Some(0)), "no attempt spent");

    // A checkpoint saved by attempt 1 is what attempt 2 starts from.
    k.ok(&["enqueue", "q", "steps", "{}", "--id", "cp", "--backoff", "fixed:0"]);
    let script = r#"if [ -z "$KYU_CHECKPOINT" ]; then echo '{"checkpoint": {"step": 2}}' >> "$KYU_CONTROL"; echo '{"progress": 50}' >> "$KYU_CONTROL"; exit 1; fi; echo "resumed at $KYU_CHECKPOINT""#;
    k.ok(&["work", "-q", "q", "--max-jobs", "2", "--", "sh", "-c", script]);
    let cp = k.job("cp");
    assert_eq!((cp["state"].as_str(), cp["attempt"].as_i64()), (Some("completed"), Some(2)));
    assert_eq!(cp["result"], r#"resumed at {"step":2}"#);
    assert_eq!(cp["progress"], 50);
}

#[test]
fn burst_and_max_jobs_take_what_there_is_and_stop() {
    let k = Kyu::new();
    // An empty queue: exit 0 at once.
    let started = Instant::now();
    k.ok(&["work", "-q", "empty", "--burst", "--", "cat"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    for i in 0..10 {
        k.ok(&["enqueue", "b", "k", &i.to_string()]);
    }
    // Take 4 and stop: exactly 4 were claimed, the rest are untouched.
    k.ok(&["work", "-q", "b", "-c", "2", "--max-jobs", "4", "--", "cat"]);
    assert_eq!((k.count("completed"), k.count("queued")), (4, 6));
    // Drain what is left, then exit 0.
    k.ok(&["work", "-q", "b", "-c", "3", "--burst", "--", "cat"]);
    assert_eq!((k.count("completed"), k.count("queued")), (10, 0));
    let out = k.run(&["work", "-q", "b", "-c", "2", "--batch", "8", "--", "cat"]);
    assert_eq!(out.status.code(), Some(2), "a batch larger than the concurrency is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-jobs"));
}

#[test]
fn leftover_processes_are_stopped_when_the_command_exits() {
    let k = Kyu::new();
    k.ok(&["enqueue", "q", "daemon", "{}", "--id", "d1"]);
    let script = format!(r#"sleep 60 & echo $! >> {}; echo quick"#, k.path("kids.txt").display());
    let started = Instant::now();
    k.ok(&["work", "-q", "q", "--max-jobs", "1", "--kill-grace", "3s", "--", "sh", "-c", &script]);
    assert!(started.elapsed() < Duration::from_secs(10), "the background child's open stdout does not hold the job");
    assert_eq!(k.job("d1")["result"], "quick");
    assert!(pids(&k, "kids.txt").iter().all(|p| !running(*p)), "nothing outlives its job");
}

#[test]
fn a_result_over_the_servers_limit_fails_at_once_without_retry() {
    let k = Kyu::new();
    let server = k.server("server", &[]);
    k.ok(&["--url", &server.url, "enqueue", "q", "big", "{}", "--id", "big"]);
    k.ok(&["--url", &server.url, "enqueue", "q", "small", "{}", "--id", "small"]);
    // The worker's own limit is raised: the server's 1 MiB is what refuses it.
    let script = r#"if [ "$KYU_KIND" = big ]; then head -c 3000000 /dev/zero | tr '\0' x; else echo ok; fi"#;
    k.ok(&["--url", &server.url, "work", "-q", "q", "-c", "2", "--max-result", "10000000", "--max-jobs", "2", "--", "sh", "-c", script]);
    let big = k.json(&["--url", &server.url, "status", "big"]);
    assert_eq!((big["state"].as_str(), big["attempt"].as_i64()), (Some("failed"), Some(1)), "{}", big["errors"]);
    let msg = big["errors"][0]["message"].as_str().unwrap();
    assert!(msg.starts_with("result is 3000002 bytes, over the limit of 1048576") || msg.starts_with("result is 3000000 bytes, over the limit of 1048576"), "{msg}");
    assert_eq!(k.json(&["--url", &server.url, "status", "small"])["state"], "completed", "the other report in the batch went through");
}
