//! `kyu enqueue`.

use std::io::Read;
use std::process::ExitCode;

use kyu_core::{Backoff, JobSpec, Limits};
use kyu_store::{JobInsertManyParams, Store};
use serde_json::Value;

use crate::args::{EnqueueArgs, parse_duration};
use crate::error::CliError;
use crate::output;

pub async fn enqueue<S: Store>(store: &S, a: EnqueueArgs, json: bool) -> Result<ExitCode, CliError> {
    let payload = match a.payload.as_deref() {
        None => Value::Null,
        Some("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| CliError::Failed(e.into()))?;
            parse_payload(&text)?
        }
        Some(text) => parse_payload(text)?,
    };
    let ms = |d: std::time::Duration| d.as_millis() as i64;
    let spec = JobSpec {
        id: a.id,
        queue: Some(a.queue),
        kind: a.kind,
        payload,
        priority: a.priority,
        run_at: a.run_at,
        delay_ms: a.delay.map(ms),
        max_attempts: a.max_attempts,
        backoff: a.backoff.as_deref().map(parse_backoff).transpose()?,
        timeout_ms: a.timeout.map(ms),
        unique_key: a.unique_key,
        unique_for_ms: a.unique_for.map(ms),
        depends_on: a.depends_on,
        continue_on_failure: a.continue_on_failure,
        keep_result_ms: a.keep_result.map(ms),
        keep_failed_ms: a.keep_failed.map(ms),
        tags: a.tags,
        group: a.group,
    };
    let job = spec.validate(store.clock().now(), &Limits::default())?;
    let inserted = store.job_insert_many(JobInsertManyParams { jobs: vec![job] }).await?.remove(0);
    if json {
        let mut job = store.job_get(&inserted.id).await?.ok_or_else(|| CliError::Refused("job vanished".into()))?;
        job.duplicate = inserted.duplicate;
        output::json(&job);
    } else if inserted.duplicate {
        println!("{} (duplicate: the job exists already, nothing new was created)", inserted.id);
    } else {
        println!("{}", inserted.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `kyu batch`: all the jobs of a file in one atomic insert.
pub async fn batch<S: Store>(store: &S, file: &str, json: bool) -> Result<ExitCode, CliError> {
    let text = if file == "-" {
        let mut t = String::new();
        std::io::stdin().read_to_string(&mut t).map_err(|e| CliError::Failed(e.into()))?;
        t
    } else {
        std::fs::read_to_string(file).map_err(|e| CliError::Usage(format!("cannot read {file}: {e}")))?
    };
    let specs = parse_specs(&text)?;
    if specs.is_empty() {
        return Err(CliError::Usage(format!("{file} holds no jobs")));
    }
    let now = store.clock().now();
    let mut jobs = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        jobs.push(spec.validate(now, &Limits::default()).map_err(|e| CliError::Usage(format!("job {i}: {e}")))?);
    }
    let n = jobs.len();
    let started = std::time::Instant::now();
    let inserted = store.job_insert_many(JobInsertManyParams { jobs }).await?;
    if json {
        let ids: Vec<&str> = inserted.iter().map(|i| i.id.as_str()).collect();
        output::json(&serde_json::json!({ "ids": ids }));
    } else {
        let dups = inserted.iter().filter(|i| i.duplicate).count();
        println!("{} jobs enqueued in {:.0?} ({dups} duplicates)", n - dups, started.elapsed());
    }
    Ok(ExitCode::SUCCESS)
}

/// `{"jobs":[...]}` as the HTTP API takes it, or one job object per line.
fn parse_specs(text: &str) -> Result<Vec<JobSpec>, CliError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Batch {
        jobs: Vec<JobSpec>,
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') && trimmed.contains("\"jobs\"")
        && let Ok(b) = serde_json::from_str::<Batch>(trimmed) {
            return Ok(b.jobs);
        }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| CliError::Usage(format!("line {}: not a job: {e}", i + 1))))
        .collect()
}

fn parse_payload(text: &str) -> Result<Value, CliError> {
    serde_json::from_str(text).map_err(|e| CliError::Usage(format!("payload is not valid JSON: {e}")))
}

/// `exponential:BASE:MAX` or `fixed:DELAY`.
fn parse_backoff(s: &str) -> Result<Backoff, CliError> {
    let bad = |why: String| CliError::Usage(format!("--backoff `{s}`: {why} (use exponential:BASE:MAX or fixed:DELAY)"));
    let parts: Vec<&str> = s.split(':').collect();
    let ms = |p: &str| parse_duration(p).map(|d| d.as_millis() as i64).map_err(bad);
    match parts.as_slice() {
        ["fixed", d] => Ok(Backoff::Fixed { delay_ms: ms(d)? }),
        ["exponential", base, max] => Ok(Backoff::Exponential { base_ms: ms(base)?, max_ms: ms(max)? }),
        _ => Err(bad("unknown form".into())),
    }
}
