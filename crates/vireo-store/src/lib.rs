//! Vireo's state store: an etcd-v3-shaped, revisioned key-value [`Store`] trait, with an
//! embedded SQLite implementation ([`SqliteStore`]) for single-host installs.
//!
//! - Keys are absolute `/`-separated paths ([`key`]); values are bytes, JSON by convention
//!   ([`StoreJsonExt`]).
//! - Every committed change bumps one global revision; each key has `create_revision`,
//!   `mod_revision` (its ETag) and `version` ([`types`]).
//! - Multi-key transactions with compares give optimistic concurrency ([`Txn`]).
//! - Watches deliver ordered changes from a start revision, with a bounded history
//!   ([`watch`]); leases delete their keys when they end.
//!
//! The engine holds an `Arc<dyn Store>`; an etcd implementation can be added behind the same
//! trait without changing callers.

pub mod error;
pub mod json;
pub mod key;
pub mod sqlite;
pub mod store;
pub mod types;
pub mod watch;

pub use error::StoreError;
pub use json::{encode_json, StoreJsonExt, Versioned};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use store::Store;
pub use types::{
    Compare, CompareOp, CompareTarget, EventKind, KeyValue, Lease, LeaseId, OpResponse,
    RangeResponse, Revision, Txn, TxnOp, TxnResponse, WatchEvent,
};
pub use watch::{Watch, WatchLimits};
