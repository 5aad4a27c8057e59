//! `kyu work -- COMMAND ARGS...`: any program as a handler, one run per
//! job ([`command`]), each in a process group of its own ([`group`]).

mod command;
mod group;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use kyu_store::Store;
use kyu_worker::{CancellationToken, JobContext, Worker, WorkerConfig};
use serde_json::Value;

use crate::args::WorkArgs;
use crate::error::CliError;

pub use group::run_watchdog;

/// `remote`: the store is a server (`--url`), which long-polls claims and
/// runs lease rescue itself, so this worker neither sleeps between claims
/// nor runs maintenance.
pub async fn work<S: Store>(store: S, a: WorkArgs, remote: bool) -> Result<ExitCode, CliError> {
    let concurrency = a.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get()));
    if concurrency == 0 || a.batch == Some(0) {
        return Err(CliError::Usage("--concurrency and --batch must be at least 1".into()));
    }
    if let Some(b) = a.batch
        && b > concurrency
    {
        return Err(CliError::Usage(format!(
            "--batch {b} is more than --concurrency {concurrency}: a worker claims only into free slots, \
             so at most {concurrency} at a time; raise --concurrency, or use --max-jobs to take K jobs and stop"
        )));
    }
    if a.max_jobs == Some(0) {
        return Err(CliError::Usage("--max-jobs must be at least 1".into()));
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
        poll_interval: if remote { Duration::ZERO } else { a.poll },
        shutdown_grace: a.grace,
        // The command gets SIGTERM, then SIGKILL after the kill grace: its
        // handler needs that long (and a little) before being given up on.
        abort_grace: a.kill_grace + Duration::from_secs(5),
        maintenance: if remote { None } else { defaults.maintenance },
        max_jobs: a.max_jobs,
        burst: a.burst,
        max_result_bytes: a.max_result,
        ..defaults
    };
    let control_dir = tempfile::Builder::new()
        .prefix("kyu-work-")
        .tempdir()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot create a directory for control files: {e}")))?;
    let watchdog = match group::Watchdog::start(a.kill_grace) {
        Ok(w) => Some(Arc::new(w)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the watchdog: if this worker is killed, its commands keep running");
            None
        }
    };
    let command: Arc<[String]> = a.command.into();
    let runner = Arc::new(command::Runner {
        command: command.clone(),
        kill_grace: a.kill_grace,
        max_result: a.max_result,
        watchdog,
        control_dir: control_dir.path().to_path_buf(),
        counter: AtomicU64::new(0),
    });
    let worker = Worker::builder(store)
        .config(config)
        .fallback(move |payload: Value, ctx: JobContext| {
            let runner = runner.clone();
            async move {
                let started = std::time::Instant::now();
                let out = runner.run(payload, &ctx).await;
                match &out {
                    Ok(_) => tracing::info!(job = %ctx.id(), attempt = ctx.attempt(), ms = started.elapsed().as_millis() as u64, "completed"),
                    Err(e) => tracing::warn!(job = %ctx.id(), attempt = ctx.attempt(), error = %e, "failed"),
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
    let stop = CancellationToken::new();
    let signals = stop.clone();
    tokio::spawn(async move {
        crate::commands::server::shutdown_signal().await;
        tracing::info!("stopping: no new jobs; waiting for running commands");
        signals.cancel();
    });
    worker.run(stop).await;
    tracing::info!("kyu work stopped");
    drop(control_dir);
    Ok(ExitCode::SUCCESS)
}
