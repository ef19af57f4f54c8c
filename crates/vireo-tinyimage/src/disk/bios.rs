//! Installing GRUB for BIOS (i386-pc) on a GPT disk without `grub-install`: the boot sector
//! (`boot.img`) goes into the protective MBR and the core image (`core.img` from
//! `grub-mkimage -O i386-pc`) into the BIOS boot partition. What this patches is GRUB's
//! documented image interface (`include/grub/i386/pc/boot.h`):
//!
//! - `boot.img` reads one sector, the first of `core.img`, from the 64-bit LBA at offset
//!   0x5C; the byte at 0x64 is the BIOS drive to use (0xFF: the one the BIOS booted from);
//!   the two bytes at 0x66 are a short jump that skips the "is this really a hard disk" check,
//!   replaced by two NOPs for hard disks.
//! - The first sector of `core.img` (`diskboot.img`) loads the rest from a block list whose
//!   last (first-used) 12-byte entry at offset 500 is `start: u64, len: u16, segment: u16`.
//!   `grub-mkimage` fills `len` (sectors after the first) and `segment`; the installer fills
//!   `start`. The core image is embedded contiguously, so one entry describes all of it.
//!
//! Invariant: every patch is preceded by a check that the image has the expected shape
//! (sizes, signature, the jump, the block-list fields), so a GRUB with a different layout is
//! refused at build time instead of producing a disk that hangs at boot.

use super::gpt::MBR_BOOT_CODE_BYTES;

const SECTOR: usize = 512;
const BPB_START: usize = 0x03;
const BPB_END: usize = 0x5a;
const KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const DRIVE_CHECK: usize = 0x66;
/// "Use the drive the BIOS passed in %dl."
const BOOT_DRIVE_FROM_BIOS: u8 = 0xff;
const BLOCKLIST: usize = SECTOR - 12;
/// Real-mode segment `diskboot.img` loads the rest of the core image to (0x8000 + 512).
const CORE_LOAD_SEGMENT: u16 = 0x820;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BiosBootError {
    #[error("boot.img is {len} bytes, expected 512 with the 0x55AA signature")]
    BootImageShape { len: usize },
    #[error("boot.img has {found:02x?} at 0x66, not the short jump of the drive check")]
    DriveCheck { found: [u8; 2] },
    #[error("core.img is {len} bytes, smaller than its first sector")]
    CoreTooSmall { len: usize },
    #[error("core.img block list says {len} sectors at segment {segment:#x}; the image has {expected} sectors after the first and loads at {CORE_LOAD_SEGMENT:#x}")]
    CoreBlocklist {
        len: u16,
        segment: u16,
        expected: usize,
    },
    #[error("core.img needs {needed} sectors, the BIOS boot partition has {available}")]
    CoreTooLarge { needed: u64, available: u64 },
}

/// The first 440 bytes of the protective MBR: `boot.img`'s code, pointed at the core image
/// starting at `core_lba`. The BIOS parameter block area is cleared (the disk has none).
pub fn mbr_boot_code(
    boot_img: &[u8],
    core_lba: u64,
) -> Result<[u8; MBR_BOOT_CODE_BYTES], BiosBootError> {
    if boot_img.len() != SECTOR || boot_img[510..] != [0x55, 0xaa] {
        return Err(BiosBootError::BootImageShape {
            len: boot_img.len(),
        });
    }
    let mut code = [0u8; MBR_BOOT_CODE_BYTES];
    code.copy_from_slice(&boot_img[..MBR_BOOT_CODE_BYTES]);
    let jump = [code[DRIVE_CHECK], code[DRIVE_CHECK + 1]];
    if jump[0] != 0xeb {
        return Err(BiosBootError::DriveCheck { found: jump });
    }
    code[BPB_START..BPB_END].fill(0);
    code[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    code[BOOT_DRIVE] = BOOT_DRIVE_FROM_BIOS;
    code[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    Ok(code)
}

/// `core_img` padded to whole sectors, with its block list pointing at the sectors after
/// `core_lba`, checked to fit `capacity_sectors`.
pub fn embed_core(
    core_img: &[u8],
    core_lba: u64,
    capacity_sectors: u64,
) -> Result<Vec<u8>, BiosBootError> {
    if core_img.len() < SECTOR {
        return Err(BiosBootError::CoreTooSmall {
            len: core_img.len(),
        });
    }
    let sectors = core_img.len().div_ceil(SECTOR);
    if sectors as u64 > capacity_sectors {
        return Err(BiosBootError::CoreTooLarge {
            needed: sectors as u64,
            available: capacity_sectors,
        });
    }
    let len = u16::from_le_bytes([core_img[BLOCKLIST + 8], core_img[BLOCKLIST + 9]]);
    let segment = u16::from_le_bytes([core_img[BLOCKLIST + 10], core_img[BLOCKLIST + 11]]);
    if usize::from(len) != sectors - 1 || segment != CORE_LOAD_SEGMENT {
        return Err(BiosBootError::CoreBlocklist {
            len,
            segment,
            expected: sectors - 1,
        });
    }
    let mut out = core_img.to_vec();
    out.resize(sectors * SECTOR, 0);
    out[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_boot_img() -> Vec<u8> {
        let mut b = vec![0xccu8; SECTOR];
        b[0..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
        b[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0xeb, 0x05]);
        b[510..].copy_from_slice(&[0x55, 0xaa]);
        b
    }

    /// A core image of `len` bytes whose block list is filled the way grub-mkimage does.
    fn fake_core_img(len: usize) -> Vec<u8> {
        let mut c = vec![0x11u8; len];
        c[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&2u64.to_le_bytes());
        let after_first = (len.div_ceil(SECTOR) - 1) as u16;
        c[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&after_first.to_le_bytes());
        c[BLOCKLIST + 10..SECTOR].copy_from_slice(&CORE_LOAD_SEGMENT.to_le_bytes());
        c
    }

    #[test]
    fn boot_code_points_at_the_core_image() {
        let code = mbr_boot_code(&fake_boot_img(), 2048).unwrap();
        assert_eq!(&code[0..3], &[0xeb, 0x63, 0x90]);
        assert!(code[BPB_START..BPB_END].iter().all(|&b| b == 0));
        assert_eq!(&code[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(code[0x64], 0xff);
        assert_eq!(&code[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(code[0x68], 0xcc, "code after the patch is untouched");
        assert_eq!(code[439], 0xcc);
    }

    #[test]
    fn unexpected_boot_images_are_refused() {
        assert!(matches!(
            mbr_boot_code(&[0u8; 511], 1),
            Err(BiosBootError::BootImageShape { len: 511 })
        ));
        let mut b = fake_boot_img();
        b[511] = 0;
        assert!(mbr_boot_code(&b, 1).is_err());
        let mut b = fake_boot_img();
        b[DRIVE_CHECK] = 0x90;
        assert!(matches!(
            mbr_boot_code(&b, 1),
            Err(BiosBootError::DriveCheck { .. })
        ));
    }

    #[test]
    fn core_image_block_list_is_filled_and_padded() {
        // 3 full sectors plus 100 bytes: 4 sectors, 3 after the first.
        let core = fake_core_img(3 * SECTOR + 100);
        let out = embed_core(&core, 2048, 2048).unwrap();
        assert_eq!(out.len(), 4 * SECTOR);
        assert_eq!(&out[BLOCKLIST..BLOCKLIST + 8], &2049u64.to_le_bytes());
        assert_eq!(&out[BLOCKLIST + 8..SECTOR], &core[BLOCKLIST + 8..SECTOR]);
        assert_eq!(&out[SECTOR..core.len()], &core[SECTOR..]);
        assert!(out[core.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn unexpected_core_images_are_refused() {
        assert!(matches!(
            embed_core(&[0u8; 100], 2048, 2048),
            Err(BiosBootError::CoreTooSmall { .. })
        ));
        assert!(matches!(
            embed_core(&fake_core_img(4 * SECTOR), 2048, 3),
            Err(BiosBootError::CoreTooLarge {
                needed: 4,
                available: 3
            })
        ));
        let mut wrong_len = fake_core_img(4 * SECTOR);
        wrong_len[BLOCKLIST + 8] = 7;
        assert!(matches!(
            embed_core(&wrong_len, 2048, 2048),
            Err(BiosBootError::CoreBlocklist {
                len: 7,
                expected: 3,
                ..
            })
        ));
        let mut wrong_segment = fake_core_img(4 * SECTOR);
        wrong_segment[BLOCKLIST + 10] = 0;
        assert!(embed_core(&wrong_segment, 2048, 2048).is_err());
    }
}
