//! A fresh store in a schema of its own, for tests.
//!
//! The server is the one the test script starts (KYU_TEST_POSTGRES_URL). A
//! missing server fails the test: it is never skipped.

use kyu_core::Clock;

use crate::{PgOptions, PgStore};

/// The test server's URL, or a panic saying how to get one.
pub fn test_url() -> String {
    std::env::var("KYU_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!("KYU_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts PostgreSQL")
    })
}

/// A store in a new schema named by a UUIDv7, with a manual clock. The guard
/// is the schema name; the cluster is thrown away after the run.
pub async fn fresh_store() -> (PgStore, String) {
    fresh_store_at(&test_url()).await
}

/// [`fresh_store`] over TLS with `sslmode=verify-full`, trusting the CA the
/// test script made (`KYU_TEST_TLS_CA`).
pub async fn fresh_tls_store() -> (PgStore, String) {
    let ca = std::env::var("KYU_TEST_TLS_CA")
        .unwrap_or_else(|_| panic!("KYU_TEST_TLS_CA is not set: run the tests with scripts/test, which makes it"));
    fresh_store_at(&format!("{}?sslmode=verify-full&sslrootcert={ca}", test_url())).await
}

/// [`fresh_store`] on the server at `url`.
pub async fn fresh_store_at(url: &str) -> (PgStore, String) {
    let schema = format!("kyu_t_{}", uuid::Uuid::now_v7().simple());
    let opts = PgOptions { clock: Clock::manual(), schema: Some(schema.clone()), pool_size: 8, ..PgOptions::default() };
    let store = PgStore::connect(url, opts).await.expect("connect to the test PostgreSQL");
    // The LISTEN connection comes up on its own task; a test that waits for
    // an event must not race it (a TLS handshake under load takes a while).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !store.is_listening() {
        assert!(std::time::Instant::now() < deadline, "the LISTEN connection did not come up in 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    (store, schema)
}
