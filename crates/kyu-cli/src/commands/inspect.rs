//! `kyu status`, `kyu result`, `kyu jobs`, `kyu queues`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kyu_core::{Job, JobId, JobState, QueueName};
use kyu_store::{JobListParams, Store, StoreEvent};

use crate::args::{JobsArgs, parse_duration};
use crate::error::CliError;
use crate::output;

async fn must_get<S: Store>(store: &S, id: &JobId) -> Result<Job, CliError> {
    store.job_get(id).await?.ok_or_else(|| CliError::refused("not_found", format!("job `{id}` not found")))
}

pub async fn status<S: Store>(store: &S, id: &JobId, json: bool) -> Result<ExitCode, CliError> {
    let job = must_get(store, id).await?;
    if json { output::json(&job) } else { output::job_details(&job) }
    Ok(ExitCode::SUCCESS)
}

/// Prints the result of a completed job (exit 0); a failed or cancelled job
/// prints its last error (exit 1); an unfinished one says so (exit 1).
pub async fn result<S: Store>(store: &S, id: &JobId, wait: Option<String>, json: bool) -> Result<ExitCode, CliError> {
    let deadline = match wait.as_deref() {
        None => Some(Instant::now()),
        Some("forever") => None,
        Some(d) => Some(Instant::now() + parse_duration(d).map_err(CliError::Usage)?),
    };
    let mut events = store.subscribe();
    if deadline.is_none_or(|d| d > Instant::now()) {
        store.job_watch(id).await?;
    }
    let job = loop {
        let job = must_get(store, id).await?;
        if job.state.is_terminal() || deadline.is_some_and(|d| Instant::now() >= d) {
            break job;
        }
        // Woken by this process's events, or by polling for other processes'.
        let poll = if store.supports_listen_notify() { Duration::from_secs(5) } else { Duration::from_millis(100) };
        let nap = deadline.map_or(poll, |d| poll.min(d.saturating_duration_since(Instant::now())));
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = async { loop { if let Ok(StoreEvent::JobFinished(done)) = events.recv().await && &done == id { break } } } => {}
        }
    };
    if json {
        output::json(&job);
    }
    match job.state {
        JobState::Completed => {
            if !json {
                println!("{}", serde_json::to_string_pretty(&job.result).expect("JSON"));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobState::Failed | JobState::Cancelled => {
            if !json {
                let last = job.errors.last().map_or("no error recorded", |e| e.message.as_str());
                eprintln!("kyu: job `{id}` {}: {last}", job.state);
            }
            Ok(ExitCode::from(1))
        }
        state => {
            if !json {
                eprintln!("kyu: job `{id}` is {state}, not finished{}", if wait.is_some() { " (wait timed out)" } else { "" });
            }
            Ok(ExitCode::from(1))
        }
    }
}

pub async fn jobs<S: Store>(store: &S, a: JobsArgs, json: bool) -> Result<ExitCode, CliError> {
    if !(1..=1000).contains(&a.limit) {
        return Err(CliError::Usage("--limit must be between 1 and 1000".into()));
    }
    let params = JobListParams {
        queue: a.queue.map(QueueName::new).transpose().map_err(CliError::Usage)?,
        state: a.state.map(|s| s.parse::<JobState>()).transpose().map_err(CliError::Usage)?,
        kind: a.kind,
        tag: a.tag,
        error_contains: a.error,
        limit: Some(a.limit),
        cursor: a.cursor,
        ..Default::default()
    };
    let page = store.job_list(params).await?;
    if json {
        output::json(&page);
    } else {
        output::job_table(&page.jobs);
        if let Some(c) = &page.next_cursor {
            println!("(more: --cursor {c})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn queues<S: Store>(store: &S, json: bool) -> Result<ExitCode, CliError> {
    let queues = store.queue_list().await?;
    if queues.is_empty() && !json {
        println!("no queues yet (a queue is created by its first job)");
    } else if json {
        output::json(&kyu_store::QueueList { queues });
    } else {
        output::queue_table(&queues);
    }
    Ok(ExitCode::SUCCESS)
}

/// `kyu log ID`: the job's log lines, oldest first.
pub async fn log<S: Store>(store: &S, id: &JobId, attempt: Option<i32>, json: bool) -> Result<ExitCode, CliError> {
    let lines = store.job_log(kyu_store::JobLogParams { id: id.clone(), attempt }).await?;
    if json {
        output::json(&kyu_store::LogLines { lines });
    } else {
        for l in lines {
            println!("{} #{} {}", l.at, l.attempt, l.line);
        }
    }
    Ok(ExitCode::SUCCESS)
}
