//! kyu-sqlite's tests: the shared conformance suite, plus what only SQLite has.

use kyu_sqlite::SqliteStore;

async fn fresh() -> (SqliteStore, kyu_sqlite::testing::Fresh) {
    kyu_sqlite::testing::fresh_store()
}

mod conformance {
    use super::fresh;
    kyu_storetest::conformance!(fresh);
}

mod sqlite;
