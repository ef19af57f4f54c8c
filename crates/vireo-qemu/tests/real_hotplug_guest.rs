//! Guest-side checks of hotplug, resize, filesystem freeze and memory snapshots: Vireo's tiny
//! guest (Debian cloud kernel + busybox + qemu-guest-agent) under TCG, started with Vireo's own
//! command line, observed through the real guest agent.
//!
//! The image is rebuilt into a temporary directory from the shared package cache
//! `$VIREO_TEST_CACHE/tiny` (default `/var/cache/vireo-test/tiny`; the first run on a machine
//! downloads the Debian packages). The guest's only NIC is QEMU user-mode networking.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use uuid::Uuid;
use vireo_qemu::hotplug::{disk_hotplug, disk_nodes, nic_hotplug, HotplugPlacement};
use vireo_qemu::{argv, process, LaunchOptions, RunPaths};
use vireo_qmp::{FreezeError, FsFreezeStatus, GuestAgent, QmpClient, RunState, VmSnapshot};
use vireo_tinyimage::{build, BuildOptions, TinyImage};
use vireo_types::{BootSource, DiskFormat, DiskSpec, NicBackend, NicSpec, VmSpec};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const GUEST_TIMEOUT: Duration = Duration::from_secs(15);

fn tiny_cache() -> std::path::PathBuf {
    std::env::var_os("VIREO_TEST_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/vireo-test".into())
        .join("tiny")
}

fn build_image(out: &Path) -> TinyImage {
    let t = Instant::now();
    let image = build(&BuildOptions {
        cache_dir: tiny_cache(),
        out_dir: out.to_path_buf(),
        progress: None,
    })
    .expect("tiny image builds from the package cache");
    println!("tiny image built in {:.1} s", t.elapsed().as_secs_f64());
    image
}

fn qcow2_disk(dir: &Path, name: &str, size: &str) -> DiskSpec {
    let path = dir.join(format!("{name}.qcow2"));
    qcow2(&path, size);
    DiskSpec {
        name: common::name(name),
        path,
        format: DiskFormat::Qcow2,
        read_only: false,
        boot_index: None,
    }
}

struct Guest {
    qmp: QmpClient,
    agent: GuestAgent,
    qemu: process::QemuProcess,
    _guard: KillOnDrop,
}

fn tiny_spec(dir: &Path, image: &TinyImage) -> VmSpec {
    VmSpec {
        vcpus: 1,
        memory_mib: 256,
        boot: BootSource::Kernel {
            kernel: image.kernel.clone(),
            initrd: Some(image.initrd.clone()),
            cmdline: image.cmdline.clone(),
        },
        disks: vec![qcow2_disk(dir, "data", "128M")],
        nics: vec![NicSpec {
            name: common::name("eth0"),
            mac: "0a:76:72:00:01:01".parse().unwrap(),
            backend: NicBackend::User,
        }],
        cdroms: vec![],
        fw_cfg: vec![],
    }
}

/// Starts QEMU for `spec` with Vireo's command line; with `start_paused` it stays in
/// `prelaunch`.
async fn launch(dir: &Path, spec: &VmSpec, start_paused: bool) -> Guest {
    let uuid = Uuid::new_v4();
    let run = RunPaths::new(dir);
    let options = LaunchOptions {
        start_paused,
        ..LaunchOptions::default()
    };
    let argv = argv::build_with(spec, &context(dir, uuid), &options).unwrap();
    let qemu = process::spawn(&argv, &run.qemu_log(), &run.pidfile(), &run.qmp_socket())
        .await
        .unwrap();
    let guard = KillOnDrop {
        pid: qemu.pid(),
        uuid,
    };
    let qmp = QmpClient::connect(run.qmp_socket()).await.unwrap();
    let agent = GuestAgent::with_timeout(run.qga_socket(), Duration::from_secs(5));
    Guest {
        qmp,
        agent,
        qemu,
        _guard: guard,
    }
}

/// Boots the tiny guest and waits for its agent.
async fn boot(dir: &Path, spec: &VmSpec) -> Guest {
    let started = Instant::now();
    let guest = launch(dir, spec, false).await;
    while guest
        .agent
        .ping_with_timeout(Duration::from_millis(500))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "guest agent not up; console:\n{}",
            std::fs::read_to_string(RunPaths::new(dir).console_log()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "guest agent up {:.1} s after QEMU start",
        started.elapsed().as_secs_f64()
    );
    guest
}

impl Guest {
    /// Runs `script` with `sh -c` in the guest; returns stdout, failing on a non-zero exit.
    async fn sh(&self, script: &str) -> String {
        let out = self
            .agent
            .run(
                "/bin/sh",
                &["-c".into(), script.into()],
                None,
                GUEST_TIMEOUT,
            )
            .await
            .unwrap();
        assert_eq!(
            out.exit_code,
            Some(0),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Polls `script` until its output satisfies `ok`; returns that output.
    async fn wait_for(&self, what: &str, script: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + GUEST_TIMEOUT;
        loop {
            let out = self.sh(script).await;
            if ok(&out) {
                return out;
            }
            assert!(Instant::now() < deadline, "{what}: last output {out:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Name (`vdX`) of the guest disk whose serial is `serial`, or an empty string.
fn disk_by_serial(serial: &str) -> String {
    format!(
        "for b in /sys/block/vd*; do [ \"$(cat $b/serial 2>/dev/null)\" = {serial} ] && echo ${{b##*/}}; done; true"
    )
}

#[tokio::test]
async fn real_guest_sees_hotplugged_disk_resize_and_removal_and_freezes() {
    let dir = tempfile::tempdir().unwrap();
    let image = build_image(&dir.path().join("image"));
    let spec = tiny_spec(dir.path(), &image);
    let guest = boot(dir.path(), &spec).await;
    let qmp = &guest.qmp;

    // Hot-add: the guest gets a new virtio disk with the disk's name as serial, and can
    // write to it.
    let extra = qcow2_disk(dir.path(), "extra", "64M");
    let port = HotplugPlacement::default().free_port().unwrap();
    let t = Instant::now();
    qmp.hot_add_disk(&disk_hotplug(&extra, port)).await.unwrap();
    let vd = guest
        .wait_for(
            "hot-added disk in the guest",
            &disk_by_serial("extra"),
            |o| !o.trim().is_empty(),
        )
        .await;
    let vd = vd.trim().to_string();
    println!(
        "hot-added disk visible as /dev/{vd} after {} ms",
        t.elapsed().as_millis()
    );
    let sectors = guest.sh(&format!("cat /sys/block/{vd}/size")).await;
    assert_eq!(sectors.trim(), (64u64 << 20 >> 9).to_string());
    guest
        .sh(&format!(
            "echo vireo-marker | dd of=/dev/{vd} bs=512 seek=100 conv=fsync 2>/dev/null"
        ))
        .await;
    let back = guest
        .sh(&format!(
            "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/{vd} bs=512 skip=100 count=1 2>/dev/null | head -c 12"
        ))
        .await;
    assert_eq!(back, "vireo-marker");

    // Online growth is visible in the guest.
    qmp.block_resize("fmt_extra", 96 << 20).await.unwrap();
    guest
        .wait_for(
            "new size in the guest",
            &format!("cat /sys/block/{vd}/size"),
            |o| o.trim() == (96u64 << 20 >> 9).to_string(),
        )
        .await;

    // Filesystem-consistent disk snapshot: freeze, snapshot, thaw.
    assert_eq!(
        guest.agent.fsfreeze_status().await.unwrap(),
        FsFreezeStatus::Thawed
    );
    let data = disk_nodes(&common::name("data"));
    let during = guest
        .agent
        .with_frozen_filesystems(Duration::from_secs(10), Duration::from_secs(10), async {
            let status = guest
                .agent
                .fsfreeze_status()
                .await
                .map_err(std::io::Error::other)?;
            qmp.snapshot_internal_create(&data.format, "consistent")
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(status)
        })
        .await
        .map_err(|e| e.to_string())
        .unwrap();
    assert_eq!(during, FsFreezeStatus::Frozen);
    assert_eq!(
        guest.agent.fsfreeze_status().await.unwrap(),
        FsFreezeStatus::Thawed
    );
    assert_eq!(
        qmp.snapshot_internal_list(&data.format).await.unwrap()[0].name,
        "consistent"
    );
    // Work that fails or overruns still thaws.
    let err = guest
        .agent
        .with_frozen_filesystems(Duration::from_secs(10), Duration::from_secs(10), async {
            Err::<(), _>(std::io::Error::other("snapshot refused"))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, FreezeError::Work(_)), "{err:?}");
    let err = guest
        .agent
        .with_frozen_filesystems(Duration::from_secs(10), Duration::from_millis(200), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, FreezeError::WorkTimeout { .. }), "{err:?}");
    assert_eq!(
        guest.agent.fsfreeze_status().await.unwrap(),
        FsFreezeStatus::Thawed
    );
    // /data is writable again.
    guest.sh("echo after-thaw > /data/after && sync").await;

    // Hot-remove: the guest releases the device, the nodes go away.
    let t = Instant::now();
    qmp.hot_remove_disk("extra", &disk_nodes(&extra.name), Duration::from_secs(20))
        .await
        .unwrap();
    println!("hot-remove completed in {} ms", t.elapsed().as_millis());
    assert!(qmp.block_node("fmt_extra").await.unwrap().is_none());
    assert!(qmp.block_node("file_extra").await.unwrap().is_none());
    assert_eq!(guest.sh(&disk_by_serial("extra")).await.trim(), "");
    assert_eq!(qmp.port_occupant(&port.id()).await.unwrap(), None);
}

#[tokio::test]
async fn real_guest_sees_hotplugged_nic_and_resumes_memory_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let image = build_image(&dir.path().join("image"));
    let spec = tiny_spec(dir.path(), &image);
    let guest = boot(dir.path(), &spec).await;
    let qmp = &guest.qmp;

    // NIC hot-add: a new interface with the requested MAC appears.
    let nic = NicSpec {
        name: common::name("eth1"),
        mac: "0a:76:72:00:01:02".parse().unwrap(),
        backend: NicBackend::User,
    };
    let port = HotplugPlacement::default().free_port().unwrap();
    qmp.hot_add_nic(&nic_hotplug(&nic, port)).await.unwrap();
    let find_mac = "grep -l 0a:76:72:00:01:02 /sys/class/net/*/address; true";
    let iface = guest
        .wait_for("hot-added NIC in the guest", find_mac, |o| {
            !o.trim().is_empty()
        })
        .await;
    let iface = iface
        .trim()
        .trim_end_matches("/address")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(iface, "eth0");
    guest.sh(&format!("ip link set {iface} up")).await;
    qmp.set_link("nic_eth1", false).await.unwrap();
    guest
        .wait_for(
            "carrier down",
            &format!("cat /sys/class/net/{iface}/carrier"),
            |o| o.trim() == "0",
        )
        .await;
    qmp.set_link("nic_eth1", true).await.unwrap();
    guest
        .wait_for(
            "carrier up",
            &format!("cat /sys/class/net/{iface}/carrier"),
            |o| o.trim() == "1",
        )
        .await;
    qmp.hot_remove_nic("nic_eth1", "net_eth1", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(guest.sh(find_mac).await.trim(), "");

    // Memory snapshot: a counter in the guest continues from its saved value after restore.
    guest
        .agent
        .exec(&vireo_qmp::ExecRequest {
            path: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "i=0; while true; do i=$((i+1)); echo $i > /run/counter; sleep 0.1; done".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let count = || async {
        guest
            .sh("cat /run/counter")
            .await
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    guest
        .wait_for(
            "counter running",
            "cat /run/counter 2>/dev/null; true",
            |o| o.trim().parse::<u64>().is_ok_and(|n| n > 3),
        )
        .await;
    let data = disk_nodes(&common::name("data"));
    let snap = |job: &str| VmSnapshot {
        job_id: job.into(),
        tag: "mem1".into(),
        vmstate: data.format.clone(),
        devices: vec![data.format.clone()],
    };
    let before = count().await;
    qmp.snapshot_save(&snap("save"), Duration::from_secs(20))
        .await
        .unwrap();
    let after_save = count().await;
    guest
        .wait_for("counter advancing", "cat /run/counter", |o| {
            o.trim().parse::<u64>().is_ok_and(|n| n > after_save + 15)
        })
        .await;
    let advanced = count().await;
    qmp.snapshot_restore(&snap("load"), true, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Running);
    let restored = count().await;
    println!("counter: {before} before save, {after_save} after, {advanced} later, {restored} after restore");
    assert!(
        restored >= before && restored < advanced,
        "counter {restored} should continue from the saved {before}..{after_save}, not {advanced}"
    );
    // Restore into a VM that is not running: QEMU started paused (prelaunch), load, cont.
    // The guest continues from the saved counter without booting.
    guest.qmp.quit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), guest.qemu.exited())
        .await
        .expect("QEMU exits after quit");
    drop(guest);
    let guest = launch(dir.path(), &spec, true).await;
    let qmp = &guest.qmp;
    assert_eq!(
        qmp.query_status().await.unwrap().status,
        RunState::Prelaunch
    );
    let t = Instant::now();
    qmp.snapshot_restore(&snap("load-cold"), true, Duration::from_secs(20))
        .await
        .unwrap();
    let cold = guest
        .sh("cat /run/counter")
        .await
        .trim()
        .parse::<u64>()
        .unwrap();
    println!(
        "restore into a paused QEMU: counter {cold} {} ms after load",
        t.elapsed().as_millis()
    );
    assert!(
        cold >= before && cold < advanced,
        "counter {cold} should continue from the saved {before}..{after_save}"
    );
    qmp.snapshot_delete(
        "del",
        "mem1",
        std::slice::from_ref(&data.format),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
}
