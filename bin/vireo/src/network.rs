//! `vireo network …` (managed networks) and `vireo vm nic …` (a VM's NICs), with their
//! table renderings and the compact command-line syntax for firewall rules, port forwards
//! and reservations (parsed by pure functions, unit-tested below).

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use vireo_api::networks::{
    AddNicRequest, CreateNetworkRequest, Firewall, FirewallAction, FirewallDirection,
    FirewallProtocol, FirewallRule, ForwardProtocol, Ipv6Dhcp, Lease, NetworkInfo, NetworkType,
    NicDetail, PortForward, Reservation, UpdateNetworkRequest, UpdateNicRequest,
};
use vireo_types::{MacAddr, Name};

use crate::output::{field_table, list_table, or_dash, timestamp, yes_no, Tabular};
use crate::{print, GlobalArgs};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TypeArg {
    Nat,
    Bridged,
    Isolated,
    Ovs,
}

impl From<TypeArg> for NetworkType {
    fn from(t: TypeArg) -> Self {
        match t {
            TypeArg::Nat => NetworkType::Nat,
            TypeArg::Bridged => NetworkType::Bridged,
            TypeArg::Isolated => NetworkType::Isolated,
            TypeArg::Ovs => NetworkType::Ovs,
        }
    }
}

/// How guests get IPv6 addresses (`--ipv6-dhcp`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Ipv6DhcpArg {
    /// SLAAC from router advertisements (DNS settings by stateless DHCPv6).
    Stateless,
    /// DHCPv6 addresses, no SLAAC (needs DHCP on).
    Stateful,
}

impl From<Ipv6DhcpArg> for Ipv6Dhcp {
    fn from(m: Ipv6DhcpArg) -> Self {
        match m {
            Ipv6DhcpArg::Stateless => Ipv6Dhcp::Stateless,
            Ipv6DhcpArg::Stateful => Ipv6Dhcp::Stateful,
        }
    }
}

fn ipv6_dhcp_text(m: Ipv6Dhcp) -> &'static str {
    match m {
        Ipv6Dhcp::Stateless => "stateless",
        Ipv6Dhcp::Stateful => "stateful",
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ActionArg {
    Accept,
    Drop,
    Reject,
}

impl From<ActionArg> for FirewallAction {
    fn from(a: ActionArg) -> Self {
        match a {
            ActionArg::Accept => FirewallAction::Accept,
            ActionArg::Drop => FirewallAction::Drop,
            ActionArg::Reject => FirewallAction::Reject,
        }
    }
}

/// Firewall options shared by network and NIC commands.
#[derive(Debug, Args, Default)]
pub struct FirewallArgs {
    /// Firewall rule `DIR:PROTO:PORTS:CIDR:ACTION` (repeatable, in order), e.g.
    /// `in:icmp:::drop`, `in:tcp:22,8000-8080:10.0.0.0/8:accept`; an IPv6 CIDR goes in
    /// brackets: `in:tcp:22:[fd00:1::/64]:accept`. Replaces all rules.
    #[arg(long = "rule", value_parser = parse_rule)]
    pub rules: Vec<FirewallRule>,
    /// Remove every firewall rule.
    #[arg(long, conflicts_with = "rules")]
    pub clear_rules: bool,
    /// Policy for traffic towards the network/VM that no rule matched.
    #[arg(long)]
    pub default_in: Option<ActionArg>,
    /// Policy for traffic from the network/VM that no rule matched.
    #[arg(long)]
    pub default_out: Option<ActionArg>,
}

impl FirewallArgs {
    fn touched(&self) -> bool {
        !self.rules.is_empty()
            || self.clear_rules
            || self.default_in.is_some()
            || self.default_out.is_some()
    }

    /// `current` with these options applied.
    fn apply(&self, current: &Firewall) -> Firewall {
        let mut fw = current.clone();
        if self.clear_rules {
            fw.rules.clear();
        }
        if !self.rules.is_empty() {
            fw.rules = self.rules.clone();
        }
        if let Some(a) = self.default_in {
            fw.default_in = a.into();
        }
        if let Some(a) = self.default_out {
            fw.default_out = a.into();
        }
        fw
    }
}

/// Parses `DIR:PROTO:PORTS:CIDR:ACTION` (PORTS comma-separated; empty fields = any).
pub fn parse_rule(s: &str) -> Result<FirewallRule, String> {
    // An IPv6 CIDR is bracketed (it contains ':'): cut it out before splitting on ':'.
    let (s, cidr6) = match (s.find('['), s.find(']')) {
        (Some(open), Some(close)) if open < close => (
            format!("{}{}", &s[..open], &s[close + 1..]),
            Some(s[open + 1..close].to_owned()),
        ),
        (None, None) => (s.to_owned(), None),
        _ => return Err(format!("rule {s:?} has an unbalanced '[' or ']'")),
    };
    let s = s.as_str();
    let f: Vec<&str> = s.split(':').collect();
    if f.len() != 5 {
        return Err(format!(
            "rule {s:?} must be DIR:PROTO:PORTS:CIDR:ACTION (e.g. in:tcp:22::drop)"
        ));
    }
    let direction = match f[0] {
        "in" => FirewallDirection::In,
        "out" => FirewallDirection::Out,
        d => return Err(format!("rule direction must be in or out (got {d:?})")),
    };
    let protocol = match f[1] {
        "" | "any" => FirewallProtocol::Any,
        "tcp" => FirewallProtocol::Tcp,
        "udp" => FirewallProtocol::Udp,
        "icmp" => FirewallProtocol::Icmp,
        p => {
            return Err(format!(
                "rule protocol must be tcp, udp, icmp or any (got {p:?})"
            ))
        }
    };
    let ports = f[2]
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let cidr = match cidr6 {
        Some(c) if f[3].is_empty() => Some(c),
        Some(_) => return Err(format!("rule {s:?} has two CIDRs")),
        None => (!f[3].is_empty()).then(|| f[3].to_owned()),
    };
    let action = match f[4] {
        "accept" => FirewallAction::Accept,
        "drop" => FirewallAction::Drop,
        "reject" => FirewallAction::Reject,
        a => {
            return Err(format!(
                "rule action must be accept, drop or reject (got {a:?})"
            ))
        }
    };
    Ok(FirewallRule {
        direction,
        protocol,
        ports,
        cidr,
        action,
    })
}

/// Parses `PROTO:[HOSTADDR:]HOSTPORT:TARGET:TARGETPORT`, e.g. `tcp:8080:10.0.0.5:80`.
pub fn parse_forward(s: &str) -> Result<PortForward, String> {
    let f: Vec<&str> = s.split(':').collect();
    let (proto, host_address, host_port, target, target_port) = match f.as_slice() {
        [p, hp, t, tp] => (*p, None, *hp, *t, *tp),
        [p, ha, hp, t, tp] => (*p, Some(*ha), *hp, *t, *tp),
        _ => {
            return Err(format!(
                "port forward {s:?} must be PROTO:[HOSTADDR:]HOSTPORT:TARGET:TARGETPORT"
            ))
        }
    };
    let protocol = match proto {
        "tcp" => ForwardProtocol::Tcp,
        "udp" => ForwardProtocol::Udp,
        p => {
            return Err(format!(
                "port forward protocol must be tcp or udp (got {p:?})"
            ))
        }
    };
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
    };
    let addr = |a: &str| {
        a.parse::<std::net::Ipv4Addr>()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))
    };
    Ok(PortForward {
        protocol,
        host_address: host_address.map(addr).transpose()?,
        host_port: port(host_port)?,
        target: addr(target)?,
        target_port: port(target_port)?,
    })
}

/// Parses `MAC=IP[=HOSTNAME]`.
pub fn parse_reservation(s: &str) -> Result<Reservation, String> {
    let f: Vec<&str> = s.split('=').collect();
    if !(2..=3).contains(&f.len()) {
        return Err(format!("reservation {s:?} must be MAC=IP[=HOSTNAME]"));
    }
    Ok(Reservation {
        mac: f[0].parse::<MacAddr>()?,
        ip: f[1]
            .parse()
            .map_err(|_| format!("{:?} is not an IPv4 address", f[1]))?,
        hostname: f.get(2).map(|h| h.to_string()),
    })
}

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a managed network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "ls")]
    List,
    /// Show one network.
    Show { name: Name },
    /// Change a network's firewall, port forwards, reservations or description.
    Edit(EditArgs),
    /// Delete a network no VM uses.
    #[command(alias = "rm")]
    Delete { name: Name },
    /// DHCP leases and reservations of a network.
    Leases { name: Name },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: Name,
    #[arg(long = "type", value_enum, default_value = "nat")]
    pub kind: TypeArg,
    /// IPv4 subnet (nat, isolated); default: a free private /24.
    #[arg(long)]
    pub subnet: Option<String>,
    /// The bridge's address; default: the subnet's first host.
    #[arg(long)]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Turn DHCP/DNS off (nat, isolated).
    #[arg(long)]
    pub no_dhcp: bool,
    /// IPv6 /64 (nat, isolated), e.g. fd00:1:2:3::/64 (unique local or global unicast).
    #[arg(long)]
    pub ipv6: Option<String>,
    /// The bridge's IPv6 address; default: <prefix>::1.
    #[arg(long, requires = "ipv6")]
    pub ipv6_gateway: Option<std::net::Ipv6Addr>,
    /// How guests get IPv6 addresses (default stateless = SLAAC).
    #[arg(long, value_enum, requires = "ipv6")]
    pub ipv6_dhcp: Option<Ipv6DhcpArg>,
    /// nat: masquerade interface; bridged: host interface to bridge; ovs: trunk port.
    #[arg(long)]
    pub uplink: Option<String>,
    #[arg(long)]
    pub mtu: Option<u32>,
    /// DNS domain of VM names (default vireo).
    #[arg(long)]
    pub domain: Option<String>,
    /// Port forward `PROTO:[HOSTADDR:]HOSTPORT:TARGET:TARGETPORT` (repeatable).
    #[arg(long = "forward", value_parser = parse_forward)]
    pub forwards: Vec<PortForward>,
    /// DHCP reservation `MAC=IP[=HOSTNAME]` (repeatable).
    #[arg(long = "reserve", value_parser = parse_reservation)]
    pub reservations: Vec<Reservation>,
    #[command(flatten)]
    pub firewall: FirewallArgs,
    #[arg(long, default_value = "")]
    pub description: String,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    pub name: Name,
    /// Give the network this IPv6 /64 (or a new one).
    #[arg(long)]
    pub ipv6: Option<String>,
    /// Remove IPv6 from the network.
    #[arg(long, conflicts_with_all = ["ipv6", "ipv6_gateway", "ipv6_dhcp"])]
    pub no_ipv6: bool,
    /// The bridge's IPv6 address.
    #[arg(long)]
    pub ipv6_gateway: Option<std::net::Ipv6Addr>,
    /// How guests get IPv6 addresses.
    #[arg(long, value_enum)]
    pub ipv6_dhcp: Option<Ipv6DhcpArg>,
    /// Port forwards (replace all).
    #[arg(long = "forward", value_parser = parse_forward)]
    pub forwards: Vec<PortForward>,
    /// Remove every port forward.
    #[arg(long, conflicts_with = "forwards")]
    pub clear_forwards: bool,
    /// Reservations (replace all).
    #[arg(long = "reserve", value_parser = parse_reservation)]
    pub reservations: Vec<Reservation>,
    /// Remove every reservation.
    #[arg(long, conflicts_with = "reservations")]
    pub clear_reservations: bool,
    #[command(flatten)]
    pub firewall: FirewallArgs,
    #[arg(long)]
    pub description: Option<String>,
}

pub async fn run(global: &GlobalArgs, cmd: NetworkCmd) -> anyhow::Result<u8> {
    let client = global.client()?;
    let format = global.output();
    match cmd {
        NetworkCmd::Create(a) => {
            let req = CreateNetworkRequest {
                name: a.name.clone(),
                kind: a.kind.into(),
                subnet: a.subnet,
                gateway: a.gateway,
                dhcp: a.no_dhcp.then_some(false),
                ipv6: a.ipv6,
                ipv6_gateway: a.ipv6_gateway,
                ipv6_dhcp: a.ipv6_dhcp.map(Into::into),
                uplink: a.uplink,
                mtu: a.mtu,
                domain: a.domain,
                reservations: a.reservations,
                firewall: a.firewall.apply(&Firewall::default()),
                port_forwards: a.forwards,
                description: a.description,
            };
            let n = client
                .create_network(&req)
                .await
                .with_context(|| format!("cannot create network {}", a.name))?;
            print(format, &n)?;
        }
        NetworkCmd::List => {
            let list = client
                .list_networks()
                .await
                .context("cannot list networks")?;
            print(format, list.as_slice())?;
        }
        NetworkCmd::Show { name } => {
            let n = client
                .get_network(name.as_str())
                .await
                .with_context(|| format!("cannot show network {name}"))?;
            print(format, &n)?;
        }
        NetworkCmd::Edit(a) => {
            let current = client
                .get_network(a.name.as_str())
                .await
                .with_context(|| format!("cannot read network {}", a.name))?;
            let mut req = UpdateNetworkRequest {
                description: a.description.clone(),
                ipv6_gateway: a.ipv6_gateway,
                ipv6_dhcp: a.ipv6_dhcp.map(Into::into),
                ..Default::default()
            };
            if a.no_ipv6 {
                req.ipv6 = Some(None);
            } else if let Some(c) = &a.ipv6 {
                req.ipv6 = Some(Some(c.clone()));
            }
            if a.firewall.touched() {
                req.firewall = Some(a.firewall.apply(&current.firewall));
            }
            if a.clear_forwards || !a.forwards.is_empty() {
                req.port_forwards = Some(a.forwards.clone());
            }
            if a.clear_reservations || !a.reservations.is_empty() {
                req.reservations = Some(a.reservations.clone());
            }
            let n = client
                .update_network(a.name.as_str(), &req, Some(current.revision))
                .await
                .with_context(|| format!("cannot change network {}", a.name))?;
            print(format, &n)?;
        }
        NetworkCmd::Delete { name } => {
            client
                .delete_network(name.as_str())
                .await
                .with_context(|| format!("cannot delete network {name}"))?;
            eprintln!("network {name} deleted");
        }
        NetworkCmd::Leases { name } => {
            let leases = client
                .network_leases(name.as_str())
                .await
                .with_context(|| format!("cannot list leases of network {name}"))?;
            print(format, leases.as_slice())?;
        }
    }
    Ok(0)
}

#[derive(Debug, Subcommand)]
pub enum NicCmd {
    /// List a VM's NICs.
    #[command(alias = "ls")]
    List { vm: Name },
    /// Add a NIC (hot-plugged when the VM runs).
    Add(NicAddArgs),
    /// Remove a NIC (hot-unplugged when the VM runs).
    #[command(alias = "rm")]
    Remove { vm: Name, nic: Name },
    /// Change a NIC's link state or firewall.
    Set(NicSetArgs),
}

#[derive(Debug, Args)]
pub struct NicAddArgs {
    pub vm: Name,
    #[arg(long)]
    pub network: Name,
    /// NIC name (default: the first free ethN).
    #[arg(long)]
    pub name: Option<Name>,
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// VLAN tag (access port, 1-4094; ovs networks).
    #[arg(long)]
    pub vlan: Option<u32>,
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Fixed address (a DHCP reservation).
    #[arg(long)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Start with the link down.
    #[arg(long)]
    pub down: bool,
    #[command(flatten)]
    pub firewall: FirewallArgs,
}

#[derive(Debug, Args)]
pub struct NicSetArgs {
    pub vm: Name,
    pub nic: Name,
    #[arg(long, conflicts_with = "down")]
    pub up: bool,
    #[arg(long)]
    pub down: bool,
    #[command(flatten)]
    pub firewall: FirewallArgs,
}

pub async fn nic(global: &GlobalArgs, cmd: NicCmd) -> anyhow::Result<u8> {
    let client = global.client()?;
    let format = global.output();
    match cmd {
        NicCmd::List { vm } => {
            let nics = client
                .list_nics(vm.as_str())
                .await
                .with_context(|| format!("cannot list NICs of VM {vm}"))?;
            print(format, nics.as_slice())?;
        }
        NicCmd::Add(a) => {
            let req = AddNicRequest {
                network: a.network.clone(),
                name: a.name.clone(),
                mac: a.mac,
                vlan: a.vlan,
                mtu: a.mtu,
                link_up: a.down.then_some(false),
                ip: a.ip,
                firewall: a
                    .firewall
                    .touched()
                    .then(|| a.firewall.apply(&Firewall::default())),
            };
            let n = client
                .add_nic(a.vm.as_str(), &req)
                .await
                .with_context(|| format!("cannot add a NIC to VM {}", a.vm))?;
            print(format, &n)?;
        }
        NicCmd::Remove { vm, nic } => {
            client
                .remove_nic(vm.as_str(), nic.as_str())
                .await
                .with_context(|| format!("cannot remove NIC {nic} of VM {vm}"))?;
            eprintln!("NIC {nic} removed from VM {vm}");
        }
        NicCmd::Set(a) => {
            let current = client
                .list_nics(a.vm.as_str())
                .await
                .with_context(|| format!("cannot read NICs of VM {}", a.vm))?;
            let Some(cur) = current.iter().find(|n| n.name == a.nic) else {
                bail!("VM {} has no NIC {}", a.vm, a.nic);
            };
            let req = UpdateNicRequest {
                link_up: if a.up {
                    Some(true)
                } else if a.down {
                    Some(false)
                } else {
                    None
                },
                firewall: a
                    .firewall
                    .touched()
                    .then(|| a.firewall.apply(&cur.firewall)),
            };
            let n = client
                .update_nic(a.vm.as_str(), a.nic.as_str(), &req)
                .await
                .with_context(|| format!("cannot change NIC {} of VM {}", a.nic, a.vm))?;
            print(format, &n)?;
        }
    }
    Ok(0)
}

fn action_text(a: FirewallAction) -> &'static str {
    match a {
        FirewallAction::Accept => "accept",
        FirewallAction::Drop => "drop",
        FirewallAction::Reject => "reject",
    }
}

/// A rule back in its command-line syntax.
pub fn rule_text(r: &FirewallRule) -> String {
    let dir = match r.direction {
        FirewallDirection::In => "in",
        FirewallDirection::Out => "out",
    };
    let proto = match r.protocol {
        FirewallProtocol::Tcp => "tcp",
        FirewallProtocol::Udp => "udp",
        FirewallProtocol::Icmp => "icmp",
        FirewallProtocol::Any => "any",
    };
    let cidr = match r.cidr.as_deref() {
        Some(c) if c.contains(':') => format!("[{c}]"),
        Some(c) => c.to_owned(),
        None => String::new(),
    };
    format!(
        "{dir}:{proto}:{}:{cidr}:{}",
        r.ports.join(","),
        action_text(r.action)
    )
}

fn firewall_text(fw: &Firewall) -> String {
    let mut parts = vec![format!(
        "in={} out={}",
        action_text(fw.default_in),
        action_text(fw.default_out)
    )];
    parts.extend(fw.rules.iter().map(rule_text));
    parts.join("; ")
}

fn forward_text(f: &PortForward) -> String {
    let proto = match f.protocol {
        ForwardProtocol::Tcp => "tcp",
        ForwardProtocol::Udp => "udp",
    };
    match f.host_address {
        Some(a) => format!("{proto}:{a}:{}:{}:{}", f.host_port, f.target, f.target_port),
        None => format!("{proto}:{}:{}:{}", f.host_port, f.target, f.target_port),
    }
}

impl Tabular for [NetworkInfo] {
    fn table(&self) -> String {
        list_table(
            &[
                "NAME", "TYPE", "SUBNET", "IPV6", "BRIDGE", "DHCP", "USED BY",
            ],
            self.iter().map(|n| {
                vec![
                    n.name.to_string(),
                    n.kind.as_str().to_string(),
                    or_dash(n.subnet.as_ref()),
                    or_dash(n.ipv6.as_ref()),
                    n.bridge.clone(),
                    yes_no(n.dhcp),
                    n.used_by.len().to_string(),
                ]
            }),
        )
    }
}

impl Tabular for NetworkInfo {
    fn table(&self) -> String {
        field_table(vec![
            ("name", self.name.to_string()),
            ("type", self.kind.as_str().to_string()),
            ("bridge", self.bridge.clone()),
            ("subnet", or_dash(self.subnet.as_ref())),
            ("gateway", or_dash(self.gateway)),
            ("dhcp", yes_no(self.dhcp)),
            ("ipv6", or_dash(self.ipv6.as_ref())),
            ("ipv6 gateway", or_dash(self.ipv6_gateway)),
            ("ipv6 dhcp", or_dash(self.ipv6_dhcp.map(ipv6_dhcp_text))),
            ("uplink", or_dash(self.uplink.as_ref())),
            ("mtu", or_dash(self.mtu)),
            ("domain", self.domain.clone()),
            ("firewall", firewall_text(&self.firewall)),
            (
                "forwards",
                self.port_forwards
                    .iter()
                    .map(forward_text)
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "reservations",
                self.reservations
                    .iter()
                    .map(|r| format!("{}={}", r.mac, r.ip))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("used by", self.used_by.join(", ")),
            ("default", yes_no(self.default)),
            ("created", timestamp(&self.created_at)),
            ("description", self.description.clone()),
        ])
    }
}

impl Tabular for [Lease] {
    fn table(&self) -> String {
        list_table(
            &["IP", "MAC", "HOSTNAME", "KIND", "EXPIRES"],
            self.iter().map(|l| {
                vec![
                    l.ip.to_string(),
                    l.mac.to_string(),
                    or_dash(l.hostname.as_ref()),
                    l.kind.clone(),
                    if l.expires == 0 {
                        "-".into()
                    } else {
                        chrono::DateTime::from_timestamp(l.expires as i64, 0)
                            .map(|t| timestamp(&t))
                            .unwrap_or_else(|| l.expires.to_string())
                    },
                ]
            }),
        )
    }
}

impl Tabular for [NicDetail] {
    fn table(&self) -> String {
        list_table(
            &[
                "NAME", "NETWORK", "MAC", "IP", "IPV6", "VLAN", "LINK", "TAP",
            ],
            self.iter().map(|n| {
                vec![
                    n.name.to_string(),
                    n.network.clone(),
                    n.mac.to_string(),
                    or_dash(n.ip),
                    or_dash(n.ipv6),
                    or_dash(n.vlan),
                    if n.link_up { "up" } else { "down" }.to_string(),
                    or_dash(n.tap.as_ref()),
                ]
            }),
        )
    }
}

impl Tabular for NicDetail {
    fn table(&self) -> String {
        std::slice::from_ref(self).table()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print_back() {
        for s in [
            "in:icmp:::drop",
            "in:tcp:22,8000-8080:10.0.0.0/8:accept",
            "out:any:::reject",
            "in:tcp:22:[fd00:1::/64]:accept",
        ] {
            assert_eq!(rule_text(&parse_rule(s).unwrap()), s);
        }
        let r = parse_rule("out:udp:53:[2001:db8::/32]:drop").unwrap();
        assert_eq!(r.cidr.as_deref(), Some("2001:db8::/32"));
        assert!(parse_rule("in:tcp:22:[fd00::/64:accept").is_err());
        assert!(parse_rule("in:tcp:22:10.0.0.0/8[fd00::/64]:accept").is_err());
        assert!(parse_rule("in:tcp:22:drop").is_err());
        assert!(parse_rule("sideways:tcp:22::drop").is_err());
        assert!(parse_rule("in:sctp:::drop").is_err());
        assert!(parse_rule("in:tcp:::allow").is_err());
    }

    #[test]
    fn forwards_and_reservations_parse() {
        let f = parse_forward("tcp:8080:10.0.0.5:80").unwrap();
        assert_eq!(
            (f.host_port, f.target_port, f.host_address),
            (8080, 80, None)
        );
        let f = parse_forward("udp:192.0.2.1:53:10.0.0.5:5353").unwrap();
        assert_eq!(f.host_address, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(forward_text(&f), "udp:192.0.2.1:53:10.0.0.5:5353");
        for bad in [
            "tcp:0:10.0.0.5:80",
            "icmp:1:10.0.0.5:1",
            "tcp:1:nope:2",
            "tcp:1",
        ] {
            assert!(parse_forward(bad).is_err(), "{bad}");
        }
        let r = parse_reservation("0a:76:72:00:00:01=10.0.0.9=db").unwrap();
        assert_eq!(r.hostname.as_deref(), Some("db"));
        assert!(parse_reservation("0a:76:72:00:00:01").is_err());
        assert!(parse_reservation("01:00:00:00:00:00=10.0.0.9").is_err());
    }
}
