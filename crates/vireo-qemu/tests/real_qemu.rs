//! Process supervision and generated command lines against real qemu-system-x86_64 (TCG).

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use uuid::Uuid;
use vireo_qemu::process::{self, ExitStatus, ProcessError};
use vireo_qemu::{argv, ovmf, RunPaths};
use vireo_qmp::{QmpClient, RunState};
use vireo_types::{BootSource, DiskFormat, DiskSpec, Firmware, NicBackend, NicSpec, VmSpec};

async fn start(run_dir: &Path, spec: &VmSpec, uuid: Uuid) -> process::QemuProcess {
    let ctx = context(run_dir, uuid);
    let argv = argv::build(spec, &ctx).unwrap();
    let run = RunPaths::new(run_dir);
    process::spawn(&argv, &run.qemu_log(), &run.pidfile(), &run.qmp_socket())
        .await
        .unwrap()
}

fn peripheral_ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"].as_str().is_some_and(|t| t.starts_with("child<")))
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn spawned_qemu_is_detached_supervised_and_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunPaths::new(dir.path());
    let uuid = Uuid::new_v4();
    let qemu = start(dir.path(), &bios_vm(dir.path()), uuid).await;
    let _guard = KillOnDrop {
        pid: qemu.pid(),
        uuid,
    };
    let pid = qemu.pid();
    assert!(qemu.is_child());
    assert_eq!(process::read_pidfile(&run.pidfile()).unwrap(), pid);
    // Own session and process group: signals to the daemon's group do not reach QEMU.
    assert_eq!(pgrp_and_session(pid), (pid, pid));
    let me = std::process::id();
    assert_ne!(pgrp_and_session(me).1, pid);

    let qmp = QmpClient::connect(run.qmp_socket()).await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Running);
    // Stable device ids from the spec, addressable for hotplug.
    let ids = peripheral_ids(
        &qmp.execute("qom-list", Some(json!({"path": "/machine/peripheral"})))
            .await
            .unwrap(),
    );
    for want in [
        "root",
        "nic_eth0",
        "vireo_rng",
        "vireo_vserial",
        "vireo_qga",
    ] {
        assert!(ids.iter().any(|i| i == want), "{want} missing from {ids:?}");
    }
    // The sockets the daemon uses exist.
    assert!(run.serial_socket().exists() && run.qga_socket().exists());

    // SIGKILL from outside (not through the handle): exit is noticed within 2 s.
    // SAFETY: plain kill(2) on a pid we own and have not reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let t = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(2), qemu.exited())
        .await
        .expect("exit observed within 2 s");
    assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL));
    println!("exit observed {} ms after SIGKILL", t.elapsed().as_millis());
    // Reaped: no zombie left behind.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "zombie {pid} remains"
    );
    tokio::time::timeout(Duration::from_secs(2), qmp.closed())
        .await
        .unwrap();
    // Signalling a gone process is harmless.
    qemu.kill().unwrap();
    assert!(matches!(
        qemu.signal(libc::SIGTERM),
        Err(ProcessError::NotRunning { .. })
    ));
}

#[tokio::test]
async fn adopt_verifies_identity() {
    let dir = tempfile::tempdir().unwrap();
    let uuid = Uuid::new_v4();
    let qemu = start(dir.path(), &bios_vm(dir.path()), uuid).await;
    let _guard = KillOnDrop {
        pid: qemu.pid(),
        uuid,
    };
    let pid = qemu.pid();

    let adopted = process::adopt(pid, uuid).unwrap();
    assert_eq!(adopted.pid(), pid);
    let wrong = process::adopt(pid, Uuid::new_v4()).unwrap_err();
    assert!(
        matches!(wrong, ProcessError::UuidMismatch { .. }),
        "{wrong}"
    );
    let not_qemu = process::adopt(std::process::id(), uuid).unwrap_err();
    assert!(
        matches!(not_qemu, ProcessError::NotQemu { .. }),
        "{not_qemu}"
    );
    let gone = process::adopt(u32::MAX / 2, uuid).unwrap_err();
    assert!(matches!(gone, ProcessError::NotRunning { .. }), "{gone}");

    adopted.kill().unwrap();
    let both = async { (qemu.exited().await, adopted.exited().await) };
    let (a, b) = tokio::time::timeout(Duration::from_secs(2), both)
        .await
        .unwrap();
    // Two watchers race to reap the same child; exactly one collects the status.
    assert!(
        [a, b].contains(&ExitStatus::Signaled(libc::SIGKILL)),
        "{a:?} {b:?}"
    );
}

#[tokio::test]
async fn startup_failure_reports_the_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunPaths::new(dir.path());
    std::fs::write(run.qemu_log(), "old run output\n").unwrap();
    let mut argv = argv::build(&bios_vm(dir.path()), &context(dir.path(), Uuid::new_v4())).unwrap();
    argv.push("-no-such-option".into());
    let err = process::spawn(&argv, &run.qemu_log(), &run.pidfile(), &run.qmp_socket())
        .await
        .unwrap_err();
    match &err {
        ProcessError::EarlyExit { status, log_tail } => {
            assert_eq!(*status, ExitStatus::Exited(1));
            assert!(log_tail.contains("no-such-option"), "{log_tail}");
            assert!(
                !log_tail.contains("old run output"),
                "only this run's output: {log_tail}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // Appended, not truncated.
    let log = std::fs::read_to_string(run.qemu_log()).unwrap();
    assert!(log.starts_with("old run output\n"));
}

// Multi-threaded: the QMP reader task must keep draining the monitor while this test blocks
// in `wait_until` (once, on a loaded machine, `quit` afterwards got no answer in 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uefi_disk_boot_with_two_disks_and_two_nics_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunPaths::new(dir.path());
    let firmware = ovmf::locate().unwrap();
    let files = ovmf::prepare_vars(&firmware, &run.uefi_vars()).unwrap();
    let (root, seed) = (dir.path().join("root.qcow2"), dir.path().join("seed.raw"));
    qcow2(&root, "64M");
    std::fs::write(&seed, vec![0u8; 1 << 20]).unwrap();
    let spec = VmSpec {
        vcpus: 2,
        memory_mib: 256,
        boot: BootSource::Disk {
            firmware: Firmware::Uefi,
        },
        disks: vec![
            DiskSpec {
                name: name("root"),
                path: root,
                format: DiskFormat::Qcow2,
                read_only: false,
                boot_index: Some(0),
            },
            DiskSpec {
                name: name("seed"),
                path: seed,
                format: DiskFormat::Raw,
                read_only: true,
                boot_index: None,
            },
        ],
        nics: vec![
            NicSpec {
                name: name("eth0"),
                mac: "0a:76:72:00:00:01".parse().unwrap(),
                backend: NicBackend::User,
            },
            NicSpec {
                name: name("eth1"),
                mac: "0a:76:72:00:00:02".parse().unwrap(),
                backend: NicBackend::User,
            },
        ],
        cdroms: vec![],
        fw_cfg: vec![],
    };
    let mut ctx = context(dir.path(), Uuid::new_v4());
    ctx.ovmf = Some(files);
    let argv = argv::build(&spec, &ctx).unwrap();
    let qemu = process::spawn(&argv, &run.qemu_log(), &run.pidfile(), &run.qmp_socket())
        .await
        .unwrap();
    let _guard = KillOnDrop {
        pid: qemu.pid(),
        uuid: ctx.uuid,
    };
    let qmp = QmpClient::connect(run.qmp_socket()).await.unwrap();
    let status = qmp.query_status().await.unwrap();
    assert_eq!((status.running, status.status), (true, RunState::Running));

    // The firmware and both disks are attached with the intended read-only flags.
    let nodes = qmp
        .execute("query-named-block-nodes", Some(json!({"flat": true})))
        .await
        .unwrap();
    let ro = |node: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node-name"] == node)
            .map(|n| n["ro"].as_bool().unwrap())
    };
    assert_eq!(ro("fw_code"), Some(true));
    assert_eq!(ro("fw_vars"), Some(false));
    assert_eq!(ro("fmt_root"), Some(false));
    assert_eq!(ro("fmt_seed"), Some(true));
    let ids = peripheral_ids(
        &qmp.execute("qom-list", Some(json!({"path": "/machine/peripheral"})))
            .await
            .unwrap(),
    );
    for want in ["root", "seed", "nic_eth0", "nic_eth1"] {
        assert!(ids.iter().any(|i| i == want), "{want} missing from {ids:?}");
    }

    // OVMF is running and writes its boot output to the serial console log.
    wait_until("OVMF console output", Duration::from_secs(30), || {
        std::fs::metadata(run.console_log())
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    });

    qmp.quit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), qemu.exited())
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Exited(0));
}

// Multi-threaded: the drain task must run while this test blocks in `wait_until`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_boot_console_reaches_socket_and_log() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let run = RunPaths::new(dir.path());
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 256,
        boot: BootSource::Kernel {
            kernel: test_kernel(),
            initrd: None,
            // No initrd: the kernel boots until it cannot mount a root filesystem.
            cmdline: "console=ttyS0".into(),
        },
        disks: vec![],
        nics: vec![],
        cdroms: vec![],
        fw_cfg: vec![],
    };
    let uuid = Uuid::new_v4();
    let qemu = start(dir.path(), &spec, uuid).await;
    let _guard = KillOnDrop {
        pid: qemu.pid(),
        uuid,
    };
    // The daemon's console connection: boot messages stream over the socket.
    let mut console = tokio::net::UnixStream::connect(run.serial_socket())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&seen).contains("Linux version") {
        assert!(
            Instant::now() < deadline,
            "no kernel banner on the console socket"
        );
        let n = tokio::time::timeout(Duration::from_secs(60), console.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "console socket closed");
        seen.extend_from_slice(&buf[..n]);
    }
    // A client going away does not stop the console: a new one can attach (daemon restart)
    // and the log keeps everything, including output produced while nobody was connected.
    // (A connected client must keep reading: QEMU applies backpressure and the guest's
    // console output stalls otherwise.)
    drop(console);
    let mut again = tokio::net::UnixStream::connect(run.serial_socket())
        .await
        .unwrap();
    let drain = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = again.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    wait_until("late boot in console.log", Duration::from_secs(60), || {
        let log = std::fs::read(run.console_log()).unwrap_or_default();
        vireo_qemu::accel::late_boot_marker(&String::from_utf8_lossy(&log)).is_some()
    });
    let log = String::from_utf8_lossy(&std::fs::read(run.console_log()).unwrap()).into_owned();
    assert!(log.contains("Linux version"));
    qemu.kill().unwrap();
    drain.abort();
    tokio::time::timeout(Duration::from_secs(2), qemu.exited())
        .await
        .unwrap();
}

/// Helper run in a separate process by `qemu_survives_sigkill_of_the_daemon_group`: plays the
/// daemon, starts QEMU, reports its pid and waits to be killed.
#[tokio::test]
#[ignore = "helper process for qemu_survives_sigkill_of_the_daemon_group"]
async fn daemon_helper() {
    let Some(dir) = std::env::var_os("VIREO_HELPER_RUN_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let uuid = Uuid::parse_str(&std::env::var("VIREO_HELPER_UUID").unwrap()).unwrap();
    let qemu = start(&dir, &bios_vm(&dir), uuid).await;
    std::fs::write(dir.join("helper-ready"), qemu.pid().to_string()).unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test]
async fn qemu_survives_sigkill_of_the_daemon_group() {
    let dir = tempfile::tempdir().unwrap();
    let uuid = Uuid::new_v4();
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "daemon_helper", "--ignored", "--nocapture"])
        .env("VIREO_HELPER_RUN_DIR", dir.path())
        .env("VIREO_HELPER_UUID", uuid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let ready = dir.path().join("helper-ready");
    wait_until("helper to start QEMU", Duration::from_secs(30), || {
        ready.exists()
    });
    let pid: u32 = std::fs::read_to_string(&ready).unwrap().parse().unwrap();
    let _guard = KillOnDrop { pid, uuid };

    // Kill the whole "daemon" process group, as a service manager would.
    // SAFETY: kill(2) on the helper's process group, which we created.
    assert_eq!(
        unsafe { libc::kill(-(helper.id() as i32), libc::SIGKILL) },
        0
    );
    helper.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU died with the daemon"
    );

    // A restarted daemon re-attaches; the process is no longer our child.
    let adopted = process::adopt(pid, uuid).unwrap();
    assert!(!adopted.is_child());
    let qmp = QmpClient::connect(RunPaths::new(dir.path()).qmp_socket())
        .await
        .unwrap();
    assert!(qmp.query_status().await.unwrap().running);
    qmp.quit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), adopted.exited())
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Unknown);
}
