//! Versioned migrations, applied on open, safe when several nodes start at
//! once: the runner holds a transaction-scoped advisory lock, so the second
//! node waits and then finds the work done.
//!
//! PostgreSQL has its own set, separate from SQLite's (River and Oban do the
//! same): the dialects differ, and each set is written for its database.

use tokio_postgres::Client;

const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_schedules.sql")),
    (3, include_str!("migrations/0003_groups.sql")),
    (4, include_str!("migrations/0004_deadlines.sql")),
    (5, include_str!("migrations/0005_logs.sql")),
    (6, include_str!("migrations/0006_observability.sql")),
    (7, include_str!("migrations/0007_watched.sql")),
    (8, include_str!("migrations/0008_counted.sql")),
    (9, include_str!("migrations/0009_lists.sql")),
    (10, include_str!("migrations/0010_hot_heartbeats.sql")),
    (11, include_str!("migrations/0011_fan_in.sql")),
    (12, include_str!("migrations/0012_default_backoff.sql")),
    (13, include_str!("migrations/0013_room_to_update.sql")),
    (14, include_str!("migrations/0014_hot_rows.sql")),
    (15, include_str!("migrations/0015_batch_rows.sql")),
    (16, include_str!("migrations/0016_ready_head.sql")),
];

/// An arbitrary constant naming kyu's migration lock among advisory locks.
const LOCK_KEY: i64 = 0x6b79_755f_6d69_6772; // "kyu_migr"

pub(crate) async fn run(client: &mut Client, schema: Option<&str>) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    if let Some(schema) = schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema))).await?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS kyu_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM kyu_migrations", &[]).await?.get(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO kyu_migrations (version) VALUES ($1)", &[version]).await?;
    }
    tx.commit().await
}

/// The newest schema version this build knows.
pub(crate) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Quotes an identifier for SQL.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
