//! Data model of the store, following etcd v3.
//!
//! - The store has one global revision. Every transaction that changes at least one key
//!   commits exactly one new revision (`previous + 1`), however many keys it changes;
//!   reads, failed compares and deletes of missing keys do not bump it.
//! - Each live key carries `create_revision` (revision that created it), `mod_revision`
//!   (revision of its last change — the ETag for optimistic concurrency) and `version`
//!   (number of puts since creation, starting at 1). Deleting a key forgets all three: a
//!   re-created key starts again at version 1.
//! - Operations in one transaction run in order, and later operations see earlier writes of
//!   the same transaction. One branch must not write a key twice (see [`Txn::validate`]),
//!   exactly as etcd requires, so code written against SQLite runs unchanged on etcd.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::key::{self, MAX_TXN_OPS};

/// A store revision (etcd uses `int64`). Revision 0 means "before anything was written".
pub type Revision = i64;

/// Identifier of a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A key with its value and metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    /// The lease the key is attached to; the key is deleted when the lease ends.
    pub lease: Option<LeaseId>,
}

/// Comparison operator of a [`Compare`] (`current <op> target`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CompareOp {
    fn holds<T: Ord + ?Sized>(self, current: &T, target: &T) -> bool {
        match self {
            CompareOp::Equal => current == target,
            CompareOp::NotEqual => current != target,
            CompareOp::Less => current < target,
            CompareOp::Greater => current > target,
        }
    }
}

/// What a [`Compare`] looks at. A missing key has revisions and version 0; a compare on the
/// value of a missing key is always false (etcd semantics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    CreateRevision(Revision),
    ModRevision(Revision),
    Version(i64),
    Value(Vec<u8>),
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    /// `mod_revision(key) <op> revision` — the optimistic-concurrency guard (ETag).
    pub fn mod_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::ModRevision(revision),
        }
    }

    /// `create_revision(key) <op> revision`.
    pub fn create_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::CreateRevision(revision),
        }
    }

    /// `version(key) <op> version`.
    pub fn version(key: impl Into<String>, op: CompareOp, version: i64) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::Version(version),
        }
    }

    /// `value(key) <op> value` (bytewise); false when the key is missing.
    pub fn value(key: impl Into<String>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::Value(value.into()),
        }
    }

    /// The key exists (`version > 0`).
    pub fn exists(key: impl Into<String>) -> Self {
        Self::version(key, CompareOp::Greater, 0)
    }

    /// The key does not exist (`version == 0`): "create only if absent".
    pub fn absent(key: impl Into<String>) -> Self {
        Self::version(key, CompareOp::Equal, 0)
    }

    /// Evaluates the guard against the key's current state (`None` when missing).
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        let (create, modified, version) = current.map_or((0, 0, 0), |kv| {
            (kv.create_revision, kv.mod_revision, kv.version)
        });
        match &self.target {
            CompareTarget::CreateRevision(target) => self.op.holds(&create, target),
            CompareTarget::ModRevision(target) => self.op.holds(&modified, target),
            CompareTarget::Version(target) => self.op.holds(&version, target),
            CompareTarget::Value(target) => {
                current.is_some_and(|kv| self.op.holds(kv.value.as_slice(), target.as_slice()))
            }
        }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Create or replace `key`; attach it to `lease` (or detach it from any lease when `None`).
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    /// Delete `key` if it exists.
    Delete { key: String },
    /// Delete every key that starts with `prefix`.
    DeletePrefix { prefix: String },
    /// Read `key`.
    Get { key: String },
    /// Read every key that starts with `prefix`, sorted.
    Range { prefix: String },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn put_with_lease(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        TxnOp::Delete { key: key.into() }
    }

    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        TxnOp::DeletePrefix {
            prefix: prefix.into(),
        }
    }

    pub fn get(key: impl Into<String>) -> Self {
        TxnOp::Get { key: key.into() }
    }

    pub fn range(prefix: impl Into<String>) -> Self {
        TxnOp::Range {
            prefix: prefix.into(),
        }
    }
}

/// Result of one [`TxnOp`], in the same position as the operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    /// The key's previous state, if it existed.
    Put {
        prev: Option<KeyValue>,
    },
    /// The keys that were deleted, as they were before deletion, sorted.
    Delete {
        deleted: Vec<KeyValue>,
    },
    Get {
        kv: Option<KeyValue>,
    },
    Range {
        kvs: Vec<KeyValue>,
    },
}

/// A multi-key transaction: if every compare holds, run `success`, else run `failure`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds guards (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    /// Adds operations run when every guard holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations run when some guard fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Checks keys, values and limits, and that no branch writes a key twice: puts must have
    /// distinct keys and no put may fall inside a delete of the same branch (deletes may
    /// overlap each other). These are etcd's rules.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.compares.len() > MAX_TXN_OPS {
            return Err(StoreError::TooManyOps {
                what: "compares",
                count: self.compares.len(),
                max: MAX_TXN_OPS,
            });
        }
        for compare in &self.compares {
            key::validate_key(&compare.key)?;
            if let CompareTarget::Value(value) = &compare.target {
                key::validate_value(&compare.key, value)?;
            }
        }
        validate_branch(&self.success, "success operations")?;
        validate_branch(&self.failure, "failure operations")
    }
}

fn validate_branch(ops: &[TxnOp], what: &'static str) -> Result<(), StoreError> {
    if ops.len() > MAX_TXN_OPS {
        return Err(StoreError::TooManyOps {
            what,
            count: ops.len(),
            max: MAX_TXN_OPS,
        });
    }
    let mut put_keys = BTreeSet::new();
    let mut deleted_keys = Vec::new();
    let mut deleted_prefixes = Vec::new();
    for op in ops {
        match op {
            TxnOp::Put { key, value, .. } => {
                key::validate_key(key)?;
                key::validate_value(key, value)?;
                if !put_keys.insert(key.as_str()) {
                    return Err(StoreError::DuplicateKeyInTxn { key: key.clone() });
                }
            }
            TxnOp::Delete { key } => {
                key::validate_key(key)?;
                deleted_keys.push(key.as_str());
            }
            TxnOp::DeletePrefix { prefix } => {
                key::validate_prefix(prefix)?;
                deleted_prefixes.push(prefix.as_str());
            }
            TxnOp::Get { key } => key::validate_key(key)?,
            TxnOp::Range { prefix } => key::validate_prefix(prefix)?,
        }
    }
    for put in &put_keys {
        let overlaps =
            deleted_keys.contains(put) || deleted_prefixes.iter().any(|p| key::in_prefix(put, p));
        if overlaps {
            return Err(StoreError::DuplicateKeyInTxn {
                key: (*put).to_owned(),
            });
        }
    }
    Ok(())
}

/// Outcome of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    /// One response per operation of the branch that ran.
    pub responses: Vec<OpResponse>,
    /// The store revision after the transaction (its own revision when it wrote).
    pub revision: Revision,
}

/// Keys of a prefix and the revision they were read at (watch from there to follow changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    pub revision: Revision,
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl: std::time::Duration,
}

/// Kind of change in a [`WatchEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change delivered to a watcher.
///
/// For `Put`, `kv` is the key's new state. For `Delete`, `kv.mod_revision` is the revision
/// of the deletion, `create_revision` and `version` are 0, `lease` is `None`, and `kv.value`
/// is the value the key had just before (like etcd's `prev_kv`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl WatchEvent {
    /// Revision at which the change happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &[u8], create: i64, modified: i64, version: i64) -> KeyValue {
        KeyValue {
            key: "/k".into(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: modified,
            version,
            lease: None,
        }
    }

    #[test]
    fn compares_on_present_key() {
        let current = kv(b"b", 3, 7, 2);
        let c = Some(&current);
        assert!(Compare::mod_revision("/k", CompareOp::Equal, 7).holds(c));
        assert!(!Compare::mod_revision("/k", CompareOp::Equal, 6).holds(c));
        assert!(Compare::mod_revision("/k", CompareOp::Greater, 6).holds(c));
        assert!(Compare::mod_revision("/k", CompareOp::Less, 8).holds(c));
        assert!(Compare::create_revision("/k", CompareOp::Equal, 3).holds(c));
        assert!(Compare::version("/k", CompareOp::NotEqual, 1).holds(c));
        assert!(Compare::value("/k", CompareOp::Equal, b"b".to_vec()).holds(c));
        assert!(Compare::value("/k", CompareOp::Greater, b"a".to_vec()).holds(c));
        assert!(Compare::value("/k", CompareOp::Less, b"ba".to_vec()).holds(c));
        assert!(Compare::exists("/k").holds(c));
        assert!(!Compare::absent("/k").holds(c));
    }

    #[test]
    fn compares_on_missing_key() {
        assert!(Compare::absent("/k").holds(None));
        assert!(!Compare::exists("/k").holds(None));
        assert!(Compare::mod_revision("/k", CompareOp::Equal, 0).holds(None));
        assert!(Compare::create_revision("/k", CompareOp::Less, 1).holds(None));
        // Value compares on a missing key are false whatever the operator.
        for op in [
            CompareOp::Equal,
            CompareOp::NotEqual,
            CompareOp::Less,
            CompareOp::Greater,
        ] {
            assert!(!Compare::value("/k", op, b"".to_vec()).holds(None));
        }
    }

    #[test]
    fn validate_rejects_double_writes() {
        let dup_put = Txn::new().and_then([TxnOp::put("/a", "1"), TxnOp::put("/a", "2")]);
        assert!(matches!(
            dup_put.validate(),
            Err(StoreError::DuplicateKeyInTxn { .. })
        ));
        let put_and_delete = Txn::new().or_else([TxnOp::delete("/a"), TxnOp::put("/a", "2")]);
        assert!(put_and_delete.validate().is_err());
        let put_in_prefix =
            Txn::new().and_then([TxnOp::put("/a/b", "1"), TxnOp::delete_prefix("/a/")]);
        assert!(put_in_prefix.validate().is_err());
        // Overlapping deletes and reads of written keys are fine; branches are independent.
        Txn::new()
            .and_then([
                TxnOp::delete("/a/b"),
                TxnOp::delete_prefix("/a/"),
                TxnOp::put("/b", "1"),
                TxnOp::get("/b"),
            ])
            .or_else([TxnOp::put("/b", "2")])
            .validate()
            .unwrap();
    }

    #[test]
    fn validate_limits() {
        let ops: Vec<_> = (0..=MAX_TXN_OPS)
            .map(|i| TxnOp::get(format!("/k{i}")))
            .collect();
        assert!(matches!(
            Txn::new().and_then(ops).validate(),
            Err(StoreError::TooManyOps { .. })
        ));
        let compares: Vec<_> = (0..=MAX_TXN_OPS)
            .map(|i| Compare::absent(format!("/k{i}")))
            .collect();
        assert!(Txn::new().when(compares).validate().is_err());
        assert!(Txn::new()
            .when([Compare::absent("bad")])
            .validate()
            .is_err());
        assert!(Txn::new()
            .and_then([TxnOp::range("nope")])
            .validate()
            .is_err());
    }
}
