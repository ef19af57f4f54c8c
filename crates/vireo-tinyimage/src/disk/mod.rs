//! The tiny guest as a bootable disk, for testing Vireo's firmware boot paths for real: one
//! qcow2 image (`tiny-disk.qcow2`) that boots under both SeaBIOS and OVMF into the same kernel,
//! initramfs and command line as the direct-kernel-boot image from [`crate::build`].
//!
//! Disk layout (512-byte sectors, partitions 1 MiB aligned):
//!
//! | LBA                 | content                                                          |
//! |---------------------|------------------------------------------------------------------|
//! | 0                   | protective MBR carrying GRUB's `boot.img` ([`bios`])              |
//! | 1..=33              | primary GPT header and entry array ([`gpt`])                      |
//! | 2048..=4095         | partition 1, BIOS boot: GRUB i386-pc `core.img`                   |
//! | 4096..              | partition 2, EFI system (FAT16, [`fat`]): `EFI/BOOT/BOOTX64.EFI`, |
//! |                     | `vireo/grub.cfg`, `vireo/vmlinuz`, `vireo/initrd.img`             |
//! | last 33 sectors     | backup GPT entry array and header                                 |
//!
//! BIOS path: SeaBIOS runs the MBR code, which loads `core.img` from partition 1; GRUB reads
//! `(,gpt2)/vireo/grub.cfg`. UEFI path: OVMF finds no boot entry for the disk and runs the
//! removable-media loader `\EFI\BOOT\BOOTX64.EFI`, GRUB for x86_64-efi, which reads
//! `/vireo/grub.cfg` from the partition it was loaded from. Both print a
//! `vireo-tiny-disk: GRUB (pc|efi)` line on the serial console before loading the kernel.
//!
//! Invariants:
//! - Only pure Rust writes the disk: GPT, FAT and the boot-code patches are pure functions;
//!   the only external program is `grub-mkimage` (no loop devices, mounts or partitioning
//!   tools), and the qcow2 is written by `vireo-image`, not `qemu-img`.
//! - Reproducible: GUIDs and the FAT volume ID derive from the content, every timestamp is
//!   fixed, so the same packages give the same raw disk (`raw_sha256` in [`TinyDisk`]).
//! - The qcow2 and its description (`tiny-disk.json`) are replaced atomically (temporary file
//!   + rename); a rebuild whose raw disk is unchanged leaves an intact qcow2 untouched.

pub mod bios;
pub mod fat;
pub mod gpt;
pub mod grub;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::{BuildOptions, TinyError, AGENT_PORT_NAME, READY_MARKER};

/// File name of the disk image in the output directory.
pub const DISK_FILE: &str = "tiny-disk.qcow2";
/// File name of the disk's [`TinyDisk`] description in the output directory.
pub const DISK_DESCRIPTION_FILE: &str = "tiny-disk.json";
/// Where Debian installs GRUB's platform directories.
pub const GRUB_LIB_DIR: &str = "/usr/lib/grub";
/// Console argument the disk's kernel command line always has (GRUB passes it on).
pub const SERIAL_CONSOLE_ARG: &str = "console=ttyS0";

/// Partition alignment and the size of the gaps before and after the partitions: 1 MiB.
const ALIGN_SECTORS: u64 = 2048;
const BIOS_BOOT_SECTORS: u64 = 2048;
/// Number of the EFI system partition in the GPT (1-based), as GRUB's `(,gptN)` names it.
const ESP_PARTITION: u32 = 2;
const SECTOR: u64 = gpt::SECTOR;
/// Largest per-file allocation unit the FAT writer can choose (32 KiB clusters).
const MAX_CLUSTER_BYTES: u64 = 32 << 10;
const ESP_LABEL: &str = "VIREO-ESP";
/// Smallest ESP: FAT16 needs at least 4085 clusters (2 MiB with 512-byte clusters).
pub const MIN_ESP_BYTES: u64 = 8 << 20;

/// Paths on the EFI system partition.
const BOOT_FILES: grub::BootFiles<'static> = grub::BootFiles {
    prefix_dir: "/vireo",
    kernel: "/vireo/vmlinuz",
    initrd: "/vireo/initrd.img",
    esp_partition: ESP_PARTITION,
};
const EFI_LOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";

/// Inputs of [`build_disk`].
pub struct DiskBuildOptions<'a> {
    /// Package cache shared with [`crate::build`].
    pub cache_dir: PathBuf,
    /// Where the kernel/initramfs artefacts and the disk land (created if missing).
    pub out_dir: PathBuf,
    /// GRUB's library directory holding `i386-pc/` and `x86_64-efi/`.
    pub grub_lib_dir: PathBuf,
    /// Receives human-readable progress lines.
    pub progress: Option<&'a dyn Fn(&str)>,
}

impl DiskBuildOptions<'_> {
    /// Options with Debian's GRUB location and no progress output.
    pub fn new(cache_dir: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        DiskBuildOptions {
            cache_dir: cache_dir.into(),
            out_dir: out_dir.into(),
            grub_lib_dir: PathBuf::from(GRUB_LIB_DIR),
            progress: None,
        }
    }
}

impl std::fmt::Debug for DiskBuildOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskBuildOptions")
            .field("cache_dir", &self.cache_dir)
            .field("out_dir", &self.out_dir)
            .field("grub_lib_dir", &self.grub_lib_dir)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// The built disk, as the daemon records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TinyDisk {
    /// The qcow2 image (use it as a backing file; do not boot it directly).
    pub path: PathBuf,
    pub virtual_size: u64,
    pub kernel_version: String,
    /// Kernel command line GRUB boots with.
    pub cmdline: String,
    pub ready_marker: String,
    pub agent_port_name: String,
    /// `grub-mkimage --version` of the GRUB that made the boot images.
    pub bootloader: String,
    /// SHA-256 of the raw disk content (what `qemu-img convert -O raw` of the qcow2 gives).
    pub raw_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("building the tiny kernel and initramfs")]
    Build(#[source] TinyError),
    #[error("making the GRUB images")]
    Grub(#[source] grub::GrubError),
    #[error("installing GRUB's BIOS boot code")]
    BiosBoot(#[source] bios::BiosBootError),
    #[error("writing the partition table")]
    Gpt(#[source] gpt::GptError),
    #[error("writing the EFI system partition")]
    Fat(#[source] fat::FatError),
    #[error("the EFI system partition would need {sectors} sectors, more than FAT16 can hold")]
    EspTooLarge { sectors: u64 },
    #[error("disk regions overlap or exceed the disk at offset {offset}")]
    Layout { offset: u64 },
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("converting the raw disk to {path}")]
    Convert {
        path: PathBuf,
        #[source]
        source: vireo_image::ImageError,
    },
    #[error("storing the disk description")]
    Store(#[source] TinyError),
    #[error("encoding the disk description")]
    Describe(#[source] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Builds (or, when nothing changed, reuses) `out_dir/tiny-disk.qcow2`; see the module docs.
pub fn build_disk(opts: &DiskBuildOptions) -> Result<TinyDisk, DiskError> {
    let quiet = |_: &str| {};
    let progress: &dyn Fn(&str) = opts.progress.unwrap_or(&quiet);
    let say = |msg: &str| {
        tracing::info!("{msg}");
        progress(msg);
    };

    let image = crate::build(&BuildOptions {
        cache_dir: opts.cache_dir.clone(),
        out_dir: opts.out_dir.clone(),
        progress: opts.progress,
    })
    .map_err(DiskError::Build)?;

    say("making GRUB images for i386-pc and x86_64-efi");
    let grub = grub::make_images(&opts.grub_lib_dir, &BOOT_FILES).map_err(DiskError::Grub)?;
    let cmdline = disk_cmdline(&image.cmdline);
    let grub_cfg = grub::config(&BOOT_FILES, &cmdline).map_err(DiskError::Grub)?;
    let kernel = std::fs::read(&image.kernel).map_err(io_err(&image.kernel))?;
    let initrd = std::fs::read(&image.initrd).map_err(io_err(&image.initrd))?;

    say("laying out the disk (GPT, BIOS boot partition, EFI system partition)");
    let raw = assemble(&DiskContents {
        grub: &grub,
        grub_cfg: &grub_cfg,
        kernel: &kernel,
        initrd: &initrd,
    })?;
    let path = opts.out_dir.join(DISK_FILE);
    let disk = TinyDisk {
        path: path.clone(),
        virtual_size: raw.size(),
        kernel_version: image.kernel_version,
        cmdline,
        ready_marker: READY_MARKER.into(),
        agent_port_name: AGENT_PORT_NAME.into(),
        bootloader: grub.version,
        raw_sha256: raw.sha256(),
    };

    if is_current(&opts.out_dir, &disk)? {
        say(&format!("{} is up to date", path.display()));
        return Ok(disk);
    }

    say(&format!(
        "writing {} ({} MiB)",
        path.display(),
        disk.virtual_size >> 20
    ));
    let raw_file = tempfile::Builder::new()
        .prefix(".tiny-disk.raw.")
        .tempfile_in(&opts.out_dir)
        .map_err(io_err(&opts.out_dir))?;
    raw.write_to(raw_file.as_file())
        .map_err(io_err(raw_file.path()))?;
    let convert = vireo_image::ops::ConvertOptions::new(vireo_image::Format::Qcow2);
    vireo_image::ops::convert_with(
        raw_file.path(),
        &path,
        &convert,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .map_err(|source| DiskError::Convert {
        path: path.clone(),
        source,
    })?;
    drop(raw_file);

    let mut description = serde_json::to_vec_pretty(&disk).map_err(DiskError::Describe)?;
    description.push(b'\n');
    crate::write_all_or_nothing(&opts.out_dir, &[(DISK_DESCRIPTION_FILE, &description)])
        .map_err(DiskError::Store)?;
    Ok(disk)
}

/// Reads a previously built disk description from `out_dir`, if there is one.
pub fn load_disk(out_dir: &Path) -> Result<Option<TinyDisk>, DiskError> {
    let path = out_dir.join(DISK_DESCRIPTION_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(DiskError::Describe),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DiskError::Io { path, source }),
    }
}

/// Whether `out_dir` already holds exactly `disk`: the same description and a qcow2 of the
/// recorded size without a backing file. (Content is not re-read: the file is Vireo's own
/// artefact and VMs use it only as a backing file.)
fn is_current(out_dir: &Path, disk: &TinyDisk) -> Result<bool, DiskError> {
    // An unreadable or outdated description just means "rebuild".
    if load_disk(out_dir).ok().flatten().as_ref() != Some(disk) {
        return Ok(false);
    }
    let info = vireo_image::ops::info(
        &disk.path,
        &vireo_image::Limits::default(),
        &vireo_image::PathPolicy::default(),
    );
    Ok(matches!(info, Ok(i) if i.format == "qcow2"
        && i.virtual_size == disk.virtual_size
        && i.backing_filename.is_none()))
}

/// The tiny command line with the serial console guaranteed (added once if missing).
pub fn disk_cmdline(tiny_cmdline: &str) -> String {
    if tiny_cmdline
        .split_whitespace()
        .any(|arg| arg == SERIAL_CONSOLE_ARG)
    {
        tiny_cmdline.trim().to_owned()
    } else {
        format!("{} {SERIAL_CONSOLE_ARG}", tiny_cmdline.trim())
            .trim()
            .to_owned()
    }
}

/// Where the partitions go, in sectors (inclusive ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub total_sectors: u64,
    pub bios_boot: (u64, u64),
    pub esp: (u64, u64),
}

impl Layout {
    /// BIOS boot partition at 1 MiB, the ESP right after it, 1 MiB of room at the end for
    /// the backup GPT (which needs 33 sectors).
    pub fn new(esp_sectors: u64) -> Layout {
        let bios_first = ALIGN_SECTORS;
        let esp_first = bios_first + BIOS_BOOT_SECTORS;
        let esp_last = esp_first + esp_sectors - 1;
        Layout {
            total_sectors: esp_last + 1 + ALIGN_SECTORS,
            bios_boot: (bios_first, bios_first + BIOS_BOOT_SECTORS - 1),
            esp: (esp_first, esp_last),
        }
    }
}

/// ESP size for files of these sizes: every file and directory rounded up to the largest
/// cluster, plus 1 MiB for the FATs and the root directory, rounded up to whole MiB, and at
/// least [`MIN_ESP_BYTES`].
pub fn esp_sectors_for(file_sizes: &[usize], directories: usize) -> u64 {
    let data: u64 = file_sizes
        .iter()
        .map(|&s| (s as u64).div_ceil(MAX_CLUSTER_BYTES) * MAX_CLUSTER_BYTES)
        .sum::<u64>()
        + directories as u64 * MAX_CLUSTER_BYTES;
    let bytes = (data + (1 << 20)).div_ceil(1 << 20) << 20;
    bytes.max(MIN_ESP_BYTES) / SECTOR
}

/// Everything that goes on the disk.
#[derive(Debug, Clone, Copy)]
pub struct DiskContents<'a> {
    pub grub: &'a grub::GrubImages,
    pub grub_cfg: &'a str,
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
}

/// A raw disk as its non-zero regions; everything else reads as zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDisk {
    size: u64,
    /// Sorted by offset, non-overlapping, inside `size`.
    regions: Vec<(u64, Vec<u8>)>,
}

impl RawDisk {
    fn new(size: u64, mut regions: Vec<(u64, Vec<u8>)>) -> Result<RawDisk, DiskError> {
        regions.sort_by_key(|(offset, _)| *offset);
        let mut end = 0;
        for (offset, data) in &regions {
            if *offset < end {
                return Err(DiskError::Layout { offset: *offset });
            }
            end = offset + data.len() as u64;
        }
        if end > size {
            return Err(DiskError::Layout { offset: end });
        }
        Ok(RawDisk { size, regions })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn regions(&self) -> &[(u64, Vec<u8>)] {
        &self.regions
    }

    /// SHA-256 of the whole disk, zeros included, as hex.
    pub fn sha256(&self) -> String {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        fn zero_fill(hash: &mut sha2::Sha256, mut n: u64) {
            while n > 0 {
                let k = n.min(ZEROS.len() as u64);
                hash.update(&ZEROS[..k as usize]);
                n -= k;
            }
        }
        let mut hash = sha2::Sha256::new();
        let mut at = 0;
        for (offset, data) in &self.regions {
            zero_fill(&mut hash, offset - at);
            hash.update(data);
            at = offset + data.len() as u64;
        }
        zero_fill(&mut hash, self.size - at);
        hex::encode(hash.finalize())
    }

    /// Writes the disk into `file` (truncated to the disk size; gaps stay sparse).
    pub fn write_to(&self, file: &std::fs::File) -> std::io::Result<()> {
        file.set_len(0)?;
        file.set_len(self.size)?;
        for (offset, data) in &self.regions {
            file.write_all_at(data, *offset)?;
        }
        Ok(())
    }
}

/// Lays out the whole disk (pure): partition table, both boot paths, the ESP's files.
pub fn assemble(contents: &DiskContents) -> Result<RawDisk, DiskError> {
    let grub = contents.grub;
    let cfg_path = format!("{}/grub.cfg", BOOT_FILES.prefix_dir.trim_start_matches('/'));
    let files = [
        fat::FatFile {
            path: EFI_LOADER_PATH,
            data: &grub.efi_app,
        },
        fat::FatFile {
            path: &cfg_path,
            data: contents.grub_cfg.as_bytes(),
        },
        fat::FatFile {
            path: BOOT_FILES.kernel.trim_start_matches('/'),
            data: contents.kernel,
        },
        fat::FatFile {
            path: BOOT_FILES.initrd.trim_start_matches('/'),
            data: contents.initrd,
        },
    ];
    // Directories: EFI, EFI/BOOT and the prefix directory.
    let sizes: Vec<usize> = files.iter().map(|f| f.data.len()).collect();
    let esp_sectors = esp_sectors_for(&sizes, 3);
    let layout = Layout::new(esp_sectors);

    // One digest of everything names the disk, its partitions and its FAT volume.
    let mut seed = sha2::Sha256::new();
    for part in [&grub.boot_img, &grub.core_img] {
        seed.update((part.len() as u64).to_le_bytes());
        seed.update(part);
    }
    for file in &files {
        seed.update(file.path.as_bytes());
        seed.update((file.data.len() as u64).to_le_bytes());
        seed.update(file.data);
    }
    let seed = seed.finalize();
    let guid = |what: &str| gpt::Guid::derived(&[&seed[..], what.as_bytes()].concat());

    let fat_params = fat::FatParams {
        total_sectors: u32::try_from(esp_sectors).map_err(|_| DiskError::EspTooLarge {
            sectors: esp_sectors,
        })?,
        // The ESP starts at 4096.
        hidden_sectors: layout.esp.0 as u32,
        volume_id: u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]),
        label: ESP_LABEL.into(),
    };
    let esp = fat::format(&fat_params, &files).map_err(DiskError::Fat)?;

    let core = bios::embed_core(&grub.core_img, layout.bios_boot.0, BIOS_BOOT_SECTORS)
        .map_err(DiskError::BiosBoot)?;
    let boot_code =
        bios::mbr_boot_code(&grub.boot_img, layout.bios_boot.0).map_err(DiskError::BiosBoot)?;

    let table = gpt::GptDisk::new(
        guid("disk"),
        layout.total_sectors,
        vec![
            gpt::Partition {
                type_guid: gpt::BIOS_BOOT_PARTITION,
                unique_guid: guid("bios-boot"),
                first_lba: layout.bios_boot.0,
                last_lba: layout.bios_boot.1,
                attributes: 0,
                name: "BIOS boot partition".into(),
            },
            gpt::Partition {
                type_guid: gpt::EFI_SYSTEM_PARTITION,
                unique_guid: guid("esp"),
                first_lba: layout.esp.0,
                last_lba: layout.esp.1,
                attributes: 0,
                name: "EFI system partition".into(),
            },
        ],
    )
    .map_err(DiskError::Gpt)?;

    RawDisk::new(
        layout.total_sectors * SECTOR,
        vec![
            (0, table.primary(Some(&boot_code))),
            (layout.bios_boot.0 * SECTOR, core),
            (layout.esp.0 * SECTOR, esp),
            (table.backup_offset(), table.backup()),
        ],
    )
}

#[cfg(test)]
mod tests;
