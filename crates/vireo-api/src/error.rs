//! The single error body of the API.

use serde::{Deserialize, Serialize};

/// Machine-readable error class; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    Conflict,
    InvalidRequest,
    InsufficientCapacity,
    Unavailable,
    Forbidden,
    Unauthorized,
    PreconditionFailed,
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::InvalidRequest => 400,
            ErrorCode::InsufficientCapacity => 507,
            ErrorCode::Unavailable => 503,
            ErrorCode::Forbidden => 403,
            ErrorCode::Unauthorized => 401,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InsufficientCapacity => "insufficient_capacity",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::Internal => "internal",
        }
    }
}

/// `{ "error": { "code": …, "message": … } }`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// Human-readable message, safe to show to the requester (internal detail is logged only).
    pub message: String,
    /// The request field the error is about, when there is one (UI forms show it there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
                field: None,
            },
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.error.field = Some(field.into());
        self
    }
}
