//! Crash safety with real QEMU: the daemon can die at any moment without losing VMs, and a
//! QEMU that dies is noticed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vireo_testkit::TestDaemon;

#[test]
fn real_sigkill_daemon_with_three_running_vms() {
    let mut d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    for n in ["a1", "a2", "a3"] {
        d.ok(&["vm", "create", n, "--image", "tiny", "--start", "--wait"]);
    }
    d.ok(&["vm", "pause", "a2"]);
    let before = d.qemu_pids();
    assert_eq!(before.len(), 3);

    d.kill9();
    // The VMs do not notice.
    for p in &before {
        assert!(
            std::path::Path::new(&format!("/proc/{p}")).exists(),
            "QEMU {p} died with the daemon"
        );
    }
    d.restart().unwrap();

    let list = d.json(&["vm", "list"]);
    let states: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("a1".into(), "running".into()),
            ("a2".into(), "paused".into()),
            ("a3".into(), "running".into())
        ]
    );
    let mut after = d.qemu_pids();
    let mut b = before.clone();
    after.sort();
    b.sort();
    assert_eq!(after, b, "re-attach must not start new QEMUs");

    // Still controllable: guest agent, console, pause/resume, graceful stop.
    d.wait_vm("a1", Duration::from_secs(30), |v| v["guest_ready"] == true);
    assert_eq!(
        d.ok(&["vm", "exec", "a1", "--", "echo", "alive"]).trim(),
        "alive"
    );
    d.ok(&["vm", "resume", "a2"]);
    d.wait_vm("a2", Duration::from_secs(30), |v| {
        v["state"] == "running" && v["guest_ready"] == true
    });
    let out = d.cli_stdin(
        &["vm", "console", "a3"],
        Some(b"\necho reattached-$((2+3))\n"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reattached-5"));
    d.ok(&["vm", "stop", "a3"]);
    assert_eq!(d.json(&["vm", "show", "a3"])["state"], "stopped");
    d.ok(&["vm", "kill", "a1"]);
    d.ok(&["vm", "kill", "a2"]);
}

#[test]
fn real_qemu_killed_is_noticed_as_crashed() {
    let d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    d.ok(&["vm", "create", "victim", "--image", "tiny", "--start"]);
    // Follow the event stream with the CLI.
    let mut events = Command::new(vireo_testkit::binary("vireo"))
        .args(["events"])
        .env("VIREO_SOCKET", d.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pids = d.qemu_pids();
    assert_eq!(pids.len(), 1);
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let v = d.wait_vm("victim", Duration::from_secs(2), |v| {
        v["state"] == "crashed"
    });
    assert!(
        killed_at.elapsed() <= Duration::from_secs(2),
        "noticed after {:?}",
        killed_at.elapsed()
    );
    assert!(v["pid"].is_null());
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let mut out = String::new();
    events
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = events.wait();
    assert!(
        out.lines()
            .any(|l| l.contains("\"vm.crashed\"") && l.contains("vm/default/victim")),
        "no vm.crashed event in: {out}"
    );
    // A crashed VM starts again.
    d.ok(&["vm", "start", "victim"]);
    d.ok(&["vm", "kill", "victim"]);
}
