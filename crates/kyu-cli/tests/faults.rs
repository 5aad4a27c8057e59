//! The fault suite: real processes, real crashes, a real database restarted
//! under load, hostile input. Each case counts what must stay zero (jobs
//! lost, an attempt delivered twice, acknowledged work lost, 5xx answers)
//! and appends its figures to the report file `scripts/test` prints
//! (`KYU_FAULT_REPORT`), so the numbers travel with the run.
//!
//! These cases restart PostgreSQL and load the machine, so they run in a
//! binary of their own, one at a time.

#[allow(dead_code)]
mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::{Kyu, free_port, heavy, http, kill9, terminate, try_http, wait_until};

/// Appends one line of figures to the run's fault report.
fn report(line: String) {
    eprintln!("{line}");
    let path = std::env::var("KYU_FAULT_REPORT").unwrap_or_else(|_| std::env::temp_dir().join("kyu-faults.txt").display().to_string());
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// The command every fault case runs: records `id attempt` when it starts,
/// then echoes its payload.
fn recording_command(k: &Kyu) -> String {
    format!(r#"echo "$KYU_JOB_ID $KYU_ATTEMPT" >> {}; cat"#, k.path("runs.txt").display())
}

/// `(id, attempt)` pairs that started more than once: an attempt delivered
/// twice, which must never happen, whatever crashed.
fn attempts_run_twice(k: &Kyu) -> (usize, HashMap<String, usize>) {
    let text = std::fs::read_to_string(k.path("runs.txt")).unwrap_or_default();
    let mut seen = HashSet::new();
    let mut doubles = 0;
    let mut runs: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        if !seen.insert(line.to_owned()) {
            doubles += 1;
        }
        *runs.entry(line.split(' ').next().unwrap_or_default().to_owned()).or_default() += 1;
    }
    (doubles, runs)
}

/// Every job of the store, through the listing (all pages).
fn all_jobs(k: &Kyu, url: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = vec!["jobs", "--limit", "1000"];
        if let Some(u) = url {
            args.splice(0..0, ["--url", u]);
        }
        let c;
        if let Some(cur) = &cursor {
            c = cur.clone();
            args.extend(["--cursor", c.as_str()]);
        }
        let page = k.json(&args);
        out.extend(page["jobs"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return out,
        }
    }
}

/// Enqueues `n` jobs through HTTP, one request each, retrying a job whose
/// request failed (same id, so a retry is idempotent). Returns the ids
/// acknowledged and the 5xx answers seen.
struct Producer {
    acked: Arc<Mutex<Vec<String>>>,
    server_errors: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Producer {
    fn start(url: String, queue: &'static str, n: usize) -> Producer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let server_errors = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (a, e, d) = (acked.clone(), server_errors.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            for i in 0..n {
                let id = format!("{queue}-{i}");
                let body = json!({"queue": queue, "kind": "job", "id": id, "payload": i}).to_string();
                loop {
                    match try_http(&url, "POST", "/v1/jobs", None, Some(&body)) {
                        Ok((200 | 201, _)) => {
                            a.lock().unwrap().push(id.clone());
                            break;
                        }
                        Ok((status, _)) if status >= 500 => {
                            e.fetch_add(1, Ordering::SeqCst);
                        }
                        // Connection refused or reset: the server is down; try again.
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
            d.store(true, Ordering::SeqCst);
        });
        Producer { acked, server_errors, done, thread }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

fn healthy(url: &str) -> bool {
    matches!(try_http(url, "GET", "/healthz", None, None), Ok((200, _)))
}

/// A `kyu server` is SIGKILLed twice while HTTP workers run and a producer
/// enqueues: once restarted, every acknowledged job completes, no attempt
/// runs twice, and no request got a 5xx.
fn server_sigkilled_under_http_load(k: Kyu, backend: &str) {
    let _heavy = heavy();
    let port = free_port();
    let mut server = k.server_at("server-0", port, &[]);
    let url = server.url.clone();
    let script = recording_command(&k);
    let workers: Vec<_> = (0..2)
        .map(|w| {
            k.spawn(&format!("w{w}"), &["--url", &url, "work", "-q", "load", "-c", "8", "--lease", "5s", "--", "sh", "-c", &script])
        })
        .collect();
    let n = 1_500;
    let producer = Producer::start(url.clone(), "load", n);
    let mut recoveries = Vec::new();
    for round in 1..=2 {
        wait_until("the producer to get going", Duration::from_secs(60), || producer.acked() >= round * n / 3);
        kill9(server.child.take().expect("running"));
        let killed = Instant::now();
        server = k.server_at(&format!("server-{round}"), port, &[]);
        wait_until("the restarted server", Duration::from_secs(30), || healthy(&url));
        recoveries.push(killed.elapsed().as_millis());
    }
    wait_until("the producer to finish", Duration::from_secs(120), || producer.done.load(Ordering::SeqCst));
    producer.thread.join().unwrap();
    let acked = producer.acked.lock().unwrap().clone();
    wait_until("every acknowledged job to complete", Duration::from_secs(180), || {
        let (_, q) = http(&url, "GET", "/v1/queues", None, None);
        q["queues"].as_array().unwrap().iter().map(|q| q["counts"]["completed"].as_u64().unwrap()).sum::<u64>() >= acked.len() as u64
    });
    for w in workers {
        assert!(terminate(w).success());
    }
    let jobs = all_jobs(&k, Some(&url));
    let completed: HashSet<&str> = jobs.iter().filter(|j| j["state"] == "completed").map(|j| j["id"].as_str().unwrap()).collect();
    let lost = acked.iter().filter(|id| !completed.contains(id.as_str())).count();
    let (doubles, runs) = attempts_run_twice(&k);
    let reruns = runs.values().filter(|c| **c > 1).count();
    let errors = producer.server_errors.load(Ordering::SeqCst);
    report(format!(
        "server SIGKILL x2 under HTTP load [{backend}]: jobs {} acked {} lost {lost} attempts-run-twice {doubles} re-run {reruns} 5xx {errors} recovery-ms {recoveries:?}",
        n,
        acked.len()
    ));
    assert_eq!(acked.len(), n);
    assert_eq!((lost, doubles, errors), (0, 0, 0));
    drop(server);
}

#[test]
fn server_sigkill_sqlite() {
    server_sigkilled_under_http_load(Kyu::new(), "sqlite");
}

#[test]
fn server_sigkill_postgres() {
    server_sigkilled_under_http_load(Kyu::postgres(), "postgres");
}

/// Restarts the test PostgreSQL (`pg_ctl restart -m immediate`, a crash).
fn restart_postgres() {
    let cmd = std::env::var("KYU_TEST_PG_RESTART").expect("KYU_TEST_PG_RESTART is not set: run the tests with scripts/test");
    let status = Command::new("sh").arg("-c").arg(&cmd).status().unwrap();
    assert!(status.success(), "`{cmd}` failed");
}

/// PostgreSQL crashes and restarts twice while worker processes hold jobs:
/// they reconnect on their own, every job completes, none is lost and no
/// attempt runs twice.
#[test]
fn postgres_restarted_under_worker_load() {
    let _heavy = heavy();
    let k = Kyu::postgres();
    let n = 3_000u64;
    let lines: Vec<String> = (0..n).map(|i| format!(r#"{{"queue":"pgr","kind":"job","id":"r{i}","payload":{i}}}"#)).collect();
    std::fs::write(k.path("jobs.jsonl"), lines.join("\n")).unwrap();
    k.ok(&["batch", "jobs.jsonl"]);
    let script = recording_command(&k);
    let workers: Vec<_> =
        (0..3).map(|w| k.spawn(&format!("w{w}"), &["work", "-q", "pgr", "-c", "6", "--lease", "3s", "--", "sh", "-c", &script])).collect();
    let mut recoveries = Vec::new();
    for round in 1..=2u64 {
        wait_until("progress before the crash", Duration::from_secs(120), || k.count("completed") >= round * n / 3);
        let before = k.count("completed");
        let crashed = Instant::now();
        restart_postgres();
        wait_until("progress after the restart", Duration::from_secs(120), || k.count("completed") > before + 20);
        recoveries.push(crashed.elapsed().as_millis());
    }
    k.wait_count("completed", n as usize);
    for w in workers {
        assert!(terminate(w).success());
    }
    let (doubles, runs) = attempts_run_twice(&k);
    let lost = n - k.count("completed");
    let reruns = runs.values().filter(|c| **c > 1).count();
    report(format!(
        "PostgreSQL restarted x2 (immediate) under 3 workers [postgres]: jobs {n} lost {lost} attempts-run-twice {doubles} re-run {reruns} recovery-ms {recoveries:?}"
    ));
    assert_eq!((lost, doubles), (0, 0));
    for state in ["queued", "scheduled", "running", "failed"] {
        assert_eq!(k.count(state), 0, "no job left {state}");
    }
}

/// A TCP proxy in front of PostgreSQL that can cut the link: a network
/// partition between one worker and the database, as that worker sees it
/// (open connections reset, new ones refused).
struct Partition {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Partition {
    fn new(target: String) -> Partition {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset at once
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let mut held = o.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                drop(held);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Partition { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// A worker cut off from PostgreSQL while it runs jobs (a network
/// partition): its leases expire, a healthy worker takes its jobs over,
/// and once the link heals its late reports are refused.
#[test]
fn worker_cut_off_from_postgres_loses_its_leases() {
    let _heavy = heavy();
    let k = Kyu::postgres();
    let n = 12;
    for i in 0..n {
        k.ok(&["enqueue", "cut", "job", &i.to_string(), "--id", &format!("c{i}")]);
    }
    let base = std::env::var("KYU_TEST_POSTGRES_URL").unwrap();
    let authority = base.split('@').nth(1).and_then(|r| r.split('/').next()).expect("host:port in KYU_TEST_POSTGRES_URL").to_owned();
    let partition = Partition::new(authority.clone());
    let isolated_db = k.db().replace(&authority, &format!("127.0.0.1:{}", partition.port));
    let slow = format!(r#"echo "$KYU_JOB_ID $KYU_ATTEMPT" >> {}; sleep 2; cat"#, k.path("runs.txt").display());
    let isolated = {
        let err = std::fs::File::create(k.path("isolated.log")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_kyu"))
            .args(["--database", &isolated_db, "work", "-q", "cut", "-c", "4", "--lease", "1s", "--name", "isolated", "--", "sh", "-c", &slow])
            .current_dir(k.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .map(support::Proc::from)
            .unwrap()
    };
    k.wait_count("running", 4);
    partition.cut();
    let cut_at = Instant::now();
    let healthy_worker =
        k.spawn("healthy", &["work", "-q", "cut", "-c", "4", "--lease", "1s", "--name", "healthy", "--", "sh", "-c", &recording_command(&k)]);
    // The isolated worker's four jobs come back when their leases expire.
    wait_until("the isolated jobs to be taken over", Duration::from_secs(60), || {
        k.json(&["jobs", "--state", "completed", "--limit", "1000"])["jobs"].as_array().unwrap().iter().filter(|j| j["attempt"] == 2).count() >= 4
    });
    let partitioned_for = cut_at.elapsed();
    partition.heal();
    k.wait_count("completed", n);
    k.wait_log("isolated", "report refused");
    assert!(terminate(isolated).success());
    assert!(terminate(healthy_worker).success());
    let (doubles, _) = attempts_run_twice(&k);
    let mut taken_over = 0;
    for i in 0..n {
        let job = k.job(&format!("c{i}"));
        assert_eq!(job["state"], "completed", "{job}");
        if job["attempt"] == 2 {
            taken_over += 1;
            assert_eq!(job["worker"], "healthy", "{job}");
            assert_eq!(job["errors"][0]["message"], "lease expired");
        }
    }
    report(format!(
        "worker partitioned from PostgreSQL [postgres]: jobs {n} taken over {taken_over} after {} ms lost 0 attempts-run-twice {doubles} late reports refused yes",
        partitioned_for.as_millis()
    ));
    assert_eq!(taken_over, 4, "the isolated worker's four jobs were taken over");
    assert_eq!(doubles, 0);
}

/// Writers on one SQLite file (workers and producers) are killed with
/// SIGKILL mid-flight, five times: the file passes `PRAGMA
/// integrity_check`, every acknowledged job is there, and all complete.
#[test]
fn sqlite_writers_killed_keep_the_file_sound() {
    let _heavy = heavy();
    let k = Kyu::new();
    let acked = k.path("acked.txt");
    let kyu = env!("CARGO_BIN_EXE_kyu");
    let db = k.db();
    // A producer: enqueue one at a time, noting each id only once kyu said
    // it was stored (acknowledged).
    let producer = |round: usize| {
        let script = format!(
            r#"i=0; while [ $i -lt 400 ]; do id="k{round}-$i"; "{kyu}" --database "{db}" enqueue crash job "$i" --id "$id" --max-attempts 50 --backoff fixed:10ms >/dev/null && echo "$id" >> "{}"; i=$((i+1)); done"#,
            acked.display()
        );
        support::Proc::from(Command::new("sh").arg("-c").arg(script).stdin(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap())
    };
    let script = recording_command(&k);
    // The file exists before anything counts: the producer and workers
    // below race to create it.
    k.ok(&["migrate"]);
    for round in 0..5 {
        let p = producer(round);
        let workers: Vec<_> = (0..2).map(|w| k.spawn(&format!("r{round}w{w}"), &["work", "-q", "crash", "-c", "4", "--lease", "2s", "--", "sh", "-c", &script])).collect();
        let start = k.count("completed");
        wait_until("work to be under way", Duration::from_secs(60), || k.count("completed") >= start + 30);
        for w in workers {
            kill9(w);
        }
        let mut p = p;
        let _ = p.kill(); // the shell; a `kyu enqueue` it started may finish or die mid-write
        let _ = p.wait();
    }
    let conn = rusqlite::Connection::open(k.db()).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    drop(conn);
    let acked: Vec<String> = std::fs::read_to_string(&acked).unwrap_or_default().lines().map(String::from).collect();
    // One snapshot of every count (counting state by state while jobs move would count some twice).
    let queues = k.json(&["queues"]);
    let total: u64 = queues["queues"].as_array().unwrap().iter().flat_map(|q| q["counts"].as_object().unwrap().values()).map(|v| v.as_u64().unwrap()).sum();
    let drain = k.spawn("drain", &["work", "-q", "crash", "-c", "8", "--lease", "2s", "--", "sh", "-c", &script]);
    k.wait_count("completed", total as usize);
    assert!(terminate(drain).success());
    let jobs = all_jobs(&k, None);
    let completed: HashSet<&str> = jobs.iter().filter(|j| j["state"] == "completed").map(|j| j["id"].as_str().unwrap()).collect();
    let lost = acked.iter().filter(|id| !completed.contains(id.as_str())).count();
    let (doubles, runs) = attempts_run_twice(&k);
    let reruns = runs.values().filter(|c| **c > 1).count();
    report(format!(
        "SQLite writers SIGKILLed x5 [sqlite]: integrity_check {check} acked {} lost {lost} attempts-run-twice {doubles} re-run {reruns}",
        acked.len()
    ));
    assert_eq!(check, "ok");
    assert_eq!((lost, doubles), (0, 0));
}

/// A seeded stream of hostile requests: huge and negative numbers, NUL,
/// deep nesting, invalid UTF-8, huge ids and batches, wrong types. No 5xx,
/// and afterwards the server still lists every job.
fn hostile_input(k: Kyu, backend: &str) {
    let _heavy = heavy();
    let server = k.server("server", &["--max-body", "2000000"]);
    let url = server.url.clone();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut server_errors = 0;
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let requests = 1_500;
    let huge = ["9223372036854775807", "-9223372036854775808", "1e308", "-1", "18446744073709551616", "0.5", "\"5\"", "null"];
    let fields = ["delay_ms", "timeout_ms", "keep_result_ms", "keep_failed_ms", "unique_for_ms", "priority", "max_attempts"];
    let strings = ["\\u0000", "a\\u0000b", "\\ud800", "<script>alert(1)</script>", "", " ", "../../etc/passwd"];
    for i in 0..requests {
        let (method, path, body): (&str, String, Vec<u8>) = match rng.u8(0..12) {
            0 => {
                let f = fields[rng.usize(..fields.len())];
                let v = huge[rng.usize(..huge.len())];
                ("POST", "/v1/jobs".into(), format!(r#"{{"queue":"h","kind":"k","{f}":{v}}}"#).into_bytes())
            }
            1 => {
                let s = strings[rng.usize(..strings.len())];
                let at = ["payload", "kind", "queue", "id", "group", "unique_key"][rng.usize(..6)];
                let v = if at == "payload" { format!(r#"{{"x":"{s}"}}"#) } else { format!(r#""{s}""#) };
                ("POST", "/v1/jobs".into(), format!(r#"{{"queue":"h","kind":"k","{at}":{v}}}"#).into_bytes())
            }
            2 => {
                let depth = rng.usize(10..5_000);
                let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
                ("POST", "/v1/jobs".into(), format!(r#"{{"queue":"h","kind":"k","payload":{nested}}}"#).into_bytes())
            }
            3 => {
                let mut b = br#"{"queue":"h","kind":"k","payload":""#.to_vec();
                b.extend([0xff, 0xfe, 0xc3, 0x28, 0x80]);
                b.extend(br#""}"#);
                ("POST", "/v1/jobs".into(), b)
            }
            4 => {
                let id = "x".repeat(rng.usize(200..5_000));
                ("POST", "/v1/jobs".into(), format!(r#"{{"queue":"h","kind":"k","id":"{id}"}}"#).into_bytes())
            }
            5 => {
                let n = rng.usize(0..200);
                let jobs: Vec<String> = (0..n).map(|j| format!(r#"{{"queue":"h","kind":"k","payload":{j}}}"#)).collect();
                ("POST", "/v1/jobs/batch".into(), format!(r#"{{"jobs":[{}]}}"#, jobs.join(",")).into_bytes())
            }
            6 => {
                let v = huge[rng.usize(..huge.len())];
                let body = format!(r#"{{"queues":["h"],"worker":"w","max":{v},"lease_ms":{v},"wait_ms":0}}"#);
                ("POST", "/v1/claim".into(), body.into_bytes())
            }
            7 => {
                let v = huge[rng.usize(..huge.len())];
                let s = strings[rng.usize(..strings.len())];
                let body = format!(r#"{{"reports":[{{"outcome":"fail","id":"h-1","token":"t","error":"{s}","retry_in_ms":{v}}},{{"outcome":"snooze","id":"{s}","token":"t","delay_ms":{v}}}]}}"#);
                ("POST", "/v1/reports".into(), body.into_bytes())
            }
            8 => {
                let q = ["limit=0", "limit=99999", "state=nope", "kind=%00", "tag=%00", "cursor=abc", "cursor=-1", "queue=..%2F", "limit=1e3"];
                ("GET", format!("/v1/jobs?{}", q[rng.usize(..q.len())]), Vec::new())
            }
            9 => {
                let v = huge[rng.usize(..huge.len())];
                let body = format!(r#"{{"concurrency":{v},"rate_limit":{{"max":{v},"per_ms":{v}}},"timeout_ms":{v}}}"#);
                ("PATCH", "/v1/queues/h".into(), body.into_bytes())
            }
            10 => {
                let s = strings[rng.usize(..strings.len())];
                let body = format!(r#"{{"cron":"{s}","job":{{"kind":"k","payload":"{s}"}}}}"#);
                ("PUT", format!("/v1/schedules/s{}", i % 7), body.into_bytes())
            }
            _ => {
                let p = ["/v1/jobs/%00", "/v1/jobs/..%2F..", "/v1/jobs/a%ZZ", "/v1/queues/%00/pause", "/v1/jobs/x/result?wait_ms=-1", "/v1/jobs/x/result?wait_ms=99999999999"];
                ("GET", p[rng.usize(..p.len())].into(), Vec::new())
            }
        };
        let status = raw_request(&url, method, &path, &body);
        *statuses.entry(status).or_default() += 1;
        if status >= 500 || status == 0 {
            server_errors += 1;
            eprintln!("{method} {path} -> {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
        }
    }
    // The listing still works, through every page, over HTTP and directly.
    let jobs = all_jobs(&k, Some(&url));
    let direct = all_jobs(&k, None);
    let log = std::fs::read_to_string(k.path("server.log")).unwrap_or_default();
    let internal = log.matches("internal").count() + log.matches("panicked").count();
    let mut codes: Vec<_> = statuses.into_iter().collect();
    codes.sort();
    report(format!(
        "hostile input [{backend}]: requests {requests} 5xx {server_errors} internal-errors-logged {internal} jobs listed {} (direct {}) statuses {codes:?}",
        jobs.len(),
        direct.len()
    ));
    assert_eq!(server_errors, 0);
    assert_eq!(internal, 0, "{log}");
    assert_eq!(jobs.len(), direct.len());
    drop(server);
}

/// One request with a raw body (bytes, maybe not UTF-8); the status, or 0
/// when the connection failed.
fn raw_request(base: &str, method: &str, path: &str, body: &[u8]) -> u16 {
    use std::io::Read;
    let addr = base.trim_start_matches("http://");
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).is_err() {
        return 0;
    }
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn hostile_input_sqlite() {
    hostile_input(Kyu::new(), "sqlite");
}

#[test]
fn hostile_input_postgres() {
    hostile_input(Kyu::postgres(), "postgres");
}

/// A server allowed 256 file descriptors, with 400 idle sockets and a few
/// slow ones sending a header byte a second: `/healthz` still answers.
#[test]
fn idle_and_slow_connections_do_not_starve_healthz() {
    let _heavy = heavy();
    let k = Kyu::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let err = std::fs::File::create(k.path("server.log")).unwrap();
    let mut server = support::Proc::from(
        Command::new("sh")
            .arg("-c")
            .arg(format!(r#"ulimit -n 256 && exec "{}" --database "{}" server --listen {listen}"#, env!("CARGO_BIN_EXE_kyu"), k.db()))
            .current_dir(k.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{listen}");
    wait_until("the server", Duration::from_secs(30), || healthy(&url));
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = std::net::TcpStream::connect(&listen) {
            idle.push(s);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let (listen, stop) = (listen.clone(), stop.clone());
            std::thread::spawn(move || {
                if let Ok(mut s) = std::net::TcpStream::connect(&listen) {
                    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
                        if stop.load(Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        assert!(healthy(&url), "/healthz failed with idle sockets held open");
        worst = worst.max(t.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    for t in slow {
        t.join().unwrap();
    }
    let log = std::fs::read_to_string(k.path("server.log")).unwrap_or_default();
    report(format!(
        "idle and slow connections (fd limit 256) [sqlite]: idle sockets {} slow 8 healthz worst {} ms cap logged {}",
        idle.len(),
        worst.as_millis(),
        log.contains("connection limit reached")
    ));
    assert!(log.contains("connection limit reached"), "the cap was reached and said so: {log}");
    drop(idle);
    server.kill().unwrap();
    server.wait().unwrap();
}

/// An HTTP worker whose link to the server drops for a few seconds while
/// it runs jobs: its heartbeats fail and are retried, nothing is cancelled,
/// and every job runs once.
#[test]
fn http_worker_rides_out_a_network_blip() {
    let _heavy = heavy();
    let k = Kyu::new();
    let server = k.server("server", &[]);
    let authority = server.url.trim_start_matches("http://").to_owned();
    let link = Partition::new(authority);
    let via = format!("http://127.0.0.1:{}", link.port);
    let n = 6;
    for i in 0..n {
        k.ok(&["--url", &server.url, "enqueue", "blip", "job", &i.to_string(), "--id", &format!("b{i}")]);
    }
    let script = format!(r#"echo "$KYU_JOB_ID $KYU_ATTEMPT" >> {}; sleep 4; cat"#, k.path("runs.txt").display());
    let worker = k.spawn("worker", &["--url", &via, "work", "-q", "blip", "-c", "6", "--lease", "6s", "--", "sh", "-c", &script]);
    wait_until("the jobs to start", Duration::from_secs(30), || attempts_run_twice(&k).1.len() == n);
    link.cut();
    let cut_for = Duration::from_secs(3);
    std::thread::sleep(cut_for); // the length of the outage is the point of the test
    link.heal();
    wait_until("every job to complete", Duration::from_secs(60), || {
        let (_, q) = http(&server.url, "GET", "/v1/queues", None, None);
        q["queues"][0]["counts"]["completed"].as_u64() == Some(n as u64)
    });
    assert!(terminate(worker).success());
    let (doubles, runs) = attempts_run_twice(&k);
    let log = std::fs::read_to_string(k.path("worker.log")).unwrap_or_default();
    let failed_heartbeats = log.matches("heartbeat failed").count();
    let cancelled = log.matches("lease lost").count() + log.matches("stopping its handler").count();
    for i in 0..n {
        let (_, job) = http(&server.url, "GET", &format!("/v1/jobs/b{i}"), None, None);
        assert_eq!((job["state"].as_str(), job["attempt"].as_i64()), (Some("completed"), Some(1)), "{job}");
    }
    report(format!(
        "HTTP worker through a {} s network outage [sqlite]: jobs {n} failed heartbeats {failed_heartbeats} handlers cancelled {cancelled} runs {} attempts-run-twice {doubles}",
        cut_for.as_secs(),
        runs.values().sum::<usize>()
    ));
    assert!(failed_heartbeats >= 1, "the outage was felt: {log}");
    assert_eq!((cancelled, doubles), (0, 0), "{log}");
    assert!(runs.values().all(|c| *c == 1));
}
