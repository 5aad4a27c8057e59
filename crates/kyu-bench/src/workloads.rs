//! W1–W5 over any [`Store`], through the Rust API.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kyu_core::{JobId, JobSpec, JobState, Limits, NewJob};
use kyu_store::{JobInsertManyParams, Store, StoreError};
use kyu_worker::{CancellationToken, JobContext, Worker};
use serde_json::{Value, json};

use crate::Figure;

/// How the measured worker runs: through the Rust API (concurrency 16, as
/// BENCHMARKS.md says) or the HTTP worker protocol (batch claims of 50).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Handlers at once.
    pub concurrency: usize,
    /// Jobs per claim; `None`: the worker's own choice.
    pub batch: Option<usize>,
    /// Idle polling interval (zero over HTTP, where claims long-poll).
    pub poll: Duration,
}

impl Shape {
    /// The Rust API worker.
    pub const RUST: Shape = Shape { concurrency: 16, batch: None, poll: Duration::from_millis(200) };
    /// A worker over the HTTP protocol.
    pub const HTTP: Shape = Shape { concurrency: 50, batch: Some(50), poll: Duration::ZERO };
}
/// Jobs per insert statement group in bulk enqueues.
pub const ENQUEUE_CHUNK: usize = 5_000;

fn noop(queue: &str, now: kyu_core::Millis) -> NewJob {
    JobSpec::new(queue, "noop", Value::Null).validate(now, &Limits::default()).expect("valid")
}

/// Enqueues `n` no-op jobs through the batch path; returns the seconds taken.
pub async fn bulk_enqueue<S: Store>(store: &S, queue: &str, n: usize) -> Result<f64, StoreError> {
    let started = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(ENQUEUE_CHUNK);
        let now = store.clock().now();
        let jobs = (0..k).map(|_| noop(queue, now)).collect();
        store.job_insert_many(JobInsertManyParams { jobs }).await?;
        left -= k;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs one worker (concurrency 16) on `queue` until `n` jobs have
/// completed; returns the seconds from its start.
pub async fn drain<S: Store>(store: &S, shape: Shape, queue: &str, n: usize) -> Result<f64, StoreError> {
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stop = CancellationToken::new();
    let (d1, d2) = (done.clone(), done.clone());
    let worker = Worker::builder(store.clone())
        .queue(queue)
        .concurrency(shape.concurrency)
        .batch(shape.batch)
        .poll_interval(shape.poll)
        .maintenance(None)
        .handle("noop", move |_: Value, _ctx: JobContext| {
            d1.fetch_add(1, Ordering::Relaxed);
            async move { Ok(()) }
        })
        .handle("leaf", move |_: Value, _ctx: JobContext| {
            d2.fetch_add(1, Ordering::Relaxed);
            async move { Ok(()) }
        })
        .build();
    let handle = tokio::spawn(worker.run(stop.clone()));
    wait_completed(store, queue, n, &done).await?;
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = handle.await;
    Ok(secs)
}

/// Waits until the handlers have run `n` times (a counter: polling the
/// store all along would take CPU from the worker being measured), then until
/// the store shows all `n` completed (the last reports committed).
async fn wait_completed<S: Store>(store: &S, queue: &str, n: usize, done: &AtomicUsize) -> Result<(), StoreError> {
    while done.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        let queues = store.queue_list().await?;
        let completed = queues
            .iter()
            .find(|q| q.name.as_str() == queue)
            .map_or(0, |q| q.counts.get("completed").copied().unwrap_or(0));
        if completed as usize >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// W1: bulk enqueue, then one worker drains.
pub async fn w1<S: Store>(store: &S, shape: Shape, n: usize) -> Result<Vec<Figure>, StoreError> {
    let enq = bulk_enqueue(store, "w1", n).await?;
    let proc = drain(store, shape, "w1", n).await?;
    Ok(vec![Figure::rate("W1 enqueue", n, enq), Figure::rate("W1 process", n, proc)])
}

/// W2: `n` single enqueues, one after another.
pub async fn w2<S: Store>(store: &S, n: usize) -> Result<Vec<Figure>, StoreError> {
    let started = Instant::now();
    for _ in 0..n {
        let now = store.clock().now();
        store.job_insert_many(JobInsertManyParams { jobs: vec![noop("w2", now)] }).await?;
    }
    Ok(vec![Figure::rate("W2 enqueue", n, started.elapsed().as_secs_f64())])
}

fn micros_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// W3: an idle worker; `n` jobs enqueued 10 ms apart; enqueue-to-start
/// latency p50 and p99 in ms.
pub async fn w3<S: Store>(store: &S, shape: Shape, n: usize) -> Result<Vec<Figure>, StoreError> {
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let lat = latencies.clone();
    let stop = CancellationToken::new();
    let worker = Worker::builder(store.clone())
        .queue("w3")
        .concurrency(shape.concurrency)
        .batch(shape.batch)
        .poll_interval(shape.poll)
        .maintenance(None)
        .handle("probe", move |p: Value, _ctx: JobContext| {
            let lat = lat.clone();
            async move {
                let sent = p["sent_us"].as_i64().unwrap_or(0);
                lat.lock().expect("latencies").push((micros_now() - sent) as f64 / 1000.0);
                Ok(())
            }
        })
        .build();
    let handle = tokio::spawn(worker.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ids: Vec<JobId> = Vec::with_capacity(n);
    for _ in 0..n {
        let spec = JobSpec::new("w3", "probe", json!({"sent_us": micros_now()}));
        let job = spec.validate(store.clock().now(), &Limits::default()).expect("valid");
        ids.push(store.job_insert_many(JobInsertManyParams { jobs: vec![job] }).await?.remove(0).id);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.lock().expect("latencies").len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let _ = handle.await;
    let mut l = latencies.lock().expect("latencies").clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| l.get(((l.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN);
    Ok(vec![
        Figure { name: "W3 p50".into(), value: pct(0.50), unit: "ms" },
        Figure { name: "W3 p99".into(), value: pct(0.99), unit: "ms" },
    ])
}

/// W4: W1's processing rate with `retained` finished jobs in the store.
/// The retained jobs are inserted and completed through the store first.
pub async fn w4<S: Store>(store: &S, shape: Shape, n: usize, retained: usize) -> Result<Vec<Figure>, StoreError> {
    fill_history(store, retained).await?;
    bulk_enqueue(store, "w4", n).await?;
    let proc = drain(store, shape, "w4", n).await?;
    Ok(vec![Figure::rate(format!("W4 process ({retained} retained)"), n, proc)])
}

/// Puts `n` completed jobs in the store, in a queue of their own, through
/// the trait: enqueue in chunks, claim and complete in batches.
pub async fn fill_history<S: Store>(store: &S, n: usize) -> Result<(), StoreError> {
    bulk_enqueue(store, "history", n).await?;
    let mut left = n;
    while left > 0 {
        let claimed = store
            .job_claim(kyu_store::JobClaimParams {
                queues: vec![kyu_core::QueueName::new("history").expect("name")],
                worker: "bench".into(),
                max: 5_000,
                lease_ms: 600_000,
            })
            .await?
            .jobs;
        if claimed.is_empty() {
            break;
        }
        left -= claimed.len();
        let reports = claimed
            .into_iter()
            .map(|j| kyu_store::Report {
                id: j.id,
                token: j.token,
                outcome: kyu_store::Outcome::Complete { result: Value::Null },
            })
            .collect();
        store.job_report_many(reports).await?;
    }
    Ok(())
}

/// W5: one parent with `n` children: seconds until the parent completes,
/// against the same `n` jobs without a parent.
pub async fn w5<S: Store>(store: &S, shape: Shape, n: usize) -> Result<Vec<Figure>, StoreError> {
    // Without a parent.
    let plain = {
        let now = store.clock().now();
        let jobs = (0..n).map(|_| noop("w5plain", now)).collect();
        store.job_insert_many(JobInsertManyParams { jobs }).await?;
        drain(store, shape, "w5plain", n).await?
    };
    // With a parent depending on all of them.
    let now = store.clock().now();
    let children: Vec<NewJob> = (0..n)
        .map(|_| JobSpec::new("w5", "leaf", Value::Null).validate(now, &Limits::default()).expect("valid"))
        .collect();
    let mut parent = JobSpec::new("w5", "noop", Value::Null);
    parent.depends_on = children.iter().map(|c| c.id.to_string()).collect();
    let parent = parent.validate(now, &Limits::default()).expect("valid");
    let parent_id = parent.id.clone();
    let mut jobs = children;
    jobs.push(parent);
    store.job_insert_many(JobInsertManyParams { jobs }).await?;
    let with_parent = drain(store, shape, "w5", n + 1).await?;
    let state = store.job_get(&parent_id).await?.map(|j| j.state);
    if state != Some(JobState::Completed) {
        return Err(StoreError::Conflict(format!("W5 parent ended {state:?}")));
    }
    Ok(vec![
        Figure { name: "W5 without parent".into(), value: plain, unit: "s" },
        Figure { name: "W5 parent done".into(), value: with_parent, unit: "s" },
    ])
}
