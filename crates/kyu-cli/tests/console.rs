//! The console in a real browser: Debian's Chromium, driven over W3C
//! WebDriver by chromedriver, against a real `kyu server`. Screenshots of
//! each page land in target/console-screenshots for people to look at.
//!
//! The WebDriver calls are a few JSON requests, made here with the tests'
//! own HTTP helper: a client crate (fantoccini) would bring a second HTTP
//! and TLS stack (aws-lc) to build for them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Kyu, free_port, heavy, http, try_http};

const ADMIN: &str = "console-admin-secret";
const READER: &str = "console-reader-secret";

/// A chromedriver process and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start(shots: PathBuf) -> Browser {
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) is installed by scripts/test");
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while !std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|_| wire(&base, "GET", "/status", None).1["value"]["ready"] == true) {
            assert!(start.elapsed() < Duration::from_secs(30), "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1400,1000", format!("--user-data-dir={}", profile.path().display())]}}}});
        let (st, v) = wire(&base, "POST", "/session", Some(&caps.to_string()));
        assert_eq!(st, 200, "new session: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_owned();
        std::fs::create_dir_all(&shots).unwrap();
        Browser { driver, base, session, shots, _profile: profile }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let (st, v) = wire(&self.base, method, &format!("/session/{}{path}", self.session), body.as_deref());
        assert_eq!(st, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap().to_owned()
    }

    fn try_find(&self, css: &str) -> Option<String> {
        let body = json!({"using": "css selector", "value": css}).to_string();
        let (st, v) = wire(&self.base, "POST", &format!("/session/{}/element", self.session), Some(&body));
        (st == 200).then(|| v["value"][ELEMENT].as_str().unwrap().to_owned())
    }

    /// Waits for an element to be there (pages render, actions refresh).
    fn find(&self, css: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(e) = self.try_find(css) {
                return e;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "no element `{css}` on {}", self.url());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn type_in(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/value"), Some(json!({"text": text})));
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), None).as_str().unwrap_or_default().to_owned()
    }

    fn run(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    /// Waits until `script` returns true.
    fn wait_for(&self, what: &str, script: &str) {
        let start = Instant::now();
        while self.run(script) != json!(true) {
            if start.elapsed() > Duration::from_secs(15) {
                self.screenshot("timed-out");
                let log = self.run("return window.__kyu_log || []");
                panic!("timed out waiting for {what} on {} (screenshot timed-out.png; console log {log})", self.url());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn screenshot(&self, name: &str) {
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = wire(&self.base, "DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver request. chromedriver keeps connections open whatever
/// the request says, so the answer is read to its Content-Length.
fn wire(base: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    use std::io::{BufRead, BufReader, Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("chromedriver is listening");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut raw = vec![0u8; length];
    r.read_exact(&mut raw).unwrap();
    (status, serde_json::from_slice(&raw).unwrap_or(Value::Null))
}

/// Standard base64, as WebDriver sends screenshots.
fn base64(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn api(url: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string());
    let (st, v) = http(url, method, path, Some(ADMIN), body.as_deref());
    assert!((200..300).contains(&st), "{method} {path}: {st} {v}");
    v
}

fn screenshots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots")
}

#[test]
fn console_in_a_real_browser() {
    let _heavy = heavy();
    let k = Kyu::new();
    let admin = format!("admin:{ADMIN}");
    let reader = format!("producer:{READER}");
    let s = k.server("console", &["--token", &admin, "--token", &reader]);
    let url = s.url.clone();

    // Jobs to look at: some completed, one failed with markup everywhere,
    // a flow waiting on its children, a schedule.
    let hostile = "<script>window.__xss=1</script><img src=x onerror=\"window.__xss=2\">";
    api(&url, "POST", "/v1/jobs", Some(json!({"queue": "mail", "kind": "send", "id": "evil-1", "max_attempts": 1,
        "payload": {"html": hostile}, "tags": ["<b>bold</b>", "vip"]})));
    for i in 0..6 {
        api(&url, "POST", "/v1/jobs", Some(json!({"queue": "mail", "kind": "send", "payload": {"n": i}})));
    }
    let claimed = api(&url, "POST", "/v1/claim", Some(json!({"queues": ["mail"], "worker": "browser-worker", "max": 7})));
    let jobs = claimed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 7);
    for j in jobs {
        let (id, token) = (j["id"].as_str().unwrap(), j["token"].as_str().unwrap());
        if id == "evil-1" {
            api(&url, "POST", &format!("/v1/jobs/{id}/progress"), Some(json!({"token": token, "progress": {"done": 3, "of": 10}})));
            api(&url, "POST", &format!("/v1/jobs/{id}/log"), Some(json!({"token": token,
                "lines": ["connecting to smtp", format!("rendering {hostile}")]})));
            api(&url, "POST", &format!("/v1/jobs/{id}/fail"), Some(json!({"token": token,
                "error": format!("Traceback (most recent call last):\n  File \"send.py\", line 3\nValueError: bad html {hostile}")})));
        } else {
            api(&url, "POST", &format!("/v1/jobs/{id}/complete"), Some(json!({"token": token, "result": {"sent": true}})));
        }
    }
    api(&url, "POST", "/v1/flows", Some(json!({"job": {"queue": "reports", "kind": "merge", "id": "monthly"},
        "children": [{"job": {"queue": "reports", "kind": "part", "id": "part-a"}}, {"job": {"queue": "reports", "kind": "part", "id": "part-b"}}]})));
    api(&url, "PUT", "/v1/schedules/nightly", Some(json!({"cron": "0 3 * * *", "job": {"queue": "reports", "kind": "rollup"}})));
    api(&url, "POST", "/v1/workers", Some(json!({"name": "browser-worker", "host": "test-host", "pid": 4242,
        "queues": ["mail"], "concurrency": 8, "runs": "python send.py"})));

    let b = Browser::start(screenshots_dir());

    // Signing in: the token goes in a POST form, never in the URL.
    b.goto(&format!("{url}/queues/mail"));
    assert!(b.url().contains("/login?next="), "{}", b.url());
    b.screenshot("login");
    b.type_in("#token", "not-the-token");
    b.click("button[type=submit]");
    assert!(b.text(".problem").contains("not valid"));
    b.type_in("#token", ADMIN);
    b.click("button[type=submit]");
    b.find(".tabs");
    assert!(b.url().ends_with("/queues/mail"), "back where it was asked for: {}", b.url());
    assert!(!b.url().contains(ADMIN));
    let cookie_js = b.run("return document.cookie");
    assert_eq!(cookie_js, json!(""), "the session cookie is HttpOnly");

    // The overview.
    b.goto(&format!("{url}/"));
    b.find("table.queues");
    assert!(b.text("table.queues").contains("mail"));
    b.screenshot("overview");

    // The dead-letter list, then the failed job's page.
    b.goto(&format!("{url}/queues/mail"));
    b.click("a.st-tab.st-text-failed");
    b.find(".bulk");
    b.screenshot("queue-failed");
    b.click("table.jobs a[href='/jobs/evil-1']");
    b.find("#job-state");
    assert_eq!(b.text("#job-state"), "failed");
    let error = b.text("pre.error-text");
    assert!(error.contains("ValueError: bad html <script>window.__xss=1</script>"), "the full error, as text: {error}");
    assert!(error.contains("line 3"), "every line of it: {error}");
    let timeline = b.text("ol.timeline");
    for event in ["enqueued", "claimed", "progress", "failed"] {
        assert!(timeline.contains(event), "timeline has {event}: {timeline}");
    }
    assert!(timeline.contains("browser-worker"));
    let log = b.text("pre.log");
    assert!(log.contains("connecting to smtp") && log.contains("rendering <script>"), "{log}");
    assert!(b.text("pre.json").contains("<img src=x onerror="));
    assert!(b.text("dl.facts").contains("<b>bold</b>"), "tags render as text");
    assert_eq!(b.run("return window.__xss === undefined && document.querySelectorAll('main script, main img').length === 0"), json!(true), "no markup from jobs ran or rendered");
    b.screenshot("job-failed");

    // Retry: the page changes state without reloading.
    b.run("window.__same_page = 42; return true");
    b.click("#retry");
    b.wait_for("the job to show queued", "const s = document.getElementById('job-state'); return !!s && s.textContent.trim() === 'queued'");
    assert_eq!(b.run("return window.__same_page"), json!(42), "no reload");
    assert!(b.text("ol.timeline").contains("retried"));
    assert_eq!(api(&url, "GET", "/v1/jobs/evil-1", None)["state"], "queued");
    b.screenshot("job-retried");

    // Pause and resume the queue.
    b.goto(&format!("{url}/queues/mail"));
    b.click("form[action='/ui/queues/mail/pause'] button");
    b.wait_for("the paused badge", "return !!document.querySelector('.head .badge.paused')");
    let paused = |q: &str| api(&url, "GET", "/v1/queues", None)["queues"].as_array().unwrap().iter().find(|x| x["name"] == q).unwrap()["paused"].clone();
    assert_eq!(paused("mail"), true);
    b.screenshot("queue-paused");
    b.click("form[action='/ui/queues/mail/resume'] button");
    b.wait_for("the running badge", "return !!document.querySelector('.head .badge.running')");
    assert_eq!(paused("mail"), false);

    // Run a schedule now: the new job opens.
    b.goto(&format!("{url}/schedules"));
    b.find("button[data-run='nightly']");
    b.screenshot("schedules");
    b.click("button[data-run='nightly']");
    b.wait_for("the new job's page", "return location.pathname.startsWith('/jobs/')");
    b.find("#job-state");
    assert!(b.text("dl.facts").contains("rollup"));
    let rollups = api(&url, "GET", "/v1/jobs?kind=rollup", None);
    assert_eq!(rollups["jobs"].as_array().unwrap().len(), 1);

    // Workers, flows, search.
    b.goto(&format!("{url}/workers"));
    assert!(b.text("main table").contains("python send.py"));
    b.screenshot("workers");
    b.goto(&format!("{url}/flows"));
    assert!(b.text("main").contains("part-a"));
    b.screenshot("flows");
    b.goto(&format!("{url}/"));
    b.type_in("input[name=q]", "evil-1\u{E007}");
    b.wait_for("the job page from search", "return location.pathname === '/jobs/evil-1'");

    // Live: a change made elsewhere shows without reloading.
    b.goto(&format!("{url}/jobs/monthly"));
    b.find("#job-state");
    b.wait_for("the live stream", "return document.getElementById('live-state').classList.contains('up')");
    b.run("window.__same_page = 7; return true");
    api(&url, "POST", "/v1/jobs/monthly/cancel", None);
    b.wait_for("the cancel to show", "const s = document.getElementById('job-state'); return !!s && s.textContent.trim() === 'cancelled'");
    assert_eq!(b.run("return window.__same_page"), json!(7));

    // Cross-site and role checks: an action without the CSRF token, or
    // from a read-only session, changes nothing.
    let (st, _) = try_http(&url, "POST", "/ui/queues/mail/pause", None, None).unwrap();
    assert_eq!(st, 401, "no session");
    b.click("form.logout button");
    b.find("#token");
    b.type_in("#token", READER);
    b.click("button[type=submit]");
    b.find("table.queues");
    b.goto(&format!("{url}/jobs/evil-1"));
    b.find("#job-state");
    assert!(b.try_find("#retry").is_none() && b.try_find(".actions").is_none(), "no actions for a read-only token");
    let csrf = b.run("return document.querySelector('meta[name=csrf]').content");
    let forged = b.run(&format!(
        "const c = new AbortController(); setTimeout(() => c.abort(), 10000); \
         return fetch('/ui/queues/mail/pause', {{method: 'POST', signal: c.signal, headers: {{'Accept': 'application/json', 'X-Kyu-Csrf': {csrf}}}}})\
           .then(r => r.status, e => 'fetch failed: ' + e)"
    ));
    assert_eq!(forged, json!(403), "a read-only session may not act");
    assert_eq!(paused("mail"), false);
    drop(b);
    drop(s);
}
