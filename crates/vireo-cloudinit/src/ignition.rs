//! Ignition (Fedora CoreOS, Flatcar) configs: validation and the QEMU `fw_cfg` argument.
//!
//! Ignition reads its config from the fw_cfg item `opt/com.coreos/config`. Vireo checks
//! the config before boot so a typo is a clear client error instead of a guest that stops
//! in the initramfs: it must be at most [`MAX_IGNITION_BYTES`], a JSON object, and carry
//! `ignition.version` as a `MAJOR.MINOR.PATCH[-experimental]` string with major 2 or 3.
//! The rest of the schema is Ignition's to enforce (it differs per spec version).

use std::path::Path;

/// Largest accepted config, in bytes.
pub const MAX_IGNITION_BYTES: usize = 1 << 20;
/// fw_cfg item name Ignition reads on QEMU.
pub const FW_CFG_NAME: &str = "opt/com.coreos/config";

/// What validation learned about a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnitionInfo {
    /// `ignition.version`, e.g. `3.4.0`.
    pub version: String,
}

/// Why a config or its path is rejected.
#[derive(Debug, thiserror::Error)]
pub enum IgnitionError {
    #[error("Ignition config is {size} bytes, more than the {MAX_IGNITION_BYTES} allowed")]
    TooLarge { size: usize },
    #[error("Ignition config is not valid JSON")]
    NotJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("Ignition config must be a JSON object")]
    NotAnObject,
    #[error(
        "Ignition config has no \"ignition\": {{\"version\": …}} (required by every spec version)"
    )]
    MissingVersion,
    #[error("Ignition config's ignition.version must be a string like \"3.4.0\"")]
    VersionNotString,
    #[error("Ignition config's ignition.version {version:?} is not a supported spec version (2.x.y or 3.x.y)")]
    UnsupportedVersion { version: String },
    #[error("fw_cfg file path {path:?} must be absolute and valid UTF-8")]
    Path { path: String },
}

/// Validates `config` (rules in the module docs).
pub fn validate_ignition(config: &[u8]) -> Result<IgnitionInfo, IgnitionError> {
    if config.len() > MAX_IGNITION_BYTES {
        return Err(IgnitionError::TooLarge { size: config.len() });
    }
    // serde_json limits nesting depth (128), so hostile input cannot exhaust the stack.
    let value: serde_json::Value =
        serde_json::from_slice(config).map_err(|source| IgnitionError::NotJson { source })?;
    let object = value.as_object().ok_or(IgnitionError::NotAnObject)?;
    let version = object
        .get("ignition")
        .and_then(|i| i.as_object())
        .and_then(|i| i.get("version"))
        .ok_or(IgnitionError::MissingVersion)?;
    let version = version.as_str().ok_or(IgnitionError::VersionNotString)?;
    if !is_supported_version(version) {
        return Err(IgnitionError::UnsupportedVersion {
            version: version.into(),
        });
    }
    Ok(IgnitionInfo {
        version: version.into(),
    })
}

fn is_supported_version(version: &str) -> bool {
    let core = version.strip_suffix("-experimental").unwrap_or(version);
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
    parts.len() == 3 && parts.iter().all(numeric) && matches!(parts[0], "2" | "3")
}

/// QEMU arguments that hand the config file at `path` to Ignition:
/// `["-fw_cfg", "name=opt/com.coreos/config,file=PATH"]`, with commas in the path doubled
/// as QEMU's option syntax requires. The path must be absolute (QEMU's working directory is
/// not the caller's business) and valid UTF-8.
pub fn fw_cfg_args(path: &Path) -> Result<[String; 2], IgnitionError> {
    let text = path
        .to_str()
        .filter(|_| path.is_absolute())
        .ok_or_else(|| IgnitionError::Path {
            path: path.to_string_lossy().into_owned(),
        })?;
    Ok([
        "-fw_cfg".to_string(),
        format!("name={FW_CFG_NAME},file={}", text.replace(',', ",,")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_versioned_configs() {
        let info = validate_ignition(br#"{"ignition":{"version":"3.4.0"},"storage":{}}"#).unwrap();
        assert_eq!(info.version, "3.4.0");
        assert!(validate_ignition(br#"{"ignition":{"version":"2.3.0"}}"#).is_ok());
        assert!(validate_ignition(br#"{"ignition":{"version":"3.5.0-experimental"}}"#).is_ok());
    }

    #[test]
    fn rejects_with_clear_errors() {
        let cases: [(&[u8], &str); 7] = [
            (b"{", "Ignition config is not valid JSON"),
            (b"variant: fcos\n", "Ignition config is not valid JSON"),
            (b"[]", "Ignition config must be a JSON object"),
            (b"{}", "Ignition config has no \"ignition\": {\"version\": …} (required by every spec version)"),
            (br#"{"ignition":{"version":3}}"#, "Ignition config's ignition.version must be a string like \"3.4.0\""),
            (br#"{"ignition":{"version":"4.0.0"}}"#, "Ignition config's ignition.version \"4.0.0\" is not a supported spec version (2.x.y or 3.x.y)"),
            (br#"{"ignition":{"version":"3.x"}}"#, "Ignition config's ignition.version \"3.x\" is not a supported spec version (2.x.y or 3.x.y)"),
        ];
        for (input, message) in cases {
            assert_eq!(validate_ignition(input).unwrap_err().to_string(), message);
        }
        let big = vec![b' '; MAX_IGNITION_BYTES + 1];
        assert!(matches!(
            validate_ignition(&big),
            Err(IgnitionError::TooLarge { .. })
        ));
        let deep = "[".repeat(10_000);
        assert!(matches!(
            validate_ignition(deep.as_bytes()),
            Err(IgnitionError::NotJson { .. })
        ));
    }

    #[test]
    fn fw_cfg_argument() {
        let args = fw_cfg_args(Path::new("/var/lib/vireo/vms/a,b/ignition.json")).unwrap();
        assert_eq!(
            args,
            [
                "-fw_cfg".to_string(),
                "name=opt/com.coreos/config,file=/var/lib/vireo/vms/a,,b/ignition.json".to_string()
            ]
        );
        assert!(fw_cfg_args(Path::new("relative.ign")).is_err());
    }
}
