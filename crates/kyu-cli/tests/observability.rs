//! What operators watch, end to end on a real `kyu server`: job events,
//! workers, stats, the change stream, running a schedule now, bulk delete,
//! and `/metrics` as Prometheus' own parser reads it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Kyu, free_port, http, wait_until};

fn ok(expected: u16, (status, body): (u16, Value)) -> Value {
    assert_eq!(status, expected, "answer: {body}");
    body
}

/// The value of one sample line of an exposition (`name{labels} value`).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Prometheus' reference parser (prometheus_client from PyPI, in the
/// test script's virtualenv) reads the whole exposition; returns the
/// family names it found.
fn parse_with_prometheus(text: &str) -> Vec<String> {
    let python = std::env::var("KYU_TEST_PYTHON")
        .expect("KYU_TEST_PYTHON is not set: run the tests with scripts/test, which makes the virtualenv with prometheus_client");
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n";
    let mut child = Command::new(python).args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "prometheus_client refused the exposition: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| l.split(' ').next().unwrap().to_owned()).collect()
}

fn metrics(url: &str) -> String {
    let (st, body) = http(url, "GET", "/metrics", None, None);
    assert_eq!(st, 200);
    body.as_str().unwrap().to_owned()
}

fn walkthrough(k: &Kyu) {
    let s = k.server("server", &[]);
    let url = s.url.clone();
    let before = metrics(&url);
    let completed = r#"kyu_job_attempts_total{queue="obs",kind="k",outcome="completed"}"#;
    assert_eq!(sample(&before, completed), 0.0);

    // Five jobs run through the HTTP worker protocol.
    const N: usize = 5;
    for i in 0..N {
        ok(201, s.call("POST", "/v1/jobs", Some(&json!({"queue": "obs", "kind": "k", "id": format!("o{i}")}).to_string())));
    }
    let claimed = ok(200, s.call("POST", "/v1/claim", Some(r#"{"queues":["obs"],"worker":"w-obs","max":10}"#)));
    let jobs = claimed["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), N);
    let reports: Vec<Value> = jobs.iter().map(|j| json!({"outcome": "complete", "id": j["id"], "token": j["token"], "result": 1})).collect();
    ok(200, s.call("POST", "/v1/reports", Some(&json!({"reports": reports}).to_string())));

    // Counters move by exactly N; histograms are filled; gauges agree.
    let after = metrics(&url);
    assert_eq!(sample(&after, completed) - sample(&before, completed), N as f64, "{after}");
    assert_eq!(sample(&after, r#"kyu_jobs_enqueued_total{queue="obs"}"#), N as f64);
    assert_eq!(sample(&after, r#"kyu_job_run_seconds_count{queue="obs",kind="k"}"#), N as f64);
    assert_eq!(sample(&after, r#"kyu_job_wait_seconds_count{queue="obs"}"#), N as f64);
    assert_eq!(sample(&after, r#"kyu_job_run_seconds_bucket{le="+Inf",queue="obs",kind="k"}"#), N as f64);
    assert_eq!(sample(&after, r#"kyu_queue_jobs{queue="obs",state="completed"}"#), N as f64);
    assert_eq!(sample(&after, r#"kyu_queue_paused{queue="obs"}"#), 0.0);
    assert_eq!(sample(&after, r#"kyu_workers{queue="obs"}"#), 1.0, "the claim registered w-obs");
    assert!(sample(&after, r#"kyu_http_requests_total{route="/v1/claim",status="200"}"#) >= 1.0, "{after}");
    let families = parse_with_prometheus(&after);
    for name in [
        "kyu_jobs_enqueued",
        "kyu_job_attempts",
        "kyu_job_run_seconds",
        "kyu_job_wait_seconds",
        "kyu_http_requests",
        "kyu_http_request_duration_seconds",
        "kyu_queue_jobs",
        "kyu_queue_oldest_ready_age_seconds",
        "kyu_queue_paused",
        "kyu_workers",
    ] {
        assert!(families.iter().any(|f| f == name), "{name} missing from {families:?}");
    }
    // The Grafana dashboard under docs/ asks only for series that exist.
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/grafana/kyu.json")).unwrap();
    let mut rest = dashboard.as_str();
    while let Some(i) = rest.find("kyu_") {
        let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[i + name.len()..];
        let family = ["_total", "_bucket", "_count", "_sum"].iter().fold(name.clone(), |n, s| n.strip_suffix(s).map(str::to_owned).unwrap_or(n));
        assert!(families.contains(&family) || family == "kyu_build_info", "the dashboard uses {name}, which /metrics does not have");
    }

    // The timeline.
    let events = ok(200, s.call("GET", "/v1/jobs/o0/events", None));
    let types: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["enqueued", "claimed", "completed"]);
    assert_eq!(events["events"][1]["worker"], "w-obs");
    assert_eq!(events["events"][1]["attempt"], 1);
    assert_eq!(ok(404, s.call("GET", "/v1/jobs/nope/events", None))["error"]["code"], "not_found");

    // Workers: claims list HTTP workers; workers may say more themselves.
    let workers = ok(200, s.call("GET", "/v1/workers", None));
    assert!(workers["workers"].as_array().unwrap().iter().any(|w| w["name"] == "w-obs" && w["queues"] == json!(["obs"])));
    ok(204, s.call("POST", "/v1/workers", Some(r#"{"name":"py-1","host":"box","pid":12,"queues":["obs"],"concurrency":4,"runs":"python w.py"}"#)));
    let workers = ok(200, s.call("GET", "/v1/workers", None));
    let py = workers["workers"].as_array().unwrap().iter().find(|w| w["name"] == "py-1").unwrap().clone();
    assert_eq!((py["host"].as_str(), py["pid"].as_i64(), py["runs"].as_str()), (Some("box"), Some(12), Some("python w.py")));
    for bad in [r#"{"host":"x"}"#, r#"{"name":""}"#, r#"{"name":"a","pid":-1}"#, r#"{"name":"a","queues":["bad name"]}"#, r#"{"name":"a","extra":1}"#] {
        let (st, body) = s.call("POST", "/v1/workers", Some(bad));
        assert!(st == 400 || st == 422, "{bad}: {st} {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }

    // Stats, cluster-wide, per minute.
    let stats = ok(200, s.call("GET", "/v1/stats?queue=obs", None));
    let series = stats["series"].as_array().unwrap();
    assert_eq!(series.iter().map(|p| p["completed"].as_i64().unwrap()).sum::<i64>(), N as i64);
    assert_eq!(series.iter().map(|p| p["enqueued"].as_i64().unwrap()).sum::<i64>(), N as i64);
    assert!(series[0]["run_ms_p50"].is_number(), "{stats}");
    ok(400, s.call("GET", "/v1/stats?since=yesterday", None));

    // The change stream.
    let addr = url.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(stream, "GET /v1/events/stream?queue=obs HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut content_type = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.to_ascii_lowercase().starts_with("content-type:") {
            content_type = line.clone();
        }
        if line == "\r\n" {
            break;
        }
    }
    assert!(content_type.contains("text/event-stream"), "{content_type}");
    ok(201, s.call("POST", "/v1/jobs", Some(r#"{"queue":"other","kind":"k","id":"not-watched"}"#)));
    ok(201, s.call("POST", "/v1/jobs", Some(r#"{"queue":"obs","kind":"k","id":"watched"}"#)));
    let mut change: Option<Value> = None;
    while change.is_none() {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if let Some(data) = line.trim_end().strip_prefix("data:") {
            change = Some(serde_json::from_str(data.trim()).unwrap());
        }
    }
    let change = change.unwrap();
    assert_eq!((change["id"].as_str(), change["state"].as_str(), change["queue"].as_str()), (Some("watched"), Some("queued"), Some("obs")));
    drop(reader);
    drop(stream);

    // Run a schedule now, outside its ticks.
    ok(200, s.call("PUT", "/v1/schedules/hourly", Some(r#"{"cron":"0 * * * *","job":{"queue":"obs","kind":"tick"}}"#)));
    let run = ok(201, s.call("POST", "/v1/schedules/hourly/run", None));
    assert_eq!((run["kind"].as_str(), run["state"].as_str()), (Some("tick"), Some("queued")));
    let again = ok(201, s.call("POST", "/v1/schedules/hourly/run", None));
    assert_ne!(again["id"], run["id"], "a fresh id each run");
    let sched = ok(200, s.call("GET", "/v1/schedules/hourly", None));
    assert!(sched["last_run_at"].is_null(), "a run now leaves the ticks alone");
    assert_eq!(ok(404, s.call("POST", "/v1/schedules/nope/run", None))["error"]["code"], "not_found");

    // The dead-letter set, listed by error and deleted by filter.
    ok(201, s.call("POST", "/v1/jobs", Some(r#"{"queue":"dlq","kind":"k","id":"d1","max_attempts":1}"#)));
    let c = ok(200, s.call("POST", "/v1/claim", Some(r#"{"queues":["dlq"],"worker":"w-obs"}"#)));
    let token = c["jobs"][0]["token"].as_str().unwrap().to_owned();
    ok(200, s.call("POST", "/v1/jobs/d1/fail", Some(&json!({"token": token, "error": "smtp 554 rejected"}).to_string())));
    let listed = ok(200, s.call("GET", "/v1/jobs?queue=dlq&error=554", None));
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    let deleted = ok(200, s.call("POST", "/v1/jobs/delete", Some(r#"{"queue":"dlq","error":"554"}"#)));
    assert_eq!(deleted["deleted"], 1);
    ok(422, s.call("POST", "/v1/jobs/delete", Some(r#"{"state":"running"}"#)));
    ok(404, s.call("GET", "/v1/jobs/d1", None));
}

#[test]
fn observability_on_sqlite() {
    walkthrough(&Kyu::new());
}

#[test]
fn observability_on_postgres() {
    walkthrough(&Kyu::postgres());
}

/// `kyu work --metrics ADDR` on the database directly serves this
/// process's counters.
#[test]
fn kyu_work_serves_its_own_metrics() {
    let k = Kyu::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = k.spawn("work", &["work", "-q", "wm", "-c", "2", "--poll", "50ms", "--metrics", &addr, "--", "cat"]);
    for i in 0..3 {
        k.ok(&["enqueue", "wm", "echo", &format!("{{\"n\":{i}}}")]);
    }
    let url = format!("http://{addr}");
    let series = r#"kyu_job_attempts_total{queue="wm",kind="echo",outcome="completed"}"#;
    wait_until("three completions in kyu work's /metrics", Duration::from_secs(30), || {
        crate::support::try_http(&url, "GET", "/metrics", None, None)
            .is_ok_and(|(st, body)| st == 200 && body.as_str().is_some_and(|t| sample(t, series) == 3.0))
    });
    let text = metrics(&url);
    assert_eq!(sample(&text, r#"kyu_job_run_seconds_count{queue="wm",kind="echo"}"#), 3.0);
    parse_with_prometheus(&text);
    let _ = worker.kill();
    let _ = worker.wait();
}
