//! Each queue's head as last seen (migration 16), where a claim's index
//! scan starts, so that it does not walk the rows claimed before it while
//! a held snapshot keeps them from being pruned. A job placed ahead of it
//! moves it back (`kyu_head_back`, in the statements that place it); this
//! module sets it to the true head again after claims, at most once per
//! [`EVERY`] and queue, which also bounds how long a row that landed ahead
//! of it unseen can wait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a store resets the head of a queue it claims from: a claim
/// walks at most the rows claimed in this time (about 1,000 at W1's rate)
/// however long a snapshot is held.
const EVERY: Duration = Duration::from_millis(50);

/// When this store last reset each queue's head.
#[derive(Default)]
pub(crate) struct Resets {
    last: Mutex<HashMap<String, Instant>>,
}

impl Resets {
    /// Those of `queues` whose head is due for a reset, marked reset now.
    pub(crate) fn due<'a>(&self, queues: impl Iterator<Item = &'a str>) -> Vec<String> {
        let now = Instant::now();
        let mut last = self.last.lock().expect("head resets");
        let mut due = Vec::new();
        for q in queues {
            let recent = last.get(q).is_some_and(|at| now.duration_since(*at) < EVERY);
            if !recent {
                last.insert(q.to_owned(), now);
                due.push(q.to_owned());
            }
        }
        due
    }
}

/// Sets `queue`'s head to its first ready row; never waits for a row lock
/// (a transaction moving the head back holds it: it is then no older than
/// what this would write). An empty queue keeps its head: what comes next
/// comes after it, or moves it back.
pub(crate) async fn reset(client: &tokio_postgres::Client, queue: &str) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "WITH first AS (SELECT priority, run_at, seq FROM kyu_ready WHERE queue = $1 ORDER BY priority DESC, run_at, seq LIMIT 1), \
               hint AS (SELECT queue FROM kyu_ready_head WHERE queue = $1 FOR UPDATE SKIP LOCKED), \
               moved AS (UPDATE kyu_ready_head h SET priority = f.priority, run_at = f.run_at, seq = f.seq \
                 FROM first f, hint WHERE h.queue = hint.queue \
                 AND (h.priority, h.run_at, h.seq) IS DISTINCT FROM (f.priority, f.run_at, f.seq)) \
             INSERT INTO kyu_ready_head (queue, priority, run_at, seq) \
             SELECT $1, priority, run_at, seq FROM first WHERE NOT EXISTS (SELECT 1 FROM kyu_ready_head WHERE queue = $1) \
             ON CONFLICT (queue) DO NOTHING",
            &[&queue],
        )
        .await
}
