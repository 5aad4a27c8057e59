//! Enqueue: ids, defaults, duplicates, unique keys, atomic batches, delays.

use kyu_core::{JobSpec, JobState, Limits};
use kyu_store::{JobInsertManyParams, Store, StoreError};
use serde_json::json;

use crate::support::*;

pub async fn insert_and_get<S: Store>(s: S) {
    let mut sp = spec("mail", "send");
    sp.id = Some("job-1".into());
    sp.payload = json!({"to": "a@example.com"});
    sp.priority = Some(3);
    sp.tags = vec!["t1".into()];
    sp.group = Some("tenant-a".into());
    sp.timeout_ms = Some(5000);
    let id = enqueue(&s, sp).await;
    let job = get(&s, &id).await;
    assert_eq!(job.id.as_str(), "job-1");
    assert_eq!(job.queue.as_str(), "mail");
    assert_eq!(job.kind, "send");
    assert_eq!(job.payload, json!({"to": "a@example.com"}));
    assert_eq!(job.state, JobState::Queued);
    assert_eq!((job.priority, job.attempt, job.max_attempts), (3, 0, 5));
    assert_eq!(job.tags, vec!["t1".to_string()]);
    assert_eq!(job.group.as_deref(), Some("tenant-a"));
    assert_eq!(job.timeout_ms, Some(5000));
    assert!(job.errors.is_empty() && job.result.is_none() && job.checkpoint.is_none());
    assert!(!job.duplicate);
    assert!(s.job_get(&kyu_core::JobId::new("nope").unwrap()).await.unwrap().is_none());
}

pub async fn generated_ids_and_defaults<S: Store>(s: S) {
    let a = enqueue(&s, JobSpec { kind: "k".into(), ..Default::default() }).await;
    let b = enqueue(&s, JobSpec { kind: "k".into(), ..Default::default() }).await;
    assert_ne!(a, b);
    assert!(a < b, "generated ids are time-ordered");
    let job = get(&s, &a).await;
    assert_eq!(job.queue.as_str(), "default");
    assert_eq!(job.payload, serde_json::Value::Null);
}

pub async fn duplicate_id_creates_nothing<S: Store>(s: S) {
    let mut sp = spec("q", "k");
    sp.id = Some("same".into());
    let first = try_enqueue(&s, sp.clone()).await.unwrap();
    assert!(!first.duplicate);
    sp.payload = json!({"different": true});
    let second = try_enqueue(&s, sp).await.unwrap();
    assert!(second.duplicate);
    assert_eq!(second.id.as_str(), "same");
    assert_eq!(get(&s, &second.id).await.payload, json!({}), "the first job is untouched");
    assert_eq!(claim(&s, "q", 10).await.len(), 1);
}

pub async fn unique_key_window<S: Store>(s: S) {
    let keyed = |window: Option<i64>| {
        let mut sp = spec("q", "k");
        sp.unique_key = Some("report:42".into());
        sp.unique_for_ms = window;
        sp
    };
    let first = try_enqueue(&s, keyed(Some(60_000))).await.unwrap();
    let dup = try_enqueue(&s, keyed(Some(60_000))).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.id, first.id);
    // Completed but inside the window: still a duplicate.
    let job = claim_one(&s, "q").await;
    complete(&s, &job, json!(null)).await.unwrap();
    assert!(try_enqueue(&s, keyed(Some(60_000))).await.unwrap().duplicate);
    // After the window: a new job.
    s.clock().advance(61_000);
    let fresh = try_enqueue(&s, keyed(None)).await.unwrap();
    assert!(!fresh.duplicate);
    // Without a window the key is taken while the job is not terminal.
    assert!(try_enqueue(&s, keyed(None)).await.unwrap().duplicate);
    let job = claim_one(&s, "q").await;
    complete(&s, &job, json!(null)).await.unwrap();
    assert!(!try_enqueue(&s, keyed(None)).await.unwrap().duplicate);
}

pub async fn batch_is_atomic<S: Store>(s: S) {
    let now = s.clock().now();
    let good = spec("q", "k").validate(now, &Limits::default()).unwrap();
    let mut bad = spec("q", "k");
    bad.depends_on = vec!["missing".into()];
    let bad = bad.validate(now, &Limits::default()).unwrap();
    let good_id = good.id.clone();
    let r = s.job_insert_many(JobInsertManyParams { jobs: vec![good, bad] }).await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    assert!(s.job_get(&good_id).await.unwrap().is_none(), "no half-written batch");

    let jobs: Vec<_> = (0..500).map(|i| {
        let mut sp = spec("q", "k");
        sp.payload = json!({"i": i});
        sp.validate(now, &Limits::default()).unwrap()
    }).collect();
    let out = s.job_insert_many(JobInsertManyParams { jobs }).await.unwrap();
    assert_eq!(out.len(), 500);
    assert!(out.iter().all(|i| !i.duplicate && i.state == JobState::Queued));
}

pub async fn delayed_job_waits_for_run_at<S: Store>(s: S) {
    let mut sp = spec("q", "k");
    sp.delay_ms = Some(10_000);
    let id = enqueue(&s, sp).await;
    assert_eq!(get(&s, &id).await.state, JobState::Scheduled);
    assert!(claim(&s, "q", 1).await.is_empty());
    s.clock().advance(10_001);
    let job = claim_one(&s, "q").await;
    assert_eq!(job.id, id);

    let mut sp = spec("q2", "k");
    sp.run_at = Some(s.clock().now().plus_ms(5_000).to_rfc3339());
    let id = enqueue(&s, sp).await;
    assert_eq!(get(&s, &id).await.state, JobState::Scheduled);
    s.clock().advance(5_001);
    let counts = s.job_rescue().await.unwrap();
    assert_eq!(counts.promoted, 1);
    assert_eq!(get(&s, &id).await.state, JobState::Queued);
}
