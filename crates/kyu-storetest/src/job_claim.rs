//! Claims: order, batch size, leases, isolation.

use kyu_core::JobState;
use kyu_store::{JobClaimParams, Store};

use crate::support::*;

pub async fn priority_then_fifo<S: Store>(s: S) {
    let mut ids = Vec::new();
    for (name, prio) in [("low-1", 0), ("high-1", 5), ("low-2", 0), ("high-2", 5), ("neg", -1)] {
        let mut sp = spec("q", "k");
        sp.id = Some(name.into());
        sp.priority = Some(prio);
        ids.push(enqueue(&s, sp).await);
        s.clock().advance(1);
    }
    // An older run_at runs first within a priority, whatever the enqueue order.
    let mut sp = spec("q", "k");
    sp.id = Some("low-0".into());
    sp.run_at = Some(s.clock().now().plus_ms(-60_000).to_rfc3339());
    enqueue(&s, sp).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(claim_one(&s, "q").await.id.to_string());
    }
    assert_eq!(order, ["high-1", "high-2", "low-0", "low-1", "low-2", "neg"]);
    // A batch claim returns them in the same order.
    for (name, prio) in [("b1", 1), ("b2", 2), ("b3", 3)] {
        let mut sp = spec("q2", "k");
        sp.id = Some(name.into());
        sp.priority = Some(prio);
        enqueue(&s, sp).await;
    }
    let batch: Vec<String> = claim(&s, "q2", 10).await.into_iter().map(|j| j.id.to_string()).collect();
    assert_eq!(batch, ["b3", "b2", "b1"]);
}

pub async fn claim_respects_max_and_sets_lease<S: Store>(s: S) {
    for _ in 0..5 {
        enqueue(&s, spec("q", "k")).await;
    }
    let now = s.clock().now();
    let jobs = claim_leased(&s, "q", 3, 10_000).await;
    assert_eq!(jobs.len(), 3);
    for j in &jobs {
        assert_eq!(j.attempt, 1);
        assert!(!j.token.is_empty());
        assert!(j.lease_expires_at >= now.plus_ms(10_000) && j.lease_expires_at <= now.plus_ms(11_000));
        let job = get(&s, &j.id).await;
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.worker.as_deref(), Some("test-worker"));
        assert_eq!(job.lease_expires_at, Some(j.lease_expires_at));
        assert!(job.started_at.is_some());
    }
    assert_eq!(claim(&s, "q", 10).await.len(), 2);
    assert!(claim(&s, "q", 10).await.is_empty());
    let none = s
        .job_claim(JobClaimParams { queues: vec![q("q")], worker: "w".into(), max: 0, lease_ms: 1000 })
        .await
        .unwrap();
    assert!(none.jobs.is_empty());
}

pub async fn queues_are_isolated<S: Store>(s: S) {
    enqueue(&s, spec("a", "k")).await;
    enqueue(&s, spec("b", "k")).await;
    assert_eq!(claim(&s, "c", 10).await.len(), 0);
    let jobs = claim(&s, "a", 10).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].queue.as_str(), "a");
    // One claim may take from several queues, the first listed first.
    enqueue(&s, spec("a", "k")).await;
    let both = s
        .job_claim(JobClaimParams { queues: vec![q("b"), q("a")], worker: "w".into(), max: 10, lease_ms: 1000 })
        .await
        .unwrap()
        .jobs;
    let queues: Vec<&str> = both.iter().map(|j| j.queue.as_str()).collect();
    assert_eq!(queues, ["b", "a"]);
}

pub async fn claimed_job_is_not_claimed_again<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_one(&s, "q").await;
    assert_eq!(j.id, id);
    assert!(claim(&s, "q", 1).await.is_empty());
    // Until its lease expires and the reaper puts it back.
    s.clock().advance(31_000);
    s.job_rescue().await.unwrap();
    s.clock().advance(5_000); // past the first retry's backoff (1 s ± 20 %)
    let again = claim_one(&s, "q").await;
    assert_eq!(again.id, id);
    assert_eq!(again.attempt, 2);
    assert_ne!(again.token, j.token);
}

pub async fn next_run_at_reported<S: Store>(s: S) {
    let mut sp = spec("q", "k");
    sp.delay_ms = Some(7_000);
    enqueue(&s, sp).await;
    let r = s
        .job_claim(JobClaimParams { queues: vec![q("q")], worker: "w".into(), max: 1, lease_ms: 1000 })
        .await
        .unwrap();
    assert!(r.jobs.is_empty());
    let next = r.next_run_at.expect("a scheduled job exists");
    let expect = s.clock().now().plus_ms(7_000);
    assert!((next.0 - expect.0).abs() < 1_000, "{next} vs {expect}");
}
