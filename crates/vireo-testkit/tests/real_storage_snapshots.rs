//! Snapshots end to end (issue 4): the real daemon and CLI, real TCG guests. The guest writes a
//! marker to its data disk (`/data`, the virtio disk with serial `data`), the VM is
//! snapshotted, the marker changes, and a restore brings the first content back — disk-only
//! snapshots of a running and of a stopped VM, and memory snapshots, where a counter process
//! in the guest also continues from its value at snapshot time.

use std::time::{Duration, Instant};

use vireo_testkit::TestDaemon;

/// Writes `content` to /data/marker and flushes it to the disk.
fn set_marker(d: &TestDaemon, vm: &str, content: &str) {
    d.sh(vm, &format!("echo {content} > /data/marker && sync"));
}

fn marker(d: &TestDaemon, vm: &str) -> String {
    d.sh(vm, "cat /data/marker").trim().to_string()
}

fn snapshot_names(d: &TestDaemon, vm: &str) -> Vec<String> {
    d.json(&["vm", "snapshot", "list", vm])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn real_disk_snapshot_restore_running_and_stopped() {
    let d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    d.ok(&[
        "vm", "create", "snap1", "--image", "tiny", "--start", "--wait",
    ]);

    // Running VM, disk-only snapshot.
    set_marker(&d, "snap1", "first");
    d.ok(&["vm", "snapshot", "create", "snap1", "hot"]);
    let list = d.json(&["vm", "snapshot", "list", "snap1"]);
    let hot = &list.as_array().unwrap()[0];
    assert_eq!(hot["name"], "hot", "{list}");
    assert_eq!(hot["memory"], false, "{list}");
    assert_eq!(hot["vm_state"], "running", "{list}");
    assert_eq!(hot["current"], true, "{list}");
    set_marker(&d, "snap1", "second");
    assert_eq!(marker(&d, "snap1"), "second");
    d.ok(&["vm", "snapshot", "restore", "snap1", "hot"]);
    // A disk-only restore of a running VM discards its state and boots it again.
    d.wait_ready("snap1");
    assert_eq!(marker(&d, "snap1"), "first", "restore of 'hot'");

    // Stopped VM: snapshot offline, change the marker in a later boot, restore offline.
    set_marker(&d, "snap1", "third");
    d.ok(&["vm", "stop", "snap1"]);
    d.ok(&["vm", "snapshot", "create", "snap1", "cold"]);
    let list = d.json(&["vm", "snapshot", "list", "snap1"]);
    let cold = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "cold")
        .unwrap_or_else(|| panic!("no snapshot cold: {list}"));
    assert_eq!(cold["vm_state"], "stopped", "{list}");
    assert_eq!(
        cold["parent"], "hot",
        "the tree: cold was taken after restoring hot"
    );
    d.ok(&["vm", "start", "snap1"]);
    d.wait_ready("snap1");
    assert_eq!(marker(&d, "snap1"), "third");
    set_marker(&d, "snap1", "fourth");
    d.ok(&["vm", "stop", "snap1"]);
    d.ok(&["vm", "snapshot", "restore", "snap1", "cold"]);
    assert_eq!(d.json(&["vm", "show", "snap1"])["state"], "stopped");
    d.ok(&["vm", "start", "snap1"]);
    d.wait_ready("snap1");
    assert_eq!(marker(&d, "snap1"), "third", "restore of 'cold'");

    // Restore to the older snapshot, then delete it from the middle of the tree: the other
    // one stays valid.
    d.ok(&["vm", "snapshot", "restore", "snap1", "hot"]);
    d.wait_ready("snap1");
    assert_eq!(marker(&d, "snap1"), "first", "restore back to 'hot'");
    d.ok(&["vm", "snapshot", "delete", "snap1", "hot"]);
    assert_eq!(snapshot_names(&d, "snap1"), vec!["cold".to_string()]);
    d.ok(&["vm", "snapshot", "restore", "snap1", "cold"]);
    d.wait_ready("snap1");
    assert_eq!(
        marker(&d, "snap1"),
        "third",
        "'cold' after deleting its parent"
    );
    d.ok(&["vm", "kill", "snap1"]);
}

/// The guest counter's current value.
fn counter(d: &TestDaemon, vm: &str) -> u64 {
    let out = d.sh(vm, "cat /tmp/c");
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("counter {out:?}: {e}"))
}

/// Waits until the guest counter reaches `at_least`.
fn wait_counter(d: &TestDaemon, vm: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = counter(d, vm);
        if c >= at_least {
            return c;
        }
        assert!(Instant::now() < deadline, "counter stuck at {c}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn real_memory_snapshot_resumes_the_counter() {
    let d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    d.ok(&[
        "vm", "create", "mem1", "--image", "tiny", "--start", "--wait",
    ]);
    set_marker(&d, "mem1", "before");
    // A counter in the guest: +1 every 0.2 s, in RAM (/tmp is tmpfs), detached from the
    // agent's pipes so the exec returns.
    d.sh(
        "mem1",
        "sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.2; done' \
         </dev/null >/dev/null 2>&1 &",
    );
    wait_counter(&d, "mem1", 5);

    // The snapshot's counter value lies between the readings just before and just after.
    let before = counter(&d, "mem1");
    d.ok(&["vm", "snapshot", "create", "mem1", "live", "--memory"]);
    // Once the operation has succeeded the VM runs again, and stays running (checked at the
    // end, so the restore checks below run either way).
    let states_after_create = states_for(&d, "mem1", SETTLE);
    let after = counter(&d, "mem1");
    assert!(after >= before, "{before} -> {after}");
    let list = d.json(&["vm", "snapshot", "list", "mem1"]);
    assert_eq!(list[0]["memory"], true, "{list}");
    assert_eq!(
        list[0]["vm_state"],
        "running",
        "a memory snapshot of a running VM must record 'running' (a restore resumes only \
         then): {list}\ndaemon log tail:\n{}",
        vireo_testkit::tail(&d.log(), 60)
    );

    // Let the counter run well past the snapshot value and change the marker.
    set_marker(&d, "mem1", "after");
    let later = wait_counter(&d, "mem1", after + 25);

    d.ok(&["vm", "snapshot", "restore", "mem1", "live"]);
    let states_after_restore = states_for(&d, "mem1", SETTLE);
    assert_eq!(
        states_after_restore.last().map(String::as_str),
        Some("running"),
        "{states_after_restore:?}"
    );
    let restored = counter(&d, "mem1");
    // Right after the restore the counter is back near its snapshot value (a few ticks pass
    // between the restore and the read), far below the value it had reached.
    assert!(
        restored >= before && restored <= after + 12 && restored < later,
        "counter after restore {restored}: snapshot taken between {before} and {after}, \
         it had reached {later}"
    );
    // ...and it keeps counting: the process itself came back.
    wait_counter(&d, "mem1", restored + 3);
    assert_eq!(marker(&d, "mem1"), "before", "the data disk came back too");

    // A memory snapshot also restores into a VM that is not running.
    d.ok(&["vm", "kill", "mem1"]);
    d.ok(&["vm", "snapshot", "restore", "mem1", "live"]);
    let states_after_cold_restore = states_for(&d, "mem1", SETTLE);
    d.wait_ready("mem1");
    let restored = counter(&d, "mem1");
    assert!(
        restored >= before && restored <= after + 12,
        "counter after restoring into a stopped VM {restored}: snapshot between {before} and \
         {after}"
    );
    wait_counter(&d, "mem1", restored + 3);
    assert_eq!(marker(&d, "mem1"), "before");
    d.ok(&["vm", "kill", "mem1"]);
    assert!(
        states_after_restore.iter().all(|s| s == "running")
            && states_after_cold_restore.iter().all(|s| s == "running"),
        "after `vm snapshot restore` of a memory snapshot taken while running succeeded, the VM \
         was seen in states {states_after_restore:?} (restored into the running VM) and \
         {states_after_cold_restore:?} (into the killed VM): the load's STOP/RESUME events are \
         applied after the operation ends\ndaemon log tail:\n{}",
        vireo_testkit::tail(&d.log(), 60)
    );
    assert!(
        states_after_create.iter().all(|s| s == "running"),
        "after `vm snapshot create --memory` succeeded the VM was seen in states \
         {states_after_create:?}: QEMU's STOP/RESUME events of the save are applied after the \
         operation ends, so a `vm exec` right after the snapshot gets 409 'VM is paused'"
    );
}

/// How long the VM state is watched after a snapshot operation returned.
const SETTLE: Duration = Duration::from_millis(600);

/// The distinct states `vm show` reports for `vm` during `window` (polled), in order.
fn states_for(d: &TestDaemon, vm: &str, window: Duration) -> Vec<String> {
    let end = Instant::now() + window;
    let mut seen: Vec<String> = Vec::new();
    while Instant::now() < end {
        let s = d.json(&["vm", "show", vm])["state"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    seen
}
