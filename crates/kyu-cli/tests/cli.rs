//! Operator commands: output shapes, errors and exit statuses.

use serde_json::json;

use crate::support::Kyu;

#[test]
fn enqueue_status_jobs_queues() {
    let k = Kyu::new();
    assert_eq!(k.ok(&["enqueue", "mail", "send", r#"{"to":"a@example.com"}"#, "--id", "m1"]).trim(), "m1");
    let job = k.json(&["enqueue", "mail", "send", "{}", "--priority", "5", "--tag", "vip", "--delay", "1h"]);
    assert_eq!(job["state"], "scheduled");
    assert_eq!(job["priority"], 5);
    assert_eq!(job["tags"], json!(["vip"]));
    let dup = k.json(&["enqueue", "mail", "send", "{}", "--id", "m1"]);
    assert_eq!(dup["duplicate"], true);
    assert_eq!(dup["payload"], json!({"to": "a@example.com"}));

    let m1 = k.job("m1");
    for field in ["id", "queue", "kind", "payload", "checkpoint", "state", "priority", "run_at", "attempt", "max_attempts",
        "backoff", "timeout_ms", "errors", "result", "progress", "tags", "created_at", "started_at", "finished_at"]
    {
        assert!(m1.get(field).is_some(), "job JSON lacks `{field}`");
    }
    assert_eq!(m1["state"], "queued");
    assert!(m1["created_at"].as_str().unwrap().ends_with('Z'));

    let human = k.ok(&["status", "m1"]);
    assert!(human.contains("state            queued"), "{human}");
    let list = k.json(&["jobs", "--queue", "mail"]);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    assert!(list.get("next_cursor").is_some());
    let page = k.json(&["jobs", "--limit", "1"]);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let next = k.json(&["jobs", "--limit", "1", "--cursor", &cursor]);
    assert_ne!(next["jobs"][0]["id"], page["jobs"][0]["id"]);
    let queues = k.json(&["queues"]);
    assert_eq!(queues["queues"][0]["name"], "mail");
    assert_eq!(queues["queues"][0]["counts"]["queued"], 1);
    assert_eq!(queues["queues"][0]["counts"]["scheduled"], 1);
    assert!(k.ok(&["queues"]).contains("QUEUED"));
}

#[test]
fn bad_input_is_refused_with_clear_errors_and_statuses() {
    let k = Kyu::new();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["enqueue", "q", "k", "{not json"], 2, "payload is not valid JSON"),
        (&["enqueue", "bad queue!", "k"], 2, "queue name"),
        (&["enqueue", "q", "bad kind"], 2, "kind"),
        (&["enqueue", "q", "k", "--delay", "soon"], 2, "not a duration"),
        (&["enqueue", "q", "k", "--max-attempts", "0"], 2, "max_attempts"),
        (&["enqueue", "q", "k", "--depends-on", "ghost"], 1, "job `ghost` (depends_on[0]) not found"),
        (&["status", "ghost"], 1, "not found"),
        (&["cancel", "ghost"], 1, "not found"),
        (&["jobs", "--state", "sleeping"], 2, "unknown state"),
        (&["work"], 2, "COMMAND"),
        (&["frobnicate"], 2, "unrecognized subcommand"),
    ];
    for (args, code, needle) in cases {
        let out = k.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "kyu {args:?}: {stderr}");
        assert!(stderr.contains(needle), "kyu {args:?}: expected `{needle}` in: {stderr}");
    }
    // Nothing was half-written by the refusals.
    assert_eq!(k.json(&["jobs"])["jobs"].as_array().unwrap().len(), 0);
}

#[test]
fn payload_from_stdin_cancel_retry_pause() {
    let k = Kyu::new();
    let mut child = k
        .command(&["enqueue", "q", "k", "-", "--id", "s1", "--max-attempts", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(br#"{"from":"stdin"}"#).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(k.job("s1")["payload"], json!({"from": "stdin"}));

    assert_eq!(k.json(&["cancel", "s1"])["state"], "cancelled");
    assert_eq!(k.run(&["cancel", "s1"]).status.code(), Some(1), "a terminal job cannot be cancelled");
    assert_eq!(k.json(&["retry", "s1"])["state"], "queued");
    assert_eq!(k.run(&["retry", "s1"]).status.code(), Some(1), "only failed or cancelled jobs are retried");
    assert_eq!(k.json(&["pause", "q"])["paused"], true);
    assert_eq!(k.json(&["queues"])["queues"][0]["paused"], true);
    assert_eq!(k.json(&["resume", "q"])["paused"], false);
    k.ok(&["cancel", "s1"]);
    k.ok(&["delete", "s1"]);
    assert_eq!(k.run(&["status", "s1"]).status.code(), Some(1));
}

#[test]
fn schedules_from_the_cli() {
    let k = Kyu::new();
    let s = k.json(&["schedule", "set", "nightly", "--cron", "0 3 * * *", "--timezone", "Asia/Seoul", "--queue", "reports", "--kind", "build", "--payload", r#"{"full":true}"#]);
    assert_eq!((s["name"].as_str(), s["timezone"].as_str()), (Some("nightly"), Some("Asia/Seoul")));
    assert!(s["next_run_at"].as_str().unwrap().ends_with("T18:00:00.000Z"), "03:00 in Seoul is 18:00 UTC: {s}");
    assert_eq!(k.json(&["schedule", "list"])["schedules"][0]["job"]["payload"], json!({"full": true}));
    assert!(k.ok(&["schedule", "show", "nightly"]).contains("0 3 * * *"));
    let bad = k.run(&["schedule", "set", "x", "--cron", "at noon", "--kind", "k"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cron"));
    k.ok(&["schedule", "delete", "nightly"]);
    assert_eq!(k.run(&["schedule", "show", "nightly"]).status.code(), Some(1));
}
