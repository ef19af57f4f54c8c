//! Client calls for managed networks (`/v1/networks`) and VM NICs (`/v1/vms/{name}/nics`).

use hyper::header::{HeaderValue, IF_MATCH};
use hyper::Method;
use vireo_api::networks::{
    AddNicRequest, CreateNetworkRequest, Lease, NetworkInfo, NicDetail, UpdateNetworkRequest,
    UpdateNicRequest,
};

use crate::{encode_component, Client, ClientError};

fn network_path(name: &str, suffix: &str) -> String {
    format!("/v1/networks/{}{suffix}", encode_component(name))
}

impl Client {
    pub async fn list_networks(&self) -> Result<Vec<NetworkInfo>, ClientError> {
        self.get("/v1/networks").await
    }

    pub async fn create_network(
        &self,
        request: &CreateNetworkRequest,
    ) -> Result<NetworkInfo, ClientError> {
        self.post("/v1/networks", request).await
    }

    pub async fn get_network(&self, name: &str) -> Result<NetworkInfo, ClientError> {
        self.get(&network_path(name, "")).await
    }

    /// Changes a network; `if_match` is the revision read before (the daemon answers
    /// `precondition_failed` when the network changed in between).
    pub async fn update_network(
        &self,
        name: &str,
        request: &UpdateNetworkRequest,
        if_match: Option<u64>,
    ) -> Result<NetworkInfo, ClientError> {
        let path = network_path(name, "");
        let mut headers = vec![];
        if let Some(rev) = if_match {
            let v = HeaderValue::try_from(format!("\"{rev}\"")).map_err(|_| {
                ClientError::HeaderValue {
                    what: "If-Match value",
                }
            })?;
            headers.push((IF_MATCH, v));
        }
        let response = self
            .send(
                Method::PATCH,
                &path,
                Some(Self::encode_body(request)?),
                headers,
                self.request_timeout,
            )
            .await?;
        Self::decode(&Method::PATCH, &path, &response)
    }

    pub async fn delete_network(&self, name: &str) -> Result<(), ClientError> {
        self.delete_ignoring_body(&network_path(name, "")).await
    }

    pub async fn network_leases(&self, name: &str) -> Result<Vec<Lease>, ClientError> {
        self.get(&network_path(name, "/leases")).await
    }

    pub async fn list_nics(&self, vm: &str) -> Result<Vec<NicDetail>, ClientError> {
        self.get(&self.vm_path(vm, "/nics")).await
    }

    pub async fn add_nic(
        &self,
        vm: &str,
        request: &AddNicRequest,
    ) -> Result<NicDetail, ClientError> {
        self.post(&self.vm_path(vm, "/nics"), request).await
    }

    pub async fn update_nic(
        &self,
        vm: &str,
        nic: &str,
        request: &UpdateNicRequest,
    ) -> Result<NicDetail, ClientError> {
        let path = self.vm_path(vm, &format!("/nics/{}", encode_component(nic)));
        self.json(Method::PATCH, &path, Some(Self::encode_body(request)?))
            .await
    }

    pub async fn remove_nic(&self, vm: &str, nic: &str) -> Result<(), ClientError> {
        self.delete_ignoring_body(&self.vm_path(vm, &format!("/nics/{}", encode_component(nic))))
            .await
    }
}
