//! Object names (VMs, images, projects, networks, pools, snapshots).
//!
//! A valid name is 1–63 characters of lowercase ASCII letters, digits and `-`, starts with a
//! letter and does not end with `-` (a DNS label, as Incus and Kubernetes use). This makes every
//! name safe as a file-name component, a hostname and a QEMU id: no `/`, no `.`, no NUL.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted name, in characters.
pub const MAX_NAME_LEN: usize = 63;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name must not be empty")]
    Empty,
    #[error("name is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong { len: usize },
    #[error("name must start with a lowercase letter (got {first:?})")]
    BadStart { first: char },
    #[error("name must not end with '-'")]
    TrailingHyphen,
    #[error("name may only contain lowercase letters, digits and '-' (found {found:?})")]
    BadCharacter { found: char },
}

/// Checks `s` against the naming rule described in the module docs.
pub fn validate_name(s: &str) -> Result<(), NameError> {
    let len = s.chars().count();
    let Some(first) = s.chars().next() else {
        return Err(NameError::Empty);
    };
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong { len });
    }
    if !first.is_ascii_lowercase() {
        return Err(NameError::BadStart { first });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadCharacter { found });
    }
    if s.ends_with('-') {
        return Err(NameError::TrailingHyphen);
    }
    Ok(())
}

/// A validated object name. Construct with [`Name::new`] or by deserializing.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", example = "web1")]
pub struct Name(String);

impl Name {
    /// Validates and wraps `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        validate_name(&s)?;
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::new(s)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "web1", "web-1", "a-b-c", &"a".repeat(63)] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_hostile_and_malformed_names() {
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("../x", NameError::BadStart { first: '.' }),
            ("a/b", NameError::BadCharacter { found: '/' }),
            ("a.b", NameError::BadCharacter { found: '.' }),
            ("Web", NameError::BadStart { first: 'W' }),
            ("1web", NameError::BadStart { first: '1' }),
            ("web-", NameError::TrailingHyphen),
            ("we b", NameError::BadCharacter { found: ' ' }),
            ("a\0", NameError::BadCharacter { found: '\0' }),
        ];
        for (input, want) in cases {
            assert_eq!(validate_name(input).unwrap_err(), *want, "{input:?}");
        }
        assert_eq!(
            validate_name(&"a".repeat(300)).unwrap_err(),
            NameError::TooLong { len: 300 }
        );
    }

    #[test]
    fn deserialization_validates() {
        assert!(serde_json::from_str::<Name>("\"ok\"").is_ok());
        let err = serde_json::from_str::<Name>("\"../etc\"").unwrap_err();
        assert!(err
            .to_string()
            .contains("must start with a lowercase letter"));
    }
}
