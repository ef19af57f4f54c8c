//! Tier-2 tests: the whole engine (actors, operations, store, recovery) over the fake
//! hypervisor and an on-disk SQLite store.

use std::path::Path;
use std::time::Duration;

use vireo_api::operations::{Operation, OperationStatus};
use vireo_api::vms::{CreateVmRequest, ExecRequest, StopRequest, UpdateVmRequest};
use vireo_engine::{Engine, EngineError};
use vireo_types::{VmAction, VmState};

mod common;
use common::*;

async fn act(e: &Engine, vm: &str, a: VmAction) -> Operation {
    let op = e
        .vm_action(None, vm, a, StopRequest::default(), "test")
        .await
        .unwrap();
    wait(e, &op).await
}

async fn state_soon(e: &Engine, vm: &str, want: VmState) {
    for _ in 0..200 {
        if e.get_vm(None, vm).await.unwrap().state == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "VM {vm} never reached {want}: {:?}",
        e.get_vm(None, vm).await.unwrap().state
    );
}

fn vm_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("vms")).unwrap().count()
}

#[tokio::test]
async fn full_lifecycle() {
    let env = setup().await;
    let e = &env.engine;
    let op = wait(
        e,
        &e.create_vm(None, create_req("web1", true), "test")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(op.status, OperationStatus::Succeeded, "{op:?}");
    let vm = e.get_vm(None, "web1").await.unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(vm.node, "node1");
    assert_eq!(vm.disks.len(), 1);
    assert_eq!(vm.disks[0].virtual_size_bytes, 16 << 20);
    assert!(e
        .wait_guest_ready(None, "web1", Duration::from_secs(5))
        .await
        .unwrap());

    assert_eq!(
        act(e, "web1", VmAction::Pause).await.status,
        OperationStatus::Succeeded
    );
    assert_eq!(e.get_vm(None, "web1").await.unwrap().state, VmState::Paused);
    assert_eq!(
        act(e, "web1", VmAction::Resume).await.status,
        OperationStatus::Succeeded
    );
    assert_eq!(
        e.get_vm(None, "web1").await.unwrap().state,
        VmState::Running
    );

    assert!(e
        .wait_guest_ready(None, "web1", Duration::from_secs(5))
        .await
        .unwrap());
    let out = e
        .exec(
            None,
            "web1",
            ExecRequest {
                command: vec!["echo".into(), "hi".into()],
                stdin_base64: None,
                timeout_s: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout_base64, "aGkK");
    for _ in 0..200 {
        if e.get_vm(None, "web1").await.unwrap().guest.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(e.get_vm(None, "web1").await.unwrap().guest.is_some());

    assert_eq!(
        act(e, "web1", VmAction::Stop).await.status,
        OperationStatus::Succeeded
    );
    let stopped = e.get_vm(None, "web1").await.unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    // A stopped VM reports no guest facts and no guest addresses.
    assert!(stopped.guest.is_none(), "{:?}", stopped.guest);
    assert!(stopped.nics.iter().all(|n| n.addresses.is_empty()));
    // Invalid in the current state: conflict, nothing changes.
    let err = e
        .vm_action(None, "web1", VmAction::Pause, StopRequest::default(), "t")
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)), "{err}");

    assert_eq!(
        act(e, "web1", VmAction::Delete).await.status,
        OperationStatus::Succeeded
    );
    assert!(matches!(
        e.get_vm(None, "web1").await,
        Err(EngineError::NotFound { .. })
    ));
    assert_eq!(vm_dirs(env.dir.path()), 0);
}

#[tokio::test]
async fn delete_refused_while_running_and_kill_works() {
    let env = setup().await;
    let e = &env.engine;
    wait(
        e,
        &e.create_vm(None, create_req("a", true), "t").await.unwrap(),
    )
    .await;
    let err = e
        .vm_action(None, "a", VmAction::Delete, StopRequest::default(), "t")
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)));
    assert_eq!(
        act(e, "a", VmAction::Kill).await.status,
        OperationStatus::Succeeded
    );
    assert_eq!(e.get_vm(None, "a").await.unwrap().state, VmState::Stopped);
}

#[tokio::test]
async fn unexpected_exit_marks_crashed_and_emits_event() {
    let env = setup().await;
    let e = &env.engine;
    let mut events = e.events().subscribe();
    wait(
        e,
        &e.create_vm(None, create_req("c", true), "t").await.unwrap(),
    )
    .await;
    let uuid = e.get_vm(None, "c").await.unwrap().uuid;
    env.hv.machine(uuid).unwrap().crash();
    state_soon(e, "c", VmState::Crashed).await;
    let ev = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.kind == "vm.crashed" {
                return ev;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ev.target, "vm/default/c");
    // A crashed VM can be started again.
    assert_eq!(
        act(e, "c", VmAction::Start).await.status,
        OperationStatus::Succeeded
    );
}

#[tokio::test]
async fn guest_poweroff_is_a_clean_stop() {
    let env = setup().await;
    let e = &env.engine;
    wait(
        e,
        &e.create_vm(None, create_req("p", true), "t").await.unwrap(),
    )
    .await;
    let uuid = e.get_vm(None, "p").await.unwrap().uuid;
    env.hv.machine(uuid).unwrap().guest_poweroff();
    state_soon(e, "p", VmState::Stopped).await;
}

#[tokio::test]
async fn stop_times_out_then_forces() {
    let env = setup().await;
    let e = &env.engine;
    env.hv.behaviour.lock().unwrap().honours_shutdown = false;
    wait(
        e,
        &e.create_vm(None, create_req("s", true), "t").await.unwrap(),
    )
    .await;
    let op = e
        .vm_action(
            None,
            "s",
            VmAction::Stop,
            StopRequest {
                force: false,
                timeout_s: Some(1),
            },
            "t",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let op = wait(e, &op).await;
    assert_eq!(op.status, OperationStatus::Succeeded);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(e.get_vm(None, "s").await.unwrap().state, VmState::Stopped);
}

#[tokio::test]
async fn daemon_restart_reattaches_running_vms() {
    let env = setup().await;
    for n in ["r1", "r2", "r3"] {
        wait(
            &env.engine,
            &env.engine
                .create_vm(None, create_req(n, true), "t")
                .await
                .unwrap(),
        )
        .await;
    }
    wait(
        &env.engine,
        &env.engine
            .vm_action(None, "r2", VmAction::Pause, StopRequest::default(), "t")
            .await
            .unwrap(),
    )
    .await;
    let launches = env.hv.launches();
    drop(env.engine);
    let e2 = open(env.dir.path(), env.hv.clone()).await;
    assert_eq!(e2.get_vm(None, "r1").await.unwrap().state, VmState::Running);
    assert_eq!(e2.get_vm(None, "r2").await.unwrap().state, VmState::Paused);
    assert_eq!(
        env.hv.launches(),
        launches,
        "re-attach must not launch new QEMUs"
    );
    // Still controllable.
    assert_eq!(
        act(&e2, "r3", VmAction::Stop).await.status,
        OperationStatus::Succeeded
    );
    assert_eq!(
        act(&e2, "r2", VmAction::Resume).await.status,
        OperationStatus::Succeeded
    );
    // A VM whose QEMU died while the daemon was down comes back as crashed.
    let uuid = e2.get_vm(None, "r1").await.unwrap().uuid;
    drop(e2);
    env.hv.machine(uuid).unwrap().crash();
    let e3 = open(env.dir.path(), env.hv.clone()).await;
    assert_eq!(e3.get_vm(None, "r1").await.unwrap().state, VmState::Crashed);
}

#[tokio::test]
async fn interrupted_operation_is_failed_and_undone_on_restart() {
    let env = setup().await;
    let orphan = env.dir.path().join("vms").join("half-created");
    std::fs::create_dir_all(&orphan).unwrap();
    drop(env.engine);
    // What a crashed create leaves behind: a running operation whose journal names the dir.
    let store = open_store(env.dir.path()).await;
    let now = chrono::Utc::now();
    let id = uuid::Uuid::now_v7();
    let persisted = serde_json::json!({
        "op": {"id": id, "kind": "vm.create", "target": "vm/default/x", "status": "running",
               "progress": {"percent": null, "bytes_done": null, "bytes_total": null, "stage": null},
               "created_at": now, "updated_at": now, "error": null, "requestor": "t", "log": [], "cancellable": false},
        "journal": [{"kind": "remove_path", "path": orphan}]
    });
    use vireo_store::Store;
    store
        .txn(vireo_store::Txn::new().and_then([vireo_store::TxnOp::put(
            format!("/operations/{id}"),
            serde_json::to_vec(&persisted).unwrap(),
        )]))
        .await
        .unwrap();
    drop(store);
    let e2 = open(env.dir.path(), env.hv.clone()).await;
    let op = e2.operations().get(id).unwrap();
    assert_eq!(op.status, OperationStatus::Failed);
    assert!(op.error.unwrap().contains("interrupted"));
    assert!(!orphan.exists());
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let env = setup().await;
    let e = &env.engine;
    wait(
        e,
        &e.create_vm(None, create_req("dup", false), "t")
            .await
            .unwrap(),
    )
    .await;
    let mut zero = create_req("z", false);
    zero.vcpus = Some(0);
    let mut huge = create_req("h", false);
    huge.memory_mib = Some(1 << 40);
    let mut noimg = create_req("n", false);
    noimg.image = Some(name("nope"));
    let mut badnet = create_req("b", false);
    badnet.networks = Some(vec![name("lan")]);
    // A create in flight reserves its name.
    let racing = e
        .create_vm(None, create_req("racer", false), "t")
        .await
        .unwrap();
    let err = e
        .create_vm(None, create_req("racer", false), "t")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    wait(e, &racing).await;
    let before = vm_dirs(env.dir.path());
    let mut firmware = create_req("f", false);
    firmware.firmware = Some(vireo_types::Firmware::Uefi);
    let cases: Vec<(CreateVmRequest, &str)> = vec![
        (create_req("dup", false), "already exists"),
        (zero, "vcpus"),
        (huge, "memory_mib"),
        (noimg, "image \"nope\" not found"),
        (badnet, "network \"lan\" not found"),
        (firmware, "firmware"),
    ];
    for (req, want) in cases {
        let err = e.create_vm(None, req, "t").await.unwrap_err();
        assert!(
            err.to_string().contains(want),
            "{err} should mention {want}"
        );
    }
    assert_eq!(vm_dirs(env.dir.path()), before);
    assert_eq!(e.list_vms(None).await.unwrap().len(), 2);
    let err = e.list_vms(Some(&name("nosuchproject"))).await.unwrap_err();
    assert!(matches!(err, EngineError::NotFound { .. }));
}

#[tokio::test]
async fn update_uses_optimistic_concurrency() {
    let env = setup().await;
    let e = &env.engine;
    wait(
        e,
        &e.create_vm(None, create_req("u", false), "t")
            .await
            .unwrap(),
    )
    .await;
    let vm = e.get_vm(None, "u").await.unwrap();
    let err = e
        .update_vm(
            None,
            "u",
            UpdateVmRequest {
                vcpus: Some(2),
                memory_mib: None,
                cloud_init: None,
            },
            Some(vm.revision + 100),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Precondition { .. }));
    let updated = e
        .update_vm(
            None,
            "u",
            UpdateVmRequest {
                vcpus: Some(2),
                memory_mib: Some(512),
                cloud_init: None,
            },
            Some(vm.revision),
        )
        .await
        .unwrap();
    assert_eq!((updated.vcpus, updated.memory_mib), (2, 512));
    assert!(updated.revision > vm.revision);
    let err = e
        .update_vm(
            None,
            "u",
            UpdateVmRequest {
                vcpus: Some(0),
                memory_mib: None,
                cloud_init: None,
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Invalid { .. }));
}

#[tokio::test]
async fn missing_kernel_is_rejected_up_front() {
    let env = setup().await;
    let e = &env.engine;
    for entry in std::fs::read_dir(env.dir.path().join("images")).unwrap() {
        let _ = std::fs::remove_file(entry.unwrap().path().join("vmlinuz"));
    }
    let err = e
        .create_vm(None, create_req("k", true), "t")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing its file"), "{err}");
    assert_eq!(vm_dirs(env.dir.path()), 0);
}

#[tokio::test]
async fn failed_start_during_create_rolls_back() {
    let env = setup().await;
    let e = &env.engine;
    env.hv.behaviour.lock().unwrap().fail_launch = true;
    let op = wait(
        e,
        &e.create_vm(None, create_req("k", true), "t").await.unwrap(),
    )
    .await;
    assert_eq!(op.status, OperationStatus::Failed);
    assert!(op.error.unwrap().contains("simulated failure"));
    assert_eq!(vm_dirs(env.dir.path()), 0);
    assert!(matches!(
        e.get_vm(None, "k").await,
        Err(EngineError::NotFound { .. })
    ));
    // The name is free again.
    env.hv.behaviour.lock().unwrap().fail_launch = false;
    let op = wait(
        e,
        &e.create_vm(None, create_req("k", true), "t").await.unwrap(),
    )
    .await;
    assert_eq!(op.status, OperationStatus::Succeeded, "{op:?}");
}

#[tokio::test]
async fn console_echoes_and_keeps_history() {
    let env = setup().await;
    let e = &env.engine;
    wait(
        e,
        &e.create_vm(None, create_req("con", true), "t")
            .await
            .unwrap(),
    )
    .await;
    let console = e.console(None, "con").await.unwrap();
    let (history, mut live) = console.attach(4096);
    assert!(String::from_utf8_lossy(&history).contains("VIREO-GUEST-READY"));
    assert!(console.send_input(bytes::Bytes::from_static(b"ls\n")).await);
    let got = tokio::time::timeout(Duration::from_secs(2), live.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"ls\n");
}

#[tokio::test]
async fn build_options_a_builder_does_not_take_are_refused_before_anything_starts() {
    let env = setup().await;
    let images_before = env.engine.list_images().await.unwrap().len();
    let mut req = vireo_api::images::BuildImageRequest::new(name("tiny"));
    req.name = Some(name("tiny2"));
    req.packages = vec!["vim".into()];
    match env.engine.build_image(req, "test").await {
        Err(EngineError::Invalid { field, message }) => {
            assert_eq!(field.as_deref(), Some("packages"));
            assert!(message.contains("takes no packages"), "{message}");
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert_eq!(env.engine.list_images().await.unwrap().len(), images_before);
    assert!(!env.dir.path().join("images").read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("tiny2")));
}
