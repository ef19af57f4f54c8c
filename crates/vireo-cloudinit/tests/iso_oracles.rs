//! The ISOs this crate writes, read by independent implementations: genisoimage's `isoinfo`
//! (primary, Joliet and Rock Ridge listings and extraction), `xorriso` (libisofs), util-linux
//! `blkid` (the label cloud-init searches for) and the Linux kernel's isofs through a loop
//! mount (skipped, with the reason printed, when the kernel or environment cannot do that).
//! `scripts/deps.sh` installs the tools.

mod common;

use std::path::Path;
use std::process::Command;

use vireo_cloudinit::iso9660::{write_iso, IsoFile, IsoImage};
use vireo_cloudinit::render_seed;

/// A volume that exercises what seeds do not: many files (a multi-sector directory), empty
/// files, sizes around sector boundaries, a 1 MiB file, names with several dots.
fn stress_image() -> IsoImage {
    let mut files = Vec::new();
    for i in 0..30 {
        let size = match i % 6 {
            0 => 0,
            1 => 1,
            2 => 2047,
            3 => 2048,
            4 => 2049,
            _ => 5000 + i * 37,
        };
        let data = (0..size).map(|b| (b * 7 + i) as u8).collect();
        files.push(IsoFile {
            name: format!("file-{i:02}.part.{}", ["txt", "bin", "x"][i % 3]),
            data,
        });
    }
    files.push(IsoFile {
        name: "big_file".into(),
        data: (0..1usize << 20).map(|b| (b % 251) as u8).collect(),
    });
    files.push(IsoFile {
        name: "Mixed-Case".into(),
        data: b"case kept\n".to_vec(),
    });
    IsoImage {
        volume_id: "cidata".into(),
        recorded_at: common::recorded_at(),
        files,
    }
}

fn seed_image() -> IsoImage {
    let (_, input) = common::cases().remove(1); // four files, non-ASCII user-data
    render_seed(&input)
        .unwrap()
        .iso_image(common::recorded_at())
}

fn write_to(dir: &Path, name: &str, image: &IsoImage) -> String {
    let path = dir.join(name);
    std::fs::write(&path, write_iso(image).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

/// File names listed by `isoinfo -l` (last column), without `.` and `..`.
fn isoinfo_names(listing: &str) -> Vec<String> {
    let mut names: Vec<String> = listing
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with('d'))
        .filter_map(|l| l.rsplit_once("]  ").map(|(_, n)| n.trim_end().to_string()))
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    names
}

#[test]
fn isoinfo_sees_label_extensions_and_exact_names() {
    let dir = tempfile::tempdir().unwrap();
    for image in [seed_image(), stress_image()] {
        let iso = write_to(dir.path(), "v.iso", &image);
        let info = common::run("isoinfo", &["-d", "-i", &iso]);
        assert!(info.contains("Volume id: cidata"), "{info}");
        assert!(info.contains("Logical block size is: 2048"), "{info}");
        assert!(info.contains("Joliet with UCS level 3 found"), "{info}");
        assert!(
            info.contains("Rock Ridge signatures version 1 found"),
            "{info}"
        );

        let mut want: Vec<String> = image.files.iter().map(|f| f.name.clone()).collect();
        want.sort();
        for ns in ["-J", "-R"] {
            let listing = common::run("isoinfo", &["-i", &iso, "-l", ns]);
            assert_eq!(isoinfo_names(&listing), want, "isoinfo -l {ns}:\n{listing}");
            for file in &image.files {
                let path = format!("/{}", file.name);
                let out = Command::new("isoinfo")
                    .args(["-i", &iso, ns, "-x", &path])
                    .output()
                    .unwrap();
                assert!(out.status.success());
                assert_eq!(out.stdout, file.data, "isoinfo {ns} -x {path}");
            }
        }
        let rock = common::run("isoinfo", &["-i", &iso, "-l", "-R"]);
        let modes: Vec<&str> = rock.lines().filter(|l| l.starts_with('-')).collect();
        assert!(modes.iter().all(|l| l.starts_with("-r--r--r--")), "{rock}");
        // Strict ISO 9660 names: level 2 d-characters with version.
        let plain = common::run("isoinfo", &["-i", &iso, "-l"]);
        assert!(isoinfo_names(&plain).iter().all(|n| n.ends_with(";1")
            && n.trim_end_matches(";1")
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'.')));
    }
}

#[test]
fn xorriso_lists_and_extracts_every_file() {
    let dir = tempfile::tempdir().unwrap();
    for image in [seed_image(), stress_image()] {
        let iso = write_to(dir.path(), "v.iso", &image);
        let out = Command::new("xorriso")
            .args(["-indev", &iso, "-ls", "/"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Volume id    : 'cidata'"), "{stderr}");
        for bad in ["FAILURE", "SORRY", "WARNING", "MISHAP"] {
            assert!(!stderr.contains(bad), "xorriso complained:\n{stderr}");
        }
        let mut listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_matches('\'').to_string())
            .collect();
        listed.sort();
        let mut want: Vec<String> = image.files.iter().map(|f| f.name.clone()).collect();
        want.sort();
        assert_eq!(listed, want);

        let extract = dir.path().join("x");
        let _ = std::fs::remove_dir_all(&extract);
        common::run(
            "xorriso",
            &[
                "-osirrox",
                "on",
                "-indev",
                &iso,
                "-extract",
                "/",
                extract.to_str().unwrap(),
            ],
        );
        for file in &image.files {
            let got = std::fs::read(extract.join(&file.name)).unwrap();
            assert_eq!(got, file.data, "xorriso extract {}", file.name);
        }
    }
}

#[test]
fn blkid_reports_the_cidata_label() {
    let dir = tempfile::tempdir().unwrap();
    let iso = write_to(dir.path(), "seed.iso", &seed_image());
    let out = common::run("blkid", &["-p", "-o", "export", &iso]);
    assert!(out.contains("TYPE=iso9660"), "{out}");
    assert!(out.lines().any(|l| l == "LABEL=cidata"), "{out}");
}

/// Why the kernel cannot be asked, if it cannot.
fn loop_mount_unavailable() -> Option<String> {
    if !nix_is_root() {
        return Some("not running as root".into());
    }
    let has_isofs = || {
        std::fs::read_to_string("/proc/filesystems")
            .map(|f| f.lines().any(|l| l.trim_end().ends_with("iso9660")))
            .unwrap_or(false)
    };
    if !has_isofs() {
        let _ = Command::new("modprobe").arg("isofs").output();
    }
    if !has_isofs() {
        return Some("the running kernel has no iso9660 filesystem (not in /proc/filesystems, modprobe isofs failed)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    None
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn linux_isofs_mounts_and_reads_exact_names() {
    if let Some(reason) = loop_mount_unavailable() {
        eprintln!("SKIPPED linux_isofs_mounts_and_reads_exact_names: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for image in [seed_image(), stress_image()] {
        let iso = write_to(dir.path(), "v.iso", &image);
        // Default options use Rock Ridge; norock makes the kernel use the Joliet tree.
        for options in ["loop,ro", "loop,ro,norock"] {
            let mnt = dir.path().join("mnt");
            std::fs::create_dir_all(&mnt).unwrap();
            let mnt_s = mnt.to_str().unwrap();
            let out = Command::new("mount")
                .args(["-t", "iso9660", "-o", options, &iso, mnt_s])
                .output()
                .unwrap();
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                if err.contains("failed to setup loop device") {
                    eprintln!("SKIPPED linux_isofs_mounts_and_reads_exact_names: {err}");
                    return;
                }
                panic!("mount -o {options} failed: {err}");
            }
            let result = std::panic::catch_unwind(|| {
                let mut names: Vec<String> = std::fs::read_dir(&mnt)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                names.sort();
                let mut want: Vec<String> = image.files.iter().map(|f| f.name.clone()).collect();
                want.sort();
                assert_eq!(names, want, "mount -o {options}");
                for file in &image.files {
                    assert_eq!(std::fs::read(mnt.join(&file.name)).unwrap(), file.data);
                }
            });
            common::run("umount", &[mnt_s]);
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
    }
}
