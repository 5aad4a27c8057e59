//! `kyu server` as a real process, driven over HTTP, on both backends.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Kyu, heavy, http, wait_until};

fn ok(expected: u16, (status, body): (u16, Value)) -> Value {
    assert_eq!(status, expected, "answer: {body}");
    body
}

fn error_code(expected_status: u16, (status, body): (u16, Value)) -> String {
    assert_eq!(status, expected_status, "answer: {body}");
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("not the error shape: {body}"));
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "error without a message: {body}");
    code.to_owned()
}

/// Every endpoint, the error shape for bad input, and both long polls.
fn walkthrough(k: &Kyu) {
    let s = k.server("server", &[]);
    // Enqueue, duplicate, batch, flow.
    let job = ok(201, s.call("POST", "/v1/jobs", Some(r#"{"queue":"api","kind":"k","id":"a1","payload":{"x":1},"tags":["t1"]}"#)));
    assert_eq!(job["state"], "queued");
    let dup = ok(200, s.call("POST", "/v1/jobs", Some(r#"{"queue":"api","kind":"k","id":"a1"}"#)));
    assert_eq!(dup["duplicate"], true);
    let b = ok(201, s.call("POST", "/v1/jobs/batch", Some(r#"{"jobs":[{"queue":"api","kind":"k","id":"b1"},{"queue":"api","kind":"k","id":"b2","delay_ms":3600000}]}"#)));
    assert_eq!(b["ids"], json!(["b1", "b2"]));
    assert_eq!(b["jobs"][1]["state"], "scheduled");
    let f = ok(201, s.call("POST", "/v1/flows", Some(r#"{"job":{"queue":"flow","kind":"parent","id":"p"},"children":[{"job":{"queue":"flow","kind":"child","id":"c1"}},{"job":{"queue":"flow","kind":"child","id":"c2"}}]}"#)));
    assert_eq!(f["root"], "p");
    assert_eq!(f["ids"], json!(["c1", "c2", "p"]));
    let p = ok(200, s.call("GET", "/v1/jobs/p", None));
    assert_eq!((p["state"].as_str(), p["pending_dependencies"].as_i64()), (Some("waiting"), Some(2)));

    // Reads.
    let list = ok(200, s.call("GET", "/v1/jobs?queue=api&limit=2", None));
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    assert!(list["next_cursor"].is_string());
    let tagged = ok(200, s.call("GET", "/v1/jobs?tag=t1", None));
    assert_eq!(tagged["jobs"][0]["id"], "a1");
    let queues = ok(200, s.call("GET", "/v1/queues", None));
    assert!(queues["queues"].as_array().unwrap().iter().any(|q| q["name"] == "api"));
    let (st, metrics) = s.call("GET", "/metrics", None);
    assert_eq!(st, 200);
    assert!(metrics.as_str().unwrap().contains(r#"kyu_queue_jobs{queue="api",state="queued"} 2"#), "{metrics}");
    let (st, page) = s.call("GET", "/", None);
    assert_eq!(st, 200);
    assert!(page.as_str().unwrap().contains("Queues"));
    ok(200, s.call("GET", "/healthz", None));
    let doc = ok(200, s.call("GET", "/v1/openapi.json", None));
    assert!(doc["paths"]["/v1/claim"]["post"].is_object());

    // The worker protocol.
    let claimed = ok(200, s.call("POST", "/v1/claim", Some(r#"{"queues":["api"],"worker":"w1","max":10,"lease_ms":30000}"#)));
    let jobs = claimed["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 2, "a1 and b1 (b2 is delayed)");
    let (a1, b1) = (&jobs[0], &jobs[1]);
    let tok = |j: &Value| j["token"].as_str().unwrap().to_owned();
    let hb = ok(200, s.call("POST", "/v1/jobs/a1/heartbeat", Some(&json!({"token": tok(a1), "lease_ms": 60000}).to_string())));
    assert_eq!(hb["cancel_requested"], false);
    ok(204, s.call("POST", "/v1/jobs/a1/checkpoint", Some(&json!({"token": tok(a1), "checkpoint": {"step": 2}}).to_string())));
    ok(204, s.call("POST", "/v1/jobs/a1/progress", Some(&json!({"token": tok(a1), "progress": 50}).to_string())));
    let done = ok(200, s.call("POST", "/v1/jobs/a1/complete", Some(&json!({"token": tok(a1), "result": {"ok": true}}).to_string())));
    assert_eq!((done["state"].as_str(), done["checkpoint"]["step"].as_i64(), done["progress"].as_i64()), (Some("completed"), Some(2), Some(50)));
    assert_eq!(error_code(409, s.call("POST", "/v1/jobs/a1/complete", Some(&json!({"token": tok(a1)}).to_string()))), "conflict");
    let failed = ok(200, s.call("POST", "/v1/jobs/b1/fail", Some(&json!({"token": tok(b1), "error": "nope", "retry": false}).to_string())));
    assert_eq!(failed["state"], "failed");
    assert_eq!(ok(200, s.call("POST", "/v1/jobs/b1/retry", None))["state"], "queued");
    let again = ok(200, s.call("POST", "/v1/claim", Some(r#"{"queues":["api"],"worker":"w1"}"#)));
    let b1 = again["jobs"][0].clone();
    let snoozed = ok(200, s.call("POST", "/v1/jobs/b1/snooze", Some(&json!({"token": tok(&b1), "delay_ms": 3600000}).to_string())));
    assert_eq!((snoozed["state"].as_str(), snoozed["attempt"].as_i64()), (Some("scheduled"), Some(0)));
    assert_eq!(ok(200, s.call("POST", "/v1/jobs/b1/cancel", None))["state"], "cancelled");
    assert_eq!(ok(200, s.call("POST", "/v1/jobs/retry", Some(r#"{"state":"cancelled","queue":"api"}"#)))["retried"], 1);
    ok(200, s.call("POST", "/v1/jobs/b1/cancel", None));
    ok(204, s.call("DELETE", "/v1/jobs/b1", None));
    assert_eq!(error_code(404, s.call("GET", "/v1/jobs/b1", None)), "not_found");

    // Queues.
    let q = ok(200, s.call("PATCH", "/v1/queues/api", Some(r#"{"concurrency":3,"rate_limit":{"max":10,"per_ms":1000}}"#)));
    assert_eq!((q["concurrency"].as_i64(), q["rate_limit"]["max"].as_i64()), (Some(3), Some(10)));
    let q = ok(200, s.call("PATCH", "/v1/queues/api", Some(r#"{"concurrency":null}"#)));
    assert!(q["concurrency"].is_null() && q["rate_limit"]["max"] == 10, "null clears, absent keeps: {q}");
    assert_eq!(ok(200, s.call("POST", "/v1/queues/api/pause", None))["paused"], true);
    assert_eq!(ok(200, s.call("POST", "/v1/queues/api/resume", None))["paused"], false);

    // Many reports in one request, each answered in its own slot.
    ok(201, s.call("POST", "/v1/jobs/batch", Some(r#"{"jobs":[{"queue":"rep","kind":"k","id":"r1"},{"queue":"rep","kind":"k","id":"r2","max_attempts":1},{"queue":"rep","kind":"k","id":"r3"}]}"#)));
    let got = ok(200, s.call("POST", "/v1/claim", Some(r#"{"queues":["rep"],"worker":"w","max":3}"#)));
    let tok_of = |id: &str| got["jobs"].as_array().unwrap().iter().find(|j| j["id"] == id).unwrap()["token"].as_str().unwrap().to_owned();
    let batch = json!({"reports": [
        {"outcome": "complete", "id": "r1", "token": tok_of("r1"), "result": 1},
        {"outcome": "fail", "id": "r2", "token": tok_of("r2"), "error": "no", "retry": false},
        {"outcome": "complete", "id": "r3", "token": "forged", "result": 3},
    ]});
    let answer = ok(200, s.call("POST", "/v1/reports", Some(&batch.to_string())));
    assert_eq!(answer["results"][0], json!({"id": "r1", "state": "completed"}));
    assert_eq!(answer["results"][1], json!({"id": "r2", "state": "failed"}));
    assert_eq!(answer["results"][2]["error"]["code"], "conflict", "{answer}");
    assert_eq!(ok(200, s.call("GET", "/v1/jobs/r3", None))["state"], "running", "the refused report changed nothing");
    error_code(422, s.call("POST", "/v1/reports", Some(r#"{"reports":[{"outcome":"explode","id":"r3","token":"t"}]}"#)));
    error_code(422, s.call("POST", "/v1/reports", Some(r#"{"reports":[{"outcome":"snooze","id":"r3","token":"t","delay_ms":0,"extra":1}]}"#)));

    // Reports carried by the next claim: applied first, answered in the claim's answer.
    ok(201, s.call("POST", "/v1/jobs/batch", Some(r#"{"jobs":[{"queue":"carry","kind":"k","id":"k1"},{"queue":"carry","kind":"k","id":"k2"}]}"#)));
    let first = ok(200, s.call("POST", "/v1/claim", Some(r#"{"queues":["carry"],"worker":"w","max":1}"#)));
    assert!(first.get("reports").is_none() && first["jobs"][0]["id"] == "k1", "no reports given, none answered: {first}");
    let carried = json!({"queues": ["carry"], "worker": "w", "max": 5, "reports": [
        {"outcome": "complete", "id": "k1", "token": first["jobs"][0]["token"], "result": 1},
        {"outcome": "complete", "id": "r3", "token": "forged", "result": 3},
    ]});
    let next = ok(200, s.call("POST", "/v1/claim", Some(&carried.to_string())));
    assert_eq!(next["reports"][0], json!({"id": "k1", "state": "completed"}), "{next}");
    assert_eq!(next["reports"][1]["error"]["code"], "conflict", "{next}");
    assert_eq!(next["jobs"].as_array().map(|j| j.iter().map(|j| j["id"].clone()).collect::<Vec<_>>()), Some(vec![json!("k2")]));
    let bad = r#"{"queues":["carry"],"worker":"w","reports":[{"outcome":"snooze","id":"k2","token":"t","delay_ms":-1}]}"#;
    let (status, body) = s.call("POST", "/v1/claim", Some(bad));
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.starts_with("reports[0].delay_ms:")), "{body}");

    // Schedules.
    let sched = ok(200, s.call("PUT", "/v1/schedules/nightly", Some(r#"{"cron":"0 3 * * *","timezone":"Europe/Paris","job":{"queue":"cron","kind":"report","payload":{"full":true}}}"#)));
    assert_eq!((sched["name"].as_str(), sched["timezone"].as_str(), sched["enabled"].as_bool()), (Some("nightly"), Some("Europe/Paris"), Some(true)));
    assert!(sched["next_run_at"].as_str().is_some_and(|t| t.ends_with(":00:00.000Z")), "{sched}");
    assert_eq!(ok(200, s.call("GET", "/v1/schedules", None))["schedules"][0]["name"], "nightly");
    assert_eq!(ok(200, s.call("GET", "/v1/schedules/nightly", None))["cron"], "0 3 * * *");
    error_code(422, s.call("PUT", "/v1/schedules/bad", Some(r#"{"cron":"every day","job":{"kind":"k"}}"#)));
    error_code(422, s.call("PUT", "/v1/schedules/bad", Some(r#"{"cron":"* * * * *","timezone":"Mars/Base","job":{"kind":"k"}}"#)));
    ok(204, s.call("DELETE", "/v1/schedules/nightly", None));
    error_code(404, s.call("GET", "/v1/schedules/nightly", None));

    // Long polls: a claim waits for an enqueue; a result waits for a completion.
    // The claimer is listed in /v1/workers once its claim is in the
    // server: then the enqueue must wake it.
    let url = s.url.clone();
    let claimer = std::thread::spawn(move || {
        let started = Instant::now();
        let answer = http(&url, "POST", "/v1/claim", None, Some(r#"{"queues":["lp"],"worker":"w2","wait_ms":20000}"#));
        (answer, started.elapsed())
    });
    wait_until("the claim to be waiting", Duration::from_secs(10), || {
        s.call("GET", "/v1/workers", None).1["workers"].as_array().is_some_and(|w| w.iter().any(|w| w["name"] == "w2"))
    });
    ok(201, s.call("POST", "/v1/jobs", Some(r#"{"queue":"lp","kind":"k","id":"lp1"}"#)));
    let (answer, took) = claimer.join().unwrap();
    let claimed = ok(200, answer);
    assert_eq!(claimed["jobs"][0]["id"], "lp1", "woken by the enqueue");
    assert!(took < Duration::from_secs(10));
    let token = claimed["jobs"][0]["token"].as_str().unwrap().to_owned();
    // A result long poll waits while the job runs (and answers its state
    // when its wait is over), and answers as soon as the job completes.
    let started = Instant::now();
    let still = ok(200, s.call("GET", "/v1/jobs/lp1/result?wait_ms=300", None));
    assert_eq!(still["state"], "running");
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    let url = s.url.clone();
    let waiter = std::thread::spawn(move || http(&url, "GET", "/v1/jobs/lp1/result?wait_ms=20000", None, None));
    ok(200, s.call("POST", "/v1/jobs/lp1/complete", Some(&json!({"token": token, "result": 7}).to_string())));
    let waited = ok(200, waiter.join().unwrap());
    assert_eq!((waited["state"].as_str(), waited["result"].as_i64()), (Some("completed"), Some(7)));
    let quick = ok(200, s.call("POST", "/v1/claim", Some(r#"{"queues":["empty"],"worker":"w","wait_ms":100}"#)));
    assert_eq!(quick["jobs"], json!([]));

    // Bad input: a clear 4xx in the error shape, never a 5xx, nothing written.
    let bad: &[(&str, &str, Option<&str>, u16)] = &[
        ("POST", "/v1/jobs", Some("{not json"), 400),
        ("POST", "/v1/jobs", Some(r#"{"kind":"k","max_atempts":3}"#), 422),
        ("POST", "/v1/jobs", Some(r#"{"kind":"bad kind"}"#), 422),
        ("POST", "/v1/jobs", Some(r#"{"kind":"k","depends_on":["ghost"]}"#), 404),
        ("POST", "/v1/jobs", Some(r#"{"kind":"k","priority":"high"}"#), 422),
        ("POST", "/v1/jobs/batch", Some(r#"{"jobs":[{"kind":"k"},{"kind":"bad kind"}]}"#), 422),
        ("POST", "/v1/jobs/batch", Some(r#"{"jobs":[]}"#), 422),
        ("POST", "/v1/claim", Some(r#"{"queues":["q"],"worker":"w","max":0}"#), 422),
        ("POST", "/v1/claim", Some(r#"{"queues":["q"],"worker":"w","wait_ms":999999}"#), 422),
        ("POST", "/v1/claim", Some(r#"{"queues":[],"worker":"w"}"#), 422),
        ("POST", "/v1/jobs/lp1/complete", Some(r#"{"token":"forged"}"#), 409),
        ("POST", "/v1/jobs/ghost/heartbeat", Some(r#"{"token":"t"}"#), 404),
        ("GET", "/v1/jobs?state=sleeping", None, 422),
        ("GET", "/v1/jobs?limit=0", None, 422),
        ("GET", "/v1/jobs?cursor=zzz", None, 422),
        ("GET", "/v1/jobs/lp1/result?wait_ms=-1", None, 400),
        ("PATCH", "/v1/queues/api", Some(r#"{"concurrency":-1}"#), 422),
        ("PATCH", "/v1/queues/api", Some(r#"{"rate_limit":{"max":0,"per_ms":1}}"#), 422),
        ("POST", "/v1/queues/bad%20queue/pause", None, 400),
    ];
    for (method, path, body, status) in bad {
        error_code(*status, s.call(method, path, *body));
    }
    let big_payload = format!(r#"{{"kind":"k","id":"huge","payload":"{}"}}"#, "x".repeat(1_100_000));
    assert_eq!(error_code(413, s.call("POST", "/v1/jobs", Some(&big_payload))), "too_large");
    let big_body = format!(r#"{{"jobs":[{{"kind":"k","payload":"{}"}}]}}"#, "x".repeat(17 << 20));
    assert_eq!(error_code(413, s.call("POST", "/v1/jobs/batch", Some(&big_body))), "too_large");
    error_code(404, s.call("GET", "/v1/jobs/huge", None));
    ok(200, s.call("GET", "/healthz", None)); // still serving
}

#[test]
fn server_walkthrough_sqlite() {
    let _h = heavy();
    walkthrough(&Kyu::new());
}

#[test]
fn server_walkthrough_postgres() {
    let _h = heavy();
    walkthrough(&Kyu::postgres());
}

#[test]
fn auth_roles() {
    let k = Kyu::new();
    let s = k.server("auth", &["--token", "admin:admin-secret", "--token", "producer:prod-secret", "--token", "worker:work-secret"]);
    let call = |token: Option<&str>, method: &str, path: &str, body: Option<&str>| http(&s.url, method, path, token, body);
    assert_eq!(error_code(401, call(None, "GET", "/v1/jobs", None)), "unauthorized");
    assert_eq!(error_code(401, call(Some("wrong-secret"), "GET", "/v1/jobs", None)), "unauthorized");
    assert_eq!(call(None, "GET", "/healthz", None).0, 200, "liveness needs no token");
    let job = r#"{"queue":"q","kind":"k","id":"j1"}"#;
    assert_eq!(error_code(403, call(Some("work-secret"), "POST", "/v1/jobs", Some(job))), "forbidden");
    assert_eq!(call(Some("prod-secret"), "POST", "/v1/jobs", Some(job)).0, 201);
    assert_eq!(call(Some("prod-secret"), "GET", "/v1/jobs/j1", None).0, 200, "producers read");
    let claim = r#"{"queues":["q"],"worker":"w"}"#;
    assert_eq!(error_code(403, call(Some("prod-secret"), "POST", "/v1/claim", Some(claim))), "forbidden");
    let claimed = call(Some("work-secret"), "POST", "/v1/claim", Some(claim));
    assert_eq!(claimed.0, 200);
    assert_eq!(call(Some("work-secret"), "GET", "/v1/jobs/j1", None).0, 200, "workers read");
    assert_eq!(error_code(403, call(Some("work-secret"), "POST", "/v1/jobs/j1/cancel", None)), "forbidden");
    assert_eq!(error_code(403, call(Some("prod-secret"), "POST", "/v1/queues/q/pause", None)), "forbidden");
    assert_eq!(call(Some("admin-secret"), "POST", "/v1/jobs/j1/cancel", None).0, 200);
    assert_eq!(call(Some("admin-secret"), "POST", "/v1/queues/q/pause", None).0, 200);
    // The console sends a visitor without a session to its login form.
    assert_eq!(call(None, "GET", "/", None).0, 303);
    let (st, page) = call(None, "GET", "/login", None);
    assert_eq!(st, 200);
    assert!(page.as_str().unwrap().contains("oken"), "a login form asking for a token");
    // The CLI passes KYU_TOKEN.
    let out = k.command(&["--url", &s.url, "jobs"]).env_remove("KYU_DATABASE_URL").env("KYU_TOKEN", "prod-secret").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = k.command(&["--url", &s.url, "cancel", "j1"]).env("KYU_TOKEN", "prod-secret").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn refuses_to_listen_beyond_loopback_without_tokens() {
    let k = Kyu::new();
    let out = k.run(&["server", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure"));
}

#[test]
fn sigterm_stops_the_server_cleanly_during_a_long_poll() {
    let k = Kyu::new();
    let mut s = k.server("shutdown", &[]);
    let url = s.url.clone();
    let poller = std::thread::spawn(move || http(&url, "POST", "/v1/claim", None, Some(r#"{"queues":["q"],"worker":"w","wait_ms":60000}"#)));
    wait_until("the long poll to be in the server", Duration::from_secs(10), || {
        s.call("GET", "/v1/workers", None).1["workers"].as_array().is_some_and(|w| w.iter().any(|w| w["name"] == "w"))
    });
    let started = Instant::now();
    assert!(s.stop().success(), "exit 0 on SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(10));
    let (status, body) = poller.join().unwrap();
    assert_eq!((status, body["jobs"].clone()), (200, json!([])), "the long poll answered");
}

/// Two servers on one PostgreSQL, a worker on each: every job completes
/// exactly once and both servers hand out work.
#[test]
fn two_servers_share_one_postgres() {
    let _h = heavy();
    let k = Kyu::postgres();
    k.ok(&["queues"]); // create the schema once
    let s1 = k.server("s1", &[]);
    let s2 = k.server("s2", &[]);
    let n = 400;
    let jobs: Vec<String> = (0..n).map(|i| format!(r#"{{"queue":"shared","kind":"k","id":"j{i}","payload":{i}}}"#)).collect();
    let (st, _) = http(&s1.url, "POST", "/v1/jobs/batch", None, Some(&format!(r#"{{"jobs":[{}]}}"#, jobs.join(","))));
    assert_eq!(st, 201);
    let log = k.path("runs.txt");
    let script = format!(r#"echo "$KYU_JOB_ID" >> {}; cat"#, log.display());
    let w1 = k.spawn("w1", &["--url", &s1.url, "work", "-q", "shared", "-c", "4", "--name", "via-s1", "--", "sh", "-c", &script]);
    let w2 = k.spawn("w2", &["--url", &s2.url, "work", "-q", "shared", "-c", "4", "--name", "via-s2", "--", "sh", "-c", &script]);
    k.wait_count("completed", n);
    assert!(crate::support::terminate(w1).success());
    assert!(crate::support::terminate(w2).success());
    let runs = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = runs.lines().collect();
    let unique: std::collections::HashSet<&str> = lines.iter().copied().collect();
    assert_eq!((lines.len(), unique.len()), (n, n), "each job ran exactly once");
    let page = k.json(&["jobs", "--limit", "1000"]);
    let by: std::collections::HashSet<String> = page["jobs"].as_array().unwrap().iter().map(|j| j["worker"].as_str().unwrap().to_owned()).collect();
    assert_eq!(by.len(), 2, "both servers handed out work: {by:?}");
    drop((s1, s2));
}

/// The protocol from another language: the stdlib-only Python worker in
/// examples/ claims, heartbeats, checkpoints, resumes and completes.
#[test]
fn python_worker_example() {
    let k = Kyu::new();
    let s = k.server("py", &[]);
    ok(201, s.call("POST", "/v1/jobs", Some(r#"{"queue":"demo","kind":"sum","id":"py1","payload":{"numbers":[1,2,3]}}"#)));
    ok(201, s.call("POST", "/v1/jobs", Some(r#"{"queue":"demo","kind":"sum","id":"py2","payload":{"numbers":[10,20],"fail_once_at":"transform"}}"#)));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python_worker.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--queue", "demo", "--max-jobs", "3"])
        .env("KYU_URL", &s.url)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let py1 = ok(200, s.call("GET", "/v1/jobs/py1", None));
    assert_eq!(py1["result"], json!({"sum": 12, "resumed_from": [], "attempt": 1}), "{stdout}");
    let py2 = ok(200, s.call("GET", "/v1/jobs/py2", None));
    assert_eq!(py2["state"], "completed", "{stdout}");
    assert_eq!(py2["result"], json!({"sum": 60, "resumed_from": ["fetch"], "attempt": 2}), "resumed after the failed step: {stdout}");
    assert_eq!(py2["errors"][0]["message"], "simulated failure in transform");
    assert_eq!(py2["progress"], json!({"step": "store"}));
}
