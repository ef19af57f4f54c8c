//! The `vireo` binary against a fake daemon (axum on a unix socket in a temp dir): exit
//! codes, error lines, output formats, waiting, exec and the pipe-mode console.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;
use vireo_api::{ErrorBody, ErrorCode};

#[derive(Default)]
struct Fake {
    /// Bodies of `POST /v1/vms`.
    created: Vec<Value>,
    /// `GET /v1/vms/web1` calls; the guest becomes ready on the third.
    gets: u32,
    /// Bodies of `POST …/exec`.
    execs: Vec<Value>,
}

type Shared = Arc<Mutex<Fake>>;

fn fixture_vms() -> Vec<Value> {
    serde_json::from_str(include_str!("fixtures/vms.json")).unwrap()
}

fn operation(id: Uuid, kind: &str, status: &str, error: Option<&str>) -> Value {
    json!({
        "id": id, "kind": kind, "target": "vm/default/web1", "status": status,
        "progress": {"percent": null, "bytes_done": null, "bytes_total": null, "stage": null},
        "created_at": "2024-07-01T12:00:00Z", "updated_at": "2024-07-01T12:00:01Z",
        "error": error, "requestor": "unix:uid=0", "log": [], "cancellable": false
    })
}

/// Operation ids encode their outcome: all-zero fails, anything else succeeds.
fn final_operation(id: Uuid) -> Value {
    if id.is_nil() {
        operation(id, "vm.start", "failed", Some("QEMU exited with status 1"))
    } else {
        operation(id, "vm.create", "succeeded", None)
    }
}

fn api_error(code: ErrorCode, message: String) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap();
    (status, Json(ErrorBody::new(code, message))).into_response()
}

fn router(state: Shared) -> Router {
    Router::new()
        .route(
            "/v1/vms",
            get(|| async { Json(fixture_vms()) }).post(
                |State(s): State<Shared>, Json(body): Json<Value>| async move {
                    s.lock().unwrap().created.push(body);
                    (StatusCode::ACCEPTED, Json(operation(Uuid::from_u128(1), "vm.create", "running", None)))
                },
            ),
        )
        .route(
            "/v1/vms/{name}",
            get(|State(s): State<Shared>, UrlPath(name): UrlPath<String>| async move {
                if name != "web1" {
                    return api_error(ErrorCode::NotFound, format!("VM {name} does not exist"));
                }
                let mut vm = fixture_vms()[0].clone();
                let mut fake = s.lock().unwrap();
                fake.gets += 1;
                vm["guest_ready"] = json!(fake.gets >= 3);
                ([("etag", "\"7\"")], Json(vm)).into_response()
            })
            .patch(|headers: HeaderMap, Json(body): Json<Value>| async move {
                if headers.get("if-match").and_then(|v| v.to_str().ok()) != Some("\"7\"") {
                    return api_error(ErrorCode::PreconditionFailed, "stale".into());
                }
                let mut vm = fixture_vms()[0].clone();
                vm["vcpus"] = body["vcpus"].clone();
                Json(vm).into_response()
            }),
        )
        .route(
            "/v1/vms/{name}/start",
            post(|| async { (StatusCode::ACCEPTED, Json(operation(Uuid::nil(), "vm.start", "running", None))) }),
        )
        .route(
            "/v1/operations/{id}/wait",
            get(|UrlPath(id): UrlPath<Uuid>| async move { Json(final_operation(id)) }),
        )
        .route("/v1/operations/{id}", get(|UrlPath(id): UrlPath<Uuid>| async move { Json(final_operation(id)) }))
        .route(
            "/v1/vms/{name}/exec",
            post(|State(s): State<Shared>, Json(body): Json<Value>| async move {
                s.lock().unwrap().execs.push(body);
                let b64 = base64::engine::general_purpose::STANDARD;
                Json(json!({
                    "exit_code": 3, "signal": null, "truncated": false,
                    "stdout_base64": b64.encode("hello\n"), "stderr_base64": b64.encode("oops\n")
                }))
            }),
        )
        .route(
            "/v1/vms/{name}/console",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    let _ = socket.send(Message::Binary(Bytes::from_static(b"login: "))).await;
                    while let Some(Ok(msg)) = socket.recv().await {
                        if let Message::Binary(b) = msg {
                            let _ = socket.send(Message::Binary(Bytes::from(b.to_ascii_uppercase()))).await;
                        }
                    }
                })
            }),
        )
        .with_state(state)
}

struct FakeDaemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    state: Shared,
}

async fn fake_daemon() -> FakeDaemon {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vireo.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let state = Shared::default();
    let app = router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeDaemon {
        _dir: dir,
        socket,
        state,
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn vireo(socket: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vireo"));
    cmd.arg("--remote")
        .arg(format!("unix:{}", socket.display()))
        .args(args)
        .env_remove("VIREO_REMOTE")
        .env_remove("VIREO_PROJECT")
        .env_remove("VIREO_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("vireo did not finish")
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_wait_prints_the_ready_vm() {
    let d = fake_daemon().await;
    let r = vireo(
        &d.socket,
        &[
            "vm",
            "create",
            "web1",
            "--image",
            "tiny",
            "--memory",
            "512MiB",
            "--no-network",
            "--start",
            "--wait",
            "-o",
            "json",
        ],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let vm: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(vm["name"], "web1");
    assert_eq!(vm["guest_ready"], true);
    let fake = d.state.lock().unwrap();
    assert_eq!(
        fake.created,
        vec![
            json!({"name": "web1", "image": "tiny", "template": null, "count": null, "pool": null, "vcpus": null, "memory_mib": 512, "disk_mib": null,
                    "networks": [], "firmware": null, "kernel_args": null, "cloud_init": null, "ignition": null, "start": true})
        ]
    );
    assert!(fake.gets >= 3, "guest readiness was not polled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_table_and_state_filter() {
    let d = fake_daemon().await;
    let r = vireo(&d.socket, &["vm", "list"], None).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, include_str!("golden/vm_list.table"));
    let r = vireo(
        &d.socket,
        &["vm", "list", "--state", "stopped", "-o", "json"],
        None,
    )
    .await;
    let vms: Vec<Value> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0]["name"], "db-primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_with_their_causes() {
    let d = fake_daemon().await;
    let r = vireo(&d.socket, &["vm", "show", "ghost"], None).await;
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: cannot show VM ghost: VM ghost does not exist (not_found, HTTP 404)\n"
    );
    assert_eq!(r.stdout, "");

    let r = vireo(&d.socket, &["vm", "start", "web1"], None).await;
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: cannot start VM web1: vm.start of vm/default/web1 failed: QEMU exited with status 1\n"
    );

    let r = vireo(&d.socket, &["vm", "show", "NOT_A_NAME"], None).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_forwards_output_and_exit_code() {
    let d = fake_daemon().await;
    let r = vireo(
        &d.socket,
        &[
            "vm",
            "exec",
            "web1",
            "--timeout",
            "5",
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
        None,
    )
    .await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(r.stderr, "oops\n");
    let r = vireo(
        &d.socket,
        &["vm", "exec", "web1", "-i", "cat"],
        Some(b"input"),
    )
    .await;
    assert_eq!(r.code, 3);
    let fake = d.state.lock().unwrap();
    assert_eq!(
        fake.execs[0],
        json!({"command": ["sh", "-c", "exit 3"], "stdin_base64": null, "timeout_s": 5})
    );
    assert_eq!(
        fake.execs[1]["stdin_base64"],
        base64::engine::general_purpose::STANDARD.encode("input")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_uses_the_etag() {
    let d = fake_daemon().await;
    let r = vireo(
        &d.socket,
        &["vm", "edit", "web1", "--vcpus", "4", "-o", "yaml"],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\nvcpus: 4\n"), "{}", r.stdout);
    let r = vireo(&d.socket, &["vm", "edit", "web1"], None).await;
    assert_eq!(r.code, 2, "edit without a change must be a usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pipe_mode_sends_stdin_and_prints_output() {
    let d = fake_daemon().await;
    let r = vireo(
        &d.socket,
        &["vm", "console", "web1", "--grace", "1"],
        Some(b"root\n"),
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "login: ROOT\n");
}
