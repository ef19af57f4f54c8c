//! The engine facade: what the HTTP layer calls. Validates requests synchronously (so bad
//! input gets a 4xx and changes nothing), then runs the work as an operation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;
use vireo_api::images::{BuildImageRequest, ImageContent, ImageInfo};
use vireo_api::operations::Operation;
use vireo_api::projects::{CreateProjectRequest, ProjectInfo};
use vireo_api::vms::{
    CreateVmRequest, DiskInfo, ExecRequest, ExecResult, GuestInfo, NicInfo, StopRequest,
    UpdateVmRequest, VmInfo, USER_NETWORK,
};
use vireo_api::DEFAULT_PROJECT;
use vireo_types::{
    BootSource, DiskFormat, DiskSpec, MacAddr, Name, NicBackend, NicSpec, VmAction, VmSpec, VmState,
};

use crate::actor::{self, ActionOpts, VmHandle};
use crate::console::Console;
use crate::db::Db;
use crate::error::{chain, EngineError, Result};
use crate::events::EventBus;
use crate::hv::Hypervisor;
use crate::ops::{Cleanup, OpHandle, Operations};
use crate::records::{self, ImageFiles, ImageRecord, VmRecord};

/// Static engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Root of everything the daemon writes (VM directories, images, caches).
    pub state_dir: PathBuf,
    /// This host's node name.
    pub node: String,
}

/// A kernel+initramfs image produced by a builder.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub kernel_version: String,
    pub ready_marker: Option<String>,
    pub default_data_disk_mib: u64,
}

/// Builds images from packages (`vireo image build NAME`). Runs on a blocking thread.
pub trait ImageBuilder: Send + Sync + std::fmt::Debug {
    /// Writes the image's files into `out_dir` (which exists and is empty).
    fn build(&self, out_dir: &Path, progress: &(dyn Fn(&str) + Sync))
        -> anyhow::Result<BuiltImage>;
}

/// Default VM sizing.
pub const DEFAULT_VCPUS: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 256;

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
    started: std::time::Instant,
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
                started: std::time::Instant::now(),
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

    fn handle(&self, project: &str, name: &str) -> Result<VmHandle> {
        self.lock_vms()
            .get(&(project.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| not_found("VM", name))
    }

    // ---------------------------------------------------------------- VMs

    pub async fn list_vms(&self, project: Option<&Name>) -> Result<Vec<VmInfo>> {
        let p = self.project(project).await?;
        let handles: Vec<VmHandle> = self
            .lock_vms()
            .iter()
            .filter(|((proj, _), _)| *proj == p)
            .map(|(_, h)| h.clone())
            .collect();
        let mut out: Vec<VmInfo> = handles.iter().map(|h| self.info(h)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn get_vm(&self, project: Option<&Name>, name: &str) -> Result<VmInfo> {
        let p = self.project(project).await?;
        Ok(self.info(&self.handle(&p, name)?))
    }

    fn info(&self, h: &VmHandle) -> VmInfo {
        let v = h.view();
        let r = &v.record;
        let disks = r
            .spec
            .disks
            .iter()
            .map(|d| DiskInfo {
                name: d.name.clone(),
                format: d.format,
                virtual_size_bytes: disk_virtual_size(&d.path),
                read_only: d.read_only,
                boot_index: d.boot_index,
            })
            .collect();
        let facts = v.facts.as_ref();
        let nics = r
            .spec
            .nics
            .iter()
            .zip(r.networks.iter().chain(std::iter::repeat(&String::new())))
            .map(|(n, net)| NicInfo {
                name: n.name.clone(),
                mac: n.mac,
                network: net.clone(),
                addresses: facts
                    .and_then(|f| {
                        f.interfaces
                            .iter()
                            .find(|(mac, _)| mac.eq_ignore_ascii_case(&n.mac.to_string()))
                    })
                    .map(|(_, a)| a.clone())
                    .unwrap_or_default(),
            })
            .collect();
        VmInfo {
            name: r.name.clone(),
            uuid: r.uuid,
            project: r.project.clone(),
            state: r.state,
            guest_ready: v.guest_ready,
            node: r.node.clone(),
            vcpus: r.spec.vcpus,
            memory_mib: r.spec.memory_mib,
            image: r.image.clone(),
            created_at: r.created_at,
            pid: r.pid,
            accel: r.accel.clone(),
            disks,
            nics,
            guest: facts.map(|f| GuestInfo {
                agent_version: f.agent_version.clone(),
                hostname: f.hostname.clone(),
                os_name: f.os_name.clone(),
                os_version: f.os_version.clone(),
                kernel_release: f.kernel_release.clone(),
            }),
            spec: r.spec.clone(),
            revision: v.revision,
        }
    }

    /// Validates `req` and starts the create operation.
    pub async fn create_vm(
        &self,
        project: Option<&Name>,
        req: CreateVmRequest,
        requestor: &str,
    ) -> Result<Operation> {
        let p = self.project(project).await?;
        if self.handle(&p, req.name.as_str()).is_ok() {
            return Err(EngineError::Conflict(format!(
                "VM {:?} already exists in project {p:?}",
                req.name.as_str()
            )));
        }
        let image = self
            .inner
            .db
            .get_image(req.image.as_str())
            .await?
            .ok_or_else(|| {
                EngineError::invalid("image", format!("image {:?} not found", req.image.as_str()))
            })?;
        let uuid = Uuid::now_v7();
        let dir = vm_dir(&self.inner.cfg.state_dir, uuid);
        let networks: Vec<Name> =
            match &req.networks {
                Some(n) => n.clone(),
                None => vec![Name::new(USER_NETWORK)
                    .map_err(|e| EngineError::internal("network name", e))?],
            };
        let mut nics = Vec::new();
        for (i, net) in networks.iter().enumerate() {
            if net.as_str() != USER_NETWORK {
                return Err(EngineError::invalid(
                    "networks",
                    format!(
                        "network {:?} not found (available: {USER_NETWORK})",
                        net.as_str()
                    ),
                ));
            }
            let seed = uuid.as_bytes();
            // Distinct per NIC and per VM: uuid v7 random tail plus the NIC index.
            let mac = MacAddr::generated([seed[13], seed[14], seed[15].wrapping_add(i as u8)]);
            nics.push(NicSpec {
                name: Name::new(format!("eth{i}"))
                    .map_err(|e| EngineError::internal("NIC name", e))?,
                mac,
                backend: NicBackend::User,
            });
        }
        let (boot, disks, disk_bytes) = match (&image.files, &image.info.content) {
            (
                ImageFiles::Kernel { kernel, initrd },
                ImageContent::Kernel {
                    cmdline,
                    default_data_disk_mib,
                    ..
                },
            ) => {
                if req.firmware.is_some() {
                    return Err(EngineError::invalid(
                        "firmware",
                        "firmware applies to disk images; this image boots a kernel directly",
                    ));
                }
                for f in [kernel, initrd] {
                    if !f.is_file() {
                        return Err(EngineError::invalid(
                            "image",
                            format!(
                                "image {:?} is missing its file {}",
                                req.image.as_str(),
                                f.display()
                            ),
                        ));
                    }
                }
                let mut cmdline = format!("{cmdline} vireo.hostname={}", req.name);
                if let Some(extra) = &req.kernel_args {
                    cmdline.push(' ');
                    cmdline.push_str(extra);
                }
                let mib = req.disk_mib.unwrap_or(*default_data_disk_mib);
                let disk = DiskSpec {
                    name: Name::new("data").map_err(|e| EngineError::internal("disk name", e))?,
                    path: dir.join("data.qcow2"),
                    format: DiskFormat::Qcow2,
                    read_only: false,
                    boot_index: None,
                };
                (
                    BootSource::Kernel {
                        kernel: kernel.clone(),
                        initrd: Some(initrd.clone()),
                        cmdline,
                    },
                    vec![disk],
                    mib.checked_mul(1 << 20),
                )
            }
            (
                ImageFiles::Disk { path: _ },
                ImageContent::Disk {
                    firmware,
                    virtual_size_bytes,
                },
            ) => {
                if req.kernel_args.is_some() {
                    return Err(EngineError::invalid(
                        "kernel_args",
                        "kernel_args applies to kernel images only",
                    ));
                }
                let bytes = match req.disk_mib {
                    Some(m) => {
                        let b = m.checked_mul(1 << 20);
                        if b.is_some_and(|b| b < *virtual_size_bytes) {
                            return Err(EngineError::invalid(
                                "disk_mib",
                                "the disk cannot be smaller than the image",
                            ));
                        }
                        b
                    }
                    None => Some(*virtual_size_bytes),
                };
                let disk = DiskSpec {
                    name: Name::new("root").map_err(|e| EngineError::internal("disk name", e))?,
                    path: dir.join("root.qcow2"),
                    format: DiskFormat::Qcow2,
                    read_only: false,
                    boot_index: Some(1),
                };
                (
                    BootSource::Disk {
                        firmware: req.firmware.unwrap_or(*firmware),
                    },
                    vec![disk],
                    bytes,
                )
            }
            _ => {
                return Err(EngineError::internal(
                    "reading image record",
                    anyhow::anyhow!("image record is inconsistent"),
                ))
            }
        };
        let disk_bytes = match disk_bytes {
            Some(b) if (1 << 20..=64 << 40).contains(&b) => b,
            _ => {
                return Err(EngineError::invalid(
                    "disk_mib",
                    "disk_mib must be between 1 and 67108864 (64 TiB)",
                ))
            }
        };
        let spec = VmSpec {
            vcpus: req.vcpus.unwrap_or(DEFAULT_VCPUS),
            memory_mib: req.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            boot,
            disks,
            nics,
        };
        spec.validate().map_err(|e| {
            let field = match e {
                vireo_types::vm::SpecError::Vcpus { .. } => "vcpus",
                vireo_types::vm::SpecError::Memory { .. } => "memory_mib",
                vireo_types::vm::SpecError::Cmdline => "kernel_args",
                _ => "spec",
            };
            EngineError::invalid(field, e.to_string())
        })?;
        let host_mem = host_memory_mib().0;
        if host_mem > 0 && spec.memory_mib > host_mem {
            return Err(EngineError::invalid(
                "memory_mib",
                format!(
                    "memory_mib {} exceeds the host's memory ({host_mem} MiB)",
                    spec.memory_mib
                ),
            ));
        }
        let record = VmRecord {
            uuid,
            name: req.name.clone(),
            project: Name::new(p.clone()).map_err(|e| EngineError::internal("project name", e))?,
            image: Some(req.image.clone()),
            created_at: Utc::now(),
            spec,
            networks: networks.iter().map(|n| n.to_string()).collect(),
            state: VmState::Stopped,
            pid: None,
            accel: None,
            node: self.inner.cfg.node.clone(),
            dir: dir.clone(),
        };
        let op = self
            .inner
            .ops
            .begin("vm.create", &record.target(), requestor, false)
            .await;
        let engine = self.clone();
        let start = req.start;
        let requestor = requestor.to_string();
        let backing = match &image.files {
            ImageFiles::Disk { path } => Some(path.clone()),
            ImageFiles::Kernel { .. } => None,
        };
        let op2 = op.clone();
        tokio::spawn(async move {
            let res = engine
                .create_vm_work(&op2, record, backing, disk_bytes, start, &requestor)
                .await;
            match res {
                Ok(()) => op2.succeed().await,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "VM create failed");
                    op2.fail(&e.to_string()).await
                }
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    async fn create_vm_work(
        &self,
        op: &OpHandle,
        record: VmRecord,
        backing: Option<PathBuf>,
        disk_bytes: u64,
        start: bool,
        requestor: &str,
    ) -> Result<()> {
        op.stage("creating VM directory and disks");
        op.journal(Cleanup::RemovePath {
            path: record.dir.clone(),
        })
        .await;
        std::fs::create_dir_all(&record.dir)
            .map_err(|e| EngineError::internal(format!("creating {}", record.dir.display()), e))?;
        restrict_dir(&record.dir);
        for d in &record.spec.disks {
            let path = d.path.clone();
            let backing = backing.clone();
            tokio::task::spawn_blocking(move || {
                vireo_image::ops::create(
                    &path,
                    vireo_image::Format::Qcow2,
                    disk_bytes,
                    backing.as_deref(),
                )
            })
            .await
            .map_err(|e| EngineError::internal("creating a disk", e))?
            .map_err(|e| EngineError::internal(format!("creating disk {}", d.path.display()), e))?;
        }
        op.stage("recording the VM");
        let key = records::vm_key(record.project.as_str(), record.name.as_str());
        op.journal(Cleanup::DeleteKey { key }).await;
        let rev = self.inner.db.create_vm(&record).await?;
        let map_key = (record.project.to_string(), record.name.to_string());
        let target = record.target();
        let project = record.project.to_string();
        let h = actor::spawn(
            record,
            rev,
            None,
            self.inner.db.clone(),
            self.inner.hv.clone(),
            self.inner.events.clone(),
        );
        {
            let mut vms = self.lock_vms();
            if vms.contains_key(&map_key) {
                return Err(EngineError::Conflict(format!(
                    "VM {:?} already exists",
                    map_key.1
                )));
            }
            vms.insert(map_key.clone(), h.clone());
        }
        self.inner.events.emit(
            "vm.created",
            Some(&project),
            &target,
            requestor,
            serde_json::json!({}),
        );
        if start {
            op.stage("starting");
            if let Err(e) = h
                .act(
                    VmAction::Start,
                    ActionOpts {
                        requestor: requestor.to_string(),
                        ..Default::default()
                    },
                )
                .await
            {
                self.lock_vms().remove(&map_key);
                self.inner.events.emit(
                    "vm.deleted",
                    Some(&project),
                    &target,
                    requestor,
                    serde_json::json!({"reason": "create failed"}),
                );
                return Err(e);
            }
        }
        Ok(())
    }

    /// Runs a lifecycle action as an operation.
    pub async fn vm_action(
        &self,
        project: Option<&Name>,
        name: &str,
        action: VmAction,
        stop: StopRequest,
        requestor: &str,
    ) -> Result<Operation> {
        let p = self.project(project).await?;
        let h = self.handle(&p, name)?;
        if let Some(t) = stop.timeout_s {
            if t == 0 || u64::from(t) > actor::MAX_STOP_TIMEOUT.as_secs() {
                return Err(EngineError::invalid(
                    "timeout_s",
                    format!(
                        "timeout_s must be between 1 and {}",
                        actor::MAX_STOP_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
        h.precheck(action)?;
        if action == VmAction::Delete {
            return self.delete_vm_op(&p, name, h, requestor).await;
        }
        let target = h.view().record.target();
        let op = self
            .inner
            .ops
            .begin(&format!("vm.{action}"), &target, requestor, false)
            .await;
        let opts = ActionOpts {
            force: stop.force,
            timeout: stop.timeout_s.map(|s| Duration::from_secs(u64::from(s))),
            requestor: requestor.to_string(),
        };
        let op2 = op.clone();
        tokio::spawn(async move {
            match h.act(action, opts).await {
                Ok(()) => op2.succeed().await,
                Err(e) => op2.fail(&e.to_string()).await,
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    async fn delete_vm_op(
        &self,
        project: &str,
        name: &str,
        h: VmHandle,
        requestor: &str,
    ) -> Result<Operation> {
        let target = h.view().record.target();
        let op = self
            .inner
            .ops
            .begin("vm.delete", &target, requestor, false)
            .await;
        let engine = self.clone();
        let (project, name, requestor) =
            (project.to_string(), name.to_string(), requestor.to_string());
        let op2 = op.clone();
        tokio::spawn(async move {
            let res = async {
                h.act(VmAction::Delete, ActionOpts { requestor: requestor.clone(), ..Default::default() }).await?;
                let rec = h.view().record;
                engine.inner.db.delete_vm(&project, &name).await?;
                engine.lock_vms().remove(&(project.clone(), name.clone()));
                if let Err(e) = tokio::fs::remove_dir_all(&rec.dir).await {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(dir = %rec.dir.display(), error = %e, "removing VM directory failed");
                    }
                }
                engine.inner.events.emit("vm.deleted", Some(&project), &rec.target(), &requestor, serde_json::json!({}));
                Ok::<(), EngineError>(())
            }
            .await;
            match res {
                Ok(()) => op2.succeed().await,
                Err(e) => op2.fail(&e.to_string()).await,
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    pub async fn update_vm(
        &self,
        project: Option<&Name>,
        name: &str,
        req: UpdateVmRequest,
        if_match: Option<u64>,
    ) -> Result<VmInfo> {
        let p = self.project(project).await?;
        let h = self.handle(&p, name)?;
        let mut probe = h.view().record.spec.clone();
        if let Some(v) = req.vcpus {
            probe.vcpus = v;
        }
        if let Some(m) = req.memory_mib {
            probe.memory_mib = m;
        }
        probe.validate().map_err(|e| {
            let field = match e {
                vireo_types::vm::SpecError::Vcpus { .. } => "vcpus",
                vireo_types::vm::SpecError::Memory { .. } => "memory_mib",
                _ => "spec",
            };
            EngineError::invalid(field, e.to_string())
        })?;
        h.update(if_match, move |r| {
            if let Some(v) = req.vcpus {
                r.spec.vcpus = v;
            }
            if let Some(m) = req.memory_mib {
                r.spec.memory_mib = m;
            }
            Ok(())
        })
        .await?;
        Ok(self.info(&h))
    }

    pub async fn exec(
        &self,
        project: Option<&Name>,
        name: &str,
        req: ExecRequest,
    ) -> Result<ExecResult> {
        use base64::Engine as _;
        let p = self.project(project).await?;
        let h = self.handle(&p, name)?;
        if req.command.is_empty() || req.command[0].is_empty() {
            return Err(EngineError::invalid(
                "command",
                "command must name a program",
            ));
        }
        if req.command.iter().any(|a| a.contains('\0')) {
            return Err(EngineError::invalid(
                "command",
                "arguments must not contain NUL bytes",
            ));
        }
        let timeout = req.timeout_s.unwrap_or(60);
        if timeout == 0 || timeout > 3600 {
            return Err(EngineError::invalid(
                "timeout_s",
                "timeout_s must be between 1 and 3600",
            ));
        }
        let stdin = match &req.stdin_base64 {
            Some(s) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| {
                        EngineError::invalid(
                            "stdin_base64",
                            format!("stdin_base64 is not valid base64: {e}"),
                        )
                    })?,
            ),
            None => None,
        };
        let v = h.view();
        let m = match (&v.machine, v.record.state) {
            (Some(m), VmState::Running) => m.clone(),
            (_, state) => {
                return Err(EngineError::Conflict(format!(
                    "VM {name} is {state}; exec needs a running VM"
                )))
            }
        };
        if !v.guest_ready {
            return Err(EngineError::Conflict(format!(
                "the guest agent of VM {name} is not ready yet"
            )));
        }
        let out = m
            .agent_exec(&req.command, stdin, Duration::from_secs(u64::from(timeout)))
            .await
            .map_err(|e| match e {
                crate::hv::HvError::Timeout(d) => EngineError::Unavailable(format!(
                    "command did not finish within {}s",
                    d.as_secs()
                )),
                other => EngineError::Unavailable(format!("running the command failed: {other}")),
            })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(ExecResult {
            exit_code: out.exit_code,
            signal: out.signal,
            stdout_base64: b64.encode(&out.stdout),
            stderr_base64: b64.encode(&out.stderr),
            truncated: out.truncated,
        })
    }

    /// The VM's live console (only while QEMU runs).
    pub async fn console(&self, project: Option<&Name>, name: &str) -> Result<Console> {
        let p = self.project(project).await?;
        let h = self.handle(&p, name)?;
        let v = h.view();
        v.machine.map(|m| m.console()).ok_or_else(|| {
            EngineError::Conflict(format!(
                "VM {name} is {}; the console needs a running VM",
                v.record.state
            ))
        })
    }

    /// Recent console output: live ring buffer while running, else the console log file.
    pub async fn console_log(&self, project: Option<&Name>, name: &str) -> Result<Vec<u8>> {
        let p = self.project(project).await?;
        let h = self.handle(&p, name)?;
        let v = h.view();
        if let Some(m) = v.machine {
            return Ok(m.console().history(usize::MAX));
        }
        let path = v.record.dir.join("console.log");
        match tokio::fs::read(&path).await {
            Ok(mut b) => {
                let keep = crate::console::HISTORY_BYTES;
                if b.len() > keep {
                    b.drain(..b.len() - keep);
                }
                Ok(b)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(EngineError::internal("reading the console log", e)),
        }
    }

    /// Waits until the VM's guest agent answers (or the timeout passes).
    pub async fn wait_guest_ready(
        &self,
        project: Option<&Name>,
        name: &str,
        timeout: Duration,
    ) -> Result<bool> {
        let p = self.project(project).await?;
        let h = self.handle(&p, name)?;
        let mut w = h.watch();
        let r = tokio::time::timeout(timeout, w.wait_for(|v| v.guest_ready)).await;
        Ok(matches!(r, Ok(Ok(_))))
    }

    pub fn vm_counts(&self) -> (u32, u32) {
        let vms = self.lock_vms();
        let total = vms.len() as u32;
        let running = vms
            .values()
            .filter(|h| h.view().record.state.has_process())
            .count() as u32;
        (total, running)
    }

    // ---------------------------------------------------------------- images

    pub async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        let mut v: Vec<ImageInfo> = self
            .inner
            .db
            .list_images()
            .await?
            .into_iter()
            .map(|r| r.info)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    pub async fn get_image(&self, name: &str) -> Result<ImageInfo> {
        self.inner
            .db
            .get_image(name)
            .await?
            .map(|r| r.info)
            .ok_or_else(|| not_found("image", name))
    }

    pub async fn build_image(&self, req: BuildImageRequest, requestor: &str) -> Result<Operation> {
        let builder = self
            .inner
            .builders
            .get(req.builder.as_str())
            .cloned()
            .ok_or_else(|| {
                let mut known: Vec<&String> = self.inner.builders.keys().collect();
                known.sort();
                EngineError::invalid(
                    "builder",
                    format!(
                        "unknown image builder {:?} (available: {})",
                        req.builder.as_str(),
                        known
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
        let name = req.name.clone().unwrap_or_else(|| req.builder.clone());
        if self.inner.db.get_image(name.as_str()).await?.is_some() {
            return Err(EngineError::Conflict(format!(
                "image {:?} already exists",
                name.as_str()
            )));
        }
        let uuid = Uuid::now_v7();
        let dir = self
            .inner
            .cfg
            .state_dir
            .join("images")
            .join(format!("{name}-{uuid}"));
        let op = self
            .inner
            .ops
            .begin("image.build", &format!("image/{name}"), requestor, false)
            .await;
        let op2 = op.clone();
        let db = self.inner.db.clone();
        let events = self.inner.events.clone();
        let requestor = requestor.to_string();
        let builder_name = req.builder.to_string();
        tokio::spawn(async move {
            let res = async {
                op2.journal(Cleanup::RemovePath { path: dir.clone() }).await;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| EngineError::internal("creating the image directory", e))?;
                let out = dir.clone();
                let progress_op = op2.clone();
                let built = tokio::task::spawn_blocking(move || {
                    builder.build(&out, &move |s: &str| progress_op.stage(s))
                })
                .await
                .map_err(|e| EngineError::internal("running the image builder", e))?
                .map_err(|e| {
                    EngineError::Unavailable(format!(
                        "building image {name} failed: {}",
                        chain(e.as_ref())
                    ))
                })?;
                let size_bytes = dir_size(&dir);
                let rec = ImageRecord {
                    info: ImageInfo {
                        name: name.clone(),
                        uuid,
                        created_at: Utc::now(),
                        content: ImageContent::Kernel {
                            kernel_version: built.kernel_version,
                            cmdline: built.cmdline,
                            ready_marker: built.ready_marker,
                            default_data_disk_mib: built.default_data_disk_mib,
                        },
                        size_bytes,
                        source: format!("build:{builder_name}"),
                    },
                    dir: dir.clone(),
                    files: ImageFiles::Kernel {
                        kernel: built.kernel,
                        initrd: built.initrd,
                    },
                };
                op2.journal(Cleanup::DeleteKey {
                    key: records::image_key(name.as_str()),
                })
                .await;
                db.create_image(&rec).await?;
                events.emit(
                    "image.created",
                    None,
                    &format!("image/{name}"),
                    &requestor,
                    serde_json::json!({}),
                );
                Ok::<(), EngineError>(())
            }
            .await;
            match res {
                Ok(()) => op2.succeed().await,
                Err(e) => op2.fail(&e.to_string()).await,
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    pub async fn delete_image(&self, name: &str, requestor: &str) -> Result<Operation> {
        let rec = self
            .inner
            .db
            .get_image(name)
            .await?
            .ok_or_else(|| not_found("image", name))?;
        let users: Vec<String> = self
            .lock_vms()
            .values()
            .map(|h| h.view().record)
            .filter(|r| r.image.as_ref().is_some_and(|i| i.as_str() == name))
            .map(|r| format!("{}/{}", r.project, r.name))
            .collect();
        if !users.is_empty() {
            return Err(EngineError::Conflict(format!(
                "image {name:?} is used by VMs: {}",
                users.join(", ")
            )));
        }
        let op = self
            .inner
            .ops
            .begin("image.delete", &format!("image/{name}"), requestor, false)
            .await;
        let db = self.inner.db.clone();
        let events = self.inner.events.clone();
        let (name, requestor) = (name.to_string(), requestor.to_string());
        let op2 = op.clone();
        tokio::spawn(async move {
            let res = async {
                db.delete_key(&records::image_key(&name)).await?;
                if let Err(e) = tokio::fs::remove_dir_all(&rec.dir).await {
                    tracing::warn!(dir = %rec.dir.display(), error = %e, "removing image directory failed");
                }
                events.emit("image.deleted", None, &format!("image/{name}"), &requestor, serde_json::json!({}));
                Ok::<(), EngineError>(())
            }
            .await;
            match res {
                Ok(()) => op2.succeed().await,
                Err(e) => op2.fail(&e.to_string()).await,
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    // ---------------------------------------------------------------- projects

    pub async fn list_projects(&self) -> Result<Vec<ProjectInfo>> {
        let mut v = self.inner.db.list_projects().await?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    pub async fn create_project(
        &self,
        req: CreateProjectRequest,
        requestor: &str,
    ) -> Result<ProjectInfo> {
        if req.description.len() > 1024 {
            return Err(EngineError::invalid(
                "description",
                "description is longer than 1024 bytes",
            ));
        }
        let p = ProjectInfo {
            name: req.name,
            created_at: Utc::now(),
            description: req.description,
        };
        self.inner.db.create_project(&p).await?;
        self.inner.events.emit(
            "project.created",
            Some(p.name.as_str()),
            &format!("project/{}", p.name),
            requestor,
            serde_json::json!({}),
        );
        Ok(p)
    }

    pub async fn delete_project(&self, name: &str, requestor: &str) -> Result<()> {
        if name == DEFAULT_PROJECT {
            return Err(EngineError::Conflict(
                "the default project cannot be deleted".into(),
            ));
        }
        if self.inner.db.get_project(name).await?.is_none() {
            return Err(not_found("project", name));
        }
        let n = self.lock_vms().keys().filter(|(p, _)| p == name).count();
        if n > 0 {
            return Err(EngineError::Conflict(format!(
                "project {name:?} still has {n} VMs"
            )));
        }
        self.inner
            .db
            .delete_key(&records::project_key(name))
            .await?;
        self.inner.events.emit(
            "project.deleted",
            Some(name),
            &format!("project/{name}"),
            requestor,
            serde_json::json!({}),
        );
        Ok(())
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
