//! `kyu cancel`, `kyu retry`, `kyu delete`, `kyu pause`, `kyu resume`.

use std::process::ExitCode;

use kyu_core::{JobId, QueueName};
use kyu_store::{QueueUpdateParams, Store};

use crate::error::CliError;
use crate::output;

pub async fn cancel<S: Store>(store: &S, id: &JobId, json: bool) -> Result<ExitCode, CliError> {
    let job = store.job_cancel(id).await?;
    if json {
        output::json(&job);
    } else if job.state == kyu_core::JobState::Running {
        println!("{id}: cancel requested; the worker stops it at its next heartbeat");
    } else {
        println!("{id}: {}", job.state);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn retry<S: Store>(store: &S, id: &JobId, json: bool) -> Result<ExitCode, CliError> {
    let job = store.job_retry(id).await?;
    if json { output::json(&job) } else { println!("{id}: {}", job.state) }
    Ok(ExitCode::SUCCESS)
}

pub async fn delete<S: Store>(store: &S, id: &JobId) -> Result<ExitCode, CliError> {
    store.job_delete(id).await?;
    println!("{id}: deleted");
    Ok(ExitCode::SUCCESS)
}

pub async fn pause<S: Store>(store: &S, queue: QueueName, paused: bool, json: bool) -> Result<ExitCode, CliError> {
    let info = store.queue_update(QueueUpdateParams { name: queue, paused: Some(paused), ..Default::default() }).await?;
    if json {
        output::json(&info);
    } else {
        println!("{}: {}", info.name, if info.paused { "paused" } else { "active" });
    }
    Ok(ExitCode::SUCCESS)
}
