//! VM snapshots, clones and templates (`/v1/vms/{name}/snapshots`, `/clone`, `/template`).
//!
//! A snapshot captures every disk of a VM (qcow2 internal snapshots, taken atomically) and,
//! with `memory`, its RAM and device state so a restore resumes exactly there. Snapshots form
//! a tree: each has the snapshot the VM was at when it was taken as parent.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vireo_types::{Name, VmState};

/// Longest snapshot description.
pub const MAX_DESCRIPTION: usize = 1024;

/// `POST /v1/vms/{name}/snapshots`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    pub name: Name,
    /// Include RAM and device state (the VM must be running or paused); a restore then
    /// resumes exactly where the VM was.
    #[serde(default)]
    pub memory: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// `GET /v1/vms/{name}/snapshots`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotInfo {
    pub name: Name,
    pub created_at: DateTime<Utc>,
    /// The snapshot the VM was at when this one was taken.
    pub parent: Option<Name>,
    /// RAM and device state are included.
    pub memory: bool,
    /// What the VM was doing when the snapshot was taken.
    pub vm_state: VmState,
    /// The guest's filesystems were frozen through its agent while the disks were captured.
    pub fs_frozen: bool,
    /// Disks captured.
    pub disks: Vec<Name>,
    pub description: String,
    /// The VM's current state descends from this snapshot (last taken or restored).
    pub current: bool,
}

/// How a clone shares data with its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloneMode {
    /// Copy-on-write overlays on a read-only base: instant, shares the base's data.
    #[default]
    Linked,
    /// Independent copies of every disk (takes time proportional to the data).
    Full,
}

/// `POST /v1/vms/{name}/clone`: a new VM from a stopped VM or template, or from one of its
/// snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneVmRequest {
    /// Name of the new VM.
    pub name: Name,
    /// Default `linked`.
    #[serde(default)]
    pub mode: CloneMode,
    /// Clone this snapshot instead of the current state.
    #[serde(default)]
    pub snapshot: Option<Name>,
    /// Pool for the new disks; default: the source disks' pool.
    #[serde(default)]
    pub pool: Option<Name>,
    /// Start the clone once created.
    #[serde(default)]
    pub start: bool,
}

/// Checks a snapshot description; the error names the rule.
pub fn check_description(d: &str) -> Result<(), String> {
    if d.len() > MAX_DESCRIPTION {
        return Err(format!(
            "description is {} bytes long; at most {MAX_DESCRIPTION} are allowed",
            d.len()
        ));
    }
    if d.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err("description must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_cannot_hold_paths() {
        for bad in ["a/b", "../x", "", "with space"] {
            let body = serde_json::json!({ "name": bad });
            assert!(
                serde_json::from_value::<CreateSnapshotRequest>(body).is_err(),
                "{bad:?}"
            );
        }
        let ok: CreateSnapshotRequest =
            serde_json::from_value(serde_json::json!({"name": "before-upgrade", "memory": true}))
                .unwrap();
        assert!(ok.memory);
        assert!(serde_json::from_value::<CloneVmRequest>(
            serde_json::json!({"name": "c", "mode": "deep"})
        )
        .is_err());
    }

    #[test]
    fn descriptions() {
        assert!(check_description("before the upgrade\nsecond line").is_ok());
        assert!(check_description("bell\u{7}").is_err());
        assert!(check_description(&"x".repeat(MAX_DESCRIPTION + 1)).is_err());
    }
}
