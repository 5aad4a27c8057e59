//! Runs the `kyu` binary against a database in a temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Held by tests that load the machine (many processes) or measure latency,
/// so they never run at the same time on a 2-core machine.
pub static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`HEAVY`], whether or not another holder panicked.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Kyu {
    pub dir: TempDir,
    /// A PostgreSQL URL with a fresh schema, or None for a SQLite file.
    pub url: Option<String>,
}

impl Kyu {
    /// On a new SQLite file.
    pub fn new() -> Kyu {
        Kyu { dir: tempfile::tempdir().unwrap(), url: None }
    }

    /// On the test PostgreSQL (scripts/test starts it), in a schema of its own.
    pub fn postgres() -> Kyu {
        let base = std::env::var("KYU_TEST_POSTGRES_URL")
            .expect("KYU_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts PostgreSQL");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let schema = format!("kyu_cli_{}_{nanos}", std::process::id());
        Kyu { dir: tempfile::tempdir().unwrap(), url: Some(format!("{base}?schema={schema}")) }
    }

    pub fn db(&self) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => self.dir.path().join("kyu.db").display().to_string(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kyu"));
        // A command given --url talks to a server and takes no --database;
        // one given --database keeps its own.
        if !args.contains(&"--url") && !args.contains(&"--database") {
            c.arg("--database").arg(self.db());
        }
        c.args(args).current_dir(self.dir.path());
        // The test's own settings only: none from the environment it runs in.
        for (name, _) in std::env::vars() {
            if name.starts_with("KYU_") && !name.starts_with("KYU_TEST_") && name != "KYU_LOG" && name != "KYU_FAULT_REPORT" {
                c.env_remove(name);
            }
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs and expects exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kyu {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Starts a long-running command with its stderr in `<log>.log`.
    pub fn spawn(&self, log: &str, args: &[&str]) -> Proc {
        let err = std::fs::File::create(self.path(&format!("{log}.log"))).unwrap();
        Proc(Some(self.command(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).spawn().unwrap()))
    }

    pub fn job(&self, id: &str) -> Value {
        self.json(&["status", id])
    }

    /// How many jobs of all queues are in `state`.
    pub fn count(&self, state: &str) -> u64 {
        let queues = self.json(&["queues"]);
        queues["queues"].as_array().unwrap().iter().map(|q| q["counts"][state].as_u64().unwrap()).sum()
    }

    /// Waits until `n` jobs of the whole store are in `state`.
    pub fn wait_count(&self, state: &str, n: usize) {
        let start = Instant::now();
        loop {
            let got = self.count(state) as usize;
            if got >= n {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "only {got} of {n} jobs reached {state}: {}", self.json(&["queues"]));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a spawned command's log contains `needle`.
    pub fn wait_log(&self, log: &str, needle: &str) {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(self.path(&format!("{log}.log"))).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{log} never logged `{needle}`: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A spawned process that is killed if the test ends (or fails) with it
/// still running, so a failed test leaves nothing behind.
pub struct Proc(pub Option<Child>);

impl Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("running")
    }
}

impl DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take()
            && matches!(c.try_wait(), Ok(None))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl From<Child> for Proc {
    fn from(c: Child) -> Proc {
        Proc(Some(c))
    }
}

/// Asks a process to stop gracefully and waits for it.
pub fn terminate(mut proc: Proc) -> std::process::ExitStatus {
    let mut child = proc.0.take().expect("running");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "worker did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `kyu server` process on a free port, stopped with SIGTERM when dropped.
pub struct Server {
    pub child: Option<Proc>,
    pub url: String,
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// SIGKILL: no chance to clean up.
pub fn kill9(mut proc: Proc) {
    let mut child = proc.0.take().expect("running");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Waits until `f` holds, polling; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Kyu {
    /// Starts `kyu server` with `args` and waits until it answers /healthz.
    pub fn server(&self, log: &str, args: &[&str]) -> Server {
        self.server_at(log, free_port(), args)
    }

    /// [`Kyu::server`] on a given port (to restart one where it was).
    pub fn server_at(&self, log: &str, port: u16, args: &[&str]) -> Server {
        let listen = format!("127.0.0.1:{port}");
        let mut all = vec!["server", "--listen", listen.as_str()];
        all.extend_from_slice(args);
        let child = self.spawn(log, &all);
        let url = format!("http://{listen}");
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = try_http(&url, "GET", "/healthz", None, None) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the server did not come up: {}", std::fs::read_to_string(self.path(&format!("{log}.log"))).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child: Some(child), url }
    }
}

impl Server {
    /// SIGTERM and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        terminate(self.child.take().expect("running"))
    }

    /// A request without a token.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        http(&self.url, method, path, None, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c);
        }
    }
}

/// One HTTP/1.1 request (Connection: close); the body as JSON, or as a
/// string when it is not JSON.
pub fn http(base: &str, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    try_http(base, method, path, token, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_http(base: &str, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> std::io::Result<(u16, Value)> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(90)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    if let Some(b) = body {
        // A server may answer (413) before reading a huge body; that is fine.
        let _ = s.write_all(b.as_bytes());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_owned() };
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::String(body))))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
