//! Job logs: appended by the running job (fenced by its token), bounded per
//! attempt by kyu-core's rule, read back oldest first.

use std::time::SystemTime;

use kyu_core::log::{MAX_ATTEMPT_BYTES, clean_line, dropped_marker, lines_to_drop};
use kyu_store::{JobLogAppendParams, JobLogParams, LogLine, StoreError};

use crate::conn::Conn;
use crate::error::PgResultExt;
use crate::finish::held;
use crate::read::millis;
use crate::tx::Tx;

pub(crate) async fn append<C: Conn>(tx: &Tx<'_, C>, p: JobLogAppendParams) -> Result<(), StoreError> {
    let h = held(tx, &p.id, &p.token).await?;
    let attempt = h.attempt.attempt;
    let lines: Vec<String> = p.lines.iter().map(|l| clean_line(l)).collect();
    let added: i64 = lines.iter().map(|l| l.len() as i64).sum();
    // The job's row is locked (`held`), so appends to one attempt take turns.
    let row = tx
        .c
        .query_one(
            "INSERT INTO kyu_job_log_sizes AS s (job_seq, attempt, bytes, next_n, dropped) VALUES ($1, $2, $3, $4, 0) \
             ON CONFLICT (job_seq, attempt) DO UPDATE SET bytes = s.bytes + $3, next_n = s.next_n + $4 \
             RETURNING bytes, next_n - $4",
            &[&h.seq, &attempt, &added, &(lines.len() as i32)],
        )
        .await
        .db()?;
    let (bytes, first_n): (i64, i32) = (row.try_get(0).db()?, row.try_get(1).db()?);
    tx.c.execute(
        "INSERT INTO kyu_job_logs (job_seq, attempt, n, at, line) \
         SELECT $1, $2, $3::int4 + o::int4 - 1, $4, l FROM unnest($5::text[]) WITH ORDINALITY AS x(l, o)",
        &[&h.seq, &attempt, &first_n, &tx.now_ts, &lines],
    )
    .await
    .db()?;
    if bytes > MAX_ATTEMPT_BYTES {
        let rows = tx
            .c
            .query(
                "SELECT n, octet_length(line)::int8 FROM kyu_job_logs WHERE job_seq = $1 AND attempt = $2 ORDER BY n",
                &[&h.seq, &attempt],
            )
            .await
            .db()?;
        let lengths: Vec<i64> = rows.iter().map(|r| r.try_get(1)).collect::<Result<_, _>>().db()?;
        let k = lines_to_drop(bytes, &lengths);
        if k > 0 {
            let cut: i32 = rows[k - 1].try_get(0).db()?;
            let freed: i64 = lengths[..k].iter().sum();
            tx.c.execute("DELETE FROM kyu_job_logs WHERE job_seq = $1 AND attempt = $2 AND n <= $3", &[&h.seq, &attempt, &cut])
                .await
                .db()?;
            tx.c.execute(
                "UPDATE kyu_job_log_sizes SET bytes = bytes - $3, dropped = dropped + $4 WHERE job_seq = $1 AND attempt = $2",
                &[&h.seq, &attempt, &freed, &(k as i64)],
            )
            .await
            .db()?;
        }
    }
    Ok(())
}

pub(crate) async fn read<C: Conn>(c: &C, p: &JobLogParams) -> Result<Vec<LogLine>, StoreError> {
    let seq: i64 = c
        .query_opt("SELECT seq FROM kyu_jobs WHERE id = $1", &[&p.id.as_str()])
        .await
        .db()?
        .ok_or_else(|| StoreError::job_not_found(&p.id))?
        .try_get(0)
        .db()?;
    let mut dropped: Vec<(i32, i64)> = c
        .query(
            "SELECT attempt, dropped FROM kyu_job_log_sizes WHERE job_seq = $1 AND dropped > 0 AND ($2::int4 IS NULL OR attempt = $2)",
            &[&seq, &p.attempt],
        )
        .await
        .db()?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .db()?;
    let rows = c
        .query(
            "SELECT attempt, at, line FROM kyu_job_logs WHERE job_seq = $1 AND ($2::int4 IS NULL OR attempt = $2) ORDER BY attempt, n",
            &[&seq, &p.attempt],
        )
        .await
        .db()?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let attempt: i32 = r.try_get(0).db()?;
        let at = millis(r.try_get::<_, SystemTime>(1).db()?);
        // Attempts whose oldest lines gave way start with a marker saying so.
        if let Some(i) = dropped.iter().position(|d| d.0 == attempt) {
            let (_, n) = dropped.remove(i);
            out.push(LogLine { at, attempt, line: dropped_marker(n) });
        }
        out.push(LogLine { at, attempt, line: r.try_get(2).db()? });
    }
    Ok(out)
}
