//! GUID partition tables (UEFI specification, chapter 5) for 512-byte-sector disks: the
//! protective MBR, the primary header and entry array at the start of the disk, and the backup
//! entry array and header at its end.
//!
//! Invariants:
//! - [`GptDisk::new`] accepts only tables that are valid on disk: partitions inside the usable
//!   range, not overlapping, at most [`ENTRY_COUNT`], names of at most 36 UTF-16 code units;
//!   the encoders below therefore cannot fail.
//! - Both headers carry correct CRC32s over the header and over the entry array, and describe
//!   each other (`MyLBA`/`AlternateLBA`), so firmware never has to repair the table.
//! - Output depends only on the inputs (no clocks, no random GUIDs): callers derive GUIDs with
//!   [`Guid::derived`].

use sha2::Digest;

/// Bytes per logical block; the only sector size this module writes.
pub const SECTOR: u64 = 512;
/// Entries in each partition entry array (the minimum the specification allows for).
pub const ENTRY_COUNT: usize = 128;
/// Bytes per partition entry.
pub const ENTRY_SIZE: usize = 128;
/// Sectors taken by one entry array: 128 × 128 bytes = 32 sectors.
pub const ENTRY_ARRAY_SECTORS: u64 = (ENTRY_COUNT * ENTRY_SIZE) as u64 / SECTOR;
/// First LBA a partition may start at: protective MBR, header, entry array.
pub const FIRST_USABLE_LBA: u64 = 2 + ENTRY_ARRAY_SECTORS;
/// Bytes of boot code a protective MBR can carry before the disk signature field.
pub const MBR_BOOT_CODE_BYTES: usize = 440;

/// Partition type of a BIOS boot partition (raw space GRUB embeds its core image in).
pub const BIOS_BOOT_PARTITION: Guid = Guid::from_fields(
    0x2168_6148,
    0x6449,
    0x6e6f,
    [0x74, 0x4e, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49],
);
/// Partition type of an EFI system partition.
pub const EFI_SYSTEM_PARTITION: Guid = Guid::from_fields(
    0xc12a_7328,
    0xf81f,
    0x11d2,
    [0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b],
);

const HEADER_SIZE: usize = 92;
const HEADER_REVISION_1_0: u32 = 0x0001_0000;
const MAX_NAME_UNITS: usize = 36;

/// A GUID in its on-disk byte order (the first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The GUID written `{a:08X}-{b:04X}-{c:04X}-{d[0..2]}-{d[2..8]}`.
    pub const fn from_fields(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    /// A reproducible GUID for `seed`: SHA-256 of it, shaped as an RFC 4122 version 4
    /// (random) GUID so tools treat it as an ordinary unique identifier.
    pub fn derived(seed: &[u8]) -> Guid {
        let hash = sha2::Sha256::digest(seed);
        let mut b = [0u8; 16];
        b.copy_from_slice(&hash[..16]);
        // Version in the high nibble of the third field (stored little-endian: byte 7),
        // variant 0b10 in the top bits of byte 8.
        b[7] = (b[7] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9]
        )?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02X}"))
    }
}

impl std::fmt::Debug for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// One partition: LBAs are inclusive, as in the entry format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// Why a partition table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GptError {
    #[error("a disk of {sectors} sectors is too small for two partition tables")]
    DiskTooSmall { sectors: u64 },
    #[error("{count} partitions do not fit in {ENTRY_COUNT} entries")]
    TooManyPartitions { count: usize },
    #[error("partition {index} ({first}..={last}) is outside the usable sectors {usable_first}..={usable_last}")]
    OutOfRange {
        index: usize,
        first: u64,
        last: u64,
        usable_first: u64,
        usable_last: u64,
    },
    #[error("partitions {a} and {b} overlap")]
    Overlap { a: usize, b: usize },
    #[error("partition {index} name {name:?} is longer than 36 UTF-16 code units")]
    NameTooLong { index: usize, name: String },
}

/// A validated partition table for a disk of `total_sectors` sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptDisk {
    disk_guid: Guid,
    total_sectors: u64,
    partitions: Vec<Partition>,
}

impl GptDisk {
    pub fn new(
        disk_guid: Guid,
        total_sectors: u64,
        partitions: Vec<Partition>,
    ) -> Result<GptDisk, GptError> {
        // Protective MBR, two headers, two entry arrays, and at least one usable sector.
        if total_sectors < 1 + 2 * (1 + ENTRY_ARRAY_SECTORS) + 1 {
            return Err(GptError::DiskTooSmall {
                sectors: total_sectors,
            });
        }
        if partitions.len() > ENTRY_COUNT {
            return Err(GptError::TooManyPartitions {
                count: partitions.len(),
            });
        }
        let disk = GptDisk {
            disk_guid,
            total_sectors,
            partitions,
        };
        let (usable_first, usable_last) = (FIRST_USABLE_LBA, disk.last_usable_lba());
        for (index, p) in disk.partitions.iter().enumerate() {
            if p.first_lba < usable_first || p.last_lba > usable_last || p.first_lba > p.last_lba {
                return Err(GptError::OutOfRange {
                    index,
                    first: p.first_lba,
                    last: p.last_lba,
                    usable_first,
                    usable_last,
                });
            }
            if p.name.encode_utf16().count() > MAX_NAME_UNITS {
                return Err(GptError::NameTooLong {
                    index,
                    name: p.name.clone(),
                });
            }
            for (other, q) in disk.partitions.iter().enumerate().take(index) {
                if p.first_lba <= q.last_lba && q.first_lba <= p.last_lba {
                    return Err(GptError::Overlap { a: other, b: index });
                }
            }
        }
        Ok(disk)
    }

    pub fn total_sectors(&self) -> u64 {
        self.total_sectors
    }

    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    fn last_lba(&self) -> u64 {
        self.total_sectors - 1
    }

    pub fn last_usable_lba(&self) -> u64 {
        self.last_lba() - 1 - ENTRY_ARRAY_SECTORS
    }

    /// The partition entry array (identical in both copies).
    fn entry_array(&self) -> Vec<u8> {
        let mut array = vec![0u8; ENTRY_COUNT * ENTRY_SIZE];
        for (p, entry) in self
            .partitions
            .iter()
            .zip(array.chunks_exact_mut(ENTRY_SIZE))
        {
            entry[0..16].copy_from_slice(&p.type_guid.0);
            entry[16..32].copy_from_slice(&p.unique_guid.0);
            entry[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            entry[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            entry[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (unit, slot) in p.name.encode_utf16().zip(entry[56..].chunks_exact_mut(2)) {
                slot.copy_from_slice(&unit.to_le_bytes());
            }
        }
        array
    }

    /// One header sector: `my_lba` is where it lives, `entries_lba` where its array starts.
    fn header(&self, my_lba: u64, alternate_lba: u64, entries_lba: u64, array_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&HEADER_REVISION_1_0.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        // 16..20: header CRC32, computed last over the header with this field zero.
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        h[40..48].copy_from_slice(&FIRST_USABLE_LBA.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable_lba().to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.0);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRY_COUNT as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(&h[..HEADER_SIZE]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Sectors `0..FIRST_USABLE_LBA`: protective MBR (with `boot_code` in its first 440
    /// bytes, zeros if `None`), primary header, primary entry array.
    pub fn primary(&self, boot_code: Option<&[u8; MBR_BOOT_CODE_BYTES]>) -> Vec<u8> {
        let array = self.entry_array();
        let mut out = protective_mbr(self.total_sectors, boot_code).to_vec();
        out.extend(self.header(1, self.last_lba(), 2, crc32(&array)));
        out.extend(array);
        out
    }

    /// The last `1 + ENTRY_ARRAY_SECTORS` sectors: backup entry array, then backup header.
    pub fn backup(&self) -> Vec<u8> {
        let array = self.entry_array();
        let entries_lba = self.last_lba() - ENTRY_ARRAY_SECTORS;
        let header = self.header(self.last_lba(), 1, entries_lba, crc32(&array));
        let mut out = array;
        out.extend(header);
        out
    }

    /// Byte offset of [`GptDisk::backup`] on the disk.
    pub fn backup_offset(&self) -> u64 {
        (self.last_lba() - ENTRY_ARRAY_SECTORS) * SECTOR
    }
}

/// A protective MBR: one partition of type 0xEE covering the disk from LBA 1 (capped at
/// 2³²−1 sectors), not active, and the 0x55AA signature. The disk signature is zero.
pub fn protective_mbr(
    total_sectors: u64,
    boot_code: Option<&[u8; MBR_BOOT_CODE_BYTES]>,
) -> [u8; SECTOR as usize] {
    let mut mbr = [0u8; SECTOR as usize];
    if let Some(code) = boot_code {
        mbr[..MBR_BOOT_CODE_BYTES].copy_from_slice(code);
    }
    let entry = &mut mbr[446..462];
    entry[0] = 0x00; // not bootable: firmware and loaders must not depend on it
    entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    entry[4] = 0xee;
    entry[5..8].copy_from_slice(&[0xff, 0xff, 0xff]); // CHS "beyond addressable"
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
    entry[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    mbr
}

/// CRC-32 as used by GPT (ISO-HDLC: reflected polynomial 0xEDB88320, initial and final
/// value 0xFFFFFFFF).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_partitions(total: u64) -> Vec<Partition> {
        vec![
            Partition {
                type_guid: BIOS_BOOT_PARTITION,
                unique_guid: Guid::derived(b"a"),
                first_lba: 2048,
                last_lba: 4095,
                attributes: 0,
                name: "BIOS boot".into(),
            },
            Partition {
                type_guid: EFI_SYSTEM_PARTITION,
                unique_guid: Guid::derived(b"b"),
                first_lba: 4096,
                last_lba: total - 2049,
                attributes: 0,
                name: "EFI system".into(),
            },
        ]
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn well_known_guids_print_as_specified() {
        assert_eq!(
            BIOS_BOOT_PARTITION.to_string(),
            "21686148-6449-6E6F-744E-656564454649"
        );
        // "Hah!IdontNeedEFI" in on-disk byte order.
        assert_eq!(&BIOS_BOOT_PARTITION.0, b"Hah!IdontNeedEFI");
        assert_eq!(
            EFI_SYSTEM_PARTITION.to_string(),
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        );
    }

    #[test]
    fn derived_guids_are_stable_version_4() {
        let g = Guid::derived(b"seed");
        assert_eq!(g, Guid::derived(b"seed"));
        assert_ne!(g, Guid::derived(b"other"));
        let text = g.to_string();
        assert_eq!(&text[14..15], "4", "{text}");
        assert!("89AB".contains(&text[19..20]), "{text}");
    }

    #[test]
    fn headers_describe_each_other_with_valid_crcs() {
        let total = 65536;
        let disk = GptDisk::new(Guid::derived(b"disk"), total, two_partitions(total)).unwrap();
        let primary = disk.primary(None);
        let backup = disk.backup();
        assert_eq!(primary.len() as u64, FIRST_USABLE_LBA * SECTOR);
        assert_eq!(backup.len() as u64, (ENTRY_ARRAY_SECTORS + 1) * SECTOR);
        assert_eq!(disk.backup_offset() + backup.len() as u64, total * SECTOR);

        let p_hdr = &primary[512..1024];
        let b_hdr = &backup[backup.len() - 512..];
        let field = |h: &[u8], at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap());
        let crc_field = |h: &[u8], at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap());
        for (hdr, my, alt, entries, array) in [
            (p_hdr, 1, total - 1, 2, &primary[1024..]),
            (
                b_hdr,
                total - 1,
                1,
                total - 33,
                &backup[..backup.len() - 512],
            ),
        ] {
            assert_eq!(&hdr[..8], b"EFI PART");
            assert_eq!((field(hdr, 24), field(hdr, 32)), (my, alt));
            assert_eq!((field(hdr, 40), field(hdr, 48)), (34, total - 34));
            assert_eq!(field(hdr, 72), entries);
            assert_eq!(crc_field(hdr, 88), crc32(array));
            let mut zeroed = hdr[..92].to_vec();
            zeroed[16..20].fill(0);
            assert_eq!(crc_field(hdr, 16), crc32(&zeroed));
            assert!(hdr[92..].iter().all(|&b| b == 0));
        }
        assert_eq!(&primary[1024..], &backup[..backup.len() - 512]);

        // Entry 2: type, LBAs, UTF-16 name.
        let e = &primary[1024 + 128..1024 + 256];
        assert_eq!(&e[..16], &EFI_SYSTEM_PARTITION.0);
        assert_eq!(field(e, 32), 4096);
        assert_eq!(field(e, 40), total - 2049);
        assert_eq!(&e[56..62], &[b'E', 0, b'F', 0, b'I', 0]);
    }

    #[test]
    fn protective_mbr_layout() {
        let code = [0x90u8; MBR_BOOT_CODE_BYTES];
        let mbr = protective_mbr(1 << 40, Some(&code));
        assert_eq!(&mbr[..440], &code[..]);
        assert_eq!(&mbr[440..446], &[0; 6]);
        assert_eq!(mbr[446 + 4], 0xee);
        assert_eq!(
            &mbr[446 + 8..446 + 16],
            &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]
        );
        assert!(mbr[462..510].iter().all(|&b| b == 0));
        assert_eq!(&mbr[510..], &[0x55, 0xaa]);
        let small = protective_mbr(2048, None);
        assert_eq!(&small[446 + 12..446 + 16], &2047u32.to_le_bytes());
    }

    #[test]
    fn invalid_tables_are_refused() {
        let total = 65536;
        let guid = Guid::derived(b"d");
        let mut parts = two_partitions(total);
        parts[1].first_lba = 4000;
        assert_eq!(
            GptDisk::new(guid, total, parts),
            Err(GptError::Overlap { a: 0, b: 1 })
        );
        let mut parts = two_partitions(total);
        parts[1].last_lba = total - 33;
        assert!(matches!(
            GptDisk::new(guid, total, parts),
            Err(GptError::OutOfRange { index: 1, .. })
        ));
        let mut parts = two_partitions(total);
        parts[0].first_lba = 33;
        assert!(matches!(
            GptDisk::new(guid, total, parts),
            Err(GptError::OutOfRange { index: 0, .. })
        ));
        let mut parts = two_partitions(total);
        parts[0].name = "x".repeat(37);
        assert!(matches!(
            GptDisk::new(guid, total, parts),
            Err(GptError::NameTooLong { index: 0, .. })
        ));
        assert!(matches!(
            GptDisk::new(guid, 67, vec![]),
            Err(GptError::DiskTooSmall { .. })
        ));
        GptDisk::new(guid, 68, vec![]).unwrap();
    }
}
