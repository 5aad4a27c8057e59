//! `kyu cancel`, `kyu retry`, `kyu delete`, `kyu pause`, `kyu resume`.

use std::process::ExitCode;

use kyu_core::{JobId, JobState, Millis, QueueName};
use kyu_store::{JobRetryManyParams, JobRetryParams, QueueUpdateParams, Store};

use crate::args::{RetryArgs, parse_duration};
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

pub async fn retry<S: Store>(store: &S, a: RetryArgs, json: bool) -> Result<ExitCode, CliError> {
    if let Some(id) = &a.id {
        let id = JobId::new(id.clone()).map_err(CliError::Usage)?;
        let job = store.job_retry(JobRetryParams { id: id.clone(), dependents: a.dependents }).await?;
        if json { output::json(&job) } else { println!("{id}: {}", job.state) }
        return Ok(ExitCode::SUCCESS);
    }
    let now = store.clock().now();
    let when = |field: &str, v: &Option<String>| -> Result<Option<Millis>, CliError> {
        v.as_deref()
            .map(|t| {
                Millis::parse(t).or_else(|_| parse_duration(t).map(|d| Millis(now.0 - d.as_millis() as i64))).map_err(|_| {
                    CliError::Usage(format!("--{field} `{t}`: give an RFC 3339 time (2026-11-30T00:00:00Z) or a duration ago (2h)"))
                })
            })
            .transpose()
    };
    let p = JobRetryManyParams {
        queue: a.queue.map(QueueName::new).transpose().map_err(CliError::Usage)?,
        kind: a.kind,
        state: Some(if a.cancelled { JobState::Cancelled } else { JobState::Failed }),
        since: when("since", &a.since)?,
        until: when("until", &a.until)?,
        error_contains: a.error,
    };
    let n = store.job_retry_many(p).await?;
    if json { output::json(&serde_json::json!({"retried": n})) } else { println!("retried {n} jobs") }
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
