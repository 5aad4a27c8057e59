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
/// names the schema (the cluster is thrown away after the run) and, when a
/// test that passed ends, checks that every job's narrow rows agree with it.
pub async fn fresh_store() -> (PgStore, Fresh) {
    fresh_store_at(&test_url()).await
}

/// [`fresh_store`] over TLS with `sslmode=verify-full`, trusting the CA the
/// test script made (`KYU_TEST_TLS_CA`).
pub async fn fresh_tls_store() -> (PgStore, Fresh) {
    let ca = std::env::var("KYU_TEST_TLS_CA")
        .unwrap_or_else(|_| panic!("KYU_TEST_TLS_CA is not set: run the tests with scripts/test, which makes it"));
    fresh_store_at(&format!("{}?sslmode=verify-full&sslrootcert={ca}", test_url())).await
}

/// [`fresh_store`] on the server at `url`.
pub async fn fresh_store_at(url: &str) -> (PgStore, Fresh) {
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
    (store, Fresh { schema, url: url.to_owned() })
}

/// A test's schema; dereferences to its name. Dropped after a test that
/// passed, it counts the jobs whose narrow rows (`kyu_ready`, `kyu_parked`,
/// `kyu_claims`, `kyu_expiry`) disagree with their row and fails the test if
/// any do: every statement that changes a job must keep them.
pub struct Fresh {
    schema: String,
    url: String,
}

impl std::ops::Deref for Fresh {
    type Target = str;
    fn deref(&self) -> &str {
        &self.schema
    }
}

impl std::fmt::Display for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.schema)
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // On a thread of its own: the test's runtime may be the one dropping us.
        let misplaced = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let opts = PgOptions { schema: Some(schema), pool_size: 1, listen: false, ..PgOptions::default() };
                let store = PgStore::connect(&url, opts).await.expect("connect to check the narrow rows");
                let c = store.pool().get().await.expect("a connection");
                c.query_one("SELECT kyu_misplaced()", &[]).await.expect("kyu_misplaced").get::<_, i64>(0)
            })
        })
        .join()
        .expect("the check ran");
        assert_eq!(misplaced, 0, "{misplaced} narrow rows of schema {} disagree with kyu_jobs", self.schema);
    }
}
