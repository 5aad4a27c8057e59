//! `kyu server`: the HTTP API, worker protocol and dashboard on the store
//! the arguments name, with lease rescue and pruning running beside them.

use std::process::ExitCode;
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use kyu_core::Limits;
use kyu_core::transition::Retention;
use kyu_server::{ServerConfig, Tokens};
use kyu_store::Store;
use tokio_util::sync::CancellationToken;

use crate::args::ServerArgs;
use crate::commands::is_postgres;
use crate::error::CliError;

pub async fn server(database: &str, top: &ArgMatches, sub: &ArgMatches, a: &ServerArgs) -> Result<ExitCode, CliError> {
    let tokens = Tokens::parse(a.tokens.iter().map(String::as_str)).map_err(CliError::Usage)?;
    if a.print_config {
        print_config(database, top, sub, a);
        return Ok(ExitCode::SUCCESS);
    }
    let listen = kyu_server::resolve_listen(&a.listen).await.map_err(CliError::Usage)?;
    kyu_server::connections::raise_fd_limit();
    let budget = kyu_server::connections::fd_budget().unwrap_or(a.max_connections);
    if budget < a.max_connections {
        tracing::warn!(
            max_connections = a.max_connections,
            budget,
            "the file-descriptor limit allows fewer connections than --max-connections; capping at {budget} (raise `ulimit -n` or LimitNOFILE=)"
        );
    }
    let connections = kyu_server::connections::ConnectionLimits {
        max_connections: a.max_connections.min(budget),
        header_timeout: a.header_timeout,
        ..Default::default()
    };
    let config = ServerConfig {
        listen,
        connections,
        tokens,
        insecure: a.insecure,
        limits: Limits { max_payload_bytes: a.max_payload },
        max_body_bytes: a.max_body,
        long_poll_cap: a.long_poll_cap,
        ..ServerConfig::default()
    };
    let retention = Retention { keep_result_ms: a.keep_result.as_millis() as i64, keep_failed_ms: a.keep_failed.as_millis() as i64 };
    let timeout_grace_ms = a.kill_grace.as_millis() as i64;
    // Bind before opening the store, so a refused address fails fast.
    let listener = kyu_server::bind(&config).await.map_err(|e| CliError::Usage(e.to_string()))?;
    let stop = CancellationToken::new();
    let signals = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        signals.cancel();
    });
    if is_postgres(database) {
        let opts = kyu_postgres::PgOptions { retention, timeout_grace_ms, ..Default::default() };
        let store = kyu_postgres::PgStore::connect(database, opts).await.map_err(|e| CliError::Failed(anyhow::anyhow!("{e}")))?;
        run(listener, store, config, stop).await
    } else {
        let opts = kyu_sqlite::SqliteOptions { retention, timeout_grace_ms, ..Default::default() };
        let store = kyu_sqlite::SqliteStore::open(database, opts).map_err(|e| CliError::Failed(anyhow::anyhow!("{e}")))?;
        tracing::info!(database = %database, "embedded SQLite store");
        run(listener, store, config, stop).await
    }
}

async fn run<S: Store>(listener: tokio::net::TcpListener, store: S, config: ServerConfig, stop: CancellationToken) -> Result<ExitCode, CliError> {
    let addr = listener.local_addr().map_err(|e| CliError::Failed(e.into()))?;
    eprintln!("kyu server on http://{addr}  (dashboard: http://{addr}/, API: http://{addr}/v1/openapi.json)");
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

fn source(m: &ArgMatches, id: &str) -> &'static str {
    match m.value_source(id) {
        Some(ValueSource::CommandLine) => "flag",
        Some(ValueSource::EnvVariable) => "environment",
        Some(ValueSource::DefaultValue) | None => "default",
        Some(_) => "other",
    }
}

fn print_config(database: &str, top: &ArgMatches, sub: &ArgMatches, a: &ServerArgs) {
    let tokens: Vec<String> = a
        .tokens
        .iter()
        .map(|t| t.split_once(':').map_or_else(|| "?".to_owned(), |(role, _)| format!("{role}:***")))
        .collect();
    let rows: Vec<(&str, String, &str)> = vec![
        ("database", database.to_owned(), source(top, "database")),
        ("listen", a.listen.clone(), source(sub, "listen")),
        ("max_connections", a.max_connections.to_string(), source(sub, "max_connections")),
        ("header_timeout", human(a.header_timeout), source(sub, "header_timeout")),
        ("kill_grace", human(a.kill_grace), source(sub, "kill_grace")),
        ("tokens", if tokens.is_empty() { "(none: loopback only)".into() } else { tokens.join(",") }, source(sub, "tokens")),
        ("insecure", a.insecure.to_string(), source(sub, "insecure")),
        ("keep_result", human(a.keep_result), source(sub, "keep_result")),
        ("keep_failed", human(a.keep_failed), source(sub, "keep_failed")),
        ("max_payload", a.max_payload.to_string(), source(sub, "max_payload")),
        ("max_body", a.max_body.to_string(), source(sub, "max_body")),
        ("long_poll_cap", human(a.long_poll_cap), source(sub, "long_poll_cap")),
    ];
    for (k, v, src) in rows {
        println!("{k:<12} {v:<40} ({src})");
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) && s > 0 {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else {
        format!("{}ms", d.as_millis())
    }
}
