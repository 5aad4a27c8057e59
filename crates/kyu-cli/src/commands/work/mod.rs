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
use crate::config::{self, Resolved};
use crate::error::CliError;

pub use group::run_watchdog;

/// `remote`: the store is a server (`--url`), which long-polls claims and
/// runs lease rescue itself, so this worker neither sleeps between claims
/// nor runs maintenance.
pub async fn work<S: Store>(store: S, settings: &Resolved, a: WorkArgs, remote: bool, json: bool) -> Result<ExitCode, CliError> {
    if a.print_config {
        settings.print(config::WORK_KEYS, json);
        return Ok(ExitCode::SUCCESS);
    }
    let w = &settings.config.work;
    if w.command.is_empty() {
        return Err(CliError::Usage(
            "give the command to run after `--` (kyu work -q QUEUE -- COMMAND ARGS...), or as work.command in the config file".into(),
        ));
    }
    let concurrency = w.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get()));
    if concurrency == 0 || w.batch == Some(0) {
        return Err(CliError::Usage("concurrency and batch must be at least 1".into()));
    }
    if let Some(b) = w.batch
        && b > concurrency
    {
        return Err(CliError::Usage(format!(
            "--batch {b} is more than --concurrency {concurrency}: a claim asks for at most as many jobs as \
             there are slots; raise --concurrency, or use --max-jobs to take K jobs and stop"
        )));
    }
    if w.max_jobs == Some(0) {
        return Err(CliError::Usage("--max-jobs must be at least 1".into()));
    }
    let mut queues = Vec::new();
    for q in &w.queues {
        queues.push(kyu_core::QueueName::new(q.clone()).map_err(CliError::Usage)?);
    }
    let defaults = WorkerConfig::default();
    let kill_grace = w.kill_grace.0;
    let config = WorkerConfig {
        queues,
        name: w.name.clone().unwrap_or(defaults.name.clone()),
        concurrency,
        batch: w.batch,
        prefetch: w.prefetch,
        lease: w.lease.0,
        poll_interval: if remote { Duration::ZERO } else { w.poll.0 },
        shutdown_grace: w.grace.0,
        // The command gets SIGTERM, then SIGKILL after the kill grace: its
        // handler needs that long (and a little) before being given up on.
        abort_grace: kill_grace + Duration::from_secs(5),
        maintenance: if remote { None } else { defaults.maintenance },
        max_jobs: w.max_jobs,
        burst: w.burst,
        max_result_bytes: w.max_result,
        runs: Some(w.command.join(" ")),
    };
    let metrics_stop = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = &w.metrics {
        let addr = kyu_server::resolve_listen(addr).await.map_err(|e| CliError::Usage(format!("--metrics: {e}")))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::Failed(anyhow::anyhow!("--metrics: cannot listen on {addr}: {e}")))?;
        let metrics = Arc::new(kyu_server::metrics::Metrics::new());
        store.observers().add(metrics.clone());
        if remote {
            tracing::info!("through a server, jobs are counted in the server's /metrics; this one shows none");
        }
        tracing::info!(address = %addr, "serving metrics on /metrics");
        tokio::spawn(kyu_server::metrics::serve_metrics(listener, metrics, metrics_stop.clone()));
    }
    let _stop_metrics = metrics_stop.drop_guard();
    let control_dir = tempfile::Builder::new()
        .prefix("kyu-work-")
        .tempdir()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot create a directory for control files: {e}")))?;
    let watchdog = match group::Watchdog::start(kill_grace) {
        Ok(w) => Some(Arc::new(w)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the watchdog: if this worker is killed, its commands keep running");
            None
        }
    };
    let command: Arc<[String]> = w.command.clone().into();
    let runner = Arc::new(command::Runner {
        command: command.clone(),
        kill_grace,
        max_result: w.max_result,
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
