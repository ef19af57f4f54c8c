//! Browser tests of the UI (`ui/tests/*.test.mjs`): a real `vireod` with the TCP/TLS listener
//! and an API token, the tiny image, and Debian's Chromium driven by playwright-core through
//! `node --test`. Screenshots of the main pages land in `target/ui-screenshots/`.
//!
//! The daemon manages networks (the UI creates and deletes one), so it runs inside a
//! throwaway network namespace with only a loopback link, and node + Chromium run in the same
//! namespace to reach its listener on 127.0.0.1. Nothing the test does touches the host's
//! namespace; the namespace (and the bridges the daemon made in it) is deleted at the end.
//!
//! Needs what scripts/test.sh prepares: `npm ci && npm run build` in `ui/` before `cargo
//! build` (so the daemon embeds the real bundle), Node.js and `/usr/bin/chromium`.

use std::process::Command;
use std::time::Instant;

use vireo_testkit::{repo_root, tail, DaemonOptions, TestDaemon};

/// A network namespace with loopback up; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let ns = Netns(name);
        for args in [
            vec!["netns", "add", ns.0.as_str()],
            vec!["-n", ns.0.as_str(), "link", "set", "lo", "up"],
        ] {
            let out = Command::new("ip").args(&args).output().expect("running ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn browser_ui_end_to_end() {
    let ui = repo_root().join("ui");
    assert!(
        ui.join("node_modules/playwright-core").is_dir(),
        "ui/node_modules is missing: run `npm ci` in ui/ (scripts/test.sh does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (scripts/deps.sh does)"
    );

    // Declared before the daemon so it is dropped (deleted) after the daemon is gone.
    let ns = Netns::new(format!("vui{}", std::process::id() % 100_000));
    let port = free_port();
    let d = TestDaemon::start_with(DaemonOptions {
        listen: Some(format!("127.0.0.1:{port}")),
        netns: Some(ns.0.clone()),
        // No nat default network (it would want an uplink) and no Open vSwitch: the browser
        // test creates an isolated network only.
        network_config: "default_network = false\novs = false".into(),
        ..Default::default()
    })
    .unwrap();
    d.ensure_tiny();
    let token = d.json(&["token", "create", "browser"])["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let shots = repo_root().join("target/ui-screenshots");

    let started = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "node"])
        .args(["--test", "--test-concurrency=1", "tests/"])
        .current_dir(&ui)
        .env("VIREO_UI_URL", format!("https://127.0.0.1:{port}"))
        .env("VIREO_UI_TOKEN", &token)
        .env("VIREO_UI_SCREENSHOTS", &shots)
        .env("VIREO_UI_READY_MARKER", "VIREO-GUEST-READY")
        .env("CHROMIUM", &chromium)
        .output()
        .expect("running node (install nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "browser tests took {:.1} s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "browser tests failed ({}):\n{stdout}\n{}\ndaemon log tail:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tail(&d.log(), 60)
    );
    // The run must have executed the tests, and the VM it made must be gone.
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(
        !stdout.contains("# pass 0"),
        "no browser test ran:\n{stdout}"
    );
    // Everything the run made is gone again: VMs (the clone too), the network, the volume.
    let vms = d.json(&["vm", "list"]);
    assert_eq!(vms.as_array().map(Vec::len), Some(0), "{vms}");
    let nets = d.json(&["network", "list"]);
    assert_eq!(nets.as_array().map(Vec::len), Some(0), "{nets}");
    let vols = d.json(&["storage", "volume", "list"]);
    assert_eq!(vols.as_array().map(Vec::len), Some(0), "{vols}");
    for page in [
        "02-dashboard",
        "03-network-bad-cidr",
        "04-networks",
        "05-network-page",
        "08-vm-console",
        "09-vm-snapshots",
        "12-vm-hardware-attached",
        "13-pool-volumes",
        "14-network-leases",
        "17-vm-list-clone",
        "20-operations",
    ] {
        let p = shots.join(format!("{page}.png"));
        assert!(
            p.metadata().map(|m| m.len() > 1000).unwrap_or(false),
            "{} missing",
            p.display()
        );
    }
}
