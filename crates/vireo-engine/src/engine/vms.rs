//! VM operations of the engine facade: list/show, create, lifecycle actions, delete, update, exec, console.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;
use vireo_api::images::ImageContent;
use vireo_api::operations::Operation;
use vireo_api::vms::{
    CreateVmRequest, DiskInfo, ExecRequest, ExecResult, GuestInfo, NicInfo, StopRequest,
    UpdateVmRequest, VmInfo, USER_NETWORK,
};
use vireo_types::{
    BootSource, DiskFormat, DiskSpec, MacAddr, Name, NicBackend, NicSpec, VmAction, VmSpec, VmState,
};

use super::*;
use crate::actor::{self, ActionOpts, VmHandle};
use crate::console::Console;
use crate::error::{chain, EngineError, Result};
use crate::ops::{Cleanup, OpHandle};
use crate::records::{self, DiskVolume, ImageFiles, VmRecord};

impl Engine {
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
        // Guest facts describe a live guest: a VM without a QEMU process reports none (the
        // actor keeps the last ones, which the next boot's agent replaces).
        let facts = v.facts.as_ref().filter(|_| r.state.has_process());
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
            template_source: r.template_source.clone(),
            template: r.template,
            current_snapshot: r.current_snapshot.clone(),
            cloud_init: r.cloud_init.clone(),
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
        let image_name = match (&req.image, &req.template) {
            (Some(i), None) => i.clone(),
            (None, Some(_)) => return self.create_from_template(project, req, requestor).await,
            _ => {
                return Err(EngineError::invalid(
                    "image",
                    "give exactly one of image and template",
                ))
            }
        };
        if req.count.is_some() {
            return Err(EngineError::invalid(
                "count",
                "count applies to creates from a template",
            ));
        }
        let p = self.project(project).await?;
        let reservation = self.reserve_name(&p, req.name.as_str())?;
        let image = self
            .inner
            .db
            .get_image(image_name.as_str())
            .await?
            .ok_or_else(|| {
                EngineError::invalid(
                    "image",
                    format!("image {:?} not found", image_name.as_str()),
                )
            })?;
        let pool = req
            .pool
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| vireo_api::storage::DEFAULT_POOL.to_string());
        if self.pool(&pool).is_err() {
            return Err(EngineError::invalid(
                "pool",
                format!("storage pool {pool:?} not found"),
            ));
        }
        let uuid = Uuid::now_v7();
        let dir = vm_dir(&self.inner.cfg.state_dir, uuid);
        let networks: Vec<Name> = match &req.networks {
            Some(n) => n.clone(),
            None => match self.default_vm_network().await? {
                Some(n) => vec![n],
                None => vec![Name::new(USER_NETWORK)
                    .map_err(|e| EngineError::internal("network name", e))?],
            },
        };
        let mut nics = Vec::new();
        let mut managed = Vec::new();
        for (i, net) in networks.iter().enumerate() {
            if net.as_str() != USER_NETWORK {
                let nic = Name::new(format!("eth{i}"))
                    .map_err(|e| EngineError::internal("NIC name", e))?;
                let a = self.plan_vm_create_nic(nic, net, &managed).await?;
                nics.push(a.0);
                managed.push(a.1);
                continue;
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
                                image_name.as_str(),
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
            cdroms: vec![],
            fw_cfg: vec![],
        };
        spec.validate().map_err(super::spec_error)?;
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
            image: Some(image_name.clone()),
            created_at: Utc::now(),
            spec,
            networks: networks.iter().map(|n| n.to_string()).collect(),
            state: VmState::Stopped,
            pid: None,
            accel: None,
            node: self.inner.cfg.node.clone(),
            dir: dir.clone(),
            volumes: vec![],
            template: false,
            template_source: None,
            current_snapshot: None,
            placement: Default::default(),
            cloud_init: req.cloud_init.clone(),
        };
        if let Some(cfg) = &record.cloud_init {
            super::cloudinit::render(&record, cfg)?;
        }
        if let Some(ign) = &req.ignition {
            super::cloudinit::check_ignition(ign)?;
        }
        let ignition = req.ignition.clone();
        self.save_vm_nics(uuid, &p, &req.name, managed).await?;
        let op = self
            .inner
            .ops
            .begin("vm.create", &record.target(), requestor, false)
            .await;
        let engine = self.clone();
        let start = req.start;
        let requestor = requestor.to_string();
        let backing = match &image.files {
            ImageFiles::Disk { path } => Some((path.clone(), None, Some(image_name.clone()))),
            ImageFiles::Kernel { .. } => None,
        };
        let op2 = op.clone();
        tokio::spawn(async move {
            let res = engine
                .create_vm_work(
                    &op2, record, &pool, backing, disk_bytes, ignition, start, &requestor,
                )
                .await;
            drop(reservation);
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

    #[allow(clippy::too_many_arguments)]
    async fn create_vm_work(
        &self,
        op: &OpHandle,
        mut record: VmRecord,
        pool: &str,
        backing: Option<(PathBuf, Option<vireo_api::storage::VolumeRef>, Option<Name>)>,
        disk_bytes: u64,
        ignition: Option<String>,
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
        for d in record.spec.disks.iter_mut() {
            let (vol, path) = self
                .new_vm_volume(
                    op,
                    pool,
                    record.project.as_str(),
                    &record.name,
                    &d.name,
                    disk_bytes,
                    backing.clone(),
                )
                .await?;
            d.path = path;
            record.volumes.push(DiskVolume {
                disk: d.name.clone(),
                pool: vol.pool.clone(),
                volume: vol.name.clone(),
            });
        }
        super::cloudinit::apply_seed(&mut record)?;
        if let Some(ign) = &ignition {
            super::cloudinit::apply_ignition(&mut record, ign)?;
        }
        op.stage("recording the VM");
        let map_key = (record.project.to_string(), record.name.to_string());
        let target = record.target();
        let project = record.project.to_string();
        let h = self.register_vm(op, record, requestor).await?;
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

    /// Stores a new VM's record (journalled) and starts its actor.
    pub(crate) async fn register_vm(
        &self,
        op: &OpHandle,
        record: VmRecord,
        requestor: &str,
    ) -> Result<VmHandle> {
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
            vms.insert(map_key, h.clone());
        }
        self.inner.events.emit(
            "vm.created",
            Some(&project),
            &target,
            requestor,
            serde_json::json!({}),
        );
        Ok(h)
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
            let rec = h.view().record;
            if rec.template {
                let bases: Vec<vireo_api::storage::VolumeRef> = rec
                    .volumes
                    .iter()
                    .map(super::attach::disk_volume_ref)
                    .collect();
                let all = self.inner.db.list_volumes(None).await?;
                let deps = super::clones::dependants_of(&all, &bases);
                if !deps.is_empty() {
                    return Err(EngineError::Conflict(format!(
                        "template {name} has {} linked clone(s): {}; delete them first",
                        deps.len(),
                        deps.join(", ")
                    )));
                }
            }
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
            start_paused: false,
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
                engine.forget_vm_nics(rec.uuid).await;
                if let Err(e) = engine.release_vm_volumes(&project, &name).await {
                    tracing::warn!(vm = %name, error = %chain(&e), "releasing the VM's volumes failed");
                }
                if let Err(e) = engine.forget_snapshots(&project, &name).await {
                    tracing::warn!(vm = %name, error = %chain(&e), "removing the VM's snapshot records failed");
                }
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
        probe.validate().map_err(super::spec_error)?;
        if let Some(cfg) = &req.cloud_init {
            let mut r = h.view().record;
            r.cloud_init = Some(cfg.clone());
            super::cloudinit::render(&r, cfg)?;
        }
        h.update(if_match, move |r| {
            if let Some(v) = req.vcpus {
                r.spec.vcpus = v;
            }
            if let Some(m) = req.memory_mib {
                r.spec.memory_mib = m;
            }
            if let Some(cfg) = req.cloud_init {
                // A new seed with a new instance-id: cloud-init runs first-boot modules again.
                r.cloud_init = Some(cfg);
                super::cloudinit::apply_seed(r)?;
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
}
