//! What operators watch: timelines, counts, workers, statistics and the
//! changes observers hear of.

use std::sync::{Arc, Mutex};

use kyu_core::tally::{AttemptOutcome, Happening, WORKER_GONE_MS, minute_of};
use kyu_core::timeline::{EventType, MAX_EVENTS};
use kyu_core::transition::Failure;
use kyu_core::{JobId, JobState, Millis};
use kyu_store::{
    JobHeartbeatParams, JobRetryParams, JobSaveParams, Observer, Outcome, Report, StatsParams, Store, StoreError,
    WorkerSeenParams,
};
use serde_json::json;

use crate::support::*;

async fn types<S: Store>(s: &S, id: &JobId) -> Vec<EventType> {
    s.job_events(id).await.unwrap().into_iter().map(|e| e.kind).collect()
}

pub async fn timeline_records_each_transition<S: Store>(s: S) {
    let mut sp = spec("tl", "k");
    sp.backoff = Some(kyu_core::Backoff::Fixed { delay_ms: 0 });
    let id = enqueue(&s, sp).await;
    let first = claim_one(&s, "tl").await;
    for p in 0..5 {
        let save = JobSaveParams { id: id.clone(), token: first.token.clone(), checkpoint: None, progress: Some(json!(p)) };
        s.job_save(save).await.unwrap();
    }
    let save = JobSaveParams { id: id.clone(), token: first.token.clone(), checkpoint: Some(json!({"step": 1})), progress: None };
    s.job_save(save).await.unwrap();
    fail(&s, &first, "disk <full>").await.unwrap();
    let second = claim_one(&s, "tl").await;
    complete(&s, &second, json!("ok")).await.unwrap();
    use EventType::*;
    assert_eq!(types(&s, &id).await, [Enqueued, Claimed, Progress, Checkpoint, RetryScheduled, Claimed, Completed]);
    let events = s.job_events(&id).await.unwrap();
    assert_eq!((events[1].attempt, events[1].worker.as_deref()), (Some(1), Some("test-worker")));
    assert_eq!(events[2].message.as_deref(), Some("4"), "progress coalesces to the last value");
    assert!(events[4].message.as_deref().unwrap().starts_with("disk <full>"), "{:?}", events[4].message);
    assert_eq!(events[5].attempt, Some(2));
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at));

    // Lost leases, snoozes, cancels and an operator's retry.
    let mut sp = spec("tl", "k2");
    sp.max_attempts = Some(2);
    sp.backoff = Some(kyu_core::Backoff::Fixed { delay_ms: 0 });
    let lost = enqueue(&s, sp).await;
    let j = claim_leased(&s, "tl", 1, 1_000).await.remove(0);
    report(&s, &j, Outcome::Snooze { delay_ms: 0 }).await.unwrap();
    let j = claim_leased(&s, "tl", 1, 1_000).await.remove(0);
    s.clock().advance(2_000);
    s.job_rescue().await.unwrap();
    let j2 = claim_leased(&s, "tl", 1, 1_000).await.remove(0);
    assert_eq!(j2.id, j.id);
    s.job_cancel(&lost).await.unwrap();
    report(&s, &j2, Outcome::Fail { error: "stopped".into(), failure: Failure::RETRY }).await.unwrap();
    assert_eq!(get(&s, &lost).await.state, JobState::Cancelled);
    s.job_retry(JobRetryParams::one(lost.clone())).await.unwrap();
    assert_eq!(
        types(&s, &lost).await,
        [Enqueued, Claimed, Released, Claimed, LeaseExpired, RetryScheduled, Claimed, CancelRequested, Cancelled, Retried]
    );
    let c = claim_one(&s, "tl").await;
    report(&s, &c, Outcome::Snooze { delay_ms: 5_000 }).await.unwrap();
    assert_eq!(types(&s, &lost).await.last(), Some(&Snoozed));

    // Bounded: a job snoozing forever keeps its first event and the latest.
    let looping = enqueue(&s, spec("tl-loop", "k")).await;
    for _ in 0..(MAX_EVENTS / 2 + 20) {
        let j = claim_one(&s, "tl-loop").await;
        report(&s, &j, Outcome::Snooze { delay_ms: 0 }).await.unwrap();
    }
    let t = types(&s, &looping).await;
    assert_eq!(t.len(), MAX_EVENTS + 1, "the enqueue, then the bound of stored events");
    assert_eq!((t[0], *t.last().unwrap()), (Enqueued, Released));

    // Deleted with the job.
    s.job_delete(&looping).await.unwrap();
    assert!(matches!(s.job_events(&looping).await, Err(StoreError::NotFound(_))));
    assert!(matches!(s.job_events(&JobId::new("nope").unwrap()).await, Err(StoreError::NotFound(_))));
}

pub async fn timeline_of_dependencies_and_children<S: Store>(s: S) {
    let mut sp = spec("tf", "parent");
    sp.backoff = Some(kyu_core::Backoff::Fixed { delay_ms: 0 });
    let parent = enqueue(&s, sp).await;
    let mut sp = spec("tf", "child");
    sp.depends_on = vec![parent.to_string()];
    let child = enqueue(&s, sp).await;
    use EventType::*;
    let events = s.job_events(&child).await.unwrap();
    assert_eq!(events[0].kind, Enqueued);
    assert!(events[0].message.as_deref().unwrap().contains("waiting for 1"), "{:?}", events[0].message);
    let p = claim_one(&s, "tf").await;
    fail(&s, &p, "broke").await.unwrap();
    let p = claim_one(&s, "tf").await;
    report(&s, &p, Outcome::Fail { error: "for good".into(), failure: Failure { retry: false, retry_in_ms: None } })
        .await
        .unwrap();
    let t = s.job_events(&child).await.unwrap();
    assert_eq!(t.iter().map(|e| e.kind).collect::<Vec<_>>(), [Enqueued, Failed]);
    assert!(t[1].message.as_deref().unwrap().contains(parent.as_str()));
    // Retrying the parent with its dependents puts the child back to waiting.
    s.job_retry(JobRetryParams { id: parent.clone(), dependents: true }).await.unwrap();
    assert_eq!(types(&s, &child).await.last(), Some(&Waiting));
    let p = claim_one(&s, "tf").await;
    complete(&s, &p, json!(1)).await.unwrap();
    assert_eq!(types(&s, &child).await.last(), Some(&Ready));
}

pub async fn counts_stay_right_through_every_transition<S: Store>(s: S) {
    let mut sp = spec("cnt", "k");
    sp.max_attempts = Some(1);
    let ids: Vec<JobId> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(enqueue(&s, sp.clone()).await);
        }
        v
    };
    let mut later = spec("cnt", "k");
    later.delay_ms = Some(1_000);
    enqueue(&s, later).await;
    let jobs = claim(&s, "cnt", 4).await;
    complete(&s, &jobs[0], json!(1)).await.unwrap();
    fail(&s, &jobs[1], "x").await.unwrap();
    s.job_cancel(&ids[5]).await.unwrap();
    s.job_delete(&ids[4]).await.unwrap();
    let hb = JobHeartbeatParams { jobs: vec![(jobs[2].id.clone(), jobs[2].token.clone())], lease_ms: 60_000 };
    s.job_heartbeat_many(hb).await.unwrap();
    let expect = |queued, scheduled, running, completed, failed, cancelled| {
        [("queued", queued), ("scheduled", scheduled), ("running", running), ("completed", completed), ("failed", failed), ("cancelled", cancelled), ("waiting", 0)]
    };
    let check = |want: [(&'static str, i64); 7]| {
        let s = s.clone();
        async move {
            let info = s.queue_list().await.unwrap().into_iter().find(|q| q.name.as_str() == "cnt").unwrap();
            for (state, n) in want {
                assert_eq!(info.counts[state], n, "{state}: {:?}", info.counts);
            }
        }
    };
    check(expect(0, 1, 2, 1, 1, 1)).await;
    // Maintenance (and, on PostgreSQL, the folding of counts) changes nothing.
    s.job_rescue().await.unwrap();
    check(expect(0, 1, 2, 1, 1, 1)).await;
    s.clock().advance(2_000);
    s.job_rescue().await.unwrap();
    check(expect(1, 0, 2, 1, 1, 1)).await;
    s.job_retry(JobRetryParams::one(jobs[1].id.clone())).await.unwrap();
    check(expect(2, 0, 2, 1, 0, 1)).await;
    // Retention passes: pruned jobs leave the counts.
    s.clock().advance(30 * 24 * 3_600_000);
    s.job_rescue().await.unwrap();
    s.job_prune(Default::default()).await.unwrap();
    s.job_rescue().await.unwrap();
    check(expect(2, 0, 0, 0, 2, 0)).await;
}

pub async fn oldest_ready_job_per_queue<S: Store>(s: S) {
    let none = s.queue_update(kyu_store::QueueUpdateParams { name: q("old-empty"), ..Default::default() }).await.unwrap();
    assert_eq!(none.oldest_ready_at, None);
    let mut low = spec("old", "k");
    low.priority = Some(-5);
    let low = enqueue(&s, low).await;
    // The manual clock also moves with real time: read when it became ready.
    let t0 = s.job_get(&low).await.unwrap().unwrap().run_at;
    s.clock().advance(1_000);
    let mut high = spec("old", "k");
    high.priority = Some(9);
    enqueue(&s, high).await;
    let info = s.queue_list().await.unwrap().into_iter().find(|q| q.name.as_str() == "old").unwrap();
    assert_eq!(info.oldest_ready_at, Some(t0), "the oldest across priorities");
}

pub async fn workers_are_listed_with_what_they_run<S: Store>(s: S) {
    let hello = WorkerSeenParams {
        name: "box-1".into(),
        host: Some("box".into()),
        pid: Some(42),
        queues: vec![q("wq")],
        concurrency: Some(4),
        runs: Some("python handle.py".into()),
    };
    s.worker_seen(hello.clone()).await.unwrap();
    enqueue(&s, spec("wq", "k")).await;
    enqueue(&s, spec("wq", "k")).await;
    let params = kyu_store::JobClaimParams { queues: vec![q("wq")], worker: "box-1".into(), max: 1, lease_ms: 60_000 };
    let mine = s.job_claim(params).await.unwrap().jobs.remove(0);
    // A later call without details keeps them.
    s.clock().advance(1_000);
    s.worker_seen(WorkerSeenParams { name: "box-1".into(), ..Default::default() }).await.unwrap();
    let list = s.worker_list().await.unwrap();
    let w = list.iter().find(|w| w.name == "box-1").expect("listed");
    assert_eq!((w.host.as_deref(), w.pid, w.concurrency), (Some("box"), Some(42), Some(4)));
    assert_eq!(w.queues, ["wq"]);
    assert_eq!(w.runs.as_deref(), Some("python handle.py"));
    assert_eq!(w.running, std::slice::from_ref(&mine.id));
    assert!(w.last_seen_at > w.started_at);
    // A restart (another pid) starts it again.
    s.worker_seen(WorkerSeenParams { pid: Some(43), ..hello.clone() }).await.unwrap();
    let w = s.worker_list().await.unwrap().into_iter().find(|w| w.name == "box-1").unwrap();
    assert_eq!(w.started_at, w.last_seen_at);
    // Gone after a few silent minutes.
    s.clock().advance(WORKER_GONE_MS + 1_000);
    assert!(s.worker_list().await.unwrap().iter().all(|w| w.name != "box-1"));
    assert!(matches!(
        s.worker_seen(WorkerSeenParams { name: String::new(), ..Default::default() }).await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn stats_count_per_minute_and_queue<S: Store>(s: S) {
    // Start just past a minute's beginning, so all of this lands in one minute.
    let now = s.clock().now();
    s.clock().advance(minute_of(now).0 + 60_000 - now.0 + 1);
    let start = s.clock().now();
    let mut sp = spec("st", "k");
    sp.max_attempts = Some(2);
    sp.backoff = Some(kyu_core::Backoff::Fixed { delay_ms: 0 });
    for _ in 0..4 {
        enqueue(&s, sp.clone()).await;
    }
    enqueue(&s, spec("st-other", "k")).await;
    // Gaps far above any real delay between the calls (the manual clock
    // runs with real time too): waits of 4 s, runs of 20 s.
    s.clock().advance(4_000);
    let jobs = claim(&s, "st", 4).await;
    s.clock().advance(20_000);
    for j in &jobs[..2] {
        complete(&s, j, json!(null)).await.unwrap();
    }
    fail(&s, &jobs[2], "once").await.unwrap();
    let again = claim_one(&s, "st").await;
    fail(&s, &again, "twice").await.unwrap();
    let read = |queue: Option<&str>| {
        let s = s.clone();
        let queue = queue.map(q);
        async move { s.stats(StatsParams { queue, since: start }).await.unwrap() }
    };
    let points = read(Some("st")).await;
    let minutes: Vec<Millis> = points.iter().map(|p| p.minute).collect();
    assert!(!points.is_empty() && points.iter().all(|p| p.queue == "st"), "{points:?}");
    let sum = |f: fn(&kyu_core::tally::StatsPoint) -> i64| points.iter().map(f).sum::<i64>();
    assert_eq!(sum(|p| p.enqueued), 4);
    assert_eq!(sum(|p| p.completed), 2);
    assert_eq!(sum(|p| p.retried), 1);
    assert_eq!(sum(|p| p.failed), 1);
    let p = points.iter().find(|p| p.completed > 0).unwrap();
    let (run, wait) = (p.run_ms_p50.unwrap(), p.wait_ms_p50.unwrap());
    assert!((10_000..=30_000).contains(&run), "run p50 {run}");
    assert!((2_500..=5_000).contains(&wait), "wait p50 {wait}");
    assert!(p.run_ms_p95.unwrap() >= run);
    assert!(minutes.iter().all(|m| *m == minute_of(*m)));
    // Folding (PostgreSQL maintenance) changes nothing; all queues together.
    s.job_rescue().await.unwrap();
    let again = read(Some("st")).await;
    assert_eq!(again.iter().map(|p| p.completed).sum::<i64>(), 2);
    assert_eq!(again.iter().map(|p| p.enqueued).sum::<i64>(), 4);
    let all = read(None).await;
    assert!(all.iter().any(|p| p.queue == "st-other" && p.enqueued == 1));
    // A later minute is a new point; `since` leaves older ones out.
    s.clock().advance(120_000);
    enqueue(&s, spec("st", "k")).await;
    let later = s.stats(StatsParams { queue: Some(q("st")), since: s.clock().now() }).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].enqueued, 1);
}

/// Statistics one handle (a process) counted reach another handle's reads
/// within about a second with nothing else happening, and at once after a
/// flush; the handle that counted them reads them at once; nobody counts
/// them twice. For backends where two handles share one database.
pub async fn stats_reach_other_handles<S: Store>(a: S, b: S) {
    let queue = "st-shared";
    let since = Millis(a.clock().now().0 - 120_000);
    let completed = |s: &S| {
        let s = s.clone();
        async move {
            let points = s.stats(StatsParams { queue: Some(q(queue)), since }).await.unwrap();
            points.iter().map(|p| p.completed).sum::<i64>()
        }
    };
    for _ in 0..3 {
        enqueue(&a, spec(queue, "k")).await;
    }
    for j in claim(&a, queue, 3).await {
        complete(&a, &j, json!(null)).await.unwrap();
    }
    assert_eq!(completed(&a).await, 3, "the handle that did it reads it at once");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen = completed(&b).await;
        assert!(seen <= 3, "counted twice: {seen}");
        if seen == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "another handle still sees {seen} of 3 completions after 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    a.flush().await.unwrap();
    assert_eq!((completed(&a).await, completed(&b).await), (3, 3), "a flush with nothing pending writes nothing");
    enqueue(&a, spec(queue, "k")).await;
    let j = claim_one(&a, queue).await;
    complete(&a, &j, json!(null)).await.unwrap();
    a.flush().await.unwrap();
    assert_eq!((completed(&a).await, completed(&b).await), (4, 4), "a flush writes what is pending at once");
}

#[derive(Default)]
struct Heard(Mutex<Vec<Happening>>);

impl Observer for Heard {
    fn observe(&self, _at: Millis, happenings: &[Happening]) {
        self.0.lock().unwrap().extend_from_slice(happenings);
    }
}

pub async fn observers_hear_what_committed<S: Store>(s: S) {
    let heard = Arc::new(Heard::default());
    s.observers().add(heard.clone());
    let id = enqueue(&s, spec("obs", "kind-a")).await;
    let j = claim_one(&s, "obs").await;
    s.clock().advance(30);
    complete(&s, &j, json!(null)).await.unwrap();
    // A refused report tells nobody anything.
    assert_conflict(complete(&s, &j, json!(null)).await);
    let mut sp = spec("obs", "kind-a");
    sp.max_attempts = Some(1);
    let f = enqueue(&s, sp).await;
    let j = claim_one(&s, "obs").await;
    report(&s, &j, Outcome::Fail { error: "no".into(), failure: Failure::RETRY }).await.unwrap();
    let got = heard.0.lock().unwrap().clone();
    let mine: Vec<&Happening> = got
        .iter()
        .filter(|h| matches!(h, Happening::Enqueued { id: i, .. } | Happening::Started { id: i, .. } | Happening::Ended { id: i, .. } if *i == id || *i == f))
        .collect();
    assert!(matches!(mine[0], Happening::Enqueued { state: JobState::Queued, kind, .. } if kind == "kind-a"), "{mine:?}");
    assert!(matches!(mine[1], Happening::Started { attempt: 1, .. }), "{mine:?}");
    assert!(matches!(mine[2], Happening::Ended { outcome: AttemptOutcome::Completed, run_ms: 30.., .. }), "{mine:?}");
    assert!(matches!(mine[5], Happening::Ended { outcome: AttemptOutcome::Failed, state: JobState::Failed, .. }), "{mine:?}");
    assert_eq!(mine.len(), 6, "{mine:?}");
    let rep = Report { id: id.clone(), token: "stale".into(), outcome: Outcome::Complete { result: json!(1) } };
    let _ = s.job_report_many(vec![rep]).await.unwrap();
    assert_eq!(heard.0.lock().unwrap().len(), got.len());
}

pub async fn dead_letter_set_is_listed_and_deleted_by_filter<S: Store>(s: S) {
    let mut sp = spec("dl", "k");
    sp.max_attempts = Some(1);
    let t0 = s.clock().now();
    for i in 0..4 {
        enqueue(&s, sp.clone()).await;
        let j = claim_one(&s, "dl").await;
        fail(&s, &j, if i % 2 == 0 { "disk full" } else { "timeout talking to <db>" }).await.unwrap();
        s.clock().advance(1_000);
    }
    let keep = enqueue(&s, spec("dl", "k")).await;
    let list = |error: Option<&str>, since: Option<Millis>| {
        let s = s.clone();
        let error = error.map(String::from);
        async move {
            let p = kyu_store::JobListParams { queue: Some(q("dl")), error_contains: error, since, ..Default::default() };
            s.job_list(p).await.unwrap().jobs.len()
        }
    };
    assert_eq!(list(Some("<db>"), None).await, 2);
    assert_eq!(list(None, Some(Millis(t0.0 + 2_000))).await, 3, "two failed and the queued one");
    assert!(matches!(
        s.job_list(kyu_store::JobListParams { error_contains: Some("a\u{0}b".into()), ..Default::default() }).await,
        Err(StoreError::Invalid(_))
    ));
    let filter = kyu_store::JobRetryManyParams { queue: Some(q("dl")), error_contains: Some("disk".into()), ..Default::default() };
    assert_eq!(s.job_delete_many(filter.clone()).await.unwrap(), 2);
    assert_eq!(s.job_delete_many(filter).await.unwrap(), 0);
    assert_eq!(list(None, None).await, 3);
    let running = kyu_store::JobRetryManyParams { state: Some(JobState::Running), ..Default::default() };
    assert!(matches!(s.job_delete_many(running).await, Err(StoreError::Invalid(_))));
    assert_eq!(get(&s, &keep).await.state, JobState::Queued, "only the dead-letter set is deleted");
}
