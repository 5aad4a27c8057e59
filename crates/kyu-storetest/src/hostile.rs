//! Hostile and edge input: every store refuses the same values, names the
//! field, writes nothing for them, and never lets one bad report hold back
//! the rest of its batch.

use kyu_core::transition::Failure;
use kyu_core::{JobState, Millis};
use kyu_store::{
    JobClaimParams, JobHeartbeatParams, JobListParams, JobRetryManyParams, JobSaveParams, Outcome, Report, Store, StoreError,
};
use serde_json::json;

use crate::support::*;

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, StoreError>, field: &str) {
    match r {
        Err(StoreError::Invalid(e)) => assert!(e.field.contains(field) || e.to_string().contains(field), "{e} should name {field}"),
        other => panic!("expected the store to refuse `{field}` as invalid, got {other:?}"),
    }
}

pub async fn bad_report_in_a_batch_holds_back_nothing<S: Store>(s: S) {
    for _ in 0..3 {
        enqueue(&s, spec("q", "k")).await;
    }
    let jobs = claim(&s, "q", 3).await;
    let reports = vec![
        Report { id: jobs[0].id.clone(), token: jobs[0].token.clone(), outcome: Outcome::Complete { result: json!("fine") } },
        Report { id: jobs[1].id.clone(), token: jobs[1].token.clone(), outcome: Outcome::Complete { result: json!({"a": "nul\u{0}"}) } },
        Report { id: jobs[2].id.clone(), token: jobs[2].token.clone(), outcome: Outcome::Snooze { delay_ms: i64::MAX } },
    ];
    let mut out = s.job_report_many(reports).await.expect("the batch is applied");
    assert_eq!(out.remove(0).unwrap(), JobState::Completed);
    assert_invalid(out.remove(0), "result");
    assert_invalid(out.remove(0), "delay_ms");
    assert_eq!(get(&s, &jobs[0].id).await.state, JobState::Completed);
    // The refused ones are untouched and still held by their claim.
    for j in &jobs[1..] {
        let job = get(&s, &j.id).await;
        assert_eq!((job.state, job.result), (JobState::Running, None));
        assert_eq!(complete(&s, j, json!("fixed")).await.unwrap(), JobState::Completed);
    }
}

pub async fn nul_and_huge_numbers_are_refused_alike<S: Store>(s: S) {
    let id = enqueue(&s, spec("q", "k")).await;
    let j = claim_one(&s, "q").await;
    let save = |checkpoint, progress| JobSaveParams { id: id.clone(), token: j.token.clone(), checkpoint, progress };
    assert_invalid(s.job_save(save(Some(json!(["\u{0}"])), None)).await, "checkpoint");
    assert_invalid(s.job_save(save(None, Some(json!({"k\u{0}": 1})))).await, "progress");
    let retry = Failure { retry: true, retry_in_ms: Some(i64::MAX) };
    assert_invalid(report(&s, &j, Outcome::Fail { error: "x".into(), failure: retry }).await, "retry_in_ms");
    let hb = JobHeartbeatParams { jobs: vec![(id.clone(), j.token.clone())], lease_ms: i64::MAX };
    assert_invalid(s.job_heartbeat_many(hb).await, "lease_ms");
    let job = get(&s, &id).await;
    assert_eq!((job.state, job.checkpoint, job.progress), (JobState::Running, None, None));
    // An error message is text for people: a NUL in it is replaced, and the
    // failure is recorded rather than refused.
    fail(&s, &j, "bad\u{0}byte").await.unwrap();
    assert_eq!(get(&s, &id).await.errors[0].message, "bad\u{FFFD}byte");
}

pub async fn claims_and_filters_are_checked<S: Store>(s: S) {
    enqueue(&s, spec("q", "k")).await;
    let claim_with = |worker: &str, lease_ms| JobClaimParams { queues: vec![q("q")], worker: worker.into(), max: 1, lease_ms };
    assert_invalid(s.job_claim(claim_with("w\u{0}", 30_000)).await, "worker");
    assert_invalid(s.job_claim(claim_with("w", i64::MAX)).await, "lease_ms");
    assert_invalid(s.job_claim(claim_with("w", 0)).await, "lease_ms");
    assert_eq!(claim(&s, "q", 1).await.len(), 1, "refused claims took nothing");
    let list = |kind: Option<&str>, tag: Option<&str>, cursor: Option<&str>| JobListParams {
        kind: kind.map(Into::into),
        tag: tag.map(Into::into),
        cursor: cursor.map(Into::into),
        ..Default::default()
    };
    assert_invalid(s.job_list(list(Some("no spaces"), None, None)).await, "kind");
    assert_invalid(s.job_list(list(None, Some("t\u{0}"), None)).await, "tag");
    assert_invalid(s.job_list(list(None, None, Some("not-a-cursor"))).await, "cursor");
    let redrive = JobRetryManyParams { error_contains: Some("\u{0}".into()), ..Default::default() };
    assert_invalid(s.job_retry_many(redrive).await, "error");
    let redrive = JobRetryManyParams { since: Some(Millis(-5)), ..Default::default() };
    assert_invalid(s.job_retry_many(redrive).await, "since");
    // The listing still works after all that.
    assert_eq!(s.job_list(JobListParams::default()).await.unwrap().jobs.len(), 1);
}
