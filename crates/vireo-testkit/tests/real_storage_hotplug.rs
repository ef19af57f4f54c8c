//! Volumes and running guests end to end (issue 4): a hot-attached volume shows up in the
//! tiny guest as a new `/dev/vdX` that can be written, an online resize is visible in the
//! guest, and a hot detach removes the device.

use std::time::{Duration, Instant};

use vireo_testkit::TestDaemon;

/// Block devices `vd*` the guest sees.
fn guest_disks(d: &TestDaemon, vm: &str) -> Vec<String> {
    let out = d.sh(
        vm,
        "cd /sys/block && for b in vd*; do [ -e \"$b\" ] && echo $b; done",
    );
    out.lines().map(str::to_string).collect()
}

/// Polls `probe` in the guest until it returns `Some`.
fn poll<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn real_hot_attach_write_resize_detach() {
    let d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    d.ok(&["vm", "create", "hp", "--image", "tiny", "--start", "--wait"]);
    let before = guest_disks(&d, "hp");
    assert_eq!(before.len(), 1, "only the data disk at first: {before:?}");

    d.ok(&["storage", "volume", "create", "extra", "--size", "64MiB"]);
    d.ok(&["vm", "disk", "attach", "hp", "extra"]);
    let vol = d.json(&["storage", "volume", "show", "extra"]);
    assert_eq!(vol["attached_to"]["vm"], "hp", "{vol}");
    let vm = d.json(&["vm", "show", "hp"]);
    assert!(
        vm["disks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "extra"),
        "{vm}"
    );

    // The guest sees a new virtio disk of the volume's size.
    let dev = poll("the hot-plugged disk in the guest", || {
        guest_disks(&d, "hp")
            .into_iter()
            .find(|b| !before.contains(b))
    });
    let sectors = |d: &TestDaemon| -> u64 {
        d.sh("hp", &format!("cat /sys/block/{dev}/size"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(sectors(&d), (64 << 20) / 512);

    // It can be written (straight to the device, then read back past the page cache).
    d.sh(
        "hp",
        &format!(
            "printf 'hotplug-marker-7f3a\\n' > /dev/{dev} && sync && echo 3 > /proc/sys/vm/drop_caches"
        ),
    );
    assert_eq!(
        d.sh("hp", &format!("head -c 20 /dev/{dev}")),
        "hotplug-marker-7f3a\n"
    );

    // Online resize: QEMU's block_resize, visible in the guest without a reboot.
    d.ok(&["storage", "volume", "resize", "extra", "--size", "128MiB"]);
    assert_eq!(
        d.json(&["storage", "volume", "show", "extra"])["virtual_size_bytes"],
        128u64 << 20
    );
    poll("the new size in the guest", || {
        (sectors(&d) == (128 << 20) / 512).then_some(())
    });

    // Hot detach: the device disappears, the volume is free again and kept its data.
    d.ok(&["vm", "disk", "detach", "hp", "extra"]);
    poll("the disk to leave the guest", || {
        (!guest_disks(&d, "hp").contains(&dev)).then_some(())
    });
    let vol = d.json(&["storage", "volume", "show", "extra"]);
    assert!(vol["attached_to"].is_null(), "{vol}");
    assert_eq!(vol["virtual_size_bytes"], 128u64 << 20);
    let file = d
        .pool_dir("default")
        .join(format!("{}.qcow2", vol["uuid"].as_str().unwrap()));
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes.windows(19).any(|w| w == b"hotplug-marker-7f3a"),
        "the guest's write is not in {}",
        file.display()
    );
    // The guest still works and its own data disk is untouched.
    assert_eq!(guest_disks(&d, "hp"), before);
    assert_eq!(d.sh("hp", "grep -c ' /data ' /proc/mounts").trim(), "1");

    // Attach again (a second hotplug into the same VM) and delete after the final detach.
    d.ok(&["vm", "disk", "attach", "hp", "extra", "--as", "scratch"]);
    let dev2 = poll("the re-attached disk", || {
        guest_disks(&d, "hp")
            .into_iter()
            .find(|b| !before.contains(b))
    });
    assert_eq!(
        d.sh("hp", &format!("head -c 20 /dev/{dev2}")),
        "hotplug-marker-7f3a\n"
    );
    d.ok(&["vm", "disk", "detach", "hp", "scratch"]);
    d.ok(&["storage", "volume", "delete", "extra"]);
    assert!(!file.exists());
    d.ok(&["vm", "kill", "hp"]);
}
