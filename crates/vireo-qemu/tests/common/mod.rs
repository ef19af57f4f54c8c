//! Helpers shared by the real-QEMU tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use uuid::Uuid;
use vireo_qemu::argv::LaunchContext;
use vireo_qemu::Accel;
use vireo_types::{BootSource, DiskFormat, DiskSpec, Firmware, Name, NicBackend, NicSpec, VmSpec};

pub const QEMU: &str = "qemu-system-x86_64";

/// Creates an empty qcow2 image with qemu-img.
pub fn qcow2(path: &Path, size: &str) {
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .status()
        .expect("qemu-img is installed");
    assert!(st.success());
}

pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// A BIOS disk-boot VM with one empty qcow2 disk and a user-mode NIC. SeaBIOS finds nothing
/// to boot and idles, which is all the supervision tests need.
pub fn bios_vm(run_dir: &Path) -> VmSpec {
    let disk = run_dir.join("root.qcow2");
    qcow2(&disk, "64M");
    VmSpec {
        vcpus: 1,
        memory_mib: 128,
        boot: BootSource::Disk {
            firmware: Firmware::Bios,
        },
        disks: vec![DiskSpec {
            name: name("root"),
            path: disk,
            format: DiskFormat::Qcow2,
            read_only: false,
            boot_index: Some(0),
        }],
        nics: vec![NicSpec {
            name: name("eth0"),
            mac: "0a:76:72:00:00:01".parse().unwrap(),
            backend: NicBackend::User,
        }],
        cdroms: vec![],
        fw_cfg: vec![],
    }
}

pub fn context(run_dir: &Path, uuid: Uuid) -> LaunchContext {
    LaunchContext {
        qemu_binary: QEMU.into(),
        uuid,
        name: "test-vm".into(),
        run_dir: run_dir.to_path_buf(),
        accel: Accel::Tcg,
        ovmf: None,
    }
}

/// (pgrp, session) of `pid` from /proc/PID/stat.
pub fn pgrp_and_session(pid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Debian cloud kernel used by the accelerator tests: `$VIREO_TEST_KERNEL`, or downloaded
/// once with apt-get (`linux-image-cloud-amd64`'s current version) into the target directory.
pub fn test_kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("VIREO_TEST_KERNEL") {
        return PathBuf::from(k);
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vireo-qemu-kernel");
    let tree = cache.join("tree");
    std::fs::create_dir_all(&cache).unwrap();
    // Tests run concurrently (threads and processes): one downloads, the others wait.
    let lock = std::fs::File::create(cache.join(".lock")).unwrap();
    // SAFETY: flock(2) on a descriptor we own; released when `lock` is closed.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    if let Some(k) = find_vmlinuz(&tree.join("boot")) {
        return k;
    }
    let deps = Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .expect("apt-cache");
    let deps = String::from_utf8_lossy(&deps.stdout);
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .expect("linux-image-cloud-amd64 depends on a versioned kernel package")
        .to_string();
    let st = Command::new("apt-get")
        .args(["download", &package])
        .current_dir(&cache)
        .status()
        .expect("apt-get");
    assert!(st.success(), "apt-get download {package} failed");
    let deb = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("downloaded .deb");
    let partial = cache.join("tree.partial");
    let _ = std::fs::remove_dir_all(&partial);
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&partial)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::rename(&partial, &tree).unwrap();
    let _ = std::fs::remove_file(&deb);
    find_vmlinuz(&tree.join("boot")).expect("vmlinuz in the kernel package")
}

fn find_vmlinuz(boot: &Path) -> Option<PathBuf> {
    std::fs::read_dir(boot)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// Kills the QEMU with `pid` when dropped if it still runs the VM `uuid`: QEMU runs in its own
/// session, so a failing test would otherwise leave it running.
pub struct KillOnDrop {
    pub pid: u32,
    pub uuid: Uuid,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", self.pid)) else {
            return;
        };
        if vireo_qemu::process::check_cmdline(self.pid, &cmdline, self.uuid).is_ok() {
            // SAFETY: kill(2) on a process verified to be this test's QEMU.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}
