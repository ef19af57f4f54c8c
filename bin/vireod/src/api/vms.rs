//! `/v1/vms` handlers.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use vireo_api::operations::Operation;
use vireo_api::vms::ImportQuery;
use vireo_api::vms::{
    CreateVmRequest, ExecRequest, ExecResult, StopRequest, UpdateVmRequest, VmInfo,
};
use vireo_api::{ErrorBody, ErrorCode, ProjectQuery};
use vireo_types::VmAction;

use super::{path_name, ApiError, ApiJson, ApiQuery, AppState, Requestor};

/// `202 Accepted` with the operation and its location.
pub fn accepted(op: Operation) -> Response {
    let loc = format!("/v1/operations/{}", op.id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, loc)],
        axum::Json(op),
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/vms", tag = "vms", params(ProjectQuery),
    responses((status = 200, body = [VmInfo]), (status = 404, body = ErrorBody)))]
pub async fn list_vms(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
) -> Result<axum::Json<Vec<VmInfo>>, ApiError> {
    Ok(axum::Json(s.engine.list_vms(q.project.as_ref()).await?))
}

#[utoipa::path(post, path = "/v1/vms", tag = "vms", params(ProjectQuery), request_body = CreateVmRequest,
    responses((status = 202, body = Operation), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_vm(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<CreateVmRequest>,
) -> Result<Response, ApiError> {
    Ok(accepted(
        s.engine.create_vm(q.project.as_ref(), req, &who).await?,
    ))
}

#[utoipa::path(get, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path), ProjectQuery),
    responses((status = 200, body = VmInfo, headers(("ETag" = String))), (status = 404, body = ErrorBody)))]
pub async fn get_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "VM")?;
    let vm = s.engine.get_vm(q.project.as_ref(), name.as_str()).await?;
    let etag = format!("\"{}\"", vm.revision);
    Ok(([(header::ETAG, etag)], axum::Json(vm)).into_response())
}

pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .unwrap_or("")
                .trim()
                .trim_start_matches("W/")
                .trim_matches('"');
            s.parse::<u64>().map(Some).map_err(|_| {
                ApiError(ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    format!("If-Match must be a revision as returned in ETag (got {s:?})"),
                ))
            })
        }
    }
}

#[utoipa::path(patch, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path), ProjectQuery, ("If-Match" = Option<String>, Header)),
    request_body = UpdateVmRequest,
    responses((status = 200, body = VmInfo), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub async fn update_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<UpdateVmRequest>,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "VM")?;
    let vm = s
        .engine
        .update_vm(q.project.as_ref(), name.as_str(), req, if_match(&headers)?)
        .await?;
    let etag = format!("\"{}\"", vm.revision);
    Ok(([(header::ETAG, etag)], axum::Json(vm)).into_response())
}

async fn action(
    s: &AppState,
    name: &str,
    q: &ProjectQuery,
    who: &str,
    action: VmAction,
    stop: StopRequest,
) -> Result<Response, ApiError> {
    let name = path_name(name, "VM")?;
    Ok(accepted(
        s.engine
            .vm_action(q.project.as_ref(), name.as_str(), action, stop, who)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path), ProjectQuery),
    responses((status = 202, body = Operation), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
) -> Result<Response, ApiError> {
    action(
        &s,
        &name,
        &q,
        &who,
        VmAction::Delete,
        StopRequest::default(),
    )
    .await
}

macro_rules! simple_action {
    ($fn:ident, $path:literal, $action:expr) => {
        #[utoipa::path(post, path = $path, tag = "vms", params(("name" = String, Path), ProjectQuery),
            responses((status = 202, body = Operation), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
        pub async fn $fn(State(s): State<AppState>, Path(name): Path<String>, ApiQuery(q): ApiQuery<ProjectQuery>, Requestor(who): Requestor) -> Result<Response, ApiError> {
            action(&s, &name, &q, &who, $action, StopRequest::default()).await
        }
    };
}

simple_action!(start_vm, "/v1/vms/{name}/start", VmAction::Start);
simple_action!(restart_vm, "/v1/vms/{name}/restart", VmAction::Restart);
simple_action!(pause_vm, "/v1/vms/{name}/pause", VmAction::Pause);
simple_action!(resume_vm, "/v1/vms/{name}/resume", VmAction::Resume);
simple_action!(kill_vm, "/v1/vms/{name}/kill", VmAction::Kill);

#[utoipa::path(post, path = "/v1/vms/{name}/stop", tag = "vms", params(("name" = String, Path), ProjectQuery), request_body = StopRequest,
    responses((status = 202, body = Operation), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn stop_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: an empty body means defaults.
    let stop: StopRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StopRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("invalid request body: {e}"),
            )
        })?
    };
    action(&s, &name, &q, &who, VmAction::Stop, stop).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/exec", tag = "vms", params(("name" = String, Path), ProjectQuery), request_body = ExecRequest,
    responses((status = 200, body = ExecResult), (status = 409, body = ErrorBody)))]
pub async fn exec_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<axum::Json<ExecResult>, ApiError> {
    let name = path_name(&name, "VM")?;
    // Audit: commands are recorded (not their input or output).
    tracing::info!(target: "vireo::audit", vm = %name, requestor = %who, command = ?req.command, "exec");
    Ok(axum::Json(
        s.engine
            .exec(q.project.as_ref(), name.as_str(), req)
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/vms/{name}/console-log", tag = "vms", params(("name" = String, Path), ProjectQuery),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody)))]
pub async fn console_log(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "VM")?;
    let bytes = s
        .engine
        .console_log(q.project.as_ref(), name.as_str())
        .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}

/// Imports an OVA package sent as the request body (streamed to disk, never held in memory).
#[utoipa::path(post, path = "/v1/vms/import", tag = "vms", params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "OVA package"),
    responses((status = 202, body = Operation), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn import_vm(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    Requestor(who): Requestor,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let path = s.engine.upload_path()?;
    super::receive_upload(body, &path, "an OVA package").await?;
    let op = s
        .engine
        .import_ova(
            q.project.as_ref(),
            q.name,
            q.start.unwrap_or(false),
            path,
            &who,
        )
        .await?;
    Ok(accepted(op))
}

/// Exports a stopped VM as an OVA package (OVF + stream-optimized VMDKs + SHA-256 manifest),
/// streamed as the response body.
#[utoipa::path(get, path = "/v1/vms/{name}/export", tag = "vms", params(("name" = String, Path), ProjectQuery),
    responses((status = 200, content_type = "application/x-tar", body = Vec<u8>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn export_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    Requestor(who): Requestor,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "VM")?;
    let path = s
        .engine
        .export_ova(q.project.as_ref(), name.as_str())
        .await?;
    // Open, then unlink: the package lives only as long as this response streams it.
    let file = tokio::fs::File::open(&path).await;
    let _ = tokio::fs::remove_file(&path).await;
    let file = file.map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("opening the exported package: {e}"),
        )
    })?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    tracing::info!(target: "vireo::audit", vm = %name, requestor = %who, bytes = len, "exported as OVA");
    Ok(super::stream_file(
        file,
        len,
        "application/x-tar",
        &format!("{name}.ova"),
    ))
}
