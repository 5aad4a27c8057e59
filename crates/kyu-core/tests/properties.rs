//! Property tests of the job state machine as kyu-core decides it: random
//! sequences of claims, reports (with current and stale tokens), lost
//! leases, timeouts, snoozes, cancels, children and operator retries,
//! applied through the same functions the stores call.

use kyu_core::dependency::{ChildrenPlan, plan_children};
use kyu_core::transition::{Attempt, Failure, Lost, Outcome, Step, check_token, plan_lost, plan_report};
use kyu_core::{Backoff, JobId, JobState, Millis};
use proptest::prelude::*;

/// One job, as a store holds it.
#[derive(Clone, Debug, PartialEq)]
struct Job {
    state: JobState,
    attempt: i32,
    max_attempts: i32,
    token: Option<u32>,
    cancel_requested: bool,
    run_at: Millis,
}

#[derive(Clone, Debug)]
enum Op {
    /// Time passes.
    Wait(i64),
    /// A worker claims the job (if it is claimable).
    Claim,
    /// A report, with the current token or a stale one.
    Report { current: bool, outcome: u8, delay: i64 },
    /// The store takes the job back.
    Lose { timeout: bool },
    /// Children added with wait, all done (`true`) or some pending.
    Children { done: bool },
    /// Operator actions.
    Cancel,
    Retry,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0i64..5_000).prop_map(Op::Wait),
        Just(Op::Claim),
        (any::<bool>(), 0u8..4, 0i64..10_000).prop_map(|(current, outcome, delay)| Op::Report { current, outcome, delay }),
        any::<bool>().prop_map(|timeout| Op::Lose { timeout }),
        any::<bool>().prop_map(|done| Op::Children { done }),
        Just(Op::Cancel),
        Just(Op::Retry),
    ]
}

struct World {
    now: Millis,
    job: Job,
    next_token: u32,
    backoff: Backoff,
}

impl World {
    fn attempt(&self) -> Attempt {
        Attempt {
            attempt: self.job.attempt,
            max_attempts: self.job.max_attempts,
            backoff: self.backoff,
            cancel_requested: self.job.cancel_requested,
        }
    }

    fn write(&mut self, step: Step) {
        let j = &mut self.job;
        match step {
            Step::Complete => j.state = JobState::Completed,
            Step::Requeue { state, run_at, give_back_attempt, .. } => {
                j.state = state;
                j.run_at = run_at;
                if give_back_attempt {
                    j.attempt -= 1;
                }
            }
            Step::Finish { state, .. } => j.state = state,
        }
        j.token = None;
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Wait(ms) => {
                self.now = self.now.plus_ms(ms);
                if self.job.state == JobState::Scheduled && self.job.run_at <= self.now {
                    self.job.state = JobState::Queued; // promotion
                }
            }
            Op::Claim => {
                if self.job.state == JobState::Queued {
                    self.next_token += 1;
                    self.job.state = JobState::Running;
                    self.job.attempt += 1;
                    self.job.token = Some(self.next_token);
                }
            }
            Op::Report { current, outcome, delay } => {
                let presented = if current { self.job.token.unwrap_or(0) } else { self.next_token + 1000 };
                let before = self.job.clone();
                let fence = check_token(self.job.state, self.job.token.map(|t| t.to_string()).as_deref(), &presented.to_string());
                if fence.is_err() {
                    return; // refused: nothing may change (checked by the caller)
                }
                let outcome = match outcome {
                    0 => Outcome::Complete { result: serde_json::Value::Null },
                    1 => Outcome::Fail { error: "e".into(), failure: Failure::RETRY },
                    2 => Outcome::Fail { error: "e".into(), failure: Failure { retry: false, retry_in_ms: Some(delay) } },
                    _ => Outcome::Snooze { delay_ms: delay },
                };
                let step = plan_report(self.now, &self.attempt(), &outcome);
                self.write(step);
                assert_ne!(before, self.job, "an accepted report always moves the job on");
            }
            Op::Lose { timeout } => {
                if self.job.state == JobState::Running {
                    let why = if timeout { Lost::Timeout } else { Lost::LeaseExpired };
                    let step = plan_lost(self.now, &self.attempt(), why);
                    self.write(step);
                }
            }
            Op::Children { done } => {
                if self.job.state != JobState::Running {
                    return;
                }
                let kid = JobId::new("kid").unwrap();
                let state = if done { JobState::Completed } else { JobState::Queued };
                match plan_children(true, self.job.cancel_requested, false, &[(&kid, state)]) {
                    ChildrenPlan::KeepRunning => assert!(done, "pending children make the job wait"),
                    ChildrenPlan::Wait(_) => {
                        // Waiting gives the attempt back; the children then
                        // complete and release the job.
                        self.job.attempt -= 1;
                        self.job.token = None;
                        self.job.state = JobState::Queued;
                    }
                    ChildrenPlan::Cancel => self.write(Step::Finish { state: JobState::Cancelled, error: None }),
                    ChildrenPlan::Fail(_) => unreachable!("no child failed"),
                }
            }
            Op::Cancel => match self.job.state {
                s if s.is_terminal() => {}
                JobState::Running => self.job.cancel_requested = true,
                _ => self.job.state = JobState::Cancelled,
            },
            Op::Retry => {
                if matches!(self.job.state, JobState::Failed | JobState::Cancelled) {
                    self.job = Job { state: JobState::Queued, attempt: 0, token: None, cancel_requested: false, ..self.job.clone() };
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn the_state_machine_keeps_its_promises(max_attempts in 1i32..6, ops in proptest::collection::vec(op(), 1..60)) {
        let mut w = World {
            now: Millis(1_000_000),
            job: Job { state: JobState::Queued, attempt: 0, max_attempts, token: None, cancel_requested: false, run_at: Millis(0) },
            next_token: 0,
            backoff: Backoff::Exponential { base_ms: 100, max_ms: 10_000 },
        };
        for op in &ops {
            let before = w.job.clone();
            w.apply(op);
            let after = &w.job;
            // Attempts never exceed the maximum, nor go below zero.
            prop_assert!(after.attempt <= after.max_attempts && after.attempt >= 0, "{before:?} --{op:?}--> {after:?}");
            // Nothing leaves a terminal state but an operator retry.
            if before.state.is_terminal() && after.state != before.state {
                prop_assert!(matches!(op, Op::Retry), "{before:?} left {} by {op:?}", before.state);
            }
            // A stale token never changes the job.
            if let Op::Report { current: false, .. } = op {
                prop_assert_eq!(&before, after);
            }
            // Only a running job holds a token.
            prop_assert_eq!(after.token.is_some(), after.state == JobState::Running);
            // A retry is never scheduled for a job that used its last attempt.
            if after.state == JobState::Scheduled && before.state == JobState::Running && after.attempt == before.attempt {
                prop_assert!(after.attempt < after.max_attempts);
            }
        }
    }

    #[test]
    fn backoff_stays_within_its_bounds(base in 0i64..100_000, extra in 0i64..10_000_000, attempt in 1i32..200) {
        let max = base + extra;
        let b = Backoff::Exponential { base_ms: base, max_ms: max };
        let nominal = (base as f64 * 2f64.powi((attempt - 1).min(62))).min(max as f64);
        let d = b.delay_ms(attempt) as f64;
        prop_assert!(d >= (nominal * 0.8).floor() - 1.0 && d <= (nominal * 1.2).ceil() + 1.0, "attempt {attempt}: {d} vs {nominal}");
        let fixed = Backoff::Fixed { delay_ms: base };
        prop_assert_eq!(fixed.delay_ms(attempt), base);
    }

    #[test]
    fn retry_delays_are_storable(delay in any::<i64>(), attempt in 1i32..10) {
        let a = Attempt { attempt, max_attempts: 10, backoff: Backoff::default(), cancel_requested: false };
        let now = Millis(4_000_000_000_000);
        let failure = Failure { retry: true, retry_in_ms: Some(delay) };
        if let Step::Requeue { run_at, .. } = plan_report(now, &a, &Outcome::Fail { error: "x".into(), failure }) {
            prop_assert!(run_at >= now && run_at <= kyu_core::validate::MAX_TIMESTAMP);
        }
    }
}
