//! A fresh store on a temporary file, for tests.

use std::path::Path;

use kyu_core::Clock;

use crate::{SqliteOptions, SqliteStore};

/// A store on a new file in a new temporary directory, with a manual clock.
/// The directory lives as long as the returned guard, which checks the
/// queue counts when it goes (see [`Fresh`]).
pub fn fresh_store() -> (SqliteStore, Fresh) {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = SqliteOptions { clock: Clock::manual(), ..SqliteOptions::default() };
    let store = SqliteStore::open(dir.path().join("kyu.db"), opts).expect("open fresh store");
    (store, Fresh { dir })
}

/// Keeps a fresh store's directory. At the end of a test that passed, it
/// checks that `kyu_queue_counts` says what the rows say: every statement
/// that changes a job's state counts the change itself (no trigger does), so
/// one that forgets shows up in whichever test takes it.
pub struct Fresh {
    dir: tempfile::TempDir,
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let drift = counts_drift(&self.dir.path().join("kyu.db")).expect("read the counts");
        assert!(drift.is_empty(), "queue counts differ from the rows (queue, state, counted, rows): {drift:?}");
    }
}

/// `(queue, state, counted, rows)` wherever the counts and the rows disagree.
fn counts_drift(db: &Path) -> rusqlite::Result<Vec<(String, String, i64, i64)>> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mut stmt = conn.prepare(
        "SELECT queue, state, sum(counted), sum(rows) FROM ( \
           SELECT queue, state, n AS counted, 0 AS rows FROM kyu_queue_counts \
           UNION ALL SELECT queue, state, 0, count(*) FROM kyu_jobs GROUP BY queue, state) \
         GROUP BY queue, state HAVING sum(counted) <> sum(rows) ORDER BY queue, state",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    rows.collect()
}
