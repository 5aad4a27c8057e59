//! kyu-server: the HTTP API v1, the worker protocol, auth, the dashboard
//! and metrics, over any [`Store`]; plus the background services a server
//! runs (lease rescue, pruning, cron schedules).
//!
//! ```no_run
//! # async fn demo(store: impl kyu_store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! let config = kyu_server::ServerConfig::default();
//! let stop = tokio_util::sync::CancellationToken::new();
//! kyu_server::serve(store, config, stop).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![recursion_limit = "512"]

mod activity;
mod auth;
pub mod connections;
mod console;
mod error;
mod jobs;
mod meta;
pub mod metrics;
pub mod openapi;
mod queues;
mod schedules;
mod tls;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use kyu_core::Limits;
use kyu_store::Store;
use kyu_worker::MaintenanceConfig;
use tokio_util::sync::CancellationToken;

pub use auth::{Role, Tokens};
pub use tls::TlsFiles;
pub use error::ApiError;

/// Longest long-poll a client may ask for.
pub const MAX_WAIT_MS: u64 = 60_000;

/// How a server runs. The defaults suit one machine.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// API tokens; none means every request is allowed (loopback only).
    pub tokens: Tokens,
    /// Allow listening beyond loopback without tokens.
    pub insecure: bool,
    /// Per-job size limits (1 MiB payloads by default).
    pub limits: Limits,
    /// Largest request body (16 MiB by default).
    pub max_body_bytes: usize,
    /// Most jobs per batch or flow.
    pub max_batch: usize,
    /// Lease when a claim or heartbeat names none.
    pub default_lease_ms: i64,
    /// How often a waiting long-poll looks at the store even without an
    /// event (events are hints; this bounds the cost of a lost one).
    pub claim_recheck: Duration,
    /// Lease rescue and pruning in this process; `None` turns them off.
    pub maintenance: Option<MaintenanceConfig>,
    /// Longest this server actually holds a long poll, whatever `wait_ms`
    /// asked (clients must expect an empty answer and ask again).
    pub long_poll_cap: Duration,
    /// Connection cap and header/idle timeout.
    pub connections: connections::ConnectionLimits,
    /// Longest a request may take, its body included (long polls end
    /// before it: it is the long-poll cap plus 30 s unless set).
    pub request_timeout: Option<Duration>,
    /// Serve HTTPS with these files (reloaded on SIGHUP).
    pub tls: Option<TlsFiles>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            tokens: Tokens::default(),
            insecure: false,
            limits: Limits::default(),
            max_body_bytes: 16 << 20,
            max_batch: 100_000,
            default_lease_ms: 30_000,
            claim_recheck: Duration::from_secs(2),
            maintenance: Some(MaintenanceConfig::default()),
            long_poll_cap: Duration::from_millis(MAX_WAIT_MS),
            connections: connections::ConnectionLimits::default(),
            request_timeout: None,
            tls: None,
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Listening beyond loopback without tokens and without `--insecure`.
    #[error("refusing to listen on {0} without API tokens: give --token ROLE:SECRET (or KYU_TOKENS), or --insecure")]
    Unprotected(SocketAddr),
    /// The address could not be bound or the server failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key could not be used.
    #[error("{0}")]
    Tls(String),
}

/// What handlers share.
pub(crate) struct AppState<S> {
    pub store: S,
    pub config: Arc<ServerConfig>,
    pub tokens: Arc<Tokens>,
    pub shutdown: CancellationToken,
    pub metrics: Arc<metrics::Metrics>,
    /// Committed changes, for `/v1/events/stream`.
    pub changes: tokio::sync::broadcast::Sender<kyu_core::tally::Change>,
    /// When each HTTP worker was last recorded.
    pub seen: Arc<activity::Seen>,
    /// Random per process: keys the console's CSRF tokens.
    pub console_key: [u8; 32],
}

impl<S: Store> Clone for AppState<S> {
    fn clone(&self) -> Self {
        AppState {
            store: self.store.clone(),
            config: self.config.clone(),
            tokens: self.tokens.clone(),
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
            changes: self.changes.clone(),
            seen: self.seen.clone(),
            console_key: self.console_key,
        }
    }
}

/// The application: every route of [`openapi::ROUTES`], auth, body limits,
/// and JSON errors for unknown routes and methods. Long polls end when
/// `shutdown` is cancelled.
pub fn router<S: Store>(store: S, config: ServerConfig, shutdown: CancellationToken) -> Router {
    let tokens = Arc::new(config.tokens.clone());
    let body_limit = config.max_body_bytes;
    let request_timeout = config.request_timeout.unwrap_or(config.long_poll_cap + Duration::from_secs(30));
    let metrics = Arc::new(metrics::Metrics::new());
    let (changes, _) = tokio::sync::broadcast::channel(4096);
    store.observers().add(metrics.clone());
    store.observers().add(Arc::new(activity::Changes(changes.clone())));
    let app = AppState {
        store,
        config: Arc::new(config),
        tokens: tokens.clone(),
        shutdown,
        metrics: metrics.clone(),
        changes,
        seen: Arc::new(activity::Seen::default()),
        console_key: random_key(),
    };
    Router::new()
        .route("/v1/jobs", post(jobs::enqueue::<S>).get(jobs::list::<S>))
        .route("/v1/jobs/batch", post(jobs::batch::<S>))
        .route("/v1/jobs/retry", post(jobs::retry_many::<S>))
        .route("/v1/jobs/delete", post(jobs::delete_many::<S>))
        .route("/v1/flows", post(jobs::flow::<S>))
        .route("/v1/jobs/{id}", get(jobs::get::<S>).delete(jobs::delete::<S>))
        .route("/v1/jobs/{id}/result", get(jobs::result::<S>))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel::<S>))
        .route("/v1/jobs/{id}/retry", post(jobs::retry::<S>))
        .route("/v1/jobs/{id}/log", get(jobs::log::<S>).post(jobs::log_append::<S>))
        .route("/v1/jobs/{id}/events", get(activity::events::<S>))
        .route("/v1/workers", get(activity::workers::<S>).post(activity::hello::<S>))
        .route("/v1/stats", get(activity::stats::<S>))
        .route("/v1/events/stream", get(activity::stream::<S>))
        .route("/v1/claim", post(worker::claim::<S>))
        .route("/v1/reports", post(worker::reports::<S>))
        .route("/v1/heartbeats", post(worker::heartbeats::<S>))
        .route("/v1/jobs/{id}/heartbeat", post(worker::heartbeat::<S>))
        .route("/v1/jobs/{id}/complete", post(worker::complete::<S>))
        .route("/v1/jobs/{id}/fail", post(worker::fail::<S>))
        .route("/v1/jobs/{id}/snooze", post(worker::snooze::<S>))
        .route("/v1/jobs/{id}/checkpoint", post(worker::checkpoint::<S>))
        .route("/v1/jobs/{id}/progress", post(worker::progress::<S>))
        .route("/v1/jobs/{id}/children", post(worker::children::<S>))
        .route("/v1/queues", get(queues::list::<S>))
        .route("/v1/queues/{queue}", patch(queues::patch::<S>))
        .route("/v1/queues/{queue}/pause", post(queues::pause::<S>))
        .route("/v1/queues/{queue}/resume", post(queues::resume::<S>))
        .route("/v1/schedules", get(schedules::list::<S>))
        .route("/v1/schedules/{name}", get(schedules::get::<S>).put(schedules::put::<S>).delete(schedules::delete::<S>))
        .route("/v1/schedules/{name}/run", post(schedules::run::<S>))
        .route("/v1/openapi.json", get(meta::openapi))
        .route("/metrics", get(meta::metrics::<S>))
        .route("/healthz", get(meta::healthz::<S>))
        .merge(console::routes::<S>())
        .route_layer(axum::middleware::from_fn_with_state(metrics, metrics::count_requests))
        .fallback(no_route)
        .method_not_allowed_fallback(not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(tokens, auth::check))
        .layer(axum::middleware::from_fn_with_state(request_timeout, time_limit))
        .with_state(app)
}

/// Ends a request that takes longer than the server allows (a body sent a
/// byte at a time, a handler stuck on the store) with a 503 in kyu's shape.
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", format!("the request took longer than {} s; retry", limit.as_secs()))
            .into_response(),
    }
}

/// Reloads the TLS certificate and key on each SIGHUP.
async fn reload_on_sighup(tls: Arc<tls::Tls>, stop: CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => match got {
                Some(()) => tls.reload(),
                None => return,
            },
        }
    }
}

/// 32 random bytes from the operating system.
fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    key[..16].copy_from_slice(a.as_bytes());
    key[16..].copy_from_slice(b.as_bytes());
    key
}

async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint; see /v1/openapi.json")
}

async fn not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}

/// Binds the configured address, refusing an unprotected non-loopback one.
pub async fn bind(config: &ServerConfig) -> Result<tokio::net::TcpListener, ServeError> {
    if config.tokens.is_empty() && !config.listen.ip().is_loopback() && !config.insecure {
        return Err(ServeError::Unprotected(config.listen));
    }
    Ok(tokio::net::TcpListener::bind(config.listen).await?)
}

/// Resolves `--listen`: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`
/// (`localhost:7700`); a host name takes its first address.
pub async fn resolve_listen(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(format!("`{addr}` is not HOST:PORT (e.g. 127.0.0.1:7700 or localhost:7700)"));
    }
    let mut found = tokio::net::lookup_host(addr).await.map_err(|e| format!("cannot resolve `{addr}`: {e}"))?;
    found.next().ok_or_else(|| format!("`{addr}` resolves to no address"))
}

/// Binds and serves until `shutdown` is cancelled, running maintenance
/// beside the API; then stops accepting, finishes in-flight requests (long
/// polls answer at once) and returns.
pub async fn serve<S: Store>(store: S, config: ServerConfig, shutdown: CancellationToken) -> Result<(), ServeError> {
    let listener = bind(&config).await?;
    serve_on(listener, store, config, shutdown).await
}

/// [`serve`] on an already bound listener.
pub async fn serve_on<S: Store>(
    listener: tokio::net::TcpListener,
    store: S,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let tls = config.tls.clone().map(tls::Tls::load).transpose().map_err(ServeError::Tls)?;
    let background = shutdown.child_token();
    let maintenance = config.maintenance.map(|m| tokio::spawn(kyu_worker::run_maintenance(store.clone(), m, background.clone())));
    if let Some(t) = &tls {
        tokio::spawn(reload_on_sighup(t.clone(), background.clone()));
    }
    tracing::info!(address = %listener.local_addr()?, auth = !config.tokens.is_empty(), https = tls.is_some(), "kyu server listening");
    let limits = config.connections;
    let app = router(store.clone(), config, shutdown.clone());
    connections::serve(listener, tls, app, limits, shutdown.clone()).await;
    background.cancel();
    if let Some(m) = maintenance {
        let _ = m.await;
    }
    if let Err(e) = store.flush().await {
        tracing::warn!(error = %e, "writing the last per-minute statistics failed");
    }
    Ok(())
}
