//! Schedule endpoints.

use axum::extract::State;
use axum::http::StatusCode;
use kyu_core::{Schedule, ScheduleSpec};
use kyu_store::{ScheduleList, SchedulePutParams, Store};

use crate::AppState;
use crate::error::{ApiError, ApiResult, Json, Path};

/// `PUT /v1/schedules/{name}`: create or replace; the next tick is computed from now.
pub(crate) async fn put<S: Store>(
    State(app): State<AppState<S>>,
    Path(name): Path<String>,
    Json(spec): Json<ScheduleSpec>,
) -> ApiResult<axum::Json<Schedule>> {
    let now = app.store.clock().now();
    let cron = spec.check(&name, now, &app.config.limits)?;
    let next_run_at = if spec.enabled { cron.next_after(now) } else { None };
    Ok(axum::Json(app.store.schedule_put(SchedulePutParams { name, spec, next_run_at }).await?))
}

/// `GET /v1/schedules`.
pub(crate) async fn list<S: Store>(State(app): State<AppState<S>>) -> ApiResult<axum::Json<ScheduleList>> {
    Ok(axum::Json(ScheduleList { schedules: app.store.schedule_list().await? }))
}

/// `GET /v1/schedules/{name}`.
pub(crate) async fn get<S: Store>(State(app): State<AppState<S>>, Path(name): Path<String>) -> ApiResult<axum::Json<Schedule>> {
    let s = app.store.schedule_get(&name).await?;
    s.map(axum::Json).ok_or_else(|| ApiError::not_found(format!("schedule `{name}`")))
}

/// `DELETE /v1/schedules/{name}` → 204.
pub(crate) async fn delete<S: Store>(State(app): State<AppState<S>>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    app.store.schedule_delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/schedules/{name}/run`: enqueues the schedule's job now, outside
/// its ticks (its next tick stays where it is) → 201 with the job.
pub(crate) async fn run<S: Store>(
    State(app): State<AppState<S>>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, axum::Json<kyu_core::Job>)> {
    let s = app.store.schedule_get(&name).await?.ok_or_else(|| ApiError::not_found(format!("schedule `{name}`")))?;
    let mut spec = s.job.clone();
    // A fresh id: a template's fixed id would make every run a duplicate.
    spec.id = None;
    let job = crate::jobs::validate(&app, spec, None)?;
    let id = job.id.clone();
    app.store.job_insert_many(kyu_store::JobInsertManyParams { jobs: vec![job] }).await?;
    Ok((StatusCode::CREATED, axum::Json(crate::jobs::must_get(&app, &id).await?)))
}
