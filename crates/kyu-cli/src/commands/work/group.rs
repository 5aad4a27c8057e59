//! Process groups: each command runs in a group of its own, so everything
//! it starts (`sh -c '...; sleep 60'`) is stopped with it, and nothing of
//! the group outlives its job.
//!
//! Stopping is Celery's soft then hard limit: SIGTERM to the whole group
//! (the command may clean up), SIGKILL after the kill grace. A watchdog
//! process guards against `kyu work` itself dying (SIGKILL, OOM): it holds
//! the read end of a pipe, learns each group as it starts and ends, and
//! when the pipe closes with groups still registered, it stops them.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

/// Sends `signal` to every process of group `pgid`; false if none is left.
pub fn signal_group(pgid: u32, signal: i32) -> bool {
    // SAFETY: kill(2) with a negative pid signals a process group.
    unsafe { libc::kill(-(pgid as libc::pid_t), signal) == 0 }
}

/// Whether any process of group `pgid` is still running. Zombies do not
/// count: a member whose parent has died waits for init to reap it, which
/// some inits do late, and it can no longer do anything.
pub fn group_alive(pgid: u32) -> bool {
    if !signal_group(pgid, 0) {
        return false;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return true };
    for entry in procs.flatten() {
        if !entry.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parens.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut fields = rest.split_whitespace();
        let (state, _ppid, pgrp) = (fields.next(), fields.next(), fields.next());
        if pgrp.and_then(|g| g.parse::<u32>().ok()) == Some(pgid) && state != Some("Z") {
            return true;
        }
    }
    false
}

/// SIGTERM to the group, then SIGKILL once `grace` has passed with any of
/// it still alive. `leader` is the command itself, reaped meanwhile (an
/// unreaped leader would still count as a member). Returns whether SIGKILL
/// was needed.
pub async fn stop_group(pgid: u32, grace: Duration, leader: &mut tokio::process::Child) -> bool {
    if !signal_group(pgid, libc::SIGTERM) {
        let _ = leader.wait().await;
        return false;
    }
    let deadline = tokio::time::Instant::now() + grace;
    let mut reaped = false;
    while tokio::time::Instant::now() < deadline {
        if !reaped {
            reaped = matches!(leader.try_wait(), Ok(Some(_)));
        }
        if reaped && !group_alive(pgid) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = signal_group(pgid, libc::SIGKILL);
    let _ = leader.wait().await;
    killed
}

/// The watchdog's end of the guard: `kyu work` writes `+PGID` when a
/// command starts and `-PGID` when its group is gone.
pub struct Watchdog {
    pipe: std::sync::Mutex<std::process::ChildStdin>,
    _child: std::process::Child,
}

impl Watchdog {
    /// Starts `kyu __watchdog` (this binary) with the kill grace.
    pub fn start(grace: Duration) -> std::io::Result<Watchdog> {
        let exe = std::env::current_exe()?;
        let mut child = std::process::Command::new(exe)
            .arg("__watchdog")
            .arg(grace.as_millis().to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let pipe = child.stdin.take().expect("piped");
        Ok(Watchdog { pipe: std::sync::Mutex::new(pipe), _child: child })
    }

    fn send(&self, line: String) {
        let mut pipe = self.pipe.lock().expect("watchdog pipe");
        if let Err(e) = pipe.write_all(line.as_bytes()).and_then(|_| pipe.flush()) {
            tracing::warn!(error = %e, "the watchdog is gone: commands would outlive a crash of this worker");
        }
    }

    /// A command's group started.
    pub fn guard(&self, pgid: u32) {
        self.send(format!("+{pgid}\n"));
    }

    /// A command's group is gone.
    pub fn release(&self, pgid: u32) {
        self.send(format!("-{pgid}\n"));
    }
}

/// The watchdog process (`kyu __watchdog GRACE_MS`): reads `+PGID`/`-PGID`
/// lines on stdin; when stdin closes (its `kyu work` exited or was killed),
/// stops every group still registered, SIGTERM then SIGKILL.
pub fn run_watchdog(grace_ms: u64) {
    // Ctrl-C in a terminal reaches the whole foreground group; the watchdog
    // waits for its worker to finish instead.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut live: Vec<u32> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (sign, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.trim().parse::<u32>() else { continue };
        match sign {
            "+" => live.push(pgid),
            "-" => live.retain(|p| *p != pgid),
            _ => {}
        }
    }
    live.retain(|p| signal_group(*p, libc::SIGTERM));
    let deadline = Instant::now() + Duration::from_millis(grace_ms);
    while !live.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        live.retain(|p| group_alive(*p));
    }
    for p in live {
        signal_group(p, libc::SIGKILL);
    }
}
