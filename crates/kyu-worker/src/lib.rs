//! kyu-worker: runs Rust handlers for kyu jobs.
//!
//! ```no_run
//! use std::time::Duration;
//! use kyu_worker::{JobContext, JobError, Worker};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Email { to: String }
//!
//! # async fn demo(store: kyu_sqlite::SqliteStore) {
//! let worker = Worker::builder(store)
//!     .queue("mail")
//!     .concurrency(16)
//!     .handle("send", |email: Email, ctx: JobContext| async move {
//!         let id = ctx.step("render", async { Ok(format!("hello {}", email.to)) }).await?;
//!         if id.is_empty() { return Err(JobError::fatal("nothing to send")); }
//!         Ok(serde_json::json!({"sent": true}))
//!     })
//!     .build();
//! let stop = tokio_util::sync::CancellationToken::new();
//! worker.run(stop).await;
//! # }
//! ```
//!
//! A worker runs up to `concurrency` handlers, claims up to `batch` jobs at a
//! time into free slots only, heartbeats every lease/3, enforces per-job
//! timeouts (cancel signal, then abort after a grace period), sends reports
//! in batches, and on shutdown stops claiming, waits up to a grace period,
//! then releases what is still running so other workers take it at once.
//! Delivery is at least once: handlers should be idempotent.
#![warn(missing_docs)]

mod context;
mod error;
mod handler;
mod maintenance;
mod reporter;
mod run;
mod scheduler;
mod worker;

pub use context::JobContext;
pub use error::JobError;
pub use maintenance::{MaintenanceConfig, run_maintenance};
pub use scheduler::scheduler_pass;
pub use worker::{MOST_PER_CLAIM, PREFETCH_PER_SLOT, Worker, WorkerBuilder, WorkerConfig};

pub use tokio_util::sync::CancellationToken;
