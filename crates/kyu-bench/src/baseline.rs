//! The raw-SQL ceiling on SQLite: the least SQL one durable job needs in a
//! table queue (insert; claim with `UPDATE ... WHERE id IN (SELECT ... LIMIT k)
//! RETURNING`; mark done), through rusqlite on one connection, WAL with
//! `synchronous = FULL` as kyu ships. Each step is its own transaction.

use std::path::Path;
use std::time::Instant;

use crate::Figure;

/// Runs `n` jobs through insert/claim/done in groups of `k`; jobs/s.
pub fn sqlite_ceiling(path: &Path, n: usize, k: usize) -> rusqlite::Result<Figure> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE job (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, state TEXT NOT NULL,
                           priority INTEGER NOT NULL DEFAULT 0, args TEXT, token TEXT);
         CREATE INDEX job_claim ON job (queue, priority, id) WHERE state = 'queued';",
    )?;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let k = k.min(n - done);
        let tx = conn.unchecked_transaction()?;
        {
            let mut ins = tx.prepare_cached("INSERT INTO job (queue, state, args) VALUES ('q', 'queued', '{}')")?;
            for _ in 0..k {
                ins.execute([])?;
            }
        }
        tx.commit()?;
        let ids: Vec<i64> = conn
            .prepare_cached(
                "UPDATE job SET state = 'running', token = 't' WHERE id IN \
                 (SELECT id FROM job WHERE queue = 'q' AND state = 'queued' ORDER BY priority, id LIMIT ?1) RETURNING id",
            )?
            .query_map([k as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let tx = conn.unchecked_transaction()?;
        {
            let mut fin = tx.prepare_cached("UPDATE job SET state = 'completed' WHERE id = ?1 AND token = 't'")?;
            for id in &ids {
                fin.execute([id])?;
            }
        }
        tx.commit()?;
        done += ids.len();
    }
    Ok(Figure::rate(format!("SQLite ceiling k={k}"), n, started.elapsed().as_secs_f64()))
}
