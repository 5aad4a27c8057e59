//! Mapping driver errors into [`StoreError`].

use kyu_store::StoreError;
use tokio_postgres::error::SqlState;

/// Connection trouble, shutdown, overload, serialization failures and
/// deadlocks are transient (retry later); the rest is a backend error.
pub(crate) fn map_err(e: tokio_postgres::Error) -> StoreError {
    let transient = match e.code() {
        None => true, // no SQLSTATE: the connection itself failed
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
    };
    if transient { StoreError::Unavailable(Box::new(e)) } else { StoreError::Backend(Box::new(e)) }
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
