//! Reports, heartbeats and saves: every write is fenced by the claim's token.

use kyu_core::transition::Failure;
use kyu_core::{Backoff, JobState};
use kyu_store::{JobHeartbeatParams, JobSaveParams, Outcome, Report, Store, StoreError};
use serde_json::json;

use crate::support::*;

pub async fn complete_stores_result<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_one(&s, "q").await;
    assert_eq!(complete(&s, &j, json!({"sum": 3})).await.unwrap(), JobState::Completed);
    let job = get(&s, &id).await;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.result, Some(json!({"sum": 3})));
    assert!(job.finished_at.is_some());
    assert_eq!(job.lease_expires_at, None);
    assert_eq!(job.attempt, 1);
}

pub async fn second_report_on_terminal_is_refused<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_one(&s, "q").await;
    complete(&s, &j, json!(1)).await.unwrap();
    assert_conflict(complete(&s, &j, json!(2)).await);
    assert_conflict(fail(&s, &j, "late").await);
    let job = get(&s, &id).await;
    assert_eq!(job.result, Some(json!(1)));
    assert!(job.errors.is_empty());
    // Unknown job.
    let mut ghost = j.clone();
    ghost.id = kyu_core::JobId::new("ghost").unwrap();
    assert!(matches!(complete(&s, &ghost, json!(0)).await, Err(StoreError::NotFound(_))));
}

pub async fn stale_token_changes_nothing<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let old = claim_leased(&s, "q", 1, 1_000).await.remove(0);
    s.clock().advance(2_000);
    s.job_rescue().await.unwrap();
    s.clock().advance(5_000);
    let new = claim_one(&s, "q").await;
    assert_eq!(new.id, id);
    // The slow first worker wakes up: everything it sends is refused.
    assert_conflict(complete(&s, &old, json!("old")).await);
    assert_conflict(fail(&s, &old, "old").await);
    assert_conflict(report(&s, &old, Outcome::Snooze { delay_ms: 0 }).await);
    let save = JobSaveParams { id: id.clone(), token: old.token.clone(), checkpoint: Some(json!("old")), progress: Some(json!(1)) };
    assert_conflict(s.job_save(save).await);
    let hb = JobHeartbeatParams { jobs: vec![(id.clone(), old.token.clone())], lease_ms: 60_000 };
    assert_conflict(s.job_heartbeat_many(hb).await.unwrap().remove(0));
    let job = get(&s, &id).await;
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.checkpoint, None);
    assert_eq!(job.progress, None);
    assert_eq!(job.lease_expires_at, Some(new.lease_expires_at));
    // The current holder is unaffected.
    complete(&s, &new, json!("new")).await.unwrap();
    assert_eq!(get(&s, &id).await.result, Some(json!("new")));
}

pub async fn fail_retries_with_backoff_then_fails<S: Store>(s: S) {
    let mut sp = spec("q", "k");
    sp.max_attempts = Some(3);
    sp.backoff = Some(Backoff::Fixed { delay_ms: 5_000 });
    let id = enqueue(&s, sp).await;
    for attempt in 1..=3 {
        let j = claim_one(&s, "q").await;
        assert_eq!(j.attempt, attempt);
        let before = s.clock().now();
        let state = fail(&s, &j, &format!("boom {attempt}")).await.unwrap();
        let job = get(&s, &id).await;
        if attempt < 3 {
            assert_eq!(state, JobState::Scheduled);
            assert_eq!(job.state, JobState::Scheduled);
            assert!(job.run_at >= before.plus_ms(5_000));
            assert!(claim(&s, "q", 1).await.is_empty(), "not before the backoff");
            s.clock().advance(5_001);
        } else {
            assert_eq!(state, JobState::Failed);
            assert_eq!(job.state, JobState::Failed);
            assert!(job.finished_at.is_some());
        }
    }
    let job = get(&s, &id).await;
    let msgs: Vec<(i32, &str)> = job.errors.iter().map(|e| (e.attempt, e.message.as_str())).collect();
    assert_eq!(msgs, [(1, "boom 1"), (2, "boom 2"), (3, "boom 3")]);
    s.clock().advance(3_600_000);
    assert!(claim(&s, "q", 1).await.is_empty());
}

pub async fn fail_without_retry_and_custom_delay<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_one(&s, "q").await;
    let failure = Failure { retry: true, retry_in_ms: Some(42_000) };
    let before = s.clock().now();
    report(&s, &j, Outcome::Fail { error: "later".into(), failure }).await.unwrap();
    let job = get(&s, &id).await;
    assert!(job.run_at >= before.plus_ms(42_000) && job.run_at < before.plus_ms(43_000));
    s.clock().advance(42_001);
    let j = claim_one(&s, "q").await;
    let failure = Failure { retry: false, retry_in_ms: None };
    let state = report(&s, &j, Outcome::Fail { error: "bad input".into(), failure }).await.unwrap();
    assert_eq!(state, JobState::Failed);
    assert_eq!(get(&s, &id).await.attempt, 2);
}

pub async fn lease_expiry_counts_attempt_and_retries<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_leased(&s, "q", 1, 1_000).await.remove(0);
    s.clock().advance(500);
    assert_eq!(s.job_rescue().await.unwrap().expired, 0, "lease not yet expired");
    s.clock().advance(1_000);
    assert_eq!(s.job_rescue().await.unwrap().expired, 1);
    let job = get(&s, &id).await;
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.errors.len(), 1);
    assert_eq!(job.errors[0].message, "lease expired");
    assert_eq!(job.errors[0].attempt, 1);
    s.clock().advance(5_000);
    let again = claim_one(&s, "q").await;
    assert_eq!(again.attempt, 2);
    assert_ne!(again.token, j.token);
}

pub async fn lease_expiry_exhausts_to_failed<S: Store>(s: S) {
    let mut sp = spec("q", "k");
    sp.max_attempts = Some(1);
    let id = enqueue(&s, sp).await;
    claim_leased(&s, "q", 1, 1_000).await;
    s.clock().advance(2_000);
    s.job_rescue().await.unwrap();
    let job = get(&s, &id).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.errors[0].message, "lease expired");
}

pub async fn heartbeat_extends_lease<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_leased(&s, "q", 1, 1_000).await.remove(0);
    for _ in 0..5 {
        s.clock().advance(800);
        let hb = s
            .job_heartbeat_many(JobHeartbeatParams { jobs: vec![(id.clone(), j.token.clone())], lease_ms: 1_000 })
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        assert!(!hb.cancel_requested);
        assert!(hb.lease_expires_at > s.clock().now());
        assert_eq!(s.job_rescue().await.unwrap().expired, 0);
    }
    assert_eq!(get(&s, &id).await.state, JobState::Running);
    complete(&s, &j, json!(null)).await.unwrap();
}

pub async fn snooze_gives_attempt_back<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_one(&s, "q").await;
    assert_eq!(j.attempt, 1);
    let state = report(&s, &j, Outcome::Snooze { delay_ms: 3_000 }).await.unwrap();
    assert_eq!(state, JobState::Scheduled);
    let job = get(&s, &id).await;
    assert_eq!(job.attempt, 0);
    assert!(job.errors.is_empty());
    assert!(claim(&s, "q", 1).await.is_empty());
    s.clock().advance(3_001);
    let j = claim_one(&s, "q").await;
    assert_eq!(j.attempt, 1, "a snoozed run does not spend an attempt");
    // Snooze of 0 (how a stopping worker releases a job) is claimable at once.
    report(&s, &j, Outcome::Snooze { delay_ms: 0 }).await.unwrap();
    assert_eq!(get(&s, &id).await.state, JobState::Queued);
    assert_eq!(claim_one(&s, "q").await.attempt, 1);
}

pub async fn checkpoint_and_progress_are_fenced<S: Store>(s: S) {
    let mut sp = spec("q", "k");
    sp.backoff = Some(Backoff::Fixed { delay_ms: 0 });
    let id = enqueue(&s, sp).await;
    let j = claim_one(&s, "q").await;
    assert_eq!(j.checkpoint, None);
    let save = |cp: Option<serde_json::Value>, pr: Option<serde_json::Value>, token: &str| JobSaveParams {
        id: id.clone(),
        token: token.into(),
        checkpoint: cp,
        progress: pr,
    };
    s.job_save(save(Some(json!({"step": 1})), None, &j.token)).await.unwrap();
    s.job_save(save(None, Some(json!({"pct": 50})), &j.token)).await.unwrap();
    let job = get(&s, &id).await;
    assert_eq!(job.checkpoint, Some(json!({"step": 1})), "a progress write keeps the checkpoint");
    assert_eq!(job.progress, Some(json!({"pct": 50})));
    fail(&s, &j, "crash after step 1").await.unwrap();
    // The next attempt resumes from the checkpoint.
    let j2 = claim_one(&s, "q").await;
    assert_eq!(j2.checkpoint, Some(json!({"step": 1})));
    assert_conflict(s.job_save(save(Some(json!({"step": 99})), None, &j.token)).await);
    s.job_save(save(Some(json!({"step": 2})), None, &j2.token)).await.unwrap();
    assert_eq!(get(&s, &id).await.checkpoint, Some(json!({"step": 2})));
}

pub async fn reports_in_a_batch_are_independent<S: Store>(s: S) {
    for _ in 0..3 {
        enqueue(&s, spec("q", "k")).await;
    }
    let jobs = claim(&s, "q", 3).await;
    let mut reports: Vec<Report> = jobs
        .iter()
        .map(|j| Report { id: j.id.clone(), token: j.token.clone(), outcome: Outcome::Complete { result: json!(1) } })
        .collect();
    reports[1].token = "forged".into();
    let out = s.job_report_many(reports).await.unwrap();
    assert!(out[0].is_ok() && out[2].is_ok());
    assert!(matches!(out[1], Err(StoreError::Conflict(_))));
    assert_eq!(get(&s, &jobs[0].id).await.state, JobState::Completed);
    assert_eq!(get(&s, &jobs[1].id).await.state, JobState::Running);
    assert_eq!(get(&s, &jobs[2].id).await.state, JobState::Completed);
}

pub async fn heartbeating_job_past_its_timeout_fails_with_timeout<S: Store>(s: S) {
    let mut sp = spec("q", "k");
    sp.timeout_ms = Some(2_000);
    sp.max_attempts = Some(2);
    let id = enqueue(&s, sp).await;
    let j = claim_one(&s, "q").await;
    assert_eq!(j.timeout_ms, Some(2_000));
    // The worker ignores the limit and keeps heartbeating: the store still
    // takes the job back once the limit plus the grace period (10 s) passed.
    for _ in 0..5 {
        s.clock().advance(2_000);
        let hb = JobHeartbeatParams { jobs: vec![(id.clone(), j.token.clone())], lease_ms: 30_000 };
        s.job_heartbeat_many(hb).await.unwrap().remove(0).expect("still held");
        s.job_rescue().await.unwrap();
        assert_eq!(get(&s, &id).await.state, JobState::Running, "not before the grace period");
    }
    s.clock().advance(2_100);
    assert_eq!(s.job_rescue().await.unwrap().expired, 1);
    let job = get(&s, &id).await;
    assert_ne!(job.state, JobState::Running);
    assert_eq!(job.errors.len(), 1);
    assert_eq!((job.errors[0].attempt, job.errors[0].message.as_str()), (1, "timeout"));
    // Its late writes are refused; the retry runs as attempt 2.
    assert_conflict(complete(&s, &j, json!("late")).await);
    s.clock().advance(10 * 60_000);
    s.job_rescue().await.unwrap();
    assert_eq!(claim_one(&s, "q").await.attempt, 2);
}

pub async fn queue_default_timeout_applies<S: Store>(s: S) {
    let update = kyu_store::QueueUpdateParams { name: q("q"), timeout_ms: Some(Some(1_000)), ..Default::default() };
    assert_eq!(s.queue_update(update).await.unwrap().timeout_ms, Some(1_000));
    let own = {
        let mut sp = spec("q", "own");
        sp.timeout_ms = Some(60_000);
        sp.priority = Some(1);
        enqueue(&s, sp).await
    };
    let plain = enqueue(&s, spec("q", "plain")).await;
    let jobs = claim(&s, "q", 2).await;
    assert_eq!((&jobs[0].id, jobs[0].timeout_ms), (&own, Some(60_000)));
    assert_eq!((&jobs[1].id, jobs[1].timeout_ms), (&plain, Some(1_000)), "the queue's default");
    s.clock().advance(11_001);
    assert_eq!(s.job_rescue().await.unwrap().expired, 1, "only the job on the queue's 1 s limit");
    assert_eq!(get(&s, &plain).await.errors[0].message, "timeout");
    assert_eq!(get(&s, &own).await.state, JobState::Running);
}

/// Reports and a claim in one call: each report answered in its own slot
/// (a stale one refused, changing nothing), and the reports applied before
/// the claim, so a job they release is claimed by the same call.
pub async fn reports_ride_on_the_claim<S: Store>(s: S) {
    let first = enqueue(&s, spec("ride", "k")).await;
    let mut then = spec("ride", "k");
    then.depends_on = vec![first.to_string()];
    let then = enqueue(&s, then).await;
    let held = claim_one(&s, "ride").await;
    let mut forged = held.clone();
    forged.token = "forged".into();
    let reports = vec![
        Report { id: forged.id.clone(), token: forged.token, outcome: Outcome::Complete { result: json!("forged") } },
        Report { id: held.id.clone(), token: held.token.clone(), outcome: Outcome::Complete { result: json!(1) } },
    ];
    let params = kyu_store::JobClaimParams { queues: vec![q("ride")], worker: "test-worker".into(), max: 10, lease_ms: 30_000 };
    let (answers, claimed) = s.job_report_and_claim(reports, params).await.unwrap();
    assert_eq!(answers.len(), 2);
    assert!(matches!(answers[0], Err(StoreError::Conflict(_))), "{:?}", answers[0]);
    assert_eq!(answers[1].as_ref().unwrap(), &JobState::Completed);
    assert_eq!(claimed.jobs.iter().map(|j| &j.id).collect::<Vec<_>>(), vec![&then]);
    assert_eq!(claimed.jobs[0].dependency_results.get(first.as_str()), Some(&json!(1)));
    assert_eq!(get(&s, &first).await.result, Some(json!(1)));
}
