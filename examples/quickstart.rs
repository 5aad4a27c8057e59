//! Enqueue a few jobs on a SQLite file and run them with typed handlers,
//! including a step job that resumes after a failure.
//!
//! cargo run -p kyu-examples --example quickstart

use std::time::Duration;

use kyu::{Client, JobContext, JobError, JobSpec, SqliteStore, Worker};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize)]
struct Resize {
    image: String,
    width: u32,
}

#[derive(Serialize)]
struct Resized {
    path: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path().join("kyu.db"), Default::default())?;
    let client = Client::new(store.clone());

    let resize = client.enqueue(JobSpec::new("images", "resize", json!({"image": "cat.png", "width": 320}))).await?;
    let report = client.enqueue(JobSpec::new("images", "report", json!({"month": "2026-11"}))).await?;

    let worker = Worker::builder(store)
        .queue("images")
        .concurrency(4)
        .handle("resize", |job: Resize, _ctx: JobContext| async move {
            Ok(Resized { path: format!("{}-{}w.png", job.image.trim_end_matches(".png"), job.width) })
        })
        // A step job: each finished step is saved in the checkpoint, so the
        // retry after the first attempt's failure skips straight to step 3.
        .handle("report", |p: serde_json::Value, ctx: JobContext| async move {
            let rows: u32 = ctx.step("query", async { Ok(1200) }).await?;
            let csv: String = ctx.step("render", async { Ok(format!("{} rows for {}", rows, p["month"])) }).await?;
            if ctx.attempt() == 1 {
                return Err(JobError::retry_after("upload service unavailable", Duration::from_millis(50)));
            }
            ctx.step("upload", async { Ok(format!("uploaded: {csv}")) }).await
        })
        .build();
    let stop = kyu::CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    for id in [&resize.id, &report.id] {
        let job = client.wait(id, Duration::from_secs(30)).await?;
        println!("{} {} after {} attempt(s): {}", job.kind, job.state, job.attempt, json!(job.result));
        assert_eq!(job.state, kyu::JobState::Completed);
    }
    stop.cancel();
    running.await?;
    Ok(())
}
