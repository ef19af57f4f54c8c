//! The Debian disk: partition layout (pure), GRUB boot images for BIOS and UEFI, and the raw
//! disk file with the root filesystem made by `mkfs.ext4 -d`.
//!
//! Layout (512-byte sectors, everything 1 MiB aligned):
//!
//! | partition | sectors               | content                                           |
//! |-----------|-----------------------|---------------------------------------------------|
//! | —         | 0..=33                | protective MBR with GRUB `boot.img`, primary GPT   |
//! | 1         | 2048..=4095           | BIOS boot: GRUB i386-pc `core.img`                 |
//! | 2         | 4096..+32 MiB         | EFI system (FAT16): `EFI/BOOT/BOOTX64.EFI`, `grub/grub.cfg` |
//! | 3         | after the ESP..end-1 MiB | Linux root (x86-64), ext4                       |
//! | —         | last 33 sectors       | backup GPT                                         |
//!
//! Both GRUB images read `grub/grub.cfg` from the ESP (the BIOS one names it `(,gpt2)/grub`,
//! the EFI one uses the partition it was loaded from), which finds the root filesystem by UUID
//! and boots `/vmlinuz` with `/initrd.img` from it.
//!
//! Invariants:
//! - [`Layout::new`] only returns layouts whose partitions are aligned, ordered, inside the
//!   disk and leave room for the backup GPT; the root partition is a whole number of 4 KiB
//!   filesystem blocks.
//! - The boot regions are written after `mkfs.ext4`, at offsets outside the root partition,
//!   so neither overwrites the other.
//! - No loop devices or mounts: the filesystem is made from a directory into the disk file at
//!   the partition's offset (`mkfs.ext4 -E offset=`).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;
use vireo_tinyimage::disk::{bios, fat, gpt};

use crate::config;

pub const SECTOR: u64 = gpt::SECTOR;
const ALIGN_SECTORS: u64 = 2048;
const BIOS_BOOT_SECTORS: u64 = 2048;
/// ESP size: room for GRUB and a few more loaders; FAT16 with 512-byte clusters up to 32 MiB.
pub const ESP_BYTES: u64 = 32 << 20;
/// GPT partition numbers (1-based), as GRUB's `(,gptN)` names them.
pub const ESP_PARTITION: u32 = 2;
pub const ROOT_PARTITION: u32 = 3;
/// Filesystem block size of the root filesystem.
pub const ROOT_BLOCK: u64 = 4096;
/// Smallest and largest disk the builder makes.
pub const MIN_DISK_BYTES: u64 = 2 << 30;
pub const MAX_DISK_BYTES: u64 = 2 << 40;
pub const ROOT_LABEL: &str = "debian-root";
pub const ESP_LABEL: &str = "DEBIAN-ESP";

/// Partition type of a Linux root partition for x86-64 (Discoverable Partitions
/// Specification), so tools and systemd recognise it.
pub const LINUX_ROOT_X86_64: gpt::Guid = gpt::Guid::from_fields(
    0x4f68_bce3,
    0xe8cd,
    0x4db1,
    [0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09],
);

/// GRUB modules in both images: GPT, FAT (the ESP), ext4 (the root), search by UUID, the
/// Linux loader, normal mode and the serial terminal.
const COMMON_MODULES: [&str; 11] = [
    "part_gpt",
    "fat",
    "ext2",
    "search",
    "search_fs_uuid",
    "normal",
    "linux",
    "boot",
    "serial",
    "terminal",
    "echo",
];
const BIOS_ONLY_MODULES: [&str; 1] = ["biosdisk"];
pub const BIOS_PLATFORM: &str = "i386-pc";
pub const EFI_PLATFORM: &str = "x86_64-efi";

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("disk size {bytes} is not a multiple of 1 MiB between {MIN_DISK_BYTES} and {MAX_DISK_BYTES} bytes")]
    BadSize { bytes: u64 },
    #[error("GRUB platform directory {dir} is missing (install the Debian package {package})")]
    MissingPlatform { dir: PathBuf, package: &'static str },
    #[error("cannot run {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{argv} failed ({status}): {stderr}")]
    Failed {
        argv: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("writing the partition table")]
    Gpt(#[source] gpt::GptError),
    #[error("writing the EFI system partition")]
    Fat(#[source] fat::FatError),
    #[error("installing GRUB's BIOS boot code")]
    BiosBoot(#[source] bios::BiosBootError),
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Partition ranges in sectors (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub total_sectors: u64,
    pub bios_boot: (u64, u64),
    pub esp: (u64, u64),
    pub root: (u64, u64),
}

impl Layout {
    /// The layout of a disk of `bytes` (see the module table).
    pub fn new(bytes: u64) -> Result<Layout, DiskError> {
        if !(MIN_DISK_BYTES..=MAX_DISK_BYTES).contains(&bytes) || !bytes.is_multiple_of(1 << 20) {
            return Err(DiskError::BadSize { bytes });
        }
        let total_sectors = bytes / SECTOR;
        let bios_first = ALIGN_SECTORS;
        let esp_first = bios_first + BIOS_BOOT_SECTORS;
        let esp_last = esp_first + ESP_BYTES / SECTOR - 1;
        let root_first = esp_last + 1;
        let root_last = total_sectors - ALIGN_SECTORS - 1;
        Ok(Layout {
            total_sectors,
            bios_boot: (bios_first, bios_first + BIOS_BOOT_SECTORS - 1),
            esp: (esp_first, esp_last),
            root: (root_first, root_last),
        })
    }

    pub fn root_offset(&self) -> u64 {
        self.root.0 * SECTOR
    }

    pub fn root_blocks(&self) -> u64 {
        (self.root.1 + 1 - self.root.0) * SECTOR / ROOT_BLOCK
    }
}

/// Disk-wide identifiers, all derived from one seed so a build is reproducible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIds {
    pub disk: gpt::Guid,
    pub bios_boot: gpt::Guid,
    pub esp: gpt::Guid,
    pub root_part: gpt::Guid,
    pub config: config::Identity,
}

impl DiskIds {
    pub fn derive(seed: &[u8]) -> DiskIds {
        let guid = |what: &str| gpt::Guid::derived(&[seed, what.as_bytes()].concat());
        let fs = gpt::Guid::derived(&[seed, b"root-fs".as_slice()].concat()).0;
        let esp_id = gpt::Guid::derived(&[seed, b"esp-fs".as_slice()].concat()).0;
        DiskIds {
            disk: guid("disk"),
            bios_boot: guid("bios-boot"),
            esp: guid("esp"),
            root_part: guid("root"),
            config: config::Identity {
                root_uuid: uuid_text(&fs),
                esp_volume_id: u32::from_be_bytes([esp_id[0], esp_id[1], esp_id[2], esp_id[3]]),
            },
        }
    }
}

/// `8-4-4-4-12` lower-case hex of 16 bytes in order (how ext4 and blkid print UUIDs).
pub fn uuid_text(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// What the two boot paths need from GRUB.
#[derive(Debug, Clone)]
pub struct GrubImages {
    pub boot_img: Vec<u8>,
    pub core_img: Vec<u8>,
    pub efi_app: Vec<u8>,
    /// `grub-mkimage --version`.
    pub version: String,
}

/// Makes the i386-pc core image and the x86_64-efi application with every module built in.
pub fn make_grub(lib_dir: &Path) -> Result<GrubImages, DiskError> {
    let platform = |name: &str, package: &'static str| {
        let dir = lib_dir.join(name);
        if dir.join("moddep.lst").is_file() {
            Ok(dir)
        } else {
            Err(DiskError::MissingPlatform { dir, package })
        }
    };
    let bios_dir = platform(BIOS_PLATFORM, "grub-pc-bin")?;
    let efi_dir = platform(EFI_PLATFORM, "grub-efi-amd64-bin")?;
    let work = tempfile::tempdir().map_err(io_err(&std::env::temp_dir()))?;
    let mkimage = |dir: &Path, format: &str, prefix: &str, modules: &[&str], out: &Path| {
        run(
            "grub-mkimage",
            Command::new("grub-mkimage")
                .arg("--directory")
                .arg(dir)
                .args(["--format", format, "--prefix", prefix, "--output"])
                .arg(out)
                .args(modules),
        )?;
        std::fs::read(out).map_err(io_err(out))
    };
    let bios_modules: Vec<&str> = BIOS_ONLY_MODULES
        .iter()
        .chain(&COMMON_MODULES)
        .copied()
        .collect();
    let core_path = work.path().join("core.img");
    let core_img = mkimage(
        &bios_dir,
        BIOS_PLATFORM,
        &format!("(,gpt{ESP_PARTITION}){}", config::GRUB_PREFIX),
        &bios_modules,
        &core_path,
    )?;
    let efi_path = work.path().join("grubx64.efi");
    let efi_app = mkimage(
        &efi_dir,
        EFI_PLATFORM,
        config::GRUB_PREFIX,
        &COMMON_MODULES,
        &efi_path,
    )?;
    let boot_path = bios_dir.join("boot.img");
    let boot_img = std::fs::read(&boot_path).map_err(io_err(&boot_path))?;
    let version = run(
        "grub-mkimage",
        Command::new("grub-mkimage").arg("--version"),
    )?;
    Ok(GrubImages {
        boot_img,
        core_img,
        efi_app,
        version: version.trim().to_owned(),
    })
}

/// Everything outside the root partition (pure): `(offset, bytes)` regions of the protective
/// MBR + primary GPT, the BIOS core image, the ESP and the backup GPT.
pub fn boot_regions(
    layout: &Layout,
    ids: &DiskIds,
    grub: &GrubImages,
    grub_cfg: &str,
) -> Result<Vec<(u64, Vec<u8>)>, DiskError> {
    let cfg_path = format!("{}/grub.cfg", config::GRUB_PREFIX.trim_start_matches('/'));
    let files = [
        fat::FatFile {
            path: config::EFI_LOADER_PATH,
            data: &grub.efi_app,
        },
        fat::FatFile {
            path: &cfg_path,
            data: grub_cfg.as_bytes(),
        },
    ];
    let esp_sectors = layout.esp.1 + 1 - layout.esp.0;
    let esp = fat::format(
        &fat::FatParams {
            // Both are below 2^32 by construction (ESP_BYTES, and the ESP starts at 4096).
            total_sectors: esp_sectors as u32,
            hidden_sectors: layout.esp.0 as u32,
            volume_id: ids.config.esp_volume_id,
            label: ESP_LABEL.into(),
        },
        &files,
    )
    .map_err(DiskError::Fat)?;
    let core = bios::embed_core(&grub.core_img, layout.bios_boot.0, BIOS_BOOT_SECTORS)
        .map_err(DiskError::BiosBoot)?;
    let boot_code =
        bios::mbr_boot_code(&grub.boot_img, layout.bios_boot.0).map_err(DiskError::BiosBoot)?;
    let part =
        |type_guid, unique_guid, (first_lba, last_lba): (u64, u64), name: &str| gpt::Partition {
            type_guid,
            unique_guid,
            first_lba,
            last_lba,
            attributes: 0,
            name: name.into(),
        };
    let table = gpt::GptDisk::new(
        ids.disk,
        layout.total_sectors,
        vec![
            part(
                gpt::BIOS_BOOT_PARTITION,
                ids.bios_boot,
                layout.bios_boot,
                "BIOS boot partition",
            ),
            part(
                gpt::EFI_SYSTEM_PARTITION,
                ids.esp,
                layout.esp,
                "EFI system partition",
            ),
            part(LINUX_ROOT_X86_64, ids.root_part, layout.root, "Debian root"),
        ],
    )
    .map_err(DiskError::Gpt)?;
    Ok(vec![
        (0, table.primary(Some(&boot_code))),
        (layout.bios_boot.0 * SECTOR, core),
        (layout.esp.0 * SECTOR, esp),
        (table.backup_offset(), table.backup()),
    ])
}

/// Argument vector of `mkfs.ext4` making the root filesystem from `root_dir` inside `disk`
/// at the root partition. Features newer than GRUB 2.06's ext4 reader (`orphan_file`,
/// `metadata_csum_seed`) are switched off whatever the host's `mke2fs.conf` enables.
pub fn mkfs_args(layout: &Layout, ids: &DiskIds, root_dir: &Path, disk: &Path) -> Vec<String> {
    vec![
        "-q".into(),
        "-F".into(),
        "-t".into(),
        "ext4".into(),
        "-b".into(),
        ROOT_BLOCK.to_string(),
        "-O".into(),
        "^orphan_file,^metadata_csum_seed".into(),
        "-L".into(),
        ROOT_LABEL.into(),
        "-U".into(),
        ids.config.root_uuid.clone(),
        "-E".into(),
        format!("offset={},nodiscard", layout.root_offset()),
        "-d".into(),
        root_dir.to_string_lossy().into_owned(),
        disk.to_string_lossy().into_owned(),
        layout.root_blocks().to_string(),
    ]
}

/// Writes the raw disk: a sparse file of the layout's size, the root filesystem from
/// `root_dir`, then the boot regions.
pub fn write_raw(
    path: &Path,
    layout: &Layout,
    ids: &DiskIds,
    root_dir: &Path,
    regions: &[(u64, Vec<u8>)],
) -> Result<(), DiskError> {
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    file.set_len(layout.total_sectors * SECTOR)
        .map_err(io_err(path))?;
    run(
        "mkfs.ext4",
        Command::new("mkfs.ext4").args(mkfs_args(layout, ids, root_dir, path)),
    )?;
    for (offset, data) in regions {
        file.write_all_at(data, *offset).map_err(io_err(path))?;
    }
    file.sync_all().map_err(io_err(path))
}

/// Runs `cmd`, returning its stdout; a failure carries the argv and stderr.
pub(crate) fn run(program: &'static str, cmd: &mut Command) -> Result<String, DiskError> {
    tracing::debug!(?cmd, "running");
    let out = cmd
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| DiskError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(DiskError::Failed {
            argv: format!("{cmd:?}"),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_4_gib() {
        let l = Layout::new(4 << 30).unwrap();
        assert_eq!(l.total_sectors, 8_388_608);
        assert_eq!(l.bios_boot, (2048, 4095));
        assert_eq!(l.esp, (4096, 4096 + 65536 - 1));
        assert_eq!(l.root, (69_632, 8_388_608 - 2048 - 1));
        assert_eq!(l.root_offset(), 34 << 20);
        assert_eq!(l.root_blocks() * ROOT_BLOCK, (4 << 30) - (35 << 20));
        // The backup GPT (33 sectors) fits after the root partition.
        assert!(l.root.1 + 33 < l.total_sectors);
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bytes in [0, 1 << 30, (4 << 30) + 512, 4 << 40] {
            assert!(
                matches!(Layout::new(bytes), Err(DiskError::BadSize { .. })),
                "{bytes}"
            );
        }
        Layout::new(MIN_DISK_BYTES).unwrap();
        Layout::new(MAX_DISK_BYTES).unwrap();
    }

    #[test]
    fn ids_are_reproducible_and_distinct() {
        let a = DiskIds::derive(b"seed");
        assert_eq!(a, DiskIds::derive(b"seed"));
        assert_ne!(a.config, DiskIds::derive(b"other").config);
        let all = [a.disk, a.bios_boot, a.esp, a.root_part];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        let u = &a.config.root_uuid;
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
        assert_eq!(u, &u.to_lowercase());
    }

    #[test]
    fn uuid_text_format() {
        let b: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(uuid_text(&b), "00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn mkfs_argv() {
        let l = Layout::new(4 << 30).unwrap();
        let ids = DiskIds::derive(b"s");
        let args = mkfs_args(&l, &ids, Path::new("/w/root"), Path::new("/w/disk.raw"));
        let joined = args.join(" ");
        assert!(joined.contains(&format!("-E offset={},nodiscard", 34u64 << 20)));
        assert!(joined.contains(&format!("-U {}", ids.config.root_uuid)));
        assert!(joined.ends_with(&format!("-d /w/root /w/disk.raw {}", l.root_blocks())));
    }

    #[test]
    fn missing_grub_platform_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            make_grub(dir.path()),
            Err(DiskError::MissingPlatform {
                package: "grub-pc-bin",
                ..
            })
        ));
    }

    /// Needs grub-common, grub-pc-bin and grub-efi-amd64-bin (scripts/deps.sh installs them).
    #[test]
    fn boot_regions_are_ordered_and_outside_the_root_partition() {
        let grub = make_grub(Path::new("/usr/lib/grub")).unwrap();
        let l = Layout::new(4 << 30).unwrap();
        let ids = DiskIds::derive(b"s");
        let cfg = config::grub_cfg(&ids.config, "Debian");
        let regions = boot_regions(&l, &ids, &grub, &cfg).unwrap();
        let root = l.root_offset()..(l.root.1 + 1) * SECTOR;
        let mut end = 0;
        for (offset, data) in &regions {
            assert!(*offset >= end, "regions overlap at {offset}");
            end = offset + data.len() as u64;
            assert!(
                end <= root.start || *offset >= root.end,
                "{offset} overlaps root"
            );
        }
        assert_eq!(end, l.total_sectors * SECTOR);
        // Protective MBR signature and the GPT header at LBA 1.
        assert_eq!(&regions[0].1[510..512], &[0x55, 0xaa]);
        assert_eq!(&regions[0].1[512..520], b"EFI PART");
        // The ESP is FAT with our label.
        let esp = &regions[2].1;
        assert_eq!(esp.len() as u64, ESP_BYTES);
        assert!(esp
            .windows(ESP_LABEL.len())
            .any(|w| w == ESP_LABEL.as_bytes()));
    }
}
