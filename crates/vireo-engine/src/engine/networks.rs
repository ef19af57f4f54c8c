//! Managed networks in the engine facade: `/v1/networks` CRUD and leases, start-up reconcile
//! and the host's VLAN back-ends (VM NICs are in `nics.rs`).
//!
//! Invariants: every request is validated completely (against the record alone, other
//! networks, the host's routes and every NIC on the host) before anything is stored or the
//! host touched, so a rejected request changes nothing; a change that fails to apply on the
//! host is undone (record restored, state re-applied) before the error is returned.
//!
//! IPv6 (optional, nat and isolated): the /64 must not overlap another network's IPv6 subnet
//! or a host route; a nat network with IPv6 turns IPv6 forwarding on before it is stored, and
//! the host's refusal (routes learned from router advertisements would be lost) rejects the
//! request with the reason.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;
use vireo_api::networks::{
    CreateNetworkRequest, Ipv6Dhcp, Lease, NetworkInfo, NetworkType, UpdateNetworkRequest,
};
use vireo_net::{Ipv4Cidr, Ipv6Cidr};
use vireo_types::{MacAddr, Name};

use super::*;
use crate::error::chain;
use crate::net::model::{self, NetworkRecord};
use crate::net::{network_key, nics_key, NetManager, DEFAULT_CREATED_KEY, DEFAULT_NETWORK};

pub(super) fn model_err(e: model::ModelError) -> EngineError {
    EngineError::invalid(e.field, e.message)
}

/// How long the guest may take to release a hot-unplugged NIC.
pub(super) const UNPLUG_WAIT: Duration = Duration::from_secs(10);

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

    pub(super) fn net(&self) -> Result<&Arc<NetManager>> {
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
            let mut req = CreateNetworkRequest::new(
                Name::new(DEFAULT_NETWORK)
                    .map_err(|e| EngineError::internal("default network name", e))?,
                NetworkType::Nat,
            );
            req.description = "Created by Vireo on first start".into();
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
            ipv6: n.ipv6.map(|s| s.to_string()),
            ipv6_gateway: n.ipv6_gateway,
            ipv6_dhcp: n.ipv6.map(|_| n.ipv6_dhcp),
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
        let ipv6 = match (&req.ipv6, l3) {
            (Some(s), true) => Some(self.free_ipv6_subnet(s, None).await?),
            (Some(_), false) => {
                return Err(EngineError::invalid(
                    "ipv6",
                    format!(
                        "{} networks take their addresses from outside",
                        req.kind.as_str()
                    ),
                ))
            }
            (None, _) => None,
        };
        if ipv6.is_none() && (req.ipv6_gateway.is_some() || req.ipv6_dhcp.is_some()) {
            let field = if req.ipv6_gateway.is_some() {
                "ipv6_gateway"
            } else {
                "ipv6_dhcp"
            };
            return Err(EngineError::invalid(field, "needs an ipv6 subnet"));
        }
        let ipv6_gateway = match (req.ipv6_gateway, ipv6) {
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
            ipv6,
            ipv6_gateway,
            ipv6_dhcp: req.ipv6_dhcp.unwrap_or_default(),
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
        if record.kind == NetworkType::Nat && record.ipv6.is_some() {
            net.enable_ipv6_forwarding().await?;
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

    /// Parses an IPv6 subnet for network `except` (or a new one) and checks it is a managed
    /// /64 that overlaps no host route and no other network's IPv6 subnet.
    async fn free_ipv6_subnet(&self, text: &str, except: Option<&str>) -> Result<Ipv6Cidr> {
        let c: Ipv6Cidr = text
            .parse()
            .map_err(|e: vireo_net::Addr6Error| EngineError::invalid("ipv6", e.to_string()))?;
        c.check_managed()
            .map_err(|e| EngineError::invalid("ipv6", e.to_string()))?;
        let in_use = self.net()?.subnets6_in_use(except).await?;
        if let Some((_, what)) = in_use.iter().find(|(u, _)| u.overlaps(&c)) {
            return Err(EngineError::invalid(
                "ipv6",
                format!("IPv6 subnet {c} overlaps {what}"),
            ));
        }
        Ok(c)
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
        match req.ipv6 {
            Some(Some(text)) => {
                let c = self.free_ipv6_subnet(&text, Some(name)).await?;
                if record.ipv6 != Some(c) {
                    record.ipv6 = Some(c);
                    record.ipv6_gateway = c.nth(1);
                }
            }
            Some(None) => {
                record.ipv6 = None;
                record.ipv6_gateway = None;
                record.ipv6_dhcp = Ipv6Dhcp::default();
            }
            None => {}
        }
        if let Some(g) = req.ipv6_gateway {
            record.ipv6_gateway = Some(g);
        }
        if let Some(m) = req.ipv6_dhcp {
            if record.ipv6.is_none() {
                return Err(EngineError::invalid("ipv6_dhcp", "needs an ipv6 subnet"));
            }
            record.ipv6_dhcp = m;
        }
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
        if record.kind == NetworkType::Nat && record.ipv6.is_some() && before.ipv6.is_none() {
            net.enable_ipv6_forwarding().await?;
        }
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
        // DHCPv6 hands out addresses only on stateful networks: the NIC's EUI-64 address.
        let stateful6 = n.ipv6.filter(|_| n.ipv6_dhcp == Ipv6Dhcp::Stateful);
        let mut reserved: Vec<(MacAddr, IpAddr, Option<String>)> = vec![];
        let mut reserve = |mac: MacAddr, ip: IpAddr, hostname: Option<String>| {
            reserved.push((mac, ip, hostname.clone()));
            if let Some((_, ip6)) = stateful6.and_then(|s| model::nic_ipv6(s, mac)) {
                reserved.push((mac, IpAddr::V6(ip6), hostname));
            }
        };
        for r in &n.reservations {
            reserve(r.mac, IpAddr::V4(r.ip), r.hostname.clone());
        }
        for v in net.all_nics().await? {
            for a in v.nics.iter().filter(|a| a.network == n.name) {
                if let Some(ip) = a.ip {
                    reserve(a.mac, IpAddr::V4(ip), Some(v.vm.to_string()));
                }
            }
        }
        for (mac, ip, hostname) in reserved {
            let same_family = |l: &&mut Lease| l.mac == mac && l.ip.is_ipv4() == ip.is_ipv4();
            match out.iter_mut().find(same_family) {
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
        out.sort_by_key(|l| l.ip);
        Ok(out)
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
