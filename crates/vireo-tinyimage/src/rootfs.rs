//! The tiny guest's root filesystem (the initramfs contents) as a pure function of its inputs.
//!
//! Layout:
//! - `/bin/busybox` with a symlink per applet (`busybox --list-full` paths), `/init` → busybox
//!   (busybox runs as init when invoked as PID 1 and reads `/etc/inittab`);
//! - `/usr/sbin/qemu-ga` plus the shared libraries at the paths `ldd` reported on the host, and
//!   the dynamic loader at the path the binary names;
//! - kernel modules under `/lib/modules/<version>/…` and `/etc/vireo/modules`, their load
//!   order (absolute paths, dependencies first);
//! - the scripts from `assets/rootfs` (see `/etc/inittab` there for the boot flow) with
//!   `@NAME@` placeholders rendered from [`GuestSettings`];
//! - `/dev/console` (the kernel opens it for init before devtmpfs is mounted) and the usual
//!   empty mount points.
//!
//! Invariants: the same inputs give the same [`Archive`]; every placeholder is rendered (an
//! unknown or unrendered `@NAME@` is an error); settings values are restricted to characters
//! that need no shell quoting; all applets the scripts rely on must exist.

use std::collections::BTreeMap;

use crate::cpio::{Archive, CpioError};

/// Errors while assembling the root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("building the archive")]
    Archive(#[from] CpioError),
    #[error("busybox lacks the applet {applet:?}, which the guest scripts use")]
    MissingApplet { applet: &'static str },
    #[error("template {template} uses unknown placeholder @{name}@")]
    UnknownPlaceholder { template: String, name: String },
    #[error("guest setting {name} = {value:?} must be 1-64 characters of [A-Za-z0-9._-]")]
    BadSetting { name: &'static str, value: String },
}

/// Values rendered into the guest scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSettings {
    pub ready_marker: String,
    pub agent_port_name: String,
    pub data_disk_serial: String,
    pub default_hostname: String,
}

/// A kernel module to install, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestModule {
    /// Path relative to `/lib/modules/<version>/`, ending in `.ko`.
    pub rel_path: String,
    pub data: Vec<u8>,
}

/// A file copied from the host (shared library or loader) to the same path in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    pub guest_path: String,
    pub data: Vec<u8>,
}

/// Everything the root filesystem is made of.
#[derive(Debug, Clone)]
pub struct RootfsInputs {
    pub busybox: Vec<u8>,
    /// Applet paths relative to `/`, e.g. `sbin/acpid`.
    pub applets: Vec<String>,
    pub qemu_ga: Vec<u8>,
    pub host_files: Vec<HostFile>,
    pub kernel_version: String,
    pub modules: Vec<GuestModule>,
    pub settings: GuestSettings,
    /// Written to `/etc/vireo/release` (what the image was built from).
    pub release: String,
}

/// Applets the guest scripts call; a busybox without one of them cannot run the image.
pub const REQUIRED_APPLETS: &[&str] = &[
    "acpid", "awk", "cat", "dd", "grep", "halt", "hexdump", "hostname", "init", "insmod", "ip",
    "kill", "ls", "mkdir", "mke2fs", "mount", "mv", "pidof", "poweroff", "reboot", "sh", "sleep",
    "sync", "touch", "tr", "udhcpc", "umount", "usleep", "wc",
];

/// Guest scripts and configuration: (guest path, permissions, template).
const ASSETS: &[(&str, u32, &str)] = &[
    (
        "etc/inittab",
        0o644,
        include_str!("../assets/rootfs/etc/inittab"),
    ),
    (
        "etc/vireo/boot",
        0o755,
        include_str!("../assets/rootfs/etc/vireo/boot"),
    ),
    (
        "etc/vireo/agent",
        0o755,
        include_str!("../assets/rootfs/etc/vireo/agent"),
    ),
    (
        "etc/vireo/announce",
        0o755,
        include_str!("../assets/rootfs/etc/vireo/announce"),
    ),
    (
        "etc/vireo/console",
        0o755,
        include_str!("../assets/rootfs/etc/vireo/console"),
    ),
    (
        "etc/vireo/dhcp",
        0o755,
        include_str!("../assets/rootfs/etc/vireo/dhcp"),
    ),
    (
        "etc/vireo/stop",
        0o755,
        include_str!("../assets/rootfs/etc/vireo/stop"),
    ),
    (
        "sbin/shutdown",
        0o755,
        include_str!("../assets/rootfs/sbin/shutdown"),
    ),
    (
        "etc/acpi/PWRF/00000080",
        0o755,
        include_str!("../assets/rootfs/etc/acpi/PWRF/00000080"),
    ),
    (
        "etc/profile",
        0o644,
        include_str!("../assets/rootfs/etc/profile"),
    ),
    (
        "etc/passwd",
        0o644,
        include_str!("../assets/rootfs/etc/passwd"),
    ),
    (
        "etc/group",
        0o644,
        include_str!("../assets/rootfs/etc/group"),
    ),
];

/// Files the image provides itself; applets of the same name are not linked over them.
const OWN_BINARIES: &[&str] = &["sbin/shutdown"];

impl GuestSettings {
    fn placeholders(&self) -> Result<BTreeMap<&'static str, &str>, RootfsError> {
        let values = [
            ("READY_MARKER", "ready_marker", &self.ready_marker),
            ("AGENT_PORT_NAME", "agent_port_name", &self.agent_port_name),
            ("DATA_SERIAL", "data_disk_serial", &self.data_disk_serial),
            (
                "DEFAULT_HOSTNAME",
                "default_hostname",
                &self.default_hostname,
            ),
        ];
        let mut map = BTreeMap::new();
        for (placeholder, name, value) in values {
            let ok = (1..=64).contains(&value.len())
                && !value.starts_with('-')
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                return Err(RootfsError::BadSetting {
                    name,
                    value: value.clone(),
                });
            }
            map.insert(placeholder, value.as_str());
        }
        Ok(map)
    }
}

/// Replaces every `@NAME@` (NAME = `[A-Z_]+`) in `template`; unknown names are errors.
/// An `@` that does not start such a placeholder is copied unchanged.
pub fn render(
    template_name: &str,
    template: &str,
    values: &BTreeMap<&str, &str>,
) -> Result<String, RootfsError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('@') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('@') {
            let name = &after[..name_len];
            let value = values
                .get(name)
                .ok_or_else(|| RootfsError::UnknownPlaceholder {
                    template: template_name.to_owned(),
                    name: name.to_owned(),
                })?;
            out.push_str(value);
            rest = &after[name_len + 1..];
        } else {
            out.push('@');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The `/etc/vireo/modules` file: absolute module paths in load order.
pub fn modules_list(kernel_version: &str, modules: &[GuestModule]) -> String {
    let mut text = String::from(
        "# Kernel modules loaded by /etc/vireo/boot, in this order (dependencies first).\n",
    );
    for m in modules {
        text.push_str(&format!("/lib/modules/{kernel_version}/{}\n", m.rel_path));
    }
    text
}

/// Builds the root filesystem archive; see the module docs.
pub fn assemble(inputs: &RootfsInputs) -> Result<Archive, RootfsError> {
    let placeholders = inputs.settings.placeholders()?;
    for applet in REQUIRED_APPLETS {
        let present = inputs
            .applets
            .iter()
            .any(|a| a.rsplit('/').next() == Some(*applet));
        if !present {
            return Err(RootfsError::MissingApplet { applet });
        }
    }

    let mut a = Archive::new();
    for (dir, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("data", 0o755),
        ("mnt", 0o755),
        ("root", 0o700),
        ("var/log", 0o755),
    ] {
        a.dir(dir, mode)?;
    }
    a.symlink("var/run", "../run")?;
    a.char_device("dev/console", 0o600, 5, 1)?;

    a.file("bin/busybox", 0o755, inputs.busybox.clone())?;
    a.symlink("init", "/bin/busybox")?;
    for applet in &inputs.applets {
        let skip = applet == "bin/busybox"
            || applet == "linuxrc"
            || OWN_BINARIES.contains(&applet.as_str());
        if !skip {
            a.symlink(applet, "/bin/busybox")?;
        }
    }

    a.file("usr/sbin/qemu-ga", 0o755, inputs.qemu_ga.clone())?;
    for lib in &inputs.host_files {
        a.file(&lib.guest_path, 0o755, lib.data.clone())?;
    }

    for module in &inputs.modules {
        let path = format!("lib/modules/{}/{}", inputs.kernel_version, module.rel_path);
        a.file(&path, 0o644, module.data.clone())?;
    }
    a.file(
        "etc/vireo/modules",
        0o644,
        modules_list(&inputs.kernel_version, &inputs.modules).into_bytes(),
    )?;
    a.file(
        "etc/vireo/release",
        0o644,
        inputs.release.clone().into_bytes(),
    )?;

    for (path, mode, template) in ASSETS {
        let text = render(path, template, &placeholders)?;
        a.file(path, *mode, text.into_bytes())?;
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::EntryKind;

    fn settings() -> GuestSettings {
        GuestSettings {
            ready_marker: "VIREO-GUEST-READY".into(),
            agent_port_name: "org.qemu.guest_agent.0".into(),
            data_disk_serial: "data".into(),
            default_hostname: "vireo-tiny".into(),
        }
    }

    fn inputs() -> RootfsInputs {
        let mut applets: Vec<String> = REQUIRED_APPLETS
            .iter()
            .map(|a| match *a {
                "sh" | "cat" | "dd" | "grep" | "hostname" | "kill" | "ls" | "mkdir" | "mount"
                | "mv" | "pidof" | "sleep" | "sync" | "touch" | "umount" | "usleep" => {
                    format!("bin/{a}")
                }
                "awk" | "hexdump" | "tr" | "wc" => format!("usr/bin/{a}"),
                _ => format!("sbin/{a}"),
            })
            .collect();
        applets.push("linuxrc".into());
        applets.push("bin/busybox".into());
        applets.sort();
        RootfsInputs {
            busybox: b"BUSYBOX".to_vec(),
            applets,
            qemu_ga: b"QEMU-GA".to_vec(),
            host_files: vec![
                HostFile {
                    guest_path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
                    data: b"LIBC".to_vec(),
                },
                HostFile {
                    guest_path: "/lib64/ld-linux-x86-64.so.2".into(),
                    data: b"LD".to_vec(),
                },
            ],
            kernel_version: "6.1.0-99-cloud-amd64".into(),
            modules: vec![
                GuestModule {
                    rel_path: "kernel/drivers/virtio/virtio_ring.ko".into(),
                    data: b"RING".to_vec(),
                },
                GuestModule {
                    rel_path: "kernel/drivers/virtio/virtio.ko".into(),
                    data: b"VIRTIO".to_vec(),
                },
            ],
            settings: settings(),
            release: "linux-image-6.1.0-99-cloud-amd64 6.1.999-1\n".into(),
        }
    }

    /// One line per entry: mode, path, and what it is; file contents are summarised by size
    /// except for the generated files, which are shown in full further down the golden file.
    fn listing(archive: &Archive) -> String {
        let mut out = String::new();
        for (path, entry) in archive.entries() {
            let line = match &entry.kind {
                EntryKind::Directory => format!("d {:04o} {path}\n", entry.permissions),
                EntryKind::File { data } => {
                    format!(
                        "f {:04o} {path} ({} bytes)\n",
                        entry.permissions,
                        data.len()
                    )
                }
                EntryKind::Symlink { target } => format!("l      {path} -> {target}\n"),
                EntryKind::CharDevice { major, minor } => {
                    format!("c {:04o} {path} {major}:{minor}\n", entry.permissions)
                }
                EntryKind::HardLink { target } => format!("h      {path} => {target}\n"),
            };
            out.push_str(&line);
        }
        for generated in ["etc/vireo/modules", "etc/inittab"] {
            if let Some(EntryKind::File { data }) = archive.get(generated).map(|e| &e.kind) {
                out.push_str(&format!(
                    "\n==> {generated}\n{}",
                    String::from_utf8_lossy(data)
                ));
            }
        }
        out
    }

    /// Golden: the full layout of the root filesystem for fixed inputs. Regenerate with
    /// `UPDATE_GOLDEN=1 cargo test -p vireo-tinyimage rootfs` after an intended change.
    #[test]
    fn rootfs_layout_matches_golden() {
        let archive = assemble(&inputs()).unwrap();
        let actual = listing(&archive);
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/rootfs-listing.txt");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &actual).unwrap();
        }
        let expected = std::fs::read_to_string(&golden).unwrap();
        assert_eq!(
            actual,
            expected,
            "rootfs layout differs from {}",
            golden.display()
        );
    }

    #[test]
    fn every_asset_renders_without_leftover_placeholders() {
        let archive = assemble(&inputs()).unwrap();
        for (path, _, _) in ASSETS {
            let Some(EntryKind::File { data }) = archive.get(path).map(|e| &e.kind) else {
                panic!("{path} missing");
            };
            let text = String::from_utf8(data.clone()).unwrap();
            let leftovers = render(path, &text, &BTreeMap::new());
            assert!(leftovers.is_ok(), "{path} still has a placeholder");
            if path.starts_with("etc/vireo/") || path.starts_with("sbin/") {
                assert!(text.starts_with("#!/bin/sh\n"), "{path} lacks a shebang");
            }
        }
        let Some(EntryKind::File { data }) = archive.get("etc/vireo/announce").map(|e| &e.kind)
        else {
            panic!("announce missing");
        };
        assert!(String::from_utf8_lossy(data).contains("echo \"VIREO-GUEST-READY\" >/dev/ttyS0"));
    }

    #[test]
    fn render_substitutes_and_rejects_unknown_names() {
        let values: BTreeMap<&str, &str> = [("A_B", "x")].into();
        assert_eq!(
            render("t", "@A_B@ user@host @ @@ @lower@ @A_B", &values).unwrap(),
            "x user@host @ @@ @lower@ @A_B"
        );
        assert!(matches!(
            render("t", "@NOPE@", &values),
            Err(RootfsError::UnknownPlaceholder { name, .. }) if name == "NOPE"
        ));
    }

    #[test]
    fn settings_and_applets_are_validated() {
        let mut bad = inputs();
        bad.settings.ready_marker = "READY; rm -rf /".into();
        assert!(matches!(
            assemble(&bad),
            Err(RootfsError::BadSetting {
                name: "ready_marker",
                ..
            })
        ));
        let mut missing = inputs();
        missing.applets.retain(|a| !a.ends_with("/udhcpc"));
        assert!(matches!(
            assemble(&missing),
            Err(RootfsError::MissingApplet { applet: "udhcpc" })
        ));
    }

    #[test]
    fn assembly_is_deterministic() {
        let a = assemble(&inputs()).unwrap().to_newc().unwrap();
        let b = assemble(&inputs()).unwrap().to_newc().unwrap();
        assert_eq!(a, b);
    }
}
