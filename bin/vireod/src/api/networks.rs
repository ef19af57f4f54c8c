//! `/v1/networks` and `/v1/vms/{name}/nics` handlers.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use vireo_api::networks::{
    AddNicRequest, CreateNetworkRequest, Lease, NetworkInfo, NicDetail, UpdateNetworkRequest,
    UpdateNicRequest,
};
use vireo_api::{ErrorBody, ProjectQuery};

use super::vms::if_match;
use super::{path_name, ApiError, ApiJson, ApiQuery, AppState, Requestor};

fn with_etag(n: NetworkInfo, status: StatusCode) -> Response {
    let etag = format!("\"{}\"", n.revision);
    (status, [(header::ETAG, etag)], axum::Json(n)).into_response()
}

#[utoipa::path(get, path = "/v1/networks", tag = "networks",
    responses((status = 200, body = [NetworkInfo]), (status = 503, body = ErrorBody)))]
pub async fn list_networks(
    State(s): State<AppState>,
) -> Result<axum::Json<Vec<NetworkInfo>>, ApiError> {
    Ok(axum::Json(s.engine.list_networks().await?))
}

#[utoipa::path(post, path = "/v1/networks", tag = "networks", request_body = CreateNetworkRequest,
    responses((status = 201, body = NetworkInfo), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_network(
    State(s): State<AppState>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<CreateNetworkRequest>,
) -> Result<Response, ApiError> {
    let n = s.engine.create_network(req, &who).await?;
    Ok(with_etag(n, StatusCode::CREATED))
}

#[utoipa::path(get, path = "/v1/networks/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 200, body = NetworkInfo, headers(("ETag" = String))), (status = 404, body = ErrorBody)))]
pub async fn get_network(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "network")?;
    Ok(with_etag(
        s.engine.get_network(name.as_str()).await?,
        StatusCode::OK,
    ))
}

#[utoipa::path(patch, path = "/v1/networks/{name}", tag = "networks", params(("name" = String, Path)),
    request_body = UpdateNetworkRequest,
    responses((status = 200, body = NetworkInfo), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub async fn update_network(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Requestor(who): Requestor,
    headers: HeaderMap,
    ApiJson(req): ApiJson<UpdateNetworkRequest>,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "network")?;
    let n = s
        .engine
        .update_network(name.as_str(), req, if_match(&headers)?, &who)
        .await?;
    Ok(with_etag(n, StatusCode::OK))
}

#[utoipa::path(delete, path = "/v1/networks/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_network(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Requestor(who): Requestor,
) -> Result<StatusCode, ApiError> {
    let name = path_name(&name, "network")?;
    s.engine.delete_network(name.as_str(), &who).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/networks/{name}/leases", tag = "networks", params(("name" = String, Path)),
    responses((status = 200, body = [Lease]), (status = 404, body = ErrorBody)))]
pub async fn network_leases(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Vec<Lease>>, ApiError> {
    let name = path_name(&name, "network")?;
    Ok(axum::Json(s.engine.network_leases(name.as_str()).await?))
}

#[utoipa::path(get, path = "/v1/vms/{name}/nics", tag = "vms", params(("name" = String, Path), ProjectQuery),
    responses((status = 200, body = [NicDetail]), (status = 404, body = ErrorBody)))]
pub async fn list_nics(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
) -> Result<axum::Json<Vec<NicDetail>>, ApiError> {
    let name = path_name(&name, "VM")?;
    Ok(axum::Json(
        s.engine
            .list_nics(q.project.as_ref(), name.as_str())
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/vms/{name}/nics", tag = "vms", params(("name" = String, Path), ProjectQuery),
    request_body = AddNicRequest,
    responses((status = 201, body = NicDetail), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_nic(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<AddNicRequest>,
) -> Result<(StatusCode, axum::Json<NicDetail>), ApiError> {
    let name = path_name(&name, "VM")?;
    let nic = s
        .engine
        .add_nic(q.project.as_ref(), name.as_str(), req, &who)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(nic)))
}

#[utoipa::path(patch, path = "/v1/vms/{name}/nics/{nic}", tag = "vms",
    params(("name" = String, Path), ("nic" = String, Path), ProjectQuery), request_body = UpdateNicRequest,
    responses((status = 200, body = NicDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_nic(
    State(s): State<AppState>,
    Path((name, nic)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    ApiJson(req): ApiJson<UpdateNicRequest>,
) -> Result<axum::Json<NicDetail>, ApiError> {
    let name = path_name(&name, "VM")?;
    let nic = path_name(&nic, "NIC")?;
    Ok(axum::Json(
        s.engine
            .update_nic(q.project.as_ref(), name.as_str(), nic.as_str(), req)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/vms/{name}/nics/{nic}", tag = "vms",
    params(("name" = String, Path), ("nic" = String, Path), ProjectQuery),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_nic(
    State(s): State<AppState>,
    Path((name, nic)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
) -> Result<StatusCode, ApiError> {
    let name = path_name(&name, "VM")?;
    let nic = path_name(&nic, "NIC")?;
    s.engine
        .remove_nic(q.project.as_ref(), name.as_str(), nic.as_str(), &who)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
