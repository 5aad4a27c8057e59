//! kyu-sqlite's tests: the shared conformance suite, plus what only SQLite has.

use kyu_sqlite::SqliteStore;
use tempfile::TempDir;

async fn fresh() -> (SqliteStore, TempDir) {
    kyu_sqlite::testing::fresh_store()
}

mod conformance {
    use super::fresh;
    kyu_storetest::conformance!(fresh);
}

mod sqlite;
