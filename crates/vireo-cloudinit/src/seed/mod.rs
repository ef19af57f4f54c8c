//! NoCloud seed rendering: a [`SeedInput`] (what the VM spec and CLI flags say) becomes the
//! files cloud-init reads from the `cidata` volume.
//!
//! Files:
//! - `meta-data`: `instance-id` and `local-hostname` (always);
//! - `user-data` (always, cloud-init's NoCloud requires it):
//!   - no user document: a generated `#cloud-config` with `hostname` and, when keys were
//!     given, `ssh_authorized_keys`;
//!   - a user document and no SSH keys: the user's document, byte for byte (the hostname
//!     reaches the guest through `meta-data`);
//!   - a user document and SSH keys: a MIME multipart document combining the user's document
//!     unchanged with the generated `#cloud-config`, merged by cloud-init with
//!     [`crate::userdata::MERGE_HOW`]: the user's keys win, the SSH keys are appended to the
//!     user's `ssh_authorized_keys`, `hostname` is added only if the user did not set one
//!     (see [`crate::userdata::combine_with_generated`]);
//! - `network-config`: the user's document (validated) when given, else version 2 derived from
//!   [`SeedInput::nics`] (see [`network`]), omitted when there are neither;
//! - `vendor-data`: the given document (validated like user-data), omitted when absent.
//!
//! Invariants: rendering is pure; every input is validated before output is produced; every
//! output file is at most [`crate::MAX_SEED_FILE_BYTES`]; user-provided documents are never
//! rewritten (only wrapped); user-data is never logged.

pub mod network;
pub mod ssh;

use std::fmt::Write as _;

pub use network::{IpPrefix, NicSeed};

use crate::iso9660::{self, IsoFile, IsoImage, IsoTimestamp, IsoWriteError};
use crate::userdata::{self, UserDataError, UserDataFormat};
use crate::yaml::quote;
use crate::MAX_SEED_FILE_BYTES;
use network::NetworkError;
use ssh::SshKeyError;

/// Volume label cloud-init's NoCloud datasource looks for.
pub const SEED_VOLUME_ID: &str = "cidata";
/// Most SSH keys one seed carries.
pub const MAX_SSH_KEYS: usize = 256;
/// Longest instance-id.
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// Everything a NoCloud seed is made from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeedInput {
    /// cloud-init runs its once-per-instance modules again when this changes (give clones a
    /// fresh one): 1–128 characters of `a-z A-Z 0-9 . _ : -`.
    pub instance_id: String,
    /// Host name (RFC 1123; may be a fully qualified name), written as `local-hostname`.
    pub hostname: String,
    /// The user's own user-data (any format cloud-init knows), if any.
    pub user_data: Option<String>,
    /// `authorized_keys` lines for the default user.
    pub ssh_authorized_keys: Vec<String>,
    pub vendor_data: Option<String>,
    /// The user's own network-config; when set, [`SeedInput::nics`] is not rendered.
    pub network_config: Option<String>,
    pub nics: Vec<NicSeed>,
}

/// The rendered seed files (text, as written into the volume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: Option<String>,
    pub vendor_data: Option<String>,
}

/// Why a seed cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("instance-id {instance_id:?} must be 1 to {MAX_INSTANCE_ID_LEN} characters of a-z, A-Z, 0-9, '.', '_', ':' and '-'")]
    InstanceId { instance_id: String },
    #[error("hostname {hostname:?} is not a valid RFC 1123 host name: {reason}")]
    Hostname {
        hostname: String,
        reason: &'static str,
    },
    #[error("{count} SSH keys given, at most {MAX_SSH_KEYS}")]
    TooManySshKeys { count: usize },
    #[error("SSH key #{index} is invalid")]
    SshKey {
        /// 1-based position in [`SeedInput::ssh_authorized_keys`].
        index: usize,
        #[source]
        source: SshKeyError,
    },
    #[error("user-data is invalid")]
    UserData {
        #[source]
        source: UserDataError,
    },
    #[error("vendor-data is invalid")]
    VendorData {
        #[source]
        source: UserDataError,
    },
    #[error("network configuration is invalid")]
    Network {
        #[source]
        source: NetworkError,
    },
    #[error("generated {file} would be {size} bytes, more than the {MAX_SEED_FILE_BYTES} allowed")]
    OutputTooLarge { file: &'static str, size: usize },
}

/// Validates `input` and renders the seed files (rules in the module docs).
pub fn render_seed(input: &SeedInput) -> Result<SeedFiles, SeedError> {
    validate_instance_id(&input.instance_id)?;
    validate_hostname(&input.hostname)?;
    if input.ssh_authorized_keys.len() > MAX_SSH_KEYS {
        return Err(SeedError::TooManySshKeys {
            count: input.ssh_authorized_keys.len(),
        });
    }
    let keys = input
        .ssh_authorized_keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            ssh::validate_ssh_key(k).map_err(|source| SeedError::SshKey {
                index: i + 1,
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let meta_data = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        quote(&input.instance_id),
        quote(&input.hostname)
    );

    let generated_body = generated_cloud_config_body(&input.hostname, &keys);
    let user_data = match &input.user_data {
        None => format!("#cloud-config\n{generated_body}"),
        Some(user) if keys.is_empty() => {
            userdata::validate(user).map_err(|source| SeedError::UserData { source })?;
            user.clone()
        }
        Some(user) => userdata::combine_with_generated(user, &generated_body)
            .map_err(|source| SeedError::UserData { source })?,
    };

    let vendor_data = match &input.vendor_data {
        None => None,
        Some(v) => {
            let format =
                userdata::validate(v).map_err(|source| SeedError::VendorData { source })?;
            if format == UserDataFormat::Unknown {
                tracing::warn!("vendor-data has no format cloud-init recognises; it will be ignored by the guest");
            }
            Some(v.clone())
        }
    };
    if let Some(user) = &input.user_data {
        if UserDataFormat::detect(user) == UserDataFormat::Unknown {
            tracing::warn!(
                "user-data has no format cloud-init recognises; it will be ignored by the guest"
            );
        }
    }

    let network_config = match &input.network_config {
        Some(text) => {
            network::validate_network_config(text)
                .map_err(|source| SeedError::Network { source })?;
            Some(text.clone())
        }
        None => network::render_network_config(&input.nics)
            .map_err(|source| SeedError::Network { source })?,
    };

    for (file, text) in [
        ("meta-data", Some(&meta_data)),
        ("user-data", Some(&user_data)),
        ("network-config", network_config.as_ref()),
    ] {
        let size = text.map_or(0, |t| t.len());
        if size > MAX_SEED_FILE_BYTES {
            return Err(SeedError::OutputTooLarge { file, size });
        }
    }
    Ok(SeedFiles {
        meta_data,
        user_data,
        network_config,
        vendor_data,
    })
}

/// The generated `#cloud-config` keys (without the header line).
fn generated_cloud_config_body(hostname: &str, keys: &[String]) -> String {
    let mut body = format!("hostname: {}\n", quote(hostname));
    if !keys.is_empty() {
        body.push_str("ssh_authorized_keys:\n");
        for k in keys {
            let _ = writeln!(body, "  - {}", quote(k));
        }
    }
    body
}

fn validate_instance_id(id: &str) -> Result<(), SeedError> {
    let ok = (1..=MAX_INSTANCE_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SeedError::InstanceId {
            instance_id: id.into(),
        })
    }
}

/// RFC 1123 host name: dot-separated labels of 1–63 letters, digits and hyphens, not
/// starting or ending with a hyphen, at most 253 characters in all, no trailing dot.
pub fn validate_hostname(hostname: &str) -> Result<(), SeedError> {
    let fail = |reason| {
        Err(SeedError::Hostname {
            hostname: hostname.into(),
            reason,
        })
    };
    if hostname.is_empty() {
        return fail("it is empty");
    }
    if hostname.len() > 253 {
        return fail("it is longer than 253 characters");
    }
    for label in hostname.split('.') {
        if label.is_empty() {
            return fail("it has an empty label (leading, trailing or double dot)");
        }
        if label.len() > 63 {
            return fail("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return fail("only letters, digits, hyphens and dots are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail("a label starts or ends with a hyphen");
        }
    }
    Ok(())
}

impl SeedFiles {
    /// The files as an ISO image description: volume `cidata`, files `meta-data`,
    /// `user-data`, then `network-config` and `vendor-data` when present.
    pub fn iso_image(&self, recorded_at: IsoTimestamp) -> IsoImage {
        let mut files = vec![
            IsoFile {
                name: "meta-data".into(),
                data: self.meta_data.as_bytes().to_vec(),
            },
            IsoFile {
                name: "user-data".into(),
                data: self.user_data.as_bytes().to_vec(),
            },
        ];
        for (name, text) in [
            ("network-config", &self.network_config),
            ("vendor-data", &self.vendor_data),
        ] {
            if let Some(text) = text {
                files.push(IsoFile {
                    name: name.into(),
                    data: text.as_bytes().to_vec(),
                });
            }
        }
        IsoImage {
            volume_id: SEED_VOLUME_ID.into(),
            recorded_at,
            files,
        }
    }

    /// The seed volume's bytes (see [`iso9660::write_iso`]).
    pub fn to_iso(&self, recorded_at: IsoTimestamp) -> Result<Vec<u8>, IsoWriteError> {
        iso9660::write_iso(&self.iso_image(recorded_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["web1", "a", "web-1.example.com", "1host", &"a".repeat(63)] {
            assert!(validate_hostname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a.",
            "a_b",
            "héllo",
            &"a".repeat(64),
        ] {
            assert!(validate_hostname(bad).is_err(), "{bad}");
        }
        let long = vec!["abcdefg"; 40].join(".");
        assert!(validate_hostname(&long).is_err());
    }

    fn base() -> SeedInput {
        SeedInput {
            instance_id: "iid-1".into(),
            hostname: "h1".into(),
            ..SeedInput::default()
        }
    }

    #[test]
    fn minimal_seed() {
        let files = render_seed(&base()).unwrap();
        assert_eq!(
            files.meta_data,
            "instance-id: \"iid-1\"\nlocal-hostname: \"h1\"\n"
        );
        assert_eq!(files.user_data, "#cloud-config\nhostname: \"h1\"\n");
        assert_eq!(files.network_config, None);
        assert_eq!(files.vendor_data, None);
    }

    #[test]
    fn user_data_without_keys_passes_through_unchanged() {
        for doc in [
            "#cloud-config\n# c\nruncmd: [ls]\n",
            "#!/bin/sh\necho hi\n",
            "plain text\n",
        ] {
            let input = SeedInput {
                user_data: Some(doc.into()),
                ..base()
            };
            assert_eq!(render_seed(&input).unwrap().user_data, doc);
        }
    }

    #[test]
    fn errors_name_the_failing_piece() {
        let key = ssh::tests::fake_key("ssh-ed25519", "k");
        let msg = |input: SeedInput| render_seed(&input).unwrap_err().to_string();
        assert_eq!(
            msg(SeedInput {
                ssh_authorized_keys: vec![key.clone(), "ssh-rsa nope".into()],
                ..base()
            }),
            "SSH key #2 is invalid"
        );
        assert_eq!(
            msg(SeedInput {
                ssh_authorized_keys: vec![key.clone(); MAX_SSH_KEYS + 1],
                ..base()
            }),
            "257 SSH keys given, at most 256"
        );
        assert_eq!(
            msg(SeedInput {
                user_data: Some("#cloud-config\na: [\n".into()),
                ..base()
            }),
            "user-data is invalid"
        );
        assert_eq!(
            msg(SeedInput {
                user_data: Some("plain text\n".into()),
                ssh_authorized_keys: vec![key.clone()],
                ..base()
            }),
            "user-data is invalid"
        );
        assert_eq!(
            msg(SeedInput {
                vendor_data: Some("#cloud-config\n- x\n".into()),
                ..base()
            }),
            "vendor-data is invalid"
        );
        assert_eq!(
            msg(SeedInput {
                network_config: Some("ethernets: {}\n".into()),
                ..base()
            }),
            "network configuration is invalid"
        );
        assert_eq!(
            msg(SeedInput {
                hostname: "a_b".into(),
                ..base()
            }),
            "hostname \"a_b\" is not a valid RFC 1123 host name: only letters, digits, hyphens and dots are allowed"
        );
        // Many long keys: each is valid, the generated user-data is not.
        let long_key = ssh::tests::fake_key("ssh-ed25519", &"c".repeat(8000));
        assert_eq!(
            msg(SeedInput {
                ssh_authorized_keys: vec![long_key; 200],
                ..base()
            })
            .split(" would be")
            .next()
            .unwrap(),
            "generated user-data"
        );
    }

    #[test]
    fn instance_ids() {
        assert!(validate_instance_id("i-0123:abc.def_x").is_ok());
        assert!(validate_instance_id("").is_err());
        assert!(validate_instance_id("a b").is_err());
        assert!(validate_instance_id(&"a".repeat(129)).is_err());
    }
}
