//! Storage pools and volumes (`/v1/storage-pools`).

use vireo_api::operations::Operation;
use vireo_api::storage::{
    CreatePoolRequest, CreateVolumeRequest, PoolInfo, ResizeVolumeRequest, VolumeInfo,
};

use crate::{encode_component, Client, ClientError};

fn pool_path(pool: &str) -> String {
    format!("/v1/storage-pools/{}", encode_component(pool))
}

fn volume_path(pool: &str, volume: &str, suffix: &str) -> String {
    format!(
        "{}/volumes/{}{suffix}",
        pool_path(pool),
        encode_component(volume)
    )
}

impl Client {
    pub async fn list_pools(&self) -> Result<Vec<PoolInfo>, ClientError> {
        self.get("/v1/storage-pools").await
    }

    pub async fn get_pool(&self, pool: &str) -> Result<PoolInfo, ClientError> {
        self.get(&pool_path(pool)).await
    }

    pub async fn create_pool(&self, request: &CreatePoolRequest) -> Result<PoolInfo, ClientError> {
        self.post("/v1/storage-pools", request).await
    }

    pub async fn delete_pool(&self, pool: &str) -> Result<(), ClientError> {
        self.delete_ignoring_body(&pool_path(pool)).await
    }

    pub async fn list_volumes(&self, pool: &str) -> Result<Vec<VolumeInfo>, ClientError> {
        self.get(&format!("{}/volumes", pool_path(pool))).await
    }

    pub async fn get_volume(&self, pool: &str, volume: &str) -> Result<VolumeInfo, ClientError> {
        self.get(&volume_path(pool, volume, "")).await
    }

    pub async fn create_volume(
        &self,
        pool: &str,
        request: &CreateVolumeRequest,
    ) -> Result<VolumeInfo, ClientError> {
        self.post(&format!("{}/volumes", pool_path(pool)), request)
            .await
    }

    pub async fn delete_volume(&self, pool: &str, volume: &str) -> Result<(), ClientError> {
        self.delete_ignoring_body(&volume_path(pool, volume, ""))
            .await
    }

    /// Grows a volume (online when its VM runs); returns the operation.
    pub async fn resize_volume(
        &self,
        pool: &str,
        volume: &str,
        request: &ResizeVolumeRequest,
    ) -> Result<Operation, ClientError> {
        self.post(&volume_path(pool, volume, "/resize"), request)
            .await
    }

    /// Uploads the disk image at `path` (streamed) and imports it as volume `name`.
    pub async fn import_volume(
        &self,
        pool: &str,
        name: &str,
        path: &std::path::Path,
    ) -> Result<Operation, ClientError> {
        let url = format!(
            "{}/volumes/import?name={}",
            pool_path(pool),
            encode_component(name)
        );
        self.upload_file(path, &url, "application/octet-stream")
            .await
    }
}
