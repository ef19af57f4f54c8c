//! [`FakeHost`]: an in-memory [`HostNet`] for tests of code that drives the host network
//! layer; it keeps the same state the real host would (links, addresses, rules, dnsmasq).

use super::*;
/// In-memory host for tests of code that drives [`HostNet`].
#[derive(Debug, Default)]
pub struct FakeHost {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default, Clone)]
pub struct FakeState {
    pub links: BTreeMap<String, LinkInfo>,
    pub addresses: BTreeMap<String, Vec<(Ipv4Addr, u8)>>,
    /// Global IPv6 addresses per link (`set_bridge_ipv6`).
    pub addresses6: BTreeMap<String, Vec<(Ipv6Addr, u8)>>,
    pub nft: Option<String>,
    pub forwarding: bool,
    pub forwarding6: bool,
    /// IPv6 routes `list_routes6` reports (tests set them).
    pub routes6: Vec<Route6Info>,
    /// Interfaces whose `accept_ra` `enable_ipv6_forwarding` sees as 1 (others: 2).
    pub accept_ra_1: Vec<String>,
    pub dnsmasq: BTreeMap<String, PathBuf>,
    /// Routes `list_routes` reports (tests set them).
    pub routes: Vec<RouteInfo>,
    /// What `probe_bridge_vlan_filtering` answers.
    pub vlan_filtering: bool,
    /// Access VLAN per port (`set_access_vlan`).
    pub access_vlans: BTreeMap<String, u16>,
    /// Every successful mutating call, in order (e.g. `create_bridge vb-a`).
    pub calls: Vec<String>,
}

impl FakeHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets a test shape the fake (routes, probe answers, pre-existing links).
    pub fn edit(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.lock())
    }

    pub fn state(&self) -> FakeState {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_link(&self, name: &str, kind: &str) -> Result<(), HostError> {
        check_link(name)?;
        let mut st = self.lock();
        if st.links.contains_key(name) {
            return Err(HostError::Fake {
                what: format!("link {name} exists"),
            });
        }
        st.links.insert(
            name.to_owned(),
            LinkInfo {
                name: name.to_owned(),
                kind: Some(kind.to_owned()),
                master: None,
                mtu: 1500,
                up: false,
            },
        );
        st.calls.push(format!("create_{kind} {name}"));
        Ok(())
    }

    fn with_link(
        &self,
        name: &str,
        call: String,
        f: impl FnOnce(&mut LinkInfo),
    ) -> Result<(), HostError> {
        check_link(name)?;
        let mut st = self.lock();
        let link = st.links.get_mut(name).ok_or_else(|| HostError::Fake {
            what: format!("no link {name}"),
        })?;
        f(link);
        st.calls.push(call);
        Ok(())
    }
}

impl HostNet for FakeHost {
    fn create_bridge(&self, name: &IfName) -> Result<(), HostError> {
        self.add_link(name.as_str(), "bridge")
    }

    fn create_tap(&self, name: &IfName) -> Result<(), HostError> {
        self.add_link(name.as_str(), "tun")
    }

    fn create_veth(&self, a: &str, b: &str) -> Result<(), HostError> {
        self.add_link(a, "veth")?;
        self.add_link(b, "veth")
    }

    fn delete_link(&self, name: &IfName) -> Result<(), HostError> {
        let mut st = self.lock();
        if st.links.remove(name.as_str()).is_none() {
            return Err(HostError::Fake {
                what: format!("no link {name}"),
            });
        }
        st.addresses.remove(name.as_str());
        st.addresses6.remove(name.as_str());
        st.calls.push(format!("delete_link {name}"));
        Ok(())
    }

    fn set_master(&self, link: &str, bridge: &IfName) -> Result<(), HostError> {
        if !self.lock().links.contains_key(bridge.as_str()) {
            return Err(HostError::Fake {
                what: format!("no bridge {bridge}"),
            });
        }
        self.with_link(link, format!("set_master {link} {bridge}"), |l| {
            l.master = Some(bridge.to_string())
        })
    }

    fn set_mtu(&self, link: &str, mtu: Mtu) -> Result<(), HostError> {
        self.with_link(link, format!("set_mtu {link} {}", mtu.get()), |l| {
            l.mtu = mtu.get()
        })
    }

    fn set_up(&self, link: &str, up: bool) -> Result<(), HostError> {
        self.with_link(link, format!("set_up {link} {up}"), |l| l.up = up)
    }

    fn add_address(&self, link: &str, addr: Ipv4Addr, subnet: Ipv4Cidr) -> Result<(), HostError> {
        self.with_link(link, format!("add_address {link} {addr}"), |_| {})?;
        let mut st = self.lock();
        let addrs = st.addresses.entry(link.to_owned()).or_default();
        addrs.retain(|(a, _)| *a != addr);
        addrs.push((addr, subnet.prefix()));
        Ok(())
    }

    fn move_to_netns(&self, link: &str, netns: &str) -> Result<(), HostError> {
        check_link(link)?;
        let mut st = self.lock();
        if st.links.remove(link).is_none() {
            return Err(HostError::Fake {
                what: format!("no link {link}"),
            });
        }
        st.calls.push(format!("move_to_netns {link} {netns}"));
        Ok(())
    }

    fn list_links(&self) -> Result<Vec<LinkInfo>, HostError> {
        Ok(self.lock().links.values().cloned().collect())
    }

    fn nft_apply(&self, ruleset: &str) -> Result<(), HostError> {
        let mut st = self.lock();
        st.nft = Some(ruleset.to_owned());
        st.calls.push("nft_apply".into());
        Ok(())
    }

    fn nft_snapshot(&self) -> Result<NftSnapshot, HostError> {
        Ok(NftSnapshot {
            objects: self
                .lock()
                .nft
                .iter()
                .map(|t| serde_json::Value::String(t.clone()))
                .collect(),
        })
    }

    fn enable_ipv4_forwarding(&self) -> Result<(), HostError> {
        self.lock().forwarding = true;
        Ok(())
    }

    fn enable_ipv6_forwarding(&self) -> Result<(), HostError> {
        let mut st = self.lock();
        if st.forwarding6 {
            return Ok(());
        }
        let accept_ra_1 = st.accept_ra_1.clone();
        let conflicts = ra_forwarding_conflicts(&st.routes6, &|d| {
            Some(if accept_ra_1.iter().any(|x| x == d) {
                1
            } else {
                2
            })
        });
        if !conflicts.is_empty() {
            return Err(HostError::Ipv6ForwardingUnsafe {
                interfaces: conflicts,
            });
        }
        st.forwarding6 = true;
        st.calls.push("enable_ipv6_forwarding".into());
        Ok(())
    }

    fn set_bridge_ipv6(
        &self,
        bridge: &IfName,
        address: Option<(Ipv6Addr, Ipv6Cidr)>,
    ) -> Result<(), HostError> {
        let mut st = self.lock();
        if !st.links.contains_key(bridge.as_str()) {
            return Err(HostError::Fake {
                what: format!("no link {bridge}"),
            });
        }
        let wanted: Vec<(Ipv6Addr, u8)> =
            address.map(|(a, s)| (a, s.prefix())).into_iter().collect();
        let current = st
            .addresses6
            .get(bridge.as_str())
            .cloned()
            .unwrap_or_default();
        if current != wanted {
            st.calls.push(format!(
                "set_bridge_ipv6 {bridge} {}",
                address.map_or_else(|| "none".to_owned(), |(a, _)| a.to_string())
            ));
        }
        if wanted.is_empty() {
            st.addresses6.remove(bridge.as_str());
        } else {
            st.addresses6.insert(bridge.to_string(), wanted);
        }
        Ok(())
    }

    fn list_routes6(&self) -> Result<Vec<Route6Info>, HostError> {
        Ok(self.lock().routes6.clone())
    }

    fn start_dnsmasq(&self, network: &str, conf_file: &Path) -> Result<(), HostError> {
        let mut st = self.lock();
        st.dnsmasq
            .insert(network.to_owned(), conf_file.to_path_buf());
        st.calls.push(format!("start_dnsmasq {network}"));
        Ok(())
    }

    fn stop_dnsmasq(&self, network: &str) {
        let mut st = self.lock();
        if st.dnsmasq.remove(network).is_some() {
            st.calls.push(format!("stop_dnsmasq {network}"));
        }
    }

    fn dnsmasq_status(&self, network: &str) -> Option<ChildStatus> {
        self.lock().dnsmasq.get(network).map(|_| ChildStatus {
            pid: Some(1),
            restarts: 0,
        })
    }

    fn list_routes(&self) -> Result<Vec<RouteInfo>, HostError> {
        Ok(self.lock().routes.clone())
    }

    fn probe_bridge_vlan_filtering(&self) -> Result<bool, HostError> {
        Ok(self.lock().vlan_filtering)
    }

    fn set_vlan_filtering(&self, bridge: &IfName) -> Result<(), HostError> {
        let mut st = self.lock();
        if !st.vlan_filtering {
            return Err(HostError::Fake {
                what: "this fake kernel has no bridge vlan_filtering".into(),
            });
        }
        st.calls.push(format!("set_vlan_filtering {bridge}"));
        Ok(())
    }

    fn set_access_vlan(&self, port: &IfName, vlan: VlanId) -> Result<(), HostError> {
        let mut st = self.lock();
        if !st.links.contains_key(port.as_str()) {
            return Err(HostError::Fake {
                what: format!("no link {port}"),
            });
        }
        if st.access_vlans.insert(port.to_string(), vlan.get()) != Some(vlan.get()) {
            st.calls
                .push(format!("set_access_vlan {port} {}", vlan.get()));
        }
        Ok(())
    }
}
