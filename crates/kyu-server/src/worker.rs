//! The HTTP worker protocol: claim, heartbeat, and fenced reports.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use kyu_core::transition::Failure;
use kyu_core::{ClaimedJob, Job, JobId, QueueName, wire};
use kyu_store::{AddedChildren, JobAddChildrenParams, JobClaimParams, JobHeartbeatParams, JobSaveParams, Outcome, Report, Store, StoreEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::{ApiError, ApiResult, Json, Path};
use crate::jobs::{job_id, must_get, validate};
use crate::{AppState, MAX_WAIT_MS};

/// Longest lease a worker may ask for (an hour), and the shortest (100 ms).
const LEASE_MS: std::ops::RangeInclusive<i64> = 100..=3_600_000;
/// Most jobs one claim may take.
const MAX_CLAIM: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimRequest {
    queues: Vec<String>,
    worker: String,
    #[serde(default, deserialize_with = "wire::opt_usize")]
    max: Option<usize>,
    #[serde(default, deserialize_with = "wire::opt_i64")]
    lease_ms: Option<i64>,
    #[serde(default, deserialize_with = "wire::null_u64")]
    wait_ms: u64,
    /// Reports of jobs this worker finished, applied before the claim in the
    /// same store call (one transaction), as `POST /v1/reports` would.
    #[serde(default)]
    reports: Option<Vec<ReportItem>>,
}

#[derive(Serialize)]
pub(crate) struct Claimed {
    jobs: Vec<ClaimedJob>,
    /// When fewer jobs than asked were claimable: the earliest `run_at` of a
    /// scheduled job in these queues, so a worker knows when to look again.
    next_run_at: Option<kyu_core::Millis>,
    /// The answers to the request's `reports`, in their order (only if it had some).
    #[serde(skip_serializing_if = "Option::is_none")]
    reports: Option<Vec<ReportAnswer>>,
}

/// `POST /v1/claim`: applies the `reports` it carries, then claims up to
/// `max` jobs; with `wait_ms`, long-polls until at least one is claimable,
/// woken by store events, holding no database connection while it waits.
pub(crate) async fn claim<S: Store>(State(app): State<AppState<S>>, Json(r): Json<ClaimRequest>) -> ApiResult<axum::Json<Claimed>> {
    if r.queues.is_empty() || r.queues.len() > 100 {
        return Err(ApiError::invalid("queues", "give 1 to 100 queues"));
    }
    let queues = r.queues.into_iter().map(QueueName::new).collect::<Result<Vec<_>, _>>().map_err(|m| ApiError::invalid("queues", m))?;
    if r.worker.is_empty() || r.worker.len() > 128 || r.worker.chars().any(char::is_control) {
        return Err(ApiError::invalid("worker", "must be 1-128 characters without control characters"));
    }
    let max = r.max.unwrap_or(1);
    if !(1..=MAX_CLAIM).contains(&max) {
        return Err(ApiError::invalid("max", format!("must be between 1 and {MAX_CLAIM}")));
    }
    let lease_ms = r.lease_ms.unwrap_or(app.config.default_lease_ms);
    if !LEASE_MS.contains(&lease_ms) {
        return Err(ApiError::invalid("lease_ms", format!("must be between {} and {}", LEASE_MS.start(), LEASE_MS.end())));
    }
    if r.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::invalid("wait_ms", format!("at most {MAX_WAIT_MS}")));
    }
    let mut reports = match r.reports {
        Some(items) if items.len() > MAX_CLAIM => {
            return Err(ApiError::invalid("reports", format!("give at most {MAX_CLAIM} reports")));
        }
        Some(items) => Some(parse_reports(&app, items)?),
        None => None,
    };
    app.seen.touch(&app.store, &r.worker, &queues).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(r.wait_ms).min(app.config.long_poll_cap);
    let mut events = app.store.subscribe();
    let mut answered = None;
    loop {
        let params = JobClaimParams { queues: queues.clone(), worker: r.worker.clone(), max, lease_ms };
        // The reports go with the first claim; a long poll's later claims carry none.
        let claimed = match reports.take() {
            Some(Parsed { batch, answers }) => {
                let ids: Vec<String> = batch.iter().map(|r| r.id.to_string()).collect();
                let (stored, claimed) = app.store.job_report_and_claim(batch, params).await?;
                answered = Some(answer_reports(answers, ids, stored));
                claimed
            }
            None => app.store.job_claim(params).await?,
        };
        let now = tokio::time::Instant::now();
        if !claimed.jobs.is_empty() || now >= deadline {
            return Ok(axum::Json(Claimed { jobs: claimed.jobs, next_run_at: claimed.next_run_at, reports: answered }));
        }
        let mut wake = deadline.min(now + app.config.claim_recheck);
        if let Some(at) = claimed.next_run_at {
            let until = (at.0 - app.store.clock().now().0).max(0) as u64;
            wake = wake.min(now + Duration::from_millis(until));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = app.shutdown.cancelled() => {
                return Ok(axum::Json(Claimed { jobs: Vec::new(), next_run_at: claimed.next_run_at, reports: answered }));
            }
            _ = available(&mut events, &queues) => {}
        }
    }
}

async fn available(events: &mut broadcast::Receiver<StoreEvent>, queues: &[QueueName]) {
    loop {
        match events.recv().await {
            Ok(StoreEvent::JobsAvailable(q)) if queues.contains(&q) => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeartbeatRequest {
    token: String,
    #[serde(default, deserialize_with = "wire::opt_i64")]
    lease_ms: Option<i64>,
}

/// `POST /v1/jobs/{id}/heartbeat`.
pub(crate) async fn heartbeat<S: Store>(
    State(app): State<AppState<S>>,
    Path(id): Path<String>,
    Json(r): Json<HeartbeatRequest>,
) -> ApiResult<axum::Json<kyu_store::Heartbeat>> {
    let id = job_id(id)?;
    let lease_ms = r.lease_ms.unwrap_or(app.config.default_lease_ms);
    if !LEASE_MS.contains(&lease_ms) {
        return Err(ApiError::invalid("lease_ms", format!("must be between {} and {}", LEASE_MS.start(), LEASE_MS.end())));
    }
    let mut out = app.store.job_heartbeat_many(JobHeartbeatParams { jobs: vec![(id, r.token)], lease_ms }).await?;
    Ok(axum::Json(out.remove(0)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeartbeatItem {
    id: String,
    token: String,
    #[serde(default, deserialize_with = "wire::opt_i64")]
    lease_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeartbeatsRequest {
    heartbeats: Vec<HeartbeatItem>,
}

/// One answer of `POST /v1/heartbeats`: the new lease, or why it was refused.
#[derive(Serialize)]
pub(crate) struct HeartbeatAnswer {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_expires_at: Option<kyu_core::Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel_requested: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

#[derive(Serialize)]
pub(crate) struct HeartbeatsAnswer {
    results: Vec<HeartbeatAnswer>,
}

/// `POST /v1/heartbeats`: the leases of many running jobs in one request
/// (one store call per distinct lease length), each answered in its own slot.
pub(crate) async fn heartbeats<S: Store>(
    State(app): State<AppState<S>>,
    Json(r): Json<HeartbeatsRequest>,
) -> ApiResult<axum::Json<HeartbeatsAnswer>> {
    if r.heartbeats.is_empty() || r.heartbeats.len() > MAX_CLAIM {
        return Err(ApiError::invalid("heartbeats", format!("give 1 to {MAX_CLAIM} heartbeats")));
    }
    let mut by_lease: std::collections::BTreeMap<i64, Vec<(usize, JobId, String)>> = Default::default();
    for (i, h) in r.heartbeats.into_iter().enumerate() {
        let lease_ms = h.lease_ms.unwrap_or(app.config.default_lease_ms);
        if !LEASE_MS.contains(&lease_ms) {
            return Err(ApiError::invalid(&format!("heartbeats[{i}].lease_ms"), format!("must be between {} and {}", LEASE_MS.start(), LEASE_MS.end())));
        }
        let id = JobId::new(h.id).map_err(|m| ApiError::invalid(&format!("heartbeats[{i}].id"), m))?;
        by_lease.entry(lease_ms).or_default().push((i, id, h.token));
    }
    let mut results: Vec<Option<HeartbeatAnswer>> = Vec::new();
    for (lease_ms, items) in by_lease {
        let jobs = items.iter().map(|(_, id, t)| (id.clone(), t.clone())).collect();
        let answers = app.store.job_heartbeat_many(JobHeartbeatParams { jobs, lease_ms }).await?;
        for ((i, id, _), a) in items.into_iter().zip(answers) {
            if results.len() <= i {
                results.resize_with(i + 1, || None);
            }
            results[i] = Some(match a {
                Ok(hb) => HeartbeatAnswer { id: id.to_string(), lease_expires_at: Some(hb.lease_expires_at), cancel_requested: Some(hb.cancel_requested), error: None },
                Err(e) => {
                    let e = ApiError::from(e);
                    HeartbeatAnswer { id: id.to_string(), lease_expires_at: None, cancel_requested: None, error: Some(serde_json::json!({"code": e.code, "message": e.message})) }
                }
            });
        }
    }
    Ok(axum::Json(HeartbeatsAnswer { results: results.into_iter().map(|r| r.expect("every heartbeat answered")).collect() }))
}

async fn report<S: Store>(app: &AppState<S>, id: JobId, token: String, outcome: Outcome) -> ApiResult<axum::Json<Job>> {
    let mut out = app.store.job_report_many(vec![Report { id: id.clone(), token, outcome }]).await?;
    out.remove(0)?;
    Ok(axum::Json(must_get(app, &id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteRequest {
    token: String,
    #[serde(default)]
    result: Value,
}

/// `POST /v1/jobs/{id}/complete` → the job.
pub(crate) async fn complete<S: Store>(
    State(app): State<AppState<S>>,
    Path(id): Path<String>,
    Json(r): Json<CompleteRequest>,
) -> ApiResult<axum::Json<Job>> {
    let size = serde_json::to_string(&r.result).map_or(0, |s| s.len());
    if size > app.config.limits.max_payload_bytes {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "the result is over the size limit"));
    }
    report(&app, job_id(id)?, r.token, Outcome::Complete { result: r.result }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailRequest {
    token: String,
    error: String,
    #[serde(default, deserialize_with = "wire::opt_i64")]
    retry_in_ms: Option<i64>,
    retry: Option<bool>,
}

/// `POST /v1/jobs/{id}/fail` → the job; its state says whether it will retry.
pub(crate) async fn fail<S: Store>(
    State(app): State<AppState<S>>,
    Path(id): Path<String>,
    Json(r): Json<FailRequest>,
) -> ApiResult<axum::Json<Job>> {
    if matches!(r.retry_in_ms, Some(ms) if ms < 0) {
        return Err(ApiError::invalid("retry_in_ms", "must be >= 0"));
    }
    let error: String = r.error.chars().take(8192).collect();
    let failure = Failure { retry: r.retry.unwrap_or(true), retry_in_ms: r.retry_in_ms };
    report(&app, job_id(id)?, r.token, Outcome::Fail { error, failure }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnoozeRequest {
    token: String,
    #[serde(deserialize_with = "wire::i64")]
    delay_ms: i64,
}

/// `POST /v1/jobs/{id}/snooze` → the job (the attempt is not counted).
pub(crate) async fn snooze<S: Store>(
    State(app): State<AppState<S>>,
    Path(id): Path<String>,
    Json(r): Json<SnoozeRequest>,
) -> ApiResult<axum::Json<Job>> {
    if r.delay_ms < 0 {
        return Err(ApiError::invalid("delay_ms", "must be >= 0"));
    }
    report(&app, job_id(id)?, r.token, Outcome::Snooze { delay_ms: r.delay_ms }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointRequest {
    token: String,
    checkpoint: Value,
}

/// `POST /v1/jobs/{id}/checkpoint` → 204; fenced by the token.
pub(crate) async fn checkpoint<S: Store>(
    State(app): State<AppState<S>>,
    Path(id): Path<String>,
    Json(r): Json<CheckpointRequest>,
) -> ApiResult<StatusCode> {
    save(&app, id, r.token, Some(r.checkpoint), None).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProgressRequest {
    token: String,
    progress: Value,
}

/// `POST /v1/jobs/{id}/progress` → 204; fenced by the token.
pub(crate) async fn progress<S: Store>(
    State(app): State<AppState<S>>,
    Path(id): Path<String>,
    Json(r): Json<ProgressRequest>,
) -> ApiResult<StatusCode> {
    save(&app, id, r.token, None, Some(r.progress)).await
}

async fn save<S: Store>(app: &AppState<S>, id: String, token: String, checkpoint: Option<Value>, progress: Option<Value>) -> ApiResult<StatusCode> {
    let size = checkpoint.iter().chain(progress.iter()).map(|v| v.to_string().len()).sum::<usize>();
    if size > app.config.limits.max_payload_bytes {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "over the size limit"));
    }
    app.store.job_save(JobSaveParams { id: job_id(id)?, token, checkpoint, progress }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChildrenRequest {
    token: String,
    jobs: Vec<kyu_core::JobSpec>,
    #[serde(default, deserialize_with = "wire::null_default")]
    wait: bool,
}

/// `POST /v1/jobs/{id}/children`: a running job adds children; with `wait`
/// it moves to `waiting` (lease released, attempt given back) and runs again
/// once they completed. A worker must not report on it after `waiting: true`.
pub(crate) async fn children<S: Store>(
    State(app): State<AppState<S>>,
    Path(id): Path<String>,
    Json(r): Json<ChildrenRequest>,
) -> ApiResult<axum::Json<AddedChildren>> {
    if r.jobs.is_empty() || r.jobs.len() > app.config.max_batch {
        return Err(ApiError::invalid("jobs", format!("give 1 to {} jobs", app.config.max_batch)));
    }
    let jobs = r.jobs.into_iter().enumerate().map(|(i, s)| validate(&app, s, Some(i))).collect::<ApiResult<Vec<_>>>()?;
    let added = app.store.job_add_children(JobAddChildrenParams { id: job_id(id)?, token: r.token, jobs, wait: r.wait }).await?;
    Ok(axum::Json(added))
}

/// One report in `POST /v1/reports`.
#[derive(Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum ReportItem {
    Complete {
        id: String,
        token: String,
        #[serde(default)]
        result: Value,
    },
    Fail {
        id: String,
        token: String,
        error: String,
        #[serde(default, deserialize_with = "wire::opt_i64")]
        retry_in_ms: Option<i64>,
        retry: Option<bool>,
    },
    Snooze {
        id: String,
        token: String,
        #[serde(deserialize_with = "wire::i64")]
        delay_ms: i64,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReportsRequest {
    reports: Vec<ReportItem>,
}

/// One answer in `POST /v1/reports`: the job's new state, or why the report was refused.
#[derive(Serialize)]
pub(crate) struct ReportAnswer {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<kyu_core::JobState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

#[derive(Serialize)]
pub(crate) struct ReportsAnswer {
    results: Vec<ReportAnswer>,
}

/// `POST /v1/reports`: many reports (complete, fail, snooze) in one request
/// and one store call, as a worker that finished a batch sends them. Each is
/// checked against its own token and answered in its own slot; a refused one
/// changes nothing and does not affect the others.
pub(crate) async fn reports<S: Store>(State(app): State<AppState<S>>, Json(r): Json<ReportsRequest>) -> ApiResult<axum::Json<ReportsAnswer>> {
    if r.reports.is_empty() || r.reports.len() > MAX_CLAIM {
        return Err(ApiError::invalid("reports", format!("give 1 to {MAX_CLAIM} reports")));
    }
    let Parsed { batch, answers } = parse_reports(&app, r.reports)?;
    let ids: Vec<String> = batch.iter().map(|r| r.id.to_string()).collect();
    let stored = if batch.is_empty() { Vec::new() } else { app.store.job_report_many(batch).await? };
    Ok(axum::Json(ReportsAnswer { results: answer_reports(answers, ids, stored) }))
}

/// Reports checked for what they carry: those to store, and a slot per
/// report, already filled for one refused here (too large).
struct Parsed {
    batch: Vec<Report>,
    answers: Vec<Option<ReportAnswer>>,
}

/// Checks `items` (a malformed one fails the request, naming its field).
fn parse_reports<S: Store>(app: &AppState<S>, items: Vec<ReportItem>) -> ApiResult<Parsed> {
    let mut batch = Vec::with_capacity(items.len());
    let mut answers: Vec<Option<ReportAnswer>> = Vec::with_capacity(items.len());
    let limit = app.config.limits.max_payload_bytes;
    for (i, item) in items.into_iter().enumerate() {
        let field = |f: &str| format!("reports[{i}].{f}");
        let (id, token, outcome) = match item {
            ReportItem::Complete { id, token, result } => {
                // Too large is answered in its slot, like any refusal, so the
                // rest of the batch goes through.
                let size = result.to_string().len();
                if size > limit {
                    let message = format!("result is {size} bytes, over the limit of {limit}");
                    answers.push(Some(ReportAnswer { id, state: None, error: Some(serde_json::json!({"code": "too_large", "message": message})) }));
                    continue;
                }
                (id, token, Outcome::Complete { result })
            }
            ReportItem::Fail { id, token, error, retry_in_ms, retry } => {
                if matches!(retry_in_ms, Some(ms) if ms < 0) {
                    return Err(ApiError::invalid(&field("retry_in_ms"), "must be >= 0"));
                }
                let failure = Failure { retry: retry.unwrap_or(true), retry_in_ms };
                (id, token, Outcome::Fail { error: error.chars().take(8192).collect(), failure })
            }
            ReportItem::Snooze { id, token, delay_ms } => {
                if delay_ms < 0 {
                    return Err(ApiError::invalid(&field("delay_ms"), "must be >= 0"));
                }
                (id, token, Outcome::Snooze { delay_ms })
            }
        };
        let id = JobId::new(id).map_err(|m| ApiError::invalid(&field("id"), m))?;
        batch.push(Report { id, token, outcome });
        answers.push(None);
    }
    Ok(Parsed { batch, answers })
}

/// Fills the empty slots of `answers` with the store's answers, in order.
fn answer_reports(
    answers: Vec<Option<ReportAnswer>>,
    ids: Vec<String>,
    stored: Vec<Result<kyu_core::JobState, kyu_store::StoreError>>,
) -> Vec<ReportAnswer> {
    let (mut ids, mut stored) = (ids.into_iter(), stored.into_iter());
    answers
        .into_iter()
        .map(|slot| {
            slot.unwrap_or_else(|| {
                let id = ids.next().expect("one id per stored report");
                match stored.next().expect("one answer per stored report") {
                    Ok(state) => ReportAnswer { id, state: Some(state), error: None },
                    Err(e) => {
                        let e = ApiError::from(e);
                        ReportAnswer { id, state: None, error: Some(serde_json::json!({"code": e.code, "message": e.message})) }
                    }
                }
            })
        })
        .collect()
}
