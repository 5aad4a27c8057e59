//! Queue endpoints.

use axum::extract::State;
use kyu_core::{QueueInfo, QueueName, RateLimit, wire};
use kyu_store::{QueueList, QueueUpdateParams, Store};
use serde::{Deserialize, Deserializer};

use crate::AppState;
use crate::error::{ApiError, ApiResult, Json, Path};

/// `GET /v1/queues`.
pub(crate) async fn list<S: Store>(State(app): State<AppState<S>>) -> ApiResult<axum::Json<QueueList>> {
    Ok(axum::Json(QueueList { queues: app.store.queue_list().await? }))
}

/// Absent stays `None`; `null` becomes `Some(None)` (clear the limit).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Patch {
    #[serde(default, deserialize_with = "wire::present_i32")]
    concurrency: Option<Option<i32>>,
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<RateLimit>>,
    #[serde(default, deserialize_with = "wire::present_i32")]
    group_concurrency: Option<Option<i32>>,
    #[serde(default, deserialize_with = "wire::present_i64")]
    timeout_ms: Option<Option<i64>>,
    paused: Option<bool>,
}

fn queue(name: String) -> ApiResult<QueueName> {
    QueueName::new(name).map_err(ApiError::bad_request)
}

/// `PATCH /v1/queues/{q}`: a field left out is unchanged; `null` clears a limit.
pub(crate) async fn patch<S: Store>(
    State(app): State<AppState<S>>,
    Path(name): Path<String>,
    Json(p): Json<Patch>,
) -> ApiResult<axum::Json<QueueInfo>> {
    let params = QueueUpdateParams {
        name: queue(name)?,
        paused: p.paused,
        concurrency: p.concurrency,
        rate_limit: p.rate_limit,
        group_concurrency: p.group_concurrency,
        timeout_ms: p.timeout_ms,
    };
    Ok(axum::Json(app.store.queue_update(params).await?))
}

/// `POST /v1/queues/{q}/pause`.
pub(crate) async fn pause<S: Store>(State(app): State<AppState<S>>, Path(name): Path<String>) -> ApiResult<axum::Json<QueueInfo>> {
    let params = QueueUpdateParams { name: queue(name)?, paused: Some(true), ..Default::default() };
    Ok(axum::Json(app.store.queue_update(params).await?))
}

/// `POST /v1/queues/{q}/resume`.
pub(crate) async fn resume<S: Store>(State(app): State<AppState<S>>, Path(name): Path<String>) -> ApiResult<axum::Json<QueueInfo>> {
    let params = QueueUpdateParams { name: queue(name)?, paused: Some(false), ..Default::default() };
    Ok(axum::Json(app.store.queue_update(params).await?))
}
