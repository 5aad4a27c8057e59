//! The writer thread: every write runs here, and concurrent writes share a
//! transaction (group commit).
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync.
//! Running each operation in its own transaction would cap throughput at one
//! fsync per operation however many handlers are busy. Instead, operations are
//! queued to one thread that takes everything waiting, runs each inside a
//! savepoint (so a refused operation rolls back alone), commits once, and only
//! then answers each caller and publishes their events. A caller is never
//! told "done" before its change is on disk.
//!
//! Per-minute statistics are the exception: the thread gathers committed
//! groups' minutes ([`PendingStats`]) and writes them with the first group
//! a second later, or on its own when no group comes, and when it stops.
//! Reads of statistics run here too, so they add what is pending exactly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use kyu_core::Millis;
use kyu_core::tally::{PendingStats, Tally, merge_minutes};
use kyu_store::{Observers, StoreError, StoreEvent};
use rusqlite::Connection;
use tokio::sync::{broadcast, oneshot};

use crate::SqliteOptions;
use crate::observe::Counted;
use crate::error::map_err;

/// Most operations folded into one transaction.
const MAX_GROUP: usize = 1024;

/// What an operation sees: the connection inside the open transaction, the
/// transaction's time, and a place to put events for after the commit.
pub(crate) struct Tx<'a> {
    pub conn: &'a Connection,
    pub now: Millis,
    pub now_str: String,
    pub events: Vec<StoreEvent>,
    /// What this operation did, for statistics and observers.
    pub tally: Tally,
    /// Its hot-path transitions, for the queue counts.
    pub counted: Counted,
    pub opts: &'a SqliteOptions,
    /// Statistics committed but not written yet, for reads to add.
    pub pending: &'a PendingStats,
    /// Set by an operation that wants the pending statistics written with it.
    pub flush: bool,
}

trait WriteOp: Send {
    /// Runs the operation; false if it failed and must be rolled back.
    fn run(&mut self, tx: &mut Tx<'_>) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

struct Op<F, T> {
    f: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> WriteOp for Op<F, T>
where
    F: FnOnce(&mut Tx<'_>) -> Result<T, StoreError> + Send,
    T: Send,
{
    fn run(&mut self, tx: &mut Tx<'_>) -> bool {
        let f = self.f.take().expect("write op runs once");
        let r = f(tx);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), String>) {
        let answer = match (commit, self.result) {
            // An operation that failed on its own keeps its own error.
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(ok)) => ok,
            (Err(msg), _) => Err(StoreError::Unavailable(msg.into())),
            (Ok(()), None) => Err(StoreError::Backend("write was not run".into())),
        };
        let _ = self.reply.send(answer);
    }
}

/// Handle to the writer thread. Dropping the last one ends the thread.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn WriteOp>>,
    stats: Arc<Stats>,
}

/// How well group commit is doing: operations per transaction.
#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub transactions: AtomicU64,
    pub operations: AtomicU64,
}

impl Writer {
    pub fn start(conn: Connection, opts: SqliteOptions, events: broadcast::Sender<StoreEvent>, observers: Observers) -> Writer {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let counters = stats.clone();
        thread::Builder::new()
            .name("kyu-sqlite-writer".into())
            .spawn(move || writer_loop(conn, opts, rx, events, observers, &counters))
            .expect("spawn the SQLite writer thread");
        Writer { tx, stats }
    }

    /// `(transactions, operations)` since start.
    pub fn stats(&self) -> (u64, u64) {
        (self.stats.transactions.load(Ordering::Relaxed), self.stats.operations.load(Ordering::Relaxed))
    }

    /// Runs `f` in a transaction on the writer thread, shared with whatever
    /// else is waiting, and answers after the commit.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let op = Box::new(Op { f: Some(f), result: None, reply });
        self.tx.send(op).map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?
    }
}

fn writer_loop(
    conn: Connection,
    opts: SqliteOptions,
    rx: mpsc::Receiver<Box<dyn WriteOp>>,
    events: broadcast::Sender<StoreEvent>,
    observers: Observers,
    stats: &Stats,
) {
    let mut group: Vec<Box<dyn WriteOp>> = Vec::with_capacity(64);
    let mut pending = PendingStats::default();
    loop {
        let first = match pending.due_in() {
            None => match rx.recv() {
                Ok(op) => op,
                Err(_) => return, // every handle is gone and nothing is pending
            },
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(op) => op,
                Err(closed) => {
                    // Nothing came to write them with: a transaction of their own.
                    let written = run_group(&conn, &opts, &mut [], &mut Vec::new(), &mut Tally::default(), &mut pending, true);
                    if let Err(e) = written {
                        tracing::warn!(error = %e, "writing per-minute statistics failed; they stay pending");
                    }
                    if closed == mpsc::RecvTimeoutError::Disconnected {
                        return;
                    }
                    continue;
                }
            },
        };
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats.operations.fetch_add(group.len() as u64, Ordering::Relaxed);
        let mut published = Vec::new();
        let mut tally = Tally::default();
        let commit = run_group(&conn, &opts, &mut group, &mut published, &mut tally, &mut pending, false);
        // Observers first: a caller told "done" finds its change counted.
        if let Ok(now) = commit {
            publish(&events, published);
            observers.tell(now, &tally.happenings);
        }
        for op in group.drain(..) {
            op.finish(commit.clone().map(|_| ()));
        }
    }
}

/// Runs a transaction-control statement through the statement cache:
/// `execute_batch` would parse it again on every transaction.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs a group in one transaction and answers its time. `Err` carries the
/// reason every operation in the group is lost (the transaction could not
/// start or commit). The group's statistics join the pending ones once it
/// commits; when those are due (or `flush`, or an operation asked), all are
/// written in the group's transaction, one row per queue and minute. An
/// empty group with `flush` writes only them.
fn run_group(
    conn: &Connection,
    opts: &SqliteOptions,
    group: &mut [Box<dyn WriteOp>],
    published: &mut Vec<StoreEvent>,
    tally: &mut Tally,
    pending: &mut PendingStats,
    flush: bool,
) -> Result<Millis, String> {
    control(conn, "BEGIN IMMEDIATE").map_err(|e| map_err(e).to_string())?;
    let now = opts.clock.now();
    let single = group.len() == 1;
    let mut counted = Counted::default();
    let mut flush = flush || pending.is_due();
    for op in group.iter_mut() {
        let mut tx = Tx {
            conn,
            now,
            now_str: now.to_rfc3339(),
            events: Vec::new(),
            tally: Tally::default(),
            counted: Counted::default(),
            opts,
            pending,
            flush: false,
        };
        // A lone operation needs no savepoint: on failure the whole
        // transaction is rolled back below, which is the same thing.
        if !single && let Err(e) = control(conn, "SAVEPOINT op") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(map_err(e).to_string());
        }
        let ok = op.run(&mut tx);
        if single {
            if !ok {
                let _ = conn.execute_batch("ROLLBACK");
                return Ok(now);
            }
        } else {
            let done = if ok { control(conn, "RELEASE op") } else { control(conn, "ROLLBACK TO op").and_then(|_| control(conn, "RELEASE op")) };
            if let Err(e) = done {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(map_err(e).to_string());
            }
        }
        flush |= tx.flush;
        if ok {
            published.append(&mut tx.events);
            tally.append(&mut tx.tally);
            counted.append(&mut tx.counted);
        }
    }
    let mut minutes = tally.minutes(now);
    // What was pending before this group, while its write is not committed.
    let mut before = None;
    let stats = if flush {
        let pended = pending.take();
        let mut rows = pended.clone();
        merge_minutes(&mut rows, std::mem::take(&mut minutes));
        before = Some(pended);
        crate::observe::write_minutes(conn, &rows)
    } else {
        Ok(())
    };
    let done = counted.write(conn).and(stats).map_err(|e| e.to_string()).and_then(|_| control(conn, "COMMIT").map_err(|e| map_err(e).to_string()));
    if let Err(e) = done {
        let _ = conn.execute_batch("ROLLBACK");
        published.clear();
        tally.happenings.clear();
        // The group's own minutes are lost with it; what was pending stays.
        if let Some(pended) = before {
            pending.add(pended);
        }
        return Err(e);
    }
    pending.add(minutes);
    Ok(now)
}

/// Sends each distinct event once: a batch of 1000 jobs on one queue wakes
/// waiters once, not 1000 times.
fn publish(events: &broadcast::Sender<StoreEvent>, mut published: Vec<StoreEvent>) {
    if events.receiver_count() == 0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    published.retain(|e| seen.insert(e.clone()));
    for e in published {
        let _ = events.send(e);
    }
}
