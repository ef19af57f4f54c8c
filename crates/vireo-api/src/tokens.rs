//! API tokens for the TCP listener.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vireo_types::Name;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: Name,
}

/// A token as listed (never with its secret).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub name: Name,
    pub created_at: DateTime<Utc>,
}

/// Returned once by `POST /v1/tokens`: the secret is not stored and cannot be shown again.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenCreated {
    pub name: Name,
    pub created_at: DateTime<Utc>,
    pub secret: String,
}
