//! [`IpHost`]: the real [`HostNet`], acting through `ip` (iproute2), the TUNSETIFF ioctl,
//! `nft` and supervised `dnsmasq`, optionally inside one named network namespace.
//!
//! Invariant: every link name reaches `ip` only after `check_link` (no option injection, no
//! names the kernel would refuse), and destructive calls take [`IfName`]s (Vireo-owned).

use super::*;

/// The real host, optionally confined to one named network namespace.
pub struct IpHost {
    netns: Option<String>,
    dnsmasq: Mutex<BTreeMap<String, Supervisor>>,
}

impl std::fmt::Debug for IpHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpHost")
            .field("netns", &self.netns)
            .finish()
    }
}

impl IpHost {
    /// `netns = None` acts on the daemon's own namespace.
    pub fn new(netns: Option<String>) -> Self {
        Self {
            netns,
            dnsmasq: Mutex::new(BTreeMap::new()),
        }
    }

    fn supervisors(&self) -> MutexGuard<'_, BTreeMap<String, Supervisor>> {
        // Supervisors stay consistent on their own; a poisoned map is still usable.
        self.dnsmasq.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A command for `program`, run inside the namespace if one is set.
    fn command(netns: Option<&str>, program: &str) -> Command {
        match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn ifindex(&self, link: &str) -> Result<i32, HostError> {
        check_link(link)?;
        let json = self.ip(&["-j", "link", "show", "dev", link])?;
        let v: serde_json::Value = serde_json::from_str(&json).map_err(HostError::LinkJson)?;
        v[0]["ifindex"]
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .ok_or_else(|| HostError::LinkName {
                name: link.to_owned(),
            })
    }

    /// Sends rtnetlink requests in this host's namespace; with `first_may_fail`, an ENOENT
    /// answer to the first request (removing something already removed) is not an error.
    fn netlink(&self, link: &str, msgs: &[Vec<u8>], first_may_fail: bool) -> Result<(), HostError> {
        let send = || -> Result<(), VlanError> {
            let sock = NetlinkSocket::open()?;
            for (i, m) in msgs.iter().enumerate() {
                match sock.request(m) {
                    Err(VlanError::Kernel(e))
                        if i == 0 && first_may_fail && e.raw_os_error() == Some(libc::ENOENT) => {}
                    other => other?,
                }
            }
            Ok(())
        };
        let res = match &self.netns {
            None => send(),
            Some(ns) => tap::in_netns(ns, send).map_err(HostError::Tap)?,
        };
        res.map_err(|source| HostError::Vlan {
            link: link.to_owned(),
            source,
        })
    }

    /// Reads a `/proc/sys` file in this host's namespace.
    fn read_sysctl(&self, path: &str) -> Result<String, HostError> {
        let read = || std::fs::read_to_string(path);
        let res = match &self.netns {
            None => read(),
            // /proc/sys/net resolves against the opening thread's namespace.
            Some(ns) => tap::in_netns(ns, read).map_err(HostError::Tap)?,
        };
        res.map_err(|source| HostError::Sysctl6 {
            what: format!("read {path}"),
            source,
        })
    }

    /// Writes a `/proc/sys` file in this host's namespace.
    fn write_sysctl(&self, path: &str, value: &str) -> Result<(), HostError> {
        let write = || std::fs::write(path, format!("{value}\n"));
        let res = match &self.netns {
            None => write(),
            Some(ns) => tap::in_netns(ns, write).map_err(HostError::Tap)?,
        };
        res.map_err(|source| HostError::Sysctl6 {
            what: format!("write {value} to {path}"),
            source,
        })
    }

    fn ip(&self, args: &[&str]) -> Result<String, HostError> {
        let mut c = Command::new("ip");
        if let Some(ns) = &self.netns {
            c.args(["-n", ns]);
        }
        c.args(args);
        run(c, None)
    }
}

fn argv_of(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(mut c: Command, stdin: Option<&str>) -> Result<String, HostError> {
    let argv = argv_of(&c);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let spawn_err = |source| HostError::Spawn {
        argv: argv.clone(),
        source,
    };
    let mut child = c.spawn().map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(HostError::Command {
            argv,
            status: out.status.to_string(),
            stderr: stderr
                .chars()
                .take(2000)
                .collect::<String>()
                .trim()
                .to_owned(),
        });
    }
    tracing::debug!(%argv, "ran");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    linkinfo: Option<IpLinkInfo>,
}

#[derive(Deserialize)]
struct IpLinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

/// Parses `ip -j -d link show` output (pure; bounded by the input size).
pub fn parse_ip_links(json: &str) -> Result<Vec<LinkInfo>, serde_json::Error> {
    let links: Vec<IpLink> = serde_json::from_str(json)?;
    Ok(links
        .into_iter()
        .map(|l| LinkInfo {
            up: l.flags.iter().any(|f| f == "UP"),
            kind: l.linkinfo.and_then(|i| i.info_kind),
            name: l.ifname,
            master: l.master,
            mtu: l.mtu,
        })
        .collect())
}

impl HostNet for IpHost {
    fn create_bridge(&self, name: &IfName) -> Result<(), HostError> {
        self.ip(&[
            "link",
            "add",
            "name",
            name.as_str(),
            "type",
            "bridge",
            "nf_call_iptables",
            "1",
            "nf_call_ip6tables",
            "1",
        ])
        .map(drop)
    }

    fn create_tap(&self, name: &IfName) -> Result<(), HostError> {
        tap::create_tap(name, self.netns.as_deref()).map_err(HostError::Tap)
    }

    fn create_veth(&self, a: &str, b: &str) -> Result<(), HostError> {
        check_link(a)?;
        check_link(b)?;
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b])
            .map(drop)
    }

    fn delete_link(&self, name: &IfName) -> Result<(), HostError> {
        self.ip(&["link", "del", "dev", name.as_str()]).map(drop)
    }

    fn set_master(&self, link: &str, bridge: &IfName) -> Result<(), HostError> {
        check_link(link)?;
        self.ip(&["link", "set", "dev", link, "master", bridge.as_str()])
            .map(drop)
    }

    fn set_mtu(&self, link: &str, mtu: Mtu) -> Result<(), HostError> {
        check_link(link)?;
        self.ip(&["link", "set", "dev", link, "mtu", &mtu.get().to_string()])
            .map(drop)
    }

    fn set_up(&self, link: &str, up: bool) -> Result<(), HostError> {
        check_link(link)?;
        let state = if up { "up" } else { "down" };
        self.ip(&["link", "set", "dev", link, state]).map(drop)
    }

    fn add_address(&self, link: &str, addr: Ipv4Addr, subnet: Ipv4Cidr) -> Result<(), HostError> {
        check_link(link)?;
        let cidr = format!("{addr}/{}", subnet.prefix());
        self.ip(&["addr", "replace", &cidr, "dev", link]).map(drop)
    }

    fn move_to_netns(&self, link: &str, netns: &str) -> Result<(), HostError> {
        check_link(link)?;
        check_link(netns)?;
        self.ip(&["link", "set", "dev", link, "netns", netns])
            .map(drop)
    }

    fn list_links(&self) -> Result<Vec<LinkInfo>, HostError> {
        let json = self.ip(&["-j", "-d", "link", "show"])?;
        parse_ip_links(&json).map_err(HostError::LinkJson)
    }

    fn nft_apply(&self, ruleset: &str) -> Result<(), HostError> {
        let mut c = Self::command(self.netns.as_deref(), "nft");
        c.args(["-f", "-"]);
        run(c, Some(ruleset)).map(drop)
    }

    fn nft_snapshot(&self) -> Result<NftSnapshot, HostError> {
        let mut listing = String::new();
        for family in ["inet", "bridge"] {
            let mut c = Self::command(self.netns.as_deref(), "nft");
            c.args(["-j", "list", "table", family, "vireo"]);
            match run(c, None) {
                Ok(out) => listing.push_str(&out),
                // An absent table is an empty snapshot, not an error.
                Err(HostError::Command { stderr, .. })
                    if stderr.contains("No such file or directory") => {}
                Err(e) => return Err(e),
            }
            listing.push('\n');
        }
        NftSnapshot::parse(&listing).map_err(HostError::Snapshot)
    }

    fn enable_ipv4_forwarding(&self) -> Result<(), HostError> {
        let write = || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n");
        match &self.netns {
            None => write().map_err(HostError::Forwarding),
            // /proc/sys/net resolves against the opening thread's namespace.
            Some(ns) => tap::in_netns(ns, write)
                .map_err(HostError::Tap)?
                .map_err(HostError::Forwarding),
        }
    }

    fn enable_ipv6_forwarding(&self) -> Result<(), HostError> {
        let all = "/proc/sys/net/ipv6/conf/all/forwarding";
        if self.read_sysctl(all)?.trim() == "1" {
            return Ok(());
        }
        let routes = self.list_routes6()?;
        let conflicts = ra_forwarding_conflicts(&routes, &|dev| {
            check_link(dev).ok()?;
            self.read_sysctl(&format!("/proc/sys/net/ipv6/conf/{dev}/accept_ra"))
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        if !conflicts.is_empty() {
            return Err(HostError::Ipv6ForwardingUnsafe {
                interfaces: conflicts,
            });
        }
        self.write_sysctl(all, "1")
    }

    fn set_bridge_ipv6(
        &self,
        bridge: &IfName,
        address: Option<(Ipv6Addr, Ipv6Cidr)>,
    ) -> Result<(), HostError> {
        let dev = bridge.as_str();
        if address.is_none() && !Path::new("/proc/sys/net/ipv6").exists() {
            // A kernel without IPv6 has no IPv6 addresses to remove.
            return Ok(());
        }
        if address.is_some() {
            let conf = format!("/proc/sys/net/ipv6/conf/{dev}");
            self.write_sysctl(&format!("{conf}/disable_ipv6"), "0")?;
            self.write_sysctl(&format!("{conf}/accept_ra"), "0")?;
        }
        let json = self.ip(&["-j", "-6", "addr", "show", "dev", dev, "scope", "global"])?;
        let current = parse_global_ipv6(&json).map_err(HostError::LinkJson)?;
        let wanted = address.map(|(a, s)| (a, s.prefix()));
        for (a, p) in current.iter().filter(|c| Some(**c) != wanted) {
            self.ip(&["-6", "addr", "del", &format!("{a}/{p}"), "dev", dev])?;
        }
        if let Some((a, p)) = wanted {
            let cidr = format!("{a}/{p}");
            self.ip(&["-6", "addr", "replace", &cidr, "dev", dev, "nodad"])?;
        }
        Ok(())
    }

    fn list_routes6(&self) -> Result<Vec<Route6Info>, HostError> {
        let json = self.ip(&["-j", "-6", "route", "show", "table", "all"])?;
        parse_ip_routes6(&json).map_err(HostError::LinkJson)
    }

    fn start_dnsmasq(&self, network: &str, conf_file: &Path) -> Result<(), HostError> {
        // Restart semantics: the old instance (if any) is stopped before the new one binds.
        if let Some(mut old) = self.supervisors().remove(network) {
            old.stop();
        } else {
            // A daemon that was killed leaves its dnsmasq running (VMs keep DHCP and DNS
            // meanwhile); it holds the bridge's ports, so it goes before ours starts.
            kill_stale_dnsmasq(conf_file);
        }
        let netns = self.netns.clone();
        let conf = conf_file.to_path_buf();
        let sup = Supervisor::start(
            &format!("dnsmasq-{network}"),
            Box::new(move || {
                let mut c = IpHost::command(netns.as_deref(), "dnsmasq");
                c.arg(format!("--conf-file={}", conf.display()))
                    .arg("--keep-in-foreground")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                c
            }),
        )
        .map_err(|source| HostError::Dnsmasq {
            network: network.to_owned(),
            source,
        })?;
        self.supervisors().insert(network.to_owned(), sup);
        Ok(())
    }

    fn stop_dnsmasq(&self, network: &str) {
        if let Some(mut sup) = self.supervisors().remove(network) {
            sup.stop();
        }
    }

    fn dnsmasq_status(&self, network: &str) -> Option<ChildStatus> {
        self.supervisors().get(network).map(Supervisor::status)
    }

    fn list_routes(&self) -> Result<Vec<RouteInfo>, HostError> {
        let json = self.ip(&["-j", "-4", "route", "show", "table", "all"])?;
        parse_ip_routes(&json).map_err(HostError::LinkJson)
    }

    fn set_vlan_filtering(&self, bridge: &IfName) -> Result<(), HostError> {
        let idx = self.ifindex(bridge.as_str())?;
        let msg =
            bridge_vlan::vlan_filtering_msg(1, idx, true).map_err(|source| HostError::Vlan {
                link: bridge.to_string(),
                source,
            })?;
        self.netlink(bridge.as_str(), &[msg], false)
    }

    fn set_access_vlan(&self, port: &IfName, vlan: VlanId) -> Result<(), HostError> {
        let idx = self.ifindex(port.as_str())?;
        let msgs =
            bridge_vlan::access_port_msgs(1, idx, vlan).map_err(|source| HostError::Vlan {
                link: port.to_string(),
                source,
            })?;
        // The first message removes VLAN 1, which is already gone on a second pass.
        self.netlink(port.as_str(), &msgs, true)
    }

    fn probe_bridge_vlan_filtering(&self) -> Result<bool, HostError> {
        const PROBE: &str = "vb-vlanprobe";
        let res = self.ip(&[
            "link",
            "add",
            "name",
            PROBE,
            "type",
            "bridge",
            "vlan_filtering",
            "1",
        ]);
        match res {
            Ok(_) => {
                self.ip(&["link", "del", "dev", PROBE])?;
                Ok(true)
            }
            // The kernel refuses the attribute (no CONFIG_BRIDGE_VLAN_FILTERING).
            Err(HostError::Command { .. }) => {
                let _ = self.ip(&["link", "del", "dev", PROBE]);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Terminates processes whose command line is exactly `dnsmasq --conf-file=<conf_file> …`
/// (only Vireo starts dnsmasq with its own config path) and waits up to 2 s for them to go.
fn kill_stale_dnsmasq(conf_file: &Path) {
    let needle = format!("--conf-file={}", conf_file.display());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut pids = vec![];
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        let prog = args.next().unwrap_or_default();
        let is_dnsmasq = prog.ends_with(b"dnsmasq");
        if is_dnsmasq && args.any(|a| a == needle.as_bytes()) {
            tracing::info!(pid, conf = %conf_file.display(), "stopping dnsmasq left by a previous daemon");
            // SAFETY: plain signal to a process identified by its command line.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            pids.push(pid);
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline
        && pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
