//! Real-QEMU tests of the tiny image (TCG, q35, 256 MiB, direct kernel boot).
//!
//! The image is built into a temporary output directory from the shared package cache
//! `/var/cache/vireo-test/tiny` (override with `VIREO_TINY_CACHE`), so only the first run on a
//! machine downloads Debian packages; later runs rebuild from the cache in seconds.
//! Requirements: `qemu-system-x86_64`, `qemu-img`, apt/dpkg (Debian bookworm host), root for
//! `apt-get download`. Timings are printed (`cargo test -p vireo-tinyimage -- --nocapture`).
//!
//! The guest's only network is QEMU user-mode networking (no traffic leaves the host's
//! loopback/slirp stack beyond what the guest itself sends, and the tests send nothing).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use vireo_tinyimage::{build, BuildOptions, TinyImage};

use common::{cache_dir, Qemu};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(15);
/// Read timeout of guest-agent replies.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

fn build_into(out_dir: &Path) -> Result<(TinyImage, Duration)> {
    let progress = |line: &str| eprintln!("  build: {line}");
    let started = Instant::now();
    let image = build(&BuildOptions {
        cache_dir: cache_dir(),
        out_dir: out_dir.to_owned(),
        progress: Some(&progress),
    })?;
    Ok((image, started.elapsed()))
}

/// Starts QEMU with the tiny image (direct kernel boot), `data_disk` as a virtio disk, user
/// networking, the guest agent at `dir/ga.sock` and QMP at `dir/qmp.sock`.
fn start_vm(image: &TinyImage, dir: &Path, data_disk: &Path, extra_cmdline: &str) -> Result<Qemu> {
    let cmdline = format!("{} {extra_cmdline}", image.cmdline);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "256",
        "-nodefaults",
    ])
    .args(["-display", "none", "-no-reboot"])
    .arg("-kernel")
    .arg(&image.kernel)
    .arg("-initrd")
    .arg(&image.initrd)
    .args(["-append", cmdline.trim()])
    .arg("-drive")
    .arg(format!(
        "file={},if=none,id=data,format=qcow2",
        data_disk.display()
    ))
    .args(["-device", "virtio-blk-pci,drive=data,serial=data"])
    .args(["-netdev", "user,id=net0"])
    .args(["-device", "virtio-net-pci,netdev=net0"])
    .arg("-qmp")
    .arg(format!(
        "unix:{},server=on,wait=off",
        dir.join("qmp.sock").display()
    ));
    Qemu::spawn(&mut cmd, dir)
}

/// Runs one QMP command on a fresh connection to `vm`'s `qmp.sock` and returns the reply.
fn qmp(vm: &Qemu, command: &str) -> Result<Value> {
    let stream = UnixStream::connect(vm.dir.join("qmp.sock"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut lines = BufReader::new(stream).lines();
    let greeting = lines.next().context("no QMP greeting")??;
    ensure!(greeting.contains("QMP"), "unexpected greeting {greeting}");
    let mut call = |execute: &str| -> Result<Value> {
        writeln!(writer, "{}", json!({ "execute": execute }))?;
        for line in lines.by_ref() {
            let v: Value = serde_json::from_str(&line?)?;
            if v.get("return").is_some() || v.get("error").is_some() {
                return Ok(v);
            }
        }
        bail!("QMP closed before answering {execute}")
    };
    call("qmp_capabilities")?;
    call(command)
}

fn qemu_img_create(path: &Path, bytes: u64) -> Result<()> {
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(bytes.to_string())
        .status()
        .context("running qemu-img")?;
    ensure!(status.success(), "qemu-img create failed: {status}");
    Ok(())
}

/// Full guest contract, over two boots of the same data disk:
/// boot 1 — readiness line, guest-ping, console command, guest-exec, /data formatted and
/// mounted, DHCP address, ACPI power button (QMP system_powerdown) powers off;
/// boot 2 — /data keeps its files (clean unmount, no reformat), hostname from the kernel
/// command line, qemu-ga guest-shutdown powers off.
#[test]
fn tiny_guest_boots_and_honours_its_contract() -> Result<()> {
    let work = tempfile::tempdir()?;
    let out_dir = work.path().join("out");
    let (image, build_time) = build_into(&out_dir)?;
    eprintln!(
        "build: {:.2} s, initrd {} KiB, kernel {}",
        build_time.as_secs_f64(),
        image.initrd_bytes / 1024,
        image.kernel_version
    );
    let data_disk = work.path().join("data.qcow2");
    qemu_img_create(&data_disk, image.default_data_disk_bytes)?;

    // Boot 1.
    let mut vm = start_vm(&image, work.path(), &data_disk, "")?;
    vm.wait_console(&image.ready_marker, 0, READY_TIMEOUT)?;
    eprintln!(
        "boot 1 (fresh data disk): ready {:.2} s after QEMU start",
        vm.started.elapsed().as_secs_f64()
    );
    let console = vm.console();
    assert!(
        console.contains("creating a filesystem on data disk"),
        "{console}"
    );

    let mut agent = vm.agent(AGENT_TIMEOUT)?;
    assert_eq!(agent.call(json!({"execute": "guest-ping"}))?, json!({}));

    // The console shell runs what is typed; $((6*7)) proves the output is the shell's, not
    // the echo of the typed line. The prompt follows the readiness line.
    vm.wait_console(":~# ", 0, Duration::from_secs(20))?;
    let mark = vm.console_len();
    vm.type_line("echo console-$((6*7))-ok")?;
    vm.wait_console("console-42-ok", mark, Duration::from_secs(20))?;

    let hi = agent.exec("/bin/sh", &["-c", "echo hi"])?;
    assert_eq!((hi.exit_code, hi.stdout.as_str()), (0, "hi\n"));

    let mounts = agent.shell("grep ' /data ' /proc/mounts")?;
    assert!(mounts.starts_with("/dev/vd"), "{mounts}");
    let addr = agent.shell("ip -4 -o addr show dev eth0")?;
    assert!(addr.contains("inet 10.0.2.15/24"), "{addr}");
    let route = agent.shell("ip route show default")?;
    assert!(route.contains("via 10.0.2.2"), "{route}");
    agent.shell("echo persisted > /data/marker")?;
    // /sbin/shutdown refuses what it cannot do instead of powering off.
    let cancel = agent.exec("/sbin/shutdown", &["-c"])?;
    assert_eq!(cancel.exit_code, 1, "{}", cancel.stderr);
    assert!(
        cancel.stderr.contains("usage: shutdown"),
        "{}",
        cancel.stderr
    );
    assert_eq!(agent.shell("hostname")?, "vireo-tiny\n");

    let powerdown_at = Instant::now();
    let reply = qmp(&vm, "system_powerdown")?;
    assert_eq!(reply["return"], json!({}), "{reply}");
    let status = vm.wait_exit(POWEROFF_TIMEOUT)?;
    assert!(status.success(), "QEMU exit status {status}");
    eprintln!(
        "boot 1: system_powerdown -> QEMU exit in {:.2} s",
        powerdown_at.elapsed().as_secs_f64()
    );
    drop(agent);
    drop(vm);

    // Boot 2: same disk, hostname from the kernel command line.
    let mut vm = start_vm(
        &image,
        work.path(),
        &data_disk,
        "vireo.hostname=second-boot",
    )?;
    vm.wait_console(&image.ready_marker, 0, READY_TIMEOUT)?;
    eprintln!(
        "boot 2 (existing data disk): ready {:.2} s after QEMU start",
        vm.started.elapsed().as_secs_f64()
    );
    let console = vm.console();
    assert!(!console.contains("creating a filesystem"), "{console}");
    let mut agent = vm.agent(AGENT_TIMEOUT)?;
    assert_eq!(agent.shell("cat /data/marker")?, "persisted\n");
    assert_eq!(agent.shell("hostname")?, "second-boot\n");

    let shutdown_at = Instant::now();
    agent.send(json!({"execute": "guest-shutdown"}))?;
    let status = vm.wait_exit(POWEROFF_TIMEOUT)?;
    assert!(status.success(), "QEMU exit status {status}");
    eprintln!(
        "boot 2: guest-shutdown -> QEMU exit in {:.2} s",
        shutdown_at.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A rebuild from a current cache is fast, byte-identical and leaves only the artefacts.
#[test]
fn rebuild_from_cache_is_fast_and_identical() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (first, first_time) = build_into(&work.path().join("a"))?;
    let (second, second_time) = build_into(&work.path().join("b"))?;
    eprintln!(
        "builds: {:.2} s then {:.2} s (cache warm for the second)",
        first_time.as_secs_f64(),
        second_time.as_secs_f64()
    );
    assert!(
        second_time < Duration::from_secs(30),
        "warm rebuild took {second_time:?}"
    );
    assert_eq!(first.initrd_sha256, second.initrd_sha256);
    assert_eq!(first.kernel_sha256, second.kernel_sha256);
    assert_eq!(
        std::fs::read(&first.initrd)?,
        std::fs::read(&second.initrd)?
    );
    assert_eq!(first.manifest, second.manifest);

    // In place: the same directory again gives the same files and nothing else.
    let (third, _) = build_into(&work.path().join("a"))?;
    assert_eq!(third, first);
    let mut names: Vec<String> = std::fs::read_dir(work.path().join("a"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    assert_eq!(names, ["tiny-initrd.img", "tiny-vmlinuz", "tiny.json"]);
    assert_eq!(
        vireo_tinyimage::load(&work.path().join("a"))?,
        Some(first.clone())
    );

    // Content checks on the real image.
    assert_eq!(
        &first.modules[..3],
        ["virtio_ring", "virtio", "virtio_pci_modern_dev"]
    );
    for m in vireo_tinyimage::VIRTIO_MODULES {
        assert!(first.modules.iter().any(|x| x == m), "{m} missing");
    }
    let packages: Vec<&str> = first.manifest.iter().map(|e| e.package.as_str()).collect();
    for p in [
        "busybox-static",
        "qemu-guest-agent",
        "libc6",
        "libglib2.0-0",
    ] {
        assert!(packages.contains(&p), "{p} missing from {packages:?}");
    }
    assert!(packages.iter().any(|p| p.starts_with("linux-image-6")));
    Ok(())
}

/// A build that fails leaves nothing in the output directory.
#[test]
fn failed_build_leaves_no_artefacts() -> Result<()> {
    let work = tempfile::tempdir()?;
    let not_a_dir = work.path().join("cache-is-a-file");
    std::fs::write(&not_a_dir, b"")?;
    let out_dir = work.path().join("out");
    let err = build(&BuildOptions {
        cache_dir: not_a_dir,
        out_dir: out_dir.clone(),
        progress: None,
    })
    .expect_err("a file as cache dir cannot work");
    eprintln!("expected failure: {err}");
    assert_eq!(std::fs::read_dir(&out_dir)?.count(), 0);
    Ok(())
}
