//! Choosing a free private /24 for a new managed network.
//!
//! Pure: the caller passes every CIDR already in use (host routes and addresses, other Vireo
//! networks). Default routes (prefix 0) are ignored because they describe "everything else",
//! not a local network. Candidates are tried in a fixed order — 10.0.0.0/8, then
//! 172.16.0.0/12, then 192.168.0.0/16, each in ascending /24 order — so the choice is
//! deterministic for a given input.

use crate::addr::Ipv4Cidr;
use std::net::Ipv4Addr;

/// The private ranges candidates are drawn from, in preference order.
const POOLS: [(Ipv4Addr, u8); 3] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
];

/// The first candidate /24 that overlaps none of `in_use` (prefix-0 entries ignored), or
/// `None` if all 69,888 candidates are taken.
pub fn choose_free_subnet(in_use: &[Ipv4Cidr]) -> Option<Ipv4Cidr> {
    let relevant: Vec<&Ipv4Cidr> = in_use.iter().filter(|c| c.prefix() > 0).collect();
    POOLS.iter().find_map(|&(base, prefix)| {
        let count = 1u32 << (24 - u32::from(prefix));
        (0..count).find_map(|i| {
            let candidate =
                Ipv4Cidr::containing(Ipv4Addr::from(u32::from(base) + (i << 8)), 24).ok()?;
            (!relevant.iter().any(|used| used.overlaps(&candidate))).then_some(candidate)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_host_gets_first_candidate() {
        assert_eq!(choose_free_subnet(&[]), Some(c("10.0.0.0/24")));
    }

    #[test]
    fn default_route_is_ignored_and_overlaps_skipped() {
        let used = [c("0.0.0.0/0"), c("10.0.0.0/23"), c("10.0.3.0/24")];
        assert_eq!(choose_free_subnet(&used), Some(c("10.0.2.0/24")));
    }

    #[test]
    fn falls_through_pools_in_order() {
        assert_eq!(
            choose_free_subnet(&[c("10.0.0.0/8")]),
            Some(c("172.16.0.0/24"))
        );
        assert_eq!(
            choose_free_subnet(&[c("10.0.0.0/8"), c("172.16.0.0/12")]),
            Some(c("192.168.0.0/24"))
        );
        assert_eq!(
            choose_free_subnet(&[c("10.0.0.0/8"), c("172.16.0.0/12"), c("192.168.0.0/16")]),
            None
        );
    }

    #[test]
    fn result_never_overlaps_input() {
        // A host route inside a candidate (a /32) still blocks that candidate.
        let used = [c("10.0.0.7/32"), c("10.0.1.128/25")];
        let got = choose_free_subnet(&used).unwrap();
        assert_eq!(got, c("10.0.2.0/24"));
        assert!(used.iter().all(|u| !u.overlaps(&got)));
    }
}
