//! `kyu work -- COMMAND ARGS...`: any program as a handler.
//!
//! Per job, COMMAND runs with the payload (JSON) on stdin and `KYU_JOB_ID`,
//! `KYU_ATTEMPT`, `KYU_MAX_ATTEMPTS`, `KYU_QUEUE`, `KYU_KIND`,
//! `KYU_CHECKPOINT` (JSON, empty if none) and `KYU_DEPENDENCY_RESULTS` (JSON)
//! in its environment. Exit 0 completes the job with stdout as the result
//! (JSON if it parses, else the text); any other exit fails the attempt with
//! the tail of stderr as the error, retried per the job's policy. A timeout or
//! cancel kills the command.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kyu_store::Store;
use kyu_worker::{CancellationToken, JobContext, JobError, Worker, WorkerConfig};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::args::WorkArgs;
use crate::error::CliError;

/// How much of stderr becomes the error message.
const STDERR_TAIL: usize = 2000;

/// `remote`: the store is a server (`--url`), which long-polls claims and
/// runs lease rescue itself, so this worker neither sleeps between claims
/// nor runs maintenance.
pub async fn work<S: Store>(store: S, a: WorkArgs, remote: bool) -> Result<ExitCode, CliError> {
    let concurrency = a.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get()));
    if concurrency == 0 || a.batch == Some(0) {
        return Err(CliError::Usage("--concurrency and --batch must be at least 1".into()));
    }
    let mut queues = Vec::new();
    for q in if a.queues.is_empty() { vec!["default".to_string()] } else { a.queues } {
        queues.push(kyu_core::QueueName::new(q).map_err(CliError::Usage)?);
    }
    let defaults = WorkerConfig::default();
    let config = WorkerConfig {
        queues,
        name: a.name.unwrap_or(defaults.name.clone()),
        concurrency,
        batch: a.batch.unwrap_or(concurrency),
        lease: a.lease,
        poll_interval: if remote { std::time::Duration::ZERO } else { a.poll },
        shutdown_grace: a.grace,
        maintenance: if remote { None } else { defaults.maintenance },
        ..defaults
    };
    let stop = CancellationToken::new();
    let finished = Arc::new(AtomicU64::new(0));
    let command: Arc<[String]> = a.command.into();
    let (cmd, done, stopper, max_jobs) = (command.clone(), finished.clone(), stop.clone(), a.max_jobs);
    let worker = Worker::builder(store)
        .config(config)
        .fallback(move |payload: Value, ctx: JobContext| {
            let (cmd, done, stopper) = (cmd.clone(), done.clone(), stopper.clone());
            async move {
                let started = std::time::Instant::now();
                let out = run_command(&cmd, payload, &ctx).await;
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                match &out {
                    Ok(_) => tracing::info!(job = %ctx.id(), attempt = ctx.attempt(), ms = started.elapsed().as_millis() as u64, "completed"),
                    Err(e) => tracing::warn!(job = %ctx.id(), attempt = ctx.attempt(), error = %e, "failed"),
                }
                if max_jobs.is_some_and(|m| n >= m) {
                    stopper.cancel();
                }
                out
            }
        })
        .build();
    let c = worker.config();
    tracing::info!(
        queues = ?c.queues.iter().map(|q| q.as_str()).collect::<Vec<_>>(),
        concurrency = c.concurrency,
        batch = c.batch,
        command = %command.join(" "),
        "kyu work started"
    );
    let signals = stop.clone();
    tokio::spawn(async move {
        crate::commands::server::shutdown_signal().await;
        tracing::info!("stopping: no new jobs; waiting for running commands");
        signals.cancel();
    });
    worker.run(stop).await;
    tracing::info!(jobs = finished.load(Ordering::SeqCst), "kyu work stopped");
    Ok(ExitCode::SUCCESS)
}

async fn run_command(cmd: &[String], payload: Value, ctx: &JobContext) -> Result<Value, JobError> {
    let mut child = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("KYU_JOB_ID", ctx.id().as_str())
        .env("KYU_ATTEMPT", ctx.attempt().to_string())
        .env("KYU_MAX_ATTEMPTS", ctx.max_attempts().to_string())
        .env("KYU_QUEUE", ctx.queue())
        .env("KYU_KIND", ctx.kind())
        .env("KYU_CHECKPOINT", ctx.checkpoint().map(|c| c.to_string()).unwrap_or_default())
        .env("KYU_DEPENDENCY_RESULTS", serde_json::to_string(&ctx.dependency_results()).expect("JSON"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropping the future (timeout, cancel, shutdown) kills the command.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| JobError::retry(format!("cannot start `{}`: {e}", cmd[0])))?;
    let input = serde_json::to_vec(&payload).expect("JSON payload serialises");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Written from its own task so a command that does not read its stdin
    // (or reads it late) cannot deadlock against a full stdout pipe.
    tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let output = tokio::select! {
        out = child.wait_with_output() => out.map_err(|e| JobError::retry(format!("waiting for `{}`: {e}", cmd[0])))?,
        _ = ctx.cancelled() => return Err(JobError::retry("command killed: the job timed out or was cancelled")),
    };
    if output.status.success() {
        let text = String::from_utf8_lossy(&output.stdout);
        let text = text.trim();
        return Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        });
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    let tail: String = {
        let skip = stderr.chars().count().saturating_sub(STDERR_TAIL);
        stderr.chars().skip(skip).collect()
    };
    let status = match output.status.code() {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_owned(),
    };
    Err(JobError::retry(if tail.is_empty() { status } else { format!("{status}: {tail}") }))
}
