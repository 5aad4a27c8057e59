//! The worker runtime against a real SQLite store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kyu_core::{Backoff, Job, JobId, JobSpec, JobState, Limits};
use kyu_sqlite::SqliteStore;
use kyu_store::{JobInsertManyParams, Store};
use kyu_worker::{CancellationToken, JobContext, JobError, Worker, WorkerBuilder};
use serde::Deserialize;
use serde_json::{Value, json};

fn store() -> (SqliteStore, kyu_sqlite::testing::Fresh) {
    kyu_sqlite::testing::fresh_store()
}

async fn enqueue(s: &SqliteStore, spec: JobSpec) -> JobId {
    let job = spec.validate(s.clock().now(), &Limits::default()).unwrap();
    s.job_insert_many(JobInsertManyParams { jobs: vec![job] }).await.unwrap().remove(0).id
}

fn spec(kind: &str, payload: Value) -> JobSpec {
    JobSpec::new("default", kind, payload)
}

/// Enqueues `n` jobs of `kind` in one batch (payloads 0..n).
async fn enqueue_many(s: &SqliteStore, kind: &str, n: i64) -> Vec<JobId> {
    let now = s.clock().now();
    let jobs = (0..n).map(|i| spec(kind, json!(i)).validate(now, &Limits::default()).unwrap()).collect();
    s.job_insert_many(JobInsertManyParams { jobs }).await.unwrap().into_iter().map(|i| i.id).collect()
}

/// Polls until the job satisfies `done`, or panics after 10 s.
async fn wait_for(s: &SqliteStore, id: &JobId, done: impl Fn(&Job) -> bool) -> Job {
    let start = Instant::now();
    loop {
        let job = s.job_get(id).await.unwrap().unwrap();
        if done(&job) {
            return job;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "job never got there: {job:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn terminal(s: &SqliteStore, id: &JobId) -> Job {
    wait_for(s, id, |j| j.state.is_terminal()).await
}

/// Starts a worker; stop it with the returned token and await the handle.
fn start(b: WorkerBuilder<SqliteStore>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let worker = b.poll_interval(Duration::from_millis(50)).build();
    let handle = tokio::spawn(worker.run(stop.clone()));
    (stop, handle)
}

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_handler_completes_with_result() {
    let (s, _d) = store();
    let id = enqueue(&s, spec("add", json!({"a": 2, "b": 3}))).await;
    let (stop, h) = start(Worker::builder(s.clone()).handle("add", |p: Add, _ctx: JobContext| async move {
        Ok(json!({"sum": p.a + p.b}))
    }));
    let job = terminal(&s, &id).await;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.result, Some(json!({"sum": 5})));
    // A payload that does not fit the type fails for good.
    let bad = enqueue(&s, spec("add", json!({"a": "x"}))).await;
    let job = terminal(&s, &bad).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempt, 1);
    assert!(job.errors[0].message.contains("payload does not match"), "{:?}", job.errors);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_then_success_and_fatal() {
    let (s, _d) = store();
    let flaky = enqueue(&s, spec("flaky", json!(null))).await;
    let doomed = enqueue(&s, spec("doomed", json!(null))).await;
    let (stop, h) = start(
        Worker::builder(s.clone())
            .handle("flaky", |_: Value, ctx: JobContext| async move {
                if ctx.attempt() < 3 {
                    return Err(JobError::retry_after(format!("try {}", ctx.attempt()), Duration::from_millis(10)));
                }
                Ok("third time lucky")
            })
            .handle("doomed", |_: Value, _ctx: JobContext| async move { Err::<(), _>(JobError::fatal("invalid input")) }),
    );
    let job = terminal(&s, &flaky).await;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.attempt, 3);
    assert_eq!(job.errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["try 1", "try 2"]);
    let job = terminal(&s, &doomed).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempt, 1, "a fatal error does not retry");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snooze_does_not_spend_attempts() {
    let (s, _d) = store();
    let mut sp = spec("sleepy", json!(null));
    sp.max_attempts = Some(1);
    let id = enqueue(&s, sp).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let (stop, h) = start(Worker::builder(s.clone()).handle("sleepy", move |_: Value, ctx: JobContext| {
        let r = r.clone();
        async move {
            if r.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(ctx.snooze(Duration::from_millis(20)));
            }
            Ok(ctx.attempt())
        }
    }));
    let job = terminal(&s, &id).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert_eq!(job.result, Some(json!(1)), "every run was attempt 1");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cancels_then_fails_with_timeout() {
    let (s, _d) = store();
    let mut sp = spec("slow", json!(null));
    sp.timeout_ms = Some(100);
    sp.max_attempts = Some(1);
    let id = enqueue(&s, sp).await;
    let saw_cancel = Arc::new(AtomicUsize::new(0));
    let c = saw_cancel.clone();
    let (stop, h) = start(Worker::builder(s.clone()).abort_grace(Duration::from_millis(200)).handle("slow", move |_: Value, ctx: JobContext| {
        let c = c.clone();
        async move {
            ctx.cancelled().await;
            c.fetch_add(1, Ordering::SeqCst);
            // Ignores the signal: the worker aborts it after the grace period.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    }));
    let job = terminal(&s, &id).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.errors[0].message, "timeout");
    assert_eq!(saw_cancel.load(Ordering::SeqCst), 1, "the handler was signalled first");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_resume_after_a_failed_attempt() {
    let (s, _d) = store();
    let mut sp = spec("steps", json!({"n": 4}));
    sp.backoff = Some(Backoff::Fixed { delay_ms: 10 });
    let id = enqueue(&s, sp).await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    let (stop, h) = start(Worker::builder(s.clone()).handle("steps", move |p: Value, ctx: JobContext| {
        let f = f.clone();
        async move {
            let n = ctx
                .step("fetch", async {
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok(p["n"].as_i64().unwrap())
                })
                .await?;
            let doubled = ctx.step("double", async { Ok(n * 2) }).await?;
            if ctx.attempt() == 1 {
                return Err(JobError::retry("crash after two steps"));
            }
            let total: i64 = ctx.step("finish", async { Ok(doubled + 1) }).await?;
            Ok(total)
        }
    }));
    let job = terminal(&s, &id).await;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.result, Some(json!(9)));
    assert_eq!(job.attempt, 2);
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "a finished step does not run again");
    assert_eq!(job.checkpoint, Some(json!({"steps": {"fetch": 4, "double": 8, "finish": 9}})));
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cancel_reaches_running_handler() {
    let (s, _d) = store();
    let id = enqueue(&s, spec("loop", json!(null))).await;
    let (stop, h) = start(
        Worker::builder(s.clone()).lease(Duration::from_millis(300)).handle("loop", |_: Value, ctx: JobContext| async move {
            ctx.progress(json!({"started": true})).await?;
            ctx.cancelled().await;
            Err::<(), _>(JobError::retry("stopped on request"))
        }),
    );
    wait_for(&s, &id, |j| j.progress.is_some()).await;
    s.job_cancel(&id).await.unwrap();
    let job = terminal(&s, &id).await;
    assert_eq!(job.state, JobState::Cancelled);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_jobs_still_running_after_grace() {
    let (s, _d) = store();
    let id = enqueue(&s, spec("forever", json!(null))).await;
    let stop = CancellationToken::new();
    let worker = Worker::builder(s.clone())
        .shutdown_grace(Duration::from_millis(200))
        .abort_grace(Duration::from_millis(200))
        .handle("forever", |_: Value, _ctx: JobContext| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        })
        .build();
    let h = tokio::spawn(worker.run(stop.clone()));
    wait_for(&s, &id, |j| j.state == JobState::Running).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), h).await.expect("worker stops after its grace period").unwrap();
    let job = s.job_get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued, "released for another worker at once");
    assert_eq!(job.attempt, 0, "the interrupted run is not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_handlers_within_grace() {
    let (s, _d) = store();
    let id = enqueue(&s, spec("short", json!(null))).await;
    let stop = CancellationToken::new();
    let worker = Worker::builder(s.clone())
        .handle("short", |_: Value, _ctx: JobContext| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok("finished")
        })
        .build();
    let h = tokio::spawn(worker.run(stop.clone()));
    wait_for(&s, &id, |j| j.state == JobState::Running).await;
    stop.cancel();
    h.await.unwrap();
    let job = s.job_get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed, "its report was flushed before run returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kind_and_panic_fail_the_attempt() {
    let (s, _d) = store();
    let mut sp = spec("nobody", json!(null));
    sp.max_attempts = Some(1);
    let unknown = enqueue(&s, sp).await;
    let mut sp = spec("boom", json!(null));
    sp.max_attempts = Some(1);
    let boom = enqueue(&s, sp).await;
    let (stop, h) = start(Worker::builder(s.clone()).handle("boom", |_: Value, _ctx: JobContext| async move {
        if true {
            panic!("kaboom");
        }
        Ok(())
    }));
    let job = terminal(&s, &unknown).await;
    assert!(job.errors[0].message.contains("no handler for kind `nobody`"));
    let job = terminal(&s, &boom).await;
    assert_eq!(job.errors[0].message, "handler panicked: kaboom");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_never_exceeded_and_everything_completes() {
    let (s, _d) = store();
    let ids = enqueue_many(&s, "work", 200).await;
    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (l, p) = (live.clone(), peak.clone());
    let (stop, h) = start(Worker::builder(s.clone()).concurrency(4).batch(3).handle("work", move |n: i64, _ctx: JobContext| {
        let (l, p) = (l.clone(), p.clone());
        async move {
            let now = l.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            l.fetch_sub(1, Ordering::SeqCst);
            Ok(n)
        }
    }));
    for id in &ids {
        assert_eq!(terminal(&s, id).await.state, JobState::Completed);
    }
    assert!(peak.load(Ordering::SeqCst) <= 4, "peak {}", peak.load(Ordering::SeqCst));
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_is_woken_by_an_enqueue_in_this_process() {
    let (s, _d) = store();
    let stop = CancellationToken::new();
    // A poll interval far longer than the test: only the event can wake it.
    let worker = Worker::builder(s.clone())
        .poll_interval(Duration::from_secs(3600))
        .handle("ping", |_: Value, _ctx: JobContext| async move { Ok("pong") })
        .build();
    let h = tokio::spawn(worker.run(stop.clone()));
    // Once its first claim (an empty one) is in, it is idle.
    while s.writer_stats().1 == 0 {
        tokio::task::yield_now().await;
    }
    let id = enqueue(&s, spec("ping", json!(null))).await;
    let job = terminal(&s, &id).await;
    assert_eq!(job.result, Some(json!("pong")));
    // A delayed job is picked up when due, also without polling.
    let mut sp = spec("ping", json!(null));
    sp.delay_ms = Some(200);
    let id = enqueue(&s, sp).await;
    assert_eq!(terminal(&s, &id).await.state, JobState::Completed);
    stop.cancel();
    h.await.unwrap();
}

/// Jobs in each state of the default queue.
async fn count(s: &SqliteStore, state: &str) -> i64 {
    let queues = s.queue_list().await.unwrap();
    queues.iter().find(|q| q.name.as_str() == "default").map_or(0, |q| q.counts.get(state).copied().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_held_ahead_are_given_back_unspent_on_shutdown() {
    let (s, _d) = store();
    let quick = enqueue(&s, spec("quick", json!(null))).await;
    enqueue_many(&s, "slow", 20).await;
    let stop = CancellationToken::new();
    // One slot, up to 4 held ahead once a handler has shown it is quick.
    let worker = Worker::builder(s.clone())
        .concurrency(1)
        .prefetch(4)
        .poll_interval(Duration::from_millis(20))
        .handle("quick", |_: Value, _ctx: JobContext| async move { Ok(()) })
        .handle("slow", |_: Value, _ctx: JobContext| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        })
        .build();
    let h = tokio::spawn(worker.run(stop.clone()));
    terminal(&s, &quick).await;
    // The slow job runs and more are held (claimed, so `running` in the store).
    let start = Instant::now();
    while count(&s, "running").await < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "no job was claimed ahead");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    h.await.unwrap();
    assert_eq!(count(&s, "running").await, 0, "nothing is left claimed");
    let page = s.job_list(kyu_store::JobListParams { queue: None, state: Some(JobState::Queued), ..Default::default() }).await.unwrap();
    assert!(!page.jobs.is_empty());
    for j in page.jobs {
        assert_eq!(j.attempt, 0, "a held job given back has not spent an attempt: {j:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_jobs_are_never_claimed_ahead() {
    let (s, _d) = store();
    let ids = enqueue_many(&s, "long", 8).await;
    let (stop, h) = start(Worker::builder(s.clone()).concurrency(2).handle("long", |_: Value, _ctx: JobContext| async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        Ok(())
    }));
    // A job held in the worker would be `running` without a slot: with
    // handlers of 150 ms, none may start within 50 ms, so none is held.
    let mut peak = 0;
    while count(&s, "completed").await < 8 {
        peak = peak.max(count(&s, "running").await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(peak <= 2, "{peak} jobs claimed at once by a worker of 2 slots");
    for id in &ids {
        assert_eq!(terminal(&s, id).await.state, JobState::Completed);
    }
    stop.cancel();
    h.await.unwrap();
}
