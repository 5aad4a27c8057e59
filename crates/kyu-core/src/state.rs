//! Job states. The transitions are drawn in `docs/state_machine.md`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its life. Stored as lowercase text so operators can
/// `GROUP BY state` with plain SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Not claimable before its `run_at`: enqueued with a delay, or waiting
    /// out a retry backoff or a snooze. Leaves for `queued` once `run_at` passes.
    Scheduled,
    /// Claimable now. Leaves for `running` when a worker claims it.
    Queued,
    /// Waiting for its dependencies (or children) to complete. Leaves for
    /// `queued` when the last one completes, or `failed` when one fails.
    Waiting,
    /// Claimed by a worker holding a lease and a token. Leaves by the
    /// worker's report or by lease expiry.
    Running,
    /// Terminal: the handler returned a result.
    Completed,
    /// Terminal: out of attempts, or failed without retry. The dead-letter set.
    Failed,
    /// Terminal: cancelled by an operator.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Waiting,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Waiting => "waiting",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Completed, failed and cancelled jobs never change again, except that an
    /// operator may retry a failed or cancelled one.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown state `{s}` (one of scheduled, queued, waiting, running, completed, failed, cancelled)"))
    }
}
