//! QmpClient against a real qemu-system-x86_64 (no guest: empty q35 machine under TCG).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use vireo_qmp::{QmpClient, QmpEvent, RunState};

async fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "QEMU did not create {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn expect_event(rx: &mut tokio::sync::broadcast::Receiver<QmpEvent>, name: &str) -> QmpEvent {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {name} event within 5 s"))
            .expect("event channel open");
        if ev.name == name {
            return ev;
        }
    }
}

#[tokio::test]
async fn lifecycle_against_real_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-system-x86_64 is installed");
    wait_for_socket(&sock).await;

    let qmp = QmpClient::connect(&sock).await.unwrap();
    let greeting = qmp.greeting().clone();
    assert!(greeting.version.qemu.major >= 7, "{greeting:?}");
    assert_eq!(qmp.query_version().await.unwrap(), greeting.version);

    let status = qmp.query_status().await.unwrap();
    assert_eq!((status.running, status.status), (true, RunState::Running));

    let mut events = qmp.events();
    qmp.stop().await.unwrap();
    let stop = expect_event(&mut events, "STOP").await;
    assert!(stop.timestamp.seconds > 0);
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Paused);

    qmp.cont().await.unwrap();
    expect_event(&mut events, "RESUME").await;
    assert!(qmp.query_status().await.unwrap().running);

    let err = qmp.execute("no-such-command", None).await.unwrap_err();
    assert_eq!(err.class(), Some("CommandNotFound"));

    qmp.quit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), qmp.closed())
        .await
        .expect("QMP connection closes after quit");
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
