//! The client's error type.
//!
//! Each variant names the failed step and carries its context (remote, method, path); the
//! underlying cause is the `#[source]`, never repeated in the message, so printing the chain
//! (`msg: cause: cause`) reads as one sentence.

use std::time::Duration;

use vireo_api::ErrorCode;

use crate::remote::RemoteError;
use crate::tls::TlsConfigError;

/// A boxed cause from a body or upgrade layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid remote")]
    Remote(#[from] RemoteError),
    #[error("TLS set-up failed")]
    TlsConfig(#[from] TlsConfigError),
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("invalid {what}: it contains characters not allowed in an HTTP header")]
    HeaderValue { what: &'static str },
    #[error("cannot connect to {remote}")]
    Connect {
        remote: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {remote} failed")]
    TlsHandshake {
        remote: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the TLS certificate of {remote} (SHA-256 {presented}) does not match the pinned fingerprint"
    )]
    PinMismatch {
        remote: String,
        presented: crate::tls::Fingerprint,
    },
    #[error("{method} {path} on {remote} failed")]
    Http {
        remote: String,
        method: String,
        path: String,
        #[source]
        source: BoxError,
    },
    /// The daemon answered with an error body.
    #[error("{message} ({code}, HTTP {status})", code = code.as_str())]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
        /// Request field the error is about, when the daemon names one.
        field: Option<String>,
    },
    /// An error status without a decodable error body (e.g. a proxy in between).
    #[error("{method} {path} returned HTTP {status}: {snippet:?}")]
    UnexpectedStatus {
        method: String,
        path: String,
        status: u16,
        snippet: String,
    },
    #[error("cannot encode the request body")]
    Encode(#[source] serde_json::Error),
    #[error("cannot decode the response to {method} {path}")]
    Decode {
        method: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the response to {method} {path} is larger than {limit} bytes")]
    TooLarge {
        method: String,
        path: String,
        limit: usize,
    },
    #[error("file {path}")]
    LocalFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} timed out after {}", humanize(*after))]
    Timeout { what: String, after: Duration },
    #[error("websocket {path} failed")]
    WebSocket {
        path: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("cannot decode an event from the events stream")]
    DecodeEvent(#[source] serde_json::Error),
}

impl ClientError {
    /// The API error code, when the daemon returned an error body.
    pub fn api_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the error is the daemon's `not_found`.
    pub fn is_not_found(&self) -> bool {
        self.api_code() == Some(ErrorCode::NotFound)
    }
}

/// `90s`, `2m30s`, `250ms`: short and exact enough for messages.
pub(crate) fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanized_durations() {
        assert_eq!(humanize(Duration::from_millis(250)), "250ms");
        assert_eq!(humanize(Duration::from_secs(5)), "5s");
        assert_eq!(humanize(Duration::from_secs(150)), "2m30s");
        assert_eq!(humanize(Duration::from_secs(600)), "10m");
        assert_eq!(humanize(Duration::from_secs(3600)), "60m");
    }

    #[test]
    fn api_error_display() {
        let e = ClientError::Api {
            status: 404,
            code: ErrorCode::NotFound,
            message: "VM web1 does not exist".into(),
            field: None,
        };
        assert_eq!(
            e.to_string(),
            "VM web1 does not exist (not_found, HTTP 404)"
        );
        assert!(e.is_not_found());
    }
}
