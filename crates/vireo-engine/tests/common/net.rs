//! Set-up shared by the managed-network engine tests: an engine over the fake hypervisor and
//! vireo-net's in-memory FakeHost (a host with an uplink and a LAN route the default network
//! must avoid), request builders and polling helpers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use vireo_api::images::BuildImageRequest;
use vireo_api::networks::{AddNicRequest, CreateNetworkRequest, NetworkType};
use vireo_api::operations::OperationStatus;
use vireo_api::vms::StopRequest;
use vireo_engine::fake_hv::FakeHypervisor;
use vireo_engine::net::hv::NetHypervisor;
use vireo_engine::net::{NetConfig, NetManager};
use vireo_engine::{Engine, EngineConfig, ImageBuilder};
use vireo_net::host::FakeState;
use vireo_net::{FakeHost, HostNet, RouteInfo};
use vireo_types::VmAction;

use super::*;

pub struct NetEnv {
    pub _dir: tempfile::TempDir,
    pub hv: Arc<FakeHypervisor>,
    pub host: Arc<FakeHost>,
    pub engine: Engine,
}

pub fn fake_host() -> Arc<FakeHost> {
    let host = Arc::new(FakeHost::new());
    host.create_veth("eth0", "eth0-peer").unwrap();
    host.edit(|st| {
        st.routes = vec![
            RouteInfo {
                dst: "0.0.0.0/0".parse().unwrap(),
                dev: Some("eth0".into()),
            },
            // The host's own LAN: the default network must avoid it.
            RouteInfo {
                dst: "10.0.0.0/24".parse().unwrap(),
                dev: Some("eth0".into()),
            },
        ]
    });
    host
}

pub async fn open_net(
    dir: &std::path::Path,
    hv: Arc<FakeHypervisor>,
    host: Arc<FakeHost>,
) -> Engine {
    let store: Arc<dyn vireo_store::Store> = Arc::new(open_store(dir).await);
    let net = NetManager::new(
        host,
        None,
        store.clone(),
        NetConfig {
            dir: dir.join("net"),
            uplink: None,
            create_default: true,
            dnsmasq_user: "root".into(),
        },
    );
    let mut builders: HashMap<String, Arc<dyn ImageBuilder>> = HashMap::new();
    builders.insert("tiny".into(), Arc::new(FakeBuilder));
    let engine = Engine::open(
        EngineConfig {
            state_dir: dir.to_path_buf(),
            node: "node1".into(),
        },
        store,
        Arc::new(NetHypervisor::new(hv, net.clone())),
        builders,
    )
    .await
    .unwrap();
    engine.attach_networks(net);
    engine.start_networks().await.unwrap();
    engine
}

pub async fn setup_net() -> NetEnv {
    let dir = tempfile::tempdir().unwrap();
    let hv = FakeHypervisor::new();
    let host = fake_host();
    let engine = open_net(dir.path(), hv.clone(), host.clone()).await;
    let op = engine
        .build_image(BuildImageRequest::new(name("tiny")), "test")
        .await
        .unwrap();
    assert_eq!(wait(&engine, &op).await.status, OperationStatus::Succeeded);
    NetEnv {
        _dir: dir,
        hv,
        host,
        engine,
    }
}

pub fn net_req(n: &str, kind: NetworkType, subnet: Option<&str>) -> CreateNetworkRequest {
    let mut req = CreateNetworkRequest::new(name(n), kind);
    req.subnet = subnet.map(str::to_owned);
    req
}

pub fn nic_req(network: &str) -> AddNicRequest {
    AddNicRequest::on(name(network))
}

pub fn nft(st: &FakeState) -> String {
    st.nft.clone().unwrap_or_default()
}

pub async fn act(e: &Engine, vm: &str, a: VmAction) {
    let op = e
        .vm_action(None, vm, a, StopRequest::default(), "test")
        .await
        .unwrap();
    let op = wait(e, &op).await;
    assert_eq!(op.status, OperationStatus::Succeeded, "{op:?}");
}

pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} never happened");
}
