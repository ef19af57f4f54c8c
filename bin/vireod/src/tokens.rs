//! API tokens for the TCP listener.
//!
//! - A secret is `vireo_` followed by 32 random bytes from the OS, base64url without padding
//!   (49 characters). It is returned once by [`create`] and never stored.
//! - `/tokens/<name>` holds `{id, name, created_at, secret_sha256}`. A plain SHA-256 is
//!   enough: the secret has 256 bits of entropy, so there is nothing to brute-force, and a
//!   slow password hash would only slow down every authenticated request.
//! - [`verify`] hashes the presented secret and compares it with every stored hash in
//!   constant time without stopping at a match, so response time does not depend on how
//!   many leading bytes of some stored hash a guess got right.
//! - Token names follow [`vireo_types::name::validate_name`] (they appear in key paths and in
//!   the audit trail as `token:NAME`).
//! - Secrets and hashes are never logged.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use vireo_store::{Compare, Store, StoreError, StoreJsonExt, Txn, TxnOp};
use vireo_types::{Name, NameError};

/// Every secret starts with this (lets secret scanners recognise leaked tokens).
pub const SECRET_PREFIX: &str = "vireo_";
/// Random bytes in a secret.
const SECRET_RANDOM_BYTES: usize = 32;
/// Store prefix of token records.
const KEY_PREFIX: &str = "/tokens/";
/// Presented strings longer than this are rejected before hashing.
const MAX_PRESENTED_LEN: usize = 256;

/// A token as listed: never its secret nor its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: Uuid,
    pub name: Name,
    pub created_at: DateTime<Utc>,
}

/// What `/tokens/<name>` holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredToken {
    id: Uuid,
    name: Name,
    created_at: DateTime<Utc>,
    /// Lowercase hex SHA-256 of the whole secret string.
    secret_sha256: String,
}

impl StoredToken {
    fn record(&self) -> TokenRecord {
        TokenRecord {
            id: self.id,
            name: self.name.clone(),
            created_at: self.created_at,
        }
    }
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token name {name:?}")]
    InvalidName {
        name: String,
        #[source]
        source: NameError,
    },
    #[error("a token named {name:?} already exists")]
    AlreadyExists { name: String },
    #[error("no token named {name:?}")]
    NotFound { name: String },
    #[error("cannot draw random bytes for a token secret")]
    Entropy {
        #[source]
        source: rand::Error,
    },
    #[error("state store failed while {operation}")]
    Store {
        operation: &'static str,
        #[source]
        source: StoreError,
    },
}

fn store_error(operation: &'static str) -> impl FnOnce(StoreError) -> TokenError {
    move |source| TokenError::Store { operation, source }
}

fn parse_name(name: &str) -> Result<Name, TokenError> {
    Name::new(name).map_err(|source| TokenError::InvalidName {
        name: name.chars().take(80).collect(),
        source,
    })
}

fn token_key(name: &Name) -> String {
    format!("{KEY_PREFIX}{name}")
}

fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Equality of two digests whose running time does not depend on where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(difference) == 0
}

/// Creates a token; returns its record and its secret (shown once, not recoverable).
pub async fn create(store: &dyn Store, name: &str) -> Result<(TokenRecord, String), TokenError> {
    let name = parse_name(name)?;
    let mut random = [0u8; SECRET_RANDOM_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut random)
        .map_err(|source| TokenError::Entropy { source })?;
    let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(random));
    let stored = StoredToken {
        id: Uuid::now_v7(),
        name: name.clone(),
        created_at: Utc::now(),
        secret_sha256: hex::encode(sha256(&secret)),
    };
    let key = token_key(&name);
    let put = TxnOp::put_json(&key, &stored).map_err(store_error("encoding a token"))?;
    let response = store
        .txn(
            Txn::new()
                .when([Compare::absent(key.as_str())])
                .and_then([put]),
        )
        .await
        .map_err(store_error("creating a token"))?;
    if !response.succeeded {
        return Err(TokenError::AlreadyExists {
            name: name.to_string(),
        });
    }
    tracing::info!(token = %name, "API token created");
    Ok((stored.record(), secret))
}

/// Every token, sorted by name.
pub async fn list(store: &dyn Store) -> Result<Vec<TokenRecord>, TokenError> {
    let (tokens, _) = store
        .range_json::<StoredToken>(KEY_PREFIX)
        .await
        .map_err(store_error("listing tokens"))?;
    Ok(tokens.iter().map(|(_, t)| t.value.record()).collect())
}

/// Deletes a token; its secret stops working immediately.
pub async fn revoke(store: &dyn Store, name: &str) -> Result<(), TokenError> {
    let name = parse_name(name)?;
    let deleted = store
        .delete(&token_key(&name))
        .await
        .map_err(store_error("revoking a token"))?;
    if deleted.is_none() {
        return Err(TokenError::NotFound {
            name: name.to_string(),
        });
    }
    tracing::info!(token = %name, "API token revoked");
    Ok(())
}

/// The token whose secret is `presented`, or `None` if no token matches.
pub async fn verify(store: &dyn Store, presented: &str) -> Result<Option<TokenRecord>, TokenError> {
    if presented.len() > MAX_PRESENTED_LEN || !presented.starts_with(SECRET_PREFIX) {
        return Ok(None);
    }
    let presented_hash = sha256(presented);
    let tokens = store
        .range(KEY_PREFIX)
        .await
        .map_err(store_error("reading tokens"))?;
    let mut matched = None;
    for kv in tokens.kvs {
        // One damaged record must not lock every client out: skip it loudly.
        let stored = match kv.decode_json::<StoredToken>() {
            Ok(stored) => stored.value,
            Err(error) => {
                tracing::error!(key = %kv.key, %error, "skipping undecodable token record");
                continue;
            }
        };
        let mut stored_hash = [0u8; 32];
        if hex::decode_to_slice(&stored.secret_sha256, &mut stored_hash).is_err() {
            tracing::error!(key = %kv.key, "skipping token record with a malformed hash");
            continue;
        }
        if constant_time_eq(&presented_hash, &stored_hash) && matched.is_none() {
            matched = Some(stored.record());
        }
    }
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_store::SqliteStore;

    fn store() -> SqliteStore {
        SqliteStore::in_memory().unwrap()
    }

    #[test]
    fn constant_time_eq_compares_every_byte() {
        let a = [7u8; 32];
        assert!(constant_time_eq(&a, &a));
        for position in [0, 15, 31] {
            let mut b = a;
            b[position] ^= 0x80;
            assert!(!constant_time_eq(&a, &b));
        }
    }

    #[tokio::test]
    async fn create_stores_only_the_hash_and_verify_finds_the_token() {
        let store = store();
        let (record, secret) = create(&store, "ci-runner").await.unwrap();
        assert_eq!(record.name.as_str(), "ci-runner");
        assert!(secret.starts_with(SECRET_PREFIX));
        assert_eq!(secret.len(), SECRET_PREFIX.len() + 43);
        let random = URL_SAFE_NO_PAD
            .decode(&secret[SECRET_PREFIX.len()..])
            .unwrap();
        assert_eq!(random.len(), SECRET_RANDOM_BYTES);

        let raw = store.get("/tokens/ci-runner").await.unwrap().unwrap();
        let raw_text = String::from_utf8(raw.value).unwrap();
        assert!(!raw_text.contains(&secret[SECRET_PREFIX.len()..]));
        let expected_hash = hex::encode(Sha256::digest(secret.as_bytes()));
        assert!(raw_text.contains(&expected_hash), "{raw_text}");

        assert_eq!(verify(&store, &secret).await.unwrap(), Some(record.clone()));
        // Any change to the secret fails, as do strings that cannot be tokens.
        let mut tampered = secret.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(verify(&store, &tampered).await.unwrap(), None);
        assert_eq!(
            verify(&store, &secret[SECRET_PREFIX.len()..])
                .await
                .unwrap(),
            None
        );
        assert_eq!(verify(&store, "").await.unwrap(), None);
        let overlong = format!("{secret}{}", "A".repeat(MAX_PRESENTED_LEN));
        assert_eq!(verify(&store, &overlong).await.unwrap(), None);
    }

    #[tokio::test]
    async fn each_secret_maps_to_its_own_token() {
        let store = store();
        let (alice, alice_secret) = create(&store, "alice").await.unwrap();
        let (bob, bob_secret) = create(&store, "bob").await.unwrap();
        assert_ne!(alice_secret, bob_secret);
        assert_ne!(alice.id, bob.id);
        assert_eq!(
            verify(&store, &alice_secret).await.unwrap(),
            Some(alice.clone())
        );
        assert_eq!(
            verify(&store, &bob_secret).await.unwrap(),
            Some(bob.clone())
        );
        assert_eq!(list(&store).await.unwrap(), vec![alice, bob]);
    }

    #[tokio::test]
    async fn names_are_validated_and_unique() {
        let store = store();
        create(&store, "ops").await.unwrap();
        assert!(matches!(
            create(&store, "ops").await,
            Err(TokenError::AlreadyExists { .. })
        ));
        for bad in ["", "Ops", "a/b", "-x", "x-"] {
            assert!(
                matches!(
                    create(&store, bad).await,
                    Err(TokenError::InvalidName { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            revoke(&store, "../x").await,
            Err(TokenError::InvalidName { .. })
        ));
    }

    #[tokio::test]
    async fn revoked_tokens_stop_working() {
        let store = store();
        let (_, secret) = create(&store, "temp").await.unwrap();
        let (keep, keep_secret) = create(&store, "keep").await.unwrap();
        revoke(&store, "temp").await.unwrap();
        assert_eq!(verify(&store, &secret).await.unwrap(), None);
        assert_eq!(
            verify(&store, &keep_secret).await.unwrap(),
            Some(keep.clone())
        );
        assert_eq!(list(&store).await.unwrap(), vec![keep]);
        assert!(matches!(
            revoke(&store, "temp").await,
            Err(TokenError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_damaged_record_does_not_block_other_tokens() {
        let store = store();
        let (good, secret) = create(&store, "good").await.unwrap();
        store
            .put("/tokens/broken", b"{\"not\": \"a token\"}".to_vec())
            .await
            .unwrap();
        assert_eq!(verify(&store, &secret).await.unwrap(), Some(good));
        // Listing reports the damage instead of hiding a token.
        assert!(matches!(list(&store).await, Err(TokenError::Store { .. })));
    }
}
