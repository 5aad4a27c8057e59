//! What dependencies mean: the state a job enters when it is enqueued with
//! `depends_on`, what adding children to a running job does, and when a
//! waiting job is released. Both backends gather the dependencies' states,
//! ask these functions, and write the answer.

use crate::transition::{Step, runnable_state};
use crate::{ErrorEntry, JobId, JobState, Millis};

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

/// The one rule for dependencies, used wherever a dependency's state is read.
pub fn dependency(state: JobState, continue_on_failure: bool) -> Dependency {
    match state {
        JobState::Completed => Dependency::Satisfied,
        JobState::Failed | JobState::Cancelled if continue_on_failure => Dependency::Satisfied,
        JobState::Failed | JobState::Cancelled => Dependency::Broken,
        _ => Dependency::Pending,
    }
}

/// The message a job gets when a dependency of its fails.
pub fn broken_message(dep: &JobId) -> String {
    format!("dependency `{dep}` did not complete")
}

/// A job named in `depends_on` that does not exist (404: a dependency must
/// exist already, or come earlier in the same batch).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("job `{id}` (depends_on[{index}])")]
pub struct MissingDependency {
    /// Its position in `depends_on`.
    pub index: usize,
    /// The id that was not found.
    pub id: JobId,
}

/// How a new job starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsertPlan {
    /// `queued`, `scheduled`, `waiting`, or `failed` (a dependency had failed).
    pub state: JobState,
    /// The error a job born failed carries, naming the dependency.
    pub error: Option<ErrorEntry>,
    /// Which of `depends_on` (by position) it waits for.
    pub pending: Vec<usize>,
}

/// The state of a job enqueued at `now` to run at `run_at`, given the state
/// of each of its dependencies in order (`None`: no such job). A dependency
/// must exist already, or come earlier in the same batch, so no cycle can
/// ever be formed.
pub fn plan_insert(
    now: Millis,
    run_at: Millis,
    continue_on_failure: bool,
    deps: &[(&JobId, Option<JobState>)],
) -> Result<InsertPlan, MissingDependency> {
    let mut pending = Vec::new();
    let mut broken: Option<&JobId> = None;
    for (i, (id, state)) in deps.iter().enumerate() {
        let Some(state) = state else {
            return Err(MissingDependency { index: i, id: (*id).clone() });
        };
        match dependency(*state, continue_on_failure) {
            Dependency::Satisfied => {}
            Dependency::Broken => broken = broken.or(Some(id)),
            Dependency::Pending => pending.push(i),
        }
    }
    Ok(match broken {
        Some(dep) => InsertPlan {
            state: JobState::Failed,
            error: Some(ErrorEntry { attempt: 0, at: now, message: broken_message(dep) }),
            pending: Vec::new(),
        },
        None if !pending.is_empty() => InsertPlan { state: JobState::Waiting, error: None, pending },
        None => InsertPlan { state: runnable_state(now, run_at), error: None, pending },
    })
}

/// What adding children does to the running job that added them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildrenPlan {
    /// The job keeps running under the same token: it did not ask to wait,
    /// or every child had completed already (the handler goes on at once).
    KeepRunning,
    /// It asked to wait, but an operator had asked it to stop: it ends `cancelled`.
    Cancel,
    /// A child it would wait for has failed: it fails, naming the child.
    Fail(JobId),
    /// It moves to `waiting` (lease released, attempt given back) for these
    /// children, by position.
    Wait(Vec<usize>),
}

impl ChildrenPlan {
    /// For a plan that ends the job: how it ends.
    pub fn ending(&self) -> Option<Step> {
        match self {
            ChildrenPlan::Cancel => Some(Step::Finish { state: JobState::Cancelled, error: None }),
            ChildrenPlan::Fail(child) => Some(Step::Finish { state: JobState::Failed, error: Some(broken_message(child)) }),
            ChildrenPlan::KeepRunning | ChildrenPlan::Wait(_) => None,
        }
    }
}

/// A job that waits for its children keeps them among its dependencies,
/// so its next run sees their results: its `depends_on` with the children
/// added (each once).
pub fn with_children(mut depends_on: Vec<String>, children: &[&JobId]) -> Vec<String> {
    for c in children {
        if !depends_on.iter().any(|d| d == c.as_str()) {
            depends_on.push(c.to_string());
        }
    }
    depends_on
}

/// Children of a running job, with their states after the insert.
pub fn plan_children(
    wait: bool,
    cancel_requested: bool,
    continue_on_failure: bool,
    children: &[(&JobId, JobState)],
) -> ChildrenPlan {
    if !wait {
        return ChildrenPlan::KeepRunning;
    }
    if cancel_requested {
        return ChildrenPlan::Cancel;
    }
    let mut pending = Vec::new();
    for (i, (id, state)) in children.iter().enumerate() {
        match dependency(*state, continue_on_failure) {
            Dependency::Satisfied => {}
            Dependency::Broken => return ChildrenPlan::Fail((*id).clone()),
            Dependency::Pending => pending.push(i),
        }
    }
    if pending.is_empty() { ChildrenPlan::KeepRunning } else { ChildrenPlan::Wait(pending) }
}

/// Whether a failed job failed because its dependency `dep` did (its last
/// error is the one [`broken_message`] gave it).
pub fn failed_because_of(last_error: Option<&str>, dep: &JobId) -> bool {
    last_error == Some(broken_message(dep).as_str())
}

/// A failed dependent considered for revival when an operator retries a
/// job with its dependents.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    /// The dependent.
    pub id: &'a JobId,
    /// Runs even when a dependency failed.
    pub continue_on_failure: bool,
    /// Each of its dependencies and its state now.
    pub deps: Vec<(&'a JobId, JobState)>,
}

/// Which candidates go back to `waiting`, and how many dependencies each
/// waits for: those whose every dependency is completed, still to run, or
/// itself revived (the retried job, or another candidate revived with it).
/// A candidate that also failed because of some other job stays failed,
/// and so does every candidate that depends on it. Returns `(index,
/// pending)` pairs.
pub fn plan_revival(retried: &JobId, candidates: &[Candidate<'_>]) -> Vec<(usize, i64)> {
    let alive = |revived: &[bool], id: &JobId| id == retried || candidates.iter().zip(revived).any(|(c, r)| *r && c.id == id);
    let mut revived: Vec<bool> = vec![true; candidates.len()];
    loop {
        let blocked: Vec<usize> = candidates
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                revived[*i]
                    && c.deps.iter().any(|(dep, state)| {
                        !alive(&revived, dep) && dependency(*state, c.continue_on_failure) == Dependency::Broken
                    })
            })
            .map(|(i, _)| i)
            .collect();
        if blocked.is_empty() {
            break;
        }
        for i in blocked {
            revived[i] = false;
        }
    }
    let alive = |id: &JobId| alive(&revived, id);
    candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| revived[*i])
        .map(|(i, c)| {
            let pending = c
                .deps
                .iter()
                .filter(|(dep, state)| alive(dep) || dependency(*state, c.continue_on_failure) == Dependency::Pending)
                .count() as i64;
            (i, pending)
        })
        .collect()
}

/// The state a waiting job enters when its last dependency is satisfied.
pub fn released_state(now: Millis, run_at: Millis) -> JobState {
    runnable_state(now, run_at)
}

/// What a waiting job does on learning that some of its dependencies
/// finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// One of them failed (and it does not continue on failure): it fails,
    /// naming the dependency.
    Fail {
        /// The broken dependency.
        dep: JobId,
        /// Its error.
        error: String,
    },
    /// It waits for `pending` more, or is released (`state` is `queued` or
    /// `scheduled`) when none is left.
    Count {
        /// Dependencies still to finish.
        pending: i64,
        /// `waiting`, or the state it is released into.
        state: JobState,
    },
}

/// How many of `finished` (id, final state) a waiting job counts as done,
/// or `None` when one of them breaks it (then [`settle`] fails it). For a
/// backend that records finished dependencies apart from the waiting job's
/// row, and settles the job itself later.
pub fn satisfied(continue_on_failure: bool, finished: &[(&JobId, JobState)]) -> Option<i64> {
    let mut n = 0;
    for (_, state) in finished {
        match dependency(*state, continue_on_failure) {
            Dependency::Satisfied => n += 1,
            Dependency::Broken => return None,
            Dependency::Pending => {}
        }
    }
    Some(n)
}

/// A waiting job at `now`, due at `run_at`, with `pending` dependencies
/// outstanding, learns that `finished` (id, final state) have finished.
pub fn settle(
    now: Millis,
    run_at: Millis,
    pending: i64,
    continue_on_failure: bool,
    finished: &[(&JobId, JobState)],
) -> Settled {
    let mut satisfied = 0i64;
    for (id, state) in finished {
        match dependency(*state, continue_on_failure) {
            Dependency::Satisfied => satisfied += 1,
            Dependency::Broken => return Settled::Fail { dep: (*id).clone(), error: broken_message(id) },
            Dependency::Pending => {}
        }
    }
    let left = (pending - satisfied).max(0);
    let state = if left == 0 { released_state(now, run_at) } else { JobState::Waiting };
    Settled::Count { pending: left, state }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> JobId {
        JobId::new(s).unwrap()
    }

    #[test]
    fn insert_folds_dependencies() {
        let (a, b) = (id("a"), id("b"));
        let now = Millis(10);
        let plan = plan_insert(now, now, false, &[(&a, Some(JobState::Completed)), (&b, Some(JobState::Running))]).unwrap();
        assert_eq!((plan.state, plan.pending), (JobState::Waiting, vec![1]));
        let plan = plan_insert(now, Millis(20), false, &[(&a, Some(JobState::Completed))]).unwrap();
        assert_eq!(plan.state, JobState::Scheduled);
        let plan = plan_insert(now, now, false, &[(&a, Some(JobState::Running)), (&b, Some(JobState::Cancelled))]).unwrap();
        assert_eq!(plan.state, JobState::Failed);
        assert_eq!(plan.error.unwrap().message, "dependency `b` did not complete");
        let plan = plan_insert(now, now, true, &[(&b, Some(JobState::Failed))]).unwrap();
        assert_eq!(plan.state, JobState::Queued);
        assert_eq!(plan_insert(now, now, false, &[(&a, Some(JobState::Queued)), (&b, None)]).unwrap_err().index, 1);
    }

    #[test]
    fn settling_counts_and_breaks() {
        let (a, b) = (id("a"), id("b"));
        let now = Millis(5);
        assert_eq!(settle(now, now, 2, false, &[(&a, JobState::Completed)]), Settled::Count { pending: 1, state: JobState::Waiting });
        assert_eq!(
            settle(now, Millis(9), 2, false, &[(&a, JobState::Completed), (&b, JobState::Completed)]),
            Settled::Count { pending: 0, state: JobState::Scheduled }
        );
        assert!(matches!(settle(now, now, 2, false, &[(&b, JobState::Cancelled)]), Settled::Fail { dep, .. } if dep == b));
        assert_eq!(settle(now, now, 1, true, &[(&b, JobState::Failed)]), Settled::Count { pending: 0, state: JobState::Queued });
        assert_eq!(satisfied(false, &[(&a, JobState::Completed), (&b, JobState::Running)]), Some(1));
        assert_eq!(satisfied(false, &[(&a, JobState::Completed), (&b, JobState::Failed)]), None);
        assert_eq!(satisfied(true, &[(&a, JobState::Completed), (&b, JobState::Failed)]), Some(2));
    }

    #[test]
    fn revival_follows_only_failures_caused_by_the_retried_job() {
        let (a, b, c, d, x) = (id("a"), id("b"), id("c"), id("d"), id("x"));
        // a was retried; b depends on a; c on b and x (x failed on its own); d on b.
        let cands = [
            Candidate { id: &b, continue_on_failure: false, deps: vec![(&a, JobState::Queued)] },
            Candidate { id: &c, continue_on_failure: false, deps: vec![(&b, JobState::Failed), (&x, JobState::Failed)] },
            Candidate { id: &d, continue_on_failure: false, deps: vec![(&b, JobState::Failed), (&x, JobState::Completed)] },
        ];
        assert_eq!(plan_revival(&a, &cands), vec![(0, 1), (2, 1)]);
        assert!(failed_because_of(Some(&broken_message(&a)), &a));
        assert!(!failed_because_of(Some("boom"), &a));
    }

    #[test]
    fn children_outcomes() {
        let (a, b) = (id("a"), id("b"));
        let done = [(&a, JobState::Completed), (&b, JobState::Completed)];
        assert_eq!(plan_children(true, false, false, &done), ChildrenPlan::KeepRunning);
        assert_eq!(plan_children(false, true, false, &done), ChildrenPlan::KeepRunning);
        assert_eq!(plan_children(true, true, false, &done), ChildrenPlan::Cancel);
        let mixed = [(&a, JobState::Queued), (&b, JobState::Failed)];
        assert_eq!(plan_children(true, false, false, &mixed), ChildrenPlan::Fail(b.clone()));
        assert_eq!(plan_children(true, false, true, &mixed), ChildrenPlan::Wait(vec![0]));
    }
}
