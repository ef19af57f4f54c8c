//! QmpClient against the fake QMP server (real wire protocol over a unix socket).

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use vireo_qmp::fake::{FakeQmpServer, FakeReply};
use vireo_qmp::{QmpClient, QmpError, QmpOptions, RunState};

fn sock(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("qmp.sock")
}

async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<vireo_qmp::QmpEvent>,
) -> vireo_qmp::QmpEvent {
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("event within 2 s")
        .expect("event channel open")
}

#[tokio::test]
async fn handshake_keeps_greeting_and_negotiates() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start_vm(sock(&dir)).await.unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    assert_eq!(qmp.greeting().version.qemu.to_string(), "7.2.0");
    assert_eq!(qmp.greeting().capabilities, vec!["oob".to_string()]);
    // qmp_capabilities is consumed by the negotiation phase, not recorded as a command.
    assert!(server.received().is_empty());
    let status = qmp.query_status().await.unwrap();
    assert!(status.running);
    assert_eq!(status.status, RunState::Running);
    let v = qmp.query_version().await.unwrap();
    assert_eq!((v.qemu.major, v.qemu.minor), (7, 2));
    let names: Vec<_> = server.received().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["query-status", "query-version"]);
}

#[tokio::test]
async fn handshake_rejects_a_non_qmp_peer_and_times_out_on_silence() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let listener = UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"{\"hello\": 1}\r\n").await.unwrap();
        let (mut silent, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let _ = silent.read(&mut buf).await;
    });
    let err = QmpClient::connect(&path).await.unwrap_err();
    assert!(matches!(err, QmpError::Handshake { .. }), "{err:?}");
    let opts = QmpOptions {
        handshake_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let err = QmpClient::connect_with(&path, opts).await.unwrap_err();
    assert!(matches!(err, QmpError::HandshakeTimeout { .. }), "{err:?}");
    server.abort();
    let missing = dir.path().join("missing.sock");
    assert!(matches!(
        QmpClient::connect(&missing).await,
        Err(QmpError::Connect { .. })
    ));
}

#[tokio::test]
async fn replies_are_matched_by_id_when_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start(sock(&dir), |cmd, _| match cmd.name.as_str() {
        "slow" => FakeReply::Delayed(
            Duration::from_millis(400),
            Box::new(FakeReply::Return(json!("slow-result"))),
        ),
        "fast" => FakeReply::Return(json!({"echo": cmd.arguments.clone()})),
        _ => FakeReply::error("CommandNotFound", "no"),
    })
    .await
    .unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    let started = Instant::now();
    let slow = tokio::spawn({
        let qmp = qmp.clone();
        async move { (qmp.execute("slow", None).await, started.elapsed()) }
    });
    // Make sure "slow" is on the wire first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fast = qmp.execute("fast", Some(json!({"n": 7}))).await.unwrap();
    let fast_done = started.elapsed();
    assert_eq!(fast, json!({"echo": {"n": 7}}));
    let (slow_result, slow_done) = slow.await.unwrap();
    assert_eq!(slow_result.unwrap(), json!("slow-result"));
    assert!(
        fast_done < slow_done,
        "fast {fast_done:?} must finish before slow {slow_done:?}"
    );
    let ids: Vec<_> = server
        .received()
        .into_iter()
        .map(|c| c.id.unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn events_are_broadcast_with_data_and_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start_vm(sock(&dir)).await.unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    let mut events = qmp.events();
    let mut second = qmp.events();
    qmp.stop().await.unwrap();
    let ev = next_event(&mut events).await;
    assert_eq!(ev.name, "STOP");
    assert!(ev.timestamp.seconds > 1_600_000_000);
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Paused);
    qmp.cont().await.unwrap();
    assert_eq!(next_event(&mut events).await.name, "RESUME");
    assert!(server.emit_event("BLOCK_JOB_COMPLETED", json!({"device": "d1", "len": 10})));
    let ev = next_event(&mut events).await;
    assert_eq!(ev.name, "BLOCK_JOB_COMPLETED");
    assert_eq!(ev.data["device"], "d1");
    qmp.system_reset().await.unwrap();
    assert_eq!(
        next_event(&mut events).await.data["reason"],
        "host-qmp-system-reset"
    );
    // Every subscriber sees every event.
    let names: Vec<_> = [
        next_event(&mut second).await.name,
        next_event(&mut second).await.name,
        next_event(&mut second).await.name,
        next_event(&mut second).await.name,
    ]
    .to_vec();
    assert_eq!(names, ["STOP", "RESUME", "BLOCK_JOB_COMPLETED", "RESET"]);
}

#[tokio::test]
async fn error_replies_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start(sock(&dir), |cmd, _| match cmd.name.as_str() {
        "device_del" => FakeReply::error("DeviceNotFound", "Device 'x' not found"),
        "query-status" => FakeReply::Return(json!({"running": "yes"})),
        _ => FakeReply::ok(),
    })
    .await
    .unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    let err = qmp
        .execute("device_del", Some(json!({"id": "x"})))
        .await
        .unwrap_err();
    match &err {
        QmpError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "device_del");
            assert_eq!(class, "DeviceNotFound");
            assert_eq!(desc, "Device 'x' not found");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.class(), Some("DeviceNotFound"));
    assert!(matches!(
        qmp.query_status().await,
        Err(QmpError::Decode { .. })
    ));
    // The session is still usable after errors.
    assert_eq!(qmp.execute("anything", None).await.unwrap(), json!({}));
}

#[tokio::test]
async fn eof_is_reported_and_fails_pending_and_new_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start(sock(&dir), |cmd, _| match cmd.name.as_str() {
        "hang" => FakeReply::NoReply,
        _ => FakeReply::ok(),
    })
    .await
    .unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    let mut watch = qmp.closed_watch();
    assert!(!qmp.is_closed());
    let pending = tokio::spawn({
        let qmp = qmp.clone();
        async move { qmp.execute("hang", None).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.drop_connection());
    tokio::time::timeout(Duration::from_secs(2), qmp.closed())
        .await
        .expect("closed within 2 s");
    assert!(qmp.is_closed());
    assert!(*watch.borrow_and_update());
    assert!(matches!(
        pending.await.unwrap(),
        Err(QmpError::Closed { .. })
    ));
    assert!(matches!(
        qmp.execute("query-status", None).await,
        Err(QmpError::Closed { .. })
    ));
}

#[tokio::test]
async fn command_timeout_leaves_the_session_usable() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start(sock(&dir), |cmd, _| match cmd.name.as_str() {
        "hang" => FakeReply::NoReply,
        "late" => FakeReply::Delayed(
            Duration::from_millis(300),
            Box::new(FakeReply::Return(json!("late"))),
        ),
        _ => FakeReply::Return(json!(cmd.name)),
    })
    .await
    .unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    let t = Duration::from_millis(100);
    let err = qmp.execute_with_timeout("hang", None, t).await.unwrap_err();
    assert!(
        matches!(err, QmpError::Timeout { timeout, .. } if timeout == t),
        "{err:?}"
    );
    assert!(matches!(
        qmp.execute_with_timeout("late", None, t).await,
        Err(QmpError::Timeout { .. })
    ));
    // The late reply arrives while the next command waits; it must not be taken for its reply.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(qmp.execute("ping", None).await.unwrap(), json!("ping"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(qmp.execute("other", None).await.unwrap(), json!("other"));
    assert!(!qmp.is_closed());
}

#[tokio::test]
async fn quit_and_guest_powerdown_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start_vm(sock(&dir)).await.unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    let mut events = qmp.events();
    qmp.system_powerdown().await.unwrap();
    assert_eq!(next_event(&mut events).await.name, "POWERDOWN");
    assert_eq!(next_event(&mut events).await.name, "SHUTDOWN");
    tokio::time::timeout(Duration::from_secs(2), qmp.closed())
        .await
        .unwrap();

    let qmp = QmpClient::connect(server.path()).await.unwrap();
    assert_eq!(server.connections(), 2);
    let mut events = qmp.events();
    qmp.quit().await.unwrap();
    let ev = next_event(&mut events).await;
    assert_eq!(
        (ev.name.as_str(), ev.data["reason"].as_str()),
        ("SHUTDOWN", Some("host-qmp-quit"))
    );
    tokio::time::timeout(Duration::from_secs(2), qmp.closed())
        .await
        .unwrap();
}

#[tokio::test]
async fn commands_before_negotiation_are_refused_by_the_fake() {
    // Guards the fake's fidelity: QEMU refuses commands before qmp_capabilities.
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start_vm(sock(&dir)).await.unwrap();
    let mut s = tokio::net::UnixStream::connect(server.path())
        .await
        .unwrap();
    s.write_all(b"{\"execute\":\"query-status\",\"id\":1}\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("CommandNotFound") {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("\"id\":1"));
}

#[tokio::test]
async fn dropping_the_last_client_closes_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start_vm(sock(&dir)).await.unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    let mut watch = qmp.closed_watch();
    let clone = qmp.clone();
    drop(qmp);
    assert!(
        !*watch.borrow_and_update(),
        "a clone still holds the session"
    );
    drop(clone);
    tokio::time::timeout(Duration::from_secs(2), watch.wait_for(|c| *c))
        .await
        .unwrap()
        .unwrap();
    // The server sees the hang-up and accepts the next client.
    let again = QmpClient::connect(server.path()).await.unwrap();
    assert!(again.query_status().await.unwrap().running);
}
