//! What a transaction did, counted once: per-minute statistics for
//! `/v1/stats`, the counters and histograms of `/metrics`, and the changes
//! the console's live views follow.
//!
//! A backend records a [`Happening`] for each job it enqueues, starts or
//! ends, in the same code that writes the change. After the commit the
//! happenings go to whoever observes the store, and their
//! [`Tally::minutes`] to the process's [`PendingStats`], which the backend
//! writes at most a second later (or in the caller's own transaction, when
//! kyu writes inside one).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::transition::{Lost, Step};
use crate::{JobId, JobState, Millis, QueueName};

/// How an attempt ended, as `kyu_job_attempts_total{outcome}` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttemptOutcome {
    /// It completed.
    Completed,
    /// It failed and another attempt is scheduled.
    Retry,
    /// It failed for good.
    Failed,
    /// It ended cancelled.
    Cancelled,
    /// It was put back without spending the attempt.
    Snoozed,
    /// Its lease ran out.
    LeaseExpired,
    /// It ran past its time limit.
    Timeout,
}

impl AttemptOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Snoozed => "snoozed",
            AttemptOutcome::LeaseExpired => "lease_expired",
            AttemptOutcome::Timeout => "timeout",
        }
    }

    /// Every outcome, for exposing zeroes.
    pub const ALL: [AttemptOutcome; 7] = [
        AttemptOutcome::Completed,
        AttemptOutcome::Retry,
        AttemptOutcome::Failed,
        AttemptOutcome::Cancelled,
        AttemptOutcome::Snoozed,
        AttemptOutcome::LeaseExpired,
        AttemptOutcome::Timeout,
    ];
}

/// The outcome of an attempt that ended with `step`, lost for `lost` if it was.
pub fn outcome(step: &Step, lost: Option<Lost>) -> AttemptOutcome {
    match (lost, step) {
        (Some(Lost::LeaseExpired), _) => AttemptOutcome::LeaseExpired,
        (Some(Lost::Timeout), _) => AttemptOutcome::Timeout,
        (None, Step::Complete) => AttemptOutcome::Completed,
        (None, Step::Requeue { error: Some(_), .. }) => AttemptOutcome::Retry,
        (None, Step::Requeue { error: None, .. }) => AttemptOutcome::Snoozed,
        (None, Step::Finish { state: JobState::Cancelled, .. }) => AttemptOutcome::Cancelled,
        (None, Step::Finish { .. }) => AttemptOutcome::Failed,
    }
}

/// One job changing, as a backend saw it in a committed transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Happening {
    /// Inserted.
    Enqueued {
        /// The job.
        id: JobId,
        /// Its queue.
        queue: QueueName,
        /// Its kind.
        kind: String,
        /// Its state after the insert.
        state: JobState,
    },
    /// Claimed: an attempt started after waiting `wait_ms` since it was ready.
    Started {
        /// The job.
        id: JobId,
        /// Its queue.
        queue: QueueName,
        /// Its kind.
        kind: String,
        /// The attempt that started.
        attempt: i32,
        /// From ready (`run_at`) to claimed.
        wait_ms: i64,
    },
    /// An attempt ended after running `run_ms`.
    Ended {
        /// The job.
        id: JobId,
        /// Its queue.
        queue: QueueName,
        /// Its kind.
        kind: String,
        /// The attempt that ended.
        attempt: i32,
        /// How.
        outcome: AttemptOutcome,
        /// The job's state afterwards.
        state: JobState,
        /// From claimed to ended.
        run_ms: i64,
    },
    /// Any other change of state (an operator's cancel or retry, a job
    /// released by its dependencies, waiting for children).
    Changed {
        /// The job.
        id: JobId,
        /// Its queue.
        queue: QueueName,
        /// Its kind.
        kind: String,
        /// Its new state.
        state: JobState,
        /// Its attempt number.
        attempt: i32,
    },
}

/// A change as the live views see it (`GET /v1/events/stream`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The job.
    pub id: JobId,
    /// Its queue.
    pub queue: QueueName,
    /// Its kind.
    pub kind: String,
    /// Its new state.
    pub state: JobState,
    /// Its attempt number.
    pub attempt: i32,
    /// When.
    pub at: Millis,
}

/// A running job as a backend reads it when its attempt ends.
#[derive(Clone, Copy, Debug)]
pub struct Running<'a> {
    /// The job.
    pub id: &'a JobId,
    /// Its queue, as stored.
    pub queue: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// The attempt that ends.
    pub attempt: i32,
    /// When that attempt was claimed.
    pub started_at: Option<Millis>,
}

impl Happening {
    /// `job`'s attempt ended at `now` with `outcome`, leaving it in `state`;
    /// its run time is counted from its claim.
    pub fn ended(job: Running<'_>, now: Millis, outcome: AttemptOutcome, state: JobState) -> Happening {
        Happening::Ended {
            id: job.id.clone(),
            // Stored names were validated on the way in.
            queue: QueueName::new(job.queue).unwrap_or_default(),
            kind: job.kind.to_owned(),
            attempt: job.attempt,
            outcome,
            state,
            run_ms: job.started_at.map_or(0, |s| (now.0 - s.0).max(0)),
        }
    }

    /// The change this stands for, at `at`.
    pub fn change(&self, at: Millis) -> Change {
        let (id, queue, kind, state, attempt) = match self {
            Happening::Enqueued { id, queue, kind, state } => (id, queue, kind, *state, 0),
            Happening::Started { id, queue, kind, attempt, .. } => (id, queue, kind, JobState::Running, *attempt),
            Happening::Ended { id, queue, kind, attempt, state, .. } => (id, queue, kind, *state, *attempt),
            Happening::Changed { id, queue, kind, state, attempt } => (id, queue, kind, *state, *attempt),
        };
        Change { id: id.clone(), queue: queue.clone(), kind: kind.clone(), state, attempt, at }
    }
}

/// Upper bounds (ms) of the latency buckets kept per minute; one more
/// bucket holds everything slower. Roughly 1-2.5-5 per decade, from 1 ms
/// to an hour: percentiles within a bucket's width, in a fixed small row.
pub const BUCKETS_MS: [i64; 20] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000,
    3_600_000,
];

/// Counts of latencies per bucket of [`BUCKETS_MS`] (plus the overflow).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Histogram(pub Vec<i64>);

impl Histogram {
    /// Counts one latency.
    pub fn add(&mut self, ms: i64) {
        if self.0.len() != BUCKETS_MS.len() + 1 {
            self.0.resize(BUCKETS_MS.len() + 1, 0);
        }
        let i = BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(BUCKETS_MS.len());
        self.0[i] += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    /// How many latencies it holds.
    pub fn count(&self) -> i64 {
        self.0.iter().sum()
    }

    /// The `q`-quantile (0..1), interpolated within its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<i64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0);
        let mut seen = 0i64;
        for (i, &n) in self.0.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let low = if i == 0 { 0 } else { BUCKETS_MS[i - 1] };
                let high = BUCKETS_MS.get(i).copied().unwrap_or(low * 2);
                let within = (rank - seen as f64) / n as f64;
                return Some(low + ((high - low) as f64 * within).round() as i64);
            }
            seen += n;
        }
        Some(*BUCKETS_MS.last().expect("buckets"))
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }
}

/// One queue's minute, as kept in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Minute {
    /// Jobs inserted.
    pub enqueued: i64,
    /// Attempts that completed.
    pub completed: i64,
    /// Jobs that failed for good.
    pub failed: i64,
    /// Failed attempts that were retried (lost ones included).
    pub retried: i64,
    /// Wait from ready to started.
    pub wait: Histogram,
    /// Run time of ended attempts.
    pub run: Histogram,
}

impl Minute {
    /// Adds another count of the same minute and queue.
    pub fn merge(&mut self, o: &Minute) {
        self.enqueued += o.enqueued;
        self.completed += o.completed;
        self.failed += o.failed;
        self.retried += o.retried;
        self.wait.merge(&o.wait);
        self.run.merge(&o.run);
    }

    /// As `/v1/stats` shows it.
    pub fn point(&self, minute: Millis, queue: &str) -> StatsPoint {
        StatsPoint {
            minute,
            queue: queue.to_owned(),
            enqueued: self.enqueued,
            completed: self.completed,
            failed: self.failed,
            retried: self.retried,
            wait_ms_p50: self.wait.quantile(0.5),
            wait_ms_p95: self.wait.quantile(0.95),
            run_ms_p50: self.run.quantile(0.5),
            run_ms_p95: self.run.quantile(0.95),
        }
    }
}

/// One point of `/v1/stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsPoint {
    /// The minute's start.
    pub minute: Millis,
    /// The queue.
    pub queue: String,
    /// Jobs inserted.
    pub enqueued: i64,
    /// Attempts completed.
    pub completed: i64,
    /// Jobs failed for good.
    pub failed: i64,
    /// Attempts retried.
    pub retried: i64,
    /// Median wait from ready to started.
    pub wait_ms_p50: Option<i64>,
    /// 95th percentile wait.
    pub wait_ms_p95: Option<i64>,
    /// Median run time.
    pub run_ms_p50: Option<i64>,
    /// 95th percentile run time.
    pub run_ms_p95: Option<i64>,
}

/// How long per-minute statistics are kept (DESIGN.md: at least 24 h).
pub const STATS_KEEP_MS: i64 = 48 * 3_600_000;

/// The start of `at`'s minute.
pub fn minute_of(at: Millis) -> Millis {
    Millis(at.0.div_euclid(60_000) * 60_000)
}

/// What one transaction did.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Every change, in order.
    pub happenings: Vec<Happening>,
}

impl Tally {
    /// Records a change.
    pub fn add(&mut self, h: Happening) {
        self.happenings.push(h);
    }

    /// Takes another transaction's (or savepoint's) changes.
    pub fn append(&mut self, other: &mut Tally) {
        self.happenings.append(&mut other.happenings);
    }

    /// Whether nothing happened.
    pub fn is_empty(&self) -> bool {
        self.happenings.is_empty()
    }

    /// The per-minute rows to add, by (minute, queue), for changes made at `now`.
    pub fn minutes(&self, now: Millis) -> Minutes {
        let mut out: Minutes = BTreeMap::new();
        let minute = minute_of(now);
        for h in &self.happenings {
            let (queue, f): (&QueueName, &dyn Fn(&mut Minute)) = match h {
                Happening::Enqueued { queue, .. } => (queue, &|m: &mut Minute| m.enqueued += 1),
                Happening::Started { queue, wait_ms, .. } => (queue, &|m: &mut Minute| m.wait.add(*wait_ms)),
                Happening::Ended { queue, outcome, run_ms, .. } => (queue, &|m: &mut Minute| {
                    m.run.add(*run_ms);
                    match outcome {
                        AttemptOutcome::Completed => m.completed += 1,
                        AttemptOutcome::Failed => m.failed += 1,
                        AttemptOutcome::Retry => m.retried += 1,
                        AttemptOutcome::LeaseExpired | AttemptOutcome::Timeout => {}
                        AttemptOutcome::Cancelled | AttemptOutcome::Snoozed => {}
                    }
                }),
                Happening::Changed { .. } => continue,
            };
            f(out.entry((minute, queue.as_str().to_owned())).or_default());
        }
        // A lost attempt counts as retried or failed by where the job went.
        for h in &self.happenings {
            if let Happening::Ended { queue, outcome: AttemptOutcome::LeaseExpired | AttemptOutcome::Timeout, state, .. } = h {
                let m = out.entry((minute, queue.as_str().to_owned())).or_default();
                match state {
                    JobState::Failed => m.failed += 1,
                    JobState::Queued | JobState::Scheduled => m.retried += 1,
                    _ => {}
                }
            }
        }
        out
    }
}

/// Per-minute rows by (minute, queue).
pub type Minutes = BTreeMap<(Millis, String), Minute>;

/// Statistics a process has committed jobs for but not written yet.
///
/// Writing each transaction's minutes in that transaction made every hot
/// commit touch one more page (SQLite) or insert one more row (PostgreSQL):
/// about a tenth of W1 on SQLite. Rows are additive, so a process gathers
/// them and writes them once a [`PendingStats::FLUSH_AFTER`] has passed; its
/// own reads add what is pending, so they stay exact, and other processes see
/// them at most that late. A crash loses at most that much of the
/// statistics, never counts or jobs.
#[derive(Debug, Default)]
pub struct PendingStats {
    rows: Minutes,
    /// When the oldest pending row was added.
    since: Option<Instant>,
}

impl PendingStats {
    /// How long committed statistics may wait before they are written.
    pub const FLUSH_AFTER: Duration = Duration::from_secs(1);

    /// Adds a committed transaction's minutes.
    pub fn add(&mut self, rows: Minutes) {
        if rows.is_empty() {
            return;
        }
        self.since.get_or_insert_with(Instant::now);
        merge_minutes(&mut self.rows, rows);
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// How long until the pending rows are due; `None` when nothing is pending.
    pub fn due_in(&self) -> Option<Duration> {
        self.since.map(|s| Self::FLUSH_AFTER.saturating_sub(s.elapsed()))
    }

    /// Whether the pending rows should be written now.
    pub fn is_due(&self) -> bool {
        self.due_in().is_some_and(|d| d.is_zero())
    }

    /// Takes the pending rows out, to write; give them back with
    /// [`PendingStats::add`] if the write fails.
    pub fn take(&mut self) -> Minutes {
        self.since = None;
        std::mem::take(&mut self.rows)
    }

    /// Adds the pending rows a read of the store asked for (minutes from
    /// `since`'s, of `queue` if given) to what it read.
    pub fn add_to(&self, read: &mut Minutes, since: Millis, queue: Option<&str>) {
        let from = minute_of(since);
        for ((minute, q), m) in &self.rows {
            if *minute >= from && queue.is_none_or(|want| want == q) {
                read.entry((*minute, q.clone())).or_default().merge(m);
            }
        }
    }
}

/// Adds `add`'s rows to `into`'s.
pub fn merge_minutes(into: &mut Minutes, add: Minutes) {
    for (k, m) in add {
        into.entry(k).or_default().merge(&m);
    }
}

/// The points of `/v1/stats` for rows read (and pending) by (minute, queue).
pub fn points(rows: Minutes) -> Vec<StatsPoint> {
    rows.into_iter().map(|((minute, queue), row)| row.point(minute, &queue)).collect()
}

/// A worker as `GET /v1/workers` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The name it claims with.
    pub name: String,
    /// The machine it runs on, if it said.
    pub host: Option<String>,
    /// Its process id, if it said.
    pub pid: Option<i64>,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// How many jobs it runs at once, if it said.
    pub concurrency: Option<i64>,
    /// What it runs: `kyu work`'s command, a Rust worker's kinds, `http`.
    pub runs: Option<String>,
    /// The jobs it holds now.
    pub running: Vec<JobId>,
    /// When it was first seen.
    pub started_at: Millis,
    /// When it was last seen.
    pub last_seen_at: Millis,
}

/// A worker not seen for this long is gone from `GET /v1/workers` (and the
/// `kyu_workers` gauge); a day later its row is deleted.
pub const WORKER_GONE_MS: i64 = 3 * 60_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_right_bucket() {
        let mut h = Histogram::default();
        for ms in [3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 40, 900] {
            h.add(ms);
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((2..=5).contains(&p50), "{p50}");
        let p95 = h.quantile(0.95).unwrap();
        assert!((500..=1000).contains(&p95), "{p95}");
        assert_eq!(Histogram::default().quantile(0.5), None);
        let mut slow = Histogram::default();
        slow.add(10 * 3_600_000);
        assert!(slow.quantile(0.5).unwrap() >= 3_600_000);
    }

    #[test]
    fn minutes_count_by_queue_and_lost_attempts_by_where_they_went() {
        let q = QueueName::new("q").unwrap();
        let id = JobId::new("a").unwrap();
        let mut t = Tally::default();
        t.add(Happening::Enqueued { id: id.clone(), queue: q.clone(), kind: "k".into(), state: JobState::Queued });
        t.add(Happening::Started { id: id.clone(), queue: q.clone(), kind: "k".into(), attempt: 1, wait_ms: 5 });
        t.add(Happening::Ended {
            id: id.clone(),
            queue: q.clone(),
            kind: "k".into(),
            attempt: 1,
            outcome: AttemptOutcome::LeaseExpired,
            state: JobState::Queued,
            run_ms: 30_000,
        });
        let m = t.minutes(Millis(61_000));
        let row = &m[&(Millis(60_000), "q".to_owned())];
        assert_eq!((row.enqueued, row.completed, row.failed, row.retried), (1, 0, 0, 1));
        assert_eq!(row.wait.count(), 1);
    }

    #[test]
    fn pending_stats_add_up_and_reads_see_them() {
        let q = QueueName::new("q").unwrap();
        let mut t = Tally::default();
        t.add(Happening::Enqueued { id: JobId::new("a").unwrap(), queue: q, kind: "k".into(), state: JobState::Queued });
        let mut p = PendingStats::default();
        assert!(p.due_in().is_none() && !p.is_due());
        p.add(t.minutes(Millis(61_000)));
        p.add(t.minutes(Millis(62_000)));
        p.add(t.minutes(Millis(121_000)));
        assert!(p.due_in().is_some_and(|d| d <= PendingStats::FLUSH_AFTER));
        let mut read = Minutes::new();
        read.insert((Millis(60_000), "q".into()), Minute { enqueued: 5, ..Minute::default() });
        p.add_to(&mut read, Millis(60_500), Some("q"));
        assert_eq!(read[&(Millis(60_000), "q".to_owned())].enqueued, 7);
        assert_eq!(read[&(Millis(120_000), "q".to_owned())].enqueued, 1);
        p.add_to(&mut read, Millis(0), Some("other"));
        assert_eq!(read.len(), 2, "another queue's read adds nothing");
        let taken = p.take();
        assert_eq!(taken.len(), 2);
        assert!(p.is_empty() && p.due_in().is_none());
        assert_eq!(points(taken)[0].enqueued, 2);
    }
}
