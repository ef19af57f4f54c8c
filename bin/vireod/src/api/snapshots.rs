//! `/v1/vms/{name}/snapshots`, `/clone`, `/template` and `/disks` handlers.

use axum::extract::{Path, State};
use axum::response::Response;
use vireo_api::operations::Operation;
use vireo_api::snapshots::{CloneVmRequest, CreateSnapshotRequest, SnapshotInfo};
use vireo_api::storage::{AttachDiskRequest, ResizeVolumeRequest};
use vireo_api::vms::VmInfo;
use vireo_api::{ErrorBody, ProjectQuery};

use super::vms::accepted;
use super::{path_name, ApiError, ApiJson, ApiQuery, AppState, Requestor};

#[utoipa::path(get, path = "/v1/vms/{name}/snapshots", tag = "snapshots",
    params(("name" = String, Path), ProjectQuery),
    responses((status = 200, body = [SnapshotInfo]), (status = 404, body = ErrorBody)))]
pub async fn list_snapshots(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
) -> Result<axum::Json<Vec<SnapshotInfo>>, ApiError> {
    let name = path_name(&name, "VM")?;
    Ok(axum::Json(
        s.engine
            .list_snapshots(q.project.as_ref(), name.as_str())
            .await?,
    ))
}

/// Takes a snapshot of every disk (and with `memory`, of RAM and device state).
#[utoipa::path(post, path = "/v1/vms/{name}/snapshots", tag = "snapshots",
    params(("name" = String, Path), ProjectQuery), request_body = CreateSnapshotRequest,
    responses((status = 202, body = Operation), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_snapshot(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<CreateSnapshotRequest>,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "VM")?;
    Ok(accepted(
        s.engine
            .create_snapshot(q.project.as_ref(), name.as_str(), req, &who)
            .await?,
    ))
}

/// Reverts the VM to a snapshot (a memory snapshot resumes where the VM was).
#[utoipa::path(post, path = "/v1/vms/{name}/snapshots/{snapshot}/restore", tag = "snapshots",
    params(("name" = String, Path), ("snapshot" = String, Path), ProjectQuery),
    responses((status = 202, body = Operation), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn restore_snapshot(
    State(s): State<AppState>,
    Path((name, snapshot)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "VM")?;
    let snapshot = path_name(&snapshot, "snapshot")?;
    Ok(accepted(
        s.engine
            .restore_snapshot(q.project.as_ref(), name.as_str(), snapshot.as_str(), &who)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/vms/{name}/snapshots/{snapshot}", tag = "snapshots",
    params(("name" = String, Path), ("snapshot" = String, Path), ProjectQuery),
    responses((status = 202, body = Operation), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_snapshot(
    State(s): State<AppState>,
    Path((name, snapshot)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "VM")?;
    let snapshot = path_name(&snapshot, "snapshot")?;
    Ok(accepted(
        s.engine
            .delete_snapshot(q.project.as_ref(), name.as_str(), snapshot.as_str(), &who)
            .await?,
    ))
}

/// Makes a new VM from this one (stopped, or a template) or from one of its snapshots.
#[utoipa::path(post, path = "/v1/vms/{name}/clone", tag = "vms",
    params(("name" = String, Path), ProjectQuery), request_body = CloneVmRequest,
    responses((status = 202, body = Operation), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn clone_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<CloneVmRequest>,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "VM")?;
    Ok(accepted(
        s.engine
            .clone_vm(q.project.as_ref(), name.as_str(), req, &who)
            .await?,
    ))
}

/// Turns a stopped VM into an immutable template.
#[utoipa::path(post, path = "/v1/vms/{name}/template", tag = "vms",
    params(("name" = String, Path), ProjectQuery),
    responses((status = 200, body = VmInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn template_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
) -> Result<axum::Json<VmInfo>, ApiError> {
    let name = path_name(&name, "VM")?;
    Ok(axum::Json(
        s.engine
            .template_vm(q.project.as_ref(), name.as_str(), &who)
            .await?,
    ))
}

/// Attaches a custom volume (hot-plugged when the VM runs).
#[utoipa::path(post, path = "/v1/vms/{name}/disks", tag = "vms",
    params(("name" = String, Path), ProjectQuery), request_body = AttachDiskRequest,
    responses((status = 202, body = Operation), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn attach_disk(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<AttachDiskRequest>,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "VM")?;
    Ok(accepted(
        s.engine
            .attach_disk(q.project.as_ref(), name.as_str(), req, &who)
            .await?,
    ))
}

/// Detaches an attached custom volume (hot-unplugged when the VM runs).
#[utoipa::path(delete, path = "/v1/vms/{name}/disks/{disk}", tag = "vms",
    params(("name" = String, Path), ("disk" = String, Path), ProjectQuery),
    responses((status = 202, body = Operation), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn detach_disk(
    State(s): State<AppState>,
    Path((name, disk)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "VM")?;
    let disk = path_name(&disk, "disk")?;
    Ok(accepted(
        s.engine
            .detach_disk(q.project.as_ref(), name.as_str(), disk.as_str(), &who)
            .await?,
    ))
}

/// Grows a volume (online through QEMU when its VM runs).
#[utoipa::path(post, path = "/v1/storage-pools/{pool}/volumes/{volume}/resize", tag = "storage",
    params(("pool" = String, Path), ("volume" = String, Path)), request_body = ResizeVolumeRequest,
    responses((status = 202, body = Operation), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resize_volume(
    State(s): State<AppState>,
    Path((pool, volume)): Path<(String, String)>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<ResizeVolumeRequest>,
) -> Result<Response, ApiError> {
    let pool = path_name(&pool, "storage pool")?;
    let volume = path_name(&volume, "volume")?;
    Ok(accepted(
        s.engine
            .resize_volume(pool.as_str(), volume.as_str(), req.size_bytes, &who)
            .await?,
    ))
}
