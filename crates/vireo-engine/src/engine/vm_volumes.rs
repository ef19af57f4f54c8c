//! The volumes behind VM disks: made with a VM (empty, overlay, copy or adopted file),
//! named `<vm>-<disk>` (project-prefixed outside `default`), released with the VM.
//!
//! Invariant: the volume record is stored before its data is written (it reserves the name),
//! and both are journalled, so a failed or interrupted operation leaves neither.

use std::path::PathBuf;

use chrono::Utc;
use uuid::Uuid;
use vireo_api::storage::{VolumeAttachment, VolumeKind, VolumeRef};
use vireo_types::Name;

use super::storage::blocking;
use super::*;
use crate::error::{EngineError, Result};
use crate::ops::{Cleanup, OpHandle};
use crate::records::{self, VolumeRecord};
use crate::storage::{PoolDriver, StorageError};

impl Engine {
    /// Creates the volume behind a new VM's disk (an overlay when `backing` is given) and
    /// journals its removal. Returns the record and the data path.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn new_vm_volume(
        &self,
        op: &OpHandle,
        pool: &str,
        project: &str,
        vm: &Name,
        disk: &Name,
        size: u64,
        backing: Option<(PathBuf, Option<VolumeRef>, Option<Name>)>,
    ) -> Result<(VolumeRecord, PathBuf)> {
        let (backing_path, backing_vol, backing_image) = match backing {
            Some((p, v, i)) => (Some(p), v, i),
            None => (None, None, None),
        };
        let (rec, path) = self
            .new_vm_volume_with(op, pool, project, vm, disk, move |d, id| {
                d.create(id, size, backing_path.as_deref())
            })
            .await?;
        if backing_vol.is_none() && backing_image.is_none() {
            return Ok((rec, path));
        }
        // Record what it is an overlay of (the record was stored before the data existed).
        let _guard = self.inner.storage_lock.lock().await;
        let mut rec = rec;
        rec.backing = backing_vol;
        rec.backing_image = backing_image;
        self.inner.db.put_volume(&rec).await?;
        Ok((rec, path))
    }

    /// Creates a VM disk volume whose data `make` writes (create, copy, …): the record is
    /// stored first (reserving the name), then the data is made without holding the storage
    /// lock; both are journalled.
    pub(crate) async fn new_vm_volume_with(
        &self,
        op: &OpHandle,
        pool: &str,
        project: &str,
        vm: &Name,
        disk: &Name,
        make: impl FnOnce(&dyn PoolDriver, Uuid) -> std::result::Result<(), StorageError>
            + Send
            + 'static,
    ) -> Result<(VolumeRecord, PathBuf)> {
        let (_, driver) = self.pool(pool)?;
        let id = Uuid::now_v7();
        let path = driver.volume_path(id);
        let mut rec = {
            let _guard = self.inner.storage_lock.lock().await;
            let name = self.free_volume_name(pool, project, vm, disk).await?;
            let rec = VolumeRecord {
                uuid: id,
                name,
                pool: Name::new(pool).map_err(|e| EngineError::internal("pool name", e))?,
                kind: VolumeKind::Vm,
                created_at: Utc::now(),
                size_bytes: 0,
                backing: None,
                backing_image: None,
                attached: Some(VolumeAttachment {
                    project: Name::new(project).map_err(|e| EngineError::internal("project", e))?,
                    vm: vm.clone(),
                    disk: disk.clone(),
                }),
                read_only: false,
            };
            op.journal(Cleanup::DeleteKey {
                key: records::volume_key(pool, rec.name.as_str()),
            })
            .await;
            self.inner.db.create_volume(&rec).await?;
            rec
        };
        op.journal(Cleanup::RemovePath { path: path.clone() }).await;
        let d = driver.clone();
        blocking("writing a disk volume", move || make(d.as_ref(), id)).await?;
        let d = driver.clone();
        let stat = blocking("reading a volume", move || d.stat(id)).await?;
        rec.size_bytes = stat.virtual_size_bytes;
        let _guard = self.inner.storage_lock.lock().await;
        self.inner.db.put_volume(&rec).await?;
        Ok((rec, path))
    }

    /// Moves `file` (a standalone qcow2 the daemon produced) into `pool` as the volume of
    /// `vm`'s disk `disk`, journalling its removal.
    pub(crate) async fn adopt_vm_volume(
        &self,
        op: &OpHandle,
        pool: &str,
        project: &str,
        vm: &Name,
        disk: &Name,
        file: PathBuf,
    ) -> Result<(VolumeRecord, PathBuf)> {
        let (_, driver) = self.pool(pool)?;
        let _guard = self.inner.storage_lock.lock().await;
        let name = self.free_volume_name(pool, project, vm, disk).await?;
        let id = Uuid::now_v7();
        let path = driver.volume_path(id);
        op.journal(Cleanup::RemovePath { path: path.clone() }).await;
        let d = driver.clone();
        blocking("moving a disk into the pool", move || d.adopt(id, &file)).await?;
        let d = driver.clone();
        let stat = blocking("reading a volume", move || d.stat(id)).await?;
        let rec = VolumeRecord {
            uuid: id,
            name,
            pool: Name::new(pool).map_err(|e| EngineError::internal("pool name", e))?,
            kind: VolumeKind::Vm,
            created_at: Utc::now(),
            size_bytes: stat.virtual_size_bytes,
            backing: None,
            backing_image: None,
            attached: Some(VolumeAttachment {
                project: Name::new(project).map_err(|e| EngineError::internal("project", e))?,
                vm: vm.clone(),
                disk: disk.clone(),
            }),
            read_only: false,
        };
        self.inner.db.create_volume(&rec).await?;
        op.journal(Cleanup::DeleteKey {
            key: records::volume_key(pool, rec.name.as_str()),
        })
        .await;
        Ok((rec, path))
    }

    /// `<vm>-<disk>` (prefixed with the project outside `default`), with a numeric suffix
    /// when taken.
    async fn free_volume_name(
        &self,
        pool: &str,
        project: &str,
        vm: &Name,
        disk: &Name,
    ) -> Result<Name> {
        let base = if project == vireo_api::DEFAULT_PROJECT {
            format!("{vm}-{disk}")
        } else {
            format!("{project}-{vm}-{disk}")
        };
        for i in 0..1000 {
            let candidate = if i == 0 {
                base.clone()
            } else {
                format!("{base}-{i}")
            };
            let Ok(name) = Name::new(candidate) else {
                break;
            };
            if self
                .inner
                .db
                .get_volume(pool, name.as_str())
                .await?
                .is_none()
            {
                return Ok(name);
            }
        }
        // Names too long for the suffix scheme fall back to a unique one.
        Name::new(format!("vol-{}", Uuid::now_v7().simple()))
            .map_err(|e| EngineError::internal("volume name", e))
    }

    /// Deletes the volumes a deleted VM owned (its disks; a template's bases), detaches its
    /// custom ones, and removes materialised bases nothing uses any more.
    pub(crate) async fn release_vm_volumes(&self, project: &str, vm: &str) -> Result<()> {
        let _guard = self.inner.storage_lock.lock().await;
        let vols = self.inner.db.list_volumes(None).await?;
        let mut freed_bases = Vec::new();
        for mut v in vols.into_iter().filter(|v| {
            v.attached
                .as_ref()
                .is_some_and(|a| a.project.as_str() == project && a.vm.as_str() == vm)
        }) {
            if matches!(v.kind, VolumeKind::Vm | VolumeKind::Base) {
                let mut probe = v.clone();
                probe.attached = None;
                if let Some(why) = self.delete_blocker(&probe).await? {
                    // Still a base of another volume: keep it, detached, so nothing breaks.
                    tracing::warn!(volume = %v.reference(), reason = %why, "keeping a deleted VM's volume");
                    v.attached = None;
                    self.inner.db.put_volume(&v).await?;
                } else {
                    self.remove_volume(&v).await?;
                    freed_bases.extend(v.backing.clone());
                }
            } else {
                v.attached = None;
                self.inner.db.put_volume(&v).await?;
            }
        }
        // Bases materialised for linked clones belong to nobody: they go with their last user.
        while let Some(b) = freed_bases.pop() {
            let Some(base) = self
                .inner
                .db
                .get_volume(b.pool.as_str(), b.volume.as_str())
                .await?
            else {
                continue;
            };
            if base.kind == VolumeKind::Base
                && base.attached.is_none()
                && self.delete_blocker(&base).await?.is_none()
            {
                tracing::info!(volume = %base.reference(), "removing an unused base volume");
                self.remove_volume(&base).await?;
                freed_bases.extend(base.backing.clone());
            }
        }
        Ok(())
    }
}
