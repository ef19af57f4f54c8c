//! Builds Vireo's "tiny" guest image from Debian packages: Debian's cloud kernel plus a
//! busybox initramfs that runs qemu-guest-agent, mounts a data disk, does DHCP, shuts down on
//! request (agent or ACPI power button) and offers a root shell on the serial console.
//!
//! [`build`] resolves `linux-image-cloud-amd64` to its versioned kernel package, fetches that,
//! `busybox-static` and `qemu-guest-agent` with `apt-get download` into a cache, extracts them,
//! and writes three artefacts into the output directory: the kernel (`tiny-vmlinuz`), the
//! gzip-compressed newc initramfs (`tiny-initrd.img`) and the [`TinyImage`] description
//! (`tiny.json`). The guest-side behaviour is documented in `assets/rootfs/etc/inittab`.
//! [`disk::build_disk`] puts the same kernel and initramfs on a GPT disk (`tiny-disk.qcow2`)
//! that boots through firmware, SeaBIOS and OVMF alike, with GRUB.
//!
//! Invariants:
//! - Deterministic: the same packages and host libraries give byte-identical artefacts (sorted
//!   cpio entries, fixed mtimes, gzip header without name or time).
//! - Artefacts are written to temporary files in the output directory and renamed into place
//!   only after all of them are complete; a failed build leaves no partial artefact behind
//!   (temporary files are removed on every error path).
//! - A current cache makes a rebuild local and fast: only `apt-cache` queries, `ldd`, `dpkg -S`
//!   and the initramfs assembly run (see [`apt`] for the cache layout).

pub mod apt;
pub mod cpio;
pub mod disk;
pub mod host;
pub mod kmod;
pub mod rootfs;

pub use disk::{build_disk, DiskBuildOptions, DiskError, TinyDisk};

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Line the guest prints on ttyS0 once qemu-ga is serving its port.
pub const READY_MARKER: &str = "VIREO-GUEST-READY";
/// virtio-serial port name qemu-ga is started on.
pub const AGENT_PORT_NAME: &str = "org.qemu.guest_agent.0";
/// Serial of the virtio disk the guest formats (if blank) and mounts at `/data`.
pub const DATA_DISK_SERIAL: &str = "data";
/// Hostname unless the kernel command line has `vireo.hostname=NAME`.
pub const DEFAULT_HOSTNAME: &str = "vireo-tiny";
/// Kernel command line: serial console, quiet boot (the readiness line still shows), and
/// reboot immediately on panic (QEMU with `-no-reboot` then exits instead of hanging).
pub const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1";
/// Suggested size of the data disk the daemon creates for a tiny VM.
pub const DEFAULT_DATA_DISK_BYTES: u64 = 128 << 20;

/// Debian meta package whose dependency names the kernel package.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
pub const AGENT_PACKAGE: &str = "qemu-guest-agent";

/// virtio drivers: modules in Debian's cloud kernel, loaded in this order.
pub const VIRTIO_MODULES: [&str; 10] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
];

/// What else the guest uses, loaded after [`VIRTIO_MODULES`] unless built into the kernel:
/// the data disk filesystem (ext2 via the ext4 driver), ISO 9660 on a virtio-scsi CD-ROM
/// (cloud-init seeds; q35's AHCI is not in the cloud kernel), the virtio RNG, and the ACPI
/// power button with evdev (busybox acpid reads the button from `/dev/input/event*`).
pub const EXTRA_MODULES: [&str; 8] = [
    "ext4",
    "virtio_scsi",
    "cdrom",
    "sr_mod",
    "isofs",
    "virtio_rng",
    "evdev",
    "button",
];

const KERNEL_FILE: &str = "tiny-vmlinuz";
const INITRD_FILE: &str = "tiny-initrd.img";
const DESCRIPTION_FILE: &str = "tiny.json";

/// Where a package in the manifest came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageOrigin {
    /// Fetched with `apt-get download` and extracted.
    Downloaded,
    /// Shared libraries copied from the build host's installed package.
    Host,
}

/// One Debian package the image contains files from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub package: String,
    pub version: String,
    pub origin: PackageOrigin,
}

/// The built image, as the daemon records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TinyImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub kernel_version: String,
    pub default_data_disk_bytes: u64,
    pub ready_marker: String,
    pub agent_port_name: String,
    pub data_disk_serial: String,
    /// Kernel modules in the order the guest loads them.
    pub modules: Vec<String>,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    pub initrd_bytes: u64,
    /// Packages (name, version, origin), sorted by name.
    pub manifest: Vec<ManifestEntry>,
}

/// Inputs of [`build`].
pub struct BuildOptions<'a> {
    /// Downloaded `.deb` files and extracted trees, reused across builds.
    pub cache_dir: PathBuf,
    /// Where the artefacts land (created if missing).
    pub out_dir: PathBuf,
    /// Receives human-readable progress lines.
    pub progress: Option<&'a dyn Fn(&str)>,
}

impl std::fmt::Debug for BuildOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("cache_dir", &self.cache_dir)
            .field("out_dir", &self.out_dir)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Errors from [`build`].
#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    #[error("fetching Debian packages")]
    Packages(#[source] apt::AptError),
    #[error("inspecting the build host")]
    Host(#[source] host::HostError),
    #[error("collecting kernel modules")]
    Modules(#[source] kmod::KmodError),
    #[error("assembling the initramfs")]
    Rootfs(#[source] rootfs::RootfsError),
    #[error("serialising the initramfs")]
    Cpio(#[source] cpio::CpioError),
    #[error("package {package} has no {what}")]
    PackageLayout { package: String, what: String },
    #[error("module {module} was built for kernel {vermagic:?}, not {kernel_version}")]
    ModuleVersion {
        module: String,
        vermagic: String,
        kernel_version: String,
    },
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the image description")]
    Describe(#[source] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TinyError + '_ {
    move |source| TinyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Builds (or rebuilds from cache) the tiny image; see the crate docs.
pub fn build(opts: &BuildOptions) -> Result<TinyImage, TinyError> {
    let quiet = |_: &str| {};
    let progress: &dyn Fn(&str) = opts.progress.unwrap_or(&quiet);
    let say = |msg: &str| {
        tracing::info!("{msg}");
        progress(msg);
    };

    std::fs::create_dir_all(&opts.out_dir).map_err(io_err(&opts.out_dir))?;
    let mut cache =
        apt::PackageCache::new(&opts.cache_dir, progress).map_err(TinyError::Packages)?;

    say(&format!("resolving {KERNEL_META_PACKAGE}"));
    let kernel_package = cache
        .resolve_kernel_package(KERNEL_META_PACKAGE)
        .map_err(TinyError::Packages)?;
    say(&format!(
        "using {kernel_package}, {BUSYBOX_PACKAGE}, {AGENT_PACKAGE}"
    ));
    let packages = cache
        .fetch(&[&kernel_package, BUSYBOX_PACKAGE, AGENT_PACKAGE])
        .map_err(TinyError::Packages)?;
    let [kernel_pkg, busybox_pkg, agent_pkg] = packages.as_slice() else {
        return Err(TinyError::PackageLayout {
            package: kernel_package,
            what: "complete package set".into(),
        });
    };

    let (kernel_path, kernel_version) = find_kernel(kernel_pkg)?;
    say(&format!("kernel {kernel_version}: collecting modules"));
    let modules = collect_modules(kernel_pkg, &kernel_version)?;

    let busybox_path = find_file(busybox_pkg, &["bin/busybox", "usr/bin/busybox"])?;
    let applets = host::busybox_applets(&busybox_path).map_err(TinyError::Host)?;

    say("collecting qemu-ga and its shared libraries");
    let agent_path = find_file(agent_pkg, &["usr/sbin/qemu-ga", "usr/bin/qemu-ga"])?;
    let deps = host::runtime_deps(&agent_path).map_err(TinyError::Host)?;
    let mut host_paths: Vec<PathBuf> = deps.libraries.values().cloned().collect();
    host_paths.push(deps.loader.clone());
    let host_files = host_paths
        .iter()
        .map(|p| {
            Ok(rootfs::HostFile {
                guest_path: p.to_string_lossy().into_owned(),
                data: std::fs::read(p).map_err(io_err(p))?,
            })
        })
        .collect::<Result<Vec<_>, TinyError>>()?;
    let manifest = manifest(&packages, &host_paths)?;

    let inputs = rootfs::RootfsInputs {
        busybox: std::fs::read(&busybox_path).map_err(io_err(&busybox_path))?,
        applets,
        qemu_ga: std::fs::read(&agent_path).map_err(io_err(&agent_path))?,
        host_files,
        kernel_version: kernel_version.clone(),
        modules: modules
            .iter()
            .map(|(_, m)| m.clone())
            .collect::<Vec<rootfs::GuestModule>>(),
        settings: rootfs::GuestSettings {
            ready_marker: READY_MARKER.into(),
            agent_port_name: AGENT_PORT_NAME.into(),
            data_disk_serial: DATA_DISK_SERIAL.into(),
            default_hostname: DEFAULT_HOSTNAME.into(),
        },
        release: release_text(&kernel_version, &manifest),
    };
    say("assembling the initramfs");
    let archive = rootfs::assemble(&inputs).map_err(TinyError::Rootfs)?;
    let cpio = archive.to_newc().map_err(TinyError::Cpio)?;
    let initrd = gzip(&cpio).map_err(io_err(Path::new(INITRD_FILE)))?;
    let kernel = std::fs::read(&kernel_path).map_err(io_err(&kernel_path))?;

    let image = TinyImage {
        kernel: opts.out_dir.join(KERNEL_FILE),
        initrd: opts.out_dir.join(INITRD_FILE),
        cmdline: KERNEL_CMDLINE.into(),
        kernel_version,
        default_data_disk_bytes: DEFAULT_DATA_DISK_BYTES,
        ready_marker: READY_MARKER.into(),
        agent_port_name: AGENT_PORT_NAME.into(),
        data_disk_serial: DATA_DISK_SERIAL.into(),
        modules: modules.into_iter().map(|(name, _)| name).collect(),
        kernel_sha256: hex::encode(sha2::Sha256::digest(&kernel)),
        initrd_sha256: hex::encode(sha2::Sha256::digest(&initrd)),
        initrd_bytes: initrd.len() as u64,
        manifest,
    };
    let mut description = serde_json::to_vec_pretty(&image).map_err(TinyError::Describe)?;
    description.push(b'\n');

    say(&format!(
        "writing {} (initrd {} KiB)",
        opts.out_dir.display(),
        initrd.len() / 1024
    ));
    write_all_or_nothing(
        &opts.out_dir,
        &[
            (KERNEL_FILE, &kernel),
            (INITRD_FILE, &initrd),
            (DESCRIPTION_FILE, &description),
        ],
    )?;
    Ok(image)
}

/// Reads a previously built image description from `out_dir`, if there is one.
pub fn load(out_dir: &Path) -> Result<Option<TinyImage>, TinyError> {
    let path = out_dir.join(DESCRIPTION_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(TinyError::Describe),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TinyError::Io { path, source }),
    }
}

/// `boot/vmlinuz-<version>` of the kernel package (exactly one).
fn find_kernel(pkg: &apt::CachedPackage) -> Result<(PathBuf, String), TinyError> {
    let boot = pkg.tree.join("boot");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&boot).map_err(io_err(&boot))? {
        let entry = entry.map_err(io_err(&boot))?;
        if let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("vmlinuz-"))
        {
            found.push((entry.path(), version.to_owned()));
        }
    }
    match <[_; 1]>::try_from(found) {
        Ok([kernel]) => Ok(kernel),
        Err(found) => Err(TinyError::PackageLayout {
            package: pkg.info.package.clone(),
            what: format!("single boot/vmlinuz-* (found {})", found.len()),
        }),
    }
}

/// Resolves, reads and checks the modules the guest loads (see [`VIRTIO_MODULES`] and
/// [`EXTRA_MODULES`]), in load order.
fn collect_modules(
    pkg: &apt::CachedPackage,
    kernel_version: &str,
) -> Result<Vec<(String, rootfs::GuestModule)>, TinyError> {
    let dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|base| pkg.tree.join(base).join(kernel_version))
        .find(|d| d.is_dir())
        .ok_or_else(|| TinyError::PackageLayout {
            package: pkg.info.package.clone(),
            what: format!("lib/modules/{kernel_version}"),
        })?;
    let tree = kmod::ModuleTree::open(&dir).map_err(TinyError::Modules)?;
    let requested: Vec<&str> = VIRTIO_MODULES
        .iter()
        .chain(&EXTRA_MODULES)
        .copied()
        .collect();
    let resolved = tree.resolve(&requested).map_err(TinyError::Modules)?;
    resolved
        .into_iter()
        .map(|(name, file)| {
            let data = tree.read(&file).map_err(TinyError::Modules)?;
            check_vermagic(&name, &data, kernel_version, &dir.join(&file.rel_path))?;
            Ok((
                name,
                rootfs::GuestModule {
                    rel_path: file.installed_rel_path(),
                    data,
                },
            ))
        })
        .collect()
}

/// A module built for another kernel would fail to load in the guest; catch it at build time.
fn check_vermagic(
    module: &str,
    elf: &[u8],
    kernel_version: &str,
    path: &Path,
) -> Result<(), TinyError> {
    let info = kmod::parse_modinfo(elf).map_err(|reason| {
        TinyError::Modules(kmod::KmodError::BadModule {
            path: path.to_owned(),
            reason,
        })
    })?;
    let vermagic = info
        .iter()
        .find(|(k, _)| k == "vermagic")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if vermagic.split_whitespace().next() == Some(kernel_version) {
        Ok(())
    } else {
        Err(TinyError::ModuleVersion {
            module: module.to_owned(),
            vermagic,
            kernel_version: kernel_version.to_owned(),
        })
    }
}

fn find_file(pkg: &apt::CachedPackage, candidates: &[&str]) -> Result<PathBuf, TinyError> {
    candidates
        .iter()
        .map(|c| pkg.tree.join(c))
        .find(|p| p.is_file())
        .ok_or_else(|| TinyError::PackageLayout {
            package: pkg.info.package.clone(),
            what: candidates.join(" or "),
        })
}

/// Downloaded packages plus the host packages owning the copied libraries, sorted by name.
fn manifest(
    packages: &[apt::CachedPackage],
    host_paths: &[PathBuf],
) -> Result<Vec<ManifestEntry>, TinyError> {
    let owners = host::owning_packages(host_paths).map_err(TinyError::Host)?;
    let owner_names: Vec<String> = owners
        .values()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let versions = host::installed_versions(&owner_names).map_err(TinyError::Host)?;
    let mut entries: Vec<ManifestEntry> = packages
        .iter()
        .map(|p| ManifestEntry {
            package: p.info.package.clone(),
            version: p.info.version.clone(),
            origin: PackageOrigin::Downloaded,
        })
        .chain(
            versions
                .into_iter()
                .map(|(package, version)| ManifestEntry {
                    package: package.split(':').next().unwrap_or(&package).to_owned(),
                    version,
                    origin: PackageOrigin::Host,
                }),
        )
        .collect();
    entries.sort();
    entries.dedup();
    Ok(entries)
}

/// `/etc/vireo/release`: what this image is made of, for people inside the guest.
fn release_text(kernel_version: &str, manifest: &[ManifestEntry]) -> String {
    let mut text = format!("Vireo tiny guest image\nkernel {kernel_version}\n\npackages:\n");
    for e in manifest {
        let origin = match e.origin {
            PackageOrigin::Downloaded => "downloaded",
            PackageOrigin::Host => "host libraries",
        };
        text.push_str(&format!("  {} {} ({origin})\n", e.package, e.version));
    }
    text
}

/// gzip with a fixed header (no file name, mtime 0) so equal input gives equal output. The
/// default level: level 9 takes about four times as long for a 0.5% smaller initrd.
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3) // Unix
        .write(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    encoder.finish()
}

/// Writes each `(name, bytes)` to a temporary file in `dir`, syncs them, then renames them all
/// into place. Any failure before the renames removes every temporary file.
fn write_all_or_nothing(dir: &Path, files: &[(&str, &[u8])]) -> Result<(), TinyError> {
    let mut staged = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempfile_in(dir)
            .map_err(io_err(dir))?;
        tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        set_mode(tmp.as_file(), 0o644).map_err(io_err(dir))?;
        staged.push((tmp, dir.join(name)));
    }
    for (tmp, target) in staged {
        tmp.persist(&target).map_err(|e| io_err(&target)(e.error))?;
    }
    Ok(())
}

fn set_mode(file: &std::fs::File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_deterministic_and_round_trips() {
        use std::io::Read;
        let data = b"initramfs".repeat(1000);
        let a = gzip(&data).unwrap();
        assert_eq!(a, gzip(&data).unwrap());
        // Header: magic, deflate, no flags, mtime 0, xfl 0 (default level), OS 3 (Unix).
        assert_eq!(&a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(a.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn write_all_or_nothing_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        write_all_or_nothing(dir.path(), &[("a", b"1"), ("b", b"22")]).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"22");

        // A target that cannot be replaced (a non-empty directory) fails the build; the
        // temporary files are gone afterwards.
        std::fs::create_dir(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("c/x"), b"").unwrap();
        assert!(write_all_or_nothing(dir.path(), &[("a", b"3"), ("c", b"4")]).is_err());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn vermagic_mismatch_is_caught() {
        let elf = kmod::tests::fake_module(&["vermagic=6.1.0-56-cloud-amd64 SMP mod_unload"]);
        check_vermagic("m", &elf, "6.1.0-56-cloud-amd64", Path::new("m.ko")).unwrap();
        assert!(matches!(
            check_vermagic("m", &elf, "6.1.0-57-cloud-amd64", Path::new("m.ko")),
            Err(TinyError::ModuleVersion { .. })
        ));
    }

    #[test]
    fn description_round_trips_through_json() {
        let image = TinyImage {
            kernel: "/o/tiny-vmlinuz".into(),
            initrd: "/o/tiny-initrd.img".into(),
            cmdline: KERNEL_CMDLINE.into(),
            kernel_version: "6.1.0-56-cloud-amd64".into(),
            default_data_disk_bytes: DEFAULT_DATA_DISK_BYTES,
            ready_marker: READY_MARKER.into(),
            agent_port_name: AGENT_PORT_NAME.into(),
            data_disk_serial: DATA_DISK_SERIAL.into(),
            modules: vec!["virtio_ring".into()],
            kernel_sha256: "00".into(),
            initrd_sha256: "11".into(),
            initrd_bytes: 1,
            manifest: vec![ManifestEntry {
                package: "libc6".into(),
                version: "2.36".into(),
                origin: PackageOrigin::Host,
            }],
        };
        let json = serde_json::to_string(&image).unwrap();
        assert!(json.contains("\"origin\":\"host\""));
        let back: TinyImage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, image);
    }
}
