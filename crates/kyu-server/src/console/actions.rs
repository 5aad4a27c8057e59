//! What an operator does from the console: each a POST form, checked for
//! the admin role and against cross-site requests, answered with JSON for
//! the page's script or a redirect back for a plain form.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use kyu_core::{JobId, JobState, Millis, QueueName, RateLimit, ScheduleSpec};
use kyu_store::{JobRetryManyParams, JobRetryParams, QueueUpdateParams, SchedulePutParams, Store, StoreError};
use serde_json::json;

use super::view::{job_href, queue_href};
use super::same_site;
use crate::AppState;

type Form = Result<axum::Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>;

/// An action's answer: what happened, and where to look next.
struct Done {
    message: String,
    location: String,
}

struct Refused(StatusCode, String);

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Refused {
        let status = match &e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Denied { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refused(status, e.to_string())
    }
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"))
}

fn answer(headers: &HeaderMap, out: Result<Done, Refused>) -> Response {
    match (out, wants_json(headers)) {
        (Ok(d), true) => axum::Json(json!({"ok": true, "message": d.message, "location": d.location})).into_response(),
        (Ok(d), false) => Redirect::to(&d.location).into_response(),
        (Err(Refused(status, message)), true) => (status, axum::Json(json!({"ok": false, "message": message}))).into_response(),
        (Err(Refused(status, message)), false) => (status, message).into_response(),
    }
}

/// The form of a request from a session that may act, from this site:
/// the session first (401), then where it came from and the role (403),
/// then the form itself (400).
fn allowed<S: Store>(app: &AppState<S>, headers: &HeaderMap, form: Form) -> Result<HashMap<String, String>, Refused> {
    let Some(v) = app.viewer(headers) else {
        return Err(Refused(StatusCode::UNAUTHORIZED, "Sign in again: the session ended.".into()));
    };
    let form = form.map(|f| f.0);
    let field = form.as_ref().ok().and_then(|f| f.get("_csrf")).map(String::as_str);
    same_site(headers, &v, field).map_err(|m| Refused(StatusCode::FORBIDDEN, m.into()))?;
    if !v.admin {
        return Err(Refused(StatusCode::FORBIDDEN, "Only an admin token may do this; sign in with one.".into()));
    }
    form.map_err(|e| Refused(StatusCode::BAD_REQUEST, format!("the form could not be read: {e}")))
}

/// `POST /ui/jobs/{id}/{retry|retry-dependents|cancel|delete}`.
pub(crate) async fn job<S: Store>(
    State(app): State<AppState<S>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Form,
) -> Response {
    let out = async {
        allowed(&app, &headers, form)?;
        let id = JobId::new(id).map_err(|m| Refused(StatusCode::BAD_REQUEST, m))?;
        let here = job_href(id.as_str());
        let done = |message: String, location: String| Done { message, location };
        match action.as_str() {
            "retry" | "retry-dependents" => {
                let dependents = action == "retry-dependents";
                let j = app.store.job_retry(JobRetryParams { id: id.clone(), dependents }).await?;
                Ok(done(format!("Job {id} is {} again.", j.state), here))
            }
            "cancel" => {
                let j = app.store.job_cancel(&id).await?;
                let what = if j.state == JobState::Running { "will stop at its next heartbeat" } else { "is cancelled" };
                Ok(done(format!("Job {id} {what}."), here))
            }
            "delete" => {
                let j = app.store.job_get(&id).await?.ok_or_else(|| Refused(StatusCode::NOT_FOUND, format!("job `{id}` not found")))?;
                app.store.job_delete(&id).await?;
                Ok(done(format!("Job {id} is deleted."), queue_href(j.queue.as_str())))
            }
            other => Err(Refused(StatusCode::NOT_FOUND, format!("no job action `{other}`"))),
        }
    };
    answer(&headers, out.await)
}

/// An optional whole number from a form: empty clears it.
fn number(form: &HashMap<String, String>, field: &str, label: &str) -> Result<Option<i64>, Refused> {
    match form.get(field).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| Refused(StatusCode::UNPROCESSABLE_ENTITY, format!("{label} must be a whole number of 0 or more, or empty"))),
    }
}

/// The dead-letter filter a queue page's form describes.
fn dead_letter(queue: &QueueName, form: &HashMap<String, String>, now: Millis) -> Result<JobRetryManyParams, Refused> {
    let text = |k: &str| form.get(k).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let state = match text("state").as_deref() {
        None | Some("failed") => JobState::Failed,
        Some("cancelled") => JobState::Cancelled,
        Some(other) => {
            return Err(Refused(StatusCode::UNPROCESSABLE_ENTITY, format!("only failed or cancelled jobs form the dead-letter set, not {other}")));
        }
    };
    let within = number(form, "within", "“finished within” (minutes)")?;
    Ok(JobRetryManyParams {
        queue: Some(queue.clone()),
        kind: text("kind"),
        state: Some(state),
        since: within.map(|m| Millis(now.0 - m.min(525_600) * 60_000)),
        until: None,
        error_contains: text("error"),
    })
}

/// `POST /ui/queues/{queue}/{pause|resume|limits|retry-dead|delete-dead}`.
pub(crate) async fn queue<S: Store>(
    State(app): State<AppState<S>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    form: Form,
) -> Response {
    let out = async {
        let form = allowed(&app, &headers, form)?;
        let queue = QueueName::new(name).map_err(|m| Refused(StatusCode::BAD_REQUEST, m))?;
        let here = queue_href(queue.as_str());
        let update = |u: QueueUpdateParams| {
            let app = app.clone();
            async move { app.store.queue_update(u).await }
        };
        let base = QueueUpdateParams { name: queue.clone(), ..Default::default() };
        match action.as_str() {
            "pause" | "resume" => {
                let paused = action == "pause";
                update(QueueUpdateParams { paused: Some(paused), ..base }).await?;
                Ok(Done { message: format!("Queue {queue} is {}.", if paused { "paused" } else { "running" }), location: here })
            }
            "limits" => {
                let int = |field: &str, label: &str| -> Result<Option<i32>, Refused> {
                    number(&form, field, label)?
                        .map(|n| i32::try_from(n).map_err(|_| Refused(StatusCode::UNPROCESSABLE_ENTITY, format!("{label} is too large"))))
                        .transpose()
                };
                let rate = match (number(&form, "rate_max", "the rate")?, number(&form, "rate_per_ms", "the rate window")?) {
                    (Some(max), Some(per_ms)) => Some(RateLimit { max, per_ms }),
                    (None, None) => None,
                    _ => return Err(Refused(StatusCode::UNPROCESSABLE_ENTITY, "a rate limit needs both a count and a window".into())),
                };
                let u = QueueUpdateParams {
                    concurrency: Some(int("concurrency", "concurrency")?),
                    group_concurrency: Some(int("group_concurrency", "per-group concurrency")?),
                    rate_limit: Some(rate),
                    timeout_ms: Some(number(&form, "timeout_ms", "the time limit")?),
                    ..base
                };
                update(u).await?;
                Ok(Done { message: format!("Queue {queue}'s limits are saved."), location: here })
            }
            "retry-dead" => {
                let n = app.store.job_retry_many(dead_letter(&queue, &form, app.store.clock().now())?).await?;
                Ok(Done { message: format!("{n} jobs are queued again."), location: format!("{here}?state=queued") })
            }
            "delete-dead" => {
                let n = app.store.job_delete_many(dead_letter(&queue, &form, app.store.clock().now())?).await?;
                Ok(Done { message: format!("{n} jobs are deleted."), location: here })
            }
            other => Err(Refused(StatusCode::NOT_FOUND, format!("no queue action `{other}`"))),
        }
    };
    answer(&headers, out.await)
}

/// `POST /ui/schedules/{name}/{run|enable|disable}`.
pub(crate) async fn schedule<S: Store>(
    State(app): State<AppState<S>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    form: Form,
) -> Response {
    let out = async {
        allowed(&app, &headers, form)?;
        let s = app
            .store
            .schedule_get(&name)
            .await?
            .ok_or_else(|| Refused(StatusCode::NOT_FOUND, format!("schedule `{name}` not found")))?;
        match action.as_str() {
            "run" => {
                let mut spec = s.job.clone();
                spec.id = None;
                let job = spec
                    .validate(app.store.clock().now(), &app.config.limits)
                    .map_err(|e| Refused(StatusCode::UNPROCESSABLE_ENTITY, format!("the schedule's job is not valid: {e}")))?;
                let id = job.id.clone();
                app.store.job_insert_many(kyu_store::JobInsertManyParams { jobs: vec![job] }).await?;
                Ok(Done { message: format!("Schedule {name} enqueued job {id}."), location: job_href(id.as_str()) })
            }
            "enable" | "disable" => {
                let enabled = action == "enable";
                let now = app.store.clock().now();
                let spec = ScheduleSpec { cron: s.cron, timezone: Some(s.timezone), job: s.job, catchup: s.catchup, enabled };
                let cron = spec.check(&name, now, &app.config.limits).map_err(|e| Refused(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
                let next_run_at = if enabled { cron.next_after(now) } else { None };
                app.store.schedule_put(SchedulePutParams { name: name.clone(), spec, next_run_at }).await?;
                Ok(Done { message: format!("Schedule {name} is {}.", if enabled { "on" } else { "off" }), location: "/schedules".into() })
            }
            other => Err(Refused(StatusCode::NOT_FOUND, format!("no schedule action `{other}`"))),
        }
    };
    answer(&headers, out.await)
}
