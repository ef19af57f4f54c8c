//! Configuration files the builder writes into the Debian root filesystem and onto the EFI
//! system partition. All pure; each has a golden file in `src/golden/`.
//!
//! Invariants:
//! - The root filesystem is named by its ext4 UUID everywhere (fstab, kernel command line,
//!   GRUB's `search`), never by a device name: the disk may be virtio-blk, virtio-scsi or
//!   SATA in the VM.
//! - The kernel command line ends with `console=ttyS0,115200n8`, so `/dev/console` (kernel
//!   messages, systemd status) is the serial port, and GRUB talks to the same port at the
//!   same speed.
//! - Nothing written here identifies one machine: machine-id and SSH host keys are created
//!   at first boot (see the crate docs), the hostname comes from cloud-init.

use thiserror::Error;

/// Serial port and speed of the console, GRUB's terminal and the getty.
pub const SERIAL_TTY: &str = "ttyS0";
pub const SERIAL_SPEED: u32 = 115_200;
/// Hostname until cloud-init sets the VM's own.
pub const DEFAULT_HOSTNAME: &str = "debian";
/// Mount point of the EFI system partition in the guest.
pub const ESP_MOUNT_POINT: &str = "/boot/efi";
/// Debian mirror used when the options name none.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Debian's security archive (for the image's apt sources, not used while building).
pub const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("mirror {0:?} is not an http:// or https:// URL of plain characters")]
    BadMirror(String),
}

/// Identifiers the configuration refers to (derived by the builder, see `layout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// ext4 UUID of the root filesystem, lower-case `8-4-4-4-12` hex.
    pub root_uuid: String,
    /// FAT volume ID of the EFI system partition.
    pub esp_volume_id: u32,
}

impl Identity {
    /// The volume ID the way blkid and fstab spell it (`ABCD-1234`).
    pub fn esp_uuid(&self) -> String {
        format!(
            "{:04X}-{:04X}",
            self.esp_volume_id >> 16,
            self.esp_volume_id & 0xffff
        )
    }
}

/// Accepts `http://` or `https://` URLs of URL-safe characters (no spaces, quotes or
/// newlines, which would break the sources file), without a trailing slash.
pub fn check_mirror(mirror: &str) -> Result<String, ConfigError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&()*+,;=%".contains(c);
    let rest = mirror
        .strip_prefix("http://")
        .or_else(|| mirror.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && mirror.len() <= 512 && mirror.chars().all(ok_char) => {
            Ok(mirror.trim_end_matches('/').to_owned())
        }
        _ => Err(ConfigError::BadMirror(mirror.chars().take(512).collect())),
    }
}

/// The kernel command line GRUB boots with.
pub fn kernel_cmdline(id: &Identity) -> String {
    format!(
        "root=UUID={} ro console=tty0 console={SERIAL_TTY},{SERIAL_SPEED}n8",
        id.root_uuid
    )
}

/// `/etc/fstab`: the root filesystem (checked at boot, remounted read-only on errors) and
/// the ESP (`nofail`: a VM whose ESP went missing still boots through BIOS).
pub fn fstab(id: &Identity) -> String {
    format!(
        "\
# <file system> <mount point> <type> <options> <dump> <pass>
UUID={root} / ext4 rw,discard,errors=remount-ro 0 1
UUID={esp} {ESP_MOUNT_POINT} vfat umask=0077,nofail 0 2
",
        root = id.root_uuid,
        esp = id.esp_uuid(),
    )
}

/// `/etc/hostname`.
pub fn hostname() -> String {
    format!("{DEFAULT_HOSTNAME}\n")
}

/// `/etc/hosts` (cloud-init's `manage_etc_hosts` is off in Debian's default configuration,
/// so the entries stay as written here until the user changes them).
pub fn hosts() -> String {
    "\
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
"
    .to_owned()
}

/// `/etc/apt/sources.list.d/debian.sources` (deb822): the release, its updates and its
/// security archive. Replaces the one-line `/etc/apt/sources.list` debootstrap writes.
pub fn apt_sources(release: &str, mirror: &str) -> String {
    format!(
        "\
Types: deb
URIs: {mirror}
Suites: {release} {release}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SECURITY_MIRROR}
Suites: {release}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"
    )
}

/// `/etc/cloud/cloud.cfg.d/90_vireo.cfg`: where cloud-init looks for its configuration and
/// how it writes the network configuration.
/// - NoCloud first: Vireo attaches a `cidata` ISO; ConfigDrive for OpenStack-style seeds;
///   `None` last so a VM without any seed still boots (fallback networking: DHCP on the
///   first NIC).
/// - The image has neither ifupdown nor netplan; systemd-networkd renders the network.
/// - `C.UTF-8`, built into libc: the `locales` package (needed for cloud-init's default
///   `en_US.UTF-8`) is not installed, and `update-locale` refuses a locale it cannot find.
pub fn cloud_init_config() -> String {
    "\
# Vireo Debian image: data sources, network renderer, locale.
datasource_list: [ NoCloud, ConfigDrive, None ]
locale: C.UTF-8
system_info:
  network:
    renderers: [ networkd ]
"
    .to_owned()
}

/// `/etc/cloud/ds-identify.cfg`: cloud-init runs even when no data source is found (a VM
/// created without a seed), with the `None` data source: fallback networking (DHCP on the
/// first NIC), SSH host keys, the default user. cloud-init's default policy would disable
/// itself for the boot instead, leaving the VM without network.
pub fn ds_identify_config() -> String {
    "policy: search,found=all,maybe=all,notfound=enabled\n".to_owned()
}

/// Name of the unit that makes SSH host keys when none exist.
pub const HOST_KEYS_UNIT: &str = "vireo-ssh-host-keys.service";

/// A first-boot unit that makes SSH host keys if nothing else did (cloud-init's ssh module
/// normally does; not when cloud-init is disabled), so sshd always starts.
pub fn host_keys_unit() -> String {
    "\
[Unit]
Description=Generate SSH host keys missing on first boot (Vireo)
After=cloud-init.service
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"
    .to_owned()
}

/// Units enabled in the image (`systemctl enable` in the root). qemu-guest-agent is not in
/// the list: Debian starts it from a udev rule when its virtio port appears.
pub const ENABLED_UNITS: [&str; 4] = [
    "ssh.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    HOST_KEYS_UNIT,
];

/// Symlinks that enable the serial getty on [`SERIAL_TTY`] whatever the kernel command line
/// says (systemd's generator only adds it for the last `console=`): `(link, target)`.
pub fn serial_getty_links() -> Vec<(String, String)> {
    vec![(
        format!("etc/systemd/system/getty.target.wants/serial-getty@{SERIAL_TTY}.service"),
        "/lib/systemd/system/serial-getty@.service".to_owned(),
    )]
}

/// Where GRUB's configuration, prefix and EFI loader live on the ESP.
pub const GRUB_PREFIX: &str = "/grub";
pub const EFI_LOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";

/// `grub.cfg` on the ESP, read by the BIOS and UEFI GRUB images alike: finds the root
/// filesystem by UUID and boots Debian's `/vmlinuz` and `/initrd.img` links, which the
/// kernel packages keep pointing at the newest kernel, so kernel updates inside the guest
/// boot without regenerating this file.
pub fn grub_cfg(id: &Identity, release_title: &str) -> String {
    format!(
        "\
# Vireo Debian image: shared by the BIOS (i386-pc) and UEFI (x86_64-efi) GRUB images.
serial --unit=0 --speed={SERIAL_SPEED} --word=8 --parity=no --stop=1
terminal_input serial console
terminal_output serial console
set timeout=1
set default=0
search --no-floppy --fs-uuid --set=root {uuid}

menuentry \"{release_title}\" {{
\techo \"vireo-debian: GRUB (${{grub_platform}}) loading /vmlinuz\"
\tlinux /vmlinuz {cmdline}
\tinitrd /initrd.img
}}
",
        uuid = id.root_uuid,
        cmdline = kernel_cmdline(id),
    )
}

/// Title of the boot entry, e.g. `Debian GNU/Linux (bookworm)`.
pub fn release_title(release: &str) -> String {
    format!("Debian GNU/Linux ({release})")
}

/// Every file written into the root filesystem: `(path relative to the root, contents)`.
pub fn root_files(id: &Identity, release: &str, mirror: &str) -> Vec<(&'static str, String)> {
    vec![
        ("etc/fstab", fstab(id)),
        ("etc/hostname", hostname()),
        ("etc/hosts", hosts()),
        (
            "etc/apt/sources.list.d/debian.sources",
            apt_sources(release, mirror),
        ),
        ("etc/cloud/cloud.cfg.d/90_vireo.cfg", cloud_init_config()),
        ("etc/cloud/ds-identify.cfg", ds_identify_config()),
        (
            "etc/systemd/system/vireo-ssh-host-keys.service",
            host_keys_unit(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            root_uuid: "0b1d2c3e-4f50-4617-8a9b-0c1d2e3f4a5b".into(),
            esp_volume_id: 0x1234_abcd,
        }
    }

    #[test]
    fn goldens() {
        let id = id();
        assert_eq!(fstab(&id), include_str!("golden/fstab"));
        assert_eq!(
            grub_cfg(&id, &release_title("bookworm")),
            include_str!("golden/grub.cfg")
        );
        assert_eq!(cloud_init_config(), include_str!("golden/90_vireo.cfg"));
        assert_eq!(ds_identify_config(), include_str!("golden/ds-identify.cfg"));
        assert_eq!(
            host_keys_unit(),
            include_str!("golden/vireo-ssh-host-keys.service")
        );
        assert_eq!(
            apt_sources("bookworm", DEFAULT_MIRROR),
            include_str!("golden/debian.sources")
        );
        assert_eq!(
            serial_getty_links(),
            [(
                "etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service".to_owned(),
                "/lib/systemd/system/serial-getty@.service".to_owned()
            )]
        );
    }

    #[test]
    fn host_keys_unit_is_written_and_enabled() {
        let files = root_files(&id(), "bookworm", DEFAULT_MIRROR);
        let path = format!("etc/systemd/system/{HOST_KEYS_UNIT}");
        assert!(files.iter().any(|(p, _)| *p == path));
        assert!(ENABLED_UNITS.contains(&HOST_KEYS_UNIT));
    }

    #[test]
    fn esp_uuid_is_blkid_style() {
        assert_eq!(id().esp_uuid(), "1234-ABCD");
    }

    #[test]
    fn cmdline_ends_on_the_serial_console_and_names_root_by_uuid() {
        let line = kernel_cmdline(&id());
        assert!(line.starts_with("root=UUID=0b1d2c3e-4f50-4617-8a9b-0c1d2e3f4a5b "));
        assert!(line.ends_with(" console=ttyS0,115200n8"));
    }

    #[test]
    fn mirrors() {
        assert_eq!(
            check_mirror("http://deb.debian.org/debian/").unwrap(),
            "http://deb.debian.org/debian"
        );
        check_mirror("https://mirror.example:8443/debian").unwrap();
        for bad in [
            "ftp://x/debian",
            "http://",
            "http://a b",
            "http://a\nURIs: http://evil",
            "file:///srv",
            "--no-check-gpg",
        ] {
            assert!(check_mirror(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn root_files_are_relative_and_distinct() {
        let files = root_files(&id(), "bookworm", DEFAULT_MIRROR);
        let mut paths: Vec<_> = files.iter().map(|(p, _)| *p).collect();
        assert!(paths
            .iter()
            .all(|p| !p.starts_with('/') && !p.contains("..")));
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), files.len());
    }
}
