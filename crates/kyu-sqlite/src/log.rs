//! Job logs: appended by the running job (fenced by its token), bounded per
//! attempt by kyu-core's rule, read back oldest first.

use kyu_core::log::{MAX_ATTEMPT_BYTES, clean_line, dropped_marker, lines_to_drop};
use kyu_store::{JobLogAppendParams, JobLogParams, LogLine, StoreError};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::SqlResultExt;
use crate::finish::held;
use crate::read::Ts;
use crate::writer::Tx;

pub(crate) fn append(tx: &mut Tx<'_>, p: JobLogAppendParams) -> Result<(), StoreError> {
    let h = held(tx, &p.id, &p.token)?;
    let attempt = h.attempt.attempt;
    tx.conn
        .prepare_cached(
            "INSERT INTO kyu_job_log_sizes (job_seq, attempt, bytes, next_n, dropped) VALUES (?1, ?2, 0, 0, 0) \
             ON CONFLICT DO NOTHING",
        )
        .db()?
        .execute(params![h.seq, attempt])
        .db()?;
    let (mut bytes, mut next_n): (i64, i64) = tx
        .conn
        .prepare_cached("SELECT bytes, next_n FROM kyu_job_log_sizes WHERE job_seq = ?1 AND attempt = ?2")
        .db()?
        .query_row(params![h.seq, attempt], |r| Ok((r.get(0)?, r.get(1)?)))
        .db()?;
    for line in &p.lines {
        let line = clean_line(line);
        bytes += line.len() as i64;
        tx.conn
            .prepare_cached("INSERT INTO kyu_job_logs (job_seq, attempt, n, at, line) VALUES (?1, ?2, ?3, ?4, ?5)")
            .db()?
            .execute(params![h.seq, attempt, next_n, tx.now_str, line])
            .db()?;
        next_n += 1;
    }
    let mut dropped = 0i64;
    if bytes > MAX_ATTEMPT_BYTES {
        let oldest: Vec<(i64, i64)> = tx
            .conn
            .prepare_cached(
                "SELECT n, length(CAST(line AS BLOB)) FROM kyu_job_logs WHERE job_seq = ?1 AND attempt = ?2 ORDER BY n",
            )
            .db()?
            .query_map(params![h.seq, attempt], |r| Ok((r.get(0)?, r.get(1)?)))
            .db()?
            .collect::<Result<_, _>>()
            .db()?;
        let lengths: Vec<i64> = oldest.iter().map(|(_, len)| *len).collect();
        let k = lines_to_drop(bytes, &lengths);
        if k > 0 {
            let cut = oldest[k - 1].0;
            bytes -= lengths[..k].iter().sum::<i64>();
            dropped = k as i64;
            tx.conn
                .prepare_cached("DELETE FROM kyu_job_logs WHERE job_seq = ?1 AND attempt = ?2 AND n <= ?3")
                .db()?
                .execute(params![h.seq, attempt, cut])
                .db()?;
        }
    }
    tx.conn
        .prepare_cached(
            "UPDATE kyu_job_log_sizes SET bytes = ?3, next_n = ?4, dropped = dropped + ?5 WHERE job_seq = ?1 AND attempt = ?2",
        )
        .db()?
        .execute(params![h.seq, attempt, bytes, next_n, dropped])
        .db()?;
    Ok(())
}

pub(crate) fn read(conn: &Connection, p: &JobLogParams) -> Result<Vec<LogLine>, StoreError> {
    let seq: i64 = conn
        .prepare_cached("SELECT seq FROM kyu_jobs WHERE id = ?1")
        .db()?
        .query_row([p.id.as_str()], |r| r.get(0))
        .optional()
        .db()?
        .ok_or_else(|| StoreError::job_not_found(&p.id))?;
    // Attempts whose oldest lines gave way start with a marker saying so.
    let mut dropped: Vec<(i32, i64, String)> = conn
        .prepare_cached(
            "SELECT s.attempt, s.dropped, (SELECT min(at) FROM kyu_job_logs l WHERE l.job_seq = s.job_seq AND l.attempt = s.attempt) \
             FROM kyu_job_log_sizes s WHERE s.job_seq = ?1 AND s.dropped > 0 AND (?2 IS NULL OR s.attempt = ?2)",
        )
        .db()?
        .query_map(params![seq, p.attempt], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<String>>(2)?.unwrap_or_default())))
        .db()?
        .collect::<Result<_, _>>()
        .db()?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT attempt, at, line FROM kyu_job_logs WHERE job_seq = ?1 AND (?2 IS NULL OR attempt = ?2) ORDER BY attempt, n",
        )
        .db()?;
    let mut rows = stmt.query(params![seq, p.attempt]).db()?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().db()? {
        let attempt: i32 = r.get(0).db()?;
        let at = r.get::<_, Ts>(1).db()?.0;
        if let Some(i) = dropped.iter().position(|d| d.0 == attempt) {
            let (_, n, _) = dropped.remove(i);
            out.push(LogLine { at, attempt, line: dropped_marker(n) });
        }
        out.push(LogLine { at, attempt, line: r.get(2).db()? });
    }
    Ok(out)
}
