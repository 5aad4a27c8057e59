//! Operator actions, retention, listing and events.

use std::time::Duration;

use kyu_core::transition::Failure;
use kyu_core::{Backoff, JobState};
use kyu_store::{JobHeartbeatParams, JobListParams, JobPruneParams, JobRetryManyParams, Outcome, Store, StoreError, StoreEvent};
use serde_json::json;

use crate::support::*;

pub async fn cancel_queued_job<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let job = s.job_cancel(&id).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(job.finished_at.is_some());
    assert!(claim(&s, "q", 1).await.is_empty());
    let mut sp = spec("q", "k");
    sp.delay_ms = Some(1_000);
    let id = enqueue(&s, sp).await;
    assert_eq!(s.job_cancel(&id).await.unwrap().state, JobState::Cancelled);
    assert!(matches!(s.job_cancel(&kyu_core::JobId::new("nope").unwrap()).await, Err(StoreError::NotFound(_))));
}

pub async fn cancel_running_job_then_fail<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_one(&s, "q").await;
    let job = s.job_cancel(&id).await.unwrap();
    assert_eq!(job.state, JobState::Running, "a running job is asked to stop first");
    assert!(job.cancel_requested);
    // The worker learns of it at its next heartbeat.
    let hb = s
        .job_heartbeat_many(JobHeartbeatParams { jobs: vec![(id.clone(), j.token.clone())], lease_ms: 30_000 })
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert!(hb.cancel_requested);
    // Its fail ends the job cancelled, with no retry.
    assert_eq!(fail(&s, &j, "stopped").await.unwrap(), JobState::Cancelled);
    s.clock().advance(3_600_000);
    assert!(claim(&s, "q", 1).await.is_empty());
}

pub async fn cancel_running_job_then_complete<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_one(&s, "q").await;
    s.job_cancel(&id).await.unwrap();
    assert_eq!(complete(&s, &j, json!("done anyway")).await.unwrap(), JobState::Completed);
    assert_eq!(get(&s, &id).await.result, Some(json!("done anyway")));
}

pub async fn cancel_running_job_lease_expiry<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    claim_leased(&s, "q", 1, 1_000).await;
    s.job_cancel(&id).await.unwrap();
    s.clock().advance(2_000);
    s.job_rescue().await.unwrap();
    assert_eq!(get(&s, &id).await.state, JobState::Cancelled);
}

pub async fn cancel_terminal_is_conflict<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_one(&s, "q").await;
    complete(&s, &j, json!(null)).await.unwrap();
    assert_conflict(s.job_cancel(&id).await);
    assert_eq!(get(&s, &id).await.state, JobState::Completed);
}

pub async fn operator_retry<S: Store>(s: S) {
    let mut sp = spec("q", "k");
    sp.max_attempts = Some(1);
    let id = enqueue(&s, sp).await;
    assert_conflict(s.job_retry(kyu_store::JobRetryParams::one(id.clone())).await);
    let j = claim_one(&s, "q").await;
    assert_conflict(s.job_retry(kyu_store::JobRetryParams::one(id.clone())).await);
    assert_eq!(fail(&s, &j, "dead").await.unwrap(), JobState::Failed);
    let job = s.job_retry(kyu_store::JobRetryParams::one(id.clone())).await.unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempt, 0);
    assert_eq!(job.errors.len(), 1, "history is kept");
    let j = claim_one(&s, "q").await;
    assert_eq!(j.attempt, 1);
    complete(&s, &j, json!(null)).await.unwrap();
    assert_conflict(s.job_retry(kyu_store::JobRetryParams::one(id.clone())).await);
    // A cancelled job can be retried too.
    let id = enqueue(&s, spec("q", "k")).await;
    s.job_cancel(&id).await.unwrap();
    assert_eq!(s.job_retry(kyu_store::JobRetryParams::one(id.clone())).await.unwrap().state, JobState::Queued);
    assert!(!get(&s, &id).await.cancel_requested);
}

pub async fn bulk_retry_by_filter<S: Store>(s: S) {
    let no_retry = Failure { retry: false, retry_in_ms: None };
    for (queue, kind, msg) in [("a", "x", "timeout talking to smtp"), ("a", "y", "bad"), ("b", "x", "timeout"), ("a", "x", "bad")] {
        enqueue(&s, spec(queue, kind)).await;
        let j = claim_one(&s, queue).await;
        report(&s, &j, Outcome::Fail { error: msg.into(), failure: no_retry.clone() }).await.unwrap();
    }
    let p = |queue: Option<&str>, kind: Option<&str>, err: Option<&str>| JobRetryManyParams {
        queue: queue.map(q),
        kind: kind.map(String::from),
        error_contains: err.map(String::from),
        ..Default::default()
    };
    assert_eq!(s.job_retry_many(p(Some("a"), Some("x"), Some("timeout"))).await.unwrap(), 1);
    assert_eq!(s.job_retry_many(p(Some("a"), None, None)).await.unwrap(), 2);
    let until = JobRetryManyParams { until: Some(s.clock().now().plus_ms(-60_000)), ..Default::default() };
    assert_eq!(s.job_retry_many(until).await.unwrap(), 0);
    assert_eq!(s.job_retry_many(p(None, None, None)).await.unwrap(), 1);
    assert_eq!(claim(&s, "a", 10).await.len(), 3);
    let bad = JobRetryManyParams { state: Some(JobState::Running), ..Default::default() };
    assert!(matches!(s.job_retry_many(bad).await, Err(StoreError::Invalid(_))));
}

pub async fn delete_job<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_one(&s, "q").await;
    assert_conflict(s.job_delete(&id).await);
    complete(&s, &j, json!(null)).await.unwrap();
    s.job_delete(&id).await.unwrap();
    assert!(s.job_get(&id).await.unwrap().is_none());
    assert!(matches!(s.job_delete(&id).await, Err(StoreError::NotFound(_))));
}

pub async fn prune_after_retention<S: Store>(s: S) {
    let mut short = spec("q", "k");
    short.keep_result_ms = Some(1_000);
    let a = enqueue(&s, short).await;
    let b = enqueue(&s, spec("q", "k")).await; // default: 24 h
    let mut once = spec("q", "k");
    once.max_attempts = Some(1);
    once.backoff = Some(Backoff::Fixed { delay_ms: 0 });
    let c = enqueue(&s, once).await; // failed: 7 days by default
    for _ in 0..2 {
        let j = claim_one(&s, "q").await;
        complete(&s, &j, json!(null)).await.unwrap();
    }
    let j = claim_one(&s, "q").await;
    fail(&s, &j, "x").await.unwrap();
    let prune = || s.job_prune(JobPruneParams { batch: 100 });
    assert_eq!(prune().await.unwrap(), 0);
    s.clock().advance(2_000);
    assert_eq!(prune().await.unwrap(), 1);
    assert!(s.job_get(&a).await.unwrap().is_none());
    s.clock().advance(24 * 3_600_000);
    assert_eq!(prune().await.unwrap(), 1);
    assert!(s.job_get(&b).await.unwrap().is_none());
    assert!(s.job_get(&c).await.unwrap().is_some());
    s.clock().advance(7 * 24 * 3_600_000);
    assert_eq!(prune().await.unwrap(), 1);
    assert!(s.job_get(&c).await.unwrap().is_none());
    // Bounded batches.
    for _ in 0..5 {
        let mut sp = spec("p", "k");
        sp.keep_result_ms = Some(0);
        enqueue(&s, sp).await;
        let j = claim_one(&s, "p").await;
        complete(&s, &j, json!(null)).await.unwrap();
    }
    s.clock().advance(1);
    assert_eq!(s.job_prune(JobPruneParams { batch: 3 }).await.unwrap(), 3);
    assert_eq!(s.job_prune(JobPruneParams { batch: 3 }).await.unwrap(), 2);
}

pub async fn list_filters_and_pages<S: Store>(s: S) {
    for i in 0..25 {
        let mut sp = spec(if i % 2 == 0 { "even" } else { "odd" }, if i % 5 == 0 { "five" } else { "other" });
        sp.id = Some(format!("job-{i:02}"));
        if i % 3 == 0 {
            sp.tags = vec!["three".into()];
        }
        enqueue(&s, sp).await;
    }
    let page = s.job_list(JobListParams { limit: Some(10), ..Default::default() }).await.unwrap();
    assert_eq!(page.jobs.len(), 10);
    assert_eq!(page.jobs[0].id.as_str(), "job-24", "newest first");
    let mut seen: Vec<String> = page.jobs.iter().map(|j| j.id.to_string()).collect();
    let mut cursor = page.next_cursor;
    while let Some(c) = cursor {
        let p = s.job_list(JobListParams { limit: Some(10), cursor: Some(c), ..Default::default() }).await.unwrap();
        seen.extend(p.jobs.iter().map(|j| j.id.to_string()));
        cursor = p.next_cursor;
    }
    assert_eq!(seen.len(), 25);
    let count = |p: JobListParams| {
        let s = s.clone();
        async move { s.job_list(p).await.unwrap().jobs.len() }
    };
    assert_eq!(count(JobListParams { queue: Some(q("even")), ..Default::default() }).await, 13);
    assert_eq!(count(JobListParams { kind: Some("five".into()), ..Default::default() }).await, 5);
    assert_eq!(count(JobListParams { tag: Some("three".into()), ..Default::default() }).await, 9);
    claim(&s, "odd", 2).await;
    let running = JobListParams { state: Some(JobState::Running), ..Default::default() };
    assert_eq!(count(running).await, 2);
    let bad = JobListParams { cursor: Some("nonsense".into()), ..Default::default() };
    assert!(matches!(s.job_list(bad).await, Err(StoreError::Invalid(_))));
}

pub async fn events_after_commit<S: Store>(s: S) {
    let mut rx = s.subscribe();
    let id = enqueue(&s, spec("ev", "k")).await;
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("event").unwrap();
    assert_eq!(ev, StoreEvent::JobsAvailable(q("ev")));
    // The end is announced to whoever asked (PostgreSQL announces no other).
    s.job_watch(&id).await.unwrap();
    let j = claim_one(&s, "ev").await;
    complete(&s, &j, json!(null)).await.unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("event").unwrap();
        if ev == StoreEvent::JobFinished(id.clone()) {
            break;
        }
    }
}

pub async fn keep_failed_ms_per_job<S: Store>(s: S) {
    let mut short = spec("q", "k");
    short.max_attempts = Some(1);
    short.keep_failed_ms = Some(1_000);
    let brief = enqueue(&s, short).await;
    let mut plain = spec("q", "k");
    plain.max_attempts = Some(1);
    let kept = enqueue(&s, plain).await;
    for j in claim(&s, "q", 2).await {
        fail(&s, &j, "no").await.unwrap();
    }
    assert_eq!(get(&s, &brief).await.keep_failed_ms, Some(1_000));
    s.clock().advance(1_001);
    assert_eq!(s.job_prune(JobPruneParams::default()).await.unwrap(), 1);
    assert!(s.job_get(&brief).await.unwrap().is_none(), "pruned after its own keep_failed_ms");
    assert_eq!(get(&s, &kept).await.state, JobState::Failed, "kept for the default 7 days");
}
