//! Fixtures, inserted through the trait (never raw SQL), so both backends
//! are set up the same way.

use kyu_core::transition::Failure;
use kyu_core::{ClaimedJob, Job, JobId, JobSpec, JobState, Limits, QueueName};
use kyu_store::{JobClaimParams, JobInsertManyParams, Outcome, Report, Store, StoreError};
use serde_json::{Value, json};

/// A spec for `kind` on `queue` with an empty object payload.
pub fn spec(queue: &str, kind: &str) -> JobSpec {
    JobSpec::new(queue, kind, json!({}))
}

/// Enqueues one job and returns its id.
pub async fn enqueue<S: Store>(s: &S, spec: JobSpec) -> JobId {
    try_enqueue(s, spec).await.expect("enqueue").id
}

/// Enqueues one job, returning the store's answer.
pub async fn try_enqueue<S: Store>(s: &S, spec: JobSpec) -> Result<kyu_store::Inserted, StoreError> {
    let job = spec.validate(s.clock().now(), &Limits::default()).expect("valid spec");
    let mut out = s.job_insert_many(JobInsertManyParams { jobs: vec![job] }).await?;
    Ok(out.remove(0))
}

/// Claims up to `max` from `queue` with a 30 s lease.
pub async fn claim<S: Store>(s: &S, queue: &str, max: usize) -> Vec<ClaimedJob> {
    claim_leased(s, queue, max, 30_000).await
}

/// Claims up to `max` from `queue` with the given lease.
pub async fn claim_leased<S: Store>(s: &S, queue: &str, max: usize, lease_ms: i64) -> Vec<ClaimedJob> {
    let p = JobClaimParams { queues: vec![q(queue)], worker: "test-worker".into(), max, lease_ms };
    s.job_claim(p).await.expect("claim").jobs
}

/// Claims exactly one job from `queue`.
pub async fn claim_one<S: Store>(s: &S, queue: &str) -> ClaimedJob {
    let mut jobs = claim(s, queue, 1).await;
    assert_eq!(jobs.len(), 1, "expected one claimable job on {queue}");
    jobs.remove(0)
}

/// A queue name.
pub fn q(name: &str) -> QueueName {
    QueueName::new(name).expect("queue name")
}

/// Sends one report and returns its own result.
pub async fn report<S: Store>(s: &S, job: &ClaimedJob, outcome: Outcome) -> Result<JobState, StoreError> {
    let r = Report { id: job.id.clone(), token: job.token.clone(), outcome };
    s.job_report_many(vec![r]).await.expect("report batch").remove(0)
}

/// Completes with `result`.
pub async fn complete<S: Store>(s: &S, job: &ClaimedJob, result: Value) -> Result<JobState, StoreError> {
    report(s, job, Outcome::Complete { result }).await
}

/// Fails, allowing retries per policy.
pub async fn fail<S: Store>(s: &S, job: &ClaimedJob, error: &str) -> Result<JobState, StoreError> {
    let failure = Failure { retry: true, retry_in_ms: None };
    report(s, job, Outcome::Fail { error: error.into(), failure }).await
}

/// The job, which must exist.
pub async fn get<S: Store>(s: &S, id: &JobId) -> Job {
    s.job_get(id).await.expect("get").expect("job exists")
}

/// Asserts `r` is a conflict.
pub fn assert_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    match r {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
}
