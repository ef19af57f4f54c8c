//! Storage pools and volumes in the engine facade: records in the store, data through the
//! pool's [`PoolDriver`].
//!
//! Invariants:
//! - every change to volume records runs under `Inner::storage_lock`, so "is it attached / is
//!   it a backing file" checks and the change that depends on them cannot interleave;
//! - a volume with dependants (overlays) or an attachment is never deleted;
//! - the default pool exists after [`Engine::open`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;
use vireo_api::operations::{Operation, Progress};
use vireo_api::storage::{
    check_volume_size, CreatePoolRequest, CreateVolumeRequest, PoolDriverKind, PoolInfo,
    VolumeInfo, VolumeKind, DEFAULT_POOL,
};
use vireo_types::Name;

use super::*;
use crate::error::{chain, EngineError, Result};
use crate::ops::{Cleanup, OpHandle};
use crate::records::{self, PoolRecord, VolumeRecord};
use crate::storage::dir::DirPool;
use crate::storage::{PoolDriver, StorageError};

/// Maps a driver error: the caller's fault → 400, else internal.
fn storage_err(context: &str, e: StorageError) -> EngineError {
    if e.is_invalid_input() {
        EngineError::invalid("file", format!("{context}: {}", chain(&e)))
    } else {
        EngineError::internal(context.to_string(), e)
    }
}

/// Runs a blocking driver call.
pub(super) async fn blocking<T: Send + 'static>(
    context: &str,
    f: impl FnOnce() -> std::result::Result<T, StorageError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::internal(context.to_string(), e))?
        .map_err(|e| storage_err(context, e))
}

impl Engine {
    /// Directories volume backing files may live in.
    fn backing_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.inner.cfg.state_dir.join("images")];
        let pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
        dirs.extend(pools.values().map(|(rec, _)| rec.path.clone()));
        dirs
    }

    fn make_driver(&self, rec: &PoolRecord) -> Arc<dyn PoolDriver> {
        match rec.driver {
            PoolDriverKind::Dir => Arc::new(DirPool::new(rec.path.clone(), self.backing_dirs())),
        }
    }

    /// Loads the pools and creates the default one on first start.
    pub(super) async fn init_pools(&self) -> Result<()> {
        let mut recs = self.inner.db.list_pools().await?;
        if !recs.iter().any(|r| r.name.as_str() == DEFAULT_POOL) {
            let rec = PoolRecord {
                uuid: Uuid::now_v7(),
                name: Name::new(DEFAULT_POOL)
                    .map_err(|e| EngineError::internal("default pool name", e))?,
                driver: PoolDriverKind::Dir,
                path: self.inner.cfg.state_dir.join("pools").join(DEFAULT_POOL),
                created_at: Utc::now(),
            };
            self.inner.db.create_pool(&rec).await?;
            tracing::info!(path = %rec.path.display(), "created the default storage pool");
            recs.push(rec);
        }
        // Register all records first so every driver knows every pool directory.
        {
            let mut pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
            for rec in &recs {
                pools.insert(rec.name.to_string(), (rec.clone(), None));
            }
        }
        for rec in recs {
            let driver = self.make_driver(&rec);
            let d = driver.clone();
            if let Err(e) = blocking("preparing a storage pool", move || d.init()).await {
                // A pool whose storage is gone must not stop the daemon; it reports errors.
                tracing::error!(pool = %rec.name, error = %chain(&e), "storage pool unavailable");
            }
            self.inner
                .pools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rec.name.to_string(), (rec, Some(driver)));
        }
        Ok(())
    }

    /// The record and driver of pool `name`.
    pub(crate) fn pool(&self, name: &str) -> Result<(PoolRecord, Arc<dyn PoolDriver>)> {
        let pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
        match pools.get(name) {
            Some((rec, Some(d))) => Ok((rec.clone(), d.clone())),
            Some((_, None)) | None => Err(not_found("storage pool", name)),
        }
    }

    async fn pool_info(&self, rec: &PoolRecord, driver: Arc<dyn PoolDriver>) -> Result<PoolInfo> {
        let vols = self.inner.db.list_volumes(Some(rec.name.as_str())).await?;
        let ids: Vec<Uuid> = vols.iter().map(|v| v.uuid).collect();
        let provisioned: u64 = vols.iter().map(|v| v.size_bytes).sum();
        let d = driver.clone();
        let (usage, allocated) = blocking("reading pool usage", move || {
            let usage = d.usage()?;
            let allocated = ids
                .iter()
                .filter_map(|id| d.stat(*id).ok())
                .map(|s| s.allocated_bytes)
                .sum::<u64>();
            Ok((usage, allocated))
        })
        .await?;
        Ok(PoolInfo {
            name: rec.name.clone(),
            uuid: rec.uuid,
            driver: rec.driver,
            path: rec.path.clone(),
            created_at: rec.created_at,
            capacity_bytes: usage.capacity_bytes,
            used_bytes: usage.used_bytes,
            available_bytes: usage.available_bytes,
            allocated_bytes: allocated,
            provisioned_bytes: provisioned,
            volumes: vols.len() as u32,
        })
    }

    pub async fn list_pools(&self) -> Result<Vec<PoolInfo>> {
        let mut names: Vec<String> = {
            let pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.keys().cloned().collect()
        };
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if let Ok((rec, d)) = self.pool(&n) {
                out.push(self.pool_info(&rec, d).await?);
            }
        }
        Ok(out)
    }

    pub async fn get_pool(&self, name: &str) -> Result<PoolInfo> {
        let (rec, d) = self.pool(name)?;
        self.pool_info(&rec, d).await
    }

    /// Creates a pool. A `dir` pool's directory must be absolute, outside the daemon's own
    /// directories (other than `pools/`), not inside or around another pool, and empty.
    pub async fn create_pool(&self, req: CreatePoolRequest, requestor: &str) -> Result<PoolInfo> {
        let _guard = self.inner.storage_lock.lock().await;
        if self.pool(req.name.as_str()).is_ok() {
            return Err(EngineError::Conflict(format!(
                "storage pool {:?} already exists",
                req.name.as_str()
            )));
        }
        let state = &self.inner.cfg.state_dir;
        let path = match req.path {
            None => state.join("pools").join(req.name.as_str()),
            Some(p) => {
                if !p.is_absolute()
                    || p.components().any(|c| {
                        matches!(
                            c,
                            std::path::Component::ParentDir | std::path::Component::CurDir
                        )
                    })
                {
                    return Err(EngineError::invalid(
                        "path",
                        "path must be absolute and contain no `.` or `..` components",
                    ));
                }
                let pools_dir = state.join("pools");
                if (p.starts_with(state) && !p.starts_with(&pools_dir)) || state.starts_with(&p) {
                    return Err(EngineError::invalid(
                        "path",
                        format!(
                            "path must not overlap the daemon's state directory {} (except its pools/ directory)",
                            state.display()
                        ),
                    ));
                }
                p
            }
        };
        {
            let pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((other, _)) = pools
                .values()
                .find(|(r, _)| r.path.starts_with(&path) || path.starts_with(&r.path))
            {
                return Err(EngineError::invalid(
                    "path",
                    format!(
                        "path overlaps storage pool {:?} at {}",
                        other.name.as_str(),
                        other.path.display()
                    ),
                ));
            }
        }
        if let Ok(mut rd) = std::fs::read_dir(&path) {
            if rd.next().is_some() {
                return Err(EngineError::invalid(
                    "path",
                    format!("directory {} is not empty", path.display()),
                ));
            }
        }
        let existed = path.exists();
        let rec = PoolRecord {
            uuid: Uuid::now_v7(),
            name: req.name.clone(),
            driver: req.driver,
            path: path.clone(),
            created_at: Utc::now(),
        };
        let driver = self.make_driver(&rec);
        let d = driver.clone();
        if let Err(e) = blocking("preparing the storage pool", move || d.init()).await {
            if !existed {
                let _ = std::fs::remove_dir(&path);
            }
            return Err(match e {
                EngineError::Internal { source, .. } => EngineError::invalid(
                    "path",
                    format!("cannot use {}: {source:#}", path.display()),
                ),
                other => other,
            });
        }
        if let Err(e) = self.inner.db.create_pool(&rec).await {
            if !existed {
                let _ = std::fs::remove_dir(&path);
            }
            return Err(e);
        }
        self.inner
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.name.to_string(), (rec.clone(), Some(driver.clone())));
        self.emit_storage(
            "storage-pool.created",
            &format!("storage-pool/{}", rec.name),
            requestor,
        );
        self.pool_info(&rec, driver).await
    }

    /// Deletes an empty pool (not the default one). The directory is removed when empty.
    pub async fn delete_pool(&self, name: &str, requestor: &str) -> Result<()> {
        let _guard = self.inner.storage_lock.lock().await;
        let (rec, _) = self.pool(name)?;
        if name == DEFAULT_POOL {
            return Err(EngineError::Conflict(
                "the default storage pool cannot be deleted".into(),
            ));
        }
        let vols = self.inner.db.list_volumes(Some(name)).await?;
        if !vols.is_empty() {
            return Err(EngineError::Conflict(format!(
                "storage pool {name:?} still holds {} volume(s): {}",
                vols.len(),
                vols.iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.inner.db.delete_key(&records::pool_key(name)).await?;
        self.inner
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let _ = std::fs::remove_dir(&rec.path);
        self.emit_storage(
            "storage-pool.deleted",
            &format!("storage-pool/{name}"),
            requestor,
        );
        Ok(())
    }

    fn emit_storage(&self, kind: &str, target: &str, requestor: &str) {
        self.inner
            .events
            .emit(kind, None, target, requestor, serde_json::json!({}));
    }

    async fn volume_record(&self, pool: &str, name: &str) -> Result<VolumeRecord> {
        self.pool(pool)?;
        self.inner
            .db
            .get_volume(pool, name)
            .await?
            .ok_or_else(|| not_found("volume", name))
    }

    async fn volume_info(&self, v: &VolumeRecord, all: &[VolumeRecord]) -> VolumeInfo {
        let stat = match self.pool(v.pool.as_str()) {
            Ok((_, d)) => {
                let id = v.uuid;
                blocking("reading a volume", move || d.stat(id)).await.ok()
            }
            Err(_) => None,
        };
        let me = v.reference();
        VolumeInfo {
            name: v.name.clone(),
            pool: v.pool.clone(),
            uuid: v.uuid,
            kind: v.kind,
            format: "qcow2".into(),
            virtual_size_bytes: stat.map(|s| s.virtual_size_bytes).unwrap_or(v.size_bytes),
            allocated_bytes: stat.map(|s| s.allocated_bytes).unwrap_or(0),
            created_at: v.created_at,
            backing: v.backing.clone(),
            backing_image: v.backing_image.clone(),
            attached_to: v.attached.clone(),
            dependants: all
                .iter()
                .filter(|o| o.backing.as_ref() == Some(&me))
                .map(|o| o.reference())
                .collect(),
            read_only: v.read_only,
        }
    }

    /// Volumes of `pool`, or of every pool.
    pub async fn list_volumes(&self, pool: Option<&str>) -> Result<Vec<VolumeInfo>> {
        if let Some(p) = pool {
            self.pool(p)?;
        }
        let all = self.inner.db.list_volumes(None).await?;
        let mut out = Vec::new();
        for v in all
            .iter()
            .filter(|v| pool.is_none_or(|p| v.pool.as_str() == p))
        {
            out.push(self.volume_info(v, &all).await);
        }
        out.sort_by(|a, b| (&a.pool, &a.name).cmp(&(&b.pool, &b.name)));
        Ok(out)
    }

    pub async fn get_volume(&self, pool: &str, name: &str) -> Result<VolumeInfo> {
        let v = self.volume_record(pool, name).await?;
        let all = self.inner.db.list_volumes(None).await?;
        Ok(self.volume_info(&v, &all).await)
    }

    /// Creates an empty custom volume.
    pub async fn create_volume(
        &self,
        pool: &str,
        req: CreateVolumeRequest,
        requestor: &str,
    ) -> Result<VolumeInfo> {
        check_volume_size(req.size_bytes).map_err(|m| EngineError::invalid("size_bytes", m))?;
        let (_, driver) = self.pool(pool)?;
        let _guard = self.inner.storage_lock.lock().await;
        if self
            .inner
            .db
            .get_volume(pool, req.name.as_str())
            .await?
            .is_some()
        {
            return Err(EngineError::Conflict(format!(
                "volume {:?} already exists in pool {pool:?}",
                req.name.as_str()
            )));
        }
        let rec = VolumeRecord {
            uuid: Uuid::now_v7(),
            name: req.name.clone(),
            pool: Name::new(pool).map_err(|e| EngineError::internal("pool name", e))?,
            kind: VolumeKind::Custom,
            created_at: Utc::now(),
            size_bytes: req.size_bytes,
            backing: None,
            backing_image: None,
            attached: None,
            read_only: false,
        };
        let (d, id, size) = (driver.clone(), rec.uuid, req.size_bytes);
        blocking("creating the volume", move || d.create(id, size, None)).await?;
        if let Err(e) = self.inner.db.create_volume(&rec).await {
            let _ = driver.delete(rec.uuid);
            return Err(e);
        }
        self.emit_storage(
            "volume.created",
            &format!("volume/{pool}/{}", rec.name),
            requestor,
        );
        let all = self.inner.db.list_volumes(None).await?;
        Ok(self.volume_info(&rec, &all).await)
    }

    /// Why `v` cannot be deleted, if anything stops it.
    pub(super) async fn delete_blocker(&self, v: &VolumeRecord) -> Result<Option<String>> {
        if let Some(a) = &v.attached {
            return Ok(Some(format!(
                "volume {:?} is attached to VM {:?} (project {:?}) as disk {:?}; detach it first",
                v.name.as_str(),
                a.vm.as_str(),
                a.project.as_str(),
                a.disk.as_str()
            )));
        }
        let me = v.reference();
        let deps: Vec<String> = self
            .inner
            .db
            .list_volumes(None)
            .await?
            .into_iter()
            .filter(|o| o.backing.as_ref() == Some(&me))
            .map(|o| o.reference().to_string())
            .collect();
        if !deps.is_empty() {
            return Ok(Some(format!(
                "volume {:?} is the base of {} linked volume(s): {}",
                v.name.as_str(),
                deps.len(),
                deps.join(", ")
            )));
        }
        Ok(None)
    }

    /// Deletes a custom volume that is neither attached nor a base of other volumes.
    pub async fn delete_volume(&self, pool: &str, name: &str, requestor: &str) -> Result<()> {
        let _guard = self.inner.storage_lock.lock().await;
        let v = self.volume_record(pool, name).await?;
        if let Some(why) = self.delete_blocker(&v).await? {
            return Err(EngineError::Conflict(why));
        }
        self.remove_volume(&v).await?;
        self.emit_storage(
            "volume.deleted",
            &format!("volume/{pool}/{name}"),
            requestor,
        );
        Ok(())
    }

    /// Removes record and data (callers checked it may go; holds `storage_lock`).
    pub(super) async fn remove_volume(&self, v: &VolumeRecord) -> Result<()> {
        self.inner
            .db
            .delete_key(&records::volume_key(v.pool.as_str(), v.name.as_str()))
            .await?;
        if let Ok((_, d)) = self.pool(v.pool.as_str()) {
            let id = v.uuid;
            blocking("removing volume data", move || d.delete(id)).await?;
        }
        Ok(())
    }

    /// A per-upload directory for [`Engine::import_volume`]; the upload goes to `<dir>/image`.
    pub fn volume_upload_path(&self) -> Result<PathBuf> {
        let dir = self
            .inner
            .cfg
            .state_dir
            .join("uploads")
            .join(Uuid::now_v7().to_string());
        std::fs::create_dir_all(&dir)
            .map_err(|e| EngineError::internal("creating the upload directory", e))?;
        Ok(dir.join("image"))
    }

    /// Converts the uploaded image at `upload` (from [`Engine::volume_upload_path`]; removed
    /// when done) into a new custom volume, as an operation with progress.
    pub async fn import_volume(
        &self,
        pool: &str,
        name: Name,
        upload: PathBuf,
        requestor: &str,
    ) -> Result<Operation> {
        let upload_dir = upload.parent().map(PathBuf::from);
        let discard = || {
            if let Some(d) = &upload_dir {
                let _ = std::fs::remove_dir_all(d);
            }
        };
        let (pool_rec, driver) = match self.pool(pool) {
            Ok(x) => x,
            Err(e) => {
                discard();
                return Err(e);
            }
        };
        match self.inner.db.get_volume(pool, name.as_str()).await {
            Ok(None) => {}
            Ok(Some(_)) => {
                discard();
                return Err(EngineError::Conflict(format!(
                    "volume {:?} already exists in pool {pool:?}",
                    name.as_str()
                )));
            }
            Err(e) => {
                discard();
                return Err(e);
            }
        }
        let target = format!("volume/{pool}/{name}");
        let op = self
            .inner
            .ops
            .begin("volume.import", &target, requestor, true)
            .await;
        if let Some(d) = &upload_dir {
            op.journal(Cleanup::RemovePath { path: d.clone() }).await;
        }
        let engine = self.clone();
        let op2 = op.clone();
        let requestor = requestor.to_string();
        tokio::spawn(async move {
            let res = engine
                .import_volume_work(&op2, &pool_rec, driver, name, &upload)
                .await;
            if let Some(d) = &upload_dir {
                let _ = tokio::fs::remove_dir_all(d).await;
            }
            match res {
                Ok(()) => {
                    engine.emit_storage("volume.created", &target, &requestor);
                    op2.succeed().await
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "volume import failed");
                    op2.fail(&e.to_string()).await
                }
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    async fn import_volume_work(
        &self,
        op: &OpHandle,
        pool: &PoolRecord,
        driver: Arc<dyn PoolDriver>,
        name: Name,
        upload: &std::path::Path,
    ) -> Result<()> {
        op.stage("converting to qcow2");
        let id = Uuid::now_v7();
        op.journal(Cleanup::RemovePath {
            path: driver.volume_path(id),
        })
        .await;
        let (d, src, op_p) = (driver.clone(), upload.to_path_buf(), op.clone());
        blocking("importing the image", move || {
            let cancel = AtomicBool::new(false);
            let mut progress = |done: u64, total: u64| {
                if op_p.is_cancelled() {
                    cancel.store(true, Ordering::Relaxed);
                }
                op_p.progress(bytes_progress(done, total, "converting"));
            };
            d.import(id, &src, &mut progress, &cancel)
        })
        .await?;
        let d = driver.clone();
        let stat = blocking("reading the imported volume", move || d.stat(id)).await?;
        let _guard = self.inner.storage_lock.lock().await;
        let rec = VolumeRecord {
            uuid: id,
            name,
            pool: pool.name.clone(),
            kind: VolumeKind::Custom,
            created_at: Utc::now(),
            size_bytes: stat.virtual_size_bytes,
            backing: None,
            backing_image: None,
            attached: None,
            read_only: false,
        };
        self.inner.db.create_volume(&rec).await?;
        op.log(format!(
            "imported {} bytes (virtual) into {}",
            stat.virtual_size_bytes,
            rec.reference()
        ));
        Ok(())
    }
}

/// Progress body for byte-counted work.
pub(crate) fn bytes_progress(done: u64, total: u64, stage: &str) -> Progress {
    Progress {
        percent: (total > 0).then(|| (done as f64 * 100.0 / total as f64) as f32),
        bytes_done: Some(done),
        bytes_total: Some(total),
        stage: Some(stage.to_string()),
    }
}
