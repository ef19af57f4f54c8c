//! VM snapshots, clones, templates and disk attachment.

use vireo_api::operations::Operation;
use vireo_api::snapshots::{CloneVmRequest, CreateSnapshotRequest, SnapshotInfo};
use vireo_api::storage::AttachDiskRequest;
use vireo_api::vms::VmInfo;

use crate::{encode_component, Client, ClientError};

impl Client {
    pub async fn list_snapshots(&self, vm: &str) -> Result<Vec<SnapshotInfo>, ClientError> {
        self.get(&self.vm_path(vm, "/snapshots")).await
    }

    pub async fn create_snapshot(
        &self,
        vm: &str,
        request: &CreateSnapshotRequest,
    ) -> Result<Operation, ClientError> {
        self.post(&self.vm_path(vm, "/snapshots"), request).await
    }

    pub async fn restore_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
    ) -> Result<Operation, ClientError> {
        let suffix = format!("/snapshots/{}/restore", encode_component(snapshot));
        self.post(&self.vm_path(vm, &suffix), &serde_json::json!({}))
            .await
    }

    pub async fn delete_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
    ) -> Result<Operation, ClientError> {
        let suffix = format!("/snapshots/{}", encode_component(snapshot));
        self.json(hyper::Method::DELETE, &self.vm_path(vm, &suffix), None)
            .await
    }

    pub async fn clone_vm(
        &self,
        vm: &str,
        request: &CloneVmRequest,
    ) -> Result<Operation, ClientError> {
        self.post(&self.vm_path(vm, "/clone"), request).await
    }

    pub async fn template_vm(&self, vm: &str) -> Result<VmInfo, ClientError> {
        self.post(&self.vm_path(vm, "/template"), &serde_json::json!({}))
            .await
    }

    pub async fn attach_disk(
        &self,
        vm: &str,
        request: &AttachDiskRequest,
    ) -> Result<Operation, ClientError> {
        self.post(&self.vm_path(vm, "/disks"), request).await
    }

    pub async fn detach_disk(&self, vm: &str, disk: &str) -> Result<Operation, ClientError> {
        let suffix = format!("/disks/{}", encode_component(disk));
        self.json(hyper::Method::DELETE, &self.vm_path(vm, &suffix), None)
            .await
    }
}
