//! What goes into a Debian image: the release, the packages debootstrap installs on top of
//! its `minbase` variant, and validation of both (they may come from an API request).
//!
//! Invariants:
//! - [`package_list`] is sorted, free of duplicates, and always contains [`BASE_PACKAGES`];
//!   extra packages can add to the image but never remove what makes it boot and answer.
//! - Every name handed to debootstrap satisfies Debian policy's package-name grammar
//!   (`[a-z0-9][a-z0-9+.-]+`), so no name can be read as an option or contain a comma (the
//!   separator of debootstrap's `--include`).

use thiserror::Error;

/// Releases the builder knows how to configure (the serial getty, cloud-init renderer and
/// apt sources below are written for these).
pub const SUPPORTED_RELEASES: [&str; 1] = ["bookworm"];
/// Release built when the request names none.
pub const DEFAULT_RELEASE: &str = "bookworm";
/// Most extra packages a request may name (bounds the argv and the build time).
pub const MAX_EXTRA_PACKAGES: usize = 64;
/// Longest package name accepted.
const MAX_NAME_LEN: usize = 100;

/// Installed in every image on top of debootstrap's `minbase` variant. Why each is there:
/// - `linux-image-cloud-amd64`: Debian's kernel for virtual machines (virtio, no hardware
///   drivers); its postinst builds the initramfs and the `/vmlinuz`, `/initrd.img` links
///   GRUB boots.
/// - `systemd-sysv`, `udev`, `dbus`: init, device events (udev starts qemu-guest-agent when
///   its virtio port appears), and the bus `hostnamectl` (used by cloud-init) talks over.
/// - `systemd-resolved`: DNS for the networkd configuration cloud-init renders.
/// - `cloud-init`, `cloud-guest-utils` (growpart: the root partition grows to the disk),
///   `qemu-guest-agent`, `openssh-server`, `sudo` (cloud-init's default user).
/// - `ca-certificates`, `netbase`, `iproute2`, `procps`, `less`: what people expect of a
///   small server.
/// - `python3-cffi-backend`: debootstrap's resolver does not follow dependencies on virtual
///   packages; `python3-cryptography` (via cloud-init) needs `python3-cffi-backend-api-*`,
///   which only this package provides.
pub const BASE_PACKAGES: [&str; 16] = [
    "ca-certificates",
    "cloud-guest-utils",
    "cloud-init",
    "dbus",
    "iproute2",
    "less",
    "linux-image-cloud-amd64",
    "netbase",
    "openssh-server",
    "procps",
    "python3-cffi-backend",
    "qemu-guest-agent",
    "sudo",
    "systemd-resolved",
    "systemd-sysv",
    "udev",
];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PackageError {
    #[error("release {0:?} is not supported (supported: {list})", list = SUPPORTED_RELEASES.join(", "))]
    UnsupportedRelease(String),
    #[error("{0:?} is not a Debian package name")]
    BadName(String),
    #[error("{count} extra packages requested, at most {MAX_EXTRA_PACKAGES} are allowed")]
    TooMany { count: usize },
}

/// Checks `release` against [`SUPPORTED_RELEASES`].
pub fn check_release(release: &str) -> Result<(), PackageError> {
    if SUPPORTED_RELEASES.contains(&release) {
        Ok(())
    } else {
        Err(PackageError::UnsupportedRelease(
            release.chars().take(MAX_NAME_LEN).collect(),
        ))
    }
}

/// Debian policy 5.6.1: lower case letters, digits, `+`, `-`, `.`; at least two characters;
/// starts with a letter or digit.
pub fn is_package_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (2..=MAX_NAME_LEN).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

/// The sorted, deduplicated union of [`BASE_PACKAGES`] and `extra` (validated).
pub fn package_list(extra: &[String]) -> Result<Vec<String>, PackageError> {
    if extra.len() > MAX_EXTRA_PACKAGES {
        return Err(PackageError::TooMany { count: extra.len() });
    }
    if let Some(bad) = extra.iter().find(|p| !is_package_name(p)) {
        return Err(PackageError::BadName(
            bad.chars().take(MAX_NAME_LEN).collect(),
        ));
    }
    let mut list: Vec<String> = BASE_PACKAGES
        .iter()
        .map(|p| (*p).to_owned())
        .chain(extra.iter().cloned())
        .collect();
    list.sort();
    list.dedup();
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_packages_are_sorted_valid_names() {
        let mut sorted = BASE_PACKAGES.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, BASE_PACKAGES);
        assert!(BASE_PACKAGES.iter().all(|p| is_package_name(p)));
    }

    #[test]
    fn list_merges_extras_and_keeps_the_base() {
        let list = package_list(&["vim".into(), "sudo".into(), "curl".into()]).unwrap();
        assert_eq!(list.len(), BASE_PACKAGES.len() + 2);
        assert!(list.windows(2).all(|w| w[0] < w[1]));
        for p in BASE_PACKAGES.iter().chain(&["vim", "curl"]) {
            assert!(list.iter().any(|l| l == p), "{p}");
        }
        assert_eq!(package_list(&[]).unwrap(), BASE_PACKAGES);
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "a",
            "-rf",
            "--foreign",
            "Vim",
            "a,b",
            "a b",
            "pkg;reboot",
            "ä",
            ".hidden",
        ] {
            assert!(
                matches!(package_list(&[bad.into()]), Err(PackageError::BadName(_))),
                "{bad:?}"
            );
        }
        for good in ["g++", "libstdc++6", "python3.11", "0ad", "xz-utils"] {
            assert!(is_package_name(good), "{good}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(!is_package_name(&long));
    }

    #[test]
    fn too_many_extras_are_refused() {
        let extras: Vec<String> = (0..=MAX_EXTRA_PACKAGES).map(|i| format!("p{i}")).collect();
        assert_eq!(
            package_list(&extras),
            Err(PackageError::TooMany {
                count: MAX_EXTRA_PACKAGES + 1
            })
        );
    }

    #[test]
    fn releases() {
        check_release("bookworm").unwrap();
        assert!(check_release("sid").is_err());
        assert!(check_release(&"x".repeat(10_000)).is_err());
    }
}
