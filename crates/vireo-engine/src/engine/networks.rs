//! Managed networks and VM NICs in the engine facade: `/v1/networks` CRUD and leases,
//! `/v1/vms/{name}/nics` (hot-plugged on running VMs), and the NICs `vm create` puts on
//! managed networks.
//!
//! Invariants: every request is validated completely (against the record alone, other
//! networks, the host's routes and every NIC on the host) before anything is stored or the
//! host touched, so a rejected request changes nothing; a change that fails to apply on the
//! host is undone (record restored, state re-applied) before the error is returned.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;
use vireo_api::networks::{
    AddNicRequest, CreateNetworkRequest, Firewall, Lease, NetworkInfo, NetworkType, NicDetail,
    UpdateNetworkRequest, UpdateNicRequest,
};
use vireo_net::Ipv4Cidr;
use vireo_types::{MacAddr, Name, NicBackend, NicSpec, VmState};

use super::*;
use crate::error::chain;
use crate::net::model::{self, NetworkRecord, NicAttachment, VmNics};
use crate::net::{network_key, nics_key, NetManager, DEFAULT_CREATED_KEY, DEFAULT_NETWORK};

fn model_err(e: model::ModelError) -> EngineError {
    EngineError::invalid(e.field, e.message)
}

/// How long the guest may take to release a hot-unplugged NIC.
const UNPLUG_WAIT: Duration = Duration::from_secs(10);

impl Engine {
    /// Enables managed networks (the daemon calls this once, before serving).
    pub fn attach_networks(&self, net: Arc<NetManager>) {
        if self.inner.net.set(net).is_err() {
            tracing::warn!("managed networks were attached twice; keeping the first");
        }
    }

    pub fn network_manager(&self) -> Option<&Arc<NetManager>> {
        self.inner.net.get()
    }

    fn net(&self) -> Result<&Arc<NetManager>> {
        self.inner.net.get().ok_or_else(|| {
            EngineError::Unavailable(
                "managed networks are disabled in this daemon's configuration ([network] managed = false)".into(),
            )
        })
    }

    /// First-start and restart work: creates the default network once (if configured),
    /// drops NIC records of VMs that no longer exist, and re-applies the whole network state
    /// (bridges, taps of running VMs, dnsmasq, rules; Vireo-named leftovers removed).
    pub async fn start_networks(&self) -> Result<()> {
        let net = self.net()?.clone();
        let vms: BTreeSet<Uuid> = self
            .inner
            .db
            .list_vms(None)
            .await?
            .into_iter()
            .map(|(r, _)| r.uuid)
            .collect();
        for v in net.all_nics().await? {
            if !vms.contains(&v.vm_uuid) {
                tracing::info!(vm = %v.vm, "dropping NIC records of a deleted VM");
                self.inner.db.delete_key(&nics_key(v.vm_uuid)).await?;
            }
        }
        if net.config().create_default
            && self
                .inner
                .db
                .get_json::<bool>(DEFAULT_CREATED_KEY)
                .await?
                .is_none()
        {
            let req = CreateNetworkRequest {
                name: Name::new(DEFAULT_NETWORK)
                    .map_err(|e| EngineError::internal("default network name", e))?,
                kind: NetworkType::Nat,
                subnet: None,
                gateway: None,
                dhcp: None,
                uplink: None,
                mtu: None,
                domain: None,
                reservations: vec![],
                firewall: Firewall::default(),
                port_forwards: vec![],
                description: "Created by Vireo on first start".into(),
            };
            match self.create_network_inner(req, "system", true).await {
                Ok(info) => tracing::info!(subnet = ?info.subnet, "created the default network"),
                Err(EngineError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
            self.inner.db.put_json(DEFAULT_CREATED_KEY, &true).await?;
        }
        net.finish_startup().await
    }

    async fn network_info(&self, n: NetworkRecord, revision: u64) -> Result<NetworkInfo> {
        let used_by = self
            .inner
            .db
            .list_vms(None)
            .await?
            .into_iter()
            .filter(|(r, _)| r.networks.iter().any(|x| x == n.name.as_str()))
            .map(|(r, _)| format!("{}/{}", r.project, r.name))
            .collect();
        Ok(NetworkInfo {
            name: n.name,
            kind: n.kind,
            bridge: n.bridge,
            subnet: n.subnet.map(|s| s.to_string()),
            gateway: n.gateway,
            dhcp: n.dhcp,
            uplink: n.uplink,
            mtu: n.mtu,
            domain: n.domain,
            reservations: n.reservations,
            firewall: n.firewall,
            port_forwards: n.port_forwards,
            description: n.description,
            default: n.default,
            created_at: n.created_at,
            used_by,
            revision,
        })
    }

    pub async fn list_networks(&self) -> Result<Vec<NetworkInfo>> {
        let net = self.net()?;
        let mut out = vec![];
        for (n, rev) in net.networks().await? {
            out.push(self.network_info(n, rev).await?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn get_network(&self, name: &str) -> Result<NetworkInfo> {
        let (n, rev) = self
            .net()?
            .network(name)
            .await?
            .ok_or_else(|| not_found("network", name))?;
        self.network_info(n, rev).await
    }

    pub async fn create_network(
        &self,
        req: CreateNetworkRequest,
        requestor: &str,
    ) -> Result<NetworkInfo> {
        self.create_network_inner(req, requestor, false).await
    }

    async fn create_network_inner(
        &self,
        req: CreateNetworkRequest,
        requestor: &str,
        default: bool,
    ) -> Result<NetworkInfo> {
        let net = self.net()?.clone();
        let in_use = net.subnets_in_use().await?;
        let l3 = matches!(req.kind, NetworkType::Nat | NetworkType::Isolated);
        let subnet = match (&req.subnet, l3) {
            (Some(s), true) => {
                let c: Ipv4Cidr = s.parse().map_err(|e: vireo_net::AddrError| {
                    EngineError::invalid("subnet", e.to_string())
                })?;
                if let Some((_, what)) = in_use.iter().find(|(u, _)| u.overlaps(&c)) {
                    return Err(EngineError::invalid(
                        "subnet",
                        format!("subnet {c} overlaps {what}"),
                    ));
                }
                Some(c)
            }
            (None, true) => {
                let used: Vec<Ipv4Cidr> = in_use.iter().map(|(c, _)| *c).collect();
                Some(vireo_net::subnet::choose_free_subnet(&used).ok_or_else(|| {
                    EngineError::Unavailable("no free private /24 subnet is left".into())
                })?)
            }
            (Some(_), false) => {
                return Err(EngineError::invalid(
                    "subnet",
                    format!(
                        "{} networks take their addresses from outside",
                        req.kind.as_str()
                    ),
                ))
            }
            (None, false) => None,
        };
        let gateway = match (req.gateway, subnet) {
            (Some(g), _) => Some(g),
            (None, Some(s)) => s.nth(1),
            (None, None) => None,
        };
        if req.kind == NetworkType::Ovs && net.ovs().is_none() {
            return Err(EngineError::Unavailable(
                "Open vSwitch is not running on this host (see GET /v1/host, network.detail)"
                    .into(),
            ));
        }
        let record = NetworkRecord {
            uuid: Uuid::now_v7(),
            bridge: model::bridge_name(&req.name),
            name: req.name.clone(),
            kind: req.kind,
            subnet,
            gateway,
            dhcp: req.dhcp.unwrap_or(l3),
            uplink: req.uplink,
            mtu: req.mtu,
            domain: req.domain.unwrap_or_else(|| "vireo".into()),
            reservations: req.reservations,
            firewall: req.firewall,
            port_forwards: req.port_forwards,
            description: req.description,
            default,
            created_at: Utc::now(),
        };
        model::validate_network(&record).map_err(model_err)?;
        let existing = net.networks().await?;
        if let Some((other, _)) = existing.iter().find(|(o, _)| o.bridge == record.bridge) {
            return Err(EngineError::Conflict(format!(
                "network {:?} already uses bridge {}",
                other.name.as_str(),
                record.bridge
            )));
        }
        self.check_reservation_macs(&record, None).await?;
        if let Some(u) = &record.uplink {
            if record.kind == NetworkType::Bridged || record.kind == NetworkType::Ovs {
                let host = net.host().clone();
                let links = tokio::task::spawn_blocking(move || host.list_links())
                    .await
                    .map_err(|e| EngineError::internal("listing links", e))?
                    .map_err(|e| EngineError::internal("listing links", e))?;
                if !links.iter().any(|l| &l.name == u) {
                    return Err(EngineError::invalid(
                        "uplink",
                        format!("host interface {u:?} does not exist"),
                    ));
                }
                if let Some((other, _)) = existing
                    .iter()
                    .find(|(o, _)| o.uplink.as_deref() == Some(u) && o.kind != NetworkType::Nat)
                {
                    return Err(EngineError::Conflict(format!(
                        "interface {u:?} is already the uplink of network {:?}",
                        other.name.as_str()
                    )));
                }
            }
        }
        let key = network_key(record.name.as_str());
        let name = record.name.to_string();
        let rec = record.clone();
        let res = net
            .change(async |db: &crate::db::Db| {
                db.create_json(&key, &rec, &format!("network {name:?}"))
                    .await
            })
            .await;
        let rev = match res {
            Ok(rev) => rev,
            Err(e @ EngineError::Conflict(_)) => return Err(e),
            Err(e) => {
                // Stored but not applied: take it back so the host and the store agree.
                let k = key.clone();
                if let Err(undo) = net
                    .change(async |db: &crate::db::Db| db.delete_key(&k).await)
                    .await
                {
                    tracing::warn!(error = %chain(&undo), "undoing a failed network create");
                }
                return Err(e);
            }
        };
        self.inner.events.emit(
            "network.created",
            None,
            &format!("network/{name}"),
            requestor,
            serde_json::json!({"type": record.kind.as_str()}),
        );
        self.network_info(record, rev).await
    }

    /// Reservation MACs must not belong to another network's reservations or to NICs other
    /// than the ones of that network.
    async fn check_reservation_macs(
        &self,
        record: &NetworkRecord,
        ignore_network: Option<&str>,
    ) -> Result<()> {
        let net = self.net()?;
        for (other, _) in net.networks().await? {
            if Some(other.name.as_str()) == ignore_network {
                continue;
            }
            if let Some(r) = record
                .reservations
                .iter()
                .find(|r| other.reservations.iter().any(|o| o.mac == r.mac))
            {
                return Err(EngineError::invalid(
                    "reservations",
                    format!(
                        "MAC {} is already reserved on network {:?}",
                        r.mac,
                        other.name.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub async fn update_network(
        &self,
        name: &str,
        req: UpdateNetworkRequest,
        if_match: Option<u64>,
        requestor: &str,
    ) -> Result<NetworkInfo> {
        let net = self.net()?.clone();
        let (mut record, rev) = net
            .network(name)
            .await?
            .ok_or_else(|| not_found("network", name))?;
        if let Some(expected) = if_match {
            if expected != rev {
                return Err(EngineError::Precondition {
                    expected,
                    actual: rev,
                });
            }
        }
        let before = record.clone();
        if let Some(r) = req.reservations {
            record.reservations = r;
        }
        if let Some(f) = req.firewall {
            record.firewall = f;
        }
        if let Some(p) = req.port_forwards {
            record.port_forwards = p;
        }
        if let Some(d) = req.description {
            record.description = d;
        }
        model::validate_network(&record).map_err(model_err)?;
        self.check_reservation_macs(&record, Some(name)).await?;
        let key = network_key(name);
        let rec = record.clone();
        let res = net
            .change(async |db: &crate::db::Db| {
                let (_, now) = db
                    .get_json::<NetworkRecord>(&key)
                    .await?
                    .ok_or_else(|| not_found("network", name))?;
                if now != rev {
                    return Err(EngineError::Precondition {
                        expected: rev,
                        actual: now,
                    });
                }
                db.put_json(&key, &rec).await
            })
            .await;
        let new_rev = match res {
            Ok(r) => r,
            Err(e @ (EngineError::Precondition { .. } | EngineError::NotFound { .. })) => {
                return Err(e)
            }
            Err(e) => {
                let k = key.clone();
                if let Err(undo) = net
                    .change(async |db: &crate::db::Db| db.put_json(&k, &before).await)
                    .await
                {
                    tracing::warn!(error = %chain(&undo), "undoing a failed network update");
                }
                return Err(e);
            }
        };
        self.inner.events.emit(
            "network.updated",
            None,
            &format!("network/{name}"),
            requestor,
            serde_json::json!({}),
        );
        self.network_info(record, new_rev).await
    }

    pub async fn delete_network(&self, name: &str, requestor: &str) -> Result<()> {
        let net = self.net()?.clone();
        net.network(name)
            .await?
            .ok_or_else(|| not_found("network", name))?;
        let users: Vec<String> = self
            .inner
            .db
            .list_vms(None)
            .await?
            .into_iter()
            .filter(|(r, _)| r.networks.iter().any(|x| x == name))
            .map(|(r, _)| format!("{}/{}", r.project, r.name))
            .collect();
        if !users.is_empty() {
            return Err(EngineError::Conflict(format!(
                "network {name:?} is in use by {}",
                users.join(", ")
            )));
        }
        let key = network_key(name);
        net.change(async |db: &crate::db::Db| db.delete_key(&key).await)
            .await?;
        self.inner.events.emit(
            "network.deleted",
            None,
            &format!("network/{name}"),
            requestor,
            serde_json::json!({}),
        );
        Ok(())
    }

    /// dnsmasq's leases plus reservations (VM NICs and network reservations) not leased yet.
    pub async fn network_leases(&self, name: &str) -> Result<Vec<Lease>> {
        let net = self.net()?;
        let (n, _) = net
            .network(name)
            .await?
            .ok_or_else(|| not_found("network", name))?;
        let (_, lease_file, _) = model::dnsmasq_paths(&net.config().dir, name);
        let text = match tokio::fs::read(&lease_file).await {
            // Bounded: a lease file larger than 16 MiB is not one dnsmasq wrote for us.
            Ok(b) => String::from_utf8_lossy(&b[..b.len().min(16 << 20)]).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(EngineError::internal(
                    format!("reading {}", lease_file.display()),
                    e,
                ))
            }
        };
        let mut out: Vec<Lease> = vireo_net::dnsmasq::parse_leases(&text)
            .into_iter()
            .map(|l| Lease {
                mac: MacAddr(l.mac.octets()),
                ip: l.ip,
                hostname: l.hostname,
                expires: l.expires,
                kind: "dynamic".into(),
            })
            .collect();
        let mut reserved: Vec<(MacAddr, Ipv4Addr, Option<String>)> = n
            .reservations
            .iter()
            .map(|r| (r.mac, r.ip, r.hostname.clone()))
            .collect();
        for v in net.all_nics().await? {
            for a in v.nics.iter().filter(|a| a.network == n.name) {
                if let Some(ip) = a.ip {
                    reserved.push((a.mac, ip, Some(v.vm.to_string())));
                }
            }
        }
        for (mac, ip, hostname) in reserved {
            match out.iter_mut().find(|l| l.mac == mac) {
                Some(l) => l.kind = "reserved".into(),
                None => out.push(Lease {
                    mac,
                    ip,
                    hostname,
                    expires: 0,
                    kind: "reserved".into(),
                }),
            }
        }
        out.sort_by_key(|l| u32::from(l.ip));
        Ok(out)
    }

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

    fn detail(
        &self,
        spec_nic: &NicSpec,
        network: &str,
        a: Option<&NicAttachment>,
        live: &BTreeSet<String>,
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
        Ok(rec
            .spec
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let network = rec.networks.get(i).map(String::as_str).unwrap_or("");
                let a = attachments.iter().find(|a| a.nic == n.name);
                self.detail(n, network, a, &live)
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
        Ok(self.detail(&spec_nic, req.network.as_str(), Some(&a), &live))
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
        Ok(self.detail(&rec.spec.nics[idx], &network, Some(&a), &live))
    }

    /// Which VLAN back-ends this host has (for `GET /v1/host`).
    pub async fn network_support(&self) -> vireo_api::networks::NetworkSupport {
        let mut s = vireo_api::networks::NetworkSupport::default();
        let Some(net) = self.inner.net.get() else {
            s.detail
                .push("managed networks are disabled in the daemon's configuration".into());
            return s;
        };
        s.managed = true;
        match net.bridge_vlan_filtering().await {
            Ok(true) => s.bridge_vlan_filtering = true,
            Ok(false) => s.detail.push(
                "linux bridge: the kernel refuses vlan_filtering (no CONFIG_BRIDGE_VLAN_FILTERING)"
                    .into(),
            ),
            Err(e) => s.detail.push(format!("linux bridge: probe failed: {e}")),
        }
        match net.ovs() {
            Some(o) if o.running() => s.ovs = true,
            Some(_) => s
                .detail
                .push("ovs: Vireo's ovsdb-server/ovs-vswitchd are restarting".into()),
            None => s.detail.push(match vireo_net::ovs::installed() {
                Ok(()) => {
                    "ovs: installed but Vireo's switch did not start (see the daemon log)".into()
                }
                Err(e) => format!("ovs: {e}"),
            }),
        }
        s
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
        let req = AddNicRequest {
            network: network.clone(),
            name: None,
            mac: None,
            vlan: None,
            mtu: None,
            link_up: None,
            ip: None,
            firewall: None,
        };
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
