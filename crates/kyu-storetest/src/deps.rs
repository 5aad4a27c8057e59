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
        Err(StoreError::NotFound(what)) => assert!(what.contains("ghost") && what.contains("depends_on[1]"), "{what}"),
        other => panic!("expected not found, got {other:?}"),
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

fn validated<S: Store>(s: &S, specs: Vec<JobSpec>) -> Vec<kyu_core::NewJob> {
    let now = s.clock().now();
    specs.into_iter().map(|sp| sp.validate(now, &kyu_core::Limits::default()).unwrap()).collect()
}

pub async fn chord_of_three_fans_in<S: Store>(s: S) {
    let group = (1..=3).map(|i| { let mut sp = spec("chord", "part"); sp.payload = json!(i); sp }).collect();
    let jobs = validated(&s, kyu_core::flow::chord(group, spec("chord", "sum")));
    let callback = jobs[3].id.clone();
    s.job_insert_many(kyu_store::JobInsertManyParams { jobs }).await.unwrap();
    for j in claim(&s, "chord", 10).await {
        let n = j.payload.as_i64().unwrap();
        complete(&s, &j, json!(n * 10)).await.unwrap();
    }
    let cb = claim_one(&s, "chord").await;
    assert_eq!(cb.id, callback);
    let mut results: Vec<i64> = cb.dependency_results.values().map(|v| v.as_i64().unwrap()).collect();
    results.sort();
    assert_eq!(results, [10, 20, 30]);
}

pub async fn chain_of_five_passes_results<S: Store>(s: S) {
    let steps = (0..5).map(|_| spec("chain", "step")).collect();
    let jobs = validated(&s, kyu_core::flow::chain(steps));
    let last = jobs[4].id.clone();
    s.job_insert_many(kyu_store::JobInsertManyParams { jobs }).await.unwrap();
    for step in 0..5 {
        let running = claim(&s, "chain", 10).await;
        assert_eq!(running.len(), 1, "one step at a time");
        let j = &running[0];
        let prev = j.dependency_results.values().next().map_or(0, |v| v.as_i64().unwrap());
        assert_eq!(prev, step, "each step sees the one before's result");
        complete(&s, j, json!(prev + 1)).await.unwrap();
    }
    assert_eq!(get(&s, &last).await.result, Some(json!(5)));
}

pub async fn children_with_wait_resume_from_checkpoint<S: Store>(s: S) {
    use kyu_store::{JobAddChildrenParams, JobSaveParams};
    let parent = enqueue(&s, spec("dyn", "parent")).await;
    let run1 = claim_one(&s, "dyn").await;
    assert_eq!(run1.attempt, 1);
    let save = |token: &str, cp: serde_json::Value| JobSaveParams { id: parent.clone(), token: token.into(), checkpoint: Some(cp), progress: None };
    s.job_save(save(&run1.token, json!({"phase": "children added"}))).await.unwrap();
    let kids = validated(&s, vec![spec("dyn-kids", "child"), spec("dyn-kids", "child")]);
    // Fenced: a stale token adds nothing.
    let forged = JobAddChildrenParams { id: parent.clone(), token: "forged".into(), jobs: kids.clone(), wait: true };
    assert_conflict(s.job_add_children(forged).await);
    assert!(s.job_get(&kids[0].id).await.unwrap().is_none());
    let added = s
        .job_add_children(JobAddChildrenParams { id: parent.clone(), token: run1.token.clone(), jobs: kids, wait: true })
        .await
        .unwrap();
    assert!(added.waiting);
    let p = get(&s, &parent).await;
    assert_eq!((p.state, p.attempt, p.pending_dependencies), (JobState::Waiting, 0, 2), "lease released, attempt given back");
    assert_eq!(p.depends_on.len(), 2);
    assert_conflict(complete(&s, &run1, json!("too early")).await);
    assert!(claim(&s, "dyn", 1).await.is_empty());
    let child = get(&s, &added.children[0].id).await;
    assert_eq!(child.dependents, vec![parent.clone()], "a child knows who waits for it");
    for (i, k) in claim(&s, "dyn-kids", 10).await.iter().enumerate() {
        complete(&s, k, json!(i)).await.unwrap();
    }
    // The parent runs again with the same attempt number and its checkpoint.
    let run2 = claim_one(&s, "dyn").await;
    assert_eq!(run2.attempt, 1);
    assert_eq!(run2.checkpoint, Some(json!({"phase": "children added"})));
    assert_eq!(run2.dependency_results.len(), 2);
    // Its worker is killed: the lease expires, the attempt counts, and the
    // next run still has the checkpoint and the children's results.
    s.job_save(save(&run2.token, json!({"phase": "merging"}))).await.unwrap();
    s.clock().advance(31_000);
    s.job_rescue().await.unwrap();
    s.clock().advance(5_000);
    let run3 = claim_one(&s, "dyn").await;
    assert_eq!(run3.attempt, 2);
    assert_eq!(run3.checkpoint, Some(json!({"phase": "merging"})));
    assert_eq!(run3.dependency_results.len(), 2);
    complete(&s, &run3, json!("merged")).await.unwrap();
    let p = get(&s, &parent).await;
    assert_eq!((p.state, p.errors.len()), (JobState::Completed, 1));
    assert_eq!(p.errors[0].message, "lease expired");
}

pub async fn children_without_wait_and_failed_child<S: Store>(s: S) {
    use kyu_store::JobAddChildrenParams;
    let parent = enqueue(&s, spec("nowait", "parent")).await;
    let run = claim_one(&s, "nowait").await;
    let kids = validated(&s, vec![spec("nowait-kids", "child")]);
    let added = s.job_add_children(JobAddChildrenParams { id: parent.clone(), token: run.token.clone(), jobs: kids, wait: false }).await.unwrap();
    assert!(!added.waiting);
    assert_eq!(get(&s, &parent).await.state, JobState::Running, "the parent goes on");
    complete(&s, &run, json!(null)).await.unwrap();
    assert_eq!(get(&s, &added.children[0].id).await.state, JobState::Queued);

    // A child that fails fails the parent waiting for it.
    let parent = enqueue(&s, spec("failkid", "parent")).await;
    let run = claim_one(&s, "failkid").await;
    let mut kid = spec("failkid-kids", "child");
    kid.max_attempts = Some(1);
    let kids = validated(&s, vec![kid]);
    let kid_id = kids[0].id.clone();
    s.job_add_children(JobAddChildrenParams { id: parent.clone(), token: run.token, jobs: kids, wait: true }).await.unwrap();
    let k = claim_one(&s, "failkid-kids").await;
    fail(&s, &k, "child broke").await.unwrap();
    let p = get(&s, &parent).await;
    assert_eq!(p.state, JobState::Failed);
    assert!(p.errors.last().unwrap().message.contains(kid_id.as_str()));
}

pub async fn children_already_done_keep_the_job_running<S: Store>(s: S) {
    use kyu_store::JobAddChildrenParams;
    // A child that ran already (a retried parent adding the same ids again).
    let mut kid = spec("done-kids", "child");
    kid.id = Some("done-kid-1".into());
    enqueue(&s, kid.clone()).await;
    let k = claim_one(&s, "done-kids").await;
    complete(&s, &k, json!({"n": 1})).await.unwrap();

    let parent = enqueue(&s, spec("done", "parent")).await;
    let run = claim_one(&s, "done").await;
    let kids = validated(&s, vec![kid]);
    let added = s.job_add_children(JobAddChildrenParams { id: parent.clone(), token: run.token.clone(), jobs: kids, wait: true }).await.unwrap();
    assert!(!added.waiting, "nothing to wait for");
    assert!(added.children[0].duplicate);
    // The job is still running under the same token: its next write is accepted.
    let p = get(&s, &parent).await;
    assert_eq!((p.state, p.attempt), (JobState::Running, 1));
    complete(&s, &run, json!("done")).await.unwrap();
    assert_eq!(get(&s, &parent).await.state, JobState::Completed);
}

pub async fn flow_of_ten_thousand_releases_parent_once<S: Store>(s: S) {
    let n = 10_000;
    let flow = kyu_core::Flow {
        job: spec("big-parent", "parent"),
        children: (0..n).map(|_| kyu_core::Flow { job: spec("big-kids", "child"), children: vec![] }).collect(),
    };
    let (root, specs) = flow.flatten().unwrap();
    let jobs = validated(&s, specs);
    s.job_insert_many(kyu_store::JobInsertManyParams { jobs }).await.unwrap();
    assert_eq!(get(&s, &root).await.pending_dependencies, n as i64);
    let mut done = 0;
    while done < n {
        let batch = claim(&s, "big-kids", 500).await;
        assert!(!batch.is_empty());
        assert!(claim(&s, "big-parent", 1).await.is_empty(), "not before the last child");
        let reports = batch
            .iter()
            .map(|j| kyu_store::Report { id: j.id.clone(), token: j.token.clone(), outcome: kyu_store::Outcome::Complete { result: json!(1) } })
            .collect();
        for r in s.job_report_many(reports).await.unwrap() {
            r.unwrap();
        }
        done += batch.len();
    }
    let parents = claim(&s, "big-parent", 10).await;
    assert_eq!(parents.len(), 1, "released exactly once");
    assert_eq!(parents[0].dependency_results.len(), n);
}

pub async fn retry_with_dependents_runs_the_rest_of_the_chain<S: Store>(s: S) {
    use kyu_store::JobRetryParams;
    let mut first = spec("chain", "step");
    first.max_attempts = Some(1);
    let a = enqueue(&s, first).await;
    let b = enqueue(&s, dependent(&[&a])).await;
    let c = enqueue(&s, dependent(&[&b])).await;
    // d also waits for x, which fails on its own: d failed for two reasons.
    let mut lone = spec("other", "k");
    lone.max_attempts = Some(1);
    let x = enqueue(&s, lone).await;
    let d = enqueue(&s, dependent(&[&a, &x])).await;
    let run_x = claim_one(&s, "other").await;
    fail(&s, &run_x, "x broke").await.unwrap();
    let run_a = claim_one(&s, "chain").await;
    fail(&s, &run_a, "a broke").await.unwrap();
    for id in [&b, &c, &d] {
        assert_eq!(get(&s, id).await.state, JobState::Failed);
    }
    // A plain retry leaves the dependents failed.
    s.job_retry(JobRetryParams::one(a.clone())).await.unwrap();
    assert_eq!(get(&s, &b).await.state, JobState::Failed);
    let run_a = claim_one(&s, "chain").await;
    fail(&s, &run_a, "a broke again").await.unwrap();
    // With dependents: b and c wait again; d stays failed (x is still failed).
    let job = s.job_retry(JobRetryParams { id: a.clone(), dependents: true }).await.unwrap();
    assert_eq!(job.state, JobState::Queued);
    for id in [&b, &c] {
        let j = get(&s, id).await;
        assert_eq!((j.state, j.pending_dependencies), (JobState::Waiting, 1), "{id}");
        assert_eq!(j.finished_at, None);
    }
    assert_eq!(get(&s, &d).await.state, JobState::Failed, "d failed because of x too");
    let run_a = claim_one(&s, "chain").await;
    complete(&s, &run_a, json!("a")).await.unwrap();
    let run_b = claim_one(&s, "q").await;
    assert_eq!(run_b.id, b);
    complete(&s, &run_b, json!("b")).await.unwrap();
    let run_c = claim_one(&s, "q").await;
    assert_eq!((run_c.id.clone(), run_c.dependency_results.get(b.as_str()).cloned()), (c.clone(), Some(json!("b"))));
    complete(&s, &run_c, json!("c")).await.unwrap();
    assert_eq!(get(&s, &c).await.state, JobState::Completed);
}
