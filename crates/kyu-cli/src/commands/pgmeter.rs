//! What a PostgreSQL benchmark measures besides time: WAL bytes and commits
//! per completed job, and the dead tuples a run leaves behind. These travel
//! between machines where jobs/s does not.
//!
//! WAL per job doubles when a checkpoint falls inside a run (the first
//! change to each page after it writes the whole page), so each run also
//! reports the checkpoints it saw.
//!
//! `xact_commit` is flushed by each backend at most once a second, and at
//! the latest when it exits; so a run's figures are read after its
//! connections have closed (each run's store names them after its schema in
//! `application_name`).

use std::time::{Duration, Instant};

use kyu_bench::Figure;
use kyu_postgres::{PgOptions, PgStore};

use crate::commands::bench::failed;
use crate::error::CliError;

/// The server's WAL position and commit count at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    wal_bytes: i64,
    commits: i64,
    checkpoints: i64,
}

/// A connection of its own (two: one reads figures, one may hold a snapshot).
pub struct PgMeter {
    probe: PgStore,
    /// Reads the WAL position, commits and checkpoints (see [`PgMeter::mark`]).
    mark_sql: String,
}

/// A `REPEATABLE READ` transaction held open by another connection (W6),
/// until [`HeldSnapshot::release`].
pub struct HeldSnapshot {
    conn: kyu_postgres::PooledClient,
}

impl HeldSnapshot {
    pub async fn release(self) -> Result<(), CliError> {
        self.conn.batch_execute("ROLLBACK").await.map_err(failed)
    }
}

/// The URL a run's store connects with: its connections are named after its
/// schema, so the meter can wait for them to close.
pub fn named(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={schema}")
}

impl PgMeter {
    /// Connects to `url`, keeping kyu's (unused) tables in `schema`.
    pub async fn connect(url: &str, schema: &str) -> Result<PgMeter, CliError> {
        // Not listening: a listener reads every notification in a
        // transaction of its own, which would count as the run's commits.
        let opts = PgOptions { schema: Some(schema.to_owned()), pool_size: 2, listen: false, ..PgOptions::default() };
        let probe = PgStore::connect(&named(url, schema), opts).await.map_err(failed)?;
        let c = probe.pool().get().await.map_err(failed)?;
        // PostgreSQL 17 moved the checkpoint counts to pg_stat_checkpointer.
        let version: i32 = c.query_one("SELECT current_setting('server_version_num')::int4", &[]).await.map_err(failed)?.get(0);
        let checkpoints = if version >= 170000 {
            "(SELECT num_timed + num_requested FROM pg_stat_checkpointer)"
        } else {
            "(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)"
        };
        let mark_sql = format!(
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8, \
               (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), {checkpoints}::int8"
        );
        drop(c);
        Ok(PgMeter { probe, mark_sql })
    }

    pub async fn mark(&self) -> Result<Mark, CliError> {
        let c = self.probe.pool().get().await.map_err(failed)?;
        let r = c.query_one(&self.mark_sql, &[]).await.map_err(failed)?;
        Ok(Mark { wal_bytes: r.get(0), commits: r.get(1), checkpoints: r.get(2) })
    }

    /// Waits (up to 30 s) until no connection named `app` is left, so their
    /// commits are counted.
    pub async fn wait_closed(&self, app: &str) -> Result<(), CliError> {
        let c = self.probe.pool().get().await.map_err(failed)?;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = c
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&app])
                .await
                .map_err(failed)?
                .get(0);
            if n == 0 {
                return Ok(());
            }
            if Instant::now() > until {
                tracing::warn!(app, left = n, "connections still open; their last commits may not be counted");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Per completed job since `before`: WAL bytes and commits, and the
    /// dead tuples now in `schema`'s tables and the checkpoints since
    /// `before`, as figures named `label ...`.
    pub async fn figures(&self, label: &str, before: Mark, jobs: u64, schema: &str) -> Result<Vec<Figure>, CliError> {
        let after = self.mark().await?;
        let c = self.probe.pool().get().await.map_err(failed)?;
        c.batch_execute("SELECT pg_stat_clear_snapshot()").await.map_err(failed)?;
        let dead: i64 = c
            .query_one("SELECT coalesce(sum(n_dead_tup), 0)::int8 FROM pg_stat_user_tables WHERE schemaname = $1", &[&schema])
            .await
            .map_err(failed)?
            .get(0);
        let per_job = |d: i64| d as f64 / jobs.max(1) as f64;
        Ok(vec![
            Figure { name: format!("{label} WAL/job"), value: per_job(after.wal_bytes - before.wal_bytes), unit: "bytes" },
            Figure { name: format!("{label} commits/job"), value: per_job(after.commits - before.commits), unit: "commits" },
            Figure { name: format!("{label} dead tuples"), value: dead as f64, unit: "tuples" },
            Figure { name: format!("{label} checkpoints"), value: (after.checkpoints - before.checkpoints) as f64, unit: "checkpoints" },
        ])
    }

    /// Vacuums and analyzes every table in `schema`. W4's fill leaves a
    /// million dead row versions at once, which autovacuum would otherwise
    /// clean during the measurement (seen: 17-23 s of it, spanning the
    /// retained run); a store that grew its history over days has had them
    /// cleaned as it went. The fill is not what W4 measures.
    pub async fn vacuum(&self, schema: &str) -> Result<(), CliError> {
        let c = self.probe.pool().get().await.map_err(failed)?;
        let tables: Vec<String> = c
            .query("SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", &[&schema])
            .await
            .map_err(failed)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for t in tables {
            let sql = format!("VACUUM (ANALYZE) \"{}\".\"{}\"", schema.replace('"', "\"\""), t.replace('"', "\"\""));
            c.batch_execute(&sql).await.map_err(failed)?;
        }
        Ok(())
    }

    /// Opens a `REPEATABLE READ` transaction that has taken its snapshot.
    pub async fn hold_snapshot(&self) -> Result<HeldSnapshot, CliError> {
        let conn = self.probe.pool().get().await.map_err(failed)?;
        conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").await.map_err(failed)?;
        Ok(HeldSnapshot { conn })
    }
}
