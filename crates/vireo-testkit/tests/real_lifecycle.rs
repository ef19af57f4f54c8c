//! Tier 3/4: the real daemon and CLI drive real QEMU (TCG) guests built from Debian packages.

use std::time::Duration;

use vireo_testkit::TestDaemon;

fn state(v: &serde_json::Value) -> &str {
    v["state"].as_str().unwrap_or("")
}

#[test]
fn real_vm_lifecycle_through_the_cli() {
    let d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    let images = d.json(&["image", "list"]);
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "tiny"),
        "{images}"
    );

    d.ok(&[
        "vm", "create", "web1", "--image", "tiny", "--vcpus", "1", "--memory", "256MiB", "--start",
        "--wait",
    ]);
    let vm = d.json(&["vm", "show", "web1"]);
    assert_eq!(state(&vm), "running", "{vm}");
    assert_eq!(vm["guest_ready"], true, "{vm}");
    for key in ["name", "uuid", "node", "vcpus", "memory_mib"] {
        assert!(!vm[key].is_null(), "vm show lacks {key}: {vm}");
    }
    assert_eq!(vm["memory_mib"], 256);
    assert_eq!(vm["accel"], "tcg");

    // The guest agent runs commands and reports their exit codes.
    let out = d.cli(&[
        "vm",
        "exec",
        "web1",
        "--",
        "sh",
        "-c",
        "echo hello-from-guest; echo oops >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-from-guest\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // The data disk is mounted at /data.
    let out = d.ok(&[
        "vm",
        "exec",
        "web1",
        "--",
        "sh",
        "-c",
        "grep -c ' /data ' /proc/mounts",
    ]);
    assert_eq!(out.trim(), "1");

    d.ok(&["vm", "pause", "web1"]);
    assert_eq!(state(&d.json(&["vm", "show", "web1"])), "paused");
    d.ok(&["vm", "resume", "web1"]);
    assert_eq!(state(&d.json(&["vm", "show", "web1"])), "running");
    d.wait_vm("web1", Duration::from_secs(30), |v| {
        v["guest_ready"] == true
    });

    // Graceful stop: the guest powers off by itself (no forced kill).
    let t = std::time::Instant::now();
    d.ok(&["vm", "stop", "web1", "--timeout", "60"]);
    assert_eq!(state(&d.json(&["vm", "show", "web1"])), "stopped");
    assert!(
        t.elapsed() < Duration::from_secs(55),
        "stop took {:?}: the guest ignored the shutdown",
        t.elapsed()
    );
    assert!(
        !d.log().contains("graceful shutdown timed out"),
        "stop was forced"
    );
    assert!(d.qemu_pids().is_empty());

    d.ok(&["vm", "delete", "web1"]);
    assert!(!d.cli(&["vm", "show", "web1"]).status.success());
    let left: Vec<_> = std::fs::read_dir(d.state_dir().join("vms"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "VM directory left behind");
}

#[test]
fn real_console_round_trip() {
    let d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    d.ok(&[
        "vm", "create", "con1", "--image", "tiny", "--start", "--wait",
    ]);
    // Pipe mode: what we send is typed on the serial console; the output comes back.
    let out = d.cli_stdin(
        &["vm", "console", "con1"],
        Some(b"\necho marker-$((6*7))\n"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("marker-42"),
        "console output: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The history includes the readiness line.
    let (status, body) = d.http("GET", "/v1/vms/con1/console-log", None);
    assert_eq!(status, 200);
    assert!(body.contains("VIREO-GUEST-READY"), "{body}");
    d.ok(&["vm", "kill", "con1"]);
}
