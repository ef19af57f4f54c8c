//! Long-running operations (`202 Accepted` bodies).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl OperationStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, OperationStatus::Running)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub percent: Option<f32>,
    pub bytes_done: Option<u64>,
    pub bytes_total: Option<u64>,
    /// Current step, human-readable.
    pub stage: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operation {
    pub id: Uuid,
    /// e.g. `vm.create`, `vm.start`, `image.build`.
    pub kind: String,
    /// Object the operation acts on (e.g. `vm/default/web1`).
    pub target: String,
    pub status: OperationStatus,
    pub progress: Progress,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Failure message when `status` is `failed`.
    pub error: Option<String>,
    /// Who asked (`unix:uid=0`, `token:NAME`).
    pub requestor: String,
    /// Steps taken, with timestamps.
    pub log: Vec<String>,
    /// Whether `DELETE /v1/operations/{id}` can cancel it.
    pub cancellable: bool,
}

/// `GET /v1/operations/{id}/wait`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait at most (default 60, at most 3600). The operation is returned as it is
    /// then, finished or not.
    pub timeout: Option<u64>,
}
