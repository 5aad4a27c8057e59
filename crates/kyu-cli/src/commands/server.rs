//! `kyu server`: the HTTP API, worker protocol and dashboard on the store
//! the arguments name, with lease rescue and pruning running beside them.

use std::process::ExitCode;

use kyu_core::Limits;
use kyu_core::transition::Retention;
use kyu_server::{ServerConfig, Tokens};
use kyu_store::Store;
use tokio_util::sync::CancellationToken;

use crate::args::ServerArgs;
use crate::commands::{is_postgres, redact};
use crate::config::{self, Resolved};
use crate::error::CliError;

pub async fn server(settings: &Resolved, a: &ServerArgs, json: bool) -> Result<ExitCode, CliError> {
    let c = &settings.config;
    let tokens = Tokens::parse(c.tokens.iter().map(String::as_str)).map_err(CliError::Usage)?;
    if a.print_config {
        settings.print(config::SERVER_KEYS, json);
        return Ok(ExitCode::SUCCESS);
    }
    let listen = kyu_server::resolve_listen(&c.listen).await.map_err(CliError::Usage)?;
    kyu_server::connections::raise_fd_limit();
    let budget = kyu_server::connections::fd_budget().unwrap_or(c.max_connections);
    if budget < c.max_connections {
        tracing::warn!(
            max_connections = c.max_connections,
            budget,
            "the file-descriptor limit allows fewer connections than --max-connections; capping at {budget} (raise `ulimit -n` or LimitNOFILE=)"
        );
    }
    let connections = kyu_server::connections::ConnectionLimits {
        max_connections: c.max_connections.min(budget),
        header_timeout: c.header_timeout.0,
        ..Default::default()
    };
    let tls = match (&c.tls_cert, &c.tls_key) {
        (Some(cert), Some(key)) => Some(kyu_server::TlsFiles { cert: cert.clone(), key: key.clone() }),
        (None, None) => None,
        _ => return Err(CliError::Usage("give tls_cert and tls_key together".into())),
    };
    let https = tls.is_some();
    let config = ServerConfig {
        listen,
        connections,
        tokens,
        insecure: c.insecure,
        limits: Limits { max_payload_bytes: c.max_payload },
        max_body_bytes: c.max_body,
        long_poll_cap: c.long_poll_cap.0,
        tls,
        ..ServerConfig::default()
    };
    let retention = Retention { keep_result_ms: c.keep_result.0.as_millis() as i64, keep_failed_ms: c.keep_failed.0.as_millis() as i64 };
    let timeout_grace_ms = c.kill_grace.0.as_millis() as i64;
    // Bind before opening the store, so a refused address fails fast.
    let listener = kyu_server::bind(&config).await.map_err(|e| CliError::Usage(e.to_string()))?;
    let stop = CancellationToken::new();
    let signals = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        signals.cancel();
    });
    let database = &c.database;
    if is_postgres(database) {
        let opts = kyu_postgres::PgOptions { retention, timeout_grace_ms, ..Default::default() };
        let store = kyu_postgres::PgStore::connect(database, opts).await?;
        tracing::info!(database = %redact(database), "PostgreSQL store");
        run(listener, store, config, stop, https).await
    } else {
        let opts = kyu_sqlite::SqliteOptions { retention, timeout_grace_ms, ..Default::default() };
        let store = kyu_sqlite::SqliteStore::open(database, opts)?;
        tracing::info!(database = %database, "embedded SQLite store");
        run(listener, store, config, stop, https).await
    }
}

async fn run<S: Store>(
    listener: tokio::net::TcpListener,
    store: S,
    config: ServerConfig,
    stop: CancellationToken,
    https: bool,
) -> Result<ExitCode, CliError> {
    let addr = listener.local_addr().map_err(|e| CliError::Failed(e.into()))?;
    let scheme = if https { "https" } else { "http" };
    eprintln!("kyu server on {scheme}://{addr}  (dashboard: {scheme}://{addr}/, API: {scheme}://{addr}/v1/openapi.json)");
    kyu_server::serve_on(listener, store, config, stop).await.map_err(|e| CliError::Failed(e.into()))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
