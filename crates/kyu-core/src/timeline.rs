//! A job's timeline: what happened to it, oldest first, kept on the job and
//! deleted with it.
//!
//! Backends append events in the same statements that change the job, so a
//! timeline costs no extra round trip. Which event a transition writes is
//! decided here ([`for_step`]); how long a timeline may grow is bounded here
//! ([`push`], [`MAX_EVENTS`]).

use serde::{Deserialize, Serialize};

use crate::transition::{Lost, Outcome, Step};
use crate::{JobState, Millis};

/// Most events a job keeps. The first (how it was enqueued) always stays;
/// past the bound the oldest of the rest give way, so a job snoozing for
/// weeks keeps a bounded row.
pub const MAX_EVENTS: usize = 200;

/// Longest message an event keeps; the job's `errors` hold the full text.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// One entry of a job's timeline, as `GET /v1/jobs/{id}/events` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// When it happened.
    pub at: Millis,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The attempt it concerns, if any.
    #[serde(default)]
    pub attempt: Option<i32>,
    /// The worker involved, if any.
    #[serde(default)]
    pub worker: Option<String>,
    /// Details: the error, the time of the next attempt, the progress.
    #[serde(default)]
    pub message: Option<String>,
}

/// The kinds of event. The wire names are DESIGN.md's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// Inserted (its state then: queued, scheduled or waiting).
    Enqueued,
    /// A worker took it.
    Claimed,
    /// Its handler reported progress.
    Progress,
    /// Its handler saved a checkpoint.
    Checkpoint,
    /// Put back to run later without spending an attempt.
    Snoozed,
    /// Its worker gave it back unfinished (shutting down).
    Released,
    /// An attempt failed; another is scheduled.
    RetryScheduled,
    /// It failed for good.
    Failed,
    /// It completed.
    Completed,
    /// An operator asked the running job to stop.
    CancelRequested,
    /// It ended cancelled.
    Cancelled,
    /// Its worker stopped heartbeating and the lease ran out.
    LeaseExpired,
    /// It ran past its time limit.
    Timeout,
    /// It waits for other jobs (dependencies or children).
    Waiting,
    /// What it waited for finished: it is runnable again.
    Ready,
    /// An operator sent it back to the queue.
    Retried,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Enqueued => "enqueued",
            EventType::Claimed => "claimed",
            EventType::Progress => "progress",
            EventType::Checkpoint => "checkpoint",
            EventType::Snoozed => "snoozed",
            EventType::Released => "released",
            EventType::RetryScheduled => "retry_scheduled",
            EventType::Failed => "failed",
            EventType::Completed => "completed",
            EventType::CancelRequested => "cancel_requested",
            EventType::Cancelled => "cancelled",
            EventType::LeaseExpired => "lease_expired",
            EventType::Timeout => "timeout",
            EventType::Waiting => "waiting",
            EventType::Ready => "ready",
            EventType::Retried => "retried",
        }
    }

    /// Events that replace an event of the same type right before them, so
    /// a handler reporting progress 10,000 times leaves one entry.
    pub fn coalesces(self) -> bool {
        matches!(self, EventType::Progress | EventType::Checkpoint)
    }
}

/// An event's type and message, before the backend adds the time, attempt
/// and worker it knows from the row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What happened.
    pub kind: EventType,
    /// Details.
    pub message: Option<String>,
}

impl Entry {
    /// An entry without a message.
    pub fn bare(kind: EventType) -> Entry {
        Entry { kind, message: None }
    }

    /// An entry with a message, cut to [`MAX_MESSAGE_CHARS`].
    pub fn with(kind: EventType, message: impl Into<String>) -> Entry {
        Entry { kind, message: Some(clip(message.into())) }
    }
}

fn clip(s: String) -> String {
    if s.chars().count() <= MAX_MESSAGE_CHARS {
        return s;
    }
    let mut out: String = s.chars().take(MAX_MESSAGE_CHARS).collect();
    out.push('…');
    out
}

/// The event a job is enqueued with.
pub fn enqueued(state: JobState, run_at: Millis, pending_dependencies: i64) -> Entry {
    match state {
        JobState::Scheduled => Entry::with(EventType::Enqueued, format!("scheduled for {run_at}")),
        JobState::Waiting => Entry::with(EventType::Enqueued, format!("waiting for {pending_dependencies} dependencies")),
        _ => Entry::bare(EventType::Enqueued),
    }
}

/// The events an attempt's end writes: why it was lost, if it was, then
/// what happens next.
pub fn for_step(step: &Step, lost: Option<Lost>) -> Vec<Entry> {
    let mut out = Vec::with_capacity(2);
    if let Some(why) = lost {
        out.push(Entry::bare(match why {
            Lost::LeaseExpired => EventType::LeaseExpired,
            Lost::Timeout => EventType::Timeout,
        }));
    }
    out.push(match step {
        Step::Complete => Entry::bare(EventType::Completed),
        Step::Requeue { run_at, error: Some(error), .. } => {
            Entry::with(EventType::RetryScheduled, format!("{error} (next attempt at {run_at})"))
        }
        Step::Requeue { run_at, error: None, .. } => Entry::with(EventType::Snoozed, format!("until {run_at}")),
        Step::Finish { state: JobState::Cancelled, .. } => Entry::bare(EventType::Cancelled),
        Step::Finish { error, .. } => Entry { kind: EventType::Failed, message: error.clone().map(clip) },
    });
    out
}

/// The events a worker's report writes: as [`for_step`], except that a
/// snooze asking for no delay is a worker handing its job back unfinished.
pub fn for_report(step: &Step, outcome: &Outcome) -> Vec<Entry> {
    match outcome {
        Outcome::Snooze { delay_ms: 0 } => vec![Entry::with(EventType::Released, "given back by its worker")],
        _ => for_step(step, None),
    }
}

/// The event a save writes: progress wins over a checkpoint saved with it.
pub fn for_save(progress: Option<&serde_json::Value>, checkpoint: bool) -> Option<Entry> {
    match (progress, checkpoint) {
        (Some(p), _) => Some(Entry::with(EventType::Progress, p.to_string())),
        (None, true) => Some(Entry::bare(EventType::Checkpoint)),
        (None, false) => None,
    }
}

/// Appends `event` to `events` under the timeline's rules: a coalescing
/// event replaces one of its type right before it, and past [`MAX_EVENTS`]
/// the oldest events after the first give way.
pub fn push(events: &mut Vec<JobEvent>, event: JobEvent) {
    push_by(events, event, |e| Some(e.kind.as_str()));
}

/// [`push`] for any representation whose type `type_of` reads.
pub fn push_by<T>(events: &mut Vec<T>, event: T, type_of: impl Fn(&T) -> Option<&str>) {
    let kind = type_of(&event).map(str::to_owned);
    let coalesces = matches!(kind.as_deref(), Some("progress" | "checkpoint"));
    if coalesces && events.last().is_some_and(|l| type_of(l) == kind.as_deref()) {
        events.pop();
    }
    if events.len() >= MAX_EVENTS {
        events.remove(1);
    }
    events.push(event);
}

/// [`push`] on the stored JSON text: what a backend's `kyu_event_push(events,
/// at, type, attempt, worker, message)` does. A null `kind` appends nothing,
/// so one statement can serve rows with and without an event.
pub fn push_json(
    events: &str,
    at: &str,
    kind: Option<&str>,
    attempt: Option<i64>,
    worker: Option<&str>,
    message: Option<&str>,
) -> Result<String, serde_json::Error> {
    let Some(kind) = kind else { return Ok(events.to_owned()) };
    let mut list: Vec<serde_json::Value> = serde_json::from_str(events)?;
    let event = serde_json::json!({"at": at, "type": kind, "attempt": attempt, "worker": worker, "message": message});
    push_by(&mut list, event, |e| e.get("type").and_then(|t| t.as_str()));
    serde_json::to_string(&list)
}

/// A new job's timeline: enqueued, and failed at once if a dependency
/// already broke (the message says which).
pub fn at_insert(now: Millis, state: JobState, run_at: Millis, pending: i64, error: Option<&str>) -> Vec<JobEvent> {
    let first = enqueued(state, run_at, pending);
    let mut out = vec![JobEvent { at: now, kind: first.kind, attempt: None, worker: None, message: first.message }];
    if state.is_terminal() {
        let kind = if state == JobState::Cancelled { EventType::Cancelled } else { EventType::Failed };
        out.push(JobEvent { at: now, kind, attempt: None, worker: None, message: error.map(|e| clip(e.to_owned())) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventType, at: i64) -> JobEvent {
        JobEvent { at: Millis(at), kind, attempt: None, worker: None, message: None }
    }

    #[test]
    fn progress_coalesces_and_the_bound_keeps_the_first() {
        let mut events = vec![ev(EventType::Enqueued, 0)];
        for i in 0..10 {
            push(&mut events, ev(EventType::Progress, i));
        }
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].at, Millis(9));
        for i in 0..1000 {
            push(&mut events, ev(if i % 2 == 0 { EventType::Claimed } else { EventType::Snoozed }, 100 + i));
        }
        assert_eq!(events.len(), MAX_EVENTS);
        assert_eq!(events[0].kind, EventType::Enqueued);
        assert_eq!(events.last().unwrap().at, Millis(1099));
    }

    #[test]
    fn json_push_follows_the_same_rule() {
        let mut s = "[]".to_owned();
        for i in 0..5 {
            s = push_json(&s, &Millis(i).to_rfc3339(), Some("progress"), Some(1), None, Some("p")).unwrap();
        }
        assert_eq!(push_json(&s, "x", None, None, None, None).unwrap(), s);
        let back: Vec<JobEvent> = serde_json::from_str(&s).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].at, Millis(4));
    }

    #[test]
    fn wire_names_match_serde() {
        for t in [EventType::RetryScheduled, EventType::CancelRequested, EventType::LeaseExpired] {
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!(t.as_str()));
        }
    }
}
