//! kyu-postgres's tests: the shared conformance suite, unchanged, plus what
//! only PostgreSQL has. They need the server scripts/test starts.

use kyu_postgres::PgStore;

async fn fresh() -> (PgStore, kyu_postgres::testing::Fresh) {
    kyu_postgres::testing::fresh_store().await
}

mod conformance {
    use super::fresh;
    kyu_storetest::conformance!(fresh);
}

/// The whole suite again over TLS, `sslmode=verify-full`.
mod over_tls {
    async fn fresh() -> (kyu_postgres::PgStore, kyu_postgres::testing::Fresh) {
        kyu_postgres::testing::fresh_tls_store().await
    }
    kyu_storetest::conformance!(fresh);
}

mod migrations;
mod postgres;
mod tls;
