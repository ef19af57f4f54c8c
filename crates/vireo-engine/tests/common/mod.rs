//! Shared set-up of the engine tests: a fake kernel-image builder, an engine over the fake
//! hypervisor and an on-disk SQLite store, helpers to wait for operations.
#![allow(dead_code)]

pub mod net;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vireo_api::images::BuildImageRequest;
use vireo_api::operations::{Operation, OperationStatus};
use vireo_api::vms::CreateVmRequest;
use vireo_engine::fake_hv::FakeHypervisor;
use vireo_engine::{
    refuse_build_params, BuildParamError, BuildParams, BuiltImage, Engine, EngineConfig,
    ImageBuilder,
};
use vireo_types::Name;

#[derive(Debug)]
pub struct FakeBuilder;

impl ImageBuilder for FakeBuilder {
    fn check(&self, params: &BuildParams) -> Result<(), BuildParamError> {
        refuse_build_params("tiny", params)
    }

    fn build(
        &self,
        _params: &BuildParams,
        out: &Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<BuiltImage> {
        progress("writing fake kernel");
        std::fs::write(out.join("vmlinuz"), b"kernel")?;
        std::fs::write(out.join("initrd.img"), b"initrd")?;
        Ok(BuiltImage::Kernel {
            kernel: out.join("vmlinuz"),
            initrd: out.join("initrd.img"),
            cmdline: "console=ttyS0".into(),
            kernel_version: "6.1.0-fake".into(),
            ready_marker: Some("VIREO-GUEST-READY".into()),
            default_data_disk_mib: 16,
        })
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub hv: Arc<FakeHypervisor>,
    pub engine: Engine,
}

pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// Opens the store, waiting for a previous engine's tasks to release it (a "restarted
/// daemon" in these tests is a new engine in the same process).
pub async fn open_store(dir: &Path) -> vireo_store::SqliteStore {
    for _ in 0..200 {
        match vireo_store::SqliteStore::open(dir) {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    panic!("state store still locked");
}

pub async fn open(dir: &Path, hv: Arc<FakeHypervisor>) -> Engine {
    let store = Arc::new(open_store(dir).await);
    let mut builders: HashMap<String, Arc<dyn ImageBuilder>> = HashMap::new();
    builders.insert("tiny".into(), Arc::new(FakeBuilder));
    Engine::open(
        EngineConfig {
            state_dir: dir.to_path_buf(),
            node: "node1".into(),
        },
        store,
        hv,
        builders,
    )
    .await
    .unwrap()
}

pub async fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let hv = FakeHypervisor::new();
    let engine = open(dir.path(), hv.clone()).await;
    let op = engine
        .build_image(BuildImageRequest::new(name("tiny")), "test")
        .await
        .unwrap();
    let op = wait(&engine, &op).await;
    assert_eq!(op.status, OperationStatus::Succeeded, "{op:?}");
    Env { dir, hv, engine }
}

pub async fn wait(engine: &Engine, op: &Operation) -> Operation {
    engine
        .operations()
        .wait(op.id, Duration::from_secs(20))
        .await
        .unwrap()
}

pub fn create_req(n: &str, start: bool) -> CreateVmRequest {
    CreateVmRequest {
        name: name(n),
        image: Some(name("tiny")),
        template: None,
        count: None,
        vcpus: Some(1),
        memory_mib: Some(128),
        disk_mib: None,
        networks: None,
        firmware: None,
        pool: None,
        kernel_args: None,
        cloud_init: None,
        ignition: None,
        start,
    }
}
