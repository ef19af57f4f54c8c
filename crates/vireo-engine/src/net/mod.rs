//! Managed networks inside the engine: the stored network and NIC records, and the
//! [`NetManager`] that makes the host match them through `vireo-net`'s [`HostNet`].
//!
//! Invariants:
//! - every change to networks, NIC attachments or live taps happens under one async mutex
//!   and ends with [`NetManager`] re-applying the *whole* desired state (links, dnsmasq, one
//!   atomic nft transaction), so the host never holds a half-applied change for long and a
//!   re-apply repairs drift;
//! - only Vireo-named objects are created or removed (`vb-`/`vt-`, `table … vireo`);
//! - a tap exists exactly while its VM's QEMU runs (created before launch, removed when the
//!   machine exits) — [`hv::NetHypervisor`] ties that to the machine's lifecycle.

mod desired;
pub mod hv;
pub mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;
use vireo_api::networks::NetworkType;
use vireo_net::host::{reconcile_links_keeping, reconcile_rules, HostNet};
use vireo_net::nft::NftSnapshot;
use vireo_net::ovs::Ovs;
use vireo_net::{IfName, Ipv4Cidr, Ipv6Cidr};
use vireo_types::Name;

use crate::db::Db;
use crate::error::{EngineError, Result};
use model::{LiveNic, NetworkRecord, NicAttachment, VmNics};

pub fn network_key(name: &str) -> String {
    format!("/networks/{name}")
}
pub fn nics_key(vm: Uuid) -> String {
    format!("/nics/{vm}")
}
/// Set once the default network was created, so deleting it is not undone by a restart.
pub const DEFAULT_CREATED_KEY: &str = "/network-meta/default-created";
/// Name of the network created on first start.
pub const DEFAULT_NETWORK: &str = "default";

/// Settings of the managed-network layer.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// dnsmasq configs and lease files (`<state_dir>/net`).
    pub dir: PathBuf,
    /// Masquerade interface for nat networks that name none; default: the interface of the
    /// default route.
    pub uplink: Option<String>,
    /// Create the `default` nat network on first start.
    pub create_default: bool,
    /// User dnsmasq drops to.
    pub dnsmasq_user: String,
}

/// In-memory state guarded by the manager's mutex.
#[derive(Debug, Default)]
struct Live {
    /// Taps that exist, by tap name.
    taps: BTreeMap<String, LiveEntry>,
    /// Generation of each VM's current QEMU (see [`NetManager::plug_for_launch`]).
    machine_gen: BTreeMap<Uuid, u64>,
    next_gen: u64,
    /// Read-back of Vireo's nft tables after the last apply (drift detection).
    rules: Option<NftSnapshot>,
    /// The ruleset text last applied.
    rules_text: Option<String>,
    /// dnsmasq config text currently running, per network.
    dnsmasq: BTreeMap<String, String>,
    /// Set by [`NetManager::finish_startup`]. Until then running VMs are still being
    /// re-attached one by one, so taps not registered yet are kept, not removed as leftovers
    /// (removing a tap under a running QEMU would cut it off for good).
    started: bool,
}

/// A tap that exists, owned by one QEMU instance of one VM.
#[derive(Debug, Clone)]
struct LiveEntry {
    vm_uuid: Uuid,
    /// The QEMU instance (generation) the tap belongs to: an exit of an older instance never
    /// removes the taps of a newer one.
    generation: u64,
    nic: LiveNic,
}

/// Drives the host network for the engine.
pub struct NetManager {
    host: Arc<dyn HostNet>,
    ovs: Option<Arc<Ovs>>,
    db: Db,
    cfg: NetConfig,
    live: tokio::sync::Mutex<Live>,
    /// Result of the bridge vlan_filtering probe (run once: it creates a throwaway bridge).
    vlan_probe: tokio::sync::OnceCell<std::result::Result<bool, String>>,
}

impl std::fmt::Debug for NetManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetManager")
            .field("cfg", &self.cfg)
            .finish()
    }
}

fn host_err(context: &str, e: impl Into<anyhow::Error>) -> EngineError {
    EngineError::internal(context.to_string(), e)
}

/// Runs blocking host work off the async runtime.
async fn blocking<T: Send + 'static>(
    context: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| host_err(context, e))?
}

impl NetManager {
    pub fn new(
        host: Arc<dyn HostNet>,
        ovs: Option<Arc<Ovs>>,
        store: Arc<dyn vireo_store::Store>,
        cfg: NetConfig,
    ) -> Arc<Self> {
        Arc::new(NetManager {
            host,
            ovs,
            db: Db::new(store),
            cfg,
            live: tokio::sync::Mutex::new(Live::default()),
            vlan_probe: tokio::sync::OnceCell::new(),
        })
    }

    pub fn host(&self) -> &Arc<dyn HostNet> {
        &self.host
    }

    pub fn ovs(&self) -> Option<&Arc<Ovs>> {
        self.ovs.as_ref()
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Whether Linux bridges here accept `vlan_filtering` (probed once, then cached).
    pub async fn bridge_vlan_filtering(&self) -> std::result::Result<bool, String> {
        self.vlan_probe
            .get_or_init(|| async {
                let host = self.host.clone();
                match tokio::task::spawn_blocking(move || host.probe_bridge_vlan_filtering()).await
                {
                    Ok(Ok(b)) => Ok(b),
                    Ok(Err(e)) => Err(crate::error::chain(&e)),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .clone()
    }

    pub async fn networks(&self) -> Result<Vec<(NetworkRecord, u64)>> {
        self.db.list_json("/networks/").await
    }

    pub async fn network(&self, name: &str) -> Result<Option<(NetworkRecord, u64)>> {
        self.db.get_json(&network_key(name)).await
    }

    pub async fn all_nics(&self) -> Result<Vec<VmNics>> {
        Ok(self
            .db
            .list_json::<VmNics>("/nics/")
            .await?
            .into_iter()
            .map(|(v, _)| v)
            .collect())
    }

    pub async fn vm_nics(&self, vm: Uuid) -> Result<Option<VmNics>> {
        Ok(self.db.get_json(&nics_key(vm)).await?.map(|(v, _)| v))
    }

    /// Serialises a change: `f` runs under the manager's lock, then the whole desired state is
    /// applied. If `f` fails nothing is applied.
    pub async fn change<T>(&self, f: impl AsyncFnOnce(&Db) -> Result<T>) -> Result<T> {
        let mut live = self.live.lock().await;
        let out = f(&self.db).await?;
        self.apply_locked(&mut live).await?;
        Ok(out)
    }

    /// Ends the start-up phase (every surviving VM is re-attached) and applies: from now on
    /// Vireo-named links nobody wants are removed.
    pub async fn finish_startup(&self) -> Result<()> {
        let mut live = self.live.lock().await;
        live.started = true;
        self.apply_locked(&mut live).await
    }

    /// Re-applies the whole desired state (daemon start, periodic drift repair).
    pub async fn apply(&self) -> Result<()> {
        let mut live = self.live.lock().await;
        self.apply_locked(&mut live).await
    }

    /// The interface of the first default route (the nat uplink when none is configured).
    fn default_uplink(host: &dyn HostNet) -> Option<String> {
        host.list_routes()
            .ok()?
            .into_iter()
            .filter(|r| r.dst.prefix() == 0)
            .find_map(|r| r.dev.filter(|d| IfName::owned(d).is_err()))
    }

    /// Subnets in use on the host (routes) or by other networks: the input to
    /// `choose_free_subnet` and to overlap checks.
    pub async fn subnets_in_use(&self) -> Result<Vec<(Ipv4Cidr, String)>> {
        let host = self.host.clone();
        let routes = blocking("listing host routes", move || {
            host.list_routes()
                .map_err(|e| host_err("listing host routes", e))
        })
        .await?;
        let mut out: Vec<(Ipv4Cidr, String)> = routes
            .into_iter()
            .filter(|r| r.dst.prefix() > 0 && r.dst.prefix() < 32)
            // A Vireo bridge's own route is covered by its network record.
            .filter(|r| r.dev.as_deref().is_none_or(|d| IfName::owned(d).is_err()))
            .map(|r| {
                let what = format!("host route via {}", r.dev.as_deref().unwrap_or("?"));
                (r.dst, what)
            })
            .collect();
        for (n, _) in self.networks().await? {
            if let Some(s) = n.subnet {
                out.push((s, format!("network {:?}", n.name.as_str())));
            }
        }
        Ok(out)
    }

    /// Turns IPv6 forwarding on for a nat network with IPv6 (before it is stored); the host's
    /// refusal (it would lose routes learned from router advertisements) is `Unavailable`
    /// with the kernel-side reason, so the operator sees what to change.
    pub async fn enable_ipv6_forwarding(&self) -> Result<()> {
        let host = self.host.clone();
        blocking("enabling IPv6 forwarding", move || {
            host.enable_ipv6_forwarding().map_err(|e| match e {
                e @ vireo_net::HostError::Ipv6ForwardingUnsafe { .. } => {
                    EngineError::Unavailable(e.to_string())
                }
                e => host_err("enabling IPv6 forwarding", e),
            })
        })
        .await
    }

    /// IPv6 subnets in use on the host (routes other than default, link-local, multicast and
    /// host routes) or by other networks: the input to IPv6 overlap checks.
    /// `except` names a network whose own subnet does not count (it is being changed).
    pub async fn subnets6_in_use(&self, except: Option<&str>) -> Result<Vec<(Ipv6Cidr, String)>> {
        let host = self.host.clone();
        let routes = blocking("listing host IPv6 routes", move || {
            host.list_routes6()
                .map_err(|e| host_err("listing host IPv6 routes", e))
        })
        .await?;
        let first = |c: &Ipv6Cidr| c.network().segments()[0];
        let mut out: Vec<(Ipv6Cidr, String)> = routes
            .into_iter()
            .filter(|r| r.dst.prefix() > 0 && r.dst.prefix() < 128)
            // fe80::/10 and ff00::/8 exist on every IPv6 link.
            .filter(|r| first(&r.dst) & 0xffc0 != 0xfe80 && first(&r.dst) & 0xff00 != 0xff00)
            .filter(|r| r.dev.as_deref().is_none_or(|d| IfName::owned(d).is_err()))
            .map(|r| {
                let what = format!("host route via {}", r.dev.as_deref().unwrap_or("?"));
                (r.dst, what)
            })
            .collect();
        for (n, _) in self.networks().await? {
            if Some(n.name.as_str()) == except {
                continue;
            }
            if let Some(s) = n.ipv6 {
                out.push((s, format!("network {:?}", n.name.as_str())));
            }
        }
        Ok(out)
    }

    async fn apply_locked(&self, live: &mut Live) -> Result<()> {
        let networks: Vec<NetworkRecord> =
            self.networks().await?.into_iter().map(|(n, _)| n).collect();
        let all = self.all_nics().await?;
        let reserved: Vec<(Name, NicAttachment)> = all
            .iter()
            .flat_map(|v| v.nics.iter().map(|a| (v.vm.clone(), a.clone())))
            .collect();
        let live_nics: Vec<LiveNic> = live.taps.values().map(|e| e.nic.clone()).collect();
        let host = self.host.clone();
        let uplink = self.cfg.uplink.clone();
        let detected = if uplink.is_none() && networks.iter().any(|n| n.kind == NetworkType::Nat) {
            let h = host.clone();
            blocking("listing host routes", move || Ok(Self::default_uplink(&*h))).await?
        } else {
            None
        };
        let desired = model::desired_state(
            &networks,
            &live_nics,
            &reserved,
            &|_| uplink.clone().or_else(|| detected.clone()),
            &self.cfg.dir,
            &self.cfg.dnsmasq_user,
        )
        .map_err(|e| host_err("computing the desired network state", e))?;
        let keep_unregistered_taps = !live.started;
        let ovs_keep: Vec<String> = desired
            .ovs
            .iter()
            .flat_map(|b| {
                std::iter::once(b.bridge.to_string()).chain(b.ports.iter().map(|p| p.0.to_string()))
            })
            .collect();
        // Links, OVS, forwarding: blocking host calls.
        {
            let host = host.clone();
            let d = desired.clone();
            let ovs = self.ovs.clone();
            blocking("applying links", move || {
                let mut keep: Vec<String> = ovs_keep;
                if keep_unregistered_taps {
                    keep.extend(
                        vireo_net::host::owned_links(&*host)
                            .map_err(|e| host_err("listing links", e))?
                            .into_iter()
                            .map(|l| l.name)
                            .filter(|n| n.starts_with(vireo_net::addr::TAP_PREFIX)),
                    );
                }
                let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
                let report = reconcile_links_keeping(&*host, &d.bridges, &d.taps, &keep)
                    .map_err(|e| host_err("reconciling bridges and taps", e))?;
                if !report.created.is_empty() || !report.removed.is_empty() {
                    tracing::info!(created = ?report.created, removed = ?report.removed, "network links reconciled");
                }
                // VLANs on Linux bridges (only planned when the kernel has vlan_filtering).
                for b in &d.vlan_bridges {
                    host.set_vlan_filtering(b)
                        .map_err(|e| host_err(&format!("vlan_filtering on {b}"), e))?;
                }
                for (tap, vlan) in &d.access_vlans {
                    host.set_access_vlan(tap, *vlan).map_err(|e| {
                        host_err(&format!("access VLAN {} on {tap}", vlan.get()), e)
                    })?;
                }
                for (iface, bridge) in &d.enslave {
                    host.set_master(iface, bridge)
                        .and_then(|()| host.set_up(iface, true))
                        .map_err(|e| host_err(&format!("enslaving {iface} to {bridge}"), e))?;
                }
                if let Some(ovs) = &ovs {
                    ovs.reconcile(&*host, &d.ovs)
                        .map_err(|e| host_err("reconciling Open vSwitch bridges", e))?;
                } else if !d.ovs.is_empty() {
                    tracing::warn!("ovs networks exist but Open vSwitch is not running");
                }
                if d.forwarding {
                    host.enable_ipv4_forwarding()
                        .map_err(|e| host_err("enabling IPv4 forwarding", e))?;
                }
                // Checked (and turned on) when a nat network gets IPv6; here a refusal (the
                // host learned routes from router advertisements since) must not take IPv4
                // and every other network down with it.
                if d.forwarding6 {
                    if let Err(e) = host.enable_ipv6_forwarding() {
                        tracing::warn!(error = %crate::error::chain(&e), "IPv6 forwarding is off: nat networks route IPv4 only");
                    }
                }
                Ok(())
            })
            .await?;
        }
        // dnsmasq: write changed configs, (re)start, stop removed ones.
        for (net, text) in &desired.dnsmasq {
            let (conf, _, _) = model::dnsmasq_paths(&self.cfg.dir, net);
            let running = live.dnsmasq.get(net) == Some(text) && {
                let (h, n) = (host.clone(), net.clone());
                blocking("dnsmasq status", move || {
                    Ok(h.dnsmasq_status(&n).is_some_and(|s| s.pid.is_some()))
                })
                .await?
            };
            if running {
                continue;
            }
            if let Some(parent) = conf.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| host_err(&format!("creating {}", parent.display()), e))?;
            }
            std::fs::write(&conf, text)
                .map_err(|e| host_err(&format!("writing {}", conf.display()), e))?;
            let (h, n) = (host.clone(), net.clone());
            blocking("starting dnsmasq", move || {
                h.start_dnsmasq(&n, &conf)
                    .map_err(|e| host_err(&format!("starting dnsmasq for {n}"), e))
            })
            .await?;
            live.dnsmasq.insert(net.clone(), text.clone());
        }
        let gone: Vec<String> = live
            .dnsmasq
            .keys()
            .filter(|n| !desired.dnsmasq.contains_key(*n))
            .cloned()
            .collect();
        for net in gone {
            live.dnsmasq.remove(&net);
            let h = host.clone();
            let n = net.clone();
            blocking("stopping dnsmasq", move || {
                h.stop_dnsmasq(&n);
                Ok(())
            })
            .await?;
            let _ = std::fs::remove_dir_all(self.cfg.dir.join(&net));
        }
        // nftables: one transaction; re-applied when the text changed or the tables drifted.
        let text = vireo_net::nft::render_ruleset(&desired.ruleset)
            .map_err(|e| host_err("rendering the ruleset", e))?;
        let last = if live.rules_text.as_deref() == Some(text.as_str()) {
            live.rules.clone()
        } else {
            None
        };
        let ruleset = desired.ruleset.clone();
        let h = host.clone();
        let report = blocking("applying nftables", move || {
            reconcile_rules(&*h, &ruleset, last.as_ref())
                .map_err(|e| host_err("applying Vireo's nftables ruleset", e))
        })
        .await?;
        live.rules = Some(report.snapshot);
        live.rules_text = Some(text);
        Ok(())
    }

    /// Registers the managed NICs of a VM whose QEMU is about to start (or was adopted) as a
    /// new QEMU generation and applies: the taps exist, are on their bridges and in the
    /// ruleset when this returns. On failure the taps are removed again.
    pub async fn plug_for_launch(
        &self,
        vm_uuid: Uuid,
        vm: &Name,
        nics: &[NicAttachment],
    ) -> Result<u64> {
        let mut live = self.live.lock().await;
        live.next_gen += 1;
        let generation = live.next_gen;
        live.machine_gen.insert(vm_uuid, generation);
        live.taps.retain(|_, e| e.vm_uuid != vm_uuid);
        for a in nics {
            live.taps.insert(
                a.tap.clone(),
                LiveEntry {
                    vm_uuid,
                    generation,
                    nic: LiveNic {
                        attachment: a.clone(),
                        vm: vm.clone(),
                    },
                },
            );
        }
        if let Err(e) = self.apply_locked(&mut live).await {
            live.taps.retain(|_, e| e.vm_uuid != vm_uuid);
            live.machine_gen.remove(&vm_uuid);
            if let Err(undo) = self.apply_locked(&mut live).await {
                tracing::warn!(error = %crate::error::chain(&undo), "undoing a failed plug");
            }
            return Err(e);
        }
        Ok(generation)
    }

    /// Adds one NIC to the running QEMU of `vm_uuid` (hotplug) and applies.
    pub async fn plug_hot(&self, vm_uuid: Uuid, vm: &Name, a: &NicAttachment) -> Result<()> {
        let mut live = self.live.lock().await;
        let Some(&generation) = live.machine_gen.get(&vm_uuid) else {
            return Err(EngineError::Conflict(format!(
                "VM {vm} has no running QEMU to hot-plug into"
            )));
        };
        live.taps.insert(
            a.tap.clone(),
            LiveEntry {
                vm_uuid,
                generation,
                nic: LiveNic {
                    attachment: a.clone(),
                    vm: vm.clone(),
                },
            },
        );
        if let Err(e) = self.apply_locked(&mut live).await {
            live.taps.remove(&a.tap);
            if let Err(undo) = self.apply_locked(&mut live).await {
                tracing::warn!(error = %crate::error::chain(&undo), "undoing a failed hotplug");
            }
            return Err(e);
        }
        Ok(())
    }

    /// The QEMU generation `generation` of `vm_uuid` exited: its taps go.
    pub async fn unplug_machine(&self, vm_uuid: Uuid, generation: u64) -> Result<()> {
        let mut live = self.live.lock().await;
        if live.machine_gen.get(&vm_uuid) == Some(&generation) {
            live.machine_gen.remove(&vm_uuid);
        }
        let before = live.taps.len();
        live.taps
            .retain(|_, e| !(e.vm_uuid == vm_uuid && e.generation == generation));
        if live.taps.len() == before {
            return Ok(());
        }
        self.apply_locked(&mut live).await
    }

    /// One NIC was hot-unplugged: its tap goes.
    pub async fn unplug_nic(&self, vm_uuid: Uuid, tap: &str) -> Result<()> {
        let mut live = self.live.lock().await;
        if live.taps.get(tap).is_some_and(|e| e.vm_uuid == vm_uuid) {
            live.taps.remove(tap);
        }
        self.apply_locked(&mut live).await
    }

    /// Live taps of a VM.
    pub async fn live_taps(&self, vm_uuid: Uuid) -> BTreeSet<String> {
        self.live
            .lock()
            .await
            .taps
            .iter()
            .filter(|(_, e)| e.vm_uuid == vm_uuid)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Replaces a live NIC's settings (link state, firewall) and applies.
    pub async fn refresh_live(&self, vm_uuid: Uuid, a: &NicAttachment) -> Result<()> {
        let mut live = self.live.lock().await;
        if let Some(e) = live.taps.get_mut(&a.tap) {
            if e.vm_uuid == vm_uuid {
                e.nic.attachment = a.clone();
            }
        }
        self.apply_locked(&mut live).await
    }

    /// Every address taken on `network`: gateway, reservations and NIC addresses.
    pub async fn taken_ips(&self, net: &NetworkRecord) -> Result<BTreeSet<Ipv4Addr>> {
        let mut taken: BTreeSet<Ipv4Addr> = net.reservations.iter().map(|r| r.ip).collect();
        taken.extend(net.gateway);
        for v in self.all_nics().await? {
            taken.extend(
                v.nics
                    .iter()
                    .filter(|a| a.network == net.name)
                    .filter_map(|a| a.ip),
            );
        }
        Ok(taken)
    }
}
