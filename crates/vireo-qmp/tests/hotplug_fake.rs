//! Command sequences of the hotplug and job helpers against the fake QMP server: the paths
//! real QEMU cannot be pushed into on demand (a `device_add` that fails after both nodes were
//! added, a guest that releases the device, a job whose events are never seen).

use std::time::Duration;

use serde_json::{json, Value};
use vireo_qmp::fake::{FakeCommand, FakeQmpServer, FakeReply};
use vireo_qmp::{BlockFormat, BlockNodes, DiskHotplug, HotplugError, QmpClient};

fn disk() -> DiskHotplug {
    DiskHotplug {
        device_id: "data".into(),
        nodes: BlockNodes {
            file: "file_data".into(),
            format: "fmt_data".into(),
        },
        path: "/tmp/data.qcow2".into(),
        format: BlockFormat::Qcow2,
        read_only: false,
        serial: Some("data".into()),
        port: "vireo_hp0".into(),
    }
}

/// Answers the pre-check queries of an empty machine with one empty port `vireo_hp0`.
fn empty_machine(cmd: &FakeCommand) -> Option<FakeReply> {
    let path = cmd
        .arguments
        .as_ref()
        .and_then(|a| a.get("path"))
        .and_then(Value::as_str);
    match (cmd.name.as_str(), path) {
        ("qom-list", Some("/machine/peripheral")) => Some(FakeReply::Return(json!([
            {"name": "type", "type": "string"},
            {"name": "vireo_hp0", "type": "child<pcie-root-port>"}
        ]))),
        ("qom-list", Some("/machine/peripheral/vireo_hp0/vireo_hp0")) => Some(FakeReply::Return(
            json!([{"name": "type", "type": "string"}]),
        )),
        ("query-named-block-nodes", _) => Some(FakeReply::Return(json!([]))),
        _ => None,
    }
}

fn names_and_args(server: &FakeQmpServer) -> Vec<(String, Value)> {
    server
        .received()
        .into_iter()
        .filter(|c| !c.name.starts_with("qom-") && c.name != "query-named-block-nodes")
        .map(|c| (c.name, c.arguments.unwrap_or(Value::Null)))
        .collect()
}

#[tokio::test]
async fn failed_device_add_deletes_both_nodes_top_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start(dir.path().join("qmp.sock"), |cmd, _| {
        empty_machine(cmd).unwrap_or_else(|| match cmd.name.as_str() {
            "blockdev-add" | "blockdev-del" => FakeReply::ok(),
            "device_add" => FakeReply::error("GenericError", "no free slot"),
            other => FakeReply::error("CommandNotFound", other),
        })
    })
    .await
    .unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    let err = qmp.hot_add_disk(&disk()).await.unwrap_err();
    assert!(
        matches!(&err, HotplugError::Qmp { command: "device_add", id, .. } if id == "data"),
        "{err:?}"
    );
    let sent = names_and_args(&server);
    let names: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "blockdev-add",
            "blockdev-add",
            "device_add",
            "blockdev-del",
            "blockdev-del"
        ]
    );
    assert_eq!(sent[3].1, json!({"node-name": "fmt_data"}));
    assert_eq!(sent[4].1, json!({"node-name": "file_data"}));
}

#[tokio::test]
async fn failed_rollback_is_reported_with_both_causes() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start(dir.path().join("qmp.sock"), |cmd, _| {
        empty_machine(cmd).unwrap_or_else(|| match cmd.name.as_str() {
            "blockdev-add" => FakeReply::ok(),
            "device_add" => FakeReply::error("GenericError", "no free slot"),
            "blockdev-del" => FakeReply::error("GenericError", "Node fmt_data is in use"),
            other => FakeReply::error("CommandNotFound", other),
        })
    })
    .await
    .unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    let err = qmp.hot_add_disk(&disk()).await.unwrap_err();
    match &err {
        HotplugError::RollbackFailed { command, undo, .. } => {
            assert_eq!(*command, "device_add");
            assert!(undo.contains("blockdev-del fmt_data"), "{undo}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn removal_waits_for_the_device_event_not_the_backend_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeQmpServer::start(dir.path().join("qmp.sock"), |cmd, _| {
        match cmd.name.as_str() {
            // The device stays visible in QOM: only the event can end the wait.
            "qom-list" => {
                FakeReply::Return(json!([{"name": "data", "type": "child<virtio-blk-pci>"}]))
            }
            "device_del" => FakeReply::Then {
                reply: Box::new(FakeReply::ok()),
                events: vec![(
                    "DEVICE_DELETED".into(),
                    json!({"path": "/machine/peripheral/data/virtio-backend"}),
                )],
                close: false,
            },
            "blockdev-del" => FakeReply::ok(),
            other => FakeReply::error("CommandNotFound", other),
        }
    })
    .await
    .unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    let nodes = disk().nodes;
    let remove = tokio::spawn({
        let qmp = qmp.clone();
        async move {
            qmp.hot_remove_disk("data", &nodes, Duration::from_secs(5))
                .await
        }
    });
    // The backend's event alone does not finish the removal.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!remove.is_finished());
    assert!(!server.received().iter().any(|c| c.name == "blockdev-del"));
    server.emit_event(
        "DEVICE_DELETED",
        json!({"device": "data", "path": "/machine/peripheral/data"}),
    );
    tokio::time::timeout(Duration::from_secs(2), remove)
        .await
        .expect("removal finishes after DEVICE_DELETED")
        .unwrap()
        .unwrap();
    let dels: Vec<Value> = server
        .received()
        .into_iter()
        .filter(|c| c.name == "blockdev-del")
        .map(|c| c.arguments.unwrap())
        .collect();
    assert_eq!(
        dels,
        [
            json!({"node-name": "fmt_data"}),
            json!({"node-name": "file_data"})
        ]
    );
}

#[tokio::test]
async fn job_wait_polls_when_events_are_missed() {
    let dir = tempfile::tempdir().unwrap();
    let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = polls.clone();
    let server = FakeQmpServer::start(dir.path().join("qmp.sock"), move |cmd, _| {
        match cmd.name.as_str() {
            // No JOB_STATUS_CHANGE is ever sent; the job concludes on the third poll.
            "snapshot-delete" | "job-dismiss" => FakeReply::ok(),
            "query-jobs" => {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let status = if n >= 2 { "concluded" } else { "running" };
                FakeReply::Return(json!([{"id": "d1", "type": "snapshot-delete",
                    "status": status, "current-progress": 1, "total-progress": 1}]))
            }
            other => FakeReply::error("CommandNotFound", other),
        }
    })
    .await
    .unwrap();
    let qmp = QmpClient::connect(server.path()).await.unwrap();
    let info = qmp
        .snapshot_delete("d1", "m1", &["fmt_root".into()], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(info.job_type, "snapshot-delete");
    let names: Vec<String> = server.received().into_iter().map(|c| c.name).collect();
    assert_eq!(names.first().map(String::as_str), Some("snapshot-delete"));
    assert_eq!(names.last().map(String::as_str), Some("job-dismiss"));
    assert!(polls.load(std::sync::atomic::Ordering::SeqCst) >= 3);
}
