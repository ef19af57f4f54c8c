//! Engine tests of snapshots, clones, templates, attach/detach and resize over the fake
//! hypervisor. The fake applies storage calls to the real qcow2 files with the image engine,
//! so the snapshot tables checked here are the ones on disk.

use vireo_api::operations::{Operation, OperationStatus};
use vireo_api::snapshots::{CloneMode, CloneVmRequest, CreateSnapshotRequest};
use vireo_api::storage::{AttachDiskRequest, CreateVolumeRequest, VolumeKind};
use vireo_api::vms::StopRequest;
use vireo_engine::{Engine, EngineError};
use vireo_types::{VmAction, VmState};

mod common;
use common::*;

async fn ok(e: &Engine, op: Operation) -> Operation {
    let op = wait(e, &op).await;
    assert_eq!(op.status, OperationStatus::Succeeded, "{op:?}");
    op
}

async fn failed(e: &Engine, op: Operation) -> Operation {
    let op = wait(e, &op).await;
    assert_eq!(op.status, OperationStatus::Failed, "{op:?}");
    op
}

async fn act(e: &Engine, vm: &str, a: VmAction) {
    let op = e
        .vm_action(None, vm, a, StopRequest::default(), "t")
        .await
        .unwrap();
    ok(e, op).await;
}

fn snap(n: &str, memory: bool) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        name: name(n),
        memory,
        description: None,
    }
}

async fn qcow2_snapshots(e: &Engine, vm: &str) -> Vec<String> {
    let info = e.get_vm(None, vm).await.unwrap();
    vireo_image::qcow2::snapshot_list(&info.spec.disks[0].path, &Default::default())
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect()
}

#[tokio::test]
async fn snapshot_tree_offline_and_online() {
    let env = setup().await;
    let e = &env.engine;
    ok(
        e,
        e.create_vm(None, create_req("a", false), "t")
            .await
            .unwrap(),
    )
    .await;

    // Stopped: disk-only snapshots through the pool driver.
    ok(
        e,
        e.create_snapshot(None, "a", snap("s1", false), "t")
            .await
            .unwrap(),
    )
    .await;
    ok(
        e,
        e.create_snapshot(None, "a", snap("s2", false), "t")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(qcow2_snapshots(e, "a").await, ["s1", "s2"]);
    let list = e.list_snapshots(None, "a").await.unwrap();
    assert_eq!(list[1].parent.as_ref().unwrap().as_str(), "s1");
    assert!(list[1].current);

    // Memory snapshots need a running VM; a duplicate name is refused up front.
    assert!(matches!(
        e.create_snapshot(None, "a", snap("m", true), "t")
            .await
            .unwrap_err(),
        EngineError::Conflict(_)
    ));
    assert!(matches!(
        e.create_snapshot(None, "a", snap("s1", false), "t")
            .await
            .unwrap_err(),
        EngineError::Conflict(_)
    ));

    // Running: the agent freezes the filesystems around a disk-only snapshot.
    act(e, "a", VmAction::Start).await;
    let _ = e
        .wait_guest_ready(None, "a", std::time::Duration::from_secs(5))
        .await;
    ok(
        e,
        e.create_snapshot(None, "a", snap("s3", false), "t")
            .await
            .unwrap(),
    )
    .await;
    let m = env
        .hv
        .machine(e.get_vm(None, "a").await.unwrap().uuid)
        .unwrap();
    assert!(m.freezes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(!m.is_frozen(), "thawed afterwards");
    let s3 = e.list_snapshots(None, "a").await.unwrap().pop().unwrap();
    assert!(s3.fs_frozen);
    assert_eq!(s3.vm_state, VmState::Running);

    // A memory snapshot, then pause, then restore: running again, like at the snapshot.
    ok(
        e,
        e.create_snapshot(None, "a", snap("m1", true), "t")
            .await
            .unwrap(),
    )
    .await;
    act(e, "a", VmAction::Pause).await;
    ok(e, e.restore_snapshot(None, "a", "m1", "t").await.unwrap()).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(e.get_vm(None, "a").await.unwrap().state, VmState::Running);

    // From a stopped VM: started paused, loaded, resumed like at the snapshot.
    act(e, "a", VmAction::Kill).await;
    ok(e, e.restore_snapshot(None, "a", "m1", "t").await.unwrap()).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let vm = e.get_vm(None, "a").await.unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert!(vm.pid.is_some());

    // Delete from the middle keeps the others and re-parents.
    ok(e, e.delete_snapshot(None, "a", "s2", "t").await.unwrap()).await;
    let list = e.list_snapshots(None, "a").await.unwrap();
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s1", "s3", "m1"]);
    assert_eq!(list[1].parent.as_ref().unwrap().as_str(), "s1");
    assert_eq!(qcow2_snapshots(e, "a").await, ["s1", "s3", "m1"]);

    // Disk-only restore of a running VM: it is restarted on the snapshot's disks.
    let pid_before = e.get_vm(None, "a").await.unwrap().pid;
    ok(e, e.restore_snapshot(None, "a", "s1", "t").await.unwrap()).await;
    let vm = e.get_vm(None, "a").await.unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert_ne!(vm.pid, pid_before);
    assert_eq!(vm.current_snapshot.as_ref().unwrap().as_str(), "s1");

    // Unknown snapshots are 404 and change nothing.
    assert!(matches!(
        e.restore_snapshot(None, "a", "nope", "t")
            .await
            .unwrap_err(),
        EngineError::NotFound { .. }
    ));
    assert!(matches!(
        e.delete_snapshot(None, "a", "nope", "t").await.unwrap_err(),
        EngineError::NotFound { .. }
    ));
    assert_eq!(e.list_snapshots(None, "a").await.unwrap().len(), 3);

    // Deleting the VM removes its snapshot records.
    act(e, "a", VmAction::Kill).await;
    act(e, "a", VmAction::Delete).await;
    ok(
        e,
        e.create_vm(None, create_req("a", false), "t")
            .await
            .unwrap(),
    )
    .await;
    assert!(e.list_snapshots(None, "a").await.unwrap().is_empty());
}

#[tokio::test]
async fn templates_linked_and_full_clones() {
    let env = setup().await;
    let e = &env.engine;
    ok(
        e,
        e.create_vm(None, create_req("base", false), "t")
            .await
            .unwrap(),
    )
    .await;
    ok(
        e,
        e.create_snapshot(None, "base", snap("s1", false), "t")
            .await
            .unwrap(),
    )
    .await;

    // Full clone of a snapshot and of the current state.
    for (n, s) in [("full1", Some("s1")), ("full2", None)] {
        let req = CloneVmRequest {
            name: name(n),
            mode: CloneMode::Full,
            snapshot: s.map(name),
            pool: None,
            start: false,
        };
        ok(e, e.clone_vm(None, "base", req, "t").await.unwrap()).await;
        let c = e.get_vm(None, n).await.unwrap();
        assert_ne!(c.uuid, e.get_vm(None, "base").await.unwrap().uuid);
        let vols = e.list_volumes(Some("default")).await.unwrap();
        let v = vols
            .iter()
            .find(|v| v.attached_to.as_ref().is_some_and(|a| a.vm.as_str() == n))
            .unwrap();
        assert!(v.backing.is_none(), "full clones are independent");
    }

    // Linked clone of a snapshot materialises one base and reuses it.
    for n in ["l1", "l2"] {
        let req = CloneVmRequest {
            name: name(n),
            mode: CloneMode::Linked,
            snapshot: Some(name("s1")),
            pool: None,
            start: false,
        };
        ok(e, e.clone_vm(None, "base", req, "t").await.unwrap()).await;
    }
    let bases: Vec<_> = e
        .list_volumes(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|v| v.kind == VolumeKind::Base)
        .collect();
    assert_eq!(bases.len(), 1, "{bases:?}");
    assert_eq!(bases[0].dependants.len(), 2);
    // The base goes with its last user.
    act(e, "l1", VmAction::Delete).await;
    act(e, "l2", VmAction::Delete).await;
    assert!(e
        .list_volumes(None)
        .await
        .unwrap()
        .iter()
        .all(|v| v.kind != VolumeKind::Base));

    // Template: immutable, cannot start; creates linked clones, many at once.
    e.template_vm(None, "base", "t").await.unwrap();
    let err = e
        .vm_action(None, "base", VmAction::Start, StopRequest::default(), "t")
        .await;
    match err {
        Ok(op) => {
            failed(e, op).await;
        }
        Err(e) => assert!(matches!(e, EngineError::Conflict(_)), "{e}"),
    }
    assert!(matches!(
        e.create_snapshot(None, "base", snap("x", false), "t")
            .await
            .unwrap_err(),
        EngineError::Conflict(_)
    ));
    let mut req = create_req("web", true);
    req.image = None;
    req.template = Some(name("base"));
    req.memory_mib = None;
    req.vcpus = None;
    req.count = Some(5);
    ok(e, e.create_vm(None, req, "t").await.unwrap()).await;
    for i in 1..=5 {
        let vm = e.get_vm(None, &format!("web{i}")).await.unwrap();
        assert_eq!(vm.state, VmState::Running);
        assert_eq!(vm.template_source.as_ref().unwrap().as_str(), "base");
    }
    let tvol = e
        .list_volumes(None)
        .await
        .unwrap()
        .into_iter()
        .find(|v| {
            v.attached_to
                .as_ref()
                .is_some_and(|a| a.vm.as_str() == "base")
        })
        .unwrap();
    assert_eq!(tvol.kind, VolumeKind::Base);
    assert!(tvol.read_only);
    assert_eq!(tvol.dependants.len(), 5);

    // Deleting the template is refused with the list of dependants.
    let err = e
        .vm_action(None, "base", VmAction::Delete, StopRequest::default(), "t")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("web3"), "{err}");

    // A batch whose names collide is refused before anything is made.
    let mut req = create_req("web", false);
    req.image = None;
    req.template = Some(name("base"));
    req.count = Some(6);
    assert!(matches!(
        e.create_vm(None, req, "t").await.unwrap_err(),
        EngineError::Conflict(_)
    ));
    assert!(e.get_vm(None, "web6").await.is_err());

    // cloud-init settings given with the template replace the template's in the clone (its
    // own seed CD-ROM); bad ones and Ignition are refused before anything is made.
    let mut req = create_req("ci", false);
    req.image = None;
    req.template = Some(name("base"));
    req.memory_mib = None;
    req.vcpus = None;
    req.cloud_init = Some(vireo_api::vms::CloudInitConfig {
        user_data: Some("#cloud-config\nhostname: from-clone\n".into()),
        ..Default::default()
    });
    ok(e, e.create_vm(None, req.clone(), "t").await.unwrap()).await;
    let vm = e.get_vm(None, "ci").await.unwrap();
    let ci = vm
        .cloud_init
        .as_ref()
        .expect("the clone has cloud-init settings");
    assert!(ci.user_data.as_deref().unwrap().contains("from-clone"));
    let seed = vm.spec.cdroms.iter().find(|c| c.name.as_str() == "cidata");
    assert!(
        seed.is_some_and(|c| c.path.is_file()),
        "{:?}",
        vm.spec.cdroms
    );
    req.name = name("ci2");
    req.cloud_init = Some(vireo_api::vms::CloudInitConfig {
        user_data: Some("#cloud-config\nusers: [unclosed\n".into()),
        ..Default::default()
    });
    let err = e.create_vm(None, req.clone(), "t").await.unwrap_err();
    assert_eq!(err.field(), Some("cloud_init.user_data"), "{err}");
    req.cloud_init = None;
    req.ignition = Some(r#"{"ignition":{"version":"3.4.0"}}"#.into());
    let err = e.create_vm(None, req, "t").await.unwrap_err();
    assert_eq!(err.field(), Some("ignition"), "{err}");
    assert!(e.get_vm(None, "ci2").await.is_err());
}

#[tokio::test]
async fn attach_detach_and_resize() {
    let env = setup().await;
    let e = &env.engine;
    ok(
        e,
        e.create_vm(None, create_req("a", true), "t").await.unwrap(),
    )
    .await;
    e.create_volume(
        "default",
        CreateVolumeRequest {
            name: name("extra"),
            size_bytes: 8 << 20,
        },
        "t",
    )
    .await
    .unwrap();
    let attach = |disk: Option<&str>| AttachDiskRequest {
        pool: name("default"),
        volume: name("extra"),
        disk: disk.map(name),
    };
    ok(
        e,
        e.attach_disk(None, "a", attach(None), "t").await.unwrap(),
    )
    .await;
    let uuid = e.get_vm(None, "a").await.unwrap().uuid;
    let m = env.hv.machine(uuid).unwrap();
    assert_eq!(m.disk_names(), ["data", "extra"], "hot-plugged");
    let v = e.get_volume("default", "extra").await.unwrap();
    assert_eq!(v.attached_to.unwrap().disk.as_str(), "extra");
    // Attached twice or deleted while attached: refused.
    assert!(matches!(
        e.attach_disk(None, "a", attach(Some("again")), "t")
            .await
            .unwrap_err(),
        EngineError::Conflict(_)
    ));
    assert!(matches!(
        e.delete_volume("default", "extra", "t").await.unwrap_err(),
        EngineError::Conflict(_)
    ));

    // Online resize reaches the running machine's image; shrinking is refused.
    ok(
        e,
        e.resize_volume("default", "extra", 16 << 20, "t")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        e.get_volume("default", "extra")
            .await
            .unwrap()
            .virtual_size_bytes,
        16 << 20
    );
    assert!(matches!(
        e.resize_volume("default", "extra", 4 << 20, "t")
            .await
            .unwrap_err(),
        EngineError::Invalid { .. }
    ));
    // The VM's own disk cannot be detached; the custom one can (hot-unplug).
    assert!(matches!(
        e.detach_disk(None, "a", "data", "t").await.unwrap_err(),
        EngineError::Conflict(_)
    ));
    ok(e, e.detach_disk(None, "a", "extra", "t").await.unwrap()).await;
    assert_eq!(m.disk_names(), ["data"]);
    assert!(e
        .get_volume("default", "extra")
        .await
        .unwrap()
        .attached_to
        .is_none());
    // Offline resize of the VM's own disk.
    act(e, "a", VmAction::Kill).await;
    let own = e.get_vm(None, "a").await.unwrap().spec.disks[0]
        .path
        .clone();
    let own_vol = e
        .list_volumes(None)
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.name.as_str() == "a-data")
        .unwrap();
    ok(
        e,
        e.resize_volume("default", own_vol.name.as_str(), 32 << 20, "t")
            .await
            .unwrap(),
    )
    .await;
    let info = vireo_image::ops::info(
        &own,
        &Default::default(),
        &vireo_image::PathPolicy {
            allowed_dirs: vec!["/".into()],
        },
    )
    .unwrap();
    assert_eq!(info.virtual_size, 32 << 20);
    e.delete_volume("default", "extra", "t").await.unwrap();
}
