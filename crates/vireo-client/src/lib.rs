//! Typed client for Vireo's REST API (`/v1`), used by the `vireo` CLI, tests and peer nodes.
//!
//! Transport: HTTP/1.1 over a unix socket (`unix:/run/vireo/vireo.sock`, no authentication)
//! or over TLS on TCP (`https://host:port`, `Authorization: Bearer <token>`), one connection
//! per request. Websockets (console, events) run over the same kinds of stream.
//!
//! Invariants:
//! - every method returns the API's own types ([`vireo_api`]) or a [`ClientError`] whose
//!   Display plus `source()` chain describes the failure without repetition;
//! - a non-2xx response always becomes [`ClientError::Api`] when the body is an
//!   [`vireo_api::ErrorBody`], else [`ClientError::UnexpectedStatus`] with a short, sanitized
//!   snippet of the body;
//! - no call waits forever: each has a deadline ([`ClientOptions::request_timeout`], or the
//!   caller's timeout plus a margin for long-polling calls), and response bodies are bounded
//!   ([`MAX_BODY_BYTES`]);
//! - path segments and query values are percent-encoded, so no name can change the request's
//!   path; `?project=` is sent only on project-scoped endpoints (`/v1/vms…`).

mod error;
mod networks;
pub mod remote;
mod snapshots;
mod storage;
pub mod tls;
mod transport;
mod ws;

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, ETAG, IF_MATCH};
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;
use vireo_api::host::HostInfo;
use vireo_api::images::{BuildImageRequest, ImageInfo};
use vireo_api::operations::Operation;
use vireo_api::projects::{CreateProjectRequest, ProjectInfo};
use vireo_api::tokens::{CreateTokenRequest, TokenCreated, TokenInfo};
use vireo_api::vms::{
    CreateVmRequest, ExecRequest, ExecResult, StopRequest, UpdateVmRequest, VmInfo,
};
use vireo_api::ErrorBody;
use vireo_types::Name;

pub use error::{BoxError, ClientError};
pub use remote::Remote;
pub use tls::{Fingerprint, TlsConfigError, TlsTrust};
pub use transport::Conn;
pub use vireo_api;
pub use ws::{ConsoleSink, ConsoleStream, EventStream};

/// Largest response body accepted.
pub const MAX_BODY_BYTES: usize = 32 << 20;
/// Default deadline of one request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest single `/wait` the daemon honours (seconds).
const MAX_WAIT_SECS: u64 = 3600;
/// Extra time given to long-polling calls beyond their server-side timeout.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(30);
/// Interval of [`Client::watch_operation`]'s polling.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Longest body snippet quoted in [`ClientError::UnexpectedStatus`].
const SNIPPET_CHARS: usize = 200;

/// How to build a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub remote: Remote,
    /// API token sent as `Authorization: Bearer …` (needed over TCP, ignored on the socket).
    pub token: Option<String>,
    /// Trust for `https://` remotes; unused for unix sockets.
    pub tls: TlsTrust,
    /// Project for project-scoped calls; the daemon's default project when `None`.
    pub project: Option<Name>,
    pub request_timeout: Duration,
}

impl ClientOptions {
    pub fn new(remote: Remote) -> Self {
        ClientOptions {
            remote,
            token: None,
            tls: TlsTrust::Unconfigured,
            project: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A connection-less handle to one daemon; cheap to clone.
#[derive(Clone)]
pub struct Client {
    dialer: transport::Dialer,
    /// Ready `Bearer …` header value, marked sensitive so it is never logged.
    auth: Option<HeaderValue>,
    project: Option<Name>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("remote", &self.dialer.remote)
            .field("token", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("project", &self.project)
            .finish()
    }
}

/// A value together with the `ETag` the daemon sent with it.
#[derive(Debug, Clone)]
pub struct Tagged<T> {
    pub value: T,
    /// Raw `ETag` header (e.g. `"7"`), to send back verbatim as `If-Match`.
    pub etag: Option<String>,
}

/// Percent-encodes `s` for use as one path segment or query value (RFC 3986 unreserved
/// characters pass through).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Turns a non-2xx response into the matching error (pure; see the crate invariants).
pub fn error_from_response(method: &str, path: &str, status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Api {
            status,
            code: b.error.code,
            message: b.error.message,
            field: b.error.field,
        },
        Err(_) => ClientError::UnexpectedStatus {
            method: method.to_string(),
            path: path.to_string(),
            status,
            snippet: snippet(body),
        },
    }
}

/// First [`SNIPPET_CHARS`] characters of a body, lossily decoded, control characters
/// replaced, so a hostile body cannot mess up a terminal.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(SNIPPET_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

impl Client {
    /// Builds a client; for `https://` remotes this loads the TLS trust (CA file or pin).
    pub fn new(options: ClientOptions) -> Result<Client, ClientError> {
        let tls_config = match options.remote {
            Remote::Unix(_) => None,
            Remote::Https { .. } => Some(tls::client_config(&options.tls)?),
        };
        let dialer = transport::Dialer::new(options.remote, tls_config)?;
        let auth = match options.token {
            None => None,
            Some(t) => {
                let mut v = HeaderValue::try_from(format!("Bearer {}", t.trim()))
                    .map_err(|_| ClientError::HeaderValue { what: "token" })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(Client {
            dialer,
            auth,
            project: options.project,
            request_timeout: options.request_timeout,
        })
    }

    pub fn remote(&self) -> &Remote {
        &self.dialer.remote
    }

    pub fn project(&self) -> Option<&Name> {
        self.project.as_ref()
    }

    /// The same client, scoped to another project.
    pub fn with_project(mut self, project: Option<Name>) -> Self {
        self.project = project;
        self
    }

    // ---- plumbing ----------------------------------------------------------------------

    /// `?project=…` for project-scoped endpoints (`sep` is `?` or `&`).
    fn project_query(&self, sep: char) -> String {
        match &self.project {
            Some(p) => format!("{sep}project={}", encode_component(p.as_str())),
            None => String::new(),
        }
    }

    fn vm_path(&self, name: &str, suffix: &str) -> String {
        format!(
            "/v1/vms/{}{suffix}{}",
            encode_component(name),
            self.project_query('?')
        )
    }

    /// The bearer-token header, when a token is configured.
    fn auth_header(&self) -> Option<(HeaderName, HeaderValue)> {
        self.auth.as_ref().map(|a| (AUTHORIZATION, a.clone()))
    }

    /// Sends a request and returns the successful response, or the decoded error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        extra: Vec<(HeaderName, HeaderValue)>,
        timeout: Duration,
    ) -> Result<transport::RawResponse, ClientError> {
        let mut headers = extra;
        headers.extend(self.auth_header());
        tracing::debug!(%method, path, "request");
        let exchange = transport::exchange(
            &self.dialer,
            method.clone(),
            path,
            headers,
            body,
            MAX_BODY_BYTES,
        );
        let response = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                what: format!("{method} {path}"),
                after: timeout,
            })??;
        if response.status.is_success() {
            Ok(response)
        } else {
            Err(error_from_response(
                method.as_str(),
                path,
                response.status.as_u16(),
                &response.body,
            ))
        }
    }

    fn encode_body<B: Serialize>(body: &B) -> Result<Bytes, ClientError> {
        serde_json::to_vec(body)
            .map(Bytes::from)
            .map_err(ClientError::Encode)
    }

    fn decode<T: DeserializeOwned>(
        method: &Method,
        path: &str,
        response: &transport::RawResponse,
    ) -> Result<T, ClientError> {
        serde_json::from_slice(&response.body).map_err(|source| ClientError::Decode {
            method: method.to_string(),
            path: path.to_string(),
            source,
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<T, ClientError> {
        let response = self
            .send(method.clone(), path, body, Vec::new(), self.request_timeout)
            .await?;
        Self::decode(&method, path, &response)
    }

    /// `DELETE path`; whatever 2xx body the daemon sends is ignored.
    async fn delete_ignoring_body(&self, path: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, path, None, Vec::new(), self.request_timeout)
            .await
            .map(|_| ())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.json(Method::POST, path, Some(Self::encode_body(body)?))
            .await
    }

    // ---- VMs ---------------------------------------------------------------------------

    pub async fn list_vms(&self) -> Result<Vec<VmInfo>, ClientError> {
        self.get(&format!("/v1/vms{}", self.project_query('?')))
            .await
    }

    /// Creates a VM; the returned operation's completion means the VM exists (and runs, with
    /// `start`). Read it back with [`Client::get_vm`].
    pub async fn create_vm(&self, request: &CreateVmRequest) -> Result<Operation, ClientError> {
        self.post(&format!("/v1/vms{}", self.project_query('?')), request)
            .await
    }

    pub async fn get_vm(&self, name: &str) -> Result<VmInfo, ClientError> {
        Ok(self.get_vm_tagged(name).await?.value)
    }

    /// The VM with its `ETag`, for a following [`Client::update_vm`].
    pub async fn get_vm_tagged(&self, name: &str) -> Result<Tagged<VmInfo>, ClientError> {
        let path = self.vm_path(name, "");
        let response = self
            .send(Method::GET, &path, None, Vec::new(), self.request_timeout)
            .await?;
        let etag = response
            .headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Tagged {
            value: Self::decode(&Method::GET, &path, &response)?,
            etag,
        })
    }

    /// Changes a stopped VM; `if_match` is the `ETag` read before (optimistic concurrency:
    /// the daemon answers `precondition_failed` when the VM changed in between).
    pub async fn update_vm(
        &self,
        name: &str,
        request: &UpdateVmRequest,
        if_match: &str,
    ) -> Result<VmInfo, ClientError> {
        let path = self.vm_path(name, "");
        let if_match = HeaderValue::try_from(if_match).map_err(|_| ClientError::HeaderValue {
            what: "If-Match value",
        })?;
        let response = self
            .send(
                Method::PATCH,
                &path,
                Some(Self::encode_body(request)?),
                vec![(IF_MATCH, if_match)],
                self.request_timeout,
            )
            .await?;
        Self::decode(&Method::PATCH, &path, &response)
    }

    pub async fn delete_vm(&self, name: &str) -> Result<Operation, ClientError> {
        self.json(Method::DELETE, &self.vm_path(name, ""), None)
            .await
    }

    async fn vm_action(&self, name: &str, action: &str) -> Result<Operation, ClientError> {
        let path = self.vm_path(name, &format!("/{action}"));
        self.json(Method::POST, &path, Some(Bytes::from_static(b"{}")))
            .await
    }

    pub async fn start_vm(&self, name: &str) -> Result<Operation, ClientError> {
        self.vm_action(name, "start").await
    }

    pub async fn stop_vm(
        &self,
        name: &str,
        request: &StopRequest,
    ) -> Result<Operation, ClientError> {
        self.post(&self.vm_path(name, "/stop"), request).await
    }

    pub async fn restart_vm(&self, name: &str) -> Result<Operation, ClientError> {
        self.vm_action(name, "restart").await
    }

    pub async fn pause_vm(&self, name: &str) -> Result<Operation, ClientError> {
        self.vm_action(name, "pause").await
    }

    pub async fn resume_vm(&self, name: &str) -> Result<Operation, ClientError> {
        self.vm_action(name, "resume").await
    }

    pub async fn kill_vm(&self, name: &str) -> Result<Operation, ClientError> {
        self.vm_action(name, "kill").await
    }

    /// Runs a command in the guest; waits as long as the command may run (its `timeout_s`,
    /// default 60 s) plus a margin.
    pub async fn exec(&self, name: &str, request: &ExecRequest) -> Result<ExecResult, ClientError> {
        let path = self.vm_path(name, "/exec");
        let timeout =
            Duration::from_secs(u64::from(request.timeout_s.unwrap_or(60))) + LONG_POLL_MARGIN;
        let response = self
            .send(
                Method::POST,
                &path,
                Some(Self::encode_body(request)?),
                Vec::new(),
                timeout,
            )
            .await?;
        Self::decode(&Method::POST, &path, &response)
    }

    /// The VM's recent serial console output (raw bytes; not necessarily UTF-8).
    pub async fn console_log(&self, name: &str) -> Result<Bytes, ClientError> {
        let path = self.vm_path(name, "/console-log");
        Ok(self
            .send(Method::GET, &path, None, Vec::new(), self.request_timeout)
            .await?
            .body)
    }

    // ---- operations --------------------------------------------------------------------

    pub async fn list_operations(&self) -> Result<Vec<Operation>, ClientError> {
        self.get("/v1/operations").await
    }

    pub async fn get_operation(&self, id: Uuid) -> Result<Operation, ClientError> {
        self.get(&format!("/v1/operations/{id}")).await
    }

    /// Cancels an operation (where it is cancellable) and returns it.
    pub async fn cancel_operation(&self, id: Uuid) -> Result<Operation, ClientError> {
        self.json(Method::DELETE, &format!("/v1/operations/{id}"), None)
            .await
    }

    /// One long-poll: the daemon returns the operation when it finishes or after
    /// `timeout_secs` (capped at 3600), finished or not.
    pub async fn wait_operation_once(
        &self,
        id: Uuid,
        timeout_secs: u64,
    ) -> Result<Operation, ClientError> {
        let secs = timeout_secs.min(MAX_WAIT_SECS);
        let path = format!("/v1/operations/{id}/wait?timeout={secs}");
        let deadline = Duration::from_secs(secs) + LONG_POLL_MARGIN;
        let response = self
            .send(Method::GET, &path, None, Vec::new(), deadline)
            .await?;
        Self::decode(&Method::GET, &path, &response)
    }

    /// Waits until the operation is final (succeeded, failed or cancelled) and returns it;
    /// [`ClientError::Timeout`] when it is still running after `timeout`.
    pub async fn wait_operation(
        &self,
        id: Uuid,
        timeout: Duration,
    ) -> Result<Operation, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let op = if remaining.as_secs() >= 1 {
                self.wait_operation_once(id, remaining.as_secs()).await?
            } else {
                // Less than the long-poll granularity left: one short sleep, then a last look.
                tokio::time::sleep(remaining.min(WATCH_INTERVAL)).await;
                self.get_operation(id).await?
            };
            if op.status.is_final() {
                return Ok(op);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    what: format!("operation {id} ({})", op.kind),
                    after: timeout,
                });
            }
        }
    }

    /// Polls the operation every [`WATCH_INTERVAL`], calling `on_update` with each state
    /// (for progress bars), until it is final; [`ClientError::Timeout`] after `timeout`.
    pub async fn watch_operation<F>(
        &self,
        id: Uuid,
        timeout: Duration,
        mut on_update: F,
    ) -> Result<Operation, ClientError>
    where
        F: FnMut(&Operation),
    {
        let deadline = Instant::now() + timeout;
        loop {
            let op = self.get_operation(id).await?;
            on_update(&op);
            if op.status.is_final() {
                return Ok(op);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    what: format!("operation {id} ({})", op.kind),
                    after: timeout,
                });
            }
            tokio::time::sleep(WATCH_INTERVAL.min(deadline - now)).await;
        }
    }

    // ---- images ------------------------------------------------------------------------

    /// Uploads the OVA package at `path` and imports it as VM `name` (streamed, never held
    /// in memory). Returns the import operation.
    pub async fn import_ova(
        &self,
        path: &std::path::Path,
        name: &str,
        start: bool,
    ) -> Result<Operation, ClientError> {
        let mut url = format!(
            "/v1/vms/import?name={}&start={start}",
            encode_component(name)
        );
        url.push_str(&self.project_query('&'));
        self.upload_file(path, &url, "application/x-tar").await
    }

    /// Streams the local file `path` as the body of `POST url` and decodes the answer.
    async fn upload_file<T: DeserializeOwned>(
        &self,
        path: &std::path::Path,
        url: &str,
        content_type: &str,
    ) -> Result<T, ClientError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| ClientError::LocalFile {
                path: path.to_path_buf(),
                source,
            })?;
        let headers = self.auth_header().into_iter().collect();
        // Uploads take as long as they take; the operation carries the rest.
        let response = transport::exchange_body(
            &self.dialer,
            Method::POST,
            url,
            headers,
            Some(content_type),
            transport::file_body(file),
            MAX_BODY_BYTES,
        )
        .await?;
        if !response.status.is_success() {
            return Err(error_from_response(
                "POST",
                url,
                response.status.as_u16(),
                &response.body,
            ));
        }
        Self::decode(&Method::POST, url, &response)
    }

    /// Downloads VM `name` (stopped) as an OVA package to `out`, atomically: the package is
    /// written next to `out` and renamed over it only when complete.
    pub async fn export_vm(&self, name: &str, out: &std::path::Path) -> Result<(), ClientError> {
        self.download_to(&self.vm_path(name, "/export"), out).await
    }

    /// Downloads disk image `name` as qcow2 to `out`, atomically like [`Client::export_vm`].
    pub async fn export_image(&self, name: &str, out: &std::path::Path) -> Result<(), ClientError> {
        self.download_to(
            &format!("/v1/images/{}/export", encode_component(name)),
            out,
        )
        .await
    }

    /// Uploads the disk image at `path` and registers it as image `name`.
    pub async fn import_image(
        &self,
        path: &std::path::Path,
        name: &str,
        firmware: Option<vireo_types::Firmware>,
    ) -> Result<Operation, ClientError> {
        let mut url = format!("/v1/images/import?name={}", encode_component(name));
        if let Some(f) = firmware {
            url.push_str(match f {
                vireo_types::Firmware::Bios => "&firmware=bios",
                vireo_types::Firmware::Uefi => "&firmware=uefi",
            });
        }
        self.upload_file(path, &url, "application/octet-stream")
            .await
    }

    /// `GET path` into the file `out`: written next to it and renamed over it when complete.
    async fn download_to(&self, path: &str, out: &std::path::Path) -> Result<(), ClientError> {
        let path = path.to_string();
        let headers = self.auth_header().into_iter().collect();
        let file_name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = out.with_file_name(format!(".{file_name}.part-{}", std::process::id()));
        let result = transport::download(&self.dialer, &path, headers, &tmp, MAX_BODY_BYTES).await;
        match result {
            Ok(None) => {
                tokio::fs::rename(&tmp, out)
                    .await
                    .map_err(|source| ClientError::LocalFile {
                        path: out.to_path_buf(),
                        source,
                    })
            }
            Ok(Some(err)) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(error_from_response(
                    "GET",
                    &path,
                    err.status.as_u16(),
                    &err.body,
                ))
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    pub async fn list_images(&self) -> Result<Vec<ImageInfo>, ClientError> {
        self.get("/v1/images").await
    }

    pub async fn get_image(&self, name: &str) -> Result<ImageInfo, ClientError> {
        self.get(&format!("/v1/images/{}", encode_component(name)))
            .await
    }

    pub async fn delete_image(&self, name: &str) -> Result<Operation, ClientError> {
        self.json(
            Method::DELETE,
            &format!("/v1/images/{}", encode_component(name)),
            None,
        )
        .await
    }

    pub async fn build_image(&self, request: &BuildImageRequest) -> Result<Operation, ClientError> {
        self.post("/v1/images/build", request).await
    }

    // ---- host, projects, tokens, documents -----------------------------------------------

    pub async fn host(&self) -> Result<HostInfo, ClientError> {
        self.get("/v1/host").await
    }

    pub async fn list_projects(&self) -> Result<Vec<ProjectInfo>, ClientError> {
        self.get("/v1/projects").await
    }

    pub async fn create_project(
        &self,
        request: &CreateProjectRequest,
    ) -> Result<ProjectInfo, ClientError> {
        self.post("/v1/projects", request).await
    }

    /// Deletes a project; whatever 2xx body the daemon sends is ignored.
    pub async fn delete_project(&self, name: &str) -> Result<(), ClientError> {
        self.delete_ignoring_body(&format!("/v1/projects/{}", encode_component(name)))
            .await
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.get("/v1/tokens").await
    }

    /// Creates a token; its secret is in the answer and nowhere else.
    pub async fn create_token(
        &self,
        request: &CreateTokenRequest,
    ) -> Result<TokenCreated, ClientError> {
        self.post("/v1/tokens", request).await
    }

    /// Revokes a token; whatever 2xx body the daemon sends is ignored.
    pub async fn revoke_token(&self, name: &str) -> Result<(), ClientError> {
        self.delete_ignoring_body(&format!("/v1/tokens/{}", encode_component(name)))
            .await
    }

    /// The daemon's OpenAPI document.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/v1/openapi.json").await
    }

    /// Prometheus metrics text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let response = self
            .send(
                Method::GET,
                "/metrics",
                None,
                Vec::new(),
                self.request_timeout,
            )
            .await?;
        Ok(String::from_utf8_lossy(&response.body).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_components() {
        assert_eq!(encode_component("web-1"), "web-1");
        assert_eq!(encode_component("../x y"), "..%2Fx%20y");
        assert_eq!(encode_component("a?b&c=d#"), "a%3Fb%26c%3Dd%23");
        assert_eq!(encode_component("é"), "%C3%A9");
    }

    #[test]
    fn error_bodies_decode() {
        let body =
            br#"{"error":{"code":"conflict","message":"VM web1 is running","field":"state"}}"#;
        match error_from_response("POST", "/v1/vms/web1/start", 409, body) {
            ClientError::Api {
                status,
                code,
                message,
                field,
            } => {
                assert_eq!(status, 409);
                assert_eq!(code, vireo_api::ErrorCode::Conflict);
                assert_eq!(message, "VM web1 is running");
                assert_eq!(field.as_deref(), Some("state"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn other_bodies_become_snippets() {
        let body = b"<html>\x1b[31mbad gateway\n</html>";
        let err = error_from_response("GET", "/v1/host", 502, body);
        assert_eq!(
            err.to_string(),
            "GET /v1/host returned HTTP 502: \"<html> [31mbad gateway </html>\""
        );
        let long = vec![b'x'; 10_000];
        match error_from_response("GET", "/", 500, &long) {
            ClientError::UnexpectedStatus { snippet, .. } => {
                assert_eq!(snippet.len(), SNIPPET_CHARS)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn project_scoping_only_on_vm_paths() {
        let client = Client::new(ClientOptions::new(Remote::Unix("/nonexistent".into())))
            .unwrap()
            .with_project(Some(Name::new("team-a").unwrap()));
        assert_eq!(
            client.vm_path("web1", "/start"),
            "/v1/vms/web1/start?project=team-a"
        );
        let client = client.with_project(None);
        assert_eq!(client.vm_path("a/b", ""), "/v1/vms/a%2Fb");
    }
}
