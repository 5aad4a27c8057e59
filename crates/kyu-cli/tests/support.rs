//! Runs the `kyu` binary against a database in a temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub struct Kyu {
    pub dir: TempDir,
}

impl Kyu {
    pub fn new() -> Kyu {
        Kyu { dir: tempfile::tempdir().unwrap() }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("kyu.db")
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

    /// Waits until `count(state)` jobs on the whole store reach `n`.
    pub fn wait_count(&self, state: &str, n: usize) {
        let start = Instant::now();
        loop {
            let jobs = self.json(&["jobs", "--state", state, "--limit", "1000"]);
            let got = jobs["jobs"].as_array().unwrap().len();
            if got >= n {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "only {got} of {n} jobs reached {state}");
            std::thread::sleep(Duration::from_millis(50));
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
