//! What happens to a running job when its attempt ends: reported by its
//! worker, or lost (lease expired, time limit passed).
//!
//! Every backend asks these functions and writes what they answer, so a
//! failure, a snooze, a timeout and a lost lease mean the same on SQLite,
//! on PostgreSQL and over HTTP. The rules live here and nowhere else.

use serde_json::Value;

use crate::{Backoff, JobState, Millis, ValidationError, validate};

/// How an attempt ended, as its worker reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Success, with the handler's result.
    Complete {
        /// The result.
        result: Value,
    },
    /// Failure; retried per policy unless `failure.retry` is false.
    Fail {
        /// Message kept in the job's `errors`.
        error: String,
        /// Retry wishes.
        failure: Failure,
    },
    /// Put back to run again after `delay_ms`; the attempt is not counted.
    /// A worker shutting down releases its jobs as a snooze of 0.
    Snooze {
        /// Delay.
        delay_ms: i64,
    },
}

impl Outcome {
    /// Checks what a store cannot hold (a NUL in the result, a delay out of
    /// range). Called for every report before anything is written, so one
    /// bad report is refused alone and never holds back its batch.
    pub fn check(&self) -> Result<(), ValidationError> {
        match self {
            Outcome::Complete { result } => validate::no_nul("result", result),
            Outcome::Fail { failure, .. } => validate::opt_duration("retry_in_ms", failure.retry_in_ms).map(|_| ()),
            Outcome::Snooze { delay_ms } => validate::duration("delay_ms", *delay_ms).map(|_| ()),
        }
    }
}

/// How an attempt ended badly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Whether the handler allows another attempt at all (`retry: false` does not).
    pub retry: bool,
    /// A delay the handler chose, overriding the backoff policy.
    pub retry_in_ms: Option<i64>,
}

impl Failure {
    /// Retry per the job's backoff policy.
    pub const RETRY: Failure = Failure { retry: true, retry_in_ms: None };
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
    let delay = failure.retry_in_ms.unwrap_or_else(|| backoff.delay_ms(attempt)).clamp(0, validate::MAX_DURATION_MS);
    AfterFailure::Retry { run_at: now.plus_ms(delay) }
}

/// Why a worker's write on a job is refused. Nothing is changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The job is finished; a second report is never applied.
    Terminal(JobState),
    /// The claim is no longer the job's current one: its lease expired and
    /// it ran again, or it was released (snoozed, waiting, rescued).
    Stale(JobState),
}

impl Refusal {
    /// What to tell the worker.
    pub fn message(self, id: &str) -> String {
        match self {
            Refusal::Terminal(state) => format!("job `{id}` is already {state}"),
            Refusal::Stale(state) => format!(
                "stale token: job `{id}` is no longer held by this claim (it is {state} now; its lease expired or it was released)"
            ),
        }
    }
}

/// The fence every worker write passes: the job must be running under
/// exactly the token the worker presents.
pub fn check_token(state: JobState, current: Option<&str>, presented: &str) -> Result<(), Refusal> {
    if state.is_terminal() {
        return Err(Refusal::Terminal(state));
    }
    if state != JobState::Running || current != Some(presented) {
        return Err(Refusal::Stale(state));
    }
    Ok(())
}

/// What a running job's attempt needs to know to decide what comes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// This attempt's number.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Delay policy.
    pub backoff: Backoff,
    /// An operator asked the job to stop.
    pub cancel_requested: bool,
}

/// What one ended attempt does to its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// It completed.
    Complete,
    /// Back to the queue at `run_at` (`state` is `queued` or `scheduled`).
    Requeue {
        /// `queued` if `run_at` has come, else `scheduled`.
        state: JobState,
        /// Earliest next attempt.
        run_at: Millis,
        /// Recorded in the job's `errors` (a snooze records none).
        error: Option<String>,
        /// A snooze gives its attempt back: the next run has the same number.
        give_back_attempt: bool,
    },
    /// Terminal: `failed` or `cancelled`.
    Finish {
        /// The final state.
        state: JobState,
        /// Recorded in the job's `errors` (an honoured cancel records none).
        error: Option<String>,
    },
}

impl Step {
    /// The state the job is in afterwards.
    pub fn state(&self) -> JobState {
        match self {
            Step::Complete => JobState::Completed,
            Step::Requeue { state, .. } | Step::Finish { state, .. } => *state,
        }
    }

    fn from_failure(now: Millis, after: AfterFailure, error: Option<String>) -> Step {
        match after {
            AfterFailure::Retry { run_at } => {
                Step::Requeue { state: runnable_state(now, run_at), run_at, error, give_back_attempt: false }
            }
            // An operator's cancel is not a failure of the job: no error.
            AfterFailure::Final(JobState::Cancelled) => Step::Finish { state: JobState::Cancelled, error: None },
            AfterFailure::Final(state) => Step::Finish { state, error },
        }
    }
}

/// What a worker's report does. A failure is retried per policy; a failure
/// of a job an operator asked to stop ends it `cancelled`; a snooze of such
/// a job too; a completion is always accepted (the work happened).
pub fn plan_report(now: Millis, a: &Attempt, outcome: &Outcome) -> Step {
    match outcome {
        Outcome::Complete { .. } => Step::Complete,
        Outcome::Fail { error, failure } => {
            let after = after_failure(now, a.attempt, a.max_attempts, &a.backoff, a.cancel_requested, failure);
            Step::from_failure(now, after, Some(validate::printable(error).into_owned()))
        }
        Outcome::Snooze { .. } if a.cancel_requested => Step::Finish { state: JobState::Cancelled, error: None },
        Outcome::Snooze { delay_ms } => {
            let run_at = now.plus_ms((*delay_ms).clamp(0, validate::MAX_DURATION_MS));
            Step::Requeue { state: runnable_state(now, run_at), run_at, error: None, give_back_attempt: true }
        }
    }
}

/// Why the store took a running job back from its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// No heartbeat came before the lease ran out (the worker is gone).
    LeaseExpired,
    /// The job ran past its time limit plus the grace period, heartbeats or not.
    Timeout,
}

impl Lost {
    /// The message recorded in the job's `errors`.
    pub fn message(self) -> &'static str {
        match self {
            Lost::LeaseExpired => "lease expired",
            Lost::Timeout => "timeout",
        }
    }
}

/// Whether a running job is lost at `now`: it is past its [`deadline`]
/// (its time limit plus the grace period), or its lease ran out.
pub fn lost(now: Millis, lease_expires_at: Millis, deadline: Option<Millis>) -> Option<Lost> {
    if deadline.is_some_and(|d| now > d) {
        return Some(Lost::Timeout);
    }
    (now > lease_expires_at).then_some(Lost::LeaseExpired)
}

/// What losing a job does: it counts as a failed attempt (retried per
/// policy), except that a job an operator asked to stop ends `cancelled`.
pub fn plan_lost(now: Millis, a: &Attempt, why: Lost) -> Step {
    let after = after_failure(now, a.attempt, a.max_attempts, &a.backoff, a.cancel_requested, &Failure::RETRY);
    Step::from_failure(now, after, Some(why.message().to_owned()))
}

/// The state a job enters when it becomes runnable at `run_at`.
pub fn runnable_state(now: Millis, run_at: Millis) -> JobState {
    if run_at > now { JobState::Scheduled } else { JobState::Queued }
}

/// Whether entering `state` puts work in front of workers, so idle ones
/// should be woken (a `scheduled` job tells them when to look again).
pub fn wakes_workers(state: JobState) -> bool {
    matches!(state, JobState::Queued | JobState::Scheduled)
}

/// How long finished jobs are kept when they name no retention of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Completed jobs (default 24 h).
    pub keep_result_ms: i64,
    /// Failed and cancelled jobs (default 7 days).
    pub keep_failed_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { keep_result_ms: 24 * 3_600_000, keep_failed_ms: 7 * 24 * 3_600_000 }
    }
}

impl Retention {
    /// When a job that finished in `state` at `finished_at` is pruned: its own
    /// `keep_result_ms` (completed) or `keep_failed_ms` (failed, cancelled),
    /// else the store's default.
    pub fn expires_at(&self, state: JobState, finished_at: Millis, keep_result_ms: Option<i64>, keep_failed_ms: Option<i64>) -> Millis {
        let keep = match state {
            JobState::Completed => keep_result_ms.unwrap_or(self.keep_result_ms),
            _ => keep_failed_ms.unwrap_or(self.keep_failed_ms),
        };
        finished_at.plus_ms(keep.clamp(0, validate::MAX_DURATION_MS))
    }
}

/// When the store takes a job claimed at `started_at` back from its worker
/// whatever its heartbeats: its time limit (its own, else its queue's) plus
/// the grace period. `None` without a limit.
pub fn deadline(started_at: Millis, timeout_ms: Option<i64>, grace_ms: i64) -> Option<Millis> {
    timeout_ms.map(|t| started_at.plus_ms(t).plus_ms(grace_ms))
}

/// Most rows one maintenance pass (lease rescue, promotion) touches, so a
/// pass is always a short transaction; the next pass takes the rest.
pub const MAINTENANCE_BATCH: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Failure = Failure::RETRY;

    fn attempt(n: i32, max: i32, cancel: bool) -> Attempt {
        Attempt { attempt: n, max_attempts: max, backoff: Backoff::Fixed { delay_ms: 100 }, cancel_requested: cancel }
    }

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

    #[test]
    fn reports_and_losses() {
        let now = Millis(1000);
        let fail = Outcome::Fail { error: "boom\u{0}".into(), failure: RETRY };
        assert_eq!(
            plan_report(now, &attempt(1, 2, false), &fail),
            Step::Requeue { state: JobState::Scheduled, run_at: Millis(1100), error: Some("boom\u{FFFD}".into()), give_back_attempt: false }
        );
        assert_eq!(plan_report(now, &attempt(2, 2, false), &fail).state(), JobState::Failed);
        assert_eq!(plan_report(now, &attempt(1, 2, true), &fail), Step::Finish { state: JobState::Cancelled, error: None });
        let snooze = Outcome::Snooze { delay_ms: 0 };
        assert_eq!(
            plan_report(now, &attempt(2, 2, false), &snooze),
            Step::Requeue { state: JobState::Queued, run_at: now, error: None, give_back_attempt: true }
        );
        assert_eq!(plan_lost(now, &attempt(1, 1, false), Lost::Timeout), Step::Finish { state: JobState::Failed, error: Some("timeout".into()) });
        assert_eq!(lost(Millis(10), Millis(5), None), Some(Lost::LeaseExpired));
        assert_eq!(lost(Millis(10), Millis(50), deadline(Millis(0), Some(5), 4)), Some(Lost::Timeout));
        assert_eq!(lost(Millis(10), Millis(50), deadline(Millis(0), Some(5), 5)), None);
        let r = Retention { keep_result_ms: 10, keep_failed_ms: 20 };
        assert_eq!(r.expires_at(JobState::Completed, Millis(1), None, Some(99)), Millis(11));
        assert_eq!(r.expires_at(JobState::Cancelled, Millis(1), Some(99), None), Millis(21));
        assert_eq!(r.expires_at(JobState::Failed, Millis(1), None, Some(5)), Millis(6));
    }

    #[test]
    fn the_token_fence() {
        assert_eq!(check_token(JobState::Running, Some("t"), "t"), Ok(()));
        assert_eq!(check_token(JobState::Running, Some("t2"), "t"), Err(Refusal::Stale(JobState::Running)));
        assert_eq!(check_token(JobState::Queued, None, "t"), Err(Refusal::Stale(JobState::Queued)));
        assert_eq!(check_token(JobState::Completed, None, "t"), Err(Refusal::Terminal(JobState::Completed)));
    }

    #[test]
    fn outcomes_are_checked() {
        assert_eq!(Outcome::Complete { result: serde_json::json!(["\u{0}"]) }.check().unwrap_err().field, "result[0]");
        assert_eq!(Outcome::Snooze { delay_ms: i64::MAX }.check().unwrap_err().field, "delay_ms");
        let f = Failure { retry: true, retry_in_ms: Some(-5) };
        assert_eq!(Outcome::Fail { error: "x".into(), failure: f }.check().unwrap_err().field, "retry_in_ms");
    }
}
