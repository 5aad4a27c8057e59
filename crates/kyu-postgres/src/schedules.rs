//! Schedule storage. The firing logic lives in kyu-core and the scheduler
//! service; this only stores and compare-and-sets.

use std::time::SystemTime;

use kyu_core::{Schedule, ScheduleSpec};
use kyu_store::{ScheduleAdvanceParams, SchedulePutParams, StoreError};
use tokio_postgres::Row;

use crate::conn::Conn;
use crate::error::PgResultExt;
use crate::read::{millis, ts};
use crate::tx::Tx;

const COLUMNS: &str = "name, cron, timezone, job, catchup, enabled, next_run_at, last_run_at, created_at, updated_at";

fn from_row(r: &Row) -> Result<Schedule, StoreError> {
    let opt = |i: usize| -> Result<Option<kyu_core::Millis>, StoreError> { Ok(r.try_get::<_, Option<SystemTime>>(i).db()?.map(millis)) };
    Ok(Schedule {
        name: r.try_get(0).db()?,
        cron: r.try_get(1).db()?,
        timezone: r.try_get(2).db()?,
        job: serde_json::from_value(r.try_get(3).db()?).map_err(|e| StoreError::Backend(e.into()))?,
        catchup: r.try_get(4).db()?,
        enabled: r.try_get(5).db()?,
        next_run_at: opt(6)?,
        last_run_at: opt(7)?,
        created_at: millis(r.try_get(8).db()?),
        updated_at: millis(r.try_get(9).db()?),
    })
}

pub(crate) async fn get(c: &impl Conn, name: &str) -> Result<Option<Schedule>, StoreError> {
    match c.query_opt(&format!("SELECT {COLUMNS} FROM kyu_schedules WHERE name = $1"), &[&name]).await.db()? {
        Some(r) => Ok(Some(from_row(&r)?)),
        None => Ok(None),
    }
}

pub(crate) async fn list(c: &impl Conn) -> Result<Vec<Schedule>, StoreError> {
    let rows = c.query(&format!("SELECT {COLUMNS} FROM kyu_schedules ORDER BY name"), &[]).await.db()?;
    rows.iter().map(from_row).collect()
}

pub(crate) async fn put<C: Conn>(tx: &Tx<'_, C>, p: SchedulePutParams) -> Result<Schedule, StoreError> {
    let ScheduleSpec { cron, timezone, job, catchup, enabled } = p.spec;
    let job = serde_json::to_string(&job).map_err(|e| StoreError::Backend(e.into()))?;
    tx.c.execute(
        "INSERT INTO kyu_schedules (name, cron, timezone, job, catchup, enabled, next_run_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7, $8, $8) \
         ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, timezone = excluded.timezone, job = excluded.job, \
           catchup = excluded.catchup, enabled = excluded.enabled, next_run_at = excluded.next_run_at, \
           updated_at = excluded.updated_at",
        &[&p.name, &cron, &timezone.unwrap_or_else(|| "UTC".into()), &job, &catchup, &enabled, &p.next_run_at.map(ts), &tx.now_ts],
    )
    .await
    .db()?;
    get(tx.c, &p.name).await?.ok_or_else(|| StoreError::NotFound(format!("schedule `{}`", p.name)))
}

pub(crate) async fn delete<C: Conn>(tx: &Tx<'_, C>, name: &str) -> Result<(), StoreError> {
    let n = tx.c.execute("DELETE FROM kyu_schedules WHERE name = $1", &[&name]).await.db()?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("schedule `{name}`")));
    }
    Ok(())
}

pub(crate) async fn advance<C: Conn>(tx: &Tx<'_, C>, p: ScheduleAdvanceParams) -> Result<bool, StoreError> {
    let n = tx
        .c
        .execute(
            "UPDATE kyu_schedules SET next_run_at = $3, last_run_at = coalesce($4, last_run_at) \
             WHERE name = $1 AND next_run_at = $2",
            &[&p.name, &ts(p.from), &p.to.map(ts), &p.ran_at.map(ts)],
        )
        .await
        .db()?;
    Ok(n == 1)
}
