//! Versioned migrations, applied on open.
//!
//! SQLite has its own set, separate from PostgreSQL's, as River and Oban keep
//! theirs: the dialects differ and each set is written for its database.
//! Migrations run under `BEGIN IMMEDIATE`, so two processes opening the same
//! new file at once apply them once: the second waits, then finds them done.

use rusqlite::Connection;

/// `(version, SQL)` in order. Never edit a released entry; add a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_schedules.sql")),
    (3, include_str!("migrations/0003_groups.sql")),
    (4, include_str!("migrations/0004_deadlines.sql")),
    (5, include_str!("migrations/0005_logs.sql")),
    (6, include_str!("migrations/0006_observability.sql")),
    (7, include_str!("migrations/0007_lists.sql")),
    (8, include_str!("migrations/0008_heartbeats.sql")),
    (9, include_str!("migrations/0009_counted_by_writer.sql")),
];

pub(crate) fn run(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS kyu_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
    )?;
    let current: i64 = tx.query_row("SELECT coalesce(max(version), 0) FROM kyu_migrations", [], |r| r.get(0))?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO kyu_migrations (version, applied_at) VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            [version],
        )?;
    }
    tx.commit()
}

/// The newest schema version this build knows.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}
