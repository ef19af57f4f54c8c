//! Builds bootable distribution disk images for Vireo from distribution packages. Today:
//! Debian ([`build_debian`]), the image behind `vireo image build debian`.
//!
//! A build runs, in a work directory inside the output directory:
//! 1. `debootstrap --variant=minbase --include=…` of the release into `root/` with the
//!    packages of [`packages::package_list`] (kernel, cloud-init, qemu-guest-agent,
//!    openssh-server, …); downloaded `.deb`s are kept in `cache_dir/debs` and reused, so a
//!    rebuild downloads nothing that has not changed in the archive. The resulting tree is
//!    kept as `cache_dir/trees/<key>.tar`, keyed by [`tree_key`] (spec fingerprint + the
//!    archive's signed Release file, fetched first with `debootstrap --print-debs`): while the
//!    archive is unchanged, a rebuild unpacks that instead of running debootstrap;
//! 2. the configuration of [`config`] (fstab, apt sources, cloud-init data sources, hostname,
//!    serial getty), `systemctl enable` of [`config::ENABLED_UNITS`] inside the root;
//! 3. clean-up: apt caches and package lists, SSH host keys (cloud-init makes new ones per
//!    VM), `/etc/machine-id` emptied (systemd makes a new one at first boot), logs;
//! 4. the raw disk of [`disk`] (GPT, GRUB for BIOS and UEFI, ext4 root made from `root/` by
//!    `mkfs.ext4 -d`), converted to qcow2 by `vireo-image`;
//! 5. `debian-<release>.qcow2` and its description `debian-<release>.json` renamed into the
//!    output directory.
//!
//! Invariants:
//! - All-or-nothing: the work directory is removed on every path (after unmounting whatever
//!   debootstrap left mounted in it), and the two artefacts appear only by rename after both
//!   are complete. A failed build leaves the output directory as it was.
//! - Every input that reaches a command line is validated first (release, package names,
//!   mirror URL, disk size).
//! - Builds in one process run one at a time ([`build_debian`] holds a process-wide lock):
//!   debootstrap's package cache and the tree cache are not safe for concurrent writers.
//!   Separate processes must not share a `cache_dir`.
//! - Needs root (debootstrap and chroot), `debootstrap`, GNU `tar`, `e2fsprogs` (1.47: `mkfs.ext4 -d`
//!   with `-E offset`), `grub-common`, `grub-pc-bin`, `grub-efi-amd64-bin` on the host.

pub mod config;
pub mod disk;
pub mod packages;
mod rootfs;
mod tree;

use rootfs::*;
use tree::*;
pub use tree::{debootstrap_args, phase_line, tree_key};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use sha2::Digest;
use thiserror::Error;

/// Changes whenever the builder's output for the same options changes (tests cache on it).
pub const BUILDER_REVISION: u32 = 2;
/// Default virtual size of the disk: 4 GiB.
pub const DEFAULT_SIZE_BYTES: u64 = 4 << 30;
/// Where Debian installs GRUB's platform directories.
pub const GRUB_LIB_DIR: &str = "/usr/lib/grub";
/// Lines of a failing command's output kept for the error.
const TAIL_LINES: usize = 30;

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianSpec {
    pub release: String,
    /// Virtual size of the disk in bytes (multiple of 1 MiB, see [`disk::Layout::new`]).
    pub size_bytes: u64,
    /// Installed on top of [`packages::BASE_PACKAGES`].
    pub extra_packages: Vec<String>,
    /// Debian archive debootstrap fetches from and the image's apt sources name.
    pub mirror: String,
}

impl Default for DebianSpec {
    fn default() -> Self {
        DebianSpec {
            release: packages::DEFAULT_RELEASE.into(),
            size_bytes: DEFAULT_SIZE_BYTES,
            extra_packages: Vec::new(),
            mirror: config::DEFAULT_MIRROR.into(),
        }
    }
}

/// A spec whose every field has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSpec {
    pub release: String,
    pub layout: disk::Layout,
    pub size_bytes: u64,
    /// Sorted union of the base and extra packages.
    pub packages: Vec<String>,
    pub mirror: String,
}

impl DebianSpec {
    pub fn validate(&self) -> Result<ValidSpec, DistroError> {
        packages::check_release(&self.release).map_err(DistroError::Packages)?;
        let packages =
            packages::package_list(&self.extra_packages).map_err(DistroError::Packages)?;
        let mirror = config::check_mirror(&self.mirror).map_err(DistroError::Config)?;
        let layout = disk::Layout::new(self.size_bytes).map_err(DistroError::Disk)?;
        Ok(ValidSpec {
            release: self.release.clone(),
            layout,
            size_bytes: self.size_bytes,
            packages,
            mirror,
        })
    }
}

impl ValidSpec {
    /// SHA-256 over everything that decides the image except the archive's contents: the
    /// builder revision, release, size, package list, mirror and the generated configuration
    /// (rendered for a placeholder identity, so a change to any template changes it). Seeds
    /// the disk's identifiers and names the inputs in the description (tests cache builds
    /// on it).
    pub fn fingerprint(&self) -> String {
        let mut h = sha2::Sha256::new();
        h.update(format!(
            "vireo-distro debian r{BUILDER_REVISION}\n{}\n{}\n{}\n",
            self.release, self.size_bytes, self.mirror
        ));
        for p in &self.packages {
            h.update(p.as_bytes());
            h.update(b"\n");
        }
        let placeholder = config::Identity {
            root_uuid: "00000000-0000-0000-0000-000000000000".into(),
            esp_volume_id: 0,
        };
        let mut rendered = config::root_files(&placeholder, &self.release, &self.mirror);
        rendered.push((
            "grub.cfg",
            config::grub_cfg(&placeholder, &config::release_title(&self.release)),
        ));
        for (path, contents) in rendered {
            h.update(format!("{path}\n{}\n{contents}", contents.len()));
        }
        for (link, target) in config::serial_getty_links() {
            h.update(format!("{link} -> {target}\n"));
        }
        h.update(config::ENABLED_UNITS.join(" "));
        hex::encode(h.finalize())
    }

    pub fn disk_file(&self) -> String {
        format!("debian-{}.qcow2", self.release)
    }

    pub fn description_file(&self) -> String {
        format!("debian-{}.json", self.release)
    }
}

/// Build inputs besides the spec.
pub struct BuildOptions<'a> {
    pub spec: DebianSpec,
    /// Reused across builds: `debs/` holds debootstrap's downloaded packages.
    pub cache_dir: PathBuf,
    /// Where the artefacts land (created if missing).
    pub out_dir: PathBuf,
    /// GRUB's library directory holding `i386-pc/` and `x86_64-efi/`.
    pub grub_lib_dir: PathBuf,
    /// Receives human-readable progress lines.
    pub progress: Option<&'a (dyn Fn(&str) + Sync)>,
}

impl BuildOptions<'_> {
    pub fn new(cache_dir: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        BuildOptions {
            spec: DebianSpec::default(),
            cache_dir: cache_dir.into(),
            out_dir: out_dir.into(),
            grub_lib_dir: PathBuf::from(GRUB_LIB_DIR),
            progress: None,
        }
    }
}

impl std::fmt::Debug for BuildOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("spec", &self.spec)
            .field("cache_dir", &self.cache_dir)
            .field("out_dir", &self.out_dir)
            .field("grub_lib_dir", &self.grub_lib_dir)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPackage {
    pub package: String,
    pub version: String,
}

/// The built image, as stored next to it (`debian-<release>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DebianImage {
    /// The qcow2 (use it as a backing file; do not boot it directly).
    pub path: PathBuf,
    pub virtual_size: u64,
    pub release: String,
    /// [`ValidSpec::fingerprint`] of the spec it was built from.
    pub fingerprint: String,
    pub kernel_version: String,
    pub cmdline: String,
    pub root_uuid: String,
    /// `grub-mkimage --version` of the boot loader.
    pub bootloader: String,
    /// Every installed package, sorted by name.
    pub packages: Vec<InstalledPackage>,
    /// Seconds the build took.
    pub build_seconds: f64,
}

#[derive(Debug, Error)]
pub enum DistroError {
    #[error("invalid package selection")]
    Packages(#[source] packages::PackageError),
    #[error("invalid configuration")]
    Config(#[source] config::ConfigError),
    #[error("building the disk")]
    Disk(#[source] disk::DiskError),
    #[error("cannot run {program} (install the Debian package {package})")]
    Spawn {
        program: &'static str,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}); last output:\n{tail}")]
    Failed {
        what: String,
        status: std::process::ExitStatus,
        tail: String,
    },
    #[error("the root filesystem has no {what}")]
    RootLayout { what: String },
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("converting the raw disk to {path}")]
    Convert {
        path: PathBuf,
        #[source]
        source: vireo_image::ImageError,
    },
    #[error("encoding the image description")]
    Describe(#[source] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DistroError + '_ {
    move |source| DistroError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Builds the Debian image; see the crate docs.
pub fn build_debian(opts: &BuildOptions) -> Result<DebianImage, DistroError> {
    static ONE_BUILD_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A build that panicked left nothing to protect (its work directory was removed).
    let _serial = ONE_BUILD_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = std::time::Instant::now();
    let quiet = |_: &str| {};
    let progress: &(dyn Fn(&str) + Sync) = opts.progress.unwrap_or(&quiet);
    let say = |msg: &str| {
        tracing::info!("{msg}");
        progress(msg);
    };
    let spec = opts.spec.validate()?;
    let debs = opts.cache_dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(io_err(&debs))?;
    std::fs::create_dir_all(&opts.out_dir).map_err(io_err(&opts.out_dir))?;
    // Absolute: debootstrap runs parts of itself from inside the chroot.
    let debs = std::fs::canonicalize(&debs).map_err(io_err(&debs))?;
    let work = WorkDir::new(&opts.out_dir)?;
    let root = work.path().join("root");

    let ids = disk::DiskIds::derive(spec.fingerprint().as_bytes());
    root_tree(&spec, &debs, &opts.cache_dir, work.path(), &root, &say)?;

    say("configuring the root filesystem");
    configure(&spec, &ids.config, &root)?;
    let kernel_version = kernel_version(&root)?;
    let installed = installed_packages(&root)?;
    clean(&root)?;

    say("making GRUB images for i386-pc and x86_64-efi");
    let grub = disk::make_grub(&opts.grub_lib_dir).map_err(DistroError::Disk)?;
    let grub_cfg = config::grub_cfg(&ids.config, &config::release_title(&spec.release));
    let regions =
        disk::boot_regions(&spec.layout, &ids, &grub, &grub_cfg).map_err(DistroError::Disk)?;
    let raw = work.path().join("disk.raw");
    say(&format!(
        "writing the raw disk ({} MiB, ext4 root from the tree)",
        spec.size_bytes >> 20
    ));
    disk::write_raw(&raw, &spec.layout, &ids, &root, &regions).map_err(DistroError::Disk)?;

    let qcow2 = work.path().join("disk.qcow2");
    say("converting to qcow2");
    vireo_image::ops::convert_with(
        &raw,
        &qcow2,
        &vireo_image::ops::ConvertOptions::new(vireo_image::Format::Qcow2),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .map_err(|source| DistroError::Convert {
        path: qcow2.clone(),
        source,
    })?;

    let image = DebianImage {
        path: opts.out_dir.join(spec.disk_file()),
        virtual_size: spec.size_bytes,
        release: spec.release.clone(),
        fingerprint: spec.fingerprint(),
        kernel_version,
        cmdline: config::kernel_cmdline(&ids.config),
        root_uuid: ids.config.root_uuid.clone(),
        bootloader: grub.version,
        packages: installed,
        build_seconds: started.elapsed().as_secs_f64(),
    };
    let mut description = serde_json::to_vec_pretty(&image).map_err(DistroError::Describe)?;
    description.push(b'\n');
    let desc_tmp = work.path().join("description.json");
    std::fs::write(&desc_tmp, &description).map_err(io_err(&desc_tmp))?;
    // Both renames stay inside one filesystem (the work directory is in out_dir).
    std::fs::rename(&qcow2, &image.path).map_err(io_err(&image.path))?;
    let desc_path = opts.out_dir.join(spec.description_file());
    if let Err(e) = std::fs::rename(&desc_tmp, &desc_path) {
        let _ = std::fs::remove_file(&image.path);
        return Err(io_err(&desc_path)(e));
    }
    say(&format!(
        "built {} in {:.0} s",
        image.path.display(),
        image.build_seconds
    ));
    Ok(image)
}

/// Reads the description of a previous build of `release` in `out_dir`, if there is one.
pub fn load(out_dir: &Path, release: &str) -> Result<Option<DebianImage>, DistroError> {
    let path = out_dir.join(format!("debian-{release}.json"));
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(DistroError::Describe),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DistroError::Io { path, source }),
    }
}

/// The build's work directory inside the output directory; on drop, unmounts anything still
/// mounted below it (debootstrap mounts `/proc` and `/sys` in the root and may leave them
/// when it fails) and removes it.
struct WorkDir {
    dir: Option<tempfile::TempDir>,
}

impl WorkDir {
    fn new(out_dir: &Path) -> Result<WorkDir, DistroError> {
        let dir = tempfile::Builder::new()
            .prefix(".debian-build.")
            .tempdir_in(out_dir)
            .map_err(io_err(out_dir))?;
        Ok(WorkDir { dir: Some(dir) })
    }

    fn path(&self) -> &Path {
        // Invariant: `dir` is Some until drop.
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let below = mounts_below(&mounts, dir.path());
        for mount in &below {
            tracing::warn!(mount = %mount.display(), "unmounting what the build left mounted");
            let _ = Command::new("umount").arg("--lazy").arg(mount).status();
        }
        if !below.is_empty() {
            // Still mounted (umount failed): removing would descend into /proc or /sys.
            let again = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            if !mounts_below(&again, dir.path()).is_empty() {
                tracing::error!(dir = %dir.path().display(), "mounts remain; leaving the work directory");
                let _ = dir.keep();
                return;
            }
        }
        if let Err(e) = dir.close() {
            tracing::warn!(error = %e, "removing the build's work directory");
        }
    }
}

/// Mount points at or below `dir` in a `/proc/self/mountinfo` text, deepest first.
pub fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal; anything else
/// (including out-of-range escapes) is kept as it is.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match escaped {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_validates_and_fingerprint_tracks_inputs() {
        let spec = DebianSpec::default().validate().unwrap();
        assert_eq!(spec.disk_file(), "debian-bookworm.qcow2");
        let fp = spec.fingerprint();
        assert_eq!(fp, DebianSpec::default().validate().unwrap().fingerprint());
        let mut more = DebianSpec::default();
        more.extra_packages.push("vim".into());
        assert_ne!(more.validate().unwrap().fingerprint(), fp);
        let bigger = DebianSpec {
            size_bytes: 8 << 30,
            ..DebianSpec::default()
        };
        assert_ne!(bigger.validate().unwrap().fingerprint(), fp);
    }

    #[test]
    fn invalid_specs_are_refused_before_anything_runs() {
        let bad = [
            DebianSpec {
                release: "sid".into(),
                ..DebianSpec::default()
            },
            DebianSpec {
                size_bytes: 1 << 30,
                ..DebianSpec::default()
            },
            DebianSpec {
                extra_packages: vec!["--foreign".into()],
                ..DebianSpec::default()
            },
            DebianSpec {
                mirror: "file:///".into(),
                ..DebianSpec::default()
            },
        ];
        for spec in bad {
            assert!(spec.validate().is_err(), "{spec:?}");
        }
    }

    #[test]
    fn debootstrap_argv() {
        let spec = DebianSpec::default().validate().unwrap();
        let args = debootstrap_args(&spec, Path::new("/c/debs"), Path::new("/w/root"));
        assert_eq!(args[0], "--variant=minbase");
        assert_eq!(args[2], "--cache-dir=/c/debs");
        assert!(args[3].starts_with("--include=ca-certificates,cloud-guest-utils,cloud-init,"));
        assert_eq!(
            &args[4..],
            ["bookworm", "/w/root", "http://deb.debian.org/debian"]
        );
    }

    #[test]
    fn tree_key_tracks_spec_and_archive() {
        let a = tree_key("fp", b"Release A");
        assert_eq!(a, tree_key("fp", b"Release A"));
        assert_ne!(a, tree_key("fp", b"Release B"));
        assert_ne!(a, tree_key("fp2", b"Release A"));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn release_file_prefers_inrelease() {
        let d = tempfile::tempdir().unwrap();
        let lists = d.path().join("var/lib/apt/lists");
        std::fs::create_dir_all(&lists).unwrap();
        assert!(release_file(d.path()).is_err());
        std::fs::write(lists.join("m_dists_bookworm_Release"), b"plain").unwrap();
        assert_eq!(release_file(d.path()).unwrap(), b"plain");
        std::fs::write(lists.join("m_dists_bookworm_InRelease"), b"signed").unwrap();
        std::fs::write(
            lists.join("m_dists_bookworm_main_binary-amd64_Packages"),
            b"p",
        )
        .unwrap();
        assert_eq!(release_file(d.path()).unwrap(), b"signed");
    }

    #[test]
    fn tar_round_trip_keeps_modes_links_and_owners() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/shadow"), b"s").unwrap();
        std::fs::set_permissions(
            src.join("etc/shadow"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink("usr/bin", src.join("bin")).unwrap();
        let trees = d.path().join("trees");
        let cached = trees.join("k.tar");
        std::fs::create_dir_all(&trees).unwrap();
        std::fs::write(trees.join("old.tar"), b"old").unwrap();
        cache_tree(&trees, &cached, &src).unwrap();
        assert!(!trees.join("old.tar").exists());
        let dst = d.path().join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        tar(
            &["--extract", "--same-owner", "--same-permissions"],
            &cached,
            &dst,
        )
        .unwrap();
        let meta = std::fs::metadata(dst.join("etc/shadow")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(
            meta.uid(),
            std::fs::metadata(src.join("etc/shadow")).unwrap().uid()
        );
        assert_eq!(
            std::fs::read_link(dst.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
    }

    #[test]
    fn phase_lines_condense_per_package_output() {
        let mut verb = String::new();
        let lines = [
            "I: Retrieving InRelease ",
            "I: Retrieving Packages ",
            "I: Resolving dependencies of required packages...",
            "I: Retrieving adduser 3.134",
            "I: Retrieving apt 2.6.1",
            "I: Validating adduser 3.134",
            "W: something",
            "I: Base system installed successfully.",
        ];
        let out: Vec<String> = lines
            .iter()
            .filter_map(|l| phase_line(&mut verb, l))
            .collect();
        assert_eq!(
            out,
            [
                "debootstrap: Retrieving packages…",
                "debootstrap: Resolving dependencies of required packages...",
                "debootstrap: Retrieving packages…",
                "debootstrap: Validating packages…",
                "debootstrap: Base system installed successfully.",
            ]
        );
    }

    #[test]
    fn mounts_below_finds_nested_mounts_deepest_first() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
30 22 0:5 / /out/.debian-build.x/root/proc rw - proc proc rw
31 22 0:6 / /out/.debian-build.x/root/sys rw - sysfs sys rw
32 31 0:7 / /out/.debian-build.x/root/sys/fs/cgroup rw - cgroup2 c rw
33 22 0:8 / /out/.debian-build.xy rw - tmpfs t rw
34 22 0:9 / /out/.debian-build.x/root/a\\040b rw - tmpfs t rw
";
        let found = mounts_below(info, Path::new("/out/.debian-build.x"));
        assert_eq!(
            found[0],
            Path::new("/out/.debian-build.x/root/sys/fs/cgroup")
        );
        assert_eq!(found.len(), 4);
        assert!(found.contains(&PathBuf::from("/out/.debian-build.x/root/a b")));
        assert!(!found.contains(&PathBuf::from("/out/.debian-build.xy")));
    }

    #[test]
    fn malformed_mountinfo_does_not_panic() {
        for text in ["", "\\", "a b c d \\0", "1 2 3 4 \\777\\", "x\n\n\n"] {
            let _ = mounts_below(text, Path::new("/"));
        }
    }

    #[test]
    fn log_clean_up_keeps_directories() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("var/log");
        std::fs::create_dir_all(log.join("journal")).unwrap();
        std::fs::create_dir_all(log.join("apt")).unwrap();
        std::fs::write(log.join("apt/history.log"), b"x").unwrap();
        std::fs::write(log.join("dpkg.log"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", log.join("link")).unwrap();
        remove_files_below(&log).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["apt", "journal"]);
        assert_eq!(std::fs::read_dir(log.join("apt")).unwrap().count(), 0);
    }

    #[test]
    fn emptying_a_directory_keeps_it_and_removes_everything_inside() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("var/cache/apt");
        std::fs::create_dir_all(cache.join("archives/partial")).unwrap();
        std::fs::write(cache.join("archives/x.deb"), b"x").unwrap();
        std::fs::write(cache.join("pkgcache.bin"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", cache.join("link")).unwrap();
        empty_dir(&cache).unwrap();
        assert!(cache.is_dir());
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
        assert!(
            Path::new("/etc").is_dir(),
            "a link is removed, not followed"
        );
        empty_dir(&d.path().join("missing")).unwrap();
    }

    #[test]
    fn work_dir_is_removed_on_drop() {
        let out = tempfile::tempdir().unwrap();
        let path = {
            let w = WorkDir::new(out.path()).unwrap();
            std::fs::create_dir_all(w.path().join("root/etc")).unwrap();
            std::fs::write(w.path().join("root/etc/x"), b"1").unwrap();
            w.path().to_owned()
        };
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }
}
