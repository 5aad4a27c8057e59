//! TLS to PostgreSQL: verified connections, and clear refusals.

use std::io::{Read, Write};

use kyu_postgres::{PgOptions, PgStore};
use kyu_postgres::testing::test_url;

fn ca() -> String {
    std::env::var("KYU_TEST_TLS_CA").expect("KYU_TEST_TLS_CA (scripts/test makes it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_encrypted() {
    let (store, _schema) = kyu_postgres::testing::fresh_tls_store().await;
    let client = store.pool().get().await.unwrap();
    let ssl: bool = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(ssl, "the pooled connection is encrypted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    // The system's roots do not include the test's own CA.
    let err = PgStore::connect(&format!("{}?sslmode=verify-full", test_url()), PgOptions::default()).await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("sslmode=verify-full") && text.to_lowercase().contains("certificate"), "{text}");
    // By host name too: the certificate names localhost.
    let by_name = test_url().replace("127.0.0.1", "localhost");
    PgStore::connect(&format!("{by_name}?sslmode=verify-full&sslrootcert={}", ca()), PgOptions::default()).await.expect("verified by name");
    PgStore::connect(&format!("{}?sslmode=verify-ca&sslrootcert={}", test_url(), ca()), PgOptions::default()).await.expect("verify-ca");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_fails_clearly() {
    // A server that declines TLS, as PostgreSQL with ssl=off does: it
    // answers the SSLRequest with 'N'.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut req = [0u8; 8];
            if s.read_exact(&mut req).is_ok() {
                let _ = s.write_all(b"N");
            }
            let mut rest = [0u8; 1024];
            let _ = s.read(&mut rest);
        }
    });
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require");
    let err = PgStore::connect(&url, PgOptions::default()).await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("sslmode=require") && text.contains("TLS"), "{text}");
    // A bad mode is named.
    let err = PgStore::connect(&format!("{}?sslmode=sometimes", test_url()), PgOptions::default()).await.err().unwrap();
    assert!(err.to_string().contains("verify-full"), "{err}");
}
