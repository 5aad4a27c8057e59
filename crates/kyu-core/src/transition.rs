//! What happens to a running job when its attempt ends without a result.
//!
//! Both backends call these so that a failure, a timeout and a lost lease are
//! treated alike, and the rule lives in one place.

use crate::{Backoff, JobState, Millis};

/// How an attempt ended badly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Whether the handler allows another attempt at all (`retry: false` does not).
    pub retry: bool,
    /// A delay the handler chose, overriding the backoff policy.
    pub retry_in_ms: Option<i64>,
}

/// Where a failed attempt leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back to `scheduled`, claimable at `run_at`.
    Retry {
        /// Earliest next attempt.
        run_at: Millis,
    },
    /// Terminal, in this state (`failed`, or `cancelled` when an operator had
    /// asked the job to stop).
    Final(JobState),
}

/// The fate of attempt `attempt` of `max_attempts`, which just failed at `now`.
pub fn after_failure(
    now: Millis,
    attempt: i32,
    max_attempts: i32,
    backoff: &Backoff,
    cancel_requested: bool,
    failure: &Failure,
) -> AfterFailure {
    if cancel_requested {
        return AfterFailure::Final(JobState::Cancelled);
    }
    if !failure.retry || attempt >= max_attempts {
        return AfterFailure::Final(JobState::Failed);
    }
    let delay = failure.retry_in_ms.unwrap_or_else(|| backoff.delay_ms(attempt)).max(0);
    AfterFailure::Retry { run_at: now.plus_ms(delay) }
}

/// What a dependency in `state` means for a job waiting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dependency {
    /// Nothing to wait for: it completed (or failed, and the dependent
    /// continues on failure).
    Satisfied,
    /// It failed or was cancelled: the dependent fails too.
    Broken,
    /// It has not finished: wait.
    Pending,
}

/// The one rule for dependencies, used wherever a dependency's state is read
/// (enqueue with `depends_on`, children added at run time).
pub fn dependency(state: JobState, continue_on_failure: bool) -> Dependency {
    match state {
        JobState::Completed => Dependency::Satisfied,
        JobState::Failed | JobState::Cancelled if continue_on_failure => Dependency::Satisfied,
        JobState::Failed | JobState::Cancelled => Dependency::Broken,
        _ => Dependency::Pending,
    }
}

/// The state a job enters when it becomes runnable at `run_at`.
pub fn runnable_state(now: Millis, run_at: Millis) -> JobState {
    if run_at > now { JobState::Scheduled } else { JobState::Queued }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Failure = Failure { retry: true, retry_in_ms: None };

    #[test]
    fn retries_until_attempts_run_out() {
        let b = Backoff::Fixed { delay_ms: 100 };
        let now = Millis(1000);
        assert_eq!(after_failure(now, 1, 3, &b, false, &RETRY), AfterFailure::Retry { run_at: Millis(1100) });
        assert_eq!(after_failure(now, 3, 3, &b, false, &RETRY), AfterFailure::Final(JobState::Failed));
    }

    #[test]
    fn handler_choices_win_and_cancel_wins_over_all() {
        let b = Backoff::default();
        let now = Millis(0);
        let no = Failure { retry: false, retry_in_ms: None };
        assert_eq!(after_failure(now, 1, 5, &b, false, &no), AfterFailure::Final(JobState::Failed));
        let soon = Failure { retry: true, retry_in_ms: Some(7) };
        assert_eq!(after_failure(now, 1, 5, &b, false, &soon), AfterFailure::Retry { run_at: Millis(7) });
        assert_eq!(after_failure(now, 1, 5, &b, true, &soon), AfterFailure::Final(JobState::Cancelled));
    }
}
