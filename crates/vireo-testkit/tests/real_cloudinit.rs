//! cloud-init seeds end to end: the daemon writes the `cidata` ISO, QEMU attaches it as a
//! CD-ROM and the tiny guest's kernel mounts it and reads the host name from meta-data; a
//! changed config gets a new instance-id; clones get their own; bad input is refused.

use vireo_testkit::TestDaemon;

fn seed_file(d: &TestDaemon, vm: &str, file: &str) -> String {
    d.ok(&[
        "vm",
        "exec",
        vm,
        "--",
        "sh",
        "-c",
        &format!(
            "mkdir -p /mnt/seed && mount -t iso9660 -o ro /dev/sr0 /mnt/seed && cat /mnt/seed/{file}; r=$?; umount /mnt/seed; exit $r"
        ),
    ])
}

fn instance_id(meta: &str) -> String {
    meta.lines()
        .find_map(|l| l.strip_prefix("instance-id:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_default()
}

#[test]
fn real_cloud_init_seed_reaches_the_guest() {
    let d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    let dir = tempfile::tempdir().unwrap();
    let ud = dir.path().join("user-data");
    std::fs::write(&ud, "#cloud-config\nruncmd:\n  - [touch, /tmp/ran]\n").unwrap();
    d.ok(&[
        "vm",
        "create",
        "ci1",
        "--image",
        "tiny",
        "--hostname",
        "seed-host",
        "--user-data",
        ud.to_str().unwrap(),
        "--start",
        "--wait",
    ]);
    let vm = d.json(&["vm", "show", "ci1"]);
    assert_eq!(vm["cloud_init"]["hostname"], "seed-host", "{vm}");
    let meta = seed_file(&d, "ci1", "meta-data");
    assert!(meta.contains("seed-host"), "{meta}");
    let first_id = instance_id(&meta);
    assert!(first_id.starts_with("vireo-"), "{meta}");
    let user = seed_file(&d, "ci1", "user-data");
    assert!(user.contains("touch, /tmp/ran"), "{user}");
    let net = seed_file(&d, "ci1", "network-config");
    assert!(net.contains("dhcp4"), "{net}");

    // Editing the settings of the stopped VM regenerates the seed with a new instance-id.
    d.ok(&["vm", "stop", "ci1", "--force"]);
    d.ok(&["vm", "edit", "ci1", "--hostname", "renamed"]);
    d.ok(&["vm", "start", "ci1"]);
    d.wait_vm("ci1", std::time::Duration::from_secs(120), |v| {
        v["guest_ready"] == true
    });
    let meta = seed_file(&d, "ci1", "meta-data");
    assert!(meta.contains("renamed"), "{meta}");
    assert_ne!(instance_id(&meta), first_id);

    // Bad input is refused and creates nothing.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "#cloud-config\nruncmd: [unclosed\n").unwrap();
    let out = d.cli(&[
        "vm",
        "create",
        "ci2",
        "--image",
        "tiny",
        "--user-data",
        bad.to_str().unwrap(),
    ]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("user"), "{err}");
    let ign = dir.path().join("ign");
    std::fs::write(&ign, "not json").unwrap();
    let out = d.cli(&[
        "vm",
        "create",
        "ci3",
        "--image",
        "tiny",
        "--ignition",
        ign.to_str().unwrap(),
    ]);
    assert_ne!(out.status.code(), Some(0));
    let big = "#!/bin/sh\n".to_string() + &"x".repeat(1 << 20);
    let body =
        serde_json::json!({"name": "ci4", "image": "tiny", "cloud_init": {"user_data": big}});
    let (status, text) = d.http("POST", "/v1/vms", Some(&body.to_string()));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("cloud_init.user_data"), "{text}");
    let vms = d.json(&["vm", "list"]);
    assert_eq!(vms.as_array().unwrap().len(), 1, "{vms}");
    d.ok(&["vm", "kill", "ci1"]);
    d.ok(&["vm", "delete", "ci1"]);
}
