//! The CLI's errors, by the exit status they lead to, each with the code
//! the HTTP API would give it (so `--json` prints the API's error shape).

use kyu_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line itself is wrong (bad JSON, bad name): exit 2.
    #[error("{0}")]
    Usage(String),
    /// The store refused the request (unknown job, conflict, bad value): exit 1.
    #[error("{message}")]
    Refused {
        /// The API's error code (`not_found`, `conflict`, `invalid`, ...).
        code: &'static str,
        /// What went wrong, for people.
        message: String,
    },
    /// Anything else: exit 1.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl CliError {
    /// A refusal with the API's `code`.
    pub fn refused(code: &'static str, message: impl Into<String>) -> CliError {
        CliError::Refused { code, message: message.into() }
    }

    /// The API's error code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            CliError::Usage(_) => "bad_request",
            CliError::Refused { code, .. } => code,
            CliError::Failed(_) => "unavailable",
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> CliError {
        match e {
            StoreError::NotFound(_) => CliError::refused("not_found", e.to_string()),
            StoreError::Conflict(_) => CliError::refused("conflict", e.to_string()),
            StoreError::Invalid(v) if v.too_large => CliError::refused("too_large", v.to_string()),
            StoreError::Invalid(v) => CliError::refused("invalid", v.to_string()),
            StoreError::Denied { code, message } => CliError::refused(code, message),
            // Already says what it is; no "store unavailable:" prefix twice.
            StoreError::Unavailable(cause) => CliError::Failed(anyhow::anyhow!("{cause}")),
            other => CliError::Failed(other.into()),
        }
    }
}

impl From<kyu_core::ValidationError> for CliError {
    fn from(e: kyu_core::ValidationError) -> CliError {
        CliError::Usage(e.to_string())
    }
}
