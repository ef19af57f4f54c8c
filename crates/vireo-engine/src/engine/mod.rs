//! The engine facade: what the HTTP layer calls. Validates requests synchronously (so bad
//! input gets a 4xx and changes nothing), then runs the work as an operation.

mod attach;
mod clone_nics;
mod clones;
mod cloudinit;
mod export;
mod images;
mod import;
mod networks;
mod nics;
mod projects;
mod snapshots;
mod storage;
mod vm_volumes;
mod vms;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;
use vireo_api::operations::Operation;
use vireo_api::projects::ProjectInfo;
use vireo_api::DEFAULT_PROJECT;
use vireo_types::{Name, VmState};

use crate::actor::{self, VmHandle};
use crate::db::Db;
use crate::error::{EngineError, Result};
use crate::events::EventBus;
use crate::hv::Hypervisor;
use crate::ops::Operations;

/// Static engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Root of everything the daemon writes (VM directories, images, caches).
    pub state_dir: PathBuf,
    /// This host's node name.
    pub node: String,
}

/// What a builder produced.
#[derive(Debug, Clone)]
pub enum BuiltImage {
    /// Kernel + initramfs for direct kernel boot.
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
        kernel_version: String,
        ready_marker: Option<String>,
        default_data_disk_mib: u64,
    },
    /// A bootable disk (qcow2) that VMs get copy-on-write overlays of.
    Disk {
        path: PathBuf,
        firmware: vireo_types::Firmware,
        virtual_size_bytes: u64,
    },
}

/// The options of a build request (`vireo image build NAME --release … --size … --packages …`),
/// as the API received them; each builder checks the ones it takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildParams {
    pub release: Option<String>,
    pub size_mib: Option<u64>,
    pub packages: Vec<String>,
}

impl BuildParams {
    /// The API field names of the options that are set (for builders that take none).
    pub fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.release.is_some() {
            v.push("release");
        }
        if self.size_mib.is_some() {
            v.push("size_mib");
        }
        if !self.packages.is_empty() {
            v.push("packages");
        }
        v
    }
}

/// Why a builder refuses a request's options: the API field and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildParamError {
    pub field: &'static str,
    pub message: String,
}

/// Builds images from packages (`vireo image build NAME`). Runs on a blocking thread.
pub trait ImageBuilder: Send + Sync + std::fmt::Debug {
    /// Checks the options before anything is created, so a bad request changes nothing.
    fn check(&self, params: &BuildParams) -> std::result::Result<(), BuildParamError>;
    /// Writes the image's files into `out_dir` (which exists and is empty); `params` passed
    /// [`ImageBuilder::check`].
    fn build(
        &self,
        params: &BuildParams,
        out_dir: &Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<BuiltImage>;
}

/// [`ImageBuilder::check`] of builders that take no options.
pub fn refuse_build_params(
    builder: &str,
    params: &BuildParams,
) -> std::result::Result<(), BuildParamError> {
    match params.given().first() {
        None => Ok(()),
        Some(field) => Err(BuildParamError {
            field,
            message: format!("image builder {builder} takes no {field} option"),
        }),
    }
}

/// Default VM sizing.
pub const DEFAULT_VCPUS: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// A registered pool: its record and, once prepared, its driver.
type PoolEntry = (
    crate::records::PoolRecord,
    Option<Arc<dyn crate::storage::PoolDriver>>,
);

#[derive(Debug)]
struct Inner {
    cfg: EngineConfig,
    db: Db,
    hv: Arc<dyn Hypervisor>,
    events: Arc<EventBus>,
    ops: Operations,
    builders: HashMap<String, Arc<dyn ImageBuilder>>,
    /// Actors by (project, name).
    vms: Mutex<HashMap<(String, String), VmHandle>>,
    /// Names of VMs whose create operation is running (reserved, not yet in `vms`).
    creating: Mutex<std::collections::HashSet<(String, String)>>,
    /// Storage pools by name; the driver is `None` while a pool is being registered.
    pools: Mutex<HashMap<String, PoolEntry>>,
    /// Serialises changes to volume records (see `engine::storage`).
    storage_lock: tokio::sync::Mutex<()>,
    started: std::time::Instant,
    /// Managed networks, when the daemon enables them ([`Engine::attach_networks`]).
    net: std::sync::OnceLock<Arc<crate::net::NetManager>>,
}

/// Holds a VM name while its create operation runs; released on drop.
struct NameReservation {
    engine: Engine,
    key: (String, String),
}

impl Drop for NameReservation {
    fn drop(&mut self) {
        self.engine
            .inner
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Cheap-to-clone engine handle.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn vm_dir(state_dir: &Path, uuid: Uuid) -> PathBuf {
    state_dir.join("vms").join(uuid.to_string())
}

fn not_found(kind: &'static str, name: &str) -> EngineError {
    EngineError::NotFound {
        kind,
        name: name.to_string(),
    }
}

impl Engine {
    /// Opens the engine: ensures the default project, fails interrupted operations (undoing
    /// their partial work) and re-attaches VMs whose QEMU survived a daemon restart.
    pub async fn open(
        cfg: EngineConfig,
        store: Arc<dyn vireo_store::Store>,
        hv: Arc<dyn Hypervisor>,
        builders: HashMap<String, Arc<dyn ImageBuilder>>,
    ) -> Result<Engine> {
        for sub in ["vms", "images"] {
            std::fs::create_dir_all(cfg.state_dir.join(sub))
                .map_err(|e| EngineError::internal(format!("creating {sub} directory"), e))?;
        }
        let db = Db::new(store);
        let events = Arc::new(EventBus::default());
        let ops = Operations::new(db.clone(), events.clone());
        let engine = Engine {
            inner: Arc::new(Inner {
                cfg,
                db,
                hv,
                events,
                ops,
                builders,
                vms: Mutex::new(HashMap::new()),
                creating: Mutex::new(std::collections::HashSet::new()),
                pools: Mutex::new(HashMap::new()),
                storage_lock: tokio::sync::Mutex::new(()),
                started: std::time::Instant::now(),
                net: std::sync::OnceLock::new(),
            }),
        };
        if engine
            .inner
            .db
            .get_project(DEFAULT_PROJECT)
            .await?
            .is_none()
        {
            let p = ProjectInfo {
                name: Name::new(DEFAULT_PROJECT)
                    .map_err(|e| EngineError::internal("default project name", e))?,
                created_at: Utc::now(),
                description: "Default project".into(),
            };
            match engine.inner.db.create_project(&p).await {
                Ok(_) | Err(EngineError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        engine.init_pools().await?;
        let recovered = engine.inner.ops.recover().await;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "failed operations interrupted by the previous daemon run"
            );
        }
        engine.reattach().await?;
        Ok(engine)
    }

    pub fn events(&self) -> &Arc<EventBus> {
        &self.inner.events
    }

    pub fn operations(&self) -> &Operations {
        &self.inner.ops
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    pub fn hypervisor(&self) -> &Arc<dyn Hypervisor> {
        &self.inner.hv
    }

    pub fn store(&self) -> &Arc<dyn vireo_store::Store> {
        self.inner.db.store()
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    async fn reattach(&self) -> Result<()> {
        let vms = self.inner.db.list_vms(None).await?;
        for (mut rec, rev) in vms {
            let mut machine = None;
            if rec.state.has_process() {
                let req = crate::hv::LaunchRequest {
                    uuid: rec.uuid,
                    name: rec.name.to_string(),
                    spec: rec.spec.clone(),
                    run_dir: rec.dir.clone(),
                    placement: rec.placement.clone(),
                    start_paused: false,
                };
                let pid = rec.pid.unwrap_or(0);
                match self.inner.hv.adopt(&req, pid).await {
                    Ok(m) => {
                        let running = m.cpus_running().await.unwrap_or(true);
                        let state = if running {
                            VmState::Running
                        } else {
                            VmState::Paused
                        };
                        tracing::info!(vm = %rec.name, pid = m.pid(), %state, "re-attached running VM");
                        rec.state = state;
                        rec.pid = Some(m.pid());
                        machine = Some(m);
                    }
                    Err(e) => {
                        let next = if rec.state == VmState::Stopping {
                            VmState::Stopped
                        } else {
                            VmState::Crashed
                        };
                        tracing::warn!(vm = %rec.name, error = %e, %next, "VM's QEMU did not survive");
                        if next == VmState::Crashed {
                            self.inner.events.emit(
                                "vm.crashed",
                                Some(rec.project.as_str()),
                                &rec.target(),
                                "system",
                                serde_json::json!({"pid": rec.pid, "reason": e.to_string()}),
                            );
                        }
                        rec.state = next;
                        rec.pid = None;
                        rec.accel = None;
                    }
                }
            }
            let rev = if rec.state.has_process() || rec.pid.is_none() {
                self.inner.db.put_vm(&rec).await.unwrap_or(rev)
            } else {
                rev
            };
            let key = (rec.project.to_string(), rec.name.to_string());
            let h = actor::spawn(
                rec,
                rev,
                machine,
                self.inner.db.clone(),
                self.inner.hv.clone(),
                self.inner.events.clone(),
            );
            self.lock_vms().insert(key, h);
        }
        Ok(())
    }

    fn lock_vms(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), VmHandle>> {
        self.inner.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn project(&self, project: Option<&Name>) -> Result<String> {
        let p = project.map(|p| p.as_str()).unwrap_or(DEFAULT_PROJECT);
        if self.inner.db.get_project(p).await?.is_none() {
            return Err(not_found("project", p));
        }
        Ok(p.to_string())
    }

    /// Reserves `name` in `project` for a create, or fails when it is taken or being created.
    fn reserve_name(&self, project: &str, name: &str) -> Result<NameReservation> {
        let key = (project.to_string(), name.to_string());
        let vms = self.lock_vms();
        let mut creating = self
            .inner
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if vms.contains_key(&key) || !creating.insert(key.clone()) {
            return Err(EngineError::Conflict(format!(
                "VM {name:?} already exists in project {project:?}"
            )));
        }
        Ok(NameReservation {
            engine: self.clone(),
            key,
        })
    }

    fn handle(&self, project: &str, name: &str) -> Result<VmHandle> {
        self.lock_vms()
            .get(&(project.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| not_found("VM", name))
    }
}

fn unreachable_op(id: Uuid) -> Operation {
    // `begin` registered the operation a moment ago and entries are only pruned once final
    // and old, so this is never reached; return a well-formed body rather than panic.
    let now = Utc::now();
    Operation {
        id,
        kind: String::new(),
        target: String::new(),
        status: vireo_api::operations::OperationStatus::Running,
        progress: Default::default(),
        created_at: now,
        updated_at: now,
        error: None,
        requestor: String::new(),
        log: vec![],
        cancellable: false,
    }
}

/// A spec rule broken by a request, as a 400 naming the request field it came from.
fn spec_error(e: vireo_types::vm::SpecError) -> EngineError {
    use vireo_types::vm::SpecError;
    let field = match e {
        SpecError::Vcpus { .. } => "vcpus",
        SpecError::Memory { .. } => "memory_mib",
        SpecError::Cmdline => "kernel_args",
        _ => "spec",
    };
    EngineError::invalid(field, e.to_string())
}

/// Virtual size of a disk file (0 when unreadable).
fn disk_virtual_size(path: &Path) -> u64 {
    vireo_image::detect::open(
        path,
        &vireo_image::Limits::default(),
        &vireo_image::PathPolicy {
            allowed_dirs: vec![PathBuf::from("/")],
        },
    )
    .map(|d| d.virtual_size())
    .unwrap_or(0)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// VM directories hold sockets that give full control of the VM: owner-only.
fn restrict_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

/// (total, available) host memory in MiB from /proc/meminfo; (0, 0) when unreadable.
pub fn host_memory_mib() -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string("/proc/meminfo") else {
        return (0, 0);
    };
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib / 1024)
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}
