//! Events streamed by `GET /v1/events` (websocket, one JSON object per text message).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Monotonic sequence number within one daemon run.
    pub seq: u64,
    pub timestamp: DateTime<Utc>,
    /// `vm.created`, `vm.state`, `vm.deleted`, `vm.guest_ready`, `operation`, `image`, …
    pub kind: String,
    pub project: Option<String>,
    /// Object the event is about (e.g. `vm/default/web1`).
    pub target: String,
    /// Who caused it (`unix:uid=0`, `token:NAME`, `system`).
    pub requestor: String,
    /// Event-specific details.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Comma-separated kinds to receive (default: all).
    pub kinds: Option<String>,
}
