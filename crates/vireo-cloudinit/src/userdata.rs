//! User-data and vendor-data: recognising their format the way cloud-init does, validating
//! what can be validated, and combining a user's document with Vireo's generated
//! `#cloud-config` without rewriting the user's bytes.
//!
//! Format detection follows cloud-init: a document is MIME multipart when `mime-version:`
//! occurs (any case) in its first 4096 bytes; otherwise its format is given by the longest
//! known prefix (`#cloud-config`, `#!`, `#include`, …) of the text with leading whitespace
//! removed, compared case-insensitively.
//!
//! Validation: `#cloud-config` must be one YAML document whose top level is a mapping (or
//! empty); `#cloud-config-archive` must be a YAML sequence; every document is at most
//! [`crate::MAX_SEED_FILE_BYTES`]. Other formats (scripts, boothooks, includes, Jinja
//! templates, MIME multipart, …) pass through unchanged.
//!
//! Combining ([`combine_with_generated`]): the result is a MIME multipart document whose first
//! part is the user's document, byte for byte (base64-encoded leaf part, or the user's own
//! multipart nested verbatim), and whose second part is the generated `#cloud-config` carrying
//! `merge_how: dict(no_replace, recurse_list) + list(append)`. cloud-init merges the parts in
//! order, so: keys the user set win (e.g. the user's `hostname`), lists are concatenated
//! (generated `ssh_authorized_keys` are appended to the user's), and generated keys the user
//! did not set are added. Scripts and other formats keep running exactly as they would alone.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::yaml::{self, TopLevel, YamlError};
use crate::MAX_SEED_FILE_BYTES;

/// How cloud-init will interpret a user-data (or vendor-data) document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserDataFormat {
    CloudConfig,
    CloudConfigArchive,
    CloudConfigJsonp,
    ShellScript,
    Boothook,
    Include,
    IncludeOnce,
    PartHandler,
    JinjaTemplate,
    MimeMultipart,
    /// No known prefix: cloud-init logs a warning and ignores the document.
    Unknown,
}

/// Prefixes cloud-init recognises (lower case) and the MIME type of each.
const PREFIXES: &[(&str, UserDataFormat, &str)] = &[
    (
        "#cloud-config-archive",
        UserDataFormat::CloudConfigArchive,
        "text/cloud-config-archive",
    ),
    (
        "#cloud-config-jsonp",
        UserDataFormat::CloudConfigJsonp,
        "text/cloud-config-jsonp",
    ),
    (
        "## template: jinja",
        UserDataFormat::JinjaTemplate,
        "text/jinja2",
    ),
    (
        "#cloud-boothook",
        UserDataFormat::Boothook,
        "text/cloud-boothook",
    ),
    (
        "#include-once",
        UserDataFormat::IncludeOnce,
        "text/x-include-once-url",
    ),
    (
        "#cloud-config",
        UserDataFormat::CloudConfig,
        "text/cloud-config",
    ),
    (
        "#part-handler",
        UserDataFormat::PartHandler,
        "text/part-handler",
    ),
    ("#include", UserDataFormat::Include, "text/x-include-url"),
    ("#!", UserDataFormat::ShellScript, "text/x-shellscript"),
];

/// How far into a document cloud-init looks for `mime-version:`.
const MIME_SNIFF_BYTES: usize = 4096;

impl UserDataFormat {
    /// Detects the format of `text` (see the module docs for the rules).
    pub fn detect(text: &str) -> Self {
        let head = &text.as_bytes()[..text.len().min(MIME_SNIFF_BYTES)];
        if head
            .to_ascii_lowercase()
            .windows(13)
            .any(|w| w == b"mime-version:")
        {
            return UserDataFormat::MimeMultipart;
        }
        let start = text.trim_start().as_bytes();
        PREFIXES
            .iter() // longest prefixes first, so `#cloud-config-archive` beats `#cloud-config`
            .find(|(prefix, _, _)| {
                start.len() >= prefix.len()
                    && start[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            })
            .map_or(UserDataFormat::Unknown, |(_, format, _)| *format)
    }

    /// The MIME type cloud-init gives this format (`None` for multipart and unknown).
    pub fn mime_type(self) -> Option<&'static str> {
        PREFIXES
            .iter()
            .find(|(_, format, _)| *format == self)
            .map(|(_, _, mime)| *mime)
    }
}

/// Why a user-data or vendor-data document is rejected.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    #[error("document is {size} bytes, more than the {MAX_SEED_FILE_BYTES} allowed")]
    TooLarge { size: usize },
    #[error("#cloud-config document is invalid")]
    CloudConfig {
        #[source]
        source: YamlError,
    },
    #[error("#cloud-config-archive document is invalid")]
    CloudConfigArchive {
        #[source]
        source: YamlError,
    },
    #[error("document has no format cloud-init recognises (it starts with neither '#cloud-config', '#!', another '#' marker nor MIME headers), so generated settings cannot be merged into it")]
    UnknownFormatCannotCombine,
    #[error("combined document is {size} bytes, more than the {MAX_SEED_FILE_BYTES} allowed")]
    CombinedTooLarge { size: usize },
}

/// Checks size and, for YAML formats, syntax and top-level shape; returns the format.
pub fn validate(text: &str) -> Result<UserDataFormat, UserDataError> {
    if text.len() > MAX_SEED_FILE_BYTES {
        return Err(UserDataError::TooLarge { size: text.len() });
    }
    let format = UserDataFormat::detect(text);
    match format {
        UserDataFormat::CloudConfig => {
            yaml::expect_mapping_or_empty(text)
                .map_err(|source| UserDataError::CloudConfig { source })?;
        }
        UserDataFormat::CloudConfigArchive => match yaml::top_level(text) {
            Ok(TopLevel::Sequence | TopLevel::Null) => {}
            Ok(found) => {
                return Err(UserDataError::CloudConfigArchive {
                    source: YamlError::TopLevel {
                        found,
                        expected: "a sequence",
                    },
                })
            }
            Err(source) => return Err(UserDataError::CloudConfigArchive { source }),
        },
        _ => {}
    }
    Ok(format)
}

/// `merge_how` of the generated part: keep the user's keys, recurse into lists that both
/// set, and append list items (cloud-init's documented merger syntax).
pub const MERGE_HOW: &str = "merge_how:\n  - name: list\n    settings: [append]\n  - name: dict\n    settings: [no_replace, recurse_list]\n";

/// Combines the user's validated document with a generated `#cloud-config` body (without its
/// header line; this function adds `#cloud-config` and [`MERGE_HOW`]) into one MIME multipart
/// document, as described in the module docs. Pure and deterministic.
pub fn combine_with_generated(user: &str, generated_body: &str) -> Result<String, UserDataError> {
    let format = validate(user)?;
    let generated = format!("#cloud-config\n{MERGE_HOW}{generated_body}");
    let boundary = boundary_for(user, &generated);
    let mut out = String::new();
    out.push_str(&format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n"
    ));
    out.push_str(&format!("--{boundary}\n"));
    match format {
        UserDataFormat::MimeMultipart => {
            // The user's headers become the part's headers; the newline before the next
            // delimiter belongs to the delimiter (RFC 2046 5.1.1).
            out.push_str(user);
            if !user.ends_with('\n') {
                out.push('\n');
            }
        }
        UserDataFormat::Unknown => return Err(UserDataError::UnknownFormatCannotCombine),
        known => {
            // Every format but multipart and unknown has a MIME type.
            let mime = known.mime_type().unwrap_or("text/plain");
            push_leaf_part(&mut out, mime, "user-data", user);
        }
    }
    out.push_str(&format!("--{boundary}\n"));
    push_leaf_part(&mut out, "text/cloud-config", "vireo-generated", &generated);
    out.push_str(&format!("--{boundary}--\n"));
    if out.len() > MAX_SEED_FILE_BYTES {
        return Err(UserDataError::CombinedTooLarge { size: out.len() });
    }
    Ok(out)
}

/// A text part with base64 transfer encoding: the payload's bytes survive any charset or
/// line-ending handling, and base64 lines can never look like a boundary delimiter.
fn push_leaf_part(out: &mut String, mime: &str, filename: &str, payload: &str) {
    out.push_str(&format!("Content-Type: {mime}; charset=\"utf-8\"\n"));
    out.push_str("MIME-Version: 1.0\n");
    out.push_str("Content-Transfer-Encoding: base64\n");
    out.push_str(&format!(
        "Content-Disposition: attachment; filename=\"{filename}\"\n\n"
    ));
    let encoded = base64::engine::general_purpose::STANDARD.encode(payload.as_bytes());
    for line in encoded.as_bytes().chunks(76) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
}

/// A boundary that occurs nowhere in the user's text (the only part not base64-encoded).
/// Candidates are hashes of the content and a counter; two distinct candidates of equal
/// length cannot start at the same position, so at most `user.len() + 1` are tried.
fn boundary_for(user: &str, generated: &str) -> String {
    let mut counter: u64 = 0;
    loop {
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(generated.as_bytes());
        h.update(counter.to_le_bytes());
        let candidate = format!("vireo-{}", &hex::encode(h.finalize())[..32]);
        if !user.contains(&candidate) {
            return candidate;
        }
        counter += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_like_cloud_init() {
        use UserDataFormat::*;
        let cases = [
            ("#cloud-config\na: 1\n", CloudConfig),
            ("  \n#Cloud-Config\n", CloudConfig),
            ("#cloud-config-archive\n- a\n", CloudConfigArchive),
            ("#cloud-config-jsonp\n[]\n", CloudConfigJsonp),
            ("#!/bin/sh\necho hi\n", ShellScript),
            ("#include\nhttp://x\n", Include),
            ("#include-once\nhttp://x\n", IncludeOnce),
            ("#cloud-boothook\n", Boothook),
            ("#part-handler\n", PartHandler),
            ("## template: jinja\n#cloud-config\n", JinjaTemplate),
            (
                "Content-Type: multipart/mixed; boundary=x\nMIME-Version: 1.0\n\n",
                MimeMultipart,
            ),
            ("hello\n", Unknown),
            ("", Unknown),
        ];
        for (text, want) in cases {
            assert_eq!(UserDataFormat::detect(text), want, "{text:?}");
        }
    }

    #[test]
    fn validates_yaml_formats_only() {
        assert!(validate("#cloud-config\nusers: [a\n").is_err());
        assert!(matches!(
            validate("#cloud-config\n- a\n"),
            Err(UserDataError::CloudConfig { .. })
        ));
        assert!(validate("#cloud-config\n").is_ok());
        assert!(matches!(
            validate("#cloud-config-archive\na: 1\n"),
            Err(UserDataError::CloudConfigArchive { .. })
        ));
        assert_eq!(
            validate("#!/bin/sh\n: [\n").unwrap(),
            UserDataFormat::ShellScript
        );
        let big = format!("#!/bin/sh\n{}", "x".repeat(MAX_SEED_FILE_BYTES));
        assert!(matches!(
            validate(&big),
            Err(UserDataError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_format_cannot_be_combined() {
        assert!(matches!(
            combine_with_generated("hello\n", "hostname: \"a\"\n"),
            Err(UserDataError::UnknownFormatCannotCombine)
        ));
    }

    #[test]
    fn boundary_avoids_user_text() {
        let first = boundary_for("x", "y");
        let user = format!("#!/bin/sh\n# {first}\n");
        let second = boundary_for(&user, "y");
        assert!(!user.contains(&second));
    }
}
