//! Permit failures by fault, each with the SIP status a management request gets.

use super::csv::CsvErrors;
use crate::store::StoreError;

/// Permit failures by fault (STYLE.md rule 8); [`PermitError::status`] is the SIP
/// status a management request gets for each.
#[derive(Debug, thiserror::Error)]
pub enum PermitError {
    /// Malformed input: not an AOR or entry.
    #[error("not an address-of-record: {input:?}: {reason}")]
    BadAor { input: String, reason: &'static str },
    /// Malformed input: bad CSV lines (nothing was imported).
    #[error("import: {0}")]
    Csv(CsvErrors),
    /// Local policy: the list would pass [`super::MAX_ENTRIES`].
    #[error("a permit list holds at most {max} entries")]
    ListTooLong { max: usize },
    /// The `SIP-If-Match` tag is not the list's current one (RFC 3903 §6 step 2).
    #[error("the entity-tag does not match the list's current one")]
    PreconditionFailed,
    /// The interner's arena is full (2 GiB of names, about 70 million AORs).
    #[error("the permit table is full")]
    TableFull,
    #[error("import: reading: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for PermitError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(StoreError::Sqlite(e))
    }
}

impl PermitError {
    /// The SIP status code for a management request that failed this way.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadAor { .. } | Self::Csv(_) => 400,
            Self::PreconditionFailed => 412,
            Self::ListTooLong { .. } => 413,
            Self::TableFull | Self::Read(_) | Self::Store(_) => 500,
        }
    }
}
