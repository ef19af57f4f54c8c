//! Wiring of managed networks into the daemon: the `[network]` config decides whether the
//! engine gets a [`NetManager`] (real host effects through `ip`, `nft`, dnsmasq and Vireo's own
//! Open vSwitch) or none at all (only QEMU's `user` network; no host networking touched).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use vireo_engine::hv::Hypervisor;
use vireo_engine::net::hv::NetHypervisor;
use vireo_engine::net::{NetConfig, NetManager};

use crate::config::Config;

/// How often the whole network state is re-applied (drift repair, dnsmasq supervision).
const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// Builds the network manager (when managed networks are on) and the hypervisor the engine
/// uses: wrapped so VMs' taps follow their QEMU's lifetime.
pub async fn setup(
    cfg: &Config,
    store: Arc<dyn vireo_store::Store>,
    hv: Arc<dyn Hypervisor>,
) -> (Arc<dyn Hypervisor>, Option<Arc<NetManager>>) {
    if !cfg.network.managed {
        tracing::info!("managed networks are off ([network] managed = false)");
        return (hv, None);
    }
    let ovs = if cfg.network.ovs {
        let run_dir = cfg.state_dir.join("run").join("ovs");
        match tokio::task::spawn_blocking(move || vireo_net::ovs::Ovs::start(&run_dir)).await {
            Ok(Ok(o)) => {
                tracing::info!(run_dir = %o.run_dir().display(), "Open vSwitch (userspace datapath) running");
                Some(Arc::new(o))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %vireo_engine::error::chain(&e), "Open vSwitch unavailable; ovs networks are disabled");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "starting Open vSwitch panicked");
                None
            }
        }
    } else {
        None
    };
    let net = NetManager::new(
        Arc::new(vireo_net::IpHost::new(None)),
        ovs,
        store,
        NetConfig {
            dir: cfg.state_dir.join("net"),
            uplink: cfg.network.uplink.clone(),
            create_default: cfg.network.default_network,
            // The lease files live in the root-only state directory.
            dnsmasq_user: "root".into(),
        },
    );
    let wrapped: Arc<dyn Hypervisor> = Arc::new(NetHypervisor::new(hv, net.clone()));
    (wrapped, Some(net))
}

/// Attaches `net` to the engine, reconciles the host once (default network on first start,
/// taps of running VMs, leftovers removed) and keeps re-applying in the background.
pub async fn start(
    engine: &vireo_engine::Engine,
    net: Option<Arc<NetManager>>,
) -> anyhow::Result<()> {
    let Some(net) = net else {
        return Ok(());
    };
    engine.attach_networks(net.clone());
    engine
        .start_networks()
        .await
        .context("reconciling managed networks")?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = net.apply().await {
                tracing::warn!(error = %vireo_engine::error::chain(&e), "network reconcile failed");
            }
        }
    });
    Ok(())
}
