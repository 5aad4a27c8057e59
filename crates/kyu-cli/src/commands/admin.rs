//! `kyu cancel`, `kyu retry`, `kyu delete`, `kyu pause`, `kyu resume`.

use std::process::ExitCode;

use kyu_core::{JobId, JobState, Millis, QueueName};
use kyu_store::{JobRetryManyParams, JobRetryParams, QueueUpdateParams, Store};

use crate::args::{QueueSetArgs, RetryArgs, parse_duration};
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

/// A queue must exist to be changed, unless `create` (a queue is made by
/// its first job; a misspelt name should not quietly make a new one).
async fn known_queue<S: Store>(store: &S, queue: &QueueName, create: bool) -> Result<(), CliError> {
    if create || store.queue_list().await?.iter().any(|q| &q.name == queue) {
        return Ok(());
    }
    Err(CliError::refused(
        "not_found",
        format!("no queue named `{queue}` (a queue is made by its first job; `kyu queues` lists them, --create makes it now)"),
    ))
}

pub async fn pause<S: Store>(store: &S, queue: QueueName, paused: bool, create: bool, json: bool) -> Result<ExitCode, CliError> {
    known_queue(store, &queue, create).await?;
    let info = store.queue_update(QueueUpdateParams { name: queue, paused: Some(paused), ..Default::default() }).await?;
    if json {
        output::json(&info);
    } else {
        println!("{}: {}", info.name, if info.paused { "paused" } else { "active" });
    }
    Ok(ExitCode::SUCCESS)
}

/// `kyu queue set Q ...`: a queue's limits; `none` clears one.
pub async fn queue_set<S: Store>(store: &S, a: QueueSetArgs, json: bool) -> Result<ExitCode, CliError> {
    let name = QueueName::new(a.queue).map_err(CliError::Usage)?;
    known_queue(store, &name, a.create).await?;
    let clearable = |_flag: &str, v: &Option<String>| -> Option<Option<String>> {
        v.as_ref().map(|v| if v == "none" { None } else { Some(v.clone()) })
    };
    let int = |flag: &str, v: Option<String>| -> Result<Option<i32>, CliError> {
        v.map(|v| v.parse::<i32>().map_err(|_| CliError::Usage(format!("--{flag} `{v}`: a whole number, or none")))).transpose()
    };
    let concurrency = clearable("concurrency", &a.concurrency).map(|v| int("concurrency", v)).transpose()?;
    let group_concurrency = clearable("group-concurrency", &a.group_concurrency).map(|v| int("group-concurrency", v)).transpose()?;
    let timeout_ms = clearable("timeout", &a.timeout)
        .map(|v| v.map(|t| parse_duration(&t).map(|d| d.as_millis() as i64).map_err(|e| CliError::Usage(format!("--timeout: {e}")))).transpose())
        .transpose()?;
    let rate_limit = clearable("rate", &a.rate)
        .map(|v| {
            v.map(|r| {
                let (max, per) = r.split_once('/').ok_or_else(|| CliError::Usage(format!("--rate `{r}`: write MAX/PERIOD, e.g. 100/1s, or none")))?;
                let max = max.trim().parse::<i64>().map_err(|_| CliError::Usage(format!("--rate `{r}`: MAX is a whole number")))?;
                let per_ms = parse_duration(per).map_err(|e| CliError::Usage(format!("--rate: {e}")))?.as_millis() as i64;
                Ok::<_, CliError>(kyu_core::RateLimit { max, per_ms })
            })
            .transpose()
        })
        .transpose()?;
    if concurrency.is_none() && group_concurrency.is_none() && timeout_ms.is_none() && rate_limit.is_none() {
        return Err(CliError::Usage("give at least one of --concurrency, --rate, --group-concurrency, --timeout".into()));
    }
    let p = QueueUpdateParams { name, concurrency, rate_limit, group_concurrency, timeout_ms, ..Default::default() };
    let info = store.queue_update(p).await?;
    if json {
        output::json(&info);
    } else {
        output::queue_table(&[info]);
    }
    Ok(ExitCode::SUCCESS)
}
