//! Dependencies: waiting, release, results, failure propagation.

use kyu_core::{JobId, JobSpec, JobState};
use kyu_store::{Store, StoreError};
use serde_json::json;

use crate::support::*;

fn dependent(ids: &[&JobId]) -> JobSpec {
    let mut sp = spec("q", "parent");
    sp.depends_on = ids.iter().map(|i| i.to_string()).collect();
    sp
}

pub async fn waits_for_dependencies<S: Store>(s: S) {
    let a = enqueue(&s, spec("q", "child")).await;
    let b = enqueue(&s, spec("q", "child")).await;
    let p = enqueue(&s, dependent(&[&a, &b])).await;
    let job = get(&s, &p).await;
    assert_eq!(job.state, JobState::Waiting);
    assert_eq!(job.pending_dependencies, 2);
    assert_eq!(job.depends_on, vec![a.clone(), b.clone()]);
    let first = claim_one(&s, "q").await;
    complete(&s, &first, json!(1)).await.unwrap();
    assert_eq!(get(&s, &p).await.pending_dependencies, 1);
    let second = claim_one(&s, "q").await;
    assert_ne!(second.id, p, "the parent is not claimable yet");
    complete(&s, &second, json!(2)).await.unwrap();
    let job = get(&s, &p).await;
    assert_eq!(job.state, JobState::Queued, "released by the last dependency's completion");
    assert_eq!(job.pending_dependencies, 0);
    // Depending on an already completed job does not wait at all.
    let q2 = enqueue(&s, dependent(&[&a])).await;
    assert_eq!(get(&s, &q2).await.state, JobState::Queued);
}

pub async fn results_flow_to_dependents<S: Store>(s: S) {
    let a = enqueue(&s, spec("q", "child")).await;
    let b = enqueue(&s, spec("q", "child")).await;
    let p = enqueue(&s, dependent(&[&a, &b])).await;
    for _ in 0..2 {
        let j = claim_one(&s, "q").await;
        let result = json!({"from": j.id.to_string()});
        complete(&s, &j, result).await.unwrap();
    }
    let parent = claim_one(&s, "q").await;
    assert_eq!(parent.id, p);
    assert_eq!(parent.dependency_results.len(), 2);
    assert_eq!(parent.dependency_results[a.as_str()], json!({"from": a.to_string()}));
    assert_eq!(parent.dependency_results[b.as_str()], json!({"from": b.to_string()}));
}

pub async fn failure_propagates_transitively<S: Store>(s: S) {
    let mut leaf = spec("q", "child");
    leaf.max_attempts = Some(1);
    let a = enqueue(&s, leaf).await;
    let b = enqueue(&s, dependent(&[&a])).await;
    let c = enqueue(&s, dependent(&[&b])).await;
    let j = claim_one(&s, "q").await;
    assert_eq!(fail(&s, &j, "broken").await.unwrap(), JobState::Failed);
    for (id, dep) in [(&b, &a), (&c, &b)] {
        let job = get(&s, id).await;
        assert_eq!(job.state, JobState::Failed, "{id}");
        assert!(job.errors.last().unwrap().message.contains(dep.as_str()), "the error names the dependency");
    }
    // Enqueueing against an already failed dependency fails at once.
    let d = enqueue(&s, dependent(&[&a])).await;
    assert_eq!(get(&s, &d).await.state, JobState::Failed);
}

pub async fn continue_on_failure_runs<S: Store>(s: S) {
    let mut leaf = spec("q", "child");
    leaf.max_attempts = Some(1);
    let a = enqueue(&s, leaf).await;
    let ok = enqueue(&s, spec("q", "child")).await;
    let mut sp = dependent(&[&a, &ok]);
    sp.continue_on_failure = true;
    let p = enqueue(&s, sp).await;
    let mut done = 0;
    while done < 2 {
        let j = claim_one(&s, "q").await;
        if j.id == a {
            fail(&s, &j, "broken").await.unwrap();
        } else {
            complete(&s, &j, json!("fine")).await.unwrap();
        }
        done += 1;
    }
    let parent = claim_one(&s, "q").await;
    assert_eq!(parent.id, p);
    assert_eq!(parent.dependency_results[ok.as_str()], json!("fine"));
    let failed = &parent.dependency_results[a.as_str()];
    assert_eq!(failed["state"], json!("failed"));
    assert_eq!(failed["error"], json!("broken"));
}

pub async fn unknown_dependency_refused<S: Store>(s: S) {
    let a = enqueue(&s, spec("q", "child")).await;
    let ghost = JobId::new("ghost").unwrap();
    let r = try_enqueue(&s, dependent(&[&a, &ghost])).await;
    match r {
        Err(StoreError::Invalid(e)) => assert_eq!(e.field, "depends_on[1]"),
        other => panic!("expected invalid, got {other:?}"),
    }
}

pub async fn cancel_parent_and_child<S: Store>(s: S) {
    let a = enqueue(&s, spec("q", "child")).await;
    let b = enqueue(&s, spec("q", "child")).await;
    let p = enqueue(&s, dependent(&[&a, &b])).await;
    // Cancelling a child fails the parent, naming the child.
    s.job_cancel(&a).await.unwrap();
    let parent = get(&s, &p).await;
    assert_eq!(parent.state, JobState::Failed);
    assert!(parent.errors[0].message.contains(a.as_str()));
    // Cancelling a waiting parent leaves its children alone.
    let c = enqueue(&s, spec("q2", "child")).await;
    let p2 = enqueue(&s, { let mut sp = dependent(&[&c]); sp.queue = Some("q2".into()); sp }).await;
    assert_eq!(s.job_cancel(&p2).await.unwrap().state, JobState::Cancelled);
    let j = claim_one(&s, "q2").await;
    assert_eq!(j.id, c);
    complete(&s, &j, json!(null)).await.unwrap();
    assert_eq!(get(&s, &p2).await.state, JobState::Cancelled);
    let _ = b;
}
