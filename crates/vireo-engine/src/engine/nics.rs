//! VM NICs on managed networks in the engine facade: `/v1/vms/{name}/nics` (hot-plugged on
//! running VMs, on Vireo's hotplug ports recorded in the VM's placement), and the NICs
//! `vm create` puts on managed networks.
//!
//! Invariants: a NIC is planned completely (network, MAC unique on the host, VLAN, MTU,
//! address, firewall) before anything is stored; its attachment record (reservation, DNS
//! name) exists before the guest can ask for a lease; a hot-add that QEMU refuses removes the
//! tap and the records again.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;
use vireo_api::networks::{AddNicRequest, Firewall, NetworkType, NicDetail, UpdateNicRequest};
use vireo_types::{MacAddr, Name, NicBackend, NicSpec, VmState};

use super::networks::{model_err, UNPLUG_WAIT};
use super::*;
use crate::error::chain;
use crate::net::model::{self, NicAttachment, VmNics};
use crate::net::{nics_key, NetManager, DEFAULT_NETWORK};

impl Engine {
    /// Every MAC on this host: VM NICs (any network) and network reservations.
    async fn macs_in_use(&self) -> Result<BTreeSet<MacAddr>> {
        let mut macs: BTreeSet<MacAddr> = self
            .inner
            .db
            .list_vms(None)
            .await?
            .into_iter()
            .flat_map(|(r, _)| r.spec.nics.into_iter().map(|n| n.mac))
            .collect();
        if let Some(net) = self.inner.net.get() {
            for v in net.all_nics().await? {
                macs.extend(v.nics.iter().map(|a| a.mac));
            }
            for (n, _) in net.networks().await? {
                macs.extend(n.reservations.iter().map(|r| r.mac));
            }
        }
        Ok(macs)
    }

    /// Plans a NIC on managed network `req.network`: checks the network, MAC (unique on the
    /// host), VLAN, MTU, address (inside the subnet, free) and firewall; allocates what was
    /// not given. `planned` are NICs planned in the same request.
    pub(crate) async fn plan_nic(
        &self,
        nic: Name,
        req: &AddNicRequest,
        planned: &[NicAttachment],
    ) -> Result<NicAttachment> {
        let net = self.net()?;
        let (n, _) = net.network(req.network.as_str()).await?.ok_or_else(|| {
            EngineError::invalid(
                "network",
                format!("network {:?} not found", req.network.as_str()),
            )
        })?;
        let mut macs = self.macs_in_use().await?;
        macs.extend(planned.iter().map(|a| a.mac));
        let mac = match req.mac {
            Some(m) => {
                if macs.contains(&m) {
                    return Err(EngineError::invalid(
                        "mac",
                        format!("MAC {m} is already in use on this host"),
                    ));
                }
                m
            }
            None => loop {
                let b = *Uuid::new_v4().as_bytes();
                let m = MacAddr::generated([b[0], b[1], b[2]]);
                if !macs.contains(&m) {
                    break m;
                }
            },
        };
        if let Some(v) = req.vlan {
            vireo_net::VlanId::new(v).map_err(|e| EngineError::invalid("vlan", e.to_string()))?;
            if n.kind != NetworkType::Ovs && net.bridge_vlan_filtering().await != Ok(true) {
                return Err(EngineError::invalid(
                    "vlan",
                    format!(
                        "VLAN tags on network {:?} ({}) need bridge vlan_filtering, which this host's kernel lacks (see GET /v1/host); use an ovs network",
                        n.name.as_str(),
                        n.kind.as_str()
                    ),
                ));
            }
        }
        if let Some(m) = req.mtu {
            vireo_net::Mtu::new(m).map_err(|e| EngineError::invalid("mtu", e.to_string()))?;
        }
        let firewall = req.firewall.clone().unwrap_or_default();
        model::firewall_rules(&firewall, "firewall").map_err(model_err)?;
        if n.kind == NetworkType::Ovs && firewall != Firewall::default() {
            return Err(EngineError::invalid(
                "firewall",
                "ovs networks carry no Vireo firewall",
            ));
        }
        let ip = match (n.subnet, n.gateway, req.ip) {
            (Some(s), Some(g), Some(ip)) => {
                let mut taken = net.taken_ips(&n).await?;
                taken.extend(
                    planned
                        .iter()
                        .filter(|a| a.network == n.name)
                        .filter_map(|a| a.ip),
                );
                if !s.contains(ip) || ip == s.network() || ip == s.broadcast() || ip == g {
                    return Err(EngineError::invalid(
                        "ip",
                        format!("{ip} is not a free host address of {s}"),
                    ));
                }
                if taken.contains(&ip) {
                    return Err(EngineError::invalid(
                        "ip",
                        format!("{ip} is already in use on network {:?}", n.name.as_str()),
                    ));
                }
                Some(ip)
            }
            (Some(s), Some(g), None) if n.dhcp => {
                let mut taken = net.taken_ips(&n).await?;
                taken.extend(
                    planned
                        .iter()
                        .filter(|a| a.network == n.name)
                        .filter_map(|a| a.ip),
                );
                Some(model::allocate_ip(s, g, &taken).ok_or_else(|| {
                    EngineError::Conflict(format!(
                        "network {:?} has no free address",
                        n.name.as_str()
                    ))
                })?)
            }
            (_, _, Some(_)) => {
                return Err(EngineError::invalid(
                    "ip",
                    format!("network {:?} has no subnet Vireo manages", n.name.as_str()),
                ))
            }
            _ => None,
        };
        Ok(NicAttachment {
            nic,
            network: n.name.clone(),
            tap: model::tap_name(mac),
            mac,
            vlan: req.vlan,
            mtu: req.mtu,
            link_up: req.link_up.unwrap_or(true),
            ip,
            firewall,
        })
    }

    /// The network a VM create without `networks` gets: `default` when managed networks are
    /// on and it exists, else QEMU's user network.
    pub(crate) async fn default_vm_network(&self) -> Result<Option<Name>> {
        let Some(net) = self.inner.net.get() else {
            return Ok(None);
        };
        Ok(net.network(DEFAULT_NETWORK).await?.map(|(n, _)| n.name))
    }

    /// Stores the managed NICs of a VM being created.
    pub(crate) async fn save_vm_nics(
        &self,
        vm_uuid: Uuid,
        project: &str,
        vm: &Name,
        nics: Vec<NicAttachment>,
    ) -> Result<()> {
        if nics.is_empty() {
            return Ok(());
        }
        let net = self.net()?;
        let rec = VmNics {
            vm_uuid,
            project: Name::new(project).map_err(|e| EngineError::internal("project name", e))?,
            vm: vm.clone(),
            nics,
        };
        let key = nics_key(vm_uuid);
        net.change(async |db: &crate::db::Db| db.put_json(&key, &rec).await.map(drop))
            .await
    }

    /// Drops a deleted VM's NIC records (their reservations and DNS names go with them).
    pub(crate) async fn forget_vm_nics(&self, vm_uuid: Uuid) {
        let Some(net) = self.inner.net.get() else {
            return;
        };
        let key = nics_key(vm_uuid);
        if let Err(e) = net
            .change(async |db: &crate::db::Db| db.delete_key(&key).await)
            .await
        {
            tracing::warn!(vm = %vm_uuid, error = %chain(&e), "removing NIC records failed");
        }
    }

    /// IPv6 subnet per managed network name (for the NICs' IPv6 addresses).
    async fn ipv6_subnets(&self) -> Result<BTreeMap<String, vireo_net::Ipv6Cidr>> {
        let Some(net) = self.inner.net.get() else {
            return Ok(BTreeMap::new());
        };
        Ok(net
            .networks()
            .await?
            .into_iter()
            .filter_map(|(n, _)| Some((n.name.to_string(), n.ipv6?)))
            .collect())
    }

    fn detail(
        &self,
        spec_nic: &NicSpec,
        network: &str,
        a: Option<&NicAttachment>,
        live: &BTreeSet<String>,
        subnets6: &BTreeMap<String, vireo_net::Ipv6Cidr>,
    ) -> NicDetail {
        NicDetail {
            name: spec_nic.name.clone(),
            mac: spec_nic.mac,
            network: network.to_string(),
            tap: a.map(|a| a.tap.clone()).filter(|t| live.contains(t)),
            vlan: a.and_then(|a| a.vlan),
            mtu: a.and_then(|a| a.mtu),
            link_up: a.is_none_or(|a| a.link_up),
            ip: a.and_then(|a| a.ip),
            ipv6: a
                .and_then(|a| model::nic_ipv6(*subnets6.get(network)?, a.mac))
                .map(|(_, global)| global),
            firewall: a.map(|a| a.firewall.clone()).unwrap_or_default(),
        }
    }

    pub async fn list_nics(&self, project: Option<&Name>, vm: &str) -> Result<Vec<NicDetail>> {
        let p = self.project(project).await?;
        let rec = self.handle(&p, vm)?.view().record;
        let (attachments, live) = match self.inner.net.get() {
            Some(net) => (
                net.vm_nics(rec.uuid)
                    .await?
                    .map(|v| v.nics)
                    .unwrap_or_default(),
                net.live_taps(rec.uuid).await,
            ),
            None => (vec![], BTreeSet::new()),
        };
        let subnets6 = self.ipv6_subnets().await?;
        Ok(rec
            .spec
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let network = rec.networks.get(i).map(String::as_str).unwrap_or("");
                let a = attachments.iter().find(|a| a.nic == n.name);
                self.detail(n, network, a, &live, &subnets6)
            })
            .collect())
    }

    /// Adds a NIC on a hotplug port (recorded in the VM's placement, so it stays removable
    /// across restarts); on a running VM it is hot-plugged: tap first, then the device.
    pub async fn add_nic(
        &self,
        project: Option<&Name>,
        vm: &str,
        req: AddNicRequest,
        requestor: &str,
    ) -> Result<NicDetail> {
        let p = self.project(project).await?;
        let h = self.handle(&p, vm)?;
        let net = self.net()?.clone();
        let rec = h.view().record;
        if !matches!(
            rec.state,
            VmState::Stopped | VmState::Crashed | VmState::Running | VmState::Paused
        ) {
            return Err(EngineError::Conflict(format!(
                "VM {vm} is {}; add NICs when it is stopped or running",
                rec.state
            )));
        }
        let name = match req.name.clone() {
            Some(n) => {
                if rec.spec.nics.iter().any(|x| x.name == n) {
                    return Err(EngineError::Conflict(format!(
                        "VM {vm} already has a NIC {n}"
                    )));
                }
                n
            }
            None => (0..)
                .map(|i| format!("eth{i}"))
                .find(|c| !rec.spec.nics.iter().any(|x| x.name.as_str() == c))
                .and_then(|c| Name::new(c).ok())
                .ok_or_else(|| {
                    EngineError::internal("naming a NIC", anyhow::anyhow!("no free ethN"))
                })?,
        };
        if rec.spec.nics.len() >= vireo_types::vm::limits::MAX_NICS {
            return Err(EngineError::invalid(
                "network",
                format!(
                    "a VM has at most {} NICs",
                    vireo_types::vm::limits::MAX_NICS
                ),
            ));
        }
        let a = self.plan_nic(name.clone(), &req, &[]).await?;
        let spec_nic = NicSpec {
            name: name.clone(),
            mac: a.mac,
            backend: NicBackend::Tap {
                ifname: a.tap.clone(),
            },
        };
        // 1. The attachment (reservation, DNS name): dnsmasq knows the MAC before the guest
        //    asks.
        let key = nics_key(rec.uuid);
        let (a2, project_name, vm_name, uuid) =
            (a.clone(), rec.project.clone(), rec.name.clone(), rec.uuid);
        net.change(async |db: &crate::db::Db| {
            let mut v = db
                .get_json::<VmNics>(&key)
                .await?
                .map(|(v, _)| v)
                .unwrap_or(VmNics {
                    vm_uuid: uuid,
                    project: project_name,
                    vm: vm_name,
                    nics: vec![],
                });
            v.nics.push(a2);
            db.put_json(&key, &v).await.map(drop)
        })
        .await?;
        // 2. Port, hotplug (running VMs) and record, with the VM to ourselves.
        let (net2, a2, sn, netname) = (
            net.clone(),
            a.clone(),
            spec_nic.clone(),
            req.network.to_string(),
        );
        let res = h
            .exclusive(Box::new(move |mut rec, machine| {
                Box::pin(async move {
                    let port = rec.placement.free_port().ok_or_else(|| {
                        EngineError::Conflict(format!(
                            "VM {} has no free hotplug port left for another NIC",
                            rec.name
                        ))
                    })?;
                    rec.spec.nics.push(sn.clone());
                    rec.networks.resize(rec.spec.nics.len() - 1, String::new());
                    rec.networks.push(netname);
                    rec.placement.nics.insert(sn.name.clone(), port);
                    rec.spec
                        .validate()
                        .map_err(|e| EngineError::invalid("network", e.to_string()))?;
                    if let Some(m) = machine.filter(|_| rec.state.has_process()) {
                        hotplug(&net2, &m, &rec.name, rec.uuid, &a2, &sn, port).await?;
                    }
                    Ok(Some(rec))
                })
            }))
            .await;
        if let Err(e) = res {
            self.drop_attachment(rec.uuid, &name).await;
            return Err(e);
        }
        self.inner.events.emit(
            "vm.nic_added",
            Some(&p),
            &rec.target(),
            requestor,
            serde_json::json!({"nic": name, "network": req.network, "mac": a.mac}),
        );
        let live = net.live_taps(rec.uuid).await;
        let subnets6 = self.ipv6_subnets().await?;
        Ok(self.detail(&spec_nic, req.network.as_str(), Some(&a), &live, &subnets6))
    }

    async fn drop_attachment(&self, uuid: Uuid, nic: &Name) {
        let Some(net) = self.inner.net.get() else {
            return;
        };
        let key = nics_key(uuid);
        let res = net
            .change(async |db: &crate::db::Db| {
                if let Some((mut v, _)) = db.get_json::<VmNics>(&key).await? {
                    v.nics.retain(|a| &a.nic != nic);
                    if v.nics.is_empty() {
                        db.delete_key(&key).await?;
                    } else {
                        db.put_json(&key, &v).await?;
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %chain(&e), "removing a NIC record failed");
        }
    }

    /// Removes a NIC; on a running VM it is hot-unplugged first (and its tap removed).
    pub async fn remove_nic(
        &self,
        project: Option<&Name>,
        vm: &str,
        nic: &str,
        requestor: &str,
    ) -> Result<()> {
        let p = self.project(project).await?;
        let h = self.handle(&p, vm)?;
        let rec = h.view().record;
        let Some(spec_nic) = rec
            .spec
            .nics
            .iter()
            .find(|n| n.name.as_str() == nic)
            .cloned()
        else {
            return Err(not_found("NIC", nic));
        };
        if !matches!(
            rec.state,
            VmState::Stopped | VmState::Crashed | VmState::Running | VmState::Paused
        ) {
            return Err(EngineError::Conflict(format!(
                "VM {vm} is {}; remove NICs when it is stopped or running",
                rec.state
            )));
        }
        let net = self.inner.net.get().cloned();
        let sn = spec_nic.clone();
        h.exclusive(Box::new(move |mut rec, machine| {
            Box::pin(async move {
                if let Some(m) = machine.filter(|_| rec.state.has_process()) {
                    if rec.placement.nic_port(&sn.name).is_none() {
                        return Err(EngineError::Conflict(format!(
                            "NIC {} was plugged at boot, not on a hotplug port; stop VM {} to remove it",
                            sn.name, rec.name
                        )));
                    }
                    m.unplug_nic(&sn.name, UNPLUG_WAIT).await.map_err(|e| {
                        EngineError::Conflict(format!("hot-unplugging NIC {}: {e}", sn.name))
                    })?;
                    if let (Some(net), NicBackend::Tap { ifname }) = (&net, &sn.backend) {
                        net.unplug_nic(rec.uuid, ifname).await?;
                    }
                }
                if let Some(i) = rec.spec.nics.iter().position(|x| x.name == sn.name) {
                    rec.spec.nics.remove(i);
                    if i < rec.networks.len() {
                        rec.networks.remove(i);
                    }
                }
                rec.placement.nics.remove(&sn.name);
                Ok(Some(rec))
            })
        }))
        .await?;
        self.drop_attachment(rec.uuid, &spec_nic.name).await;
        self.inner.events.emit(
            "vm.nic_removed",
            Some(&p),
            &rec.target(),
            requestor,
            serde_json::json!({"nic": nic}),
        );
        Ok(())
    }

    /// Changes a NIC's link state or firewall (live on a running VM).
    pub async fn update_nic(
        &self,
        project: Option<&Name>,
        vm: &str,
        nic: &str,
        req: UpdateNicRequest,
    ) -> Result<NicDetail> {
        let p = self.project(project).await?;
        let h = self.handle(&p, vm)?;
        let net = self.net()?.clone();
        let view = h.view();
        let rec = view.record.clone();
        let Some(idx) = rec.spec.nics.iter().position(|n| n.name.as_str() == nic) else {
            return Err(not_found("NIC", nic));
        };
        let mut vn = net.vm_nics(rec.uuid).await?.ok_or_else(|| {
            EngineError::invalid("nic", format!("NIC {nic} is not on a managed network"))
        })?;
        let Some(a) = vn.nics.iter_mut().find(|a| a.nic.as_str() == nic) else {
            return Err(EngineError::invalid(
                "nic",
                format!("NIC {nic} is not on a managed network"),
            ));
        };
        if let Some(fw) = req.firewall {
            model::firewall_rules(&fw, "firewall").map_err(model_err)?;
            a.firewall = fw;
        }
        if let Some(up) = req.link_up {
            a.link_up = up;
        }
        let a = a.clone();
        if let (Some(m), Some(up)) = (&view.machine, req.link_up) {
            m.set_nic_link(&a.nic, up)
                .await
                .map_err(|e| EngineError::Unavailable(format!("setting link of NIC {nic}: {e}")))?;
        }
        let key = nics_key(rec.uuid);
        net.change(async |db: &crate::db::Db| db.put_json(&key, &vn).await.map(drop))
            .await?;
        net.refresh_live(rec.uuid, &a).await?;
        let live = net.live_taps(rec.uuid).await;
        let network = rec.networks.get(idx).cloned().unwrap_or_default();
        let subnets6 = self.ipv6_subnets().await?;
        Ok(self.detail(&rec.spec.nics[idx], &network, Some(&a), &live, &subnets6))
    }
}

impl Engine {
    /// A NIC on managed network `network` for a VM being created (`vm create --network`).
    pub(crate) async fn plan_vm_create_nic(
        &self,
        nic: Name,
        network: &Name,
        planned: &[NicAttachment],
    ) -> Result<(NicSpec, NicAttachment)> {
        if self.inner.net.get().is_none() {
            return Err(EngineError::invalid(
                "networks",
                format!(
                    "network {:?} not found (managed networks are disabled; available: {})",
                    network.as_str(),
                    vireo_api::vms::USER_NETWORK
                ),
            ));
        }
        let req = AddNicRequest::on(network.clone());
        let a = self
            .plan_nic(nic, &req, planned)
            .await
            .map_err(|e| match e {
                EngineError::Invalid {
                    field: Some(f),
                    message,
                } if f == "network" => EngineError::invalid("networks", message),
                other => other,
            })?;
        Ok((
            NicSpec {
                name: a.nic.clone(),
                mac: a.mac,
                backend: NicBackend::Tap {
                    ifname: a.tap.clone(),
                },
            },
            a,
        ))
    }
}

/// Tap (registered with the running QEMU's generation), then the device on `port`; the tap
/// goes again if QEMU refuses the device.
async fn hotplug(
    net: &Arc<NetManager>,
    m: &Arc<dyn crate::hv::Machine>,
    vm: &Name,
    uuid: Uuid,
    a: &NicAttachment,
    spec_nic: &NicSpec,
    port: vireo_qemu::hotplug::HotplugPort,
) -> Result<()> {
    net.plug_hot(uuid, vm, a).await?;
    let hv_err =
        |e: crate::hv::HvError| EngineError::Conflict(format!("hot-plugging NIC {}: {e}", a.nic));
    let res = async {
        m.hotplug_nic(spec_nic, port).await.map_err(hv_err)?;
        if !a.link_up {
            m.set_nic_link(&a.nic, false).await.map_err(hv_err)?;
        }
        Ok(())
    }
    .await;
    if res.is_err() {
        let _ = net.unplug_nic(uuid, &a.tap).await;
    }
    res
}
