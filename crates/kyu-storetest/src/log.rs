//! Job logs: per attempt, fenced by the token, bounded, deleted with the job.

use kyu_core::JobState;
use kyu_core::log::MAX_ATTEMPT_BYTES;
use kyu_store::{JobLogAppendParams, JobLogParams, Store, StoreError};
use serde_json::json;

use crate::support::*;

pub async fn job_log_is_fenced_bounded_and_kept_per_attempt<S: Store>(s: S) {
    let mut sp = spec("q", "k");
    sp.backoff = Some(kyu_core::Backoff::Fixed { delay_ms: 0 });
    let id = enqueue(&s, sp).await;
    let first = claim_one(&s, "q").await;
    let append = |token: &str, lines: Vec<String>| JobLogAppendParams { id: id.clone(), token: token.into(), lines };
    s.job_log_append(append(&first.token, vec!["starting".into(), "half\u{0}way".into()])).await.unwrap();
    fail(&s, &first, "boom").await.unwrap();
    // The attempt is over: its token writes nothing more.
    assert_conflict(s.job_log_append(append(&first.token, vec!["late".into()])).await);
    let second = claim_one(&s, "q").await;
    assert_eq!(second.attempt, 2);
    s.job_log_append(append(&second.token, vec!["again".into()])).await.unwrap();
    let all = s.job_log(JobLogParams { id: id.clone(), attempt: None }).await.unwrap();
    let text: Vec<(i32, &str)> = all.iter().map(|l| (l.attempt, l.line.as_str())).collect();
    assert_eq!(text, [(1, "starting"), (1, "half\u{FFFD}way"), (2, "again")]);
    let only = s.job_log(JobLogParams { id: id.clone(), attempt: Some(1) }).await.unwrap();
    assert_eq!(only.len(), 2);

    // An attempt's log is bounded: the oldest lines give way, with a marker.
    let line = "x".repeat(1000);
    for _ in 0..3 {
        s.job_log_append(append(&second.token, vec![line.clone(); 500])).await.unwrap();
    }
    let second_log = s.job_log(JobLogParams { id: id.clone(), attempt: Some(2) }).await.unwrap();
    let kept: i64 = second_log.iter().skip(1).map(|l| l.line.len() as i64).sum();
    assert!(kept <= MAX_ATTEMPT_BYTES, "kept {kept} bytes");
    assert!(second_log[0].line.contains("earlier lines of this attempt were dropped"), "{}", second_log[0].line);
    assert_eq!(second_log.last().unwrap().line, line);
    assert_eq!(s.job_log(JobLogParams { id: id.clone(), attempt: Some(1) }).await.unwrap().len(), 2, "attempt 1 untouched");

    // Kept as long as the job: deleted with it.
    complete(&s, &second, json!(null)).await.unwrap();
    assert_eq!(get(&s, &id).await.state, JobState::Completed);
    s.job_delete(&id).await.unwrap();
    assert!(matches!(s.job_log(JobLogParams { id: id.clone(), attempt: None }).await, Err(StoreError::NotFound(_))));
}
