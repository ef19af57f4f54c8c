//! Managed-network NICs of clones: each clone gets its own MAC, tap and reserved address on
//! the source's networks (same VLAN, MTU, link state and firewall), planned for a whole batch at
//! once so the clones differ from each other and from every NIC on the host.

use vireo_api::networks::AddNicRequest;
use vireo_types::NicBackend;

use super::*;
use crate::error::Result;
use crate::net::model::NicAttachment;
use crate::net::nics_key;
use crate::ops::{Cleanup, OpHandle};
use crate::records::VmRecord;

/// Puts a clone's planned managed-network attachments into its NICs (MAC and tap, matched by
/// NIC name). Runs before the seed is rendered: its network-config names the MACs.
pub(super) fn apply_clone_nics(rec: &mut VmRecord, nics: &[NicAttachment]) {
    for nic in &mut rec.spec.nics {
        if let Some(a) = nics.iter().find(|a| a.nic == nic.name) {
            nic.mac = a.mac;
            nic.backend = NicBackend::Tap {
                ifname: a.tap.clone(),
            };
        }
    }
}

impl Engine {
    /// Managed-network NICs for `count` clones of `src`: per clone, one attachment per managed
    /// NIC of the source, on the same network with its VLAN, MTU, link state and firewall, and
    /// its own MAC, tap and address. Planned together, so the clones' MACs and addresses differ
    /// from each other's and from every NIC on the host. Without these a clone reused the
    /// source's tap name and had no reservation: its tap was on no bridge (no DHCP, no
    /// network) and two running clones collided.
    pub(super) async fn plan_clone_nics(
        &self,
        src: &VmRecord,
        count: usize,
    ) -> Result<Vec<Vec<NicAttachment>>> {
        let none = || vec![Vec::new(); count];
        let Some(net) = self.inner.net.get() else {
            return Ok(none());
        };
        let Some(src_nics) = net.vm_nics(src.uuid).await? else {
            return Ok(none());
        };
        let mut planned: Vec<NicAttachment> = Vec::new();
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let mut mine = Vec::with_capacity(src_nics.nics.len());
            for a in &src_nics.nics {
                let req = AddNicRequest {
                    network: a.network.clone(),
                    name: None,
                    mac: None,
                    vlan: a.vlan,
                    mtu: a.mtu,
                    link_up: Some(a.link_up),
                    ip: None,
                    firewall: Some(a.firewall.clone()),
                };
                let n = self.plan_nic(a.nic.clone(), &req, &planned).await?;
                planned.push(n.clone());
                mine.push(n);
            }
            out.push(mine);
        }
        Ok(out)
    }

    /// Stores a clone's planned attachments (its reservations and DNS names); the operation's
    /// journal removes them again should it fail.
    pub(super) async fn save_clone_nics(
        &self,
        op: &OpHandle,
        rec: &VmRecord,
        nics: Vec<NicAttachment>,
    ) -> Result<()> {
        if nics.is_empty() {
            return Ok(());
        }
        op.journal(Cleanup::DeleteKey {
            key: nics_key(rec.uuid),
        })
        .await;
        self.save_vm_nics(rec.uuid, rec.project.as_str(), &rec.name, nics)
            .await
    }
}
