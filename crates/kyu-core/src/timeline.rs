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

/// How a timeline is stored: a JSON array of `[at_ms, type, attempt,
/// worker, message]`, compact because it rides in every write of the job's
/// row. The `enqueued` event of a plain job is not stored: it is the job's
/// `created_at`, added when the timeline is read ([`decode`]).
type Stored = (i64, String, Option<i64>, Option<String>, Option<String>);

/// A stored array shorter than this cannot hold [`MAX_EVENTS`] events (the
/// shortest stored event, `[0,"x",null,null,null]`, is 22 bytes), so a
/// push that does not coalesce may append without reading it.
const SHORT_ENOUGH: usize = MAX_EVENTS * 20;

/// [`push`] on the stored JSON text: what a backend's `kyu_event_push(events,
/// at, type, attempt, worker, message)` does (`at` as RFC 3339). A null
/// `kind` appends nothing, so one statement can serve rows with and without
/// an event.
pub fn push_json(
    events: &str,
    at: Millis,
    kind: Option<&str>,
    attempt: Option<i64>,
    worker: Option<&str>,
    message: Option<&str>,
) -> Result<String, serde_json::Error> {
    let Some(kind) = kind else { return Ok(events.to_owned()) };
    let event = serde_json::to_string(&(at.0, kind, attempt, worker, message))?;
    let coalesces = matches!(kind, "progress" | "checkpoint");
    let trimmed = events.trim();
    if !coalesces && trimmed.len() < SHORT_ENOUGH && trimmed.ends_with(']') {
        // Appending cannot reach the bound: no need to read the array.
        let body = trimmed[..trimmed.len() - 1].trim_end();
        let sep = if body.trim_start() == "[" { "" } else { "," };
        return Ok(format!("{body}{sep}{event}]"));
    }
    let mut list: Vec<serde_json::Value> = serde_json::from_str(events)?;
    push_by(&mut list, serde_json::from_str(&event)?, |e| e.get(1).and_then(|t| t.as_str()));
    serde_json::to_string(&list)
}

/// What a job's row says of it, from which the events every job has are
/// read instead of stored: its enqueue (`created_at`), the claim of its
/// current or last run (`started_at`, `attempt`, `worker`, while it is
/// running or once it completed) and its completion (`finished_at`). The
/// hot path (claim, complete) then writes no timeline bytes at all; a run
/// that ends any other way stores its claim first ([`archive_claim_json`]).
#[derive(Clone, Debug)]
pub struct Row {
    /// The job's state.
    pub state: JobState,
    /// When it was enqueued.
    pub created_at: Millis,
    /// When its current or last run was claimed.
    pub started_at: Option<Millis>,
    /// When it reached a terminal state.
    pub finished_at: Option<Millis>,
    /// Its attempt number.
    pub attempt: i32,
    /// The worker of its current or last run.
    pub worker: Option<String>,
}

impl Row {
    /// The claim of the run the row describes, if it is not stored.
    fn claim(&self) -> Option<JobEvent> {
        let at = self.started_at?;
        matches!(self.state, JobState::Running | JobState::Completed).then(|| JobEvent {
            at,
            kind: EventType::Claimed,
            attempt: Some(self.attempt),
            worker: self.worker.clone(),
            message: None,
        })
    }
}

/// A stored timeline as the API shows it, with the events `row` implies:
/// the enqueue first, the current run's claim in its place in time, the
/// completion last.
pub fn decode(stored: &str, row: &Row) -> Result<Vec<JobEvent>, serde_json::Error> {
    let raw: Vec<Stored> = serde_json::from_str(stored)?;
    let mut out = Vec::with_capacity(raw.len() + 3);
    for (at, kind, attempt, worker, message) in raw {
        let kind: EventType = serde_json::from_value(serde_json::Value::String(kind))?;
        out.push(JobEvent { at: Millis(at), kind, attempt: attempt.map(|a| a as i32), worker, message });
    }
    if out.first().is_none_or(|e| e.kind != EventType::Enqueued) {
        out.insert(0, JobEvent { at: row.created_at, kind: EventType::Enqueued, attempt: None, worker: None, message: None });
    }
    if let Some(claim) = row.claim() {
        let at = claim_position(&out, claim.at, Some(i64::from(row.attempt)), |e| {
            (e.at.0, Some(e.kind.as_str()), e.attempt.map(i64::from))
        });
        out.insert(at, claim);
    }
    if row.state == JobState::Completed {
        let at = row.finished_at.unwrap_or(row.created_at);
        out.push(JobEvent { at, kind: EventType::Completed, attempt: Some(row.attempt), worker: row.worker.clone(), message: None });
    }
    Ok(out)
}

/// What a backend's `kyu_event_archive(events, state, started_at, attempt,
/// worker)` does in a statement that ends a run other than by completing
/// it: a running job's claim, implied until now, is stored (its row's
/// `started_at` and `worker` are about to describe something else).
pub fn archive_claim_json(
    events: &str,
    state: &str,
    started_at: Option<Millis>,
    attempt: Option<i64>,
    worker: Option<&str>,
) -> Result<String, serde_json::Error> {
    let Some(started_at) = started_at.filter(|_| state == JobState::Running.as_str()) else { return Ok(events.to_owned()) };
    let mut list: Vec<serde_json::Value> = serde_json::from_str(events)?;
    let at = claim_position(&list, started_at, attempt, |e| (e[0].as_i64().unwrap_or(0), e[1].as_str(), e[2].as_i64()));
    list.insert(at, serde_json::json!([started_at.0, EventType::Claimed.as_str(), attempt, worker, null]));
    if list.len() > MAX_EVENTS {
        list.remove(1);
    }
    serde_json::to_string(&list)
}

/// Where a run's claim goes in a timeline: before the events the run
/// itself wrote (progress, checkpoint, a cancel request: of its attempt, at
/// or after its start), which are the last ones; after everything else,
/// even at the same millisecond.
fn claim_position<T>(events: &[T], started_at: Millis, attempt: Option<i64>, read: impl Fn(&T) -> (i64, Option<&str>, Option<i64>)) -> usize {
    let mut at = events.len();
    while at > 0 {
        let (t, kind, a) = read(&events[at - 1]);
        let in_run = matches!(kind, Some("progress" | "checkpoint" | "cancel_requested")) && a == attempt && t >= started_at.0;
        if !in_run {
            break;
        }
        at -= 1;
    }
    at
}

/// What a new job's timeline holds when stored: nothing for a plain job
/// (its enqueue is its `created_at`); the `enqueued` event with why it
/// waits, and `failed` if a dependency already broke, otherwise.
pub fn at_insert(now: Millis, state: JobState, run_at: Millis, pending: i64, error: Option<&str>) -> Option<String> {
    let first = enqueued(state, run_at, pending);
    if first.message.is_none() && !state.is_terminal() {
        return None;
    }
    let mut out: Vec<Stored> = vec![(now.0, first.kind.as_str().to_owned(), None, None, first.message)];
    if state.is_terminal() {
        let kind = if state == JobState::Cancelled { EventType::Cancelled } else { EventType::Failed };
        out.push((now.0, kind.as_str().to_owned(), None, None, error.map(|e| clip(e.to_owned()))));
    }
    Some(serde_json::to_string(&out).expect("events serialise"))
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

    fn queued(created_at: Millis) -> Row {
        Row { state: JobState::Queued, created_at, started_at: None, finished_at: None, attempt: 0, worker: None }
    }

    #[test]
    fn the_row_implies_enqueue_current_claim_and_completion() {
        let w = Some("w".to_owned());
        // Attempt 1 failed (its claim stored when the run ended), attempt 2 completed.
        let mut stored = archive_claim_json("[]", "running", Some(Millis(10)), Some(1), Some("w")).unwrap();
        stored = push_json(&stored, Millis(50), Some("retry_scheduled"), Some(1), Some("w"), Some("boom")).unwrap();
        assert_eq!(archive_claim_json(&stored, "queued", Some(Millis(10)), Some(1), Some("w")).unwrap(), stored, "only a run ends");
        stored = push_json(&stored, Millis(120), Some("progress"), Some(2), Some("w"), None).unwrap();
        let row = Row { state: JobState::Completed, created_at: Millis(1), started_at: Some(Millis(100)), finished_at: Some(Millis(200)), attempt: 2, worker: w };
        let got: Vec<(i64, EventType, Option<i32>)> = decode(&stored, &row).unwrap().iter().map(|e| (e.at.0, e.kind, e.attempt)).collect();
        assert_eq!(
            got,
            vec![
                (1, EventType::Enqueued, None),
                (10, EventType::Claimed, Some(1)),
                (50, EventType::RetryScheduled, Some(1)),
                (100, EventType::Claimed, Some(2)),
                (120, EventType::Progress, Some(2)),
                (200, EventType::Completed, Some(2)),
            ]
        );
        // A failed job's last claim was stored when its run ended: not implied twice.
        let failed = Row { state: JobState::Failed, ..row };
        assert_eq!(decode(&stored, &failed).unwrap().iter().filter(|e| e.kind == EventType::Claimed).count(), 1);
    }

    #[test]
    fn stored_push_follows_the_same_rule() {
        let mut s = "[]".to_owned();
        for i in 0..5 {
            s = push_json(&s, Millis(i), Some("progress"), Some(1), None, Some("p")).unwrap();
        }
        assert_eq!(push_json(&s, Millis(9), None, None, None, None).unwrap(), s);
        let back = decode(&s, &queued(Millis(0))).unwrap();
        assert_eq!(back.len(), 2, "the implicit enqueue, then one progress");
        assert_eq!((back[0].kind, back[1].at), (EventType::Enqueued, Millis(4)));
        // The quick append and the full rule agree, up to the bound.
        let mut fast = "[]".to_owned();
        let mut typed: Vec<JobEvent> = Vec::new();
        for i in 0..(MAX_EVENTS as i64 + 50) {
            let kind = if i % 2 == 0 { EventType::Claimed } else { EventType::Snoozed };
            fast = push_json(&fast, Millis(i), Some(kind.as_str()), Some(i), Some("w"), None).unwrap();
            push(&mut typed, JobEvent { at: Millis(i), kind, attempt: Some(i as i32), worker: Some("w".into()), message: None });
        }
        let decoded = decode(&fast, &queued(Millis(0))).unwrap();
        assert_eq!(&decoded[1..], &typed[..], "stored events after the implicit enqueue");
        // PostgreSQL's jsonb prints with spaces; the quick append copes.
        let spaced = push_json("[[1, \"claimed\", 1, \"w\", null]]", Millis(2), Some("completed"), Some(1), None, None).unwrap();
        assert_eq!(decode(&spaced, &queued(Millis(0))).unwrap().len(), 3);
        assert_eq!(at_insert(Millis(0), JobState::Queued, Millis(0), 0, None), None, "a plain job stores nothing");
        let waiting = at_insert(Millis(0), JobState::Waiting, Millis(0), 2, None).unwrap();
        assert_eq!(decode(&waiting, &queued(Millis(5))).unwrap()[0].message.as_deref(), Some("waiting for 2 dependencies"));
    }

    #[test]
    fn wire_names_match_serde() {
        for t in [EventType::RetryScheduled, EventType::CancelRequested, EventType::LeaseExpired] {
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!(t.as_str()));
        }
    }
}
