//! Mapping rusqlite errors into [`StoreError`].

use kyu_store::StoreError;
use rusqlite::ErrorCode;

/// Busy and locked are transient (another process holds the write lock past
/// the busy timeout); everything else is a backend error.
pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unavailable(Box::new(e)),
        _ => StoreError::Backend(Box::new(e)),
    }
}

/// `?` on rusqlite results inside store operations.
pub(crate) trait SqlResultExt<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> SqlResultExt<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(map_err)
    }
}
