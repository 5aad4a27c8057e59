//! The LISTEN connection: notifications from every node become store events.
//!
//! NOTIFY is a hint, never the source of truth: if the connection drops,
//! notifications sent meanwhile are lost, so after reconnecting the listener
//! announces every queue once (idle workers look again) and waiters keep
//! their polling fallback while it is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kyu_store::StoreEvent;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use crate::error::PgError;
use crate::migrate::quote_ident;
use crate::tx::parse_payload;

/// Whether the LISTEN connection is up, and how many times it came up.
#[derive(Default)]
pub(crate) struct Listening {
    pub up: AtomicBool,
    pub connects: AtomicU64,
}

pub(crate) async fn run(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    channel: String,
    events: broadcast::Sender<StoreEvent>,
    state: Arc<Listening>,
) {
    let up = &state.up;
    let mut pause = Duration::from_millis(50);
    let mut first = true;
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let (msgs_tx, mut msgs) = tokio::sync::mpsc::unbounded_channel();
                // The connection must be polled for the client to work; its
                // messages include the notifications.
                let driver = tokio::spawn(async move {
                    while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                if msgs_tx.send(n.payload().to_owned()).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %PgError::from(e), "LISTEN connection failed");
                                break;
                            }
                        }
                    }
                });
                if let Err(e) = client.batch_execute(&format!("LISTEN {}", quote_ident(&channel))).await {
                    tracing::warn!(error = %PgError::from(e), "LISTEN failed");
                    driver.abort();
                } else {
                    up.store(true, Ordering::Relaxed);
                    state.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(channel = %channel, "listening for notifications");
                    pause = Duration::from_millis(50);
                    if !first {
                        resync(&client, &events).await;
                    }
                    first = false;
                    while let Some(payload) = msgs.recv().await {
                        for e in parse_payload(&payload) {
                            let _ = events.send(e);
                        }
                    }
                    up.store(false, Ordering::Relaxed);
                    tracing::warn!("LISTEN connection lost; reconnecting (polling meanwhile)");
                }
            }
            Err(e) => tracing::warn!(error = %PgError::from(e), "cannot open the LISTEN connection; retrying in {pause:?}"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Notifications may have been lost while disconnected: wake every waiter.
async fn resync(client: &tokio_postgres::Client, events: &broadcast::Sender<StoreEvent>) {
    if let Ok(rows) = client.query("SELECT name FROM kyu_queues", &[]).await {
        for r in rows {
            if let Ok(q) = kyu_core::QueueName::new(r.get::<_, String>(0)) {
                let _ = events.send(StoreEvent::JobsAvailable(q));
            }
        }
    }
}
