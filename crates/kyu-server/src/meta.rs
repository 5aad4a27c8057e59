//! Health, metrics and the API document.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kyu_store::Store;
use std::fmt::Write;

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

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics<S: Store>(State(app): State<AppState<S>>) -> ApiResult<Response> {
    let queues = app.store.queue_list().await.map_err(ApiError::from)?;
    let mut out = String::new();
    out.push_str("# HELP kyu_jobs Jobs in the store by queue and state.\n# TYPE kyu_jobs gauge\n");
    for q in &queues {
        for (state, n) in &q.counts {
            let _ = writeln!(out, "kyu_jobs{{queue=\"{}\",state=\"{}\"}} {n}", label(q.name.as_str()), state);
        }
    }
    out.push_str("# HELP kyu_queue_paused Whether the queue is paused.\n# TYPE kyu_queue_paused gauge\n");
    for q in &queues {
        let _ = writeln!(out, "kyu_queue_paused{{queue=\"{}\"}} {}", label(q.name.as_str()), u8::from(q.paused));
    }
    out.push_str("# HELP kyu_queue_concurrency_limit The queue's concurrency limit (absent when unlimited).\n# TYPE kyu_queue_concurrency_limit gauge\n");
    for q in &queues {
        if let Some(c) = q.concurrency {
            let _ = writeln!(out, "kyu_queue_concurrency_limit{{queue=\"{}\"}} {c}", label(q.name.as_str()));
        }
    }
    let _ = write!(
        out,
        "# HELP kyu_build_info kyu's version.\n# TYPE kyu_build_info gauge\nkyu_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// `GET /v1/openapi.json`.
pub(crate) async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(crate::openapi::document())
}
