//! A full clone interrupted by SIGKILL of the daemon (issue 4): on restart the operation is
//! failed, and the pool directory holds exactly the files of the recorded volumes (no orphan
//! half-copy), the clone's VM directory is gone, and the name is usable again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use vireo_testkit::TestDaemon;

fn entries(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn real_daemon_killed_mid_full_clone_leaves_no_orphans() {
    let mut d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    // A source whose data disk holds 300 MiB of incompressible data, so the copy takes time.
    d.ok(&[
        "vm", "create", "big", "--image", "tiny", "--disk", "1GiB", "--start", "--wait",
    ]);
    d.ok(&[
        "vm",
        "exec",
        "big",
        "--timeout",
        "300",
        "--",
        "sh",
        "-c",
        "dd if=/dev/urandom of=/data/fill bs=1M count=300 2>/dev/null && sync",
    ]);
    d.ok(&["vm", "stop", "big"]);
    let pool = d.pool_dir("default");
    let vms_dir = d.state_dir().join("vms");
    let pool_before = entries(&pool);
    let vms_before = entries(&vms_dir);
    assert_eq!(d.pool_mismatch("default"), (vec![], vec![]));

    let (status, op) = d.http_json(
        "POST",
        "/v1/vms/big/clone",
        Some(r#"{"name":"big2","mode":"full"}"#),
    );
    assert_eq!(status, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    // Kill once the copy has written a good part of the data, but not all of it.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, op) = d.http_json("GET", &format!("/v1/operations/{id}"), None);
        assert_eq!(
            op["status"], "running",
            "the clone ended before the kill: {op}"
        );
        let done = op["progress"]["bytes_done"].as_u64().unwrap_or(0);
        if done >= 32 << 20 {
            break;
        }
        assert!(Instant::now() < deadline, "the copy never progressed: {op}");
        std::thread::sleep(Duration::from_millis(5));
    }
    d.kill9();
    let new_files: Vec<String> = entries(&pool).difference(&pool_before).cloned().collect();
    assert!(
        !new_files.is_empty(),
        "the half-made copy is in the pool directory at kill time"
    );

    d.restart().unwrap();
    let op = d.json(&["operation", "show", &id]);
    assert_eq!(op["status"], "failed", "{op}");
    assert!(
        op["error"].as_str().unwrap_or("").contains("interrupted"),
        "{op}"
    );
    assert!(!d.cli(&["vm", "show", "big2"]).status.success());
    assert_eq!(
        d.pool_mismatch("default"),
        (vec![], vec![]),
        "pool files vs volume records after the restart"
    );
    assert_eq!(entries(&pool), pool_before, "orphans in the pool");
    assert_eq!(entries(&vms_dir), vms_before, "orphan VM directories");

    // The name is free and a full clone now completes, an exact copy of the source disk.
    d.ok(&["vm", "clone", "big", "big2", "--full"]);
    let vols = d.volumes("default");
    let path_of = |vm: &str| {
        let v = vols
            .iter()
            .find(|v| v["attached_to"]["vm"] == vm && v["attached_to"]["disk"] == "data")
            .unwrap_or_else(|| panic!("no data volume of {vm}: {vols:?}"));
        assert!(v["backing"].is_null(), "a full clone has no backing: {v}");
        pool.join(format!("{}.qcow2", v["uuid"].as_str().unwrap()))
    };
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "qcow2"])
        .arg(path_of("big"))
        .arg(path_of("big2"))
        .output()
        .unwrap();
    assert!(cmp.status.success(), "qemu-img compare: {cmp:?}");
    assert_eq!(d.pool_mismatch("default"), (vec![], vec![]));
}
