//! Mapping driver errors into [`StoreError`], keeping PostgreSQL's own words:
//! the driver's `Display` says only "db error", so the SQLSTATE, message,
//! detail and hint are carried into the error the server logs.

use kyu_store::StoreError;
use tokio_postgres::error::SqlState;

/// A driver error with PostgreSQL's diagnosis spelled out.
#[derive(Debug)]
pub struct PgError {
    text: String,
    source: tokio_postgres::Error,
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        let text = match e.as_db_error() {
            Some(db) => {
                let mut t = format!("PostgreSQL {} {}: {}", db.severity(), db.code().code(), db.message());
                if let Some(d) = db.detail() {
                    t.push_str(&format!(" (detail: {d})"));
                }
                if let Some(h) = db.hint() {
                    t.push_str(&format!(" (hint: {h})"));
                }
                if let Some(w) = db.where_() {
                    t.push_str(&format!(" (where: {w})"));
                }
                t
            }
            None => match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            },
        };
        PgError { text, source: e }
    }
}

/// Connection trouble, shutdown, overload, serialization failures and
/// deadlocks are transient (retry later); the rest is a backend error.
pub(crate) fn map_err(e: tokio_postgres::Error) -> StoreError {
    let transient = match e.code() {
        // No SQLSTATE: the connection failed (closed, I/O, connect, TLS,
        // timeout) and a retry may succeed; a type or encoding error is a bug
        // that retrying cannot fix.
        None => {
            let text = e.to_string();
            e.is_closed()
                || ["error communicating", "error connecting", "timeout waiting", "error performing TLS"]
                    .iter()
                    .any(|p| text.starts_with(p))
        }
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
    };
    let e = Box::new(PgError::from(e));
    if transient { StoreError::Unavailable(e) } else { StoreError::Backend(e) }
}

pub(crate) fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

/// `?` on driver results inside store operations.
pub(crate) trait PgResultExt<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> PgResultExt<T> for Result<T, tokio_postgres::Error> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(map_err)
    }
}
