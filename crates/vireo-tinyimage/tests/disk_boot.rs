//! Real-QEMU tests of the tiny disk (`build_disk`): the same qcow2 boots through SeaBIOS and
//! through OVMF (TCG, q35, 256 MiB, virtio-blk with bootindex=1, no kernel on the QEMU
//! command line), reaches the readiness line and answers the guest agent.
//!
//! The image is built into a temporary directory from the shared package cache
//! `/var/cache/vireo-test/tiny` (override with `VIREO_TINY_CACHE`). Requirements:
//! `qemu-system-x86_64`, `qemu-img` (overlays and the raw-content oracle), `ovmf`, GRUB's
//! `grub-common`, `grub-pc-bin` and `grub-efi-amd64-bin`. Timings are printed
//! (`cargo test -p vireo-tinyimage --test disk_boot -- --nocapture`).
//!
//! The guests get no network device; nothing leaves the host.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use sha2::Digest;
use vireo_tinyimage::{build_disk, DiskBuildOptions, TinyDisk};

use common::{cache_dir, Agent, Qemu};

/// SeaBIOS + GRUB + kernel under TCG.
const BIOS_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// OVMF under TCG is much slower to reach the boot loader.
const UEFI_READY_TIMEOUT: Duration = Duration::from_secs(180);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

/// One TCG guest at a time within this test binary (the machine has two cores).
static BOOT_LOCK: Mutex<()> = Mutex::new(());

/// Read timeout of guest-agent replies (OVMF guests answer slowly under TCG).
const AGENT_TIMEOUT: Duration = Duration::from_secs(20);

fn build_into(out_dir: &Path) -> Result<(TinyDisk, Duration)> {
    let progress = |line: &str| eprintln!("  build: {line}");
    let mut opts = DiskBuildOptions::new(cache_dir(), out_dir);
    opts.progress = Some(&progress);
    let started = Instant::now();
    let disk = build_disk(&opts)?;
    Ok((disk, started.elapsed()))
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn overlay(disk: &TinyDisk, path: &Path) -> Result<()> {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&disk.path)
        .arg(path))?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firmware {
    SeaBios,
    Ovmf,
}

/// Starts QEMU booting `boot_disk` through `firmware`, with the guest agent at `dir/ga.sock`.
fn start_vm(firmware: Firmware, boot_disk: &Path, dir: &Path) -> Result<Qemu> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", "tcg", "-m", "256"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"]);
    if firmware == Firmware::Ovmf {
        let template = vireo_qemu::ovmf::locate()?;
        let files = vireo_qemu::ovmf::prepare_vars(&template, &dir.join("vars.fd"))?;
        cmd.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                files.code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                files.vars.display()
            ));
    }
    cmd.arg("-drive")
        .arg(format!(
            "file={},if=none,id=boot,format=qcow2",
            boot_disk.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=boot,bootindex=1"]);
    Qemu::spawn(&mut cmd, dir)
}

/// Runs `sh -c script` in the guest; returns (exit code, stdout).
fn shell(agent: &mut Agent, script: &str) -> Result<(i64, String)> {
    let r = agent.exec("/bin/sh", &["-c", script])?;
    Ok((r.exit_code, r.stdout))
}

/// Boots the disk (through an overlay) with `firmware`; checks the GRUB line, the readiness
/// line, the agent, how the kernel was started, and a clean power-off.
fn boot_and_check(firmware: Firmware, ready_timeout: Duration) -> Result<()> {
    let work = tempfile::tempdir()?;
    let (disk, build_time) = build_into(&work.path().join("out"))?;
    eprintln!(
        "disk build: {:.2} s, {} MiB, {}",
        build_time.as_secs_f64(),
        disk.virtual_size >> 20,
        disk.bootloader
    );
    let boot_disk = work.path().join("boot.qcow2");
    overlay(&disk, &boot_disk)?;

    let _serialised = BOOT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut vm = start_vm(firmware, &boot_disk, work.path())?;
    let platform = match firmware {
        Firmware::SeaBios => "pc",
        Firmware::Ovmf => "efi",
    };
    let grub_at = vm.wait_console(
        &format!("vireo-tiny-disk: GRUB ({platform}) loading /vireo/vmlinuz"),
        0,
        ready_timeout,
    )?;
    let ready_at = vm.wait_console(&disk.ready_marker, 0, ready_timeout)?;
    eprintln!(
        "{firmware:?}: GRUB at {:.2} s, {} at {:.2} s after QEMU start",
        grub_at.as_secs_f64(),
        disk.ready_marker,
        ready_at.as_secs_f64()
    );

    let mut agent = vm.agent(AGENT_TIMEOUT)?;
    assert_eq!(agent.call(json!({"execute": "guest-ping"}))?, json!({}));

    // GRUB started the kernel (BOOT_IMAGE is GRUB's), with the disk's command line.
    let (code, cmdline) = shell(&mut agent, "cat /proc/cmdline")?;
    assert_eq!(code, 0);
    assert_eq!(
        cmdline.trim(),
        format!("BOOT_IMAGE=/vireo/vmlinuz {}", disk.cmdline)
    );
    // The kernel knows which firmware it came from.
    let (efi, _) = shell(&mut agent, "test -d /sys/firmware/efi")?;
    assert_eq!(efi == 0, firmware == Firmware::Ovmf, "/sys/firmware/efi");
    // The boot disk is the virtio disk, and the guest left it alone (no data-disk serial).
    let (code, out) = shell(&mut agent, "ls /sys/block; cat /proc/mounts")?;
    assert_eq!(code, 0);
    assert!(out.starts_with("vda\n"), "{out}");
    assert!(!out.contains("/dev/vda"), "{out}");

    agent.send(json!({"execute": "guest-shutdown"}))?;
    let status = vm.wait_exit(POWEROFF_TIMEOUT)?;
    assert!(status.success(), "QEMU exit status {status}");
    Ok(())
}

#[test]
fn real_tiny_disk_boots_with_seabios() -> Result<()> {
    boot_and_check(Firmware::SeaBios, BIOS_READY_TIMEOUT)
}

#[test]
fn real_tiny_disk_boots_with_ovmf() -> Result<()> {
    boot_and_check(Firmware::Ovmf, UEFI_READY_TIMEOUT)
}

fn sha256_file(path: &Path) -> Result<String> {
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(path)?)))
}

/// Two builds give the same disk; a rebuild in place keeps the existing file; the qcow2's
/// guest content (read by qemu-img, an independent reader) is the recorded raw disk.
#[test]
fn disk_rebuild_is_identical_and_reuses_the_current_image() -> Result<()> {
    let work = tempfile::tempdir()?;
    let a = work.path().join("a");
    let (first, first_time) = build_into(&a)?;
    let (second, _) = build_into(&work.path().join("b"))?;
    assert_eq!(first.raw_sha256, second.raw_sha256);
    assert_eq!(
        sha256_file(&first.path)?,
        sha256_file(&second.path)?,
        "qcow2 files differ"
    );

    let inode = |p: &Path| -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(p)?.ino())
    };
    let before = inode(&first.path)?;
    let (third, third_time) = build_into(&a)?;
    assert_eq!(third, first);
    assert_eq!(
        inode(&first.path)?,
        before,
        "an up-to-date disk was rewritten"
    );
    eprintln!(
        "disk builds: {:.2} s, in place again {:.2} s",
        first_time.as_secs_f64(),
        third_time.as_secs_f64()
    );

    let mut names: Vec<String> = std::fs::read_dir(&a)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    assert_eq!(
        names,
        [
            "tiny-disk.json",
            "tiny-disk.qcow2",
            "tiny-initrd.img",
            "tiny-vmlinuz",
            "tiny.json"
        ]
    );
    assert_eq!(vireo_tinyimage::disk::load_disk(&a)?, Some(first.clone()));

    let info: Value = serde_json::from_str(&run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&first.path))?)?;
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], json!(first.virtual_size));
    let raw = work.path().join("back.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&first.path)
        .arg(&raw))?;
    assert_eq!(sha256_file(&raw)?, first.raw_sha256);
    assert!(first
        .cmdline
        .split_whitespace()
        .any(|a| a == "console=ttyS0"));
    Ok(())
}

/// A disk build that fails (here: no GRUB platform directories) leaves no disk artefact and no
/// temporary file behind.
#[test]
fn failed_disk_build_leaves_no_disk() -> Result<()> {
    let work = tempfile::tempdir()?;
    let out_dir = work.path().join("out");
    let empty_grub = work.path().join("no-grub");
    std::fs::create_dir(&empty_grub)?;
    let mut opts = DiskBuildOptions::new(cache_dir(), &out_dir);
    opts.grub_lib_dir = empty_grub;
    let err = build_disk(&opts).expect_err("GRUB is missing");
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(chain.contains("grub-pc-bin"), "{chain}");
    let leftovers: Vec<String> = std::fs::read_dir(&out_dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .filter(|n: &Result<String>| {
            n.as_ref()
                .map_or(true, |n| n.starts_with('.') || n.starts_with("tiny-disk"))
        })
        .collect::<Result<_>>()?;
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}
