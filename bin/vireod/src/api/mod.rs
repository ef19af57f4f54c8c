//! The HTTP layer: parses requests, calls the engine, maps errors. No business logic here.
//!
//! Invariants: every body and query is decoded with unknown fields rejected and errors mapped
//! to the API's single error shape; internal error detail is logged, never sent.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use vireo_api::{ErrorBody, ErrorCode};
use vireo_engine::{Engine, EngineError};

pub mod misc;
pub mod networks;
pub mod snapshots;
pub mod storage;
pub mod vms;
pub mod ws;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Engine,
    pub host: Arc<crate::host::HostFacts>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Who made the request (set by the listener's middleware).
#[derive(Debug, Clone)]
pub struct Requestor(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Requestor {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Requestor>()
            .cloned()
            .unwrap_or(Requestor("unknown".into())))
    }
}

/// An API error response.
#[derive(Debug)]
pub struct ApiError(pub ErrorBody);

impl ApiError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        ApiError(ErrorBody::new(code, msg))
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = e.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %vireo_engine::error::chain(&e), "internal error");
        }
        let mut body = ErrorBody::new(code, e.to_string());
        if let Some(f) = e.field() {
            body = body.with_field(f);
        }
        ApiError(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.0)).into_response()
    }
}

/// JSON body extractor whose rejections use the API error shape.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let (code, msg) = match &r {
        JsonRejection::MissingJsonContentType(_) => (
            ErrorCode::InvalidRequest,
            "request body must be JSON (Content-Type: application/json)".to_string(),
        ),
        JsonRejection::JsonSyntaxError(_) => (
            ErrorCode::InvalidRequest,
            format!("malformed JSON: {}", r.body_text()),
        ),
        JsonRejection::JsonDataError(_) => (
            ErrorCode::InvalidRequest,
            format!("invalid request body: {}", r.body_text()),
        ),
        _ => (ErrorCode::InvalidRequest, r.body_text()),
    };
    ApiError::new(code, msg)
}

/// Query-string extractor whose rejections use the API error shape.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidRequest,
        format!("invalid query string: {}", r.body_text()),
    )
}

/// Streams a request body into the new file `path`; an empty or broken upload removes the
/// file and is the client's error. `what` names the expected content for the message.
pub async fn receive_upload(
    body: axum::body::Body,
    path: &std::path::Path,
    what: &str,
) -> Result<u64, ApiError> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let write = async {
        let mut file = tokio::fs::File::create(path).await?;
        let mut stream = body.into_data_stream();
        let mut total: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            total += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok::<u64, std::io::Error>(total)
    };
    match write.await {
        Ok(0) => {
            let _ = tokio::fs::remove_file(path).await;
            Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the request body must be {what} (it is empty)"),
            ))
        }
        Ok(n) => Ok(n),
        Err(e) => {
            let _ = tokio::fs::remove_file(path).await;
            Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("receiving the upload failed: {e}"),
            ))
        }
    }
}

/// A download response streaming `file` (`len` bytes) in 1 MiB chunks.
pub fn stream_file(
    file: tokio::fs::File,
    len: u64,
    content_type: &str,
    filename: &str,
) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    let stream = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Validated path parameter `{name}`.
pub fn path_name(s: &str, what: &str) -> Result<vireo_types::Name, ApiError> {
    vireo_types::Name::new(s).map_err(|e| {
        ApiError(
            ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!("invalid {what} name {s:?}: {e}"),
            )
            .with_field("name"),
        )
    })
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Vireo API", description = "Vireo virtualization platform REST API", license(name = "Apache-2.0")),
    paths(
        vms::list_vms, vms::create_vm, vms::import_vm,
        vms::export_vm, vms::get_vm, vms::update_vm, vms::delete_vm,
        vms::start_vm, vms::stop_vm, vms::restart_vm, vms::pause_vm, vms::resume_vm, vms::kill_vm,
        vms::exec_vm, vms::console_log, ws::console, ws::events,
        misc::list_operations, misc::get_operation, misc::wait_operation, misc::cancel_operation,
        misc::list_images, misc::get_image, misc::build_image, misc::delete_image,
        misc::host, misc::list_projects, misc::create_project, misc::delete_project,
        misc::list_tokens, misc::create_token, misc::revoke_token, misc::openapi_json, misc::metrics,
        networks::list_networks, networks::create_network, networks::get_network,
        networks::update_network, networks::delete_network, networks::network_leases,
        networks::list_nics, networks::add_nic, networks::update_nic, networks::remove_nic,
        storage::list_pools, storage::create_pool, storage::get_pool, storage::delete_pool,
        storage::list_volumes, storage::create_volume, storage::import_volume,
        storage::get_volume, storage::delete_volume, storage::import_image, storage::export_image,
        snapshots::list_snapshots, snapshots::create_snapshot, snapshots::restore_snapshot,
        snapshots::delete_snapshot, snapshots::clone_vm, snapshots::template_vm,
        snapshots::attach_disk, snapshots::detach_disk, snapshots::resize_volume,
    ),
    components(schemas(ErrorBody, vireo_api::events::Event)),
    tags((name = "vms"), (name = "operations"), (name = "images"), (name = "host"), (name = "projects"), (name = "tokens"), (name = "storage"), (name = "snapshots"), (name = "networks"))
)]
pub struct ApiDoc;

/// The OpenAPI document, as committed in `openapi/vireo.json`.
pub fn openapi_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/vms", get(vms::list_vms).post(vms::create_vm))
        .route("/v1/vms/import", post(vms::import_vm))
        .route("/v1/vms/{name}/export", get(vms::export_vm))
        .route(
            "/v1/vms/{name}",
            get(vms::get_vm)
                .patch(vms::update_vm)
                .delete(vms::delete_vm),
        )
        .route("/v1/vms/{name}/start", post(vms::start_vm))
        .route("/v1/vms/{name}/stop", post(vms::stop_vm))
        .route("/v1/vms/{name}/restart", post(vms::restart_vm))
        .route("/v1/vms/{name}/pause", post(vms::pause_vm))
        .route("/v1/vms/{name}/resume", post(vms::resume_vm))
        .route("/v1/vms/{name}/kill", post(vms::kill_vm))
        .route("/v1/vms/{name}/exec", post(vms::exec_vm))
        .route("/v1/vms/{name}/console", get(ws::console))
        .route("/v1/vms/{name}/console-log", get(vms::console_log))
        .route("/v1/events", get(ws::events))
        .route("/v1/operations", get(misc::list_operations))
        .route(
            "/v1/operations/{id}",
            get(misc::get_operation).delete(misc::cancel_operation),
        )
        .route("/v1/operations/{id}/wait", get(misc::wait_operation))
        .route("/v1/images", get(misc::list_images))
        .route("/v1/images/build", post(misc::build_image))
        .route("/v1/images/import", post(storage::import_image))
        .route("/v1/images/{name}/export", get(storage::export_image))
        .route(
            "/v1/images/{name}",
            get(misc::get_image).delete(misc::delete_image),
        )
        .route("/v1/host", get(misc::host))
        .route(
            "/v1/storage-pools",
            get(storage::list_pools).post(storage::create_pool),
        )
        .route(
            "/v1/storage-pools/{pool}",
            get(storage::get_pool).delete(storage::delete_pool),
        )
        .route(
            "/v1/storage-pools/{pool}/volumes",
            get(storage::list_volumes).post(storage::create_volume),
        )
        .route(
            "/v1/storage-pools/{pool}/volumes/import",
            post(storage::import_volume),
        )
        .route(
            "/v1/storage-pools/{pool}/volumes/{volume}",
            get(storage::get_volume).delete(storage::delete_volume),
        )
        .route(
            "/v1/storage-pools/{pool}/volumes/{volume}/resize",
            post(snapshots::resize_volume),
        )
        .route(
            "/v1/vms/{name}/snapshots",
            get(snapshots::list_snapshots).post(snapshots::create_snapshot),
        )
        .route(
            "/v1/vms/{name}/snapshots/{snapshot}",
            delete(snapshots::delete_snapshot),
        )
        .route(
            "/v1/vms/{name}/snapshots/{snapshot}/restore",
            post(snapshots::restore_snapshot),
        )
        .route("/v1/vms/{name}/clone", post(snapshots::clone_vm))
        .route("/v1/vms/{name}/template", post(snapshots::template_vm))
        .route("/v1/vms/{name}/disks", post(snapshots::attach_disk))
        .route(
            "/v1/vms/{name}/disks/{disk}",
            delete(snapshots::detach_disk),
        )
        .route(
            "/v1/projects",
            get(misc::list_projects).post(misc::create_project),
        )
        .route(
            "/v1/projects/{name}",
            axum::routing::delete(misc::delete_project),
        )
        .route(
            "/v1/tokens",
            get(misc::list_tokens).post(misc::create_token),
        )
        .route(
            "/v1/tokens/{name}",
            axum::routing::delete(misc::revoke_token),
        )
        .route(
            "/v1/networks",
            get(networks::list_networks).post(networks::create_network),
        )
        .route(
            "/v1/networks/{name}",
            get(networks::get_network)
                .patch(networks::update_network)
                .delete(networks::delete_network),
        )
        .route("/v1/networks/{name}/leases", get(networks::network_leases))
        .route(
            "/v1/vms/{name}/nics",
            get(networks::list_nics).post(networks::add_nic),
        )
        .route(
            "/v1/vms/{name}/nics/{nic}",
            axum::routing::patch(networks::update_nic).delete(networks::remove_nic),
        )
        .route("/v1/openapi.json", get(misc::openapi_json))
        .route("/metrics", get(misc::metrics))
        .merge(crate::ui::router())
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    /// The committed OpenAPI document must match the code (regenerate with
    /// `cargo run -q -p vireod -- --print-openapi > openapi/vireo.json`).
    #[test]
    fn committed_openapi_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/vireo.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = super::openapi_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
            return;
        }
        assert!(
            committed == generated,
            "openapi/vireo.json is out of date: run `cargo run -q -p vireod -- --print-openapi > openapi/vireo.json`"
        );
    }

    #[test]
    fn every_route_is_documented() {
        let doc: serde_json::Value = serde_json::from_str(&super::openapi_json()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/vms",
            "/v1/vms/{name}",
            "/v1/vms/{name}/console",
            "/v1/operations/{id}/wait",
            "/v1/events",
            "/v1/host",
            "/v1/networks",
            "/v1/networks/{name}/leases",
            "/v1/vms/{name}/nics/{nic}",
            "/metrics",
        ] {
            assert!(
                paths.contains_key(p),
                "{p} missing from the OpenAPI document"
            );
        }
    }
}
