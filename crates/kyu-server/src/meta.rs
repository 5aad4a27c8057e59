//! Health, metrics and the API document.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kyu_store::Store;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// `GET /healthz`: the process is alive and the store answers.
pub(crate) async fn healthz<S: Store>(State(app): State<AppState<S>>) -> Response {
    let check = tokio::time::timeout(std::time::Duration::from_secs(5), app.store.queue_list()).await;
    match check {
        Ok(Ok(_)) => axum::Json(serde_json::json!({"status": "ok", "store": "reachable"})).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"status": "unavailable", "store": "unreachable"}))).into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"status": "unavailable", "store": "timeout"}))).into_response(),
    }
}

/// `GET /metrics`: this process's counters and histograms, and the
/// cluster's gauges (read from the store: O(queues)).
pub(crate) async fn metrics<S: Store>(State(app): State<AppState<S>>) -> ApiResult<Response> {
    let (queues, workers) = tokio::try_join!(app.store.queue_list(), app.store.worker_list()).map_err(ApiError::from)?;
    let cluster = crate::metrics::Cluster { queues, workers, now: app.store.clock().now() };
    let body = app.metrics.render(Some(&cluster));
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response())
}

/// `GET /v1/openapi.json`.
pub(crate) async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(crate::openapi::document())
}
