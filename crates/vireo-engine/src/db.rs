//! Typed access to the state store (key layout in [`crate::records`]). The only module of
//! the engine that knows the store's API.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vireo_store::{Compare, Store, Txn, TxnOp};

use crate::error::{EngineError, Result};
use crate::ops::PersistedOp;
use crate::records::{self, ImageRecord, PoolRecord, SnapshotRecord, VmRecord, VolumeRecord};
use vireo_api::projects::ProjectInfo;

#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

fn store_err(context: &str, e: impl Into<anyhow::Error>) -> EngineError {
    EngineError::internal(context.to_string(), e)
}

impl Db {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Db { store }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, u64)>> {
        let kv = self
            .store
            .get(key)
            .await
            .map_err(|e| store_err("reading the state store", e))?;
        match kv {
            None => Ok(None),
            Some(kv) => {
                let v = serde_json::from_slice(&kv.value)
                    .map_err(|e| store_err(&format!("decoding {key}"), e))?;
                Ok(Some((v, kv.mod_revision as u64)))
            }
        }
    }

    pub(crate) async fn list_json<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(T, u64)>> {
        let r = self
            .store
            .range(prefix)
            .await
            .map_err(|e| store_err("reading the state store", e))?;
        let mut out = Vec::with_capacity(r.kvs.len());
        for kv in r.kvs {
            match serde_json::from_slice(&kv.value) {
                Ok(v) => out.push((v, kv.mod_revision as u64)),
                Err(e) => tracing::error!(key = %kv.key, error = %e, "skipping undecodable record"),
            }
        }
        Ok(out)
    }

    pub(crate) async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<u64> {
        let bytes = serde_json::to_vec(value).map_err(|e| store_err("encoding a record", e))?;
        let r = self
            .store
            .txn(Txn::new().and_then([TxnOp::put(key, bytes)]))
            .await
            .map_err(|e| store_err("writing the state store", e))?;
        Ok(r.revision as u64)
    }

    /// Writes `value` only if `key` does not exist yet.
    pub(crate) async fn create_json<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        what: &str,
    ) -> Result<u64> {
        let bytes = serde_json::to_vec(value).map_err(|e| store_err("encoding a record", e))?;
        let r = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::absent(key)])
                    .and_then([TxnOp::put(key, bytes)]),
            )
            .await
            .map_err(|e| store_err("writing the state store", e))?;
        if !r.succeeded {
            return Err(EngineError::Conflict(format!("{what} already exists")));
        }
        Ok(r.revision as u64)
    }

    pub async fn delete_key(&self, key: &str) -> Result<()> {
        self.store
            .txn(Txn::new().and_then([TxnOp::delete(key)]))
            .await
            .map_err(|e| store_err("deleting from the state store", e))?;
        Ok(())
    }

    // VMs
    pub async fn create_vm(&self, r: &VmRecord) -> Result<u64> {
        self.create_json(
            &records::vm_key(r.project.as_str(), r.name.as_str()),
            r,
            &format!("VM {:?}", r.name.as_str()),
        )
        .await
    }
    pub async fn put_vm(&self, r: &VmRecord) -> Result<u64> {
        self.put_json(&records::vm_key(r.project.as_str(), r.name.as_str()), r)
            .await
    }
    pub async fn get_vm(&self, project: &str, name: &str) -> Result<Option<(VmRecord, u64)>> {
        self.get_json(&records::vm_key(project, name)).await
    }
    pub async fn list_vms(&self, project: Option<&str>) -> Result<Vec<(VmRecord, u64)>> {
        self.list_json(&records::vm_prefix(project)).await
    }
    pub async fn delete_vm(&self, project: &str, name: &str) -> Result<()> {
        self.delete_key(&records::vm_key(project, name)).await
    }

    // Images
    pub async fn create_image(&self, r: &ImageRecord) -> Result<u64> {
        let name = r.info.name.as_str();
        self.create_json(&records::image_key(name), r, &format!("image {name:?}"))
            .await
    }
    pub async fn get_image(&self, name: &str) -> Result<Option<ImageRecord>> {
        Ok(self
            .get_json(&records::image_key(name))
            .await?
            .map(|(r, _)| r))
    }
    pub async fn list_images(&self) -> Result<Vec<ImageRecord>> {
        Ok(self
            .list_json("/images/")
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    // Projects
    pub async fn create_project(&self, p: &ProjectInfo) -> Result<u64> {
        let name = p.name.as_str();
        self.create_json(&records::project_key(name), p, &format!("project {name:?}"))
            .await
    }
    pub async fn get_project(&self, name: &str) -> Result<Option<ProjectInfo>> {
        Ok(self
            .get_json(&records::project_key(name))
            .await?
            .map(|(r, _)| r))
    }
    pub async fn list_projects(&self) -> Result<Vec<ProjectInfo>> {
        Ok(self
            .list_json("/projects/")
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    // Storage pools and volumes
    pub async fn create_pool(&self, r: &PoolRecord) -> Result<u64> {
        let name = r.name.as_str();
        self.create_json(
            &records::pool_key(name),
            r,
            &format!("storage pool {name:?}"),
        )
        .await
    }
    pub async fn get_pool(&self, name: &str) -> Result<Option<PoolRecord>> {
        Ok(self
            .get_json(&records::pool_key(name))
            .await?
            .map(|(r, _)| r))
    }
    pub async fn list_pools(&self) -> Result<Vec<PoolRecord>> {
        Ok(self
            .list_json("/storage-pools/")
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }
    pub async fn create_volume(&self, r: &VolumeRecord) -> Result<u64> {
        self.create_json(
            &records::volume_key(r.pool.as_str(), r.name.as_str()),
            r,
            &format!("volume {:?} in pool {:?}", r.name.as_str(), r.pool.as_str()),
        )
        .await
    }
    pub async fn put_volume(&self, r: &VolumeRecord) -> Result<u64> {
        self.put_json(&records::volume_key(r.pool.as_str(), r.name.as_str()), r)
            .await
    }
    pub async fn get_volume(&self, pool: &str, name: &str) -> Result<Option<VolumeRecord>> {
        Ok(self
            .get_json(&records::volume_key(pool, name))
            .await?
            .map(|(r, _)| r))
    }
    pub async fn list_volumes(&self, pool: Option<&str>) -> Result<Vec<VolumeRecord>> {
        Ok(self
            .list_json(&records::volume_prefix(pool))
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    // Snapshots
    pub async fn create_snapshot(
        &self,
        project: &str,
        vm: &str,
        r: &SnapshotRecord,
    ) -> Result<u64> {
        self.create_json(
            &records::snapshot_key(project, vm, r.name.as_str()),
            r,
            &format!("snapshot {:?} of VM {vm:?}", r.name.as_str()),
        )
        .await
    }
    pub async fn put_snapshot(&self, project: &str, vm: &str, r: &SnapshotRecord) -> Result<u64> {
        self.put_json(&records::snapshot_key(project, vm, r.name.as_str()), r)
            .await
    }
    pub async fn get_snapshot(
        &self,
        project: &str,
        vm: &str,
        name: &str,
    ) -> Result<Option<SnapshotRecord>> {
        Ok(self
            .get_json(&records::snapshot_key(project, vm, name))
            .await?
            .map(|(r, _)| r))
    }
    pub async fn list_snapshots(&self, project: &str, vm: &str) -> Result<Vec<SnapshotRecord>> {
        Ok(self
            .list_json(&records::snapshot_prefix(project, vm))
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    // Operations
    pub async fn put_operation(&self, p: &PersistedOp) -> Result<()> {
        self.put_json(&records::operation_key(p.op.id), p)
            .await
            .map(|_| ())
    }
    pub async fn list_operations(&self) -> Result<Vec<PersistedOp>> {
        Ok(self
            .list_json("/operations/")
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }
}
