//! Projects: name spaces for VMs (and later networks, quotas).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vireo_types::Name;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectInfo {
    pub name: Name,
    pub created_at: DateTime<Utc>,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    pub name: Name,
    #[serde(default)]
    pub description: String,
}
