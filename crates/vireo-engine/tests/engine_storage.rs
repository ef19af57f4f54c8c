//! Engine tests of storage pools and volumes over the fake hypervisor (real qcow2 files).

use std::sync::Arc;

use vireo_api::operations::OperationStatus;
use vireo_api::storage::{CreatePoolRequest, CreateVolumeRequest, PoolDriverKind, VolumeKind};
use vireo_engine::EngineError;

mod common;
use common::*;

#[tokio::test]
async fn default_pool_exists_and_vm_disks_live_in_it() {
    let env = setup().await;
    let e = &env.engine;
    let pools = e.list_pools().await.unwrap();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].name.as_str(), "default");
    assert!(pools[0].capacity_bytes > 0);

    let op = e
        .create_vm(None, create_req("web1", false), "t")
        .await
        .unwrap();
    assert_eq!(wait(e, &op).await.status, OperationStatus::Succeeded);
    let vols = e.list_volumes(Some("default")).await.unwrap();
    assert_eq!(vols.len(), 1, "{vols:?}");
    let v = &vols[0];
    assert_eq!(v.name.as_str(), "web1-data");
    assert_eq!(v.kind, VolumeKind::Vm);
    assert_eq!(v.virtual_size_bytes, 16 << 20);
    assert_eq!(v.attached_to.as_ref().unwrap().vm.as_str(), "web1");
    let vm = e.get_vm(None, "web1").await.unwrap();
    assert!(vm.spec.disks[0]
        .path
        .starts_with(env.dir.path().join("pools/default")));

    // A VM's own volume cannot be deleted behind its back.
    let err = e
        .delete_volume("default", "web1-data", "t")
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)), "{err}");

    // Deleting the VM deletes its volume and the file.
    let path = vm.spec.disks[0].path.clone();
    let op = e
        .vm_action(
            None,
            "web1",
            vireo_types::VmAction::Delete,
            Default::default(),
            "t",
        )
        .await
        .unwrap();
    assert_eq!(wait(e, &op).await.status, OperationStatus::Succeeded);
    assert!(e.list_volumes(None).await.unwrap().is_empty());
    assert!(!path.exists());
}

#[tokio::test]
async fn pools_and_custom_volumes() {
    let env = setup().await;
    let e = &env.engine;
    let dir = env.dir.path().join("pools/fast");
    let p = e
        .create_pool(
            CreatePoolRequest {
                name: name("fast"),
                driver: PoolDriverKind::Dir,
                path: None,
            },
            "t",
        )
        .await
        .unwrap();
    assert_eq!(p.path, dir);
    assert!(dir.is_dir());
    let v = e
        .create_volume(
            "fast",
            CreateVolumeRequest {
                name: name("scratch"),
                size_bytes: 64 << 20,
            },
            "t",
        )
        .await
        .unwrap();
    assert_eq!(v.kind, VolumeKind::Custom);
    assert_eq!(v.virtual_size_bytes, 64 << 20);
    let p = e.get_pool("fast").await.unwrap();
    assert_eq!(p.volumes, 1);
    assert_eq!(p.provisioned_bytes, 64 << 20);

    // A VM in the new pool.
    let mut req = create_req("db1", false);
    req.pool = Some(name("fast"));
    let op = e.create_vm(None, req, "t").await.unwrap();
    assert_eq!(wait(e, &op).await.status, OperationStatus::Succeeded);
    assert_eq!(e.list_volumes(Some("fast")).await.unwrap().len(), 2);

    // A pool with volumes cannot go; the default pool never.
    assert!(matches!(
        e.delete_pool("fast", "t").await.unwrap_err(),
        EngineError::Conflict(_)
    ));
    assert!(matches!(
        e.delete_pool("default", "t").await.unwrap_err(),
        EngineError::Conflict(_)
    ));
    e.delete_volume("fast", "scratch", "t").await.unwrap();
    assert!(matches!(
        e.get_volume("fast", "scratch").await.unwrap_err(),
        EngineError::NotFound { .. }
    ));
}

#[tokio::test]
async fn bad_storage_requests_change_nothing() {
    let env = setup().await;
    let e = &env.engine;
    let before = e.list_volumes(None).await.unwrap().len();
    for size in [0, 1000, (1 << 20) + 1, 65 << 40] {
        let err = e
            .create_volume(
                "default",
                CreateVolumeRequest {
                    name: name("v"),
                    size_bytes: size,
                },
                "t",
            )
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::Invalid { .. }), "{size}: {err}");
    }
    let err = e
        .create_volume(
            "nope",
            CreateVolumeRequest {
                name: name("v"),
                size_bytes: 1 << 20,
            },
            "t",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::NotFound { .. }), "{err}");
    for (path, why) in [
        ("relative/dir", "relative"),
        ("/tmp/../etc", "dot-dot"),
        ("/", "around the state dir"),
    ] {
        let err = e
            .create_pool(
                CreatePoolRequest {
                    name: name("p2"),
                    driver: PoolDriverKind::Dir,
                    path: Some(path.into()),
                },
                "t",
            )
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::Invalid { .. }), "{why}: {err}");
    }
    // Inside the state directory but not under pools/, and overlapping the default pool.
    for path in [
        env.dir.path().join("vms"),
        env.dir.path().join("pools/default/sub"),
    ] {
        let err = e
            .create_pool(
                CreatePoolRequest {
                    name: name("p3"),
                    driver: PoolDriverKind::Dir,
                    path: Some(path.clone()),
                },
                "t",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, EngineError::Invalid { .. }),
            "{path:?}: {err}"
        );
    }
    // A non-empty directory is refused.
    let full = tempfile::tempdir().unwrap();
    std::fs::write(full.path().join("x"), b"x").unwrap();
    assert!(e
        .create_pool(
            CreatePoolRequest {
                name: name("p4"),
                driver: PoolDriverKind::Dir,
                path: Some(full.path().to_path_buf()),
            },
            "t",
        )
        .await
        .is_err());
    let mut req = create_req("x1", false);
    req.pool = Some(name("missing"));
    assert!(matches!(
        e.create_vm(None, req, "t").await.unwrap_err(),
        EngineError::Invalid { .. }
    ));
    assert_eq!(e.list_pools().await.unwrap().len(), 1);
    assert_eq!(e.list_volumes(None).await.unwrap().len(), before);
}

#[tokio::test]
async fn import_converts_and_refuses_hostile_uploads() {
    let env = setup().await;
    let e = &env.engine;
    // A raw image with some data becomes a qcow2 volume of the same size.
    let upload = e.volume_upload_path().unwrap();
    let mut raw = vec![0u8; 4 << 20];
    raw[1 << 20..(1 << 20) + 5].copy_from_slice(b"hello");
    std::fs::write(&upload, &raw).unwrap();
    let op = e
        .import_volume("default", name("imported"), upload.clone(), "t")
        .await
        .unwrap();
    let op = wait(e, &op).await;
    assert_eq!(op.status, OperationStatus::Succeeded, "{op:?}");
    let v = e.get_volume("default", "imported").await.unwrap();
    assert_eq!(v.virtual_size_bytes, 4 << 20);
    assert!(!upload.exists(), "the upload is removed");

    // An overlay naming a file outside the upload is refused; no volume appears.
    let victim = e.list_volumes(None).await.unwrap();
    let target = env.dir.path().join("pools/default");
    let victim_path = std::fs::read_dir(&target)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let upload = e.volume_upload_path().unwrap();
    vireo_image::ops::create(&upload, vireo_image::Format::Qcow2, 0, Some(&victim_path)).unwrap();
    let op = e
        .import_volume("default", name("evil"), upload, "t")
        .await
        .unwrap();
    let op = wait(e, &op).await;
    assert_eq!(op.status, OperationStatus::Failed, "{op:?}");
    assert_eq!(e.list_volumes(None).await.unwrap().len(), victim.len());
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), victim.len());
    let _ = Arc::clone(&env.hv);
}

#[tokio::test]
async fn disk_images_import_use_and_export() {
    let env = setup().await;
    let e = &env.engine;
    let upload = e.volume_upload_path().unwrap();
    std::fs::write(&upload, vec![7u8; 2 << 20]).unwrap();
    let op = e
        .import_image(
            name("imported"),
            vireo_types::Firmware::Bios,
            upload.clone(),
            "t",
        )
        .await
        .unwrap();
    let op = wait(e, &op).await;
    assert_eq!(op.status, OperationStatus::Succeeded, "{op:?}");
    assert!(!upload.exists());
    let disk = e.image_disk("imported").await.unwrap();
    assert!(disk.is_file());
    assert!(matches!(
        e.image_disk("tiny").await.unwrap_err(),
        EngineError::Conflict(_)
    ));
    // A VM from it is an overlay; the image cannot go while the VM exists.
    let mut req = create_req("fromimg", false);
    req.image = Some(name("imported"));
    let op = e.create_vm(None, req, "t").await.unwrap();
    assert_eq!(wait(e, &op).await.status, OperationStatus::Succeeded);
    let v = e.list_volumes(None).await.unwrap();
    assert_eq!(v[0].backing_image.as_ref().unwrap().as_str(), "imported");
    assert!(matches!(
        e.delete_image("imported", "t").await.unwrap_err(),
        EngineError::Conflict(_)
    ));
    // A name clash is refused and the upload discarded.
    let upload = e.volume_upload_path().unwrap();
    std::fs::write(&upload, b"x").unwrap();
    assert!(matches!(
        e.import_image(
            name("imported"),
            vireo_types::Firmware::Bios,
            upload.clone(),
            "t"
        )
        .await
        .unwrap_err(),
        EngineError::Conflict(_)
    ));
    assert!(!upload.exists());
}
