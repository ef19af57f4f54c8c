//! Key rules, size limits and prefix arithmetic.
//!
//! A key is an absolute, `/`-separated path such as `/vms/default/web1`:
//! - it starts with `/`, has no empty segment (`//`) and does not end with `/`;
//! - it contains no control characters (so keys are safe in logs and file names);
//! - it is at most [`MAX_KEY_LEN`] bytes.
//!
//! A prefix (for ranges, prefix deletes and watches) follows the same rules except that it may
//! end with `/` (and `/` alone selects every key). Keys sort bytewise, which for UTF-8 equals
//! the order of Rust's `str`, so SQLite (`BLOB` keys) and etcd agree on range order.

use crate::error::StoreError;

/// Longest key or prefix, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes (etcd's default request size limit is 1.5 MiB).
pub const MAX_VALUE_LEN: usize = 1536 * 1024;
/// Most compares, and most operations per branch, in one transaction (etcd's default).
pub const MAX_TXN_OPS: usize = 128;

/// Checks `key` against the key rules in the module docs.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    check_common(key)?;
    if key.len() > 1 && key.ends_with('/') {
        return Err(invalid(key, "a key must not end with '/'"));
    }
    if key == "/" {
        return Err(invalid(key, "'/' is a prefix, not a key"));
    }
    Ok(())
}

/// Checks `prefix` against the prefix rules in the module docs.
pub fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    check_common(prefix)
}

/// Checks a value's size.
pub fn validate_value(key: &str, value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(StoreError::ValueTooLarge {
            key: key.to_owned(),
            len: value.len(),
            max: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

/// The smallest byte string greater than every string that starts with `prefix`, or `None`
/// when no such bound exists (all bytes `0xff`, impossible for UTF-8 but handled anyway).
/// Keys in the range of `prefix` are exactly those with `prefix <= key < prefix_end(prefix)`.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Whether `key` lies in the range selected by `prefix`.
pub fn in_prefix(key: &str, prefix: &str) -> bool {
    key.starts_with(prefix)
}

fn check_common(key: &str) -> Result<(), StoreError> {
    if !key.starts_with('/') {
        return Err(invalid(key, "must start with '/'"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid(key, "longer than the 1024-byte limit"));
    }
    if key.contains("//") {
        return Err(invalid(key, "must not contain an empty segment ('//')"));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid(key, "must not contain control characters"));
    }
    Ok(())
}

fn invalid(key: &str, reason: &'static str) -> StoreError {
    // Bound the echoed key so a hostile multi-megabyte key does not end up in logs.
    let shown: String = key.chars().take(MAX_KEY_LEN.min(128)).collect();
    StoreError::InvalidKey { key: shown, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["/a", "/vms/default/web1", "/x-y.z_0/é"] {
            validate_key(ok).unwrap();
        }
        for bad in ["", "a", "/", "/a/", "//a", "/a//b", "/a\nb", "/a\0b"] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("/{}", "a".repeat(MAX_KEY_LEN));
        assert!(validate_key(&long).is_err());
        assert!(validate_key(&long[..MAX_KEY_LEN]).is_ok());
    }

    #[test]
    fn prefixes() {
        for ok in ["/", "/vms/", "/vms/def"] {
            validate_prefix(ok).unwrap();
        }
        for bad in ["", "vms/", "//", "/a//"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefix_end_bounds() {
        assert_eq!(prefix_end(b"/a"), Some(b"/b".to_vec()));
        assert_eq!(prefix_end(b"/"), Some(b"0".to_vec()));
        assert_eq!(prefix_end(&[b'/', 0xff, 0xff]), Some(b"0".to_vec()));
        assert_eq!(prefix_end(&[0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn values() {
        validate_value("/a", &vec![0; MAX_VALUE_LEN]).unwrap();
        assert!(matches!(
            validate_value("/a", &vec![0; MAX_VALUE_LEN + 1]),
            Err(StoreError::ValueTooLarge { .. })
        ));
    }
}
