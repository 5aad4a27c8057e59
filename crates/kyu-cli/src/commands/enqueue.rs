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
        let mut job = store.job_get(&inserted.id).await?.ok_or_else(|| CliError::refused("not_found", "job vanished"))?;
        job.duplicate = inserted.duplicate;
        output::json(&job);
    } else if inserted.duplicate {
        println!("{} (duplicate: the job exists already, nothing new was created)", inserted.id);
    } else {
        println!("{}", inserted.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// Most jobs sent in one request by `kyu batch --url`.
const CHUNK_JOBS: usize = 10_000;
/// Most bytes of payload sent in one request by `kyu batch --url`, well
/// under a server's default 16 MiB body limit.
const CHUNK_BYTES: usize = 8 << 20;

/// `kyu batch`: the jobs of a file in one atomic insert. To a server
/// (`remote`), a large file goes in chunks under its body limit, each
/// chunk atomic, with a progress bar on a terminal.
pub async fn batch<S: Store>(store: &S, file: &str, json: bool, remote: bool) -> Result<ExitCode, CliError> {
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
    let inserted = if remote { send_in_chunks(store, jobs).await? } else { store.job_insert_many(JobInsertManyParams { jobs }).await? };
    if json {
        let ids: Vec<&str> = inserted.iter().map(|i| i.id.as_str()).collect();
        output::json(&serde_json::json!({ "ids": ids }));
    } else {
        let dups = inserted.iter().filter(|i| i.duplicate).count();
        println!("{} jobs enqueued in {:.0?} ({dups} duplicates)", n - dups, started.elapsed());
    }
    Ok(ExitCode::SUCCESS)
}

async fn send_in_chunks<S: Store>(store: &S, jobs: Vec<kyu_core::NewJob>) -> Result<Vec<kyu_store::Inserted>, CliError> {
    let bar = indicatif::ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs ({per_sec}, {eta} left)")
            .expect("a valid template"),
    );
    let total = jobs.len();
    let mut out = Vec::with_capacity(total);
    let mut chunk = Vec::new();
    let mut bytes = 0;
    let mut jobs = jobs.into_iter().peekable();
    while let Some(job) = jobs.next() {
        bytes += job.payload.len() + 512;
        chunk.push(job);
        let full = chunk.len() >= CHUNK_JOBS || bytes >= CHUNK_BYTES || jobs.peek().is_none();
        if !full {
            continue;
        }
        let n = chunk.len();
        match store.job_insert_many(JobInsertManyParams { jobs: std::mem::take(&mut chunk) }).await {
            Ok(done) => out.extend(done),
            Err(e) => {
                bar.abandon();
                let e = CliError::from(e);
                return Err(CliError::refused(
                    e.code(),
                    format!(
                        "{e} (the first {} of {total} jobs were stored, in chunks of up to {CHUNK_JOBS}; the {n} of this chunk were not; \
                         with ids in the file, sending it again stores only the rest)",
                        out.len()
                    ),
                ));
            }
        }
        bar.inc(n as u64);
        bytes = 0;
    }
    bar.finish_and_clear();
    Ok(out)
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
