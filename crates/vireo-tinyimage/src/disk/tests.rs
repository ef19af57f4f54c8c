//! Tests of the disk layout; the partition table and the ESP are checked with independent
//! readers (util-linux `sfdisk`, `mtools`). Needs the GRUB packages (`grub-common`,
//! `grub-pc-bin`, `grub-efi-amd64-bin`), `fdisk` and `mtools`.

use std::process::Command;

use super::*;

#[test]
fn cmdline_gets_the_serial_console_once() {
    assert_eq!(
        disk_cmdline("console=ttyS0 quiet panic=-1"),
        "console=ttyS0 quiet panic=-1"
    );
    assert_eq!(disk_cmdline("quiet"), "quiet console=ttyS0");
    assert_eq!(disk_cmdline(""), "console=ttyS0");
    // console=ttyS0,115200 is a different argument: the plain one is still added.
    assert_eq!(
        disk_cmdline("console=ttyS0,115200"),
        "console=ttyS0,115200 console=ttyS0"
    );
    assert!(disk_cmdline(crate::KERNEL_CMDLINE).contains(SERIAL_CONSOLE_ARG));
}

#[test]
fn layout_is_aligned_with_room_for_the_backup_table() {
    let l = Layout::new(esp_sectors_for(&[14 << 20, 5 << 20, 600 << 10, 300], 3));
    assert_eq!(l.bios_boot, (2048, 4095));
    assert_eq!(l.esp.0, 4096);
    assert_eq!((l.esp.1 + 1) % ALIGN_SECTORS, 0, "{l:?}");
    assert_eq!(l.total_sectors % ALIGN_SECTORS, 0);
    // Backup entry array plus backup header after the ESP.
    assert!(l.total_sectors - 1 - l.esp.1 > gpt::ENTRY_ARRAY_SECTORS);
}

#[test]
fn esp_size_always_fits_its_files() {
    for sizes in [
        vec![],
        vec![1],
        vec![14 << 20, 5 << 20, 600 << 10, 300],
        vec![200 << 20, 100 << 20],
        vec![5000; 40],
    ] {
        let data: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0xa5; n]).collect();
        let names: Vec<String> = (0..sizes.len()).map(|i| format!("d/f{i}")).collect();
        let files: Vec<fat::FatFile> = names
            .iter()
            .zip(&data)
            .map(|(path, data)| fat::FatFile { path, data })
            .collect();
        let sectors = esp_sectors_for(&sizes, 1);
        let params = fat::FatParams {
            total_sectors: sectors as u32,
            hidden_sectors: 4096,
            volume_id: 1,
            label: ESP_LABEL.into(),
        };
        fat::format(&params, &files).unwrap_or_else(|e| panic!("{sizes:?}: {e}"));
    }
}

#[test]
fn raw_disk_regions_must_not_overlap() {
    assert!(matches!(
        RawDisk::new(4096, vec![(0, vec![1; 600]), (512, vec![2; 10])]),
        Err(DiskError::Layout { offset: 512 })
    ));
    assert!(matches!(
        RawDisk::new(1000, vec![(512, vec![1; 600])]),
        Err(DiskError::Layout { .. })
    ));
    let disk = RawDisk::new(2048, vec![(1024, vec![7; 10]), (0, vec![1; 3])]).unwrap();
    let mut flat = vec![0u8; 2048];
    flat[..3].fill(1);
    flat[1024..1034].fill(7);
    assert_eq!(disk.sha256(), hex::encode(sha2::Sha256::digest(&flat)));
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (install fdisk and mtools)"));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{cmd:?} ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A full disk from the real GRUB images and stand-in kernel/initramfs bytes.
#[test]
fn assembled_disk_reads_back_with_sfdisk_and_mtools() {
    let grub = grub::make_images(Path::new(GRUB_LIB_DIR), &BOOT_FILES).unwrap();
    let cfg = grub::config(&BOOT_FILES, crate::KERNEL_CMDLINE).unwrap();
    let kernel: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let initrd: Vec<u8> = (0..1_500_001u32).map(|i| (i % 241) as u8).collect();
    let contents = DiskContents {
        grub: &grub,
        grub_cfg: &cfg,
        kernel: &kernel,
        initrd: &initrd,
    };
    let raw = assemble(&contents).unwrap();
    assert_eq!(raw, assemble(&contents).unwrap(), "reproducible");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    let file = std::fs::File::create(&path).unwrap();
    raw.write_to(&file).unwrap();
    drop(file);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, raw.size());
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), raw.sha256());

    // The partition table, as util-linux sees it (it checks both headers' CRCs and warns on
    // stderr about any inconsistency, which `run` refuses).
    let p = path.to_str().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").args(["--json", p]))).unwrap();
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "gpt");
    assert_eq!(table["firstlba"], 34);
    assert_eq!(table["lastlba"], raw.size() / 512 - 34);
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(parts[0]["size"], 2048);
    assert_eq!(parts[0]["type"], "21686148-6449-6E6F-744E-656564454649");
    assert_eq!(parts[0]["name"], "BIOS boot partition");
    assert_eq!(parts[1]["start"], 4096);
    assert_eq!(parts[1]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    let esp_sectors = parts[1]["size"].as_u64().unwrap();
    assert_eq!(raw.size() / 512, 4096 + esp_sectors + 2048);
    let verify = run(Command::new("sfdisk").args(["--verify", p]));
    assert!(verify.contains("No errors detected"), "{verify}");

    // BIOS path: boot.img patched to load the core image from LBA 2048, whose block list
    // points at the following sectors.
    assert_eq!(
        &bytes[..0x5c],
        &{
            let mut expected = grub.boot_img[..0x5c].to_vec();
            expected[3..0x5a].fill(0);
            expected
        }[..]
    );
    assert_eq!(&bytes[0x5c..0x64], &2048u64.to_le_bytes());
    assert_eq!(&bytes[0x1fe..0x200], &[0x55, 0xaa]);
    let core_at = 2048 * 512;
    assert_eq!(&bytes[core_at..core_at + 500], &grub.core_img[..500]);
    assert_eq!(&bytes[core_at + 500..core_at + 508], &2049u64.to_le_bytes());
    assert_eq!(
        &bytes[core_at + 512..core_at + grub.core_img.len()],
        &grub.core_img[512..]
    );

    // UEFI path and the shared files, through mtools at the ESP's offset.
    let esp = format!("{p}@@{}", 4096 * 512);
    let listing = run(Command::new("mdir").args(["-i", &esp, "-/", "-b", "::/"]));
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "::/EFI/",
            "::/EFI/BOOT/",
            "::/EFI/BOOT/BOOTX64.EFI",
            "::/vireo/",
            "::/vireo/grub.cfg",
            "::/vireo/initrd.img",
            "::/vireo/vmlinuz"
        ]
    );
    assert_eq!(
        run(Command::new("mtype").args(["-i", &esp, "::/vireo/grub.cfg"])),
        cfg
    );
    for (name, expected) in [
        ("vireo/vmlinuz", &kernel),
        ("vireo/initrd.img", &initrd),
        ("EFI/BOOT/BOOTX64.EFI", &grub.efi_app),
    ] {
        let out = dir.path().join("copy");
        let _ = std::fs::remove_file(&out);
        run(Command::new("mcopy")
            .args(["-n", "-i", &esp, &format!("::/{name}")])
            .arg(&out));
        assert!(std::fs::read(&out).unwrap() == *expected, "{name} differs");
    }
    let fsck_image = dir.path().join("esp.img");
    std::fs::write(
        &fsck_image,
        &bytes[4096 * 512..(4096 + esp_sectors as usize) * 512],
    )
    .unwrap();
    run(Command::new("fsck.fat").arg("-n").arg(&fsck_image));
}
