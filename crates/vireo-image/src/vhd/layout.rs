//! On-disk structures of a VHD: the 512-byte footer and the 1024-byte dynamic header, both
//! big-endian with a one's-complement byte-sum checksum.
//!
//! Invariants: a parsed [`Footer`] or `DynamicHeader` had its cookie and checksum verified; a
//! dynamic header's block size is a power of two between 512 bytes and [`MAX_BLOCK_SIZE`];
//! parsing works on fixed-size arrays, so no offset can fall outside the buffer.

use super::corrupt;
use crate::error::ImageError;

/// Footer cookie.
pub const COOKIE: [u8; 8] = *b"conectix";
/// Dynamic header cookie.
const DYNAMIC_COOKIE: [u8; 8] = *b"cxsparse";
/// Largest block size accepted (the format allows any power of two; Hyper-V uses 2 MiB,
/// some tools 512 KiB).
const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Largest geometry-derived size: qemu treats it as "use current_size" because the CHS
/// encoding saturates there.
const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
pub(super) fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(a)
}

/// The VHD checksum: one's complement of the byte sum, with the checksum field counted as 0.
pub fn checksum(bytes: &[u8], field: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// Disk type from the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

/// The hard disk footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub data_offset: u64,
    pub creator_app: [u8; 4],
    pub creator_version: u32,
    pub creator_os: [u8; 4],
    pub current_size: u64,
    /// Cylinders, heads, sectors per track.
    pub geometry: (u16, u8, u8),
    pub disk_type: DiskType,
    pub uuid: [u8; 16],
}

impl Footer {
    /// Parses a footer sector (cookie and checksum verified).
    pub fn parse(b: &[u8; 512]) -> Result<Self, ImageError> {
        if b[0..8] != COOKIE {
            return Err(corrupt("footer has no conectix cookie"));
        }
        let stored = be32(b, 64);
        let computed = checksum(b, 64);
        if stored != computed {
            return Err(corrupt(format!(
                "footer checksum is {stored:#010x}, expected {computed:#010x}"
            )));
        }
        let disk_type = match be32(b, 60) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            other => {
                return Err(ImageError::Unsupported {
                    format: "vhd",
                    detail: format!("disk type {other}"),
                })
            }
        };
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[68..84]);
        Ok(Footer {
            data_offset: be64(b, 16),
            creator_app: [b[28], b[29], b[30], b[31]],
            creator_version: be32(b, 32),
            creator_os: [b[36], b[37], b[38], b[39]],
            current_size: be64(b, 48),
            geometry: (be16(b, 56), b[58], b[59]),
            disk_type,
            uuid,
        })
    }

    /// Guest size, following the interoperable rule qemu documents: Virtual PC and qemu's own
    /// older images are sized by their CHS geometry, everyone else (Hyper-V, disk2vhd, Xen) by
    /// `current_size`; a saturated geometry always means `current_size`.
    pub fn virtual_size(&self) -> u64 {
        let (c, h, s) = self.geometry;
        let chs = u64::from(c) * u64::from(h) * u64::from(s);
        let geometry_sized = &self.creator_app == b"vpc " || &self.creator_app == b"qemu";
        if geometry_sized && chs != MAX_CHS_SECTORS {
            chs * 512
        } else {
            self.current_size
        }
    }
}

/// A parent locator entry of the dynamic header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Locator {
    pub(super) code: [u8; 4],
    pub(super) data_len: u32,
    pub(super) data_offset: u64,
}

/// The dynamic disk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DynamicHeader {
    pub(super) table_offset: u64,
    pub(super) max_table_entries: u32,
    pub(super) block_size: u32,
    pub(super) parent_uuid: [u8; 16],
    pub(super) parent_name: String,
    pub(super) locators: Vec<Locator>,
}

impl DynamicHeader {
    pub(super) fn parse(b: &[u8; 1024]) -> Result<Self, ImageError> {
        if b[0..8] != DYNAMIC_COOKIE {
            return Err(corrupt("dynamic header has no cxsparse cookie"));
        }
        let stored = be32(b, 36);
        let computed = checksum(b, 36);
        if stored != computed {
            return Err(corrupt(format!(
                "dynamic header checksum is {stored:#010x}, expected {computed:#010x}"
            )));
        }
        let block_size = be32(b, 32);
        if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(corrupt(format!("block size of {block_size} bytes")));
        }
        let mut parent_uuid = [0u8; 16];
        parent_uuid.copy_from_slice(&b[40..56]);
        let units: Vec<u16> = b[64..576]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let parent_name = String::from_utf16_lossy(&units);
        let locators = b[576..768]
            .chunks_exact(24)
            .filter(|e| e[0..4] != [0; 4])
            .map(|e| Locator {
                code: [e[0], e[1], e[2], e[3]],
                data_len: be32(e, 8),
                data_offset: be64(e, 16),
            })
            .collect();
        Ok(DynamicHeader {
            table_offset: be64(b, 16),
            max_table_entries: be32(b, 28),
            block_size,
            parent_uuid,
            parent_name,
            locators,
        })
    }

    /// Bytes of the sector bitmap in front of each block (padded to a sector).
    pub(super) fn bitmap_bytes(&self) -> u64 {
        (u64::from(self.block_size) / 512).div_ceil(8).div_ceil(512) * 512
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer_bytes(
        disk_type: u32,
        app: &[u8; 4],
        size: u64,
        geometry: (u16, u8, u8),
    ) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(&COOKIE);
        b[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        b[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        b[28..32].copy_from_slice(app);
        b[48..56].copy_from_slice(&size.to_be_bytes());
        b[56..58].copy_from_slice(&geometry.0.to_be_bytes());
        b[58] = geometry.1;
        b[59] = geometry.2;
        b[60..64].copy_from_slice(&disk_type.to_be_bytes());
        let c = checksum(&b, 64);
        b[64..68].copy_from_slice(&c.to_be_bytes());
        b
    }

    #[test]
    fn footer_checksum_is_verified() {
        let mut b = footer_bytes(2, b"win ", 1 << 20, (20, 16, 63));
        assert!(Footer::parse(&b).is_ok());
        b[100] ^= 1;
        let err = Footer::parse(&b).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn virtual_size_follows_creator_rules() {
        let hyperv =
            Footer::parse(&footer_bytes(2, b"win ", 1_000_000 * 512, (20, 16, 63))).unwrap();
        assert_eq!(hyperv.virtual_size(), 1_000_000 * 512);
        let vpc = Footer::parse(&footer_bytes(3, b"vpc ", 1_000_000 * 512, (20, 16, 63))).unwrap();
        assert_eq!(vpc.virtual_size(), 20 * 16 * 63 * 512);
        let saturated =
            Footer::parse(&footer_bytes(3, b"qemu", 3 << 40, (65535, 16, 255))).unwrap();
        assert_eq!(saturated.virtual_size(), 3 << 40);
        assert!(Footer::parse(&footer_bytes(5, b"win ", 0, (0, 0, 0))).is_err());
    }

    #[test]
    fn checksum_matches_the_spec_example() {
        // A sum of 0x10 over the non-checksum bytes gives !0x10.
        let mut b = [0u8; 8];
        b[0] = 0x0f;
        b[7] = 0x01;
        b[2] = 0xaa; // inside the skipped field (2..6)
        assert_eq!(checksum(&b, 2), !0x10u32);
    }
}
