//! OVA export/import: round trips through qemu-img and GNU tar, and hostile archives.

mod foreign_common;

use std::path::{Path, PathBuf};

use foreign_common::*;
use vireo_image::ova::{self, ManifestStatus};
use vireo_image::ovf::{ControllerKind, Firmware, OsInfo, OvfDescriptor, OvfDisk, OvfNic};
use vireo_image::{BlockSource, ImageError, Limits, PathPolicy};

fn descriptor() -> OvfDescriptor {
    OvfDescriptor {
        name: "web".into(),
        cpus: 2,
        memory_bytes: 1 << 30,
        firmware: Firmware::Efi,
        os: OsInfo {
            cim_id: Some(101),
            vmware_os_type: Some("otherLinux64Guest".into()),
            description: None,
        },
        virtual_system_type: None,
        files: vec![],
        disks: vec![OvfDisk {
            disk_id: "root".into(),
            file_ref: None,
            capacity_bytes: 0,
            populated_size: None,
            format: None,
            controller: Some(ControllerKind::Sata),
            controller_model: None,
            address_on_parent: Some(0),
        }],
        nics: vec![OvfNic {
            network: Some("lan".into()),
            model: Some("VmxNet3".into()),
            mac: None,
        }],
        networks: vec![],
    }
}

fn open_any(path: &Path) -> Box<dyn BlockSource> {
    vireo_image::detect::open(path, &Limits::default(), &PathPolicy::default()).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn export_is_readable_by_qemu_and_gnu_tar_and_imports_back() {
    let dir = scratch();
    let d = dir.path();
    let raw1 = d.join("one.raw");
    write_pattern_raw(&raw1, 5 << 20, 1);
    let raw2 = d.join("two.raw");
    write_pattern_raw(&raw2, 1_000_448, 2);
    let q2 = d.join("two.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw2), s(&q2)]);
    let (src1, src2) = (open_any(&raw1), open_any(&q2));
    let out_dir = d.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("web.ova");
    let mut phases = Vec::new();
    let exported = ova::export_with(
        &[("web-disk1", src1.as_ref()), ("web-disk2", src2.as_ref())],
        &descriptor(),
        &out,
        &mut |p| phases.push(p.phase),
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap();
    assert!(phases.iter().any(|p| matches!(p, ova::OvaPhase::Packing)));
    // Only the archive is left behind.
    assert_eq!(files_in(&out_dir), vec!["web.ova"]);
    let listing = run("tar", &["tf", s(&out)]);
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        vec!["web.ovf", "web.mf", "web-disk1.vmdk", "web-disk2.vmdk"]
    );
    assert_eq!(exported.members.len(), 4);

    let x = d.join("x");
    std::fs::create_dir(&x).unwrap();
    run("tar", &["xf", s(&out), "-C", s(&x)]);
    // The manifest matches sha256sum of every member.
    let mf = std::fs::read_to_string(x.join("web.mf")).unwrap();
    for name in ["web.ovf", "web-disk1.vmdk", "web-disk2.vmdk"] {
        let sum = run("sha256sum", &[s(&x.join(name))]);
        let digest = sum.split_whitespace().next().unwrap();
        assert!(mf.contains(&format!("SHA256({name})= {digest}")), "{mf}");
    }
    for (vmdk, raw) in [("web-disk1.vmdk", &raw1), ("web-disk2.vmdk", &raw2)] {
        let p = x.join(vmdk);
        let info = qemu_img(&["info", "--output=json", s(&p)]);
        assert!(info.contains("streamOptimized"), "{info}");
        let (ok, out) = try_run("qemu-img", &["check", "-f", "vmdk", s(&p)]);
        assert!(ok, "{out}");
        let (same, out) = try_run(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "vmdk", s(raw), s(&p)],
        );
        assert!(same, "{out}");
    }
    let ovf_text = std::fs::read_to_string(x.join("web.ovf")).unwrap();
    assert!(ovf_text.contains("vmw:value=\"efi\""));

    // Our own import round-trips it.
    let dest = d.join("import");
    std::fs::create_dir(&dest).unwrap();
    let imported = ova::import(&out, &dest, &Limits::default(), &mut |_| {}).unwrap();
    assert_eq!(
        imported.manifest,
        ManifestStatus::Verified {
            algorithms: vec![ova::DigestAlgorithm::Sha256]
        }
    );
    assert!(!imported.certificate_present);
    let desc = &imported.descriptor;
    assert_eq!(desc, &exported.descriptor);
    assert_eq!(
        (
            desc.name.as_str(),
            desc.cpus,
            desc.memory_bytes,
            desc.firmware
        ),
        ("web", 2, 1 << 30, Firmware::Efi)
    );
    assert_eq!(desc.disks[0].disk_id, "root");
    assert_eq!(desc.disks[0].controller, Some(ControllerKind::Sata));
    assert_eq!(desc.networks, vec!["lan"]);
    assert_eq!(imported.disks.len(), 2);
    for (disk, raw) in imported.disks.iter().zip([&raw1, &raw2]) {
        assert_eq!(disk.source_format, vireo_image::Format::Vmdk);
        let (same, out) = try_run(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "qcow2", s(raw), s(&disk.path)],
        );
        assert!(same, "{out}");
    }
    assert_eq!(
        files_in(&dest).len(),
        2,
        "only the converted disks remain: {:?}",
        files_in(&dest)
    );
}

const OVF_TEMPLATE: &str = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:href="DISK" ovf:id="f1" ovf:size="SIZE"/></References>
  <DiskSection><Info>d</Info><Disk ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="d1" ovf:fileRef="f1"/></DiskSection>
  <VirtualSystem ovf:id="tarvm"><Info>x</Info>
    <VirtualHardwareSection><Info>h</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>3</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>512</rasd:VirtualQuantity></Item>
      <Item><rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;

/// Builds a package directory: vm.ovf, a stream-optimized disk named `disk`, and optionally
/// a SHA-1 manifest. Returns the disk's raw source.
fn package_dir(dir: &Path, disk: &str, manifest: bool) -> PathBuf {
    let raw = dir.join("src.raw");
    write_pattern_raw(&raw, 2 << 20, 9);
    let vmdk = dir.join(disk);
    qemu_img_from_raw(&raw, "vmdk", "subformat=streamOptimized", &vmdk);
    let size = std::fs::metadata(&vmdk).unwrap().len();
    let ovf = OVF_TEMPLATE
        .replace("DISK", disk)
        .replace("SIZE", &size.to_string());
    std::fs::write(dir.join("vm.ovf"), ovf).unwrap();
    if manifest {
        let mut mf = String::new();
        for name in ["vm.ovf", disk] {
            let sum = run("sha1sum", &[s(&dir.join(name))]);
            mf.push_str(&format!(
                "SHA1({name})= {}\n",
                sum.split_whitespace().next().unwrap()
            ));
        }
        std::fs::write(dir.join("vm.mf"), mf).unwrap();
    }
    raw
}

#[test]
fn imports_packages_made_by_gnu_tar() {
    let dir = scratch();
    let long = format!("{}.vmdk", "a-very-long-disk-name".repeat(6));
    for (format, disk, manifest) in [
        ("ustar", "disk1.vmdk", true),
        ("pax", long.as_str(), true),
        ("gnu", long.as_str(), false),
    ] {
        let pkg = dir.path().join(format!("pkg-{format}"));
        std::fs::create_dir(&pkg).unwrap();
        let raw = package_dir(&pkg, disk, manifest);
        let ova_path = dir.path().join(format!("{format}.ova"));
        let mut args = vec![
            format!("--format={format}"),
            "-cf".into(),
            s(&ova_path).into(),
            "-C".into(),
            s(&pkg).into(),
            "vm.ovf".into(),
        ];
        if manifest {
            args.push("vm.mf".into());
        }
        args.push(disk.into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("tar", &args);
        let dest = dir.path().join(format!("dest-{format}"));
        std::fs::create_dir(&dest).unwrap();
        let imported = ova::import(&ova_path, &dest, &Limits::default(), &mut |_| {})
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(imported.descriptor.name, "tarvm");
        assert_eq!(imported.descriptor.cpus, 3);
        assert_eq!(imported.descriptor.memory_bytes, 512 << 20);
        assert_eq!(imported.descriptor.firmware, Firmware::Bios);
        let expected = if manifest {
            ManifestStatus::Verified {
                algorithms: vec![ova::DigestAlgorithm::Sha1],
            }
        } else {
            ManifestStatus::Absent
        };
        assert_eq!(imported.manifest, expected);
        assert_eq!(imported.disks[0].member, disk);
        let (same, out) = try_run(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "qcow2",
                s(&raw),
                s(&imported.disks[0].path),
            ],
        );
        assert!(same, "{format}: {out}");
    }
}

/// A tar header with any name and type (the library's writer refuses unsafe names).
fn raw_header(name: &str, size: u64, kind: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn raw_tar(members: &[(&str, &[u8], u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data, kind) in members {
        out.extend(raw_header(name, data.len() as u64, *kind));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend([0u8; 1024]);
    out
}

#[test]
fn hostile_archives_are_refused_without_leftovers() {
    let dir = scratch();
    let pkg = dir.path().join("pkg");
    std::fs::create_dir(&pkg).unwrap();
    package_dir(&pkg, "disk1.vmdk", true);
    let ovf = std::fs::read(pkg.join("vm.ovf")).unwrap();
    let mf = std::fs::read(pkg.join("vm.mf")).unwrap();
    let disk = std::fs::read(pkg.join("disk1.vmdk")).unwrap();
    let sha1 = |data: &[u8]| {
        let p = dir.path().join("h");
        std::fs::write(&p, data).unwrap();
        run("sha1sum", &[s(&p)])
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let bad_mf = String::from_utf8(mf.clone())
        .unwrap()
        .replace(&sha1(&disk), &"0".repeat(40));
    let laughs = b"<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;\">]><Envelope>&b;</Envelope>";
    let ovf_only_mf = format!("SHA1(vm.ovf)= {}\n", sha1(&ovf));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            raw_tar(&[("vm.ovf", &ovf, b'0'), ("../disk1.vmdk", &disk, b'0')]),
            "member name",
        ),
        (
            "absolute",
            raw_tar(&[("vm.ovf", &ovf, b'0'), ("/tmp/disk1.vmdk", &disk, b'0')]),
            "absolute",
        ),
        (
            "symlink",
            raw_tar(&[("vm.ovf", &ovf, b'0'), ("disk1.vmdk", b"", b'2')]),
            "link",
        ),
        (
            "hardlink",
            raw_tar(&[("vm.ovf", &ovf, b'0'), ("disk1.vmdk", b"", b'1')]),
            "link",
        ),
        (
            "ovf not first",
            raw_tar(&[("disk1.vmdk", &disk, b'0'), ("vm.ovf", &ovf, b'0')]),
            "first member",
        ),
        (
            "digest mismatch",
            raw_tar(&[
                ("vm.ovf", &ovf, b'0'),
                ("vm.mf", bad_mf.as_bytes(), b'0'),
                ("disk1.vmdk", &disk, b'0'),
            ]),
            "does not match",
        ),
        (
            "unlisted member",
            raw_tar(&[
                ("vm.ovf", &ovf, b'0'),
                ("vm.mf", ovf_only_mf.as_bytes(), b'0'),
                ("disk1.vmdk", &disk, b'0'),
            ]),
            "not covered",
        ),
        (
            "missing disk",
            raw_tar(&[("vm.ovf", &ovf, b'0')]),
            "does not hold",
        ),
        (
            "billion laughs",
            raw_tar(&[("vm.ovf", laughs, b'0')]),
            "DTD",
        ),
        (
            "duplicate",
            raw_tar(&[
                ("vm.ovf", &ovf, b'0'),
                ("disk1.vmdk", &disk, b'0'),
                ("disk1.vmdk", &disk, b'0'),
            ]),
            "twice",
        ),
        (
            "device",
            raw_tar(&[("vm.ovf", &ovf, b'0'), ("disk1.vmdk", b"", b'3')]),
            "unsupported type",
        ),
    ];
    for (what, bytes, expect) in cases {
        let ova_path = dir.path().join("bad.ova");
        std::fs::write(&ova_path, &bytes).unwrap();
        let dest = dir.path().join(format!("dest-{}", what.replace(' ', "-")));
        std::fs::create_dir(&dest).unwrap();
        let err = ova::import(&ova_path, &dest, &Limits::default(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{what}: {err}");
        assert!(
            files_in(&dest).is_empty(),
            "{what}: left {:?}",
            files_in(&dest)
        );
    }
    assert!(!dir.path().join("disk1.vmdk").exists() && !Path::new("/tmp/disk1.vmdk").exists());

    // Truncated archive.
    let full = raw_tar(&[
        ("vm.ovf", &ovf, b'0'),
        ("vm.mf", &mf, b'0'),
        ("disk1.vmdk", &disk, b'0'),
    ]);
    let ova_path = dir.path().join("trunc.ova");
    std::fs::write(&ova_path, &full[..full.len() - 5000]).unwrap();
    let dest = dir.path().join("dest-trunc");
    std::fs::create_dir(&dest).unwrap();
    let err = ova::import(&ova_path, &dest, &Limits::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    assert!(files_in(&dest).is_empty());
    // Size caps apply to members before they are read.
    std::fs::write(&ova_path, &full).unwrap();
    let small = Limits {
        max_virtual_size: 4096,
        max_descriptor_bytes: 4096,
        ..Limits::default()
    };
    assert!(matches!(
        ova::import(&ova_path, &dest, &small, &mut |_| {}),
        Err(ImageError::LimitExceeded { .. })
    ));
    // The intact archive imports.
    assert!(ova::import(&ova_path, &dest, &Limits::default(), &mut |_| {}).is_ok());
}

#[test]
fn mutated_archives_never_panic() {
    let dir = scratch();
    let pkg = dir.path().join("pkg");
    std::fs::create_dir(&pkg).unwrap();
    let raw = dir.path().join("tiny.raw");
    write_pattern_raw(&raw, 64 << 10, 4);
    let vmdk = pkg.join("disk1.vmdk");
    qemu_img_from_raw(&raw, "vmdk", "subformat=streamOptimized", &vmdk);
    let size = std::fs::metadata(&vmdk).unwrap().len();
    std::fs::write(
        pkg.join("vm.ovf"),
        OVF_TEMPLATE
            .replace("DISK", "disk1.vmdk")
            .replace("SIZE", &size.to_string())
            .replace("\"2\"", "\"0\""),
    )
    .unwrap();
    let ova_path = dir.path().join("m.ova");
    run(
        "tar",
        &[
            "--format=ustar",
            "-cf",
            s(&ova_path),
            "-C",
            s(&pkg),
            "vm.ovf",
            "disk1.vmdk",
        ],
    );
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    assert!(ova::import(&ova_path, &dest, &Limits::default(), &mut |_| {}).is_ok());
    mutate_and_check(&ova_path, 150, 31, |p| {
        let d = dir.path().join("mdest");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        let _ = ova::import(p, &d, &Limits::default(), &mut |_| {});
    });
}

#[test]
fn extract_exposes_disks_as_block_sources() {
    let dir = scratch();
    let pkg = dir.path().join("pkg");
    std::fs::create_dir(&pkg).unwrap();
    let raw = package_dir(&pkg, "disk1.vmdk", true);
    let ova_path = dir.path().join("e.ova");
    run(
        "tar",
        &[
            "--format=ustar",
            "-cf",
            s(&ova_path),
            "-C",
            s(&pkg),
            "vm.ovf",
            "vm.mf",
            "disk1.vmdk",
        ],
    );
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let extracted = ova::extract(&ova_path, &dest, &Limits::default(), &mut |_| {}).unwrap();
    assert_eq!(extracted.disks.len(), 1);
    let disk = &extracted.disks[0];
    assert!(disk.path.starts_with(&dest));
    assert_eq!(disk.capacity_bytes, 2 << 20);
    let src = disk.open(&Limits::default()).unwrap();
    assert_eq!(src.format(), vireo_image::Format::Vmdk);
    assert_matches_qemu(src.as_ref(), &disk.path, "vmdk", dir.path());
    let expected = std::fs::read(&raw).unwrap();
    let mut got = vec![0u8; expected.len()];
    src.read_at(&mut got, 0).unwrap();
    assert!(got == expected);
    // Extracting again into the same directory never clobbers what is there.
    assert!(ova::extract(&ova_path, &dest, &Limits::default(), &mut |_| {}).is_err());
    assert_eq!(files_in(&dest).len(), 1);
}
