//! Worker processes sharing one PostgreSQL database.

use std::collections::HashMap;

use crate::support::{Kyu, heavy, terminate};

/// Four worker processes share 10,000 jobs; one is SIGKILLed midway. Every
/// job completes, none is lost, and only the killed worker's in-flight jobs
/// ran twice (their lost attempt counted as "lease expired"): those running
/// and those finished whose reports had not committed yet (at most two
/// claims' worth, riding with the claims in flight). Jobs it held ahead but
/// had not started run once, elsewhere.
#[test]
fn four_workers_ten_thousand_jobs_one_killed() {
    let _heavy = heavy();
    let k = Kyu::postgres();
    let n = 10_000;
    let lines: Vec<String> = (0..n).map(|i| format!(r#"{{"queue":"many","kind":"job","id":"j{i}","payload":{i}}}"#)).collect();
    std::fs::write(k.path("jobs.jsonl"), lines.join("\n")).unwrap();
    k.ok(&["batch", "jobs.jsonl"]);
    assert_eq!(k.count("queued"), n);

    let mut workers = Vec::new();
    for w in 0..4 {
        let log = k.path(&format!("runs-{w}.txt"));
        let script = format!(r#"echo "$KYU_JOB_ID" >> {}; cat"#, log.display());
        workers.push(k.spawn(&format!("w{w}"), &["work", "-q", "many", "-c", "4", "--lease", "2s", "--", "sh", "-c", &script]));
    }
    k.wait_count("completed", 2_000);
    let mut victim = workers.remove(0);
    victim.kill().unwrap();
    victim.wait().unwrap();
    k.wait_count("completed", n as usize);
    for w in workers {
        assert!(terminate(w).success());
    }
    assert_eq!(k.count("completed"), n);
    for state in ["queued", "scheduled", "running", "failed", "waiting", "cancelled"] {
        assert_eq!(k.count(state), 0, "no job left {state}");
    }
    let mut runs: HashMap<String, usize> = HashMap::new();
    for w in 0..4 {
        let text = std::fs::read_to_string(k.path(&format!("runs-{w}.txt"))).unwrap_or_default();
        for id in text.lines() {
            *runs.entry(id.to_string()).or_default() += 1;
        }
    }
    assert_eq!(runs.len(), n as usize, "every job ran");
    let twice: Vec<&String> = runs.iter().filter(|(_, c)| **c > 1).map(|(id, _)| id).collect();
    assert!(twice.len() <= 3 * 4, "only the killed worker's in-flight jobs ran again: {twice:?}");
    for id in twice {
        let job = k.job(id);
        assert_eq!(job["state"], "completed");
        assert_eq!(job["attempt"], 2, "{job}");
        assert_eq!(job["errors"][0]["message"], "lease expired");
    }
}

/// An idle worker polling once a minute starts a job enqueued by another
/// process at once: LISTEN/NOTIFY does the work, not the poller. (The bound
/// is far under the poll interval, not a latency target: latency is
/// measured by `kyu bench`, W3.)
#[test]
fn idle_worker_is_woken_by_notify_not_by_its_poll() {
    let _heavy = heavy();
    let k = Kyu::postgres();
    k.ok(&["queues"]); // creates the schema before the worker starts
    let worker = k.spawn("idle", &["work", "-q", "wake", "-c", "1", "--poll", "60s", "--", "cat"]);
    k.wait_log("idle", "listening for notifications");
    let mut gaps = Vec::new();
    for i in 0..5 {
        let id = format!("wake-{i}");
        k.ok(&["enqueue", "wake", "ping", "1", "--id", &id]);
        k.ok(&["result", &id, "--wait", "10s"]);
        let job = k.job(&id);
        let created = job["created_at"].as_str().unwrap().to_string();
        let started = job["started_at"].as_str().unwrap().to_string();
        gaps.push(ms(&started) - ms(&created));
    }
    assert!(terminate(worker).success());
    gaps.sort();
    eprintln!("enqueue-to-start gaps (ms): {gaps:?}");
    assert!(gaps[gaps.len() - 1] <= 5_000, "woken within seconds, not the 60 s poll: gaps (ms) {gaps:?}");
}

fn ms(rfc3339: &str) -> i64 {
    // 2026-11-21T20:56:58.123Z: seconds of the day are enough for gaps under a day.
    let t = &rfc3339[11..23];
    let (h, m, s) = (&t[0..2], &t[3..5], &t[6..12]);
    (h.parse::<i64>().unwrap() * 3600 + m.parse::<i64>().unwrap() * 60) * 1000 + (s.parse::<f64>().unwrap() * 1000.0).round() as i64
}
