//! VM snapshots: a named qcow2 internal snapshot in every disk of the VM, taken atomically
//! (one QMP transaction when running, offline through the pool driver when stopped), with RAM
//! and device state when `memory` is asked for (QMP `snapshot-save`).
//!
//! Invariants:
//! - all work on a VM's snapshots runs as exclusive work in the VM's actor, so snapshots,
//!   restores and lifecycle actions never interleave;
//! - the snapshot record is written only after every disk holds the snapshot, and removed
//!   only after every disk dropped it; a failed create removes what it made;
//! - snapshots form a tree through `parent` (the VM's `current_snapshot` when taken); deleting
//!   one re-parents its children onto its parent, so every other snapshot stays valid.

use std::time::Duration;

use chrono::Utc;
use vireo_api::operations::Operation;
use vireo_api::snapshots::{check_description, CreateSnapshotRequest, SnapshotInfo};
use vireo_types::{Name, VmAction, VmState};

use super::*;
use crate::actor::{ActionOpts, VmHandle};
use crate::error::{chain, EngineError, Result};
use crate::hv::Machine;
use crate::records::{self, SnapshotRecord, VmRecord};

/// How long the guest agent may take to freeze or thaw filesystems.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

fn info(s: &SnapshotRecord, current: Option<&Name>) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name.clone(),
        created_at: s.created_at,
        parent: s.parent.clone(),
        memory: s.memory,
        vm_state: s.vm_state,
        fs_frozen: s.fs_frozen,
        disks: s.disks.clone(),
        description: s.description.clone(),
        current: current == Some(&s.name),
    }
}

/// Snapshots need every disk to be a qcow2 volume of a pool.
fn check_snapshottable(rec: &VmRecord) -> Result<()> {
    if rec.template {
        return Err(EngineError::Conflict(format!(
            "VM {} is a template; its disks are read-only bases",
            rec.name
        )));
    }
    if rec.spec.disks.is_empty() {
        return Err(EngineError::Conflict(format!(
            "VM {} has no disks to snapshot",
            rec.name
        )));
    }
    for d in &rec.spec.disks {
        if d.format != vireo_types::DiskFormat::Qcow2
            || !rec.volumes.iter().any(|v| v.disk == d.name)
        {
            return Err(EngineError::Conflict(format!(
                "disk {} of VM {} is not a qcow2 pool volume; snapshots need one",
                d.name, rec.name
            )));
        }
    }
    Ok(())
}

impl Engine {
    pub async fn list_snapshots(
        &self,
        project: Option<&Name>,
        vm: &str,
    ) -> Result<Vec<SnapshotInfo>> {
        let p = self.project(project).await?;
        let h = self.handle(&p, vm)?;
        let current = h.view().record.current_snapshot;
        let mut v: Vec<SnapshotInfo> = self
            .inner
            .db
            .list_snapshots(&p, vm)
            .await?
            .iter()
            .map(|s| info(s, current.as_ref()))
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(v)
    }

    /// Runs `work` as an operation of kind `kind` on VM `vm`.
    async fn snapshot_op<F, Fut>(
        &self,
        p: &str,
        vm: &str,
        kind: &str,
        requestor: &str,
        work: F,
    ) -> Result<Operation>
    where
        F: FnOnce(Engine, VmHandle, crate::ops::OpHandle) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let h = self.handle(p, vm)?;
        let target = h.view().record.target();
        let op = self.inner.ops.begin(kind, &target, requestor, false).await;
        let (engine, op2) = (self.clone(), op.clone());
        tokio::spawn(async move {
            match work(engine, h, op2.clone()).await {
                Ok(()) => op2.succeed().await,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "snapshot operation failed");
                    op2.fail(&e.to_string()).await
                }
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    pub async fn create_snapshot(
        &self,
        project: Option<&Name>,
        vm: &str,
        req: CreateSnapshotRequest,
        requestor: &str,
    ) -> Result<Operation> {
        let p = self.project(project).await?;
        let h = self.handle(&p, vm)?;
        let description = req.description.clone().unwrap_or_default();
        check_description(&description).map_err(|m| EngineError::invalid("description", m))?;
        let rec = h.view().record;
        check_snapshottable(&rec)?;
        if req.memory && !rec.state.has_process() {
            return Err(EngineError::Conflict(format!(
                "memory snapshots need VM {vm} running or paused (it is {})",
                rec.state
            )));
        }
        if self
            .inner
            .db
            .get_snapshot(&p, vm, req.name.as_str())
            .await?
            .is_some()
        {
            return Err(EngineError::Conflict(format!(
                "VM {vm} already has a snapshot named {:?}",
                req.name.as_str()
            )));
        }
        let (pp, requestor_s) = (p.clone(), requestor.to_string());
        self.snapshot_op(
            &p,
            vm,
            "vm.snapshot.create",
            requestor,
            move |engine, h, op| async move {
                op.stage(if req.memory {
                    "saving RAM, devices and disks"
                } else {
                    "capturing disks"
                });
                let guest_ready = h.view().guest_ready;
                let e2 = engine.clone();
                let snap_name = req.name.clone();
                h.exclusive(Box::new(move |mut rec, machine| {
                    Box::pin(async move {
                        check_snapshottable(&rec)?;
                        let disks: Vec<Name> =
                            rec.spec.disks.iter().map(|d| d.name.clone()).collect();
                        let tag = req.name.as_str();
                        let mut fs_frozen = false;
                        let mut vm_state = rec.state;
                        match (&machine, rec.state.has_process()) {
                            (Some(m), true) if req.memory => {
                                // What a restore must return to: QEMU's own answer, not a
                                // record that may lag behind its events.
                                if let Ok(running) = m.cpus_running().await {
                                    vm_state = if running {
                                        VmState::Running
                                    } else {
                                        VmState::Paused
                                    };
                                }
                                m.save_snapshot(tag, &disks[0], &disks).await.map_err(|e| {
                                    EngineError::Conflict(format!(
                                        "saving the snapshot failed: {e}"
                                    ))
                                })?;
                            }
                            (Some(m), true) => {
                                fs_frozen = guest_ready && freeze(m.as_ref(), &rec.name).await;
                                let res = m.snapshot_disks(tag, &disks).await;
                                if fs_frozen {
                                    thaw(m.as_ref(), &rec.name).await;
                                }
                                res.map_err(|e| {
                                    EngineError::Conflict(format!(
                                        "capturing the disks failed: {e}"
                                    ))
                                })?;
                            }
                            _ if req.memory => {
                                return Err(EngineError::Conflict(format!(
                                    "memory snapshots need VM {} running or paused",
                                    rec.name
                                )))
                            }
                            _ => e2.offline_snapshot_create(&rec, tag).await?,
                        }
                        let s = SnapshotRecord {
                            name: req.name.clone(),
                            created_at: Utc::now(),
                            parent: rec.current_snapshot.clone(),
                            memory: req.memory,
                            vmstate_disk: req.memory.then(|| disks[0].clone()),
                            vm_state,
                            fs_frozen,
                            disks,
                            description,
                            vcpus: rec.spec.vcpus,
                            memory_mib: rec.spec.memory_mib,
                        };
                        e2.inner
                            .db
                            .create_snapshot(rec.project.as_str(), rec.name.as_str(), &s)
                            .await?;
                        rec.current_snapshot = Some(s.name.clone());
                        Ok(Some(rec))
                    })
                }))
                .await?;
                engine.inner.events.emit(
                    "vm.snapshot.created",
                    Some(&pp),
                    &format!("vm/{pp}/{}", h.view().record.name),
                    &requestor_s,
                    serde_json::json!({ "snapshot": snap_name }),
                );
                Ok(())
            },
        )
        .await
    }

    /// Takes internal snapshot `tag` of every disk of a stopped VM; all or none.
    async fn offline_snapshot_create(&self, rec: &VmRecord, tag: &str) -> Result<()> {
        let mut done: Vec<(std::sync::Arc<dyn crate::storage::PoolDriver>, uuid::Uuid)> = vec![];
        for dv in &rec.volumes {
            let v = self.volume_of_disk(dv).await?;
            let (_, d) = self.pool(dv.pool.as_str())?;
            let (d2, id, t) = (d.clone(), v.uuid, tag.to_string());
            let res =
                super::storage::blocking("snapshotting a disk", move || d2.snapshot_create(id, &t))
                    .await;
            if let Err(e) = res {
                for (d, id) in done {
                    let t = tag.to_string();
                    let _ = super::storage::blocking("undoing a disk snapshot", move || {
                        d.snapshot_delete(id, &t)
                    })
                    .await;
                }
                return Err(e);
            }
            done.push((d, v.uuid));
        }
        Ok(())
    }

    async fn volume_of_disk(
        &self,
        dv: &crate::records::DiskVolume,
    ) -> Result<crate::records::VolumeRecord> {
        self.inner
            .db
            .get_volume(dv.pool.as_str(), dv.volume.as_str())
            .await?
            .ok_or_else(|| not_found("volume", dv.volume.as_str()))
    }

    pub async fn restore_snapshot(
        &self,
        project: Option<&Name>,
        vm: &str,
        snapshot: &str,
        requestor: &str,
    ) -> Result<Operation> {
        let p = self.project(project).await?;
        let h = self.handle(&p, vm)?;
        let snap = self
            .inner
            .db
            .get_snapshot(&p, vm, snapshot)
            .await?
            .ok_or_else(|| not_found("snapshot", snapshot))?;
        let rec = h.view().record;
        check_snapshottable(&rec)?;
        for d in &snap.disks {
            if !rec.spec.disks.iter().any(|x| &x.name == d) {
                return Err(EngineError::Conflict(format!(
                    "disk {d} of snapshot {snapshot} is no longer attached to VM {vm}"
                )));
            }
        }
        if snap.memory && (snap.vcpus, snap.memory_mib) != (rec.spec.vcpus, rec.spec.memory_mib) {
            return Err(EngineError::Conflict(format!(
                "VM {vm} now has {} vCPUs and {} MiB; snapshot {snapshot} was taken with {} and {} \
                 and holds RAM state, so it can only be restored with the same sizes",
                rec.spec.vcpus, rec.spec.memory_mib, snap.vcpus, snap.memory_mib
            )));
        }
        let (pp, requestor_s) = (p.clone(), requestor.to_string());
        self.snapshot_op(
            &p,
            vm,
            "vm.snapshot.restore",
            requestor,
            move |engine, h, op| async move {
                let opts = || ActionOpts {
                    requestor: requestor_s.clone(),
                    ..Default::default()
                };
                let state = h.view().record.state;
                if snap.memory {
                    if !state.has_process() {
                        // Paused from the first instruction: no guest code runs before the load.
                        op.stage("starting the VM (paused) to load the snapshot into");
                        h.act(
                            VmAction::Start,
                            ActionOpts {
                                start_paused: true,
                                ..opts()
                            },
                        )
                        .await?;
                    }
                    op.stage("loading RAM, devices and disks");
                    let s2 = snap.clone();
                    h.exclusive(Box::new(move |mut rec, machine| {
                        Box::pin(async move {
                            let m =
                                machine.filter(|_| rec.state.has_process()).ok_or_else(|| {
                                    EngineError::Conflict(format!(
                                        "VM {} stopped meanwhile",
                                        rec.name
                                    ))
                                })?;
                            let vmstate = s2
                                .vmstate_disk
                                .clone()
                                .unwrap_or_else(|| s2.disks[0].clone());
                            m.load_snapshot(s2.name.as_str(), &vmstate, &s2.disks)
                                .await
                                .map_err(|e| {
                                    EngineError::Conflict(format!(
                                        "loading the snapshot failed: {e}"
                                    ))
                                })?;
                            if s2.vm_state == VmState::Running {
                                m.resume().await.map_err(|e| {
                                    EngineError::internal("resuming after the restore", e)
                                })?;
                                rec.state = VmState::Running;
                            } else {
                                rec.state = VmState::Paused;
                            }
                            rec.current_snapshot = Some(s2.name.clone());
                            Ok(Some(rec))
                        })
                    }))
                    .await?;
                } else {
                    let was_running = state.has_process();
                    if was_running {
                        op.stage("stopping the VM (its current state is discarded)");
                        h.act(VmAction::Kill, opts()).await?;
                    }
                    op.stage("reverting the disks");
                    let (e2, s2) = (engine.clone(), snap.clone());
                    h.exclusive(Box::new(move |mut rec, _machine| {
                        Box::pin(async move {
                            if rec.state.has_process() {
                                return Err(EngineError::Conflict(format!(
                                    "VM {} was started meanwhile",
                                    rec.name
                                )));
                            }
                            e2.offline_snapshot_apply(&rec, &s2).await?;
                            rec.current_snapshot = Some(s2.name.clone());
                            Ok(Some(rec))
                        })
                    }))
                    .await?;
                    if was_running {
                        op.stage("starting the VM again");
                        h.act(VmAction::Start, opts()).await?;
                    }
                }
                engine.inner.events.emit(
                    "vm.snapshot.restored",
                    Some(&pp),
                    &format!("vm/{pp}/{}", h.view().record.name),
                    &requestor_s,
                    serde_json::json!({ "snapshot": snap.name }),
                );
                Ok(())
            },
        )
        .await
    }

    /// Reverts the listed disks of a stopped VM to snapshot `s`.
    async fn offline_snapshot_apply(&self, rec: &VmRecord, s: &SnapshotRecord) -> Result<()> {
        for dv in rec.volumes.iter().filter(|v| s.disks.contains(&v.disk)) {
            let v = self.volume_of_disk(dv).await?;
            let (_, d) = self.pool(dv.pool.as_str())?;
            let (d2, id, t) = (d.clone(), v.uuid, s.name.to_string());
            super::storage::blocking("reverting a disk", move || d2.snapshot_apply(id, &t)).await?;
            let d2 = d.clone();
            if let Ok(stat) =
                super::storage::blocking("reading a volume", move || d2.stat(id)).await
            {
                let _guard = self.inner.storage_lock.lock().await;
                let mut v = v;
                v.size_bytes = stat.virtual_size_bytes;
                self.inner.db.put_volume(&v).await?;
            }
        }
        Ok(())
    }

    pub async fn delete_snapshot(
        &self,
        project: Option<&Name>,
        vm: &str,
        snapshot: &str,
        requestor: &str,
    ) -> Result<Operation> {
        let p = self.project(project).await?;
        let snap = self
            .inner
            .db
            .get_snapshot(&p, vm, snapshot)
            .await?
            .ok_or_else(|| not_found("snapshot", snapshot))?;
        self.handle(&p, vm)?;
        let (pp, requestor_s) = (p.clone(), requestor.to_string());
        self.snapshot_op(&p, vm, "vm.snapshot.delete", requestor, move |engine, h, op| async move {
            op.stage("deleting the snapshot from the disks");
            let (e2, s2) = (engine.clone(), snap.clone());
            h.exclusive(Box::new(move |mut rec, machine| {
                Box::pin(async move {
                    let present: Vec<Name> = s2
                        .disks
                        .iter()
                        .filter(|d| rec.spec.disks.iter().any(|x| &x.name == *d))
                        .cloned()
                        .collect();
                    match machine.filter(|_| rec.state.has_process()) {
                        Some(m) => {
                            for d in &present {
                                if let Err(e) = m
                                    .delete_disk_snapshots(s2.name.as_str(), std::slice::from_ref(d))
                                    .await
                                {
                                    // Gone from this disk already (an interrupted delete).
                                    tracing::warn!(disk = %d, error = %e, "snapshot not deleted from disk");
                                }
                            }
                        }
                        None => e2.offline_snapshot_delete(&rec, &s2).await?,
                    }
                    // Re-parent the children; move "current" up.
                    let (p, v) = (rec.project.to_string(), rec.name.to_string());
                    for mut child in e2.inner.db.list_snapshots(&p, &v).await? {
                        if child.parent.as_ref() == Some(&s2.name) {
                            child.parent = s2.parent.clone();
                            e2.inner.db.put_snapshot(&p, &v, &child).await?;
                        }
                    }
                    e2.inner
                        .db
                        .delete_key(&records::snapshot_key(&p, &v, s2.name.as_str()))
                        .await?;
                    if rec.current_snapshot.as_ref() == Some(&s2.name) {
                        rec.current_snapshot = s2.parent.clone();
                        return Ok(Some(rec));
                    }
                    Ok(None)
                })
            }))
            .await?;
            engine.inner.events.emit(
                "vm.snapshot.deleted",
                Some(&pp),
                &format!("vm/{pp}/{}", h.view().record.name),
                &requestor_s,
                serde_json::json!({ "snapshot": snap.name }),
            );
            Ok(())
        })
        .await
    }

    /// Drops snapshot `s` from the disks of a stopped VM (disks that lack it are skipped).
    async fn offline_snapshot_delete(&self, rec: &VmRecord, s: &SnapshotRecord) -> Result<()> {
        for dv in rec.volumes.iter().filter(|v| s.disks.contains(&v.disk)) {
            let v = self.volume_of_disk(dv).await?;
            let (_, d) = self.pool(dv.pool.as_str())?;
            let (d2, id, t) = (d.clone(), v.uuid, s.name.to_string());
            let names = {
                let d3 = d.clone();
                super::storage::blocking("listing disk snapshots", move || d3.snapshot_names(id))
                    .await?
            };
            if !names.iter().any(|n| n == s.name.as_str()) {
                continue;
            }
            super::storage::blocking("deleting a disk snapshot", move || {
                d2.snapshot_delete(id, &t)
            })
            .await?;
        }
        Ok(())
    }

    /// Removes the snapshot records of a deleted VM.
    pub(crate) async fn forget_snapshots(&self, project: &str, vm: &str) -> Result<()> {
        for s in self.inner.db.list_snapshots(project, vm).await? {
            self.inner
                .db
                .delete_key(&records::snapshot_key(project, vm, s.name.as_str()))
                .await?;
        }
        Ok(())
    }
}

/// Freezes the guest's filesystems; `false` (logged) when the agent cannot.
async fn freeze(m: &dyn Machine, vm: &Name) -> bool {
    match m.agent_fsfreeze(FREEZE_TIMEOUT).await {
        Ok(n) => {
            tracing::info!(%vm, filesystems = n, "guest filesystems frozen for a snapshot");
            true
        }
        Err(e) => {
            tracing::warn!(%vm, error = %e, "could not freeze guest filesystems; snapshot is crash-consistent only");
            false
        }
    }
}

async fn thaw(m: &dyn Machine, vm: &Name) {
    if let Err(e) = m.agent_fsthaw(FREEZE_TIMEOUT).await {
        tracing::error!(%vm, error = %e, "thawing guest filesystems failed");
    }
}
