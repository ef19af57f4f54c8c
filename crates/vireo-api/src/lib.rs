//! Bodies of Vireo's REST API (`/v1`), shared by the daemon, the client and (through the
//! generated OpenAPI document) the browser UI.
//!
//! Invariants:
//! - every request body rejects unknown fields (`deny_unknown_fields`) and validates names
//!   while deserializing (through [`vireo_types::Name`]);
//! - every error the API returns has the shape of [`ErrorBody`] and a [`ErrorCode`] that maps
//!   to exactly one HTTP status ([`ErrorCode::http_status`]);
//! - timestamps are RFC 3339 UTC.

pub mod error;
pub mod events;
pub mod host;
pub mod images;
pub mod networks;
pub mod operations;
pub mod projects;
pub mod snapshots;
pub mod storage;
pub mod tokens;
pub mod vms;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};

/// Query string accepted by project-scoped endpoints.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectQuery {
    /// Project name; `default` when omitted.
    pub project: Option<vireo_types::Name>,
}

/// Name of the project every installation has.
pub const DEFAULT_PROJECT: &str = "default";
