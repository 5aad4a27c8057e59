//! The CLI's errors, by the exit status they lead to.

use kyu_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line itself is wrong (bad JSON, bad name): exit 2.
    #[error("{0}")]
    Usage(String),
    /// The store refused the request (unknown job, conflict): exit 1.
    #[error("{0}")]
    Refused(String),
    /// Anything else: exit 1.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> CliError {
        match e {
            StoreError::NotFound(_) | StoreError::Conflict(_) | StoreError::Invalid(_) => CliError::Refused(e.to_string()),
            other => CliError::Failed(other.into()),
        }
    }
}

impl From<kyu_core::ValidationError> for CliError {
    fn from(e: kyu_core::ValidationError) -> CliError {
        CliError::Usage(e.to_string())
    }
}
