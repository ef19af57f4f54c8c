//! Volumes and VMs together: attach/detach (hotplug when running) and resize (online through
//! QMP `block_resize` when the volume's VM runs).
//!
//! Lock order: VM work runs inside the VM's actor and may take `storage_lock`; code holding
//! `storage_lock` never waits on an actor.

use std::time::Duration;

use vireo_api::operations::Operation;
use vireo_api::storage::{
    check_volume_size, AttachDiskRequest, VolumeAttachment, VolumeKind, VolumeRef,
};
use vireo_types::{DiskFormat, DiskSpec, Name};

use super::*;
use crate::error::{chain, EngineError, Result};
use crate::records::DiskVolume;

/// How long a guest gets to release a hot-removed disk.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);

impl Engine {
    /// Grows a volume; online when it is attached to a running VM.
    pub async fn resize_volume(
        &self,
        pool: &str,
        name: &str,
        size: u64,
        requestor: &str,
    ) -> Result<Operation> {
        check_volume_size(size).map_err(|m| EngineError::invalid("size_bytes", m))?;
        let (_, driver) = self.pool(pool)?;
        let v = self
            .inner
            .db
            .get_volume(pool, name)
            .await?
            .ok_or_else(|| not_found("volume", name))?;
        if v.read_only || v.kind == VolumeKind::Base {
            return Err(EngineError::Conflict(format!(
                "volume {} is a read-only base; resize its clones instead",
                v.reference()
            )));
        }
        let d = driver.clone();
        let id = v.uuid;
        let current = super::storage::blocking("reading the volume", move || d.stat(id))
            .await?
            .virtual_size_bytes;
        if size <= current {
            return Err(EngineError::invalid(
                "size_bytes",
                format!(
                    "volumes only grow: {} is {current} bytes, asked for {size}",
                    v.reference()
                ),
            ));
        }
        let target = format!("volume/{pool}/{name}");
        let op = self
            .inner
            .ops
            .begin("volume.resize", &target, requestor, false)
            .await;
        let (engine, op2, requestor) = (self.clone(), op.clone(), requestor.to_string());
        tokio::spawn(async move {
            let res = engine.resize_work(v, driver, size).await;
            match res {
                Ok(()) => {
                    engine.inner.events.emit(
                        "volume.resized",
                        None,
                        &target,
                        &requestor,
                        serde_json::json!({ "size_bytes": size }),
                    );
                    op2.succeed().await
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "volume resize failed");
                    op2.fail(&e.to_string()).await
                }
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    async fn resize_work(
        &self,
        v: crate::records::VolumeRecord,
        driver: std::sync::Arc<dyn crate::storage::PoolDriver>,
        size: u64,
    ) -> Result<()> {
        let offline = move |d: std::sync::Arc<dyn crate::storage::PoolDriver>, id| {
            super::storage::blocking("growing the volume", move || d.resize(id, size))
        };
        match &v.attached {
            Some(a) => {
                let h = self.handle(a.project.as_str(), a.vm.as_str())?;
                let (disk, id, d) = (a.disk.clone(), v.uuid, driver.clone());
                h.exclusive(Box::new(move |rec, machine| {
                    Box::pin(async move {
                        match machine.filter(|_| rec.state.has_process()) {
                            Some(m) => m.block_resize(&disk, size).await.map_err(|e| {
                                EngineError::Conflict(format!("online resize failed: {e}"))
                            })?,
                            None => offline(d, id).await?,
                        }
                        Ok(None)
                    })
                }))
                .await?;
            }
            None => offline(driver, v.uuid).await?,
        }
        let _guard = self.inner.storage_lock.lock().await;
        if let Some(mut cur) = self
            .inner
            .db
            .get_volume(v.pool.as_str(), v.name.as_str())
            .await?
        {
            cur.size_bytes = size;
            self.inner.db.put_volume(&cur).await?;
        }
        Ok(())
    }

    /// Attaches a custom volume to a VM (hot-plugged when the VM runs).
    pub async fn attach_disk(
        &self,
        project: Option<&Name>,
        vm: &str,
        req: AttachDiskRequest,
        requestor: &str,
    ) -> Result<Operation> {
        let p = self.project(project).await?;
        let h = self.handle(&p, vm)?;
        let (_, driver) = self.pool(req.pool.as_str()).map_err(|_| {
            EngineError::invalid(
                "pool",
                format!("storage pool {:?} not found", req.pool.as_str()),
            )
        })?;
        let v = self
            .inner
            .db
            .get_volume(req.pool.as_str(), req.volume.as_str())
            .await?
            .ok_or_else(|| {
                EngineError::invalid(
                    "volume",
                    format!("volume {}/{} not found", req.pool, req.volume),
                )
            })?;
        if v.kind != VolumeKind::Custom {
            return Err(EngineError::Conflict(format!(
                "volume {} is a {} volume; only custom volumes can be attached",
                v.reference(),
                match v.kind {
                    VolumeKind::Vm => "VM",
                    VolumeKind::Base => "base",
                    VolumeKind::Custom => "custom",
                }
            )));
        }
        if let Some(a) = &v.attached {
            return Err(EngineError::Conflict(format!(
                "volume {} is attached to VM {} already",
                v.reference(),
                a.vm
            )));
        }
        let disk_name = req.disk.clone().unwrap_or_else(|| v.name.clone());
        let rec = h.view().record;
        if rec.template {
            return Err(EngineError::Conflict(format!("VM {vm} is a template")));
        }
        if rec.spec.disks.iter().any(|d| d.name == disk_name) {
            return Err(EngineError::invalid(
                "disk",
                format!("VM {vm} already has a disk named {disk_name}"),
            ));
        }
        let target = rec.target();
        let op = self
            .inner
            .ops
            .begin("vm.disk.attach", &target, requestor, false)
            .await;
        let (engine, op2, requestor) = (self.clone(), op.clone(), requestor.to_string());
        let path = driver.volume_path(v.uuid);
        tokio::spawn(async move {
            let vref = v.reference();
            let e2 = engine.clone();
            let dn = disk_name.clone();
            let res = h
                .exclusive(Box::new(move |mut rec, machine| {
                    Box::pin(async move {
                        if rec.spec.disks.iter().any(|d| d.name == dn) {
                            return Err(EngineError::Conflict(format!(
                                "VM {} already has a disk named {dn}",
                                rec.name
                            )));
                        }
                        let _guard = e2.inner.storage_lock.lock().await;
                        let mut vol = e2
                            .inner
                            .db
                            .get_volume(vref.pool.as_str(), vref.volume.as_str())
                            .await?
                            .ok_or_else(|| not_found("volume", vref.volume.as_str()))?;
                        if vol.attached.is_some() {
                            return Err(EngineError::Conflict(format!(
                                "volume {vref} was attached elsewhere meanwhile"
                            )));
                        }
                        let disk = DiskSpec {
                            name: dn.clone(),
                            path,
                            format: DiskFormat::Qcow2,
                            read_only: false,
                            boot_index: None,
                        };
                        // Attached disks sit on hotplug ports, so they can leave while running.
                        let port = rec.placement.free_port().ok_or_else(|| {
                            EngineError::Conflict(format!(
                                "VM {} has no free hotplug port left for another disk",
                                rec.name
                            ))
                        })?;
                        let live = machine.filter(|_| rec.state.has_process());
                        if let Some(m) = &live {
                            m.hotplug_disk(&disk, port).await.map_err(|e| {
                                EngineError::Conflict(format!("hot-adding the disk failed: {e}"))
                            })?;
                        }
                        vol.attached = Some(VolumeAttachment {
                            project: rec.project.clone(),
                            vm: rec.name.clone(),
                            disk: dn.clone(),
                        });
                        if let Err(e) = e2.inner.db.put_volume(&vol).await {
                            if let Some(m) = &live {
                                let _ = m.unplug_disk(&dn, UNPLUG_TIMEOUT).await;
                            }
                            return Err(e);
                        }
                        rec.placement.disks.insert(dn.clone(), port);
                        rec.spec.disks.push(disk);
                        rec.volumes.push(DiskVolume {
                            disk: dn,
                            pool: vref.pool.clone(),
                            volume: vref.volume.clone(),
                        });
                        Ok(Some(rec))
                    })
                }))
                .await;
            match res {
                Ok(()) => {
                    engine.inner.events.emit(
                        "vm.disk.attached",
                        Some(&p),
                        &target,
                        &requestor,
                        serde_json::json!({ "disk": disk_name, "volume": v.reference().to_string() }),
                    );
                    op2.succeed().await
                }
                Err(e) => op2.fail(&e.to_string()).await,
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    /// Detaches a custom volume from a VM (hot-unplugged when the VM runs; the guest must
    /// release the device).
    pub async fn detach_disk(
        &self,
        project: Option<&Name>,
        vm: &str,
        disk: &str,
        requestor: &str,
    ) -> Result<Operation> {
        let p = self.project(project).await?;
        let h = self.handle(&p, vm)?;
        let rec = h.view().record;
        let dv = rec
            .volumes
            .iter()
            .find(|v| v.disk.as_str() == disk)
            .cloned()
            .ok_or_else(|| not_found("disk", disk))?;
        let vol = self
            .inner
            .db
            .get_volume(dv.pool.as_str(), dv.volume.as_str())
            .await?
            .ok_or_else(|| not_found("volume", dv.volume.as_str()))?;
        if vol.kind != VolumeKind::Custom {
            return Err(EngineError::Conflict(format!(
                "disk {disk} is VM {vm}'s own volume; only attached custom volumes can be detached"
            )));
        }
        let target = rec.target();
        let op = self
            .inner
            .ops
            .begin("vm.disk.detach", &target, requestor, false)
            .await;
        let (engine, op2, requestor) = (self.clone(), op.clone(), requestor.to_string());
        let disk = disk.to_string();
        tokio::spawn(async move {
            let e2 = engine.clone();
            let dn = disk.clone();
            let res = h
                .exclusive(Box::new(move |mut rec, machine| {
                    Box::pin(async move {
                        let name = Name::new(&dn)
                            .map_err(|e| EngineError::invalid("disk", e.to_string()))?;
                        if let Some(m) = machine.filter(|_| rec.state.has_process()) {
                            m.unplug_disk(&name, UNPLUG_TIMEOUT).await.map_err(|e| {
                                EngineError::Conflict(format!("hot-removing the disk failed: {e}"))
                            })?;
                        }
                        rec.placement.disks.remove(&name);
                        rec.spec.disks.retain(|d| d.name != name);
                        rec.volumes.retain(|v| v.disk != name);
                        let _guard = e2.inner.storage_lock.lock().await;
                        if let Some(mut vol) = e2
                            .inner
                            .db
                            .get_volume(dv.pool.as_str(), dv.volume.as_str())
                            .await?
                        {
                            vol.attached = None;
                            e2.inner.db.put_volume(&vol).await?;
                        }
                        Ok(Some(rec))
                    })
                }))
                .await;
            match res {
                Ok(()) => {
                    engine.inner.events.emit(
                        "vm.disk.detached",
                        Some(&p),
                        &target,
                        &requestor,
                        serde_json::json!({ "disk": disk }),
                    );
                    op2.succeed().await
                }
                Err(e) => op2.fail(&e.to_string()).await,
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }
}

/// The reference of a VM disk's volume.
pub(crate) fn disk_volume_ref(dv: &DiskVolume) -> VolumeRef {
    VolumeRef {
        pool: dv.pool.clone(),
        volume: dv.volume.clone(),
    }
}
