//! Engine errors, each mapping to one API error code. Messages are safe to show to clients;
//! `Internal` keeps its cause for the log only.

use vireo_api::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("revision {expected} does not match the current revision {actual}")]
    Precondition { expected: u64, actual: u64 },
    #[error("internal error while {context}")]
    Internal {
        context: String,
        #[source]
        source: anyhow::Error,
    },
}

impl EngineError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn internal(context: impl Into<String>, source: impl Into<anyhow::Error>) -> Self {
        EngineError::Internal {
            context: context.into(),
            source: source.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::NotFound { .. } => ErrorCode::NotFound,
            EngineError::Conflict(_) => ErrorCode::Conflict,
            EngineError::Invalid { .. } => ErrorCode::InvalidRequest,
            EngineError::Unavailable(_) => ErrorCode::Unavailable,
            EngineError::Precondition { .. } => ErrorCode::PreconditionFailed,
            EngineError::Internal { .. } => ErrorCode::Internal,
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            EngineError::Invalid { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

/// Full cause chain, for logs.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
