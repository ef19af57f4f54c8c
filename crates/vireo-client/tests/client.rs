//! The client against small in-test servers: axum on a unix socket in a temp dir, and the
//! same router behind rustls on loopback TCP for the TLS trust modes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Query, RawQuery};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use uuid::Uuid;
use vireo_client::vireo_api::operations::{Operation, OperationStatus};
use vireo_client::vireo_api::vms::{UpdateVmRequest, VmInfo};
use vireo_client::vireo_api::{ErrorBody, ErrorCode};
use vireo_client::{Client, ClientError, ClientOptions, Fingerprint, Remote, TlsTrust};
use vireo_types::Name;

const TOKEN: &str = "s3cret-token";

fn vm_json(name: &str, vcpus: u32) -> serde_json::Value {
    json!({
        "name": name, "uuid": "0190a5b2-0000-7000-8000-000000000001", "project": "default",
        "state": "running", "guest_ready": true, "node": "node1", "vcpus": vcpus,
        "memory_mib": 256, "image": "tiny", "created_at": "2024-07-01T12:00:00Z", "pid": 4242,
        "accel": "tcg", "disks": [], "nics": [], "guest": null,
        "spec": {"vcpus": vcpus, "memory_mib": 256,
                 "boot": {"kind": "kernel", "kernel": "/k", "initrd": null, "cmdline": ""}},
        "revision": 7
    })
}

fn operation_json(id: Uuid, status: &str, percent: Option<f32>) -> serde_json::Value {
    json!({
        "id": id, "kind": "vm.start", "target": "vm/default/web1", "status": status,
        "progress": {"percent": percent, "bytes_done": null, "bytes_total": null, "stage": null},
        "created_at": "2024-07-01T12:00:00Z", "updated_at": "2024-07-01T12:00:01Z",
        "error": null, "requestor": "unix:uid=0", "log": [], "cancellable": false
    })
}

fn api_error(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.http_status()).expect("valid status");
    (status, Json(ErrorBody::new(code, message))).into_response()
}

#[derive(serde::Deserialize)]
struct WaitParams {
    timeout: u64,
}

fn router() -> Router {
    let wait_calls = Arc::new(AtomicU32::new(0));
    let watch_calls = Arc::new(AtomicU32::new(0));
    Router::new()
        .route(
            "/v1/host",
            get(|headers: HeaderMap| async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                if auth != Some(&format!("Bearer {TOKEN}")) {
                    return api_error(ErrorCode::Unauthorized, "a valid API token is required");
                }
                Json(json!({
                    "node": "node1", "hostname": "h", "vireo_version": "0.1.0",
                    "qemu_version": "7.2.0",
                    "accel": {"chosen": "tcg", "configured": "auto", "kvm_device_present": true,
                              "kvm_boots_guest": false, "detail": "probe guest hung"},
                    "cpus": 2, "memory_total_mib": 24000, "memory_available_mib": 20000,
                    "storage_total_bytes": 1, "storage_available_bytes": 1,
                    "vms_total": 1, "vms_running": 1, "uptime_s": 5
                }))
                .into_response()
            }),
        )
        .route(
            "/v1/vms",
            get(|RawQuery(query): RawQuery| async move {
                // Echo the query in the VM name so the test can see what was sent.
                let name = match query.as_deref() {
                    Some("project=team-a") => "in-team-a",
                    None => "in-default",
                    Some(_) => return api_error(ErrorCode::InvalidRequest, "unexpected query"),
                };
                Json(json!([vm_json(name, 1)])).into_response()
            }),
        )
        .route(
            "/v1/vms/{name}",
            get(|Path(name): Path<String>| async move {
                if name != "web1" {
                    return api_error(ErrorCode::NotFound, &format!("VM {name} does not exist"));
                }
                ([("etag", "\"7\"")], Json(vm_json(&name, 1))).into_response()
            })
            .patch(
                |Path(name): Path<String>, headers: HeaderMap, Json(req): Json<UpdateVmRequest>| async move {
                    if headers.get("if-match").and_then(|v| v.to_str().ok()) != Some("\"7\"") {
                        return api_error(ErrorCode::PreconditionFailed, "the VM changed");
                    }
                    Json(vm_json(&name, req.vcpus.unwrap_or(1))).into_response()
                },
            ),
        )
        .route(
            "/v1/vms/{name}/start",
            post(|body: Bytes| async move {
                assert_eq!(&body[..], b"{}");
                (StatusCode::ACCEPTED, Json(operation_json(Uuid::nil(), "running", None)))
            }),
        )
        .route(
            "/v1/operations/{id}/wait",
            get(move |Path(id): Path<Uuid>, Query(p): Query<WaitParams>| {
                let calls = wait_calls.clone();
                async move {
                    assert!(p.timeout >= 1 && p.timeout <= 3600, "timeout {}", p.timeout);
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    let status = if n == 0 { "running" } else { "succeeded" };
                    Json(operation_json(id, status, None))
                }
            }),
        )
        .route(
            "/v1/operations/{id}",
            get(move |Path(id): Path<Uuid>| {
                let calls = watch_calls.clone();
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    if n < 3 {
                        Json(operation_json(id, "running", Some(n as f32 * 30.0)))
                    } else {
                        Json(operation_json(id, "succeeded", Some(100.0)))
                    }
                }
            }),
        )
        .route(
            "/v1/images",
            get(|| async { (StatusCode::BAD_GATEWAY, "<html>bad gateway</html>") }),
        )
        .route(
            "/v1/projects",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Json(json!([]))
            }),
        )
        .route(
            "/v1/vms/{name}/console",
            get(|Path(name): Path<String>, RawQuery(query): RawQuery, ws: WebSocketUpgrade| async move {
                if name != "web1" {
                    return api_error(ErrorCode::NotFound, &format!("VM {name} does not exist"));
                }
                if query.as_deref() != Some("history=16") {
                    return api_error(ErrorCode::InvalidRequest, "unexpected query");
                }
                ws.on_upgrade(|mut socket| async move {
                    let _ = socket.send(Message::Binary(Bytes::from_static(b"login: "))).await;
                    while let Some(Ok(msg)) = socket.recv().await {
                        if let Message::Binary(b) = msg {
                            let upper = b.to_ascii_uppercase();
                            let _ = socket.send(Message::Binary(Bytes::from(upper))).await;
                        }
                    }
                })
                .into_response()
            }),
        )
        .route(
            "/v1/events",
            get(|ws: WebSocketUpgrade, RawQuery(query): RawQuery| async move {
                assert_eq!(query.as_deref(), Some("kinds=vm.state%2Coperation"));
                ws.on_upgrade(|mut socket| async move {
                    for seq in 1..=2u64 {
                        let event = json!({
                            "seq": seq, "timestamp": "2024-07-01T12:00:00Z", "kind": "vm.state",
                            "project": "default", "target": "vm/default/web1",
                            "requestor": "system", "data": {"state": "running"}
                        });
                        let _ = socket.send(Message::Text(event.to_string().into())).await;
                    }
                    let _ = socket.send(Message::Close(None)).await;
                })
            }),
        )
}

/// Serves `router()` on a unix socket in a fresh temp dir.
async fn unix_server() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vireo.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move { axum::serve(listener, router()).await });
    (dir, path)
}

fn unix_client(path: &std::path::Path, token: Option<&str>) -> Client {
    let mut options = ClientOptions::new(Remote::Unix(path.to_path_buf()));
    options.token = token.map(str::to_string);
    Client::new(options).unwrap()
}

#[tokio::test]
async fn bearer_token_is_sent_and_error_bodies_decode() {
    let (_dir, path) = unix_server().await;
    let host = unix_client(&path, Some(TOKEN)).host().await.unwrap();
    assert_eq!(host.accel.chosen, "tcg");

    let err = unix_client(&path, None).host().await.unwrap_err();
    match &err {
        ClientError::Api {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!(*status, 401);
            assert_eq!(*code, ErrorCode::Unauthorized);
            assert_eq!(message, "a valid API token is required");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "a valid API token is required (unauthorized, HTTP 401)"
    );

    let err = unix_client(&path, None).get_vm("nope").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test]
async fn non_api_error_bodies_and_timeouts() {
    let (_dir, path) = unix_server().await;
    let err = unix_client(&path, None).list_images().await.unwrap_err();
    assert!(
        matches!(&err, ClientError::UnexpectedStatus { status: 502, snippet, .. } if snippet == "<html>bad gateway</html>"),
        "{err:?}"
    );

    let mut options = ClientOptions::new(Remote::Unix(path.clone()));
    options.request_timeout = Duration::from_millis(200);
    let err = Client::new(options)
        .unwrap()
        .list_projects()
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "GET /v1/projects timed out after 200ms");
}

#[tokio::test]
async fn connect_errors_name_the_remote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    let err = unix_client(&path, None).host().await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot connect to unix:{}", path.display())
    );
    let source = std::error::Error::source(&err).expect("io cause");
    assert!(source.to_string().contains("No such file"), "{source}");
}

#[tokio::test]
async fn project_scoping_etag_and_if_match() {
    let (_dir, path) = unix_server().await;
    let client = unix_client(&path, None);
    assert_eq!(
        client.list_vms().await.unwrap()[0].name.as_str(),
        "in-default"
    );
    let scoped = client
        .clone()
        .with_project(Some(Name::new("team-a").unwrap()));
    assert_eq!(
        scoped.list_vms().await.unwrap()[0].name.as_str(),
        "in-team-a"
    );

    let tagged = client.get_vm_tagged("web1").await.unwrap();
    assert_eq!(tagged.etag.as_deref(), Some("\"7\""));
    let request = UpdateVmRequest {
        vcpus: Some(4),
        memory_mib: None,
        cloud_init: None,
    };
    let updated: VmInfo = client.update_vm("web1", &request, "\"7\"").await.unwrap();
    assert_eq!(updated.vcpus, 4);
    let err = client
        .update_vm("web1", &request, "\"6\"")
        .await
        .unwrap_err();
    assert_eq!(err.api_code(), Some(ErrorCode::PreconditionFailed));
}

#[tokio::test]
async fn operations_wait_and_watch() {
    let (_dir, path) = unix_server().await;
    let client = unix_client(&path, None);
    let op = client.start_vm("web1").await.unwrap();
    assert_eq!(op.status, OperationStatus::Running);

    // The first long-poll returns unfinished; the client must poll again.
    let done = client
        .wait_operation(op.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.status, OperationStatus::Succeeded);

    let mut seen: Vec<Option<f32>> = Vec::new();
    let done: Operation = client
        .watch_operation(op.id, Duration::from_secs(30), |o| {
            seen.push(o.progress.percent)
        })
        .await
        .unwrap();
    assert_eq!(done.status, OperationStatus::Succeeded);
    assert_eq!(seen, vec![Some(0.0), Some(30.0), Some(60.0), Some(100.0)]);
}

#[tokio::test]
async fn watch_times_out() {
    let (_dir, path) = unix_server().await;
    let client = unix_client(&path, None);
    let err = client
        .watch_operation(Uuid::nil(), Duration::from_millis(300), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn console_websocket_round_trip() {
    let (_dir, path) = unix_server().await;
    let client = unix_client(&path, None);
    let (mut sink, mut stream) = client.console("web1", Some(16)).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        Bytes::from_static(b"login: ")
    );
    sink.send(Bytes::from_static(b"root\n")).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        Bytes::from_static(b"ROOT\n")
    );
}

#[tokio::test]
async fn events_websocket() {
    let (_dir, path) = unix_server().await;
    let client = unix_client(&path, None);
    let events: Vec<_> = client
        .events(Some("vm.state,operation"))
        .await
        .unwrap()
        .collect()
        .await;
    let seqs: Vec<u64> = events.into_iter().map(|e| e.unwrap().seq).collect();
    assert_eq!(seqs, vec![1, 2]);
}

#[tokio::test]
async fn refused_websocket_upgrade_decodes_the_error_body() {
    let (_dir, path) = unix_server().await;
    let client = unix_client(&path, None);
    let err = match client.console("ghost", Some(16)).await {
        Err(e) => e,
        Ok(_) => panic!("upgrade must fail"),
    };
    assert_eq!(
        err.to_string(),
        "VM ghost does not exist (not_found, HTTP 404)"
    );
}

// ---- TLS ------------------------------------------------------------------------------

/// A server certificate resolver that presents a fixed chain and key, even mismatched ones.
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

struct TlsFixture {
    port: u16,
    cert_pem: String,
    fingerprint: Fingerprint,
}

/// Serves `router()` over TLS on 127.0.0.1. With `wrong_key`, the server presents its
/// certificate but signs the handshake with an unrelated key (an impostor that copied the
/// certificate).
async fn tls_server(wrong_key: bool) -> TlsFixture {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert_der = generated.cert.der().clone();
    let key = if wrong_key {
        rcgen::KeyPair::generate().unwrap()
    } else {
        generated.signing_key
    };
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).unwrap();
    let certified = Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert_der.clone()],
        signing,
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedCert(certified)));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(router());
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    TlsFixture {
        port,
        cert_pem: generated.cert.pem(),
        fingerprint: Fingerprint::of_der(cert_der.as_ref()),
    }
}

fn tls_client(host: &str, port: u16, trust: TlsTrust) -> Result<Client, ClientError> {
    let mut options = ClientOptions::new(Remote::Https {
        host: host.to_string(),
        port,
    });
    options.token = Some(TOKEN.to_string());
    options.tls = trust;
    Client::new(options)
}

#[tokio::test]
async fn tls_pinned_fingerprint() {
    let server = tls_server(false).await;
    let client = tls_client(
        "127.0.0.1",
        server.port,
        TlsTrust::Pinned(server.fingerprint),
    )
    .unwrap();
    assert_eq!(client.host().await.unwrap().node, "node1");
    // Websockets use the same TLS stream kind.
    let (_sink, mut stream) = client.console("web1", Some(16)).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        Bytes::from_static(b"login: ")
    );

    let mut other = server.fingerprint;
    other.0[0] ^= 1;
    let err = tls_client("127.0.0.1", server.port, TlsTrust::Pinned(other))
        .unwrap()
        .host()
        .await
        .unwrap_err();
    match &err {
        ClientError::PinMismatch { presented, .. } => assert_eq!(*presented, server.fingerprint),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn tls_pin_still_checks_the_handshake_signature() {
    let server = tls_server(true).await;
    let client = tls_client(
        "127.0.0.1",
        server.port,
        TlsTrust::Pinned(server.fingerprint),
    )
    .unwrap();
    let err = client.host().await.unwrap_err();
    assert!(matches!(err, ClientError::TlsHandshake { .. }), "{err:?}");
}

#[tokio::test]
async fn tls_ca_file_trust() {
    let server = tls_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.cert_pem).unwrap();
    let client = tls_client("127.0.0.1", server.port, TlsTrust::CaFile(ca.clone())).unwrap();
    assert_eq!(client.host().await.unwrap().hostname, "h");

    // A name the certificate does not cover is refused under CA trust.
    let other = rcgen::generate_simple_self_signed(vec!["elsewhere".to_string()]).unwrap();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let err = tls_client("127.0.0.1", server.port, TlsTrust::CaFile(other_ca))
        .unwrap()
        .host()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::TlsHandshake { .. }), "{err:?}");
}

#[test]
fn https_without_trust_is_refused_up_front() {
    let err = tls_client("127.0.0.1", 1, TlsTrust::Unconfigured).unwrap_err();
    assert!(matches!(err, ClientError::TlsConfig(_)), "{err:?}");
}
