//! Accelerator probe against real QEMU and a real Debian cloud kernel (see
//! `common::test_kernel`; set VIREO_TEST_KERNEL to use another kernel).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{test_kernel, QEMU};
use vireo_qemu::accel::{self, boot_check, Accel};

/// A per-test alias of the kernel, so the leftover-process check only sees this test's guest.
fn kernel_alias(dir: &Path) -> std::path::PathBuf {
    let alias = dir.join("vmlinuz-under-test");
    std::os::unix::fs::symlink(test_kernel(), &alias).unwrap();
    alias
}

fn probe_processes_for(kernel: &Path) -> usize {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(kernel)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test]
async fn late_boot_detection_works_on_a_real_kernel_under_tcg() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = kernel_alias(dir.path());
    let t = Instant::now();
    let result = boot_check(
        Path::new(QEMU),
        &kernel,
        Accel::Tcg,
        Duration::from_secs(60),
    )
    .await;
    let detail = result.unwrap_or_else(|e| panic!("TCG boot did not reach late boot: {e}"));
    println!("{detail} (total {} ms)", t.elapsed().as_millis());
    assert!(detail.contains("TCG"));
    assert_eq!(probe_processes_for(&kernel), 0, "probe guest left running");
}

#[tokio::test]
async fn a_broken_kernel_fails_fast_with_qemus_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("vmlinuz-bogus");
    std::fs::write(&bogus, vec![0x5a; 4096]).unwrap();
    let t = Instant::now();
    let err = boot_check(Path::new(QEMU), &bogus, Accel::Tcg, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(err.contains("exited"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn probe_decides_consistently_and_caches() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = kernel_alias(dir.path());
    let cache = dir.path().join("accel.json");
    let t = Instant::now();
    let probe =
        accel::load_or_probe(&cache, Path::new(QEMU), &kernel, Duration::from_secs(10)).await;
    println!("probe after {} ms: {probe:?}", t.elapsed().as_millis());
    assert_eq!(probe.kvm_device_present, Path::new("/dev/kvm").exists());
    assert_eq!(probe.chosen == Accel::Kvm, probe.kvm_boots_guest);
    if !probe.kvm_device_present {
        assert_eq!(probe.chosen, Accel::Tcg);
    }
    if probe.chosen == Accel::Tcg {
        assert!(probe.detail.contains("using TCG"), "{}", probe.detail);
    }
    assert!(probe
        .qemu_version
        .as_deref()
        .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())));
    assert_eq!(probe_processes_for(&kernel), 0, "probe guest left running");

    let t = Instant::now();
    let cached =
        accel::load_or_probe(&cache, Path::new(QEMU), &kernel, Duration::from_secs(10)).await;
    assert_eq!(cached, probe);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "cached result took {:?}",
        t.elapsed()
    );
}
