//! Where the daemon is: a unix socket path or an `https://host:port` endpoint.
//!
//! Invariants: a parsed [`Remote::Https`] always has a non-empty host and an explicit or
//! default (8443) port; a [`Remote::Unix`] path is never empty. Parsing is pure.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Socket the daemon listens on when nothing else is configured.
pub const DEFAULT_SOCKET: &str = "/run/vireo/vireo.sock";
/// Port used when an `https://` remote names none.
pub const DEFAULT_HTTPS_PORT: u16 = 8443;

/// Why a remote string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("remote {0:?} must start with `unix:` or `https://`")]
    Scheme(String),
    #[error("remote {0:?} names an empty socket path")]
    EmptyPath(String),
    #[error("remote {0:?} names no host")]
    EmptyHost(String),
    #[error("remote {0:?} has an invalid port")]
    Port(String),
    #[error("remote {0:?} must not contain a path, query or credentials")]
    Extra(String),
}

/// A daemon endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// Local daemon over a unix socket (no authentication).
    Unix(PathBuf),
    /// Remote daemon over TLS; `host` is a DNS name or an IP address (IPv6 without brackets).
    Https { host: String, port: u16 },
}

impl Remote {
    /// The remote used when the user gives none: `VIREO_REMOTE`, else `unix:` followed by
    /// `VIREO_SOCKET` or [`DEFAULT_SOCKET`]. Takes the variables as arguments to stay pure.
    pub fn from_env_values(
        vireo_remote: Option<&str>,
        vireo_socket: Option<&str>,
    ) -> Result<Remote, RemoteError> {
        match vireo_remote.filter(|s| !s.is_empty()) {
            Some(r) => r.parse(),
            None => Ok(Remote::Unix(PathBuf::from(
                vireo_socket
                    .filter(|s| !s.is_empty())
                    .unwrap_or(DEFAULT_SOCKET),
            ))),
        }
    }

    /// [`Remote::from_env_values`] with the process environment.
    pub fn from_env() -> Result<Remote, RemoteError> {
        let remote = std::env::var("VIREO_REMOTE").ok();
        let socket = std::env::var("VIREO_SOCKET").ok();
        Remote::from_env_values(remote.as_deref(), socket.as_deref())
    }

    /// Value of the `Host` header requests carry.
    pub fn host_header(&self) -> String {
        match self {
            // A unix socket has no authority; `localhost` is what HTTP servers expect.
            Remote::Unix(_) => "localhost".to_string(),
            Remote::Https { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Remote::Https { host, port } => format!("{host}:{port}"),
        }
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remote::Unix(p) => write!(f, "unix:{}", p.display()),
            Remote::Https { .. } => write!(f, "https://{}", self.host_header()),
        }
    }
}

impl FromStr for Remote {
    type Err = RemoteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            // Accept `unix:///run/x.sock` as well as `unix:/run/x.sock`.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(RemoteError::EmptyPath(s.to_string()));
            }
            return Ok(Remote::Unix(PathBuf::from(path)));
        }
        let Some(authority) = s.strip_prefix("https://") else {
            return Err(RemoteError::Scheme(s.to_string()));
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(RemoteError::Extra(s.to_string()));
        }
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            // IPv6 literal: `[::1]:8443` or `[::1]`.
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| RemoteError::EmptyHost(s.to_string()))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| RemoteError::Port(s.to_string()))?,
                ),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(RemoteError::EmptyHost(s.to_string()));
        }
        let port = match port {
            None => DEFAULT_HTTPS_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => return Err(RemoteError::Port(s.to_string())),
            },
        };
        Ok(Remote::Https {
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_and_https() {
        assert_eq!(
            "unix:/tmp/v.sock".parse(),
            Ok(Remote::Unix("/tmp/v.sock".into()))
        );
        assert_eq!(
            "unix:///tmp/v.sock".parse(),
            Ok(Remote::Unix("/tmp/v.sock".into()))
        );
        assert_eq!(
            "https://example.org:9000".parse(),
            Ok(Remote::Https {
                host: "example.org".into(),
                port: 9000
            })
        );
        assert_eq!(
            "https://10.0.0.1/".parse(),
            Ok(Remote::Https {
                host: "10.0.0.1".into(),
                port: DEFAULT_HTTPS_PORT
            })
        );
        assert_eq!(
            "https://[::1]:8444".parse(),
            Ok(Remote::Https {
                host: "::1".into(),
                port: 8444
            })
        );
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            "http://x".parse::<Remote>(),
            Err(RemoteError::Scheme(_))
        ));
        assert!(matches!(
            "unix:".parse::<Remote>(),
            Err(RemoteError::EmptyPath(_))
        ));
        assert!(matches!(
            "https://:80".parse::<Remote>(),
            Err(RemoteError::EmptyHost(_))
        ));
        assert!(matches!(
            "https://h:0".parse::<Remote>(),
            Err(RemoteError::Port(_))
        ));
        assert!(matches!(
            "https://h:99999".parse::<Remote>(),
            Err(RemoteError::Port(_))
        ));
        assert!(matches!(
            "https://u@h:1".parse::<Remote>(),
            Err(RemoteError::Extra(_))
        ));
        assert!(matches!(
            "https://h/v1".parse::<Remote>(),
            Err(RemoteError::Extra(_))
        ));
        assert!(matches!(
            "https://[::1]x".parse::<Remote>(),
            Err(RemoteError::Port(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "unix:/run/vireo/vireo.sock",
            "https://h:1",
            "https://[::1]:8443",
        ] {
            assert_eq!(s.parse::<Remote>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn environment_defaults() {
        assert_eq!(
            Remote::from_env_values(None, None),
            Ok(Remote::Unix(DEFAULT_SOCKET.into()))
        );
        assert_eq!(
            Remote::from_env_values(Some(""), Some("/tmp/s")),
            Ok(Remote::Unix("/tmp/s".into()))
        );
        assert_eq!(
            Remote::from_env_values(Some("https://h:2"), Some("/tmp/s")),
            Ok(Remote::Https {
                host: "h".into(),
                port: 2
            })
        );
    }
}
