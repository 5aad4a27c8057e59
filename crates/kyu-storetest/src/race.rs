//! Concurrency: racing claimers and reporters on one store.

use std::collections::HashSet;

use kyu_core::{JobState, Limits};
use kyu_store::{JobClaimParams, JobInsertManyParams, Outcome, Report, Store};
use serde_json::json;

use crate::support::*;

async fn fill<S: Store>(s: &S, queue: &str, n: usize) {
    let now = s.clock().now();
    let jobs = (0..n).map(|_| spec(queue, "k").validate(now, &Limits::default()).unwrap()).collect();
    s.job_insert_many(JobInsertManyParams { jobs }).await.unwrap();
}

pub async fn concurrent_claimers_never_share_a_job<S: Store>(s: S) {
    fill(&s, "race", 2_000).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let p = JobClaimParams { queues: vec![q("race")], worker: format!("w{w}"), max: 7, lease_ms: 60_000 };
                let got = s.job_claim(p).await.unwrap().jobs;
                if got.is_empty() {
                    break mine;
                }
                mine.extend(got.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut all = HashSet::new();
    let mut total = 0;
    for t in tasks {
        let ids = t.await.unwrap();
        total += ids.len();
        all.extend(ids);
    }
    assert_eq!(total, 2_000, "every job claimed once");
    assert_eq!(all.len(), 2_000, "no job claimed twice");
}

pub async fn concurrent_reports_and_claims<S: Store>(s: S) {
    fill(&s, "mix", 1_000).await;
    let mut tasks = Vec::new();
    for w in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                let p = JobClaimParams { queues: vec![q("mix")], worker: format!("w{w}"), max: 10, lease_ms: 60_000 };
                let got = s.job_claim(p).await.unwrap().jobs;
                if got.is_empty() {
                    break done;
                }
                let reports = got
                    .iter()
                    .map(|j| Report { id: j.id.clone(), token: j.token.clone(), outcome: Outcome::Complete { result: json!(w) } })
                    .collect();
                for r in s.job_report_many(reports).await.unwrap() {
                    assert_eq!(r.unwrap(), JobState::Completed);
                    done += 1;
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1_000);
    let counts = s.queue_list().await.unwrap().into_iter().find(|x| x.name.as_str() == "mix").unwrap().counts;
    assert_eq!(counts["completed"], 1_000);
}
