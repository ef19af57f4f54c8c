//! YAML for seeds: validating untrusted documents without keeping them, and writing the
//! scalars of generated documents.
//!
//! Invariants:
//! - validation parses with serde-saphyr's default budget (depth, node, alias and anchor
//!   limits), so hostile documents (deep nesting, alias bombs) fail cleanly instead of
//!   exhausting memory or stack; duplicate mapping keys are rejected (YAML requires unique
//!   keys; PyYAML would silently keep the last one);
//! - generated documents never use plain scalars for text: [`quote`] writes double-quoted
//!   scalars that read back as the same string under both YAML 1.1 (PyYAML, which cloud-init
//!   uses) and YAML 1.2, so `"yes"`, `"0644"` or `"~"` stay strings.

use std::fmt::{self, Write as _};

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Why a document is not acceptable YAML for its purpose.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("not valid YAML")]
    Parse {
        #[source]
        source: serde_saphyr::Error,
    },
    #[error("the document's top level is {found}, expected {expected}")]
    TopLevel {
        found: TopLevel,
        expected: &'static str,
    },
}

/// The kind of a document's top-level node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopLevel {
    /// An empty document (or an explicit null).
    Null,
    Mapping,
    Sequence,
    Scalar,
}

impl fmt::Display for TopLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopLevel::Null => "empty",
            TopLevel::Mapping => "a mapping",
            TopLevel::Sequence => "a sequence",
            TopLevel::Scalar => "a scalar",
        })
    }
}

fn options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    // Comments are syntax-checked either way; nothing here needs their text.
    options.emit_comments = false;
    options
}

/// Parses `text` as one YAML document and returns the kind of its top-level node.
pub fn top_level(text: &str) -> Result<TopLevel, YamlError> {
    if text
        .trim()
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        // Only comments: YAML's empty document (cloud-init reads it as no configuration).
        return Ok(TopLevel::Null);
    }
    serde_saphyr::from_str_with_options::<Shape>(text, options())
        .map(|s| s.0)
        .map_err(|source| YamlError::Parse { source })
}

/// Parses `text` and requires a top-level mapping or an empty document.
pub fn expect_mapping_or_empty(text: &str) -> Result<TopLevel, YamlError> {
    match top_level(text)? {
        t @ (TopLevel::Mapping | TopLevel::Null) => Ok(t),
        found => Err(YamlError::TopLevel {
            found,
            expected: "a mapping",
        }),
    }
}

/// Deserializes `text` into `T` with the same limits as [`top_level`].
pub fn from_str<T: de::DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options::<T>(text, options())
        .map_err(|source| YamlError::Parse { source })
}

/// The top-level kind of a document; nested content is consumed and discarded.
struct Shape(TopLevel);

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor).map(Shape)
    }
}

struct ShapeVisitor;

macro_rules! scalar_visits {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<TopLevel, E> { Ok(TopLevel::Scalar) })*
    };
}

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    scalar_visits!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128,
        visit_u128: u128, visit_f64: f64, visit_str: &str, visit_bytes: &[u8], visit_char: char);

    fn visit_unit<E: de::Error>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<TopLevel, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Sequence)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Mapping)
    }
}

/// `s` as a YAML double-quoted scalar. Printable characters other than `"` and `\` are kept;
/// everything else is escaped (`\n`, `\t`, `\xNN`, `\uNNNN`, `\UNNNNNNNN`), escapes that YAML
/// 1.1 and 1.2 both define.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // C0/C1 controls, DEL, line/paragraph separators, BOM and non-characters are not
            // printable YAML characters inside a scalar.
            c if (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shapes() {
        assert_eq!(top_level("#cloud-config\n").unwrap(), TopLevel::Null);
        assert_eq!(top_level("").unwrap(), TopLevel::Null);
        assert_eq!(
            top_level("a: 1\nb: [x, {c: d}]\n").unwrap(),
            TopLevel::Mapping
        );
        assert_eq!(top_level("- a\n- b\n").unwrap(), TopLevel::Sequence);
        assert_eq!(top_level("hello\n").unwrap(), TopLevel::Scalar);
        assert_eq!(top_level("~\n").unwrap(), TopLevel::Null);
        assert_eq!(top_level("1: a\n? [x]\n: y\n").unwrap(), TopLevel::Mapping);
    }

    #[test]
    fn rejects_invalid_and_duplicate_keys() {
        assert!(matches!(
            top_level("a: [1, 2\n"),
            Err(YamlError::Parse { .. })
        ));
        assert!(matches!(
            top_level("a: 1\na: 2\n"),
            Err(YamlError::Parse { .. })
        ));
        assert!(matches!(
            top_level("a: b: c\n"),
            Err(YamlError::Parse { .. })
        ));
        let err = expect_mapping_or_empty("- a\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the document's top level is a sequence, expected a mapping"
        );
    }

    #[test]
    fn survives_alias_bombs_and_deep_nesting() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            bomb.push_str(&format!("l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(top_level(&bomb).is_err());
        let deep = "[".repeat(100_000);
        assert!(top_level(&deep).is_err());
        let deep_block: String = (0..5000)
            .map(|i| format!("{}- \n", " ".repeat(i * 2)))
            .collect();
        let _ = top_level(&deep_block);
    }

    #[test]
    fn quoting_examples() {
        assert_eq!(quote("yes"), "\"yes\"");
        assert_eq!(quote("a\"b\\c\nd\u{7}"), "\"a\\\"b\\\\c\\nd\\x07\"");
        assert_eq!(quote("\u{2028}"), "\"\\u2028\"");
    }

    proptest! {
        /// Quoted scalars read back as the same string.
        #[test]
        fn quote_round_trips(s in any::<String>()) {
            let doc = format!("k: {}\n", quote(&s));
            let back: std::collections::BTreeMap<String, String> = from_str(&doc).unwrap();
            prop_assert_eq!(back.get("k"), Some(&s));
        }

        /// Arbitrary text never panics the validator.
        #[test]
        fn validator_never_panics(s in "[ -~\\n\\t]{0,300}") {
            let _ = top_level(&s);
        }
    }
}
