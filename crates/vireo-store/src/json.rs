//! Typed JSON helpers: values are JSON by convention.
//!
//! [`StoreJsonExt`] is implemented for every [`Store`] (including `dyn Store`), so
//! `store.get_json::<VmRecord>(key)` works on an `Arc<dyn Store>`.

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;
use crate::store::Store;
use crate::types::{KeyValue, Revision, TxnOp};

/// A decoded value with the metadata needed for optimistic concurrency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub create_revision: Revision,
    /// Use as the ETag: guard updates with `Compare::mod_revision(key, Equal, mod_revision)`.
    pub mod_revision: Revision,
    pub version: i64,
}

/// Encodes `value` as JSON for `key`.
pub fn encode_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Json {
        direction: "encode",
        key: key.to_owned(),
        source,
    })
}

impl KeyValue {
    /// Decodes the value as JSON.
    pub fn decode_json<T: DeserializeOwned>(&self) -> Result<Versioned<T>, StoreError> {
        let value = serde_json::from_slice(&self.value).map_err(|source| StoreError::Json {
            direction: "decode",
            key: self.key.clone(),
            source,
        })?;
        Ok(Versioned {
            value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        })
    }
}

impl TxnOp {
    /// A put of `value` encoded as JSON.
    pub fn put_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<TxnOp, StoreError> {
        Ok(TxnOp::put(key, encode_json(key, value)?))
    }
}

/// JSON convenience methods for every store.
#[async_trait]
pub trait StoreJsonExt: Store {
    /// Reads and decodes one key.
    async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        self.get(key).await?.map(|kv| kv.decode_json()).transpose()
    }

    /// Reads and decodes every key under `prefix`, sorted by key; returns the read revision.
    async fn range_json<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<(Vec<(String, Versioned<T>)>, Revision), StoreError> {
        let range = self.range(prefix).await?;
        let decoded = range
            .kvs
            .into_iter()
            .map(|kv| kv.decode_json().map(|v| (kv.key, v)))
            .collect::<Result<_, _>>()?;
        Ok((decoded, range.revision))
    }

    /// Encodes and writes one key; returns its new `mod_revision`.
    async fn put_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Revision, StoreError> {
        let bytes = encode_json(key, value)?;
        self.put(key, bytes).await
    }
}

impl<S: Store + ?Sized> StoreJsonExt for S {}
