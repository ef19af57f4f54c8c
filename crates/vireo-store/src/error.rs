//! The one error type every [`crate::Store`] implementation returns.
//!
//! Variants are backend-neutral (the engine matches on them: `Compacted`, `WatchLagged`,
//! `LeaseNotFound`, `AlreadyExists`-style conflicts are expressed through transactions, not
//! errors). Backend failures (SQLite today, etcd later) are wrapped in [`StoreError::Backend`]
//! with the failed operation as context and the cause as `#[source]`.

use std::path::PathBuf;

use crate::types::{LeaseId, Revision};

/// Boxed cause of a backend failure.
pub type BoxedCause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key or prefix breaks the key rules (see [`crate::key`]).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    /// A value is larger than [`crate::key::MAX_VALUE_LEN`].
    #[error("value for key {key:?} is {len} bytes; the limit is {max}")]
    ValueTooLarge { key: String, len: usize, max: usize },

    /// A transaction has more compares or operations than [`crate::key::MAX_TXN_OPS`].
    #[error("transaction has {count} {what}; the limit is {max}")]
    TooManyOps {
        what: &'static str,
        count: usize,
        max: usize,
    },

    /// One branch of a transaction writes the same key twice (etcd rejects this too).
    #[error("transaction writes key {key:?} more than once")]
    DuplicateKeyInTxn { key: String },

    /// A lease TTL outside the accepted range.
    #[error("lease TTL of {ttl_ms} ms is outside the accepted range 1..={max_ms} ms")]
    InvalidTtl { ttl_ms: u128, max_ms: u64 },

    /// The lease does not exist: never granted, revoked, or expired.
    #[error("lease {lease} not found (expired or revoked)")]
    LeaseNotFound { lease: LeaseId },

    /// A watch asked for events that are no longer kept in the history.
    #[error(
        "cannot watch from after revision {requested}: history only covers revisions after {compacted}"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },

    /// A watcher did not consume events fast enough and was cancelled. Every event up to and
    /// including `resume_after` was delivered; watch again from there.
    #[error("watcher fell behind and was cancelled; resume after revision {resume_after}")]
    WatchLagged { resume_after: Revision },

    /// The store has been shut down.
    #[error("the state store is closed")]
    Closed,

    /// Another process holds the state database.
    #[error("state database {path} is in use by another process")]
    Locked {
        path: PathBuf,
        #[source]
        source: BoxedCause,
    },

    /// The database was written by a newer Vireo whose schema this build does not know.
    #[error(
        "state database {path} has schema version {found}; this build supports up to {supported}"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// The file is an SQLite database that belongs to some other application.
    #[error("{path} is not a Vireo state database (application_id {application_id:#x})")]
    ForeignDatabase { path: PathBuf, application_id: i64 },

    /// Preparing the state directory or database file failed.
    #[error("cannot prepare state database at {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Stored data violates an invariant (for example a key that is not UTF-8).
    #[error("state database is corrupt: {detail}")]
    Corrupt { detail: String },

    /// A JSON value could not be encoded or decoded.
    #[error("cannot {direction} JSON value of key {key:?}")]
    Json {
        direction: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },

    /// A backend returned a response that does not match the request (a backend bug).
    #[error("store backend returned an unexpected response to {operation}")]
    UnexpectedResponse { operation: &'static str },

    /// The backend (SQLite, etcd) failed.
    #[error("state store backend failed during {operation}")]
    Backend {
        operation: &'static str,
        #[source]
        source: BoxedCause,
    },
}

impl StoreError {
    /// Wraps a backend failure with the operation that was attempted.
    pub fn backend(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Backend {
            operation,
            source: Box::new(source),
        }
    }
}
