//! VLANs on Linux bridges (`vlan_filtering`), spoken as rtnetlink messages: the message
//! builders are pure (golden-tested byte for byte) and [`NetlinkSocket`] sends them and reads
//! the kernel's acknowledgement.
//!
//! Semantics: an access port for VLAN `v` drops the default VLAN 1 and carries `v` as PVID,
//! egress untagged — what `bridge vlan del dev P vid 1; bridge vlan add dev P vid v pvid
//! untagged` does. A trunk port carries its VLANs tagged.
//!
//! Invariant: the builders take validated values ([`VlanId`], positive interface indexes), so
//! every message they return is well-formed; nothing here is sent unless the caller asks.
//! Hosts whose kernel lacks `CONFIG_BRIDGE_VLAN_FILTERING` refuse the bridge attribute; the
//! daemon probes that ([`crate::host::HostNet::probe_bridge_vlan_filtering`]) and uses Open
//! vSwitch instead.

use crate::addr::VlanId;

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
const AF_UNSPEC: u8 = 0;
const AF_BRIDGE: u8 = 7;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_BR_VLAN_FILTERING: u16 = 7;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_BRIDGE_VLAN_INFO: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const BRIDGE_VLAN_INFO_PVID: u16 = 1 << 1;
const BRIDGE_VLAN_INFO_UNTAGGED: u16 = 1 << 2;

#[derive(Debug, thiserror::Error)]
pub enum VlanError {
    #[error("interface index {0} is not positive")]
    IfIndex(i32),
    #[error("open rtnetlink socket")]
    Socket(#[source] std::io::Error),
    #[error("send rtnetlink request")]
    Send(#[source] std::io::Error),
    #[error("receive rtnetlink acknowledgement")]
    Recv(#[source] std::io::Error),
    #[error("kernel refused the request")]
    Kernel(#[source] std::io::Error),
    #[error("malformed rtnetlink reply ({0} bytes)")]
    Reply(usize),
}

/// Appends an attribute (header, payload, padding to 4 bytes).
fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn nested(kind: u16, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut inner = Vec::new();
    body(&mut inner);
    let mut out = Vec::new();
    attr(&mut out, kind | NLA_F_NESTED, &inner);
    out
}

/// A complete request: netlink header + ifinfomsg + `attrs`.
fn request(msg_type: u16, seq: u32, family: u8, ifindex: i32, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + IFINFOMSG_LEN + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    m.push(family);
    m.push(0); // pad
    m.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    m.extend_from_slice(&ifindex.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // ifi_flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // ifi_change
    m.extend_from_slice(attrs);
    m
}

fn check_index(ifindex: i32) -> Result<(), VlanError> {
    if ifindex > 0 {
        Ok(())
    } else {
        Err(VlanError::IfIndex(ifindex))
    }
}

/// `ip link set dev BRIDGE type bridge vlan_filtering ON`.
pub fn vlan_filtering_msg(seq: u32, bridge: i32, on: bool) -> Result<Vec<u8>, VlanError> {
    check_index(bridge)?;
    let linkinfo = nested(IFLA_LINKINFO, |b| {
        attr(b, IFLA_INFO_KIND, b"bridge\0");
        let data = nested(IFLA_INFO_DATA, |d| {
            attr(d, IFLA_BR_VLAN_FILTERING, &[u8::from(on)])
        });
        b.extend_from_slice(&data);
    });
    Ok(request(RTM_NEWLINK, seq, AF_UNSPEC, bridge, &linkinfo))
}

/// `bridge vlan add|del dev PORT vid VID [pvid untagged]`.
pub fn port_vlan_msg(
    seq: u32,
    port: i32,
    vid: u16,
    access: bool,
    add: bool,
) -> Result<Vec<u8>, VlanError> {
    check_index(port)?;
    let flags = if access {
        BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED
    } else {
        0
    };
    let mut info = flags.to_ne_bytes().to_vec();
    info.extend_from_slice(&vid.to_ne_bytes());
    let spec = nested(IFLA_AF_SPEC, |b| attr(b, IFLA_BRIDGE_VLAN_INFO, &info));
    let kind = if add { RTM_SETLINK } else { RTM_DELLINK };
    Ok(request(kind, seq, AF_BRIDGE, port, &spec))
}

/// The messages that make `port` an access port of `vlan` (default VLAN 1 removed first).
pub fn access_port_msgs(
    first_seq: u32,
    port: i32,
    vlan: VlanId,
) -> Result<Vec<Vec<u8>>, VlanError> {
    Ok(vec![
        port_vlan_msg(first_seq, port, 1, true, false)?,
        port_vlan_msg(first_seq + 1, port, vlan.get(), true, true)?,
    ])
}

/// Parses an acknowledgement: `Ok(())` for error code 0, the errno otherwise.
pub fn parse_ack(reply: &[u8]) -> Result<(), VlanError> {
    if reply.len() < NLMSG_HDRLEN + 4 {
        return Err(VlanError::Reply(reply.len()));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != NLMSG_ERROR {
        return Err(VlanError::Reply(reply.len()));
    }
    let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    if code == 0 {
        Ok(())
    } else {
        Err(VlanError::Kernel(std::io::Error::from_raw_os_error(
            code.saturating_neg(),
        )))
    }
}

/// A NETLINK_ROUTE socket of the calling thread's network namespace.
#[derive(Debug)]
pub struct NetlinkSocket {
    fd: std::os::fd::OwnedFd,
}

impl NetlinkSocket {
    pub fn open() -> Result<Self, VlanError> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(VlanError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(NetlinkSocket {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends one request and waits for its acknowledgement.
    pub fn request(&self, msg: &[u8]) -> Result<(), VlanError> {
        use std::os::fd::AsRawFd;
        // SAFETY: zeroed sockaddr_nl is valid; nl_family set below (destination: the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `addr` outlive the call; lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(VlanError::Send(std::io::Error::last_os_error()));
        }
        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(VlanError::Recv(std::io::Error::last_os_error()));
        }
        parse_ack(&buf[..n as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // Golden messages, little-endian (x86_64), laid out by hand from <linux/rtnetlink.h>,
    // <linux/if_link.h> and <linux/if_bridge.h>; they match what `ip -d link set … type
    // bridge vlan_filtering 1` and `bridge vlan add … pvid untagged` send.
    #[test]
    fn vlan_filtering_message() {
        let m = vlan_filtering_msg(7, 3, true).unwrap();
        assert_eq!(
            hex(&m),
            concat!(
                "3c000000",
                "1000",
                "0500",
                "07000000",
                "00000000", // nlmsghdr: 60 B, NEWLINK, REQ|ACK
                "00",
                "00",
                "0000",
                "03000000",
                "00000000",
                "00000000", // ifinfomsg: ifindex 3
                "1c00",
                "1280", // IFLA_LINKINFO (nested), 28 B
                "0b00",
                "0100",
                "62726964676500",
                "00", // IFLA_INFO_KIND "bridge\0" + pad
                "0c00",
                "0280", // IFLA_INFO_DATA (nested), 12 B
                "0500",
                "0700",
                "01",
                "000000", // IFLA_BR_VLAN_FILTERING = 1 + pad
            )
        );
        assert_eq!(m.len(), 60);
    }

    #[test]
    fn access_port_messages() {
        let msgs = access_port_msgs(1, 9, VlanId::new(10).unwrap()).unwrap();
        assert_eq!(
            hex(&msgs[0]),
            concat!(
                "2c000000", "1100", "0500", "01000000", "00000000", // 44 B, DELLINK
                "07", "00", "0000", "09000000", "00000000",
                "00000000", // AF_BRIDGE, ifindex 9
                "0c00", "1a80", // IFLA_AF_SPEC (nested)
                "0800", "0200", "0600", "0100", // VLAN_INFO flags PVID|UNTAGGED, vid 1
            )
        );
        assert_eq!(
            hex(&msgs[1]),
            concat!(
                "2c000000", "1300", "0500", "02000000", "00000000", // SETLINK, seq 2
                "07", "00", "0000", "09000000", "00000000", "00000000", "0c00", "1a80", "0800",
                "0200", "0600", "0a00", // vid 10
            )
        );
        let trunk = port_vlan_msg(3, 9, 20, false, true).unwrap();
        assert_eq!(&hex(&trunk)[hex(&trunk).len() - 8..], "00001400");
        assert!(matches!(
            vlan_filtering_msg(1, 0, true),
            Err(VlanError::IfIndex(0))
        ));
    }

    #[test]
    fn acknowledgements() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(parse_ack(&ack).is_ok());
        ack[16..20].copy_from_slice(&(-95i32).to_ne_bytes()); // EOPNOTSUPP
        match parse_ack(&ack) {
            Err(VlanError::Kernel(e)) => assert_eq!(e.raw_os_error(), Some(95)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_ack(&[0; 8]), Err(VlanError::Reply(8))));
    }
}
