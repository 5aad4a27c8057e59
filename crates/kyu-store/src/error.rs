use kyu_core::ValidationError;

/// Any error from a database driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a store operation can fail with. Both backends map their errors into
/// these variants alike, and the conformance suite checks they do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The job (or queue) does not exist. HTTP 404.
    #[error("{0} not found")]
    NotFound(String),
    /// The request does not fit the job's state: a stale token, a report on a
    /// terminal job, deleting a running job. Changes nothing. HTTP 409.
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but refers to something impossible, such
    /// as an unknown dependency. HTTP 422.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The database is busy or unreachable; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// A server refused the caller's credentials (HTTP 401) or role (403).
    /// The message says what to do.
    #[error("{message}")]
    Denied {
        /// `unauthorized` or `forbidden`.
        code: &'static str,
        /// What went wrong and what to do.
        message: String,
    },
    /// Anything else from the database.
    #[error("store error: {0}")]
    Backend(#[source] BoxError),
}

impl From<kyu_core::dependency::MissingDependency> for StoreError {
    fn from(e: kyu_core::dependency::MissingDependency) -> StoreError {
        StoreError::NotFound(e.to_string())
    }
}

impl StoreError {
    /// The not-found error for job `id`.
    pub fn job_not_found(id: &kyu_core::JobId) -> StoreError {
        StoreError::NotFound(format!("job `{id}`"))
    }

    /// A worker's write refused by the token fence (see
    /// [`kyu_core::transition::check_token`]).
    pub fn refused(id: &kyu_core::JobId, why: kyu_core::transition::Refusal) -> StoreError {
        StoreError::Conflict(why.message(id.as_str()))
    }

    /// Whether the worker should retry the same call later.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}
