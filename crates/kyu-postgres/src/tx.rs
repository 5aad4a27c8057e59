//! What a write operation sees: a client inside an open transaction (the
//! store's own, or a caller's), the transaction's time, and events to send
//! with NOTIFY before it commits.

use std::sync::Mutex;
use std::time::SystemTime;

use kyu_core::Millis;
use kyu_core::tally::{Happening, Minutes, PendingStats, Tally};
use kyu_store::{Observers, StoreError, StoreEvent};
use crate::conn::Conn;

use crate::error::PgResultExt;
use crate::read::ts;

/// Retention defaults, the timeout grace and the notification channel, fixed at open.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub retention: kyu_core::transition::Retention,
    pub timeout_grace_ms: i64,
    pub channel: String,
    pub observers: Observers,
    /// This process's statistics not written yet.
    pub pending: std::sync::Arc<Pending>,
}

/// Statistics of the store's own committed transactions, written at most
/// [`PendingStats::FLUSH_AFTER`] later in one insert (see
/// [`kyu_core::tally::PendingStats`] for why).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub rows: Mutex<PendingStats>,
    /// Held while pending rows are written, and by statistics reads, so a
    /// read never counts rows twice (pending and written) or misses them.
    pub writing: tokio::sync::Mutex<()>,
}

pub(crate) struct Tx<'a, C: Conn> {
    pub c: &'a C,
    pub now: Millis,
    pub now_ts: SystemTime,
    pub now_str: String,
    pub settings: &'a Settings,
    /// Behind a lock so independent statements of one transaction can run
    /// pipelined (several futures sharing `&Tx`).
    events: Mutex<Vec<StoreEvent>>,
    /// What the transaction did, for statistics and observers.
    tally: Mutex<Tally>,
    /// Count deltas of the transitions every job takes (claim, completion),
    /// per queue and state, written with the statistics (see migration 8).
    counted: Mutex<std::collections::BTreeMap<(String, &'static str), i64>>,
    /// The store's own transaction, not a caller's: its statistics go to
    /// [`Pending`] after the commit instead of into the transaction (a
    /// caller's may roll back after kyu is done with it, so it writes them
    /// itself), and kyu can act once it has committed (see `settle.rs`).
    pub own: bool,
    /// Waiting jobs whose dependencies this transaction counted without
    /// releasing them, to check again once it commits (see `settle.rs`).
    recheck: Mutex<Vec<i64>>,
}

impl<'a, C: Conn> Tx<'a, C> {
    pub fn new(c: &'a C, now: Millis, settings: &'a Settings) -> Self {
        Tx {
            c,
            now,
            now_ts: ts(now),
            now_str: now.to_rfc3339(),
            settings,
            events: Mutex::new(Vec::new()),
            tally: Mutex::new(Tally::default()),
            counted: Mutex::new(std::collections::BTreeMap::new()),
            own: false,
            recheck: Mutex::new(Vec::new()),
        }
    }

    /// A [`Tx`] for the store's own transaction (see [`Tx::own`]).
    pub fn own(c: &'a C, now: Millis, settings: &'a Settings) -> Self {
        Tx { own: true, ..Tx::new(c, now, settings) }
    }

    /// Records a change, for statistics and observers.
    pub fn happened(&self, h: Happening) {
        self.tally.lock().expect("tally").add(h);
    }

    /// What the transaction did, taken out to tell observers after the commit.
    pub fn take_tally(&self) -> (Millis, Tally) {
        (self.now, std::mem::take(&mut *self.tally.lock().expect("tally")))
    }

    /// After the commit: tells this process's observers what changed.
    pub fn tell(&self) {
        let tally = std::mem::take(&mut *self.tally.lock().expect("tally"));
        self.settings.observers.tell(self.now, &tally.happenings);
    }

    /// Counts `n` jobs of `queue` moving from `from` to `to`, for the queue
    /// counts: only claims and completions do this; a row trigger counts
    /// every other change (migration 8).
    pub fn moved(&self, queue: &str, from: &'static str, to: &'static str, n: i64) {
        let mut c = self.counted.lock().expect("counted");
        *c.entry((queue.to_owned(), from)).or_default() -= n;
        *c.entry((queue.to_owned(), to)).or_default() += n;
    }

    /// Checks waiting job `seq` again after the commit: its count may be
    /// zero once transactions in flight with this one have committed too.
    pub fn recheck_after_commit(&self, seq: i64) {
        self.recheck.lock().expect("recheck").push(seq);
    }

    /// The waiting jobs to check again after the commit.
    pub fn take_recheck(&self) -> Vec<i64> {
        std::mem::take(&mut *self.recheck.lock().expect("recheck"))
    }

    /// Records an event to send when the transaction commits.
    pub fn event(&self, e: StoreEvent) {
        self.events.lock().expect("events").push(e);
    }

    /// Sends this transaction's events with NOTIFY; PostgreSQL delivers them
    /// when (and only if) the transaction commits. Each distinct payload is
    /// sent once, and finished ids are packed many to a notification, since
    /// every NOTIFY takes a global lock at commit.
    ///
    /// In the same statement, the transaction's claims' and completions'
    /// count deltas are appended to `kyu_queue_count_deltas`, and (unless
    /// [`Tx::own`]) its per-minute statistics to `kyu_stats_deltas`,
    /// so all cost one round trip. It is the transaction's last statement
    /// ([`crate::conn::Conn::execute_last`]): the store's own transactions
    /// commit with it.
    pub async fn notify(&self) -> Result<(), StoreError> {
        let payloads = payloads(std::mem::take(&mut *self.events.lock().expect("events")));
        let minutes = if self.own { Minutes::new() } else { self.tally.lock().expect("tally").minutes(self.now) };
        let counted = std::mem::take(&mut *self.counted.lock().expect("counted"));
        if payloads.is_empty() && minutes.is_empty() && counted.is_empty() {
            return Ok(());
        }
        let (mut cq, mut cs, mut cn) = (Vec::new(), Vec::new(), Vec::new());
        for ((queue, state), n) in counted {
            if n != 0 {
                cq.push(queue);
                cs.push(state);
                cn.push(n);
            }
        }
        let m = MinuteArrays::of(&minutes);
        self.c
            .execute_last(
                "WITH stats AS ( \
                   INSERT INTO kyu_stats_deltas (minute, queue, enqueued, completed, failed, retried, wait_hist, run_hist) \
                   SELECT minute, queue, enqueued, completed, failed, retried, wait_hist::jsonb, run_hist::jsonb \
                   FROM unnest($3::int8[], $4::text[], $5::int8[], $6::int8[], $7::int8[], $8::int8[], $9::text[], $10::text[]) \
                     AS t(minute, queue, enqueued, completed, failed, retried, wait_hist, run_hist)), \
                 counts AS ( \
                   INSERT INTO kyu_queue_count_deltas (queue, state, n) \
                   SELECT * FROM unnest($11::text[], $12::text[], $13::int8[])) \
                 SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                &[&self.settings.channel, &payloads, &m.0, &m.1, &m.2, &m.3, &m.4, &m.5, &m.6, &m.7, &cq, &cs, &cn],
            )
            .await
            .db()?;
        Ok(())
    }
}

/// Per-minute rows as the arrays `kyu_stats_deltas` inserts are given.
pub(crate) struct MinuteArrays(
    pub Vec<i64>,
    pub Vec<String>,
    pub Vec<i64>,
    pub Vec<i64>,
    pub Vec<i64>,
    pub Vec<i64>,
    pub Vec<String>,
    pub Vec<String>,
);

impl MinuteArrays {
    pub fn of(rows: &Minutes) -> MinuteArrays {
        let mut m = MinuteArrays(Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((minute, queue), row) in rows {
            m.0.push(minute.0);
            m.1.push(queue.clone());
            m.2.push(row.enqueued);
            m.3.push(row.completed);
            m.4.push(row.failed);
            m.5.push(row.retried);
            m.6.push(serde_json::to_string(&row.wait).expect("histograms serialise"));
            m.7.push(serde_json::to_string(&row.run).expect("histograms serialise"));
        }
        m
    }
}

/// Most bytes of ids in one notification (PostgreSQL's limit is 8000).
const MAX_PAYLOAD: usize = 7000;

/// `a:QUEUE` for jobs available on a queue; `f:ID ID ...` for finished jobs.
pub(crate) fn payloads(events: Vec<StoreEvent>) -> Vec<String> {
    let mut queues: Vec<String> = Vec::new();
    let mut finished: Vec<String> = Vec::new();
    for e in events {
        match e {
            StoreEvent::JobsAvailable(q) => {
                let p = format!("a:{q}");
                if !queues.contains(&p) {
                    queues.push(p);
                }
            }
            StoreEvent::JobFinished(id) => {
                let fits = finished.last().is_some_and(|l| l.len() + 1 + id.as_str().len() <= MAX_PAYLOAD);
                if fits {
                    let last = finished.last_mut().expect("checked");
                    last.push(' ');
                    last.push_str(id.as_str());
                } else {
                    finished.push(format!("f:{id}"));
                }
            }
        }
    }
    queues.extend(finished);
    queues
}

/// The events a notification payload stands for.
pub(crate) fn parse_payload(p: &str) -> Vec<StoreEvent> {
    if let Some(q) = p.strip_prefix("a:") {
        return kyu_core::QueueName::new(q).map(StoreEvent::JobsAvailable).into_iter().collect();
    }
    if let Some(ids) = p.strip_prefix("f:") {
        return ids.split(' ').filter_map(|id| kyu_core::JobId::new(id).ok()).map(StoreEvent::JobFinished).collect();
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kyu_core::{JobId, QueueName};

    #[test]
    fn payloads_round_trip_and_pack() {
        let mut events = vec![StoreEvent::JobsAvailable(QueueName::new("q").unwrap()); 3];
        for i in 0..2000 {
            events.push(StoreEvent::JobFinished(JobId::new(format!("job-{i:05}")).unwrap()));
        }
        let p = payloads(events.clone());
        assert_eq!(p[0], "a:q");
        assert!(p.len() < 10, "ids are packed: {}", p.len());
        assert!(p.iter().all(|x| x.len() <= 8000));
        let back: Vec<StoreEvent> = p.iter().flat_map(|x| parse_payload(x)).collect();
        assert_eq!(back.len(), 1 + 2000);
    }
}
