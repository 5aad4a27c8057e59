//! Producer and operator endpoints for jobs.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kyu_core::{Job, JobId, JobSpec, JobState, Millis, NewJob, QueueName};
use kyu_store::{
    Inserted, JobInsertManyParams, JobListParams, JobLogAppendParams, JobLogParams, JobPage, JobRetryManyParams, JobRetryParams,
    LogLines, Store, StoreEvent,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::{ApiError, ApiResult, Json, OptionalJson, Path, Query};
use crate::{AppState, MAX_WAIT_MS};

pub(crate) fn job_id(id: String) -> ApiResult<JobId> {
    JobId::new(id).map_err(ApiError::bad_request)
}

pub(crate) async fn must_get<S: Store>(app: &AppState<S>, id: &JobId) -> ApiResult<Job> {
    app.store.job_get(id).await?.ok_or_else(|| ApiError::not_found(format!("job `{id}`")))
}

/// Validates a spec; `label` is its index in a request's `jobs` array.
pub(crate) fn validate<S: Store>(app: &AppState<S>, spec: JobSpec, label: Option<usize>) -> ApiResult<NewJob> {
    spec.validate(app.store.clock().now(), &app.config.limits).map_err(|mut e| {
        if let Some(i) = label {
            e.field = format!("jobs[{i}].{}", e.field);
        }
        e.into()
    })
}

/// `POST /v1/jobs`: 201 with the job, or 200 with the existing one marked duplicate.
pub(crate) async fn enqueue<S: Store>(State(app): State<AppState<S>>, Json(spec): Json<JobSpec>) -> ApiResult<Response> {
    let job = validate(&app, spec, None)?;
    let inserted = app.store.job_insert_many(JobInsertManyParams { jobs: vec![job] }).await?.remove(0);
    let mut job = must_get(&app, &inserted.id).await?;
    job.duplicate = inserted.duplicate;
    let status = if inserted.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, axum::Json(job)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Batch {
    jobs: Vec<JobSpec>,
}

/// `POST /v1/jobs/batch` and `POST /v1/flows` answers.
#[derive(Serialize)]
pub(crate) struct BatchAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    root: Option<JobId>,
    ids: Vec<JobId>,
    /// Per job: its state and whether it was a duplicate.
    jobs: Vec<Inserted>,
}

/// `POST /v1/jobs/batch`: all or nothing.
pub(crate) async fn batch<S: Store>(State(app): State<AppState<S>>, Json(b): Json<Batch>) -> ApiResult<Response> {
    if b.jobs.is_empty() {
        return Err(ApiError::invalid("jobs", "give at least one job"));
    }
    if b.jobs.len() > app.config.max_batch {
        return Err(ApiError::invalid("jobs", format!("at most {} jobs per batch", app.config.max_batch)));
    }
    let jobs = b.jobs.into_iter().enumerate().map(|(i, s)| validate(&app, s, Some(i))).collect::<ApiResult<Vec<_>>>()?;
    let inserted = app.store.job_insert_many(JobInsertManyParams { jobs }).await?;
    let ids = inserted.iter().map(|i| i.id.clone()).collect();
    Ok((StatusCode::CREATED, axum::Json(BatchAnswer { root: None, ids, jobs: inserted })).into_response())
}

/// `POST /v1/flows`: each parent depends on its children; one atomic insert,
/// children first, so every dependency exists before its dependent.
pub(crate) async fn flow<S: Store>(State(app): State<AppState<S>>, Json(tree): Json<kyu_core::Flow>) -> ApiResult<Response> {
    let (root, specs) = tree.flatten()?;
    if specs.len() > app.config.max_batch {
        return Err(ApiError::invalid("children", format!("at most {} jobs per flow", app.config.max_batch)));
    }
    let jobs = specs.into_iter().map(|s| validate(&app, s, None)).collect::<ApiResult<Vec<_>>>()?;
    let inserted = app.store.job_insert_many(JobInsertManyParams { jobs }).await?;
    let ids = inserted.iter().map(|i| i.id.clone()).collect();
    Ok((StatusCode::CREATED, axum::Json(BatchAnswer { root: Some(root), ids, jobs: inserted })).into_response())
}

/// `GET /v1/jobs/{id}`.
pub(crate) async fn get<S: Store>(State(app): State<AppState<S>>, Path(id): Path<String>) -> ApiResult<axum::Json<Job>> {
    Ok(axum::Json(must_get(&app, &job_id(id)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Wait {
    #[serde(default)]
    wait_ms: u64,
}

/// `GET /v1/jobs/{id}/result?wait_ms=N`: long-polls until the job is
/// terminal or N ms pass, woken by store events (in-process on SQLite,
/// LISTEN/NOTIFY on PostgreSQL) and holding no database connection meanwhile.
pub(crate) async fn result<S: Store>(
    State(app): State<AppState<S>>,
    Path(id): Path<String>,
    Query(w): Query<Wait>,
) -> ApiResult<axum::Json<Job>> {
    let id = job_id(id)?;
    if w.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::invalid("wait_ms", format!("at most {MAX_WAIT_MS}")));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(w.wait_ms).min(app.config.long_poll_cap);
    // Subscribe and ask to hear of the end before reading, so a finish
    // between the read and the wait is not missed.
    let mut events = app.store.subscribe();
    if w.wait_ms > 0 {
        app.store.job_watch(&id).await?;
    }
    loop {
        let job = must_get(&app, &id).await?;
        if job.state.is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(axum::Json(job));
        }
        // Events are hints: re-read at least every few seconds regardless.
        let recheck = (tokio::time::Instant::now() + Duration::from_secs(2)).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(recheck) => {}
            _ = app.shutdown.cancelled() => return Ok(axum::Json(job)),
            _ = finished(&mut events, &id) => {}
        }
    }
}

async fn finished(events: &mut broadcast::Receiver<StoreEvent>, id: &JobId) {
    loop {
        match events.recv().await {
            Ok(StoreEvent::JobFinished(done)) if &done == id => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    queue: Option<String>,
    state: Option<String>,
    kind: Option<String>,
    tag: Option<String>,
    error: Option<String>,
    since: Option<Millis>,
    until: Option<Millis>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/jobs`: newest first, a page at a time.
pub(crate) async fn list<S: Store>(State(app): State<AppState<S>>, Query(q): Query<ListQuery>) -> ApiResult<axum::Json<JobPage>> {
    if let Some(l) = q.limit
        && !(1..=1000).contains(&l)
    {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let params = JobListParams {
        queue: q.queue.map(QueueName::new).transpose().map_err(|m| ApiError::invalid("queue", m))?,
        state: q.state.map(|s| s.parse::<JobState>()).transpose().map_err(|m| ApiError::invalid("state", m))?,
        kind: q.kind,
        tag: q.tag,
        // An empty filter filters nothing, as in a form left blank.
        error_contains: q.error.filter(|e| !e.is_empty()),
        since: q.since,
        until: q.until,
        limit: q.limit,
        cursor: q.cursor,
    };
    Ok(axum::Json(app.store.job_list(params).await?))
}

/// `POST /v1/jobs/{id}/cancel`.
pub(crate) async fn cancel<S: Store>(State(app): State<AppState<S>>, Path(id): Path<String>) -> ApiResult<axum::Json<Job>> {
    Ok(axum::Json(app.store.job_cancel(&job_id(id)?).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryBody {
    #[serde(default, deserialize_with = "kyu_core::wire::null_default")]
    dependents: bool,
}

/// `POST /v1/jobs/{id}/retry`, with an optional `{"dependents": true}`.
pub(crate) async fn retry<S: Store>(
    State(app): State<AppState<S>>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<RetryBody>,
) -> ApiResult<axum::Json<Job>> {
    let p = JobRetryParams { id: job_id(id)?, dependents: body.unwrap_or_default().dependents };
    Ok(axum::Json(app.store.job_retry(p).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    attempt: Option<i32>,
}

/// `GET /v1/jobs/{id}/log?attempt=N`: the job's log lines, oldest first.
pub(crate) async fn log<S: Store>(
    State(app): State<AppState<S>>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<axum::Json<LogLines>> {
    let lines = app.store.job_log(JobLogParams { id: job_id(id)?, attempt: q.attempt }).await?;
    Ok(axum::Json(LogLines { lines }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogAppend {
    token: String,
    lines: Vec<String>,
}

/// Most lines one append may carry.
const MAX_LOG_LINES: usize = 10_000;

/// `POST /v1/jobs/{id}/log`: a running job appends lines, fenced by its token.
pub(crate) async fn log_append<S: Store>(
    State(app): State<AppState<S>>,
    Path(id): Path<String>,
    Json(r): Json<LogAppend>,
) -> ApiResult<StatusCode> {
    if r.lines.len() > MAX_LOG_LINES {
        return Err(ApiError::invalid("lines", format!("at most {MAX_LOG_LINES} lines per request")));
    }
    app.store.job_log_append(JobLogAppendParams { id: job_id(id)?, token: r.token, lines: r.lines }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/jobs/{id}`.
pub(crate) async fn delete<S: Store>(State(app): State<AppState<S>>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app.store.job_delete(&job_id(id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryFilter {
    queue: Option<String>,
    kind: Option<String>,
    state: Option<String>,
    since: Option<Millis>,
    until: Option<Millis>,
    error: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct Retried {
    retried: u64,
}

/// `POST /v1/jobs/retry`: bulk redrive of the dead-letter set by filter.
pub(crate) async fn retry_many<S: Store>(State(app): State<AppState<S>>, Json(f): Json<RetryFilter>) -> ApiResult<axum::Json<Retried>> {
    Ok(axum::Json(Retried { retried: app.store.job_retry_many(f.params()?).await? }))
}

impl RetryFilter {
    pub(crate) fn params(self) -> ApiResult<JobRetryManyParams> {
        Ok(JobRetryManyParams {
            queue: self.queue.map(QueueName::new).transpose().map_err(|m| ApiError::invalid("queue", m))?,
            kind: self.kind,
            state: self.state.map(|s| s.parse::<JobState>()).transpose().map_err(|m| ApiError::invalid("state", m))?,
            since: self.since,
            until: self.until,
            error_contains: self.error,
        })
    }
}

#[derive(Serialize)]
pub(crate) struct Deleted {
    deleted: u64,
}

/// `POST /v1/jobs/delete`: bulk delete of the dead-letter set by filter.
pub(crate) async fn delete_many<S: Store>(State(app): State<AppState<S>>, Json(f): Json<RetryFilter>) -> ApiResult<axum::Json<Deleted>> {
    Ok(axum::Json(Deleted { deleted: app.store.job_delete_many(f.params()?).await? }))
}
