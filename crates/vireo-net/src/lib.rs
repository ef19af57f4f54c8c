//! Vireo's host network layer: validated addresses, subnet choice, nftables and dnsmasq
//! renderers (pure, golden-tested), and host effects (bridges, taps, veths, nft, dnsmasq
//! supervision, link reconcile) behind the [`host::HostNet`] trait.
//!
//! Invariants: everything Vireo creates carries a Vireo name (`vb-` bridges, `vt-` taps,
//! `table inet vireo` / `table bridge vireo`), and removal paths accept only such names, so
//! the host's own interfaces and rules are never touched.

pub mod addr;
pub mod addr6;
pub mod bridge_vlan;
pub mod dnsmasq;
pub mod host;
pub mod nft;
pub mod ovs;
pub mod subnet;
pub mod supervise;
pub mod tap;

pub use addr::{AddrError, HostName, IfName, Ipv4Cidr, MacAddr, Mtu, VlanId};
pub use addr6::{Addr6Error, Ipv6Cidr};
pub use host::{FakeHost, HostError, HostNet, IpHost, Route6Info, RouteInfo};
