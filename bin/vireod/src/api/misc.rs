//! Operations, images, host, projects, tokens, OpenAPI and metrics handlers.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;
use vireo_api::host::HostInfo;
use vireo_api::images::{BuildImageRequest, ImageInfo};
use vireo_api::operations::{Operation, WaitQuery};
use vireo_api::projects::{CreateProjectRequest, ProjectInfo};
use vireo_api::tokens::{CreateTokenRequest, TokenCreated, TokenInfo};
use vireo_api::{ErrorBody, ErrorCode};

use super::vms::accepted;
use super::{path_name, ApiError, ApiJson, ApiQuery, AppState, Requestor};

fn op_id(s: &str) -> Result<Uuid, ApiError> {
    s.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{s:?} is not an operation id (a UUID)"),
        )
    })
}

fn op_not_found(id: Uuid) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("operation {id} not found"))
}

#[utoipa::path(get, path = "/v1/operations", tag = "operations", responses((status = 200, body = [Operation])))]
pub async fn list_operations(State(s): State<AppState>) -> axum::Json<Vec<Operation>> {
    axum::Json(s.engine.operations().list())
}

#[utoipa::path(get, path = "/v1/operations/{id}", tag = "operations", params(("id" = String, Path)),
    responses((status = 200, body = Operation), (status = 404, body = ErrorBody)))]
pub async fn get_operation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Operation>, ApiError> {
    let id = op_id(&id)?;
    s.engine
        .operations()
        .get(id)
        .map(axum::Json)
        .ok_or_else(|| op_not_found(id))
}

#[utoipa::path(get, path = "/v1/operations/{id}/wait", tag = "operations", params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = Operation), (status = 404, body = ErrorBody)))]
pub async fn wait_operation(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<axum::Json<Operation>, ApiError> {
    let id = op_id(&id)?;
    let timeout = q.timeout.unwrap_or(60);
    if timeout > 3600 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "timeout must be at most 3600 seconds",
        ));
    }
    s.engine
        .operations()
        .wait(id, Duration::from_secs(timeout))
        .await
        .map(axum::Json)
        .ok_or_else(|| op_not_found(id))
}

#[utoipa::path(delete, path = "/v1/operations/{id}", tag = "operations", params(("id" = String, Path)),
    responses((status = 200, body = Operation), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_operation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Operation>, ApiError> {
    let id = op_id(&id)?;
    match s.engine.operations().cancel(id) {
        None => Err(op_not_found(id)),
        Some(false) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("operation {id} cannot be cancelled (finished or not cancellable)"),
        )),
        Some(true) => s
            .engine
            .operations()
            .get(id)
            .map(axum::Json)
            .ok_or_else(|| op_not_found(id)),
    }
}

#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = [ImageInfo])))]
pub async fn list_images(
    State(s): State<AppState>,
) -> Result<axum::Json<Vec<ImageInfo>>, ApiError> {
    Ok(axum::Json(s.engine.list_images().await?))
}

#[utoipa::path(get, path = "/v1/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 200, body = ImageInfo), (status = 404, body = ErrorBody)))]
pub async fn get_image(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<ImageInfo>, ApiError> {
    let name = path_name(&name, "image")?;
    Ok(axum::Json(s.engine.get_image(name.as_str()).await?))
}

#[utoipa::path(post, path = "/v1/images/build", tag = "images", request_body = BuildImageRequest,
    responses((status = 202, body = Operation), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn build_image(
    State(s): State<AppState>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<BuildImageRequest>,
) -> Result<Response, ApiError> {
    Ok(accepted(s.engine.build_image(req, &who).await?))
}

#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 202, body = Operation), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_image(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Requestor(who): Requestor,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "image")?;
    Ok(accepted(s.engine.delete_image(name.as_str(), &who).await?))
}

#[utoipa::path(get, path = "/v1/host", tag = "host", responses((status = 200, body = HostInfo)))]
pub async fn host(State(s): State<AppState>) -> axum::Json<HostInfo> {
    let mut info = crate::host::host_info(&s);
    info.network = s.engine.network_support().await;
    axum::Json(info)
}

#[utoipa::path(get, path = "/v1/projects", tag = "projects", responses((status = 200, body = [ProjectInfo])))]
pub async fn list_projects(
    State(s): State<AppState>,
) -> Result<axum::Json<Vec<ProjectInfo>>, ApiError> {
    Ok(axum::Json(s.engine.list_projects().await?))
}

#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = CreateProjectRequest,
    responses((status = 201, body = ProjectInfo), (status = 409, body = ErrorBody)))]
pub async fn create_project(
    State(s): State<AppState>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<CreateProjectRequest>,
) -> Result<Response, ApiError> {
    let p = s.engine.create_project(req, &who).await?;
    Ok((StatusCode::CREATED, axum::Json(p)).into_response())
}

#[utoipa::path(delete, path = "/v1/projects/{name}", tag = "projects", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_project(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Requestor(who): Requestor,
) -> Result<StatusCode, ApiError> {
    let name = path_name(&name, "project")?;
    s.engine.delete_project(name.as_str(), &who).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", responses((status = 200, body = [TokenInfo])))]
pub async fn list_tokens(
    State(s): State<AppState>,
) -> Result<axum::Json<Vec<TokenInfo>>, ApiError> {
    let list = crate::tokens::list(&**s.engine_store())
        .await
        .map_err(token_err)?;
    Ok(axum::Json(
        list.into_iter()
            .map(|t| TokenInfo {
                name: t.name,
                created_at: t.created_at,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = TokenCreated), (status = 409, body = ErrorBody)))]
pub async fn create_token(
    State(s): State<AppState>,
    Requestor(who): Requestor,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<Response, ApiError> {
    let (rec, secret) = crate::tokens::create(&**s.engine_store(), req.name.as_str())
        .await
        .map_err(token_err)?;
    s.engine.events().emit(
        "token.created",
        None,
        &format!("token/{}", rec.name),
        &who,
        serde_json::json!({}),
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenCreated {
            name: rec.name,
            created_at: rec.created_at,
            secret,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/v1/tokens/{name}", tag = "tokens", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Requestor(who): Requestor,
) -> Result<StatusCode, ApiError> {
    let name = path_name(&name, "token")?;
    crate::tokens::revoke(&**s.engine_store(), name.as_str())
        .await
        .map_err(token_err)?;
    s.engine.events().emit(
        "token.revoked",
        None,
        &format!("token/{name}"),
        &who,
        serde_json::json!({}),
    );
    Ok(StatusCode::NO_CONTENT)
}

fn token_err(e: crate::tokens::TokenError) -> ApiError {
    use crate::tokens::TokenError as T;
    match &e {
        T::NotFound { .. } => ApiError::new(ErrorCode::NotFound, e.to_string()),
        T::AlreadyExists { .. } => ApiError::new(ErrorCode::Conflict, e.to_string()),
        T::InvalidName { .. } => ApiError::new(ErrorCode::InvalidRequest, e.to_string()),
        _ => {
            tracing::error!(error = %vireo_engine::error::chain(&e), "token store error");
            ApiError::new(ErrorCode::Internal, "internal error while accessing tokens")
        }
    }
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "host", responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_json(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "host", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&s),
    )
        .into_response()
}

impl AppState {
    pub fn engine_store(&self) -> &std::sync::Arc<dyn vireo_store::Store> {
        self.engine.store()
    }
}
