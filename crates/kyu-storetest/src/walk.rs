//! A seeded random walk over the whole job life cycle on a real store,
//! checking after every step what no sequence of operations may break:
//! attempts never exceed `max_attempts`, nothing leaves a terminal state but
//! an operator retry, and a stale token changes nothing. The same seeds run
//! on every backend (and over HTTP), so they must agree.

use std::collections::HashMap;

use kyu_core::transition::Failure;
use kyu_core::{ClaimedJob, Job, JobId, JobState};
use kyu_store::{JobHeartbeatParams, JobSaveParams, Outcome, Report, Store};
use serde_json::json;

use crate::support::*;

pub async fn random_walks_keep_the_invariants<S: Store>(s: S) {
    for seed in 1..=4u64 {
        walk(&s, seed, 150).await;
    }
    // Every job's timeline starts with its enqueue and stays bounded.
    let page = s.job_list(kyu_store::JobListParams { limit: Some(100), ..Default::default() }).await.unwrap();
    for j in page.jobs {
        let events = s.job_events(&j.id).await.unwrap();
        assert_eq!(events[0].kind, kyu_core::timeline::EventType::Enqueued, "{}", j.id);
        assert!(events.len() <= kyu_core::timeline::MAX_EVENTS + 1);
    }
}

async fn walk<S: Store>(s: &S, seed: u64, steps: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let queue = format!("walk{seed}");
    let mut ids: Vec<JobId> = Vec::new();
    // Every token each job was ever claimed with; the last is current.
    let mut claims: HashMap<JobId, Vec<ClaimedJob>> = HashMap::new();
    for _ in 0..4 {
        let mut sp = spec(&queue, "k");
        sp.max_attempts = Some(rng.i32(1..4));
        sp.backoff = Some(kyu_core::Backoff::Fixed { delay_ms: rng.i64(0..2_000) });
        ids.push(enqueue(s, sp).await);
    }
    for step in 0..steps {
        let before: Vec<Job> = snapshot(s, &ids).await;
        let pick = rng.usize(..ids.len());
        let id = ids[pick].clone();
        let stale = claims.get(&id).filter(|c| c.len() > 1).map(|c| c[rng.usize(..c.len() - 1)].clone());
        let current = claims.get(&id).and_then(|c| c.last().cloned());
        let mut stale_write = false;
        match rng.u8(0..10) {
            0 => {
                for j in claim(s, &queue, rng.usize(1..3)).await {
                    claims.entry(j.id.clone()).or_default().push(j);
                }
            }
            1 | 2 => {
                if let Some(j) = current {
                    let outcome = match rng.u8(0..4) {
                        0 => Outcome::Complete { result: json!(step) },
                        1 => Outcome::Fail { error: format!("step {step}"), failure: Failure::RETRY },
                        2 => Outcome::Fail { error: "fatal".into(), failure: Failure { retry: false, retry_in_ms: None } },
                        _ => Outcome::Snooze { delay_ms: rng.i64(0..1_000) },
                    };
                    let _ = s.job_report_many(vec![Report { id: j.id.clone(), token: j.token.clone(), outcome }]).await.unwrap();
                }
            }
            3 => {
                if let Some(j) = stale {
                    stale_write = true;
                    let r = Report { id: j.id.clone(), token: j.token.clone(), outcome: Outcome::Complete { result: json!("stale") } };
                    assert!(s.job_report_many(vec![r]).await.unwrap().remove(0).is_err(), "seed {seed} step {step}: stale report accepted");
                    let save = JobSaveParams { id: j.id.clone(), token: j.token.clone(), checkpoint: Some(json!("stale")), progress: None };
                    assert!(s.job_save(save).await.is_err());
                    let hb = JobHeartbeatParams { jobs: vec![(j.id.clone(), j.token.clone())], lease_ms: 60_000 };
                    assert!(s.job_heartbeat_many(hb).await.unwrap().remove(0).is_err());
                }
            }
            4 | 5 => {
                s.clock().advance(rng.i64(0..40_000));
                s.job_rescue().await.unwrap();
            }
            6 => {
                let _ = s.job_cancel(&id).await;
            }
            7 => {
                let _ = s.job_retry(kyu_store::JobRetryParams::one(id.clone())).await;
            }
            _ => {
                if let Some(j) = current {
                    let hb = JobHeartbeatParams { jobs: vec![(j.id.clone(), j.token.clone())], lease_ms: 30_000 };
                    let _ = s.job_heartbeat_many(hb).await.unwrap();
                }
            }
        }
        let after = snapshot(s, &ids).await;
        // The kept counts agree with the jobs themselves after every step.
        let info = s.queue_list().await.unwrap().into_iter().find(|q| q.name.as_str() == queue).expect("the walk's queue");
        for st in JobState::ALL {
            let n = after.iter().filter(|j| j.state == st).count() as i64;
            assert_eq!(info.counts[st.as_str()], n, "seed {seed} step {step}: {st} counted {} but {n} jobs are", info.counts[st.as_str()]);
        }
        for (b, a) in before.iter().zip(&after) {
            let at = format!("seed {seed} step {step}, job {}: {} -> {}", a.id, b.state, a.state);
            assert!(a.attempt <= a.max_attempts && a.attempt >= 0, "{at}: attempt {} of {}", a.attempt, a.max_attempts);
            if b.state.is_terminal() && a.state != b.state {
                assert_eq!(a.state, JobState::Queued, "{at}: only an operator retry leaves a terminal state");
                assert_eq!(a.attempt, 0, "{at}");
            }
            if stale_write && a.id == id {
                assert_eq!((a.state, &a.result, &a.checkpoint), (b.state, &b.result, &b.checkpoint), "{at}: a stale write changed the job");
            }
        }
    }
}

async fn snapshot<S: Store>(s: &S, ids: &[JobId]) -> Vec<Job> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(get(s, id).await);
    }
    out
}
