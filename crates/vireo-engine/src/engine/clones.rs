//! Templates and clones.
//!
//! - A template is a stopped VM made immutable: it never starts, its volumes become read-only
//!   bases, and it cannot be deleted while linked clones use them.
//! - A linked clone gets copy-on-write overlays of base volumes: of the template's volumes,
//!   or — for a plain stopped VM or a snapshot — of base volumes materialised from that state
//!   first (kept while clones use them, removed with the last one; a snapshot's base is
//!   reused by later linked clones of the same snapshot).
//! - A full clone gets independent copies (flattened chains), with byte progress.
//!
//! Every clone has a new UUID, name and MAC addresses; the kernel command line names the new
//! host. The source is held exclusively (its actor runs the copy) so it cannot start and
//! change its disks half-way through.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;
use vireo_api::operations::Operation;
use vireo_api::snapshots::{CloneMode, CloneVmRequest};
use vireo_api::storage::{VolumeKind, VolumeRef};
use vireo_api::vms::{CreateVmRequest, VmInfo, MAX_CREATE_COUNT};
use vireo_types::{BootSource, MacAddr, Name, VmAction, VmState};

use super::clone_nics::apply_clone_nics;
use super::storage::bytes_progress;
use super::*;
use crate::actor::{ActionOpts, VmHandle};
use crate::error::{chain, EngineError, Result};
use crate::net::model::NicAttachment;
use crate::ops::{Cleanup, OpHandle};
use crate::records::{self, DiskVolume, VmRecord, VolumeRecord};

/// A clone's record derived from its source: new identity, same machine. Disk paths and
/// volumes are filled in by the disk step.
pub(crate) fn derive_record(src: &VmRecord, name: &Name, uuid: Uuid, dir: PathBuf) -> VmRecord {
    let mut spec = src.spec.clone();
    let seed = uuid.as_bytes();
    for (i, nic) in spec.nics.iter_mut().enumerate() {
        nic.mac = MacAddr::generated([seed[13], seed[14], seed[15].wrapping_add(i as u8)]);
    }
    if let BootSource::Kernel { cmdline, .. } = &mut spec.boot {
        let rest: Vec<&str> = cmdline
            .split_whitespace()
            .filter(|w| !w.starts_with("vireo.hostname="))
            .collect();
        *cmdline = format!("{} vireo.hostname={name}", rest.join(" "))
            .trim()
            .to_string();
    }
    // A host name that only repeated the source's name follows the clone's name.
    let cloud_init = src.cloud_init.clone().map(|mut c| {
        if c.hostname.as_deref() == Some(src.name.as_str()) {
            c.hostname = None;
        }
        c
    });
    VmRecord {
        uuid,
        name: name.clone(),
        project: src.project.clone(),
        image: src.image.clone(),
        created_at: Utc::now(),
        spec,
        networks: src.networks.clone(),
        state: VmState::Stopped,
        pid: None,
        accel: None,
        node: src.node.clone(),
        dir,
        volumes: vec![],
        template: false,
        template_source: src.template.then(|| src.name.clone()),
        current_snapshot: None,
        placement: src.placement.clone(),
        cloud_init,
    }
}

/// Where each new disk comes from.
#[derive(Debug, Clone)]
enum DiskSource {
    /// Overlay of this base volume.
    Linked(VolumeRecord),
    /// Independent copy of this file (or of its internal snapshot).
    Full {
        path: PathBuf,
        snapshot: Option<String>,
    },
}

impl Engine {
    /// Makes the stopped VM `name` an immutable template.
    pub async fn template_vm(
        &self,
        project: Option<&Name>,
        name: &str,
        requestor: &str,
    ) -> Result<VmInfo> {
        let p = self.project(project).await?;
        let h = self.handle(&p, name)?;
        let engine = self.clone();
        h.exclusive(Box::new(move |mut rec, _machine| {
            Box::pin(async move {
                if rec.template {
                    return Err(EngineError::Conflict(format!(
                        "VM {} is a template already",
                        rec.name
                    )));
                }
                if rec.state != VmState::Stopped {
                    return Err(EngineError::Conflict(format!(
                        "VM {} must be stopped to become a template (it is {})",
                        rec.name, rec.state
                    )));
                }
                if rec.volumes.len() != rec.spec.disks.len() {
                    return Err(EngineError::Conflict(format!(
                        "VM {} has disks outside storage pools (made by an older Vireo); \
                         make a full clone of it and template that",
                        rec.name
                    )));
                }
                let _guard = engine.inner.storage_lock.lock().await;
                for dv in &rec.volumes {
                    let mut v = engine.volume_of(dv).await?;
                    v.kind = VolumeKind::Base;
                    v.read_only = true;
                    engine.inner.db.put_volume(&v).await?;
                }
                for d in rec.spec.disks.iter_mut() {
                    d.read_only = true;
                }
                rec.template = true;
                Ok(Some(rec))
            })
        }))
        .await?;
        self.inner.events.emit(
            "vm.templated",
            Some(&p),
            &format!("vm/{p}/{name}"),
            requestor,
            serde_json::json!({}),
        );
        self.get_vm(project, name).await
    }

    /// The volume record behind a VM disk.
    async fn volume_of(&self, dv: &DiskVolume) -> Result<VolumeRecord> {
        self.inner
            .db
            .get_volume(dv.pool.as_str(), dv.volume.as_str())
            .await?
            .ok_or_else(|| {
                EngineError::internal(
                    "reading a VM's volume",
                    anyhow::anyhow!("volume {}/{} is missing", dv.pool, dv.volume),
                )
            })
    }

    /// Clones VM `name` (stopped, or a template), or one of its snapshots.
    pub async fn clone_vm(
        &self,
        project: Option<&Name>,
        name: &str,
        req: CloneVmRequest,
        requestor: &str,
    ) -> Result<Operation> {
        let p = self.project(project).await?;
        let h = self.handle(&p, name)?;
        let src = h.view().record;
        if let Some(pool) = &req.pool {
            if self.pool(pool.as_str()).is_err() {
                return Err(EngineError::invalid(
                    "pool",
                    format!("storage pool {:?} not found", pool.as_str()),
                ));
            }
        }
        if !src.template && src.state != VmState::Stopped {
            return Err(EngineError::Conflict(format!(
                "VM {name} must be stopped to be cloned (it is {}); clone a template or stop it",
                src.state
            )));
        }
        if let Some(s) = &req.snapshot {
            if self
                .inner
                .db
                .get_snapshot(&p, name, s.as_str())
                .await?
                .is_none()
            {
                return Err(not_found("snapshot", s.as_str()));
            }
        }
        let reservation = self.reserve_name(&p, req.name.as_str())?;
        let target = format!("vm/{p}/{}", req.name);
        let op = self
            .inner
            .ops
            .begin("vm.clone", &target, requestor, true)
            .await;
        let engine = self.clone();
        let op2 = op.clone();
        let requestor = requestor.to_string();
        tokio::spawn(async move {
            let res = engine.clone_work(&op2, &h, req, &requestor).await;
            drop(reservation);
            match res {
                Ok(()) => op2.succeed().await,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "VM clone failed");
                    op2.fail(&e.to_string()).await
                }
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    async fn clone_work(
        &self,
        op: &OpHandle,
        src_handle: &VmHandle,
        req: CloneVmRequest,
        requestor: &str,
    ) -> Result<()> {
        let uuid = Uuid::now_v7();
        let dir = vm_dir(&self.inner.cfg.state_dir, uuid);
        op.journal(Cleanup::RemovePath { path: dir.clone() }).await;
        std::fs::create_dir_all(&dir)
            .map_err(|e| EngineError::internal("creating the VM directory", e))?;
        restrict_dir(&dir);
        let result: Arc<std::sync::Mutex<Option<VmRecord>>> = Arc::default();
        let (engine, op2, out, name, pool) = (
            self.clone(),
            op.clone(),
            result.clone(),
            req.name.clone(),
            req.pool.clone(),
        );
        let (mode, snapshot) = (req.mode, req.snapshot.clone());
        // The copy runs inside the source's actor: the source cannot start meanwhile.
        src_handle
            .exclusive(Box::new(move |src, _machine| {
                Box::pin(async move {
                    if !src.template && src.state != VmState::Stopped {
                        return Err(EngineError::Conflict(format!(
                            "VM {} was started; clones need it stopped",
                            src.name
                        )));
                    }
                    let sources = engine
                        .disk_sources(
                            &op2,
                            &src,
                            mode,
                            snapshot.as_ref().map(Name::as_str),
                            pool.as_ref().map(Name::as_str),
                        )
                        .await?;
                    let nics = engine
                        .plan_clone_nics(&src, 1)
                        .await?
                        .pop()
                        .unwrap_or_default();
                    let mut rec = derive_record(&src, &name, uuid, dir);
                    apply_clone_nics(&mut rec, &nics);
                    super::cloudinit::apply_seed(&mut rec)?;
                    super::cloudinit::rehome_fw_cfg(&mut rec)?;
                    engine
                        .make_clone_disks(&op2, &mut rec, &sources, pool.as_ref().map(Name::as_str))
                        .await?;
                    engine.save_clone_nics(&op2, &rec, nics).await?;
                    *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(rec);
                    Ok(None)
                })
            }))
            .await?;
        let rec = result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| {
                EngineError::internal(
                    "cloning",
                    anyhow::anyhow!("the clone step produced nothing"),
                )
            })?;
        op.stage("recording the VM");
        let h = self.register_vm(op, rec, requestor).await?;
        if req.start {
            op.stage("starting");
            self.start_or_unregister(&h, requestor).await?;
        }
        Ok(())
    }

    /// Starts a freshly registered VM; on failure removes it from the registry again (its
    /// files and keys go with the operation's journal).
    async fn start_or_unregister(&self, h: &VmHandle, requestor: &str) -> Result<()> {
        let res = h
            .act(
                VmAction::Start,
                ActionOpts {
                    requestor: requestor.to_string(),
                    ..Default::default()
                },
            )
            .await;
        if res.is_err() {
            let r = h.view().record;
            self.lock_vms()
                .remove(&(r.project.to_string(), r.name.to_string()));
        }
        res
    }

    /// Decides where each of `src`'s disks comes from, materialising bases for linked clones
    /// of non-templates.
    async fn disk_sources(
        &self,
        op: &OpHandle,
        src: &VmRecord,
        mode: CloneMode,
        snapshot: Option<&str>,
        pool: Option<&str>,
    ) -> Result<Vec<(Name, DiskSource)>> {
        let mut out = Vec::new();
        for d in &src.spec.disks {
            let dv = src.volumes.iter().find(|v| v.disk == d.name);
            let source = match (mode, dv) {
                (CloneMode::Full, _) => DiskSource::Full {
                    path: d.path.clone(),
                    snapshot: snapshot.map(str::to_string),
                },
                (CloneMode::Linked, Some(dv)) if src.template && snapshot.is_none() => {
                    DiskSource::Linked(self.volume_of(dv).await?)
                }
                (CloneMode::Linked, _) => {
                    let base = self
                        .materialise_base(op, src, &d.name, &d.path, dv, snapshot, pool)
                        .await?;
                    DiskSource::Linked(base)
                }
            };
            out.push((d.name.clone(), source));
        }
        Ok(out)
    }

    /// A read-only base volume holding disk `disk` of `src` as it is now (or as it was at
    /// `snapshot`), for linked clones. A snapshot's base is made once and reused.
    #[allow(clippy::too_many_arguments)]
    async fn materialise_base(
        &self,
        op: &OpHandle,
        src: &VmRecord,
        disk: &Name,
        path: &std::path::Path,
        dv: Option<&DiskVolume>,
        snapshot: Option<&str>,
        pool: Option<&str>,
    ) -> Result<VolumeRecord> {
        let pool = pool
            .map(str::to_string)
            .or_else(|| dv.map(|v| v.pool.to_string()))
            .unwrap_or_else(|| vireo_api::storage::DEFAULT_POOL.to_string());
        let (_, driver) = self.pool(&pool)?;
        let stem = match snapshot {
            Some(s) => format!("{}-{disk}-at-{s}", src.name),
            None => format!("{}-{disk}-{}", src.name, Utc::now().format("%Y%m%d%H%M%S")),
        };
        let name = Name::new(stem)
            .or_else(|_| Name::new(format!("base-{}", Uuid::now_v7().simple())))
            .map_err(|e| EngineError::internal("base volume name", e))?;
        if snapshot.is_some() {
            if let Some(existing) = self.inner.db.get_volume(&pool, name.as_str()).await? {
                if existing.kind == VolumeKind::Base && existing.attached.is_none() {
                    op.log(format!("reusing base volume {}", existing.reference()));
                    return Ok(existing);
                }
            }
        }
        op.stage(&format!("materialising a base of disk {disk}"));
        let id = Uuid::now_v7();
        op.journal(Cleanup::RemovePath {
            path: driver.volume_path(id),
        })
        .await;
        let (d, src_path, snap, op_p) = (
            driver.clone(),
            path.to_path_buf(),
            snapshot.map(str::to_string),
            op.clone(),
        );
        let stage = format!("copying disk {disk}");
        super::storage::blocking("materialising a base volume", move || {
            let cancel = AtomicBool::new(false);
            let mut progress = |done: u64, total: u64| {
                if op_p.is_cancelled() {
                    cancel.store(true, Ordering::Relaxed);
                }
                op_p.progress(bytes_progress(done, total, &stage));
            };
            d.copy_from(id, &src_path, snap.as_deref(), &mut progress, &cancel)
        })
        .await?;
        let d = driver.clone();
        let stat = super::storage::blocking("reading a volume", move || d.stat(id)).await?;
        let _guard = self.inner.storage_lock.lock().await;
        let rec = VolumeRecord {
            uuid: id,
            name,
            pool: Name::new(&pool).map_err(|e| EngineError::internal("pool name", e))?,
            kind: VolumeKind::Base,
            created_at: Utc::now(),
            size_bytes: stat.virtual_size_bytes,
            backing: None,
            backing_image: None,
            attached: None,
            read_only: true,
        };
        self.inner.db.create_volume(&rec).await?;
        op.journal(Cleanup::DeleteKey {
            key: records::volume_key(&pool, rec.name.as_str()),
        })
        .await;
        Ok(rec)
    }

    /// Creates the clone's volumes and points its disks at them.
    async fn make_clone_disks(
        &self,
        op: &OpHandle,
        rec: &mut VmRecord,
        sources: &[(Name, DiskSource)],
        pool: Option<&str>,
    ) -> Result<()> {
        let total: u64 = sources
            .iter()
            .map(|(_, s)| match s {
                DiskSource::Full { path, .. } => disk_virtual_size(path),
                DiskSource::Linked(_) => 0,
            })
            .sum();
        let done_before = Arc::new(AtomicU64::new(0));
        for (disk, source) in sources {
            let (vol, path) = match source {
                DiskSource::Linked(base) => {
                    let pool = pool.unwrap_or(base.pool.as_str()).to_string();
                    let (_, base_driver) = self.pool(base.pool.as_str())?;
                    let base_path = base_driver.volume_path(base.uuid);
                    let backing = Some((base_path, Some(base.reference()), None));
                    self.new_vm_volume(op, &pool, rec.project.as_str(), &rec.name, disk, 0, backing)
                        .await?
                }
                DiskSource::Full { path, snapshot } => {
                    let pool = pool
                        .map(str::to_string)
                        .unwrap_or_else(|| vireo_api::storage::DEFAULT_POOL.to_string());
                    op.stage(&format!("copying disk {disk}"));
                    let (src, snap, op_p, base) = (
                        path.clone(),
                        snapshot.clone(),
                        op.clone(),
                        done_before.clone(),
                    );
                    let stage = format!("copying disk {disk}");
                    let copy = move |d: &dyn crate::storage::PoolDriver, id: Uuid| {
                        let cancel = AtomicBool::new(false);
                        let offset = base.load(Ordering::Relaxed);
                        let mut last = 0;
                        let mut progress = |done: u64, _total: u64| {
                            if op_p.is_cancelled() {
                                cancel.store(true, Ordering::Relaxed);
                            }
                            last = done;
                            op_p.progress(bytes_progress(offset + done, total, &stage));
                        };
                        let r = d.copy_from(id, &src, snap.as_deref(), &mut progress, &cancel);
                        base.fetch_add(last, Ordering::Relaxed);
                        r
                    };
                    self.new_vm_volume_with(op, &pool, rec.project.as_str(), &rec.name, disk, copy)
                        .await?
                }
            };
            if let Some(d) = rec.spec.disks.iter_mut().find(|d| &d.name == disk) {
                d.path = path;
                d.read_only = false;
            }
            rec.volumes.push(DiskVolume {
                disk: disk.clone(),
                pool: vol.pool.clone(),
                volume: vol.name.clone(),
            });
        }
        Ok(())
    }

    /// `POST /v1/vms` with `template`: linked clones of a template, `count` of them in
    /// parallel (names `<name>1`, `<name>2`, … when `count` is given).
    pub(super) async fn create_from_template(
        &self,
        project: Option<&Name>,
        req: CreateVmRequest,
        requestor: &str,
    ) -> Result<Operation> {
        let p = self.project(project).await?;
        let template = req
            .template
            .clone()
            .ok_or_else(|| EngineError::invalid("template", "template is required"))?;
        for (field, set) in [
            ("disk_mib", req.disk_mib.is_some()),
            ("firmware", req.firmware.is_some()),
            ("kernel_args", req.kernel_args.is_some()),
            ("networks", req.networks.is_some()),
        ] {
            if set {
                return Err(EngineError::invalid(
                    field,
                    format!("{field} comes from the template; change the clone afterwards"),
                ));
            }
        }
        let th = self.handle(&p, template.as_str()).map_err(|_| {
            EngineError::invalid("template", format!("template {template:?} not found"))
        })?;
        let mut src = th.view().record;
        if !src.template {
            return Err(EngineError::invalid(
                "template",
                format!(
                    "VM {template:?} is not a template (make it one with `vireo vm template {template}`)"
                ),
            ));
        }
        if req.ignition.is_some() {
            return Err(EngineError::invalid(
                "ignition",
                "ignition comes from the template; create the template's source VM with it",
            ));
        }
        // cloud-init settings given here replace the template's in every clone (each still
        // gets its own instance-id); checked by rendering before anything is made.
        if let Some(cfg) = req.cloud_init.clone() {
            super::cloudinit::render(&src, &cfg)?;
            src.cloud_init = Some(cfg);
        }
        if let Some(pool) = &req.pool {
            self.pool(pool.as_str()).map_err(|_| {
                EngineError::invalid(
                    "pool",
                    format!("storage pool {:?} not found", pool.as_str()),
                )
            })?;
        }
        let names: Vec<Name> = match req.count {
            None => vec![req.name.clone()],
            Some(n) if (1..=MAX_CREATE_COUNT).contains(&n) => (1..=n)
                .map(|i| Name::new(format!("{}{i}", req.name)))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| EngineError::invalid("name", format!("prefix too long: {e}")))?,
            Some(n) => {
                return Err(EngineError::invalid(
                    "count",
                    format!("count must be between 1 and {MAX_CREATE_COUNT}, got {n}"),
                ))
            }
        };
        let mut spec_vcpus = src.spec.vcpus;
        let mut spec_mem = src.spec.memory_mib;
        if let Some(v) = req.vcpus {
            spec_vcpus = v;
        }
        if let Some(m) = req.memory_mib {
            spec_mem = m;
        }
        let mut probe = src.spec.clone();
        probe.vcpus = spec_vcpus;
        probe.memory_mib = spec_mem;
        probe.validate().map_err(super::spec_error)?;
        let mut reservations = Vec::new();
        for n in &names {
            reservations.push(self.reserve_name(&p, n.as_str())?);
        }
        let target = match req.count {
            Some(_) => format!("vm/{p}/{}*", req.name),
            None => format!("vm/{p}/{}", req.name),
        };
        let op = self
            .inner
            .ops
            .begin("vm.create", &target, requestor, false)
            .await;
        let engine = self.clone();
        let op2 = op.clone();
        let requestor = requestor.to_string();
        let (start, pool) = (req.start, req.pool.clone());
        tokio::spawn(async move {
            let res = engine
                .template_batch(
                    &op2, &src, &names, spec_vcpus, spec_mem, pool, start, &requestor,
                )
                .await;
            drop(reservations);
            match res {
                Ok(()) => op2.succeed().await,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "create from template failed");
                    op2.fail(&e.to_string()).await
                }
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn template_batch(
        &self,
        op: &OpHandle,
        src: &VmRecord,
        names: &[Name],
        vcpus: u32,
        memory_mib: u64,
        pool: Option<Name>,
        start: bool,
        requestor: &str,
    ) -> Result<()> {
        let mut bases = Vec::new();
        for dv in &src.volumes {
            bases.push((
                dv.disk.clone(),
                DiskSource::Linked(self.volume_of(dv).await?),
            ));
        }
        let n = names.len() as u64;
        let done = Arc::new(AtomicU64::new(0));
        op.stage(&format!("creating {n} linked clone(s) of {}", src.name));
        let planned_nics = self.plan_clone_nics(src, names.len()).await?;
        let one = |(name, nics): (Name, Vec<NicAttachment>)| {
            let (engine, op, bases, pool, done) = (
                self.clone(),
                op.clone(),
                bases.clone(),
                pool.clone(),
                done.clone(),
            );
            let src = src.clone();
            let requestor = requestor.to_string();
            async move {
                let uuid = Uuid::now_v7();
                let dir = vm_dir(&engine.inner.cfg.state_dir, uuid);
                op.journal(Cleanup::RemovePath { path: dir.clone() }).await;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| EngineError::internal("creating the VM directory", e))?;
                restrict_dir(&dir);
                let mut rec = derive_record(&src, &name, uuid, dir);
                rec.spec.vcpus = vcpus;
                rec.spec.memory_mib = memory_mib;
                apply_clone_nics(&mut rec, &nics);
                super::cloudinit::apply_seed(&mut rec)?;
                super::cloudinit::rehome_fw_cfg(&mut rec)?;
                engine
                    .make_clone_disks(&op, &mut rec, &bases, pool.as_ref().map(|p| p.as_str()))
                    .await?;
                engine.save_clone_nics(&op, &rec, nics).await?;
                let h = engine.register_vm(&op, rec, &requestor).await?;
                if start {
                    engine.start_or_unregister(&h, &requestor).await?;
                }
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                op.progress(vireo_api::operations::Progress {
                    percent: Some((d * 100 / n) as f32),
                    bytes_done: None,
                    bytes_total: None,
                    stage: Some(format!("{d}/{n} VMs created")),
                });
                Ok::<VmHandle, EngineError>(h)
            }
        };
        let results =
            futures::future::join_all(names.iter().cloned().zip(planned_nics).map(one)).await;
        let failure = results
            .iter()
            .find_map(|r| r.as_ref().err().map(|e| e.to_string()));
        if let Some(message) = failure {
            // All or nothing: stop what started and unregister every VM made; the journal
            // removes their disks and records.
            for h in results.into_iter().flatten() {
                let _ = h
                    .act(
                        VmAction::Kill,
                        ActionOpts {
                            requestor: requestor.to_string(),
                            ..Default::default()
                        },
                    )
                    .await;
                let r = h.view().record;
                self.lock_vms()
                    .remove(&(r.project.to_string(), r.name.to_string()));
            }
            return Err(EngineError::Conflict(format!(
                "creating the VMs failed, none were kept: {message}"
            )));
        }
        Ok(())
    }
}

/// Which volumes a template's clones depend on, as "pool/volume" strings.
pub(crate) fn dependants_of(all: &[VolumeRecord], bases: &[VolumeRef]) -> Vec<String> {
    all.iter()
        .filter(|v| v.backing.as_ref().is_some_and(|b| bases.contains(b)))
        .map(|v| match &v.attached {
            Some(a) => format!("{} ({})", a.vm, v.reference()),
            None => v.reference().to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_types::{DiskFormat, DiskSpec, NicBackend, NicSpec, VmSpec};

    fn src() -> VmRecord {
        VmRecord {
            uuid: Uuid::now_v7(),
            name: Name::new("tmpl").unwrap(),
            project: Name::new("default").unwrap(),
            image: Some(Name::new("tiny").unwrap()),
            created_at: Utc::now(),
            spec: VmSpec {
                vcpus: 2,
                memory_mib: 512,
                boot: BootSource::Kernel {
                    kernel: "/k".into(),
                    initrd: None,
                    cmdline: "console=ttyS0 vireo.hostname=tmpl quiet".into(),
                },
                disks: vec![DiskSpec {
                    name: Name::new("data").unwrap(),
                    path: "/p/a.qcow2".into(),
                    format: DiskFormat::Qcow2,
                    read_only: true,
                    boot_index: None,
                }],
                nics: vec![NicSpec {
                    name: Name::new("eth0").unwrap(),
                    mac: MacAddr::generated([1, 2, 3]),
                    backend: NicBackend::User,
                }],
                cdroms: vec![],
                fw_cfg: vec![],
            },
            networks: vec!["user".into()],
            state: VmState::Stopped,
            pid: None,
            accel: None,
            node: "n".into(),
            dir: "/d".into(),
            volumes: vec![],
            template: true,
            template_source: None,
            current_snapshot: Some(Name::new("s1").unwrap()),
            placement: Default::default(),
            cloud_init: None,
        }
    }

    #[test]
    fn clones_get_a_new_identity() {
        let s = src();
        let a = derive_record(&s, &Name::new("web1").unwrap(), Uuid::now_v7(), "/x".into());
        let b = derive_record(&s, &Name::new("web2").unwrap(), Uuid::now_v7(), "/y".into());
        assert_ne!(a.spec.nics[0].mac, s.spec.nics[0].mac);
        assert_ne!(a.spec.nics[0].mac, b.spec.nics[0].mac);
        assert!(a.spec.nics[0].mac.is_unicast());
        match &a.spec.boot {
            BootSource::Kernel { cmdline, .. } => {
                assert_eq!(cmdline, "console=ttyS0 quiet vireo.hostname=web1")
            }
            other => panic!("{other:?}"),
        }
        assert!(!a.template);
        assert_eq!(a.template_source.as_ref().map(Name::as_str), Some("tmpl"));
        assert_eq!(a.current_snapshot, None);
        assert_eq!(a.state, VmState::Stopped);
        assert_eq!((a.spec.vcpus, a.spec.memory_mib), (2, 512));
    }
}
