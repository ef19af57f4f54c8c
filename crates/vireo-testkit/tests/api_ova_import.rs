//! `vireo image import FILE.ova`: a package made by the image engine's exporter is verified,
//! converted and mapped onto a new VM; a tampered package is refused and leaves nothing.

use std::path::Path;
use std::process::Command;

use vireo_image::ovf::{Firmware, OvfDescriptor, OvfNic};
use vireo_testkit::TestDaemon;

fn make_ova(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let raw = dir.join("disk.raw");
    // 8 MiB with recognisable data at both ends and a hole in the middle.
    let mut data = vec![0u8; 8 << 20];
    for (i, b) in data[..1 << 20].iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    data[(7 << 20)..(7 << 20) + 11].copy_from_slice(b"end-of-disk");
    std::fs::write(&raw, &data).unwrap();
    let src = vireo_image::detect::open(
        &raw,
        &vireo_image::Limits::default(),
        &vireo_image::PathPolicy::default(),
    )
    .unwrap();
    let d = OvfDescriptor {
        name: "Legacy App".into(),
        cpus: 2,
        memory_bytes: 512 << 20,
        firmware: Firmware::Bios,
        nics: vec![OvfNic {
            network: Some("VM Network".into()),
            model: Some("VmxNet3".into()),
            mac: None,
        }],
        ..Default::default()
    };
    let ova = dir.join("legacy-app.ova");
    vireo_image::ova::export(&[("disk1", src.as_ref())], &d, &ova).unwrap();
    (ova, raw)
}

#[test]
fn ova_import_creates_a_vm_and_refuses_tampered_packages() {
    let d = TestDaemon::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (ova, raw) = make_ova(work.path());

    let vm = d.json(&["image", "import", ova.to_str().unwrap()]);
    assert_eq!(vm["name"], "legacy-app", "{vm}");
    assert_eq!(vm["state"], "stopped");
    assert_eq!(vm["vcpus"], 2);
    assert_eq!(vm["memory_mib"], 512);
    assert_eq!(vm["spec"]["boot"]["kind"], "disk");
    assert_eq!(vm["disks"][0]["virtual_size_bytes"], 8 << 20);
    assert_eq!(vm["nics"].as_array().unwrap().len(), 1);
    // The converted disk (moved into the default pool) holds exactly the exported data
    // (qemu-img is the oracle).
    let disk = std::path::PathBuf::from(vm["spec"]["disks"][0]["path"].as_str().unwrap());
    assert!(
        disk.starts_with(d.state_dir().join("pools/default")),
        "{}",
        disk.display()
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(&raw)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(cmp.success(), "imported disk differs from the source");
    let check = Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(check.success());

    // Export it again: an OVA that tar and qemu-img read, with the same disk content, that
    // imports back.
    let out = work.path().join("exported.ova");
    d.ok(&["vm", "export", "legacy-app", out.to_str().unwrap()]);
    let unpack = work.path().join("unpacked");
    std::fs::create_dir_all(&unpack).unwrap();
    let tar = Command::new("tar")
        .arg("-xf")
        .arg(&out)
        .arg("-C")
        .arg(&unpack)
        .status()
        .unwrap();
    assert!(tar.success());
    let mut members: Vec<String> = std::fs::read_dir(&unpack)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    members.sort();
    assert!(
        members.iter().any(|m| m.ends_with(".ovf")) && members.iter().any(|m| m.ends_with(".mf")),
        "{members:?}"
    );
    let vmdk = members.iter().find(|m| m.ends_with(".vmdk")).unwrap();
    let cmp = Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(&raw)
        .arg(unpack.join(vmdk))
        .status()
        .unwrap();
    assert!(cmp.success(), "exported VMDK differs from the source");
    let back = d.json(&[
        "image",
        "import",
        out.to_str().unwrap(),
        "--name",
        "round-trip",
    ]);
    assert_eq!(back["vcpus"], 2);
    assert_eq!(back["memory_mib"], 512);
    // A running VM is not exported (its disks would be inconsistent).
    let (status, _) = d.http("GET", "/v1/vms/missing/export", None);
    assert_eq!(status, 404);

    // Same name again: conflict, nothing new on disk.
    let dirs_before = std::fs::read_dir(d.state_dir().join("vms"))
        .unwrap()
        .count();
    let out = d.cli(&["image", "import", ova.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Tamper with the disk member: the manifest check refuses the package.
    let mut bytes = std::fs::read(&ova).unwrap();
    let pos = bytes.windows(11).position(|w| w == b"end-of-disk");
    let flip = match pos {
        Some(p) => p,
        // Compressed grains: flip a byte in the middle of the archive instead.
        None => bytes.len() / 2,
    };
    bytes[flip] ^= 0x55;
    let bad = work.path().join("tampered.ova");
    std::fs::write(&bad, &bytes).unwrap();
    let out = d.cli(&[
        "image",
        "import",
        bad.to_str().unwrap(),
        "--name",
        "tampered",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused"), "{err}");
    assert!(!d.cli(&["vm", "show", "tampered"]).status.success());
    assert_eq!(
        std::fs::read_dir(d.state_dir().join("vms"))
            .unwrap()
            .count(),
        dirs_before
    );
    let uploads = d.state_dir().join("uploads");
    assert_eq!(
        std::fs::read_dir(&uploads).map(|r| r.count()).unwrap_or(0),
        0,
        "upload left behind"
    );

    // Not an OVA at all.
    let junk = work.path().join("junk.ova");
    std::fs::write(&junk, b"definitely not a tar archive").unwrap();
    let out = d.cli(&["image", "import", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!d.cli(&["vm", "show", "junk"]).status.success());
}
