//! A fresh store on a temporary file, for tests.

use kyu_core::Clock;

use crate::{SqliteOptions, SqliteStore};

/// A store on a new file in a new temporary directory, with a manual clock.
/// The directory lives as long as the returned guard.
pub fn fresh_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = SqliteOptions { clock: Clock::manual(), ..SqliteOptions::default() };
    let store = SqliteStore::open(dir.path().join("kyu.db"), opts).expect("open fresh store");
    (store, dir)
}
