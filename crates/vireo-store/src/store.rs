//! The [`Store`] trait: what the engine needs from a state store, shaped after etcd v3.
//!
//! Implementations must guarantee:
//! - transactions are atomic and serializable: every transaction sees all earlier committed
//!   transactions and none of the later ones;
//! - revisions follow the rules in [`crate::types`];
//! - a watch yields every change after its start revision that matches its prefix, once, in
//!   revision order, or ends with an error;
//! - keys attached to a lease disappear (as one revision) once the lease expires or is revoked.
//!
//! Only [`Store::txn`], [`Store::watch`] and the lease methods must be implemented; the
//! single-key helpers are built on `txn`.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::types::{
    KeyValue, Lease, LeaseId, OpResponse, RangeResponse, Revision, Txn, TxnOp, TxnResponse,
};
use crate::watch::Watch;

/// A revisioned key-value state store (object-safe: the engine holds `Arc<dyn Store>`).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Runs a transaction atomically (see [`Txn`]).
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;

    /// Watches `prefix` for changes with a revision above `after` (`None`: from now on).
    async fn watch(&self, prefix: &str, after: Option<Revision>) -> Result<Watch, StoreError>;

    /// Grants a lease that expires `ttl` from now unless kept alive.
    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, StoreError>;

    /// Restarts the lease's full TTL; returns the TTL.
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;

    /// Ends the lease now, deleting its keys; returns the store revision afterwards.
    async fn lease_revoke(&self, lease: LeaseId) -> Result<Revision, StoreError>;

    /// Time left before the lease expires, or `None` if it no longer exists.
    async fn lease_time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError>;

    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self.txn(Txn::new().and_then([TxnOp::get(key)])).await?;
        match response.responses.into_iter().next() {
            Some(OpResponse::Get { kv }) => Ok(kv),
            _ => Err(StoreError::UnexpectedResponse { operation: "get" }),
        }
    }

    /// Reads every key under `prefix`, sorted, with the revision they were read at.
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        let response = self
            .txn(Txn::new().and_then([TxnOp::range(prefix)]))
            .await?;
        match response.responses.into_iter().next() {
            Some(OpResponse::Range { kvs }) => Ok(RangeResponse {
                kvs,
                revision: response.revision,
            }),
            _ => Err(StoreError::UnexpectedResponse { operation: "range" }),
        }
    }

    /// Creates or replaces a key (detached from any lease); returns the new revision, which
    /// is also the key's `mod_revision`.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        Ok(self
            .txn(Txn::new().and_then([TxnOp::put(key, value)]))
            .await?
            .revision)
    }

    /// Creates or replaces a key attached to `lease`.
    async fn put_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Revision, StoreError> {
        let op = TxnOp::put_with_lease(key, value, lease);
        Ok(self.txn(Txn::new().and_then([op])).await?.revision)
    }

    /// Deletes a key; returns its last state if it existed.
    async fn delete(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self.txn(Txn::new().and_then([TxnOp::delete(key)])).await?;
        match response.responses.into_iter().next() {
            Some(OpResponse::Delete { deleted }) => Ok(deleted.into_iter().next()),
            _ => Err(StoreError::UnexpectedResponse {
                operation: "delete",
            }),
        }
    }

    /// The current store revision.
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.txn(Txn::new()).await?.revision)
    }
}

/// A shared store is a store, so `&Arc<dyn Store>` can be passed where `&dyn Store` is
/// expected. Every method forwards (including the provided ones, so a backend's own
/// versions of them are kept).
#[async_trait]
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        (**self).txn(txn).await
    }

    async fn watch(&self, prefix: &str, after: Option<Revision>) -> Result<Watch, StoreError> {
        (**self).watch(prefix, after).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        (**self).lease_grant(ttl).await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        (**self).lease_keep_alive(lease).await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<Revision, StoreError> {
        (**self).lease_revoke(lease).await
    }

    async fn lease_time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        (**self).lease_time_to_live(lease).await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        (**self).get(key).await
    }

    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        (**self).range(prefix).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        (**self).put(key, value).await
    }

    async fn put_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Revision, StoreError> {
        (**self).put_with_lease(key, value, lease).await
    }

    async fn delete(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        (**self).delete(key).await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        (**self).current_revision().await
    }
}
