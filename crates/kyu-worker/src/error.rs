//! What a handler returns when it does not return a result.

use std::fmt;
use std::time::Duration;

/// A handler's outcome other than success: retry (per policy or after a
/// delay), fail for good, or snooze. Any `std::error::Error` converts into a
/// retryable `JobError`, so `?` works in handlers.
#[derive(Debug)]
pub struct JobError {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Retry { after: Option<Duration> },
    Fatal,
    Snooze(Duration),
    /// The job moved to `waiting` for its children: nothing to report.
    Waiting,
}

impl JobError {
    /// Fails this attempt; the job is retried per its backoff policy while
    /// attempts remain.
    pub fn retry(message: impl fmt::Display) -> JobError {
        JobError { kind: ErrorKind::Retry { after: None }, message: message.to_string() }
    }

    /// Fails this attempt and asks for the next one after `delay` rather than
    /// the backoff policy's delay (arq's `Retry(defer=...)`).
    pub fn retry_after(message: impl fmt::Display, delay: Duration) -> JobError {
        JobError { kind: ErrorKind::Retry { after: Some(delay) }, message: message.to_string() }
    }

    /// Fails the job for good: no retry, whatever attempts remain.
    pub fn fatal(message: impl fmt::Display) -> JobError {
        JobError { kind: ErrorKind::Fatal, message: message.to_string() }
    }

    /// Puts the job back to run again after `delay` without spending an
    /// attempt (River's `JobSnooze`, BullMQ's `moveToDelayed`).
    pub fn snooze(delay: Duration) -> JobError {
        JobError { kind: ErrorKind::Snooze(delay), message: String::new() }
    }

    /// The message recorded in the job's `errors`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> JobError {
        JobError::retry(e)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Snooze(d) => write!(f, "snooze for {d:?}"),
            ErrorKind::Waiting => f.write_str("waiting for children"),
            _ => f.write_str(&self.message),
        }
    }
}
