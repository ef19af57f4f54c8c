//! `/v1/storage-pools` handlers: pools and their volumes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use vireo_api::operations::Operation;
use vireo_api::storage::{
    CreatePoolRequest, CreateVolumeRequest, ImportVolumeQuery, PoolInfo, VolumeInfo,
};
use vireo_api::ErrorBody;

use super::vms::accepted;
use super::{path_name, ApiError, ApiJson, ApiQuery, AppState, Requestor};

#[utoipa::path(get, path = "/v1/storage-pools", tag = "storage",
    responses((status = 200, body = [PoolInfo])))]
pub async fn list_pools(State(s): State<AppState>) -> Result<axum::Json<Vec<PoolInfo>>, ApiError> {
    Ok(axum::Json(s.engine.list_pools().await?))
}

#[utoipa::path(post, path = "/v1/storage-pools", tag = "storage", request_body = CreatePoolRequest,
    responses((status = 201, body = PoolInfo), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_pool(
    State(s): State<AppState>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<CreatePoolRequest>,
) -> Result<(StatusCode, axum::Json<PoolInfo>), ApiError> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.engine.create_pool(req, &who).await?),
    ))
}

#[utoipa::path(get, path = "/v1/storage-pools/{pool}", tag = "storage", params(("pool" = String, Path)),
    responses((status = 200, body = PoolInfo), (status = 404, body = ErrorBody)))]
pub async fn get_pool(
    State(s): State<AppState>,
    Path(pool): Path<String>,
) -> Result<axum::Json<PoolInfo>, ApiError> {
    let pool = path_name(&pool, "storage pool")?;
    Ok(axum::Json(s.engine.get_pool(pool.as_str()).await?))
}

#[utoipa::path(delete, path = "/v1/storage-pools/{pool}", tag = "storage", params(("pool" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_pool(
    State(s): State<AppState>,
    Path(pool): Path<String>,
    Requestor(who): Requestor,
) -> Result<StatusCode, ApiError> {
    let pool = path_name(&pool, "storage pool")?;
    s.engine.delete_pool(pool.as_str(), &who).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/storage-pools/{pool}/volumes", tag = "storage", params(("pool" = String, Path)),
    responses((status = 200, body = [VolumeInfo]), (status = 404, body = ErrorBody)))]
pub async fn list_volumes(
    State(s): State<AppState>,
    Path(pool): Path<String>,
) -> Result<axum::Json<Vec<VolumeInfo>>, ApiError> {
    let pool = path_name(&pool, "storage pool")?;
    Ok(axum::Json(
        s.engine.list_volumes(Some(pool.as_str())).await?,
    ))
}

#[utoipa::path(post, path = "/v1/storage-pools/{pool}/volumes", tag = "storage", params(("pool" = String, Path)),
    request_body = CreateVolumeRequest,
    responses((status = 201, body = VolumeInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_volume(
    State(s): State<AppState>,
    Path(pool): Path<String>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<CreateVolumeRequest>,
) -> Result<(StatusCode, axum::Json<VolumeInfo>), ApiError> {
    let pool = path_name(&pool, "storage pool")?;
    Ok((
        StatusCode::CREATED,
        axum::Json(s.engine.create_volume(pool.as_str(), req, &who).await?),
    ))
}

/// Imports a disk image (qcow2, raw, VMDK monolithicSparse/streamOptimized, VHD, VHDX; the
/// format is detected from the content) as a new volume, converted to qcow2.
#[utoipa::path(post, path = "/v1/storage-pools/{pool}/volumes/import", tag = "storage",
    params(("pool" = String, Path), ImportVolumeQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = Operation), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn import_volume(
    State(s): State<AppState>,
    Path(pool): Path<String>,
    ApiQuery(q): ApiQuery<ImportVolumeQuery>,
    Requestor(who): Requestor,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let pool = path_name(&pool, "storage pool")?;
    // Refuse before receiving gigabytes for a request that cannot succeed.
    s.engine.get_pool(pool.as_str()).await?;
    let path = s.engine.volume_upload_path()?;
    if let Err(e) = super::receive_upload(body, &path, "a disk image").await {
        if let Some(dir) = path.parent() {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        return Err(e);
    }
    let op = s
        .engine
        .import_volume(pool.as_str(), q.name, path, &who)
        .await?;
    Ok(accepted(op))
}

#[utoipa::path(get, path = "/v1/storage-pools/{pool}/volumes/{volume}", tag = "storage",
    params(("pool" = String, Path), ("volume" = String, Path)),
    responses((status = 200, body = VolumeInfo), (status = 404, body = ErrorBody)))]
pub async fn get_volume(
    State(s): State<AppState>,
    Path((pool, volume)): Path<(String, String)>,
) -> Result<axum::Json<VolumeInfo>, ApiError> {
    let pool = path_name(&pool, "storage pool")?;
    let volume = path_name(&volume, "volume")?;
    Ok(axum::Json(
        s.engine.get_volume(pool.as_str(), volume.as_str()).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/storage-pools/{pool}/volumes/{volume}", tag = "storage",
    params(("pool" = String, Path), ("volume" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_volume(
    State(s): State<AppState>,
    Path((pool, volume)): Path<(String, String)>,
    Requestor(who): Requestor,
) -> Result<StatusCode, ApiError> {
    let pool = path_name(&pool, "storage pool")?;
    let volume = path_name(&volume, "volume")?;
    s.engine
        .delete_volume(pool.as_str(), volume.as_str(), &who)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Registers a disk image (qcow2, raw, VMDK, VHD, VHDX; detected by content) as an image,
/// converted to qcow2; VMs made from it get copy-on-write overlays.
#[utoipa::path(post, path = "/v1/images/import", tag = "images",
    params(vireo_api::images::ImportImageQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = Operation), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn import_image(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<vireo_api::images::ImportImageQuery>,
    Requestor(who): Requestor,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let path = s.engine.volume_upload_path()?;
    if let Err(e) = super::receive_upload(body, &path, "a disk image").await {
        if let Some(dir) = path.parent() {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        return Err(e);
    }
    let firmware = q.firmware.unwrap_or(vireo_types::Firmware::Bios);
    let op = s.engine.import_image(q.name, firmware, path, &who).await?;
    Ok(accepted(op))
}

/// Downloads a disk image as qcow2.
#[utoipa::path(get, path = "/v1/images/{name}/export", tag = "images", params(("name" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn export_image(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Requestor(who): Requestor,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "image")?;
    let path = s.engine.image_disk(name.as_str()).await?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::new(
            vireo_api::ErrorCode::Internal,
            format!("opening the image: {e}"),
        )
    })?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    tracing::info!(target: "vireo::audit", image = %name, requestor = %who, bytes = len, "image exported");
    Ok(super::stream_file(
        file,
        len,
        "application/octet-stream",
        &format!("{name}.qcow2"),
    ))
}
