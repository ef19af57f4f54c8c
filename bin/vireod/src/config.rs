//! Daemon configuration: a TOML file (unknown keys rejected) overlaid by environment variables
//! and command-line flags (flags win). Pure parsing and merging, unit-tested.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/vireo";
pub const DEFAULT_SOCKET: &str = "/run/vireo/vireo.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Accelerator policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelPolicy {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl AccelPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            AccelPolicy::Auto => "auto",
            AccelPolicy::Kvm => "kvm",
            AccelPolicy::Tcg => "tcg",
        }
    }
}

impl std::str::FromStr for AccelPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AccelPolicy::Auto),
            "kvm" => Ok(AccelPolicy::Kvm),
            "tcg" => Ok(AccelPolicy::Tcg),
            other => Err(format!("accel must be auto, kvm or tcg (got {other:?})")),
        }
    }
}

/// The file's shape. Every field optional; unknown fields are an error.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    /// TCP listener (`ADDR:PORT`); needs TLS and API tokens.
    pub listen: Option<String>,
    pub node: Option<String>,
    pub accel: Option<AccelPolicy>,
    pub qemu_binary: Option<PathBuf>,
    /// Cache for image builders (downloaded packages); default `<state_dir>/cache`.
    pub image_cache_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `[network]`: managed networks.
    pub network: Option<NetworkFileConfig>,
}

/// The `[network]` section.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkFileConfig {
    /// Manage bridges, taps, nftables and dnsmasq (default true). Off: only QEMU's `user`
    /// network exists and the daemon touches no host networking at all.
    pub managed: Option<bool>,
    /// Create the `default` nat network on first start (default true).
    pub default_network: Option<bool>,
    /// Masquerade interface of nat networks (default: the default route's interface).
    pub uplink: Option<String>,
    /// Start Vireo's own Open vSwitch (userspace datapath) when installed (default true).
    pub ovs: Option<bool>,
}

/// Effective `[network]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub managed: bool,
    pub default_network: bool,
    pub uplink: Option<String>,
    pub ovs: bool,
}

/// Flags and environment overrides.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub listen: Option<String>,
    pub node: Option<String>,
    pub accel: Option<AccelPolicy>,
}

/// Effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub node: String,
    pub accel: AccelPolicy,
    pub qemu_binary: PathBuf,
    pub image_cache_dir: PathBuf,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub network: NetworkConfig,
}

pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(path, &text)
}

/// Merges defaults < file < overrides.
pub fn resolve(file: FileConfig, o: Overrides, hostname: &str) -> Result<Config, ConfigError> {
    let state_dir = o
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    if !state_dir.is_absolute() {
        return Err(ConfigError::Invalid {
            key: "state_dir",
            message: "must be an absolute path".into(),
        });
    }
    let socket = o
        .socket
        .or(file.socket)
        .unwrap_or_else(|| DEFAULT_SOCKET.into());
    if socket.as_os_str().len() >= 108 {
        return Err(ConfigError::Invalid {
            key: "socket",
            message: "path is too long for a unix socket (max 107 bytes)".into(),
        });
    }
    let listen = match o.listen.or(file.listen) {
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| ConfigError::Invalid {
            key: "listen",
            message: format!("{s:?}: {e}"),
        })?),
        None => None,
    };
    let node = o.node.or(file.node).unwrap_or_else(|| hostname.to_string());
    if node.is_empty()
        || node.len() > 63
        || !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(ConfigError::Invalid {
            key: "node",
            message: format!("{node:?} must be 1-63 letters, digits, '-' or '.'"),
        });
    }
    if file.tls_cert.is_some() != file.tls_key.is_some() {
        return Err(ConfigError::Invalid {
            key: "tls_cert",
            message: "tls_cert and tls_key must be given together".into(),
        });
    }
    let net = file.network.unwrap_or_default();
    if let Some(u) = &net.uplink {
        let ok = !u.is_empty()
            && u.len() <= 15
            && !u.starts_with('-')
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(ConfigError::Invalid {
                key: "network.uplink",
                message: format!("{u:?} is not an interface name"),
            });
        }
    }
    let network = NetworkConfig {
        managed: net.managed.unwrap_or(true),
        default_network: net.default_network.unwrap_or(true),
        uplink: net.uplink,
        ovs: net.ovs.unwrap_or(true),
    };
    let image_cache_dir = file
        .image_cache_dir
        .unwrap_or_else(|| state_dir.join("cache"));
    Ok(Config {
        socket,
        listen,
        node,
        accel: o.accel.or(file.accel).unwrap_or_default(),
        qemu_binary: file
            .qemu_binary
            .unwrap_or_else(|| "qemu-system-x86_64".into()),
        image_cache_dir,
        tls_cert: file.tls_cert,
        tls_key: file.tls_key,
        state_dir,
        network,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = resolve(FileConfig::default(), Overrides::default(), "host1").unwrap();
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.node, "host1");
        assert_eq!(c.accel, AccelPolicy::Auto);
        assert_eq!(c.listen, None);
        assert_eq!(c.image_cache_dir, PathBuf::from("/var/lib/vireo/cache"));
        assert!(c.network.managed && c.network.default_network && c.network.ovs);
    }

    #[test]
    fn network_section() {
        let f = parse_file(
            Path::new("c"),
            "[network]\nmanaged = false\ndefault_network = false\nuplink = \"veth0\"\n",
        )
        .unwrap();
        let c = resolve(f, Overrides::default(), "h").unwrap();
        assert!(!c.network.managed && !c.network.default_network);
        assert_eq!(c.network.uplink.as_deref(), Some("veth0"));
        assert!(parse_file(Path::new("c"), "[network]\nmanagd = false\n").is_err());
        let f = parse_file(Path::new("c"), "[network]\nuplink = \"a b\"\n").unwrap();
        assert!(matches!(
            resolve(f, Overrides::default(), "h"),
            Err(ConfigError::Invalid {
                key: "network.uplink",
                ..
            })
        ));
    }

    #[test]
    fn file_then_overrides() {
        let f = parse_file(
            Path::new("x"),
            "state_dir = \"/srv/v\"\naccel = \"tcg\"\nlisten = \"127.0.0.1:8443\"\n",
        )
        .unwrap();
        let c = resolve(
            f,
            Overrides {
                state_dir: Some("/o".into()),
                ..Default::default()
            },
            "h",
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/o"));
        assert_eq!(c.accel, AccelPolicy::Tcg);
        assert_eq!(c.listen, Some("127.0.0.1:8443".parse().unwrap()));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let e = parse_file(Path::new("c.toml"), "stat_dir = \"/x\"\n").unwrap_err();
        assert!(format!("{:?}", e).contains("unknown field"));
        assert!(parse_file(Path::new("c"), "accel = \"fast\"\n").is_err());
        let f = parse_file(Path::new("c"), "listen = \"nope\"\n").unwrap();
        assert!(matches!(
            resolve(f, Overrides::default(), "h"),
            Err(ConfigError::Invalid { key: "listen", .. })
        ));
        let f = parse_file(Path::new("c"), "state_dir = \"rel\"\n").unwrap();
        assert!(resolve(f, Overrides::default(), "h").is_err());
        let f = parse_file(Path::new("c"), "tls_cert = \"/c.pem\"\n").unwrap();
        assert!(resolve(f, Overrides::default(), "h").is_err());
    }
}
