//! Runs the `kyu` binary against a database in a temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
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
        c.arg("--database").arg(self.db()).args(args).current_dir(self.dir.path()).env_remove("KYU_DATABASE_URL");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs and expects exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "kyu {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Starts a long-running command with its stderr in `<log>.log`.
    pub fn spawn(&self, log: &str, args: &[&str]) -> Child {
        let err = std::fs::File::create(self.path(&format!("{log}.log"))).unwrap();
        self.command(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).spawn().unwrap()
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
            assert!(start.elapsed() < Duration::from_secs(120), "only {got} of {n} jobs reached {state}");
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

/// Asks a process to stop gracefully and waits for it.
pub fn terminate(mut child: Child) -> std::process::ExitStatus {
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
