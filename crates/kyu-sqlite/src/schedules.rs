//! Schedule storage. The firing logic lives in kyu-core and the scheduler
//! service; this only stores and compare-and-sets.

use kyu_core::{Schedule, ScheduleSpec};
use kyu_store::{ScheduleAdvanceParams, SchedulePutParams, StoreError};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::SqlResultExt;
use crate::read::{Json, Ts};
use crate::writer::Tx;

const COLUMNS: &str = "name, cron, timezone, job, catchup, enabled, next_run_at, last_run_at, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Schedule> {
    Ok(Schedule {
        name: r.get(0)?,
        cron: r.get(1)?,
        timezone: r.get(2)?,
        job: r.get::<_, Json<_>>(3)?.0,
        catchup: r.get(4)?,
        enabled: r.get(5)?,
        next_run_at: r.get::<_, Option<Ts>>(6)?.map(|t| t.0),
        last_run_at: r.get::<_, Option<Ts>>(7)?.map(|t| t.0),
        created_at: r.get::<_, Ts>(8)?.0,
        updated_at: r.get::<_, Ts>(9)?.0,
    })
}

pub(crate) fn get(conn: &Connection, name: &str) -> Result<Option<Schedule>, StoreError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM kyu_schedules WHERE name = ?1"))
        .db()?
        .query_row([name], from_row)
        .optional()
        .db()
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<Schedule>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM kyu_schedules ORDER BY name")).db()?;
    let rows = stmt.query_map([], from_row).db()?;
    rows.collect::<Result<_, _>>().db()
}

pub(crate) fn put(tx: &mut Tx<'_>, p: SchedulePutParams) -> Result<Schedule, StoreError> {
    let ScheduleSpec { cron, timezone, job, catchup, enabled } = p.spec;
    let job = serde_json::to_string(&job).map_err(|e| StoreError::Backend(e.into()))?;
    tx.conn
        .prepare_cached(
            "INSERT INTO kyu_schedules (name, cron, timezone, job, catchup, enabled, next_run_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
             ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, timezone = excluded.timezone, job = excluded.job, \
               catchup = excluded.catchup, enabled = excluded.enabled, next_run_at = excluded.next_run_at, \
               updated_at = excluded.updated_at",
        )
        .db()?
        .execute(params![
            p.name,
            cron,
            timezone.unwrap_or_else(|| "UTC".into()),
            job,
            catchup,
            enabled,
            p.next_run_at.map(|t| t.to_rfc3339()),
            tx.now_str
        ])
        .db()?;
    get(tx.conn, &p.name)?.ok_or_else(|| StoreError::NotFound(format!("schedule `{}`", p.name)))
}

pub(crate) fn delete(tx: &mut Tx<'_>, name: &str) -> Result<(), StoreError> {
    let n = tx.conn.prepare_cached("DELETE FROM kyu_schedules WHERE name = ?1").db()?.execute([name]).db()?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("schedule `{name}`")));
    }
    Ok(())
}

pub(crate) fn advance(tx: &mut Tx<'_>, p: ScheduleAdvanceParams) -> Result<bool, StoreError> {
    let n = tx
        .conn
        .prepare_cached(
            "UPDATE kyu_schedules SET next_run_at = ?3, last_run_at = coalesce(?4, last_run_at) \
             WHERE name = ?1 AND next_run_at = ?2",
        )
        .db()?
        .execute(params![p.name, p.from.to_rfc3339(), p.to.map(|t| t.to_rfc3339()), p.ran_at.map(|t| t.to_rfc3339())])
        .db()?;
    Ok(n == 1)
}
