//! Queue settings enforced by the store at claim time.

use kyu_core::{JobState, RateLimit};
use kyu_store::{QueueUpdateParams, Store};
use serde_json::json;

use crate::support::*;

fn update(name: &str) -> QueueUpdateParams {
    QueueUpdateParams { name: q(name), ..Default::default() }
}

pub async fn pause_and_resume<S: Store>(s: S) {
    enqueue(&s, spec("q", "k")).await;
    let info = s.queue_update(QueueUpdateParams { paused: Some(true), ..update("q") }).await.unwrap();
    assert!(info.paused);
    assert!(claim(&s, "q", 1).await.is_empty(), "paused queues hand out nothing");
    enqueue(&s, spec("q", "k")).await;
    let info = s.queue_update(QueueUpdateParams { paused: Some(false), ..update("q") }).await.unwrap();
    assert!(!info.paused);
    assert_eq!(claim(&s, "q", 10).await.len(), 2);
}

pub async fn concurrency_limit<S: Store>(s: S) {
    for _ in 0..5 {
        enqueue(&s, spec("q", "k")).await;
    }
    let info = s.queue_update(QueueUpdateParams { concurrency: Some(Some(2)), ..update("q") }).await.unwrap();
    assert_eq!(info.concurrency, Some(2));
    let first = claim(&s, "q", 10).await;
    assert_eq!(first.len(), 2);
    assert!(claim(&s, "q", 10).await.is_empty(), "two are running already");
    complete(&s, &first[0], json!(null)).await.unwrap();
    assert_eq!(claim(&s, "q", 10).await.len(), 1);
    s.queue_update(QueueUpdateParams { concurrency: Some(None), ..update("q") }).await.unwrap();
    assert_eq!(claim(&s, "q", 10).await.len(), 2);
}

/// A claim over several queues: the first one's limits and pause hold (a
/// backend may claim its head before reading them), and a first queue that
/// does not exist yet hands out nothing, the next ones theirs.
pub async fn first_queue_limits_hold_in_a_claim_of_several<S: Store>(s: S) {
    for _ in 0..3 {
        enqueue(&s, spec("limited", "k")).await;
        enqueue(&s, spec("open", "k")).await;
    }
    s.queue_update(QueueUpdateParams { concurrency: Some(Some(1)), ..update("limited") }).await.unwrap();
    let several = |queues: &[&str]| kyu_store::JobClaimParams {
        queues: queues.iter().map(|n| q(n)).collect(),
        worker: "w".into(),
        max: 10,
        lease_ms: 30_000,
    };
    let got = s.job_claim(several(&["nowhere", "limited", "open"])).await.unwrap().jobs;
    let queues: Vec<&str> = got.iter().map(|j| j.queue.as_str()).collect();
    assert_eq!(queues, ["limited", "open", "open", "open"], "one of the limited queue's, then the rest");
    enqueue(&s, spec("open", "k")).await;
    assert_eq!(s.job_claim(several(&["nowhere", "open"])).await.unwrap().jobs.len(), 1);
    enqueue(&s, spec("open", "k")).await;
    s.queue_update(QueueUpdateParams { paused: Some(true), ..update("limited") }).await.unwrap();
    s.queue_update(QueueUpdateParams { concurrency: Some(None), ..update("limited") }).await.unwrap();
    let got = s.job_claim(several(&["limited", "open"])).await.unwrap().jobs;
    let queues: Vec<&str> = got.iter().map(|j| j.queue.as_str()).collect();
    assert_eq!(queues, ["open"], "a paused first queue hands out nothing");
    s.queue_update(QueueUpdateParams { paused: Some(false), ..update("limited") }).await.unwrap();
    assert_eq!(s.job_claim(several(&["limited", "open"])).await.unwrap().jobs.len(), 2, "resumed, without limits");
}

pub async fn rate_limit<S: Store>(s: S) {
    for _ in 0..10 {
        enqueue(&s, spec("q", "k")).await;
    }
    let rl = RateLimit { max: 3, per_ms: 1_000 };
    let info = s.queue_update(QueueUpdateParams { rate_limit: Some(Some(rl)), ..update("q") }).await.unwrap();
    assert_eq!(info.rate_limit, Some(rl));
    assert_eq!(claim(&s, "q", 2).await.len(), 2);
    assert_eq!(claim(&s, "q", 10).await.len(), 1);
    assert!(claim(&s, "q", 10).await.is_empty());
    s.clock().advance(1_001);
    assert_eq!(claim(&s, "q", 10).await.len(), 3);
    // Bad settings are refused.
    let bad = RateLimit { max: 0, per_ms: 1_000 };
    assert!(s.queue_update(QueueUpdateParams { rate_limit: Some(Some(bad)), ..update("q") }).await.is_err());
}

pub async fn counts<S: Store>(s: S) {
    for _ in 0..3 {
        enqueue(&s, spec("c", "k")).await;
    }
    let mut sp = spec("c", "k");
    sp.delay_ms = Some(60_000);
    enqueue(&s, sp).await;
    let j = claim_one(&s, "c").await;
    complete(&s, &j, json!(null)).await.unwrap();
    claim_one(&s, "c").await;
    let queues = s.queue_list().await.unwrap();
    let c = queues.iter().find(|x| x.name.as_str() == "c").expect("queue created on first use");
    assert_eq!(c.counts["queued"], 1);
    assert_eq!(c.counts["running"], 1);
    assert_eq!(c.counts["completed"], 1);
    assert_eq!(c.counts["scheduled"], 1);
    assert_eq!(c.counts["failed"], 0);
    assert_eq!(c.counts.len(), JobState::ALL.len());
}

pub async fn group_concurrency_is_fair<S: Store>(s: S) {
    let grouped = |queue: &str, group: Option<&str>| {
        let mut sp = spec(queue, "k");
        sp.group = group.map(String::from);
        sp
    };
    for _ in 0..50 {
        enqueue(&s, grouped("fair", Some("big"))).await;
    }
    for _ in 0..3 {
        enqueue(&s, grouped("fair", Some("small"))).await;
    }
    for _ in 0..2 {
        enqueue(&s, grouped("fair", None)).await;
    }
    let info = s.queue_update(QueueUpdateParams { group_concurrency: Some(Some(2)), ..update("fair") }).await.unwrap();
    assert_eq!(info.group_concurrency, Some(2));
    let group_of = |s: &S, id: &kyu_core::JobId| {
        let (s, id) = (s.clone(), id.clone());
        async move { s.job_get(&id).await.unwrap().unwrap().group }
    };
    let first = claim(&s, "fair", 10).await;
    let mut per: std::collections::HashMap<Option<String>, usize> = Default::default();
    for j in &first {
        *per.entry(group_of(&s, &j.id).await).or_default() += 1;
    }
    assert_eq!(per.get(&Some("big".into())), Some(&2), "at most 2 running per group: {per:?}");
    assert_eq!(per.get(&Some("small".into())), Some(&2), "the small tenant is not starved: {per:?}");
    assert_eq!(per.get(&None), Some(&2), "jobs without a group fill what is left: {per:?}");
    assert!(claim(&s, "fair", 10).await.is_empty(), "every group is at its cap");
    let mut done_big = None;
    for j in &first {
        if group_of(&s, &j.id).await.as_deref() == Some("big") {
            done_big = Some(j.clone());
            break;
        }
    }
    complete(&s, &done_big.unwrap(), json!(null)).await.unwrap();
    let next = claim(&s, "fair", 10).await;
    assert_eq!(next.len(), 1);
    assert_eq!(group_of(&s, &next[0].id).await.as_deref(), Some("big"));

    // Round-robin: a tenant with many older jobs does not go first every time.
    for _ in 0..20 {
        enqueue(&s, grouped("fair2", Some("aaa"))).await;
    }
    enqueue(&s, grouped("fair2", Some("zzz"))).await;
    s.queue_update(QueueUpdateParams { group_concurrency: Some(Some(100)), ..update("fair2") }).await.unwrap();
    let two = claim(&s, "fair2", 2).await;
    let mut groups = Vec::new();
    for j in &two {
        groups.push(group_of(&s, &j.id).await.unwrap());
    }
    groups.sort();
    assert_eq!(groups, ["aaa", "zzz"], "one from each group");
}
