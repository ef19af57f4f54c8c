//! Disk boot through firmware: the tiny guest as a GPT disk image (GRUB for BIOS and UEFI),
//! VMs created as copy-on-write overlays of it.

use std::time::Duration;

use vireo_testkit::TestDaemon;

#[test]
fn real_disk_image_boots_with_bios_and_uefi() {
    let d = TestDaemon::start().unwrap();
    if !d.cli(&["image", "show", "tiny-disk"]).status.success() {
        d.ok(&["image", "build", "tiny-disk"]);
    }
    let img = d.json(&["image", "show", "tiny-disk"]);
    assert_eq!(img["content"]["kind"], "disk", "{img}");

    for (name, firmware) in [("bios1", "bios"), ("uefi1", "uefi")] {
        d.ok(&[
            "vm",
            "create",
            name,
            "--image",
            "tiny-disk",
            "--firmware",
            firmware,
            "--start",
            "--wait",
            "--timeout",
            "300",
        ]);
        let vm = d.json(&["vm", "show", name]);
        assert_eq!(vm["spec"]["boot"]["firmware"], firmware, "{vm}");
        assert_eq!(vm["guest_ready"], true);
        let efi = d.cli(&["vm", "exec", name, "--", "test", "-d", "/sys/firmware/efi"]);
        assert_eq!(
            efi.status.code(),
            Some(if firmware == "uefi" { 0 } else { 1 }),
            "{name}: EFI firmware check"
        );
        // The VM's disk is an overlay: the image's file stays untouched and shared.
        let log = String::from_utf8(d.ok(&["vm", "console-log", name]).into_bytes()).unwrap();
        assert!(log.contains("VIREO-GUEST-READY"));
        d.ok(&["vm", "stop", name, "--timeout", "60"]);
        d.wait_vm(name, Duration::from_secs(5), |v| v["state"] == "stopped");
    }
    // The image cannot be deleted while VMs use it.
    let out = d.cli(&["image", "delete", "tiny-disk"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("used by VMs"));
}
