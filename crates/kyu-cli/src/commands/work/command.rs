//! One job, one run of the command: its process group, its input and
//! output, its control file, and how its end becomes the job's outcome.
//!
//! The command gets the payload (JSON) on stdin and in its environment
//! `KYU_JOB_ID`, `KYU_ATTEMPT`, `KYU_MAX_ATTEMPTS`, `KYU_QUEUE`, `KYU_KIND`,
//! `KYU_CHECKPOINT` (JSON, empty if none), `KYU_DEPENDENCY_RESULTS` (JSON)
//! and `KYU_CONTROL`, a file it may append JSON lines to:
//! `{"checkpoint":V}` and `{"progress":V}` are saved at once (fenced by the
//! claim's token, which the command never sees); `{"retry_in_ms":N}` and
//! `{"retry":false}` decide what a failure does; `{"snooze_ms":N}` defers
//! the job without spending an attempt, whatever the exit status.
//!
//! Exit 0 completes the job with stdout as its result (JSON if it parses,
//! else the text); any other exit fails the attempt with the tail of stderr.
//! Every stderr line also goes to the job's log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kyu_worker::{JobContext, JobError};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::group::{Watchdog, group_alive, signal_group, stop_group};

/// How much of stderr becomes the error message.
const STDERR_TAIL: usize = 2000;
/// How often the control file is read and stderr lines are sent to the log.
const TICK: Duration = Duration::from_millis(200);

/// Runs the command for each job.
pub struct Runner {
    pub command: Arc<[String]>,
    /// After SIGTERM, how long before SIGKILL.
    pub kill_grace: Duration,
    /// Largest stdout taken as a result.
    pub max_result: usize,
    /// Stops the groups if this process dies.
    pub watchdog: Option<Arc<Watchdog>>,
    /// Where the control files live (removed when `kyu work` exits).
    pub control_dir: PathBuf,
    pub counter: AtomicU64,
}

/// What the command asked for in its control file, for its exit.
#[derive(Default, Debug)]
struct Wishes {
    retry_in_ms: Option<i64>,
    no_retry: bool,
    snooze_ms: Option<i64>,
}

/// Kills the group if the run is abandoned midway (the worker aborted the
/// handler past every grace period).
struct Guard<'a> {
    pgid: u32,
    watchdog: Option<&'a Watchdog>,
    armed: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, libc::SIGKILL);
        }
        if let Some(w) = self.watchdog {
            w.release(self.pgid);
        }
    }
}

impl Runner {
    pub async fn run(&self, payload: Value, ctx: &JobContext) -> Result<Value, JobError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let control = self.control_dir.join(format!("control-{n}.jsonl"));
        std::fs::File::create(&control).map_err(|e| JobError::retry(format!("cannot create the control file: {e}")))?;
        let out = self.run_in(&control, payload, ctx).await;
        let _ = std::fs::remove_file(&control);
        out
    }

    async fn run_in(&self, control: &Path, payload: Value, ctx: &JobContext) -> Result<Value, JobError> {
        let cmd = &self.command;
        let mut child = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .env("KYU_JOB_ID", ctx.id().as_str())
            .env("KYU_ATTEMPT", ctx.attempt().to_string())
            .env("KYU_MAX_ATTEMPTS", ctx.max_attempts().to_string())
            .env("KYU_QUEUE", ctx.queue())
            .env("KYU_KIND", ctx.kind())
            .env("KYU_CHECKPOINT", ctx.checkpoint().map(|c| c.to_string()).unwrap_or_default())
            .env("KYU_DEPENDENCY_RESULTS", serde_json::to_string(&ctx.dependency_results()).expect("JSON"))
            .env("KYU_CONTROL", control)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| JobError::retry(format!("cannot start `{}`: {e}", cmd[0])))?;
        let pgid = child.id().expect("a spawned child has a pid");
        if let Some(w) = &self.watchdog {
            w.guard(pgid);
        }
        let mut guard = Guard { pgid, watchdog: self.watchdog.as_deref(), armed: true };

        let input = serde_json::to_vec(&payload).expect("JSON payload serialises");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Written from its own task so a command that does not read its
        // stdin (or reads it late) cannot deadlock against a full stdout pipe.
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let max = self.max_result;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let reader = tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut total = 0usize;
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n;
                if kept.len() <= max {
                    kept.extend_from_slice(&buf[..n.min(max + 1 - kept.len())]);
                }
            }
            (kept, total)
        });
        let pending_lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let tail: Arc<Mutex<String>> = Arc::default();
        let stderr = child.stderr.take().expect("stderr is piped");
        let (lines, t) = (pending_lines.clone(), tail.clone());
        let errors = tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(stderr);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match r.read_until(b'\n', &mut raw).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&raw);
                let mut tail = t.lock().expect("tail");
                tail.push_str(&line);
                if tail.len() > 4 * STDERR_TAIL {
                    let cut = tail.len() - 2 * STDERR_TAIL;
                    let cut = (cut..tail.len()).find(|i| tail.is_char_boundary(*i)).unwrap_or(tail.len());
                    tail.drain(..cut);
                }
                lines.lock().expect("lines").push(line.trim_end_matches(['\n', '\r']).to_owned());
            }
        });

        let mut wishes = Wishes::default();
        let mut control_at = 0u64;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let exited = loop {
            tokio::select! {
                status = child.wait() => break status.ok(),
                _ = ctx.cancelled() => break None,
                _ = tick.tick() => {
                    read_control(control, &mut control_at, &mut wishes, ctx).await;
                    flush_log(&pending_lines, ctx).await;
                }
            }
        };
        let stopped = exited.is_none();
        if stopped {
            // Timed out, cancelled, lease lost, or the worker is stopping:
            // SIGTERM, then SIGKILL after the kill grace.
            if stop_group(pgid, self.kill_grace, &mut child).await {
                tracing::warn!(job = %ctx.id(), "the command ignored SIGTERM; killed after the kill grace");
            }
        } else if group_alive(pgid) {
            // The command exited but left processes behind: none outlives its job.
            tracing::info!(job = %ctx.id(), "stopping processes the command left running");
            stop_group(pgid, self.kill_grace, &mut child).await;
        }
        guard.armed = false;
        // The group is gone, so the pipes close; a process that left the
        // group (setsid) and kept them open is not waited for.
        let (stdout, total) = tokio::time::timeout(Duration::from_secs(2), reader)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let _ = tokio::time::timeout(Duration::from_secs(2), errors).await;
        read_control(control, &mut control_at, &mut wishes, ctx).await;
        flush_log(&pending_lines, ctx).await;
        drop(guard);

        if stopped {
            return Err(JobError::retry("the command was stopped (timeout, cancel, lost lease or shutdown)"));
        }
        if let Some(ms) = wishes.snooze_ms {
            return Err(JobError::snooze(Duration::from_millis(ms.max(0) as u64)));
        }
        let status = exited.expect("exited");
        if status.success() {
            if total > self.max_result {
                return Err(JobError::fatal(format!("result is {total} bytes, over the limit of {}", self.max_result)));
            }
            let text = String::from_utf8_lossy(&stdout);
            let text = text.trim();
            return Ok(if text.is_empty() {
                Value::Null
            } else {
                // Text that is not JSON is kept as text; bytes that are not
                // text (NUL included) are replaced, as invalid UTF-8 is.
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(kyu_core::validate::printable(text).into_owned()))
            });
        }
        let stderr_tail = {
            let t = tail.lock().expect("tail");
            let t = t.trim();
            let skip = t.chars().count().saturating_sub(STDERR_TAIL);
            t.chars().skip(skip).collect::<String>()
        };
        let how = match status.code() {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_owned(),
        };
        let message = if stderr_tail.is_empty() { how } else { format!("{how}: {stderr_tail}") };
        Err(if wishes.no_retry {
            JobError::fatal(message)
        } else if let Some(ms) = wishes.retry_in_ms {
            JobError::retry_after(message, Duration::from_millis(ms.max(0) as u64))
        } else {
            JobError::retry(message)
        })
    }
}

/// Sends the stderr lines gathered so far to the job's log.
async fn flush_log(pending: &Mutex<Vec<String>>, ctx: &JobContext) {
    let lines = std::mem::take(&mut *pending.lock().expect("lines"));
    if lines.is_empty() {
        return;
    }
    if let Err(e) = ctx.log_lines(lines).await {
        tracing::warn!(job = %ctx.id(), error = %e, "could not write the job log");
    }
}

/// Reads the control lines appended since `at`: checkpoints and progress
/// are saved now; exit wishes are kept for the end. A line that cannot be
/// understood is noted in the job's log.
async fn read_control(path: &Path, at: &mut u64, wishes: &mut Wishes, ctx: &JobContext) {
    let Ok(bytes) = std::fs::read(path) else { return };
    let start = (*at as usize).min(bytes.len());
    let fresh = &bytes[start..];
    // Only complete lines; a line being written is read next time.
    let Some(end) = fresh.iter().rposition(|b| *b == b'\n') else { return };
    *at += (end + 1) as u64;
    for line in String::from_utf8_lossy(&fresh[..end]).lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Err(why) = apply_control(line, wishes, ctx).await {
            let _ = ctx.log(format!("kyu: ignored a KYU_CONTROL line ({why}): {line}")).await;
        }
    }
}

async fn apply_control(line: &str, wishes: &mut Wishes, ctx: &JobContext) -> Result<(), String> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line) else {
        return Err("not a JSON object".into());
    };
    let ms = |v: &Value, key: &str| {
        v.as_i64()
            .filter(|n| (0..=kyu_core::validate::MAX_DURATION_MS).contains(n))
            .ok_or_else(|| format!("{key} must be a whole number of milliseconds"))
    };
    for (key, v) in &map {
        match key.as_str() {
            "checkpoint" => ctx.save_checkpoint(v).await.map_err(|e| format!("checkpoint: {e}"))?,
            "progress" => ctx.progress(v).await.map_err(|e| format!("progress: {e}"))?,
            "retry_in_ms" => wishes.retry_in_ms = Some(ms(v, key)?),
            "snooze_ms" => wishes.snooze_ms = Some(ms(v, key)?),
            "retry" => match v.as_bool() {
                Some(retry) => wishes.no_retry = !retry,
                None => return Err("retry must be true or false".into()),
            },
            other => return Err(format!("unknown key `{other}`")),
        }
    }
    Ok(())
}
