//! VHDX structures before the data: file identifier, the two headers, region tables and the
//! metadata region (MS-VHDX sections 2.1–2.6). All little-endian; GUIDs are stored in the
//! Windows mixed-endian layout and compared as raw bytes.
//!
//! Invariants of parsed values:
//! - a [`Header`] passed its CRC-32C and has version 1; the current header is the valid one
//!   with the larger sequence number;
//! - a [`Regions`] value comes from a region table that passed its CRC, names both the BAT and
//!   the metadata region (1 MiB aligned) and no unknown *required* region;
//! - [`Metadata`] has a power-of-two block size in 1..=256 MiB, a logical sector size of 512
//!   or 4096, a virtual size that is a multiple of it, and no unknown *required* item.

use std::collections::BTreeMap;

use crate::error::ImageError;

pub(crate) fn corrupt(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "vhdx",
        detail: detail.into(),
    }
}

pub(crate) fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub(crate) fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// A GUID in its on-disk byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The on-disk bytes of the GUID written `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn new(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    pub fn from_slice(b: &[u8]) -> Guid {
        let mut g = [0u8; 16];
        g.copy_from_slice(&b[..16]);
        Guid(g)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Canonical text form (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase).
    pub fn to_text(self) -> String {
        let b = self.0;
        let d1 = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let d2 = u16::from_le_bytes([b[4], b[5]]);
        let d3 = u16::from_le_bytes([b[6], b[7]]);
        let tail: String = b[10..16].iter().map(|x| format!("{x:02x}")).collect();
        format!("{d1:08x}-{d2:04x}-{d3:04x}-{:02x}{:02x}-{tail}", b[8], b[9])
    }

    /// Parses the text form, with or without braces.
    pub fn parse_text(s: &str) -> Option<Guid> {
        let s = s.trim().trim_start_matches('{').trim_end_matches('}');
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() != 5
            || [8, 4, 4, 4, 12]
                != [
                    parts[0].len(),
                    parts[1].len(),
                    parts[2].len(),
                    parts[3].len(),
                    parts[4].len(),
                ]
        {
            return None;
        }
        let d1 = u32::from_str_radix(parts[0], 16).ok()?;
        let d2 = u16::from_str_radix(parts[1], 16).ok()?;
        let d3 = u16::from_str_radix(parts[2], 16).ok()?;
        let mut d4 = [0u8; 8];
        let rest = format!("{}{}", parts[3], parts[4]);
        for (i, byte) in d4.iter_mut().enumerate() {
            *byte = u8::from_str_radix(rest.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Guid::new(d1, d2, d3, d4))
    }
}

pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
pub const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
pub const REGION_TABLE_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
pub const HEADER_SIZE: usize = 4096;
pub const REGION_TABLE_SIZE: usize = 64 << 10;
const MIB: u64 = 1 << 20;

pub const BAT_REGION: Guid = Guid::new(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
pub const METADATA_REGION: Guid = Guid::new(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
pub const FILE_PARAMETERS: Guid = Guid::new(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
pub const VIRTUAL_DISK_SIZE: Guid = Guid::new(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
pub const VIRTUAL_DISK_ID: Guid = Guid::new(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
pub const LOGICAL_SECTOR_SIZE: Guid = Guid::new(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
pub const PHYSICAL_SECTOR_SIZE: Guid = Guid::new(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
pub const PARENT_LOCATOR: Guid = Guid::new(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
/// Locator type of a VHDX parent.
pub const VHDX_PARENT_TYPE: Guid = Guid::new(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

/// One of the two file headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub sequence: u64,
    pub file_write_guid: Guid,
    pub data_write_guid: Guid,
    pub log_guid: Guid,
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

impl Header {
    /// Parses a 4 KiB header block; `None` if its signature, checksum or version is wrong.
    pub fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_SIZE || &b[0..4] != b"head" {
            return None;
        }
        let mut copy = b[..HEADER_SIZE].to_vec();
        copy[4..8].fill(0);
        if crc32c::crc32c(&copy) != le32(b, 4) {
            return None;
        }
        let h = Header {
            sequence: le64(b, 8),
            file_write_guid: Guid::from_slice(&b[16..32]),
            data_write_guid: Guid::from_slice(&b[32..48]),
            log_guid: Guid::from_slice(&b[48..64]),
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        };
        (h.version == 1).then_some(h)
    }
}

/// Picks the current header of the two (the valid one with the larger sequence number).
pub fn current_header(first: &[u8], second: &[u8]) -> Result<Header, ImageError> {
    match (Header::parse(first), Header::parse(second)) {
        (Some(a), Some(b)) => Ok(if b.sequence > a.sequence { b } else { a }),
        (Some(h), None) | (None, Some(h)) => Ok(h),
        (None, None) => Err(corrupt("neither header has a valid signature and checksum")),
    }
}

/// A region table entry of interest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub offset: u64,
    pub length: u64,
}

/// The BAT and metadata regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regions {
    pub bat: Region,
    pub metadata: Region,
}

/// Parses a 64 KiB region table block; `Ok(None)` if its signature or checksum is wrong.
pub fn parse_regions(b: &[u8]) -> Result<Option<Regions>, ImageError> {
    if b.len() < REGION_TABLE_SIZE || &b[0..4] != b"regi" {
        return Ok(None);
    }
    let mut copy = b[..REGION_TABLE_SIZE].to_vec();
    copy[4..8].fill(0);
    if crc32c::crc32c(&copy) != le32(b, 4) {
        return Ok(None);
    }
    let count = le32(b, 8) as usize;
    if count > 2047 {
        return Err(corrupt(format!(
            "region table lists {count} entries (at most 2047)"
        )));
    }
    let (mut bat, mut metadata) = (None, None);
    for i in 0..count {
        let e = &b[16 + 32 * i..48 + 32 * i];
        let guid = Guid::from_slice(e);
        let region = Region {
            offset: le64(e, 16),
            length: u64::from(le32(e, 24)),
        };
        let required = le32(e, 28) & 1 != 0;
        let slot = if guid == BAT_REGION {
            &mut bat
        } else if guid == METADATA_REGION {
            &mut metadata
        } else if required {
            return Err(ImageError::Unsupported {
                format: "vhdx",
                detail: format!("required region {}", guid.to_text()),
            });
        } else {
            continue;
        };
        if !region.offset.is_multiple_of(MIB)
            || region.offset < MIB
            || !region.length.is_multiple_of(MIB)
            || region.length == 0
        {
            return Err(corrupt(format!(
                "region {} at {} of {} bytes is not 1 MiB aligned",
                guid.to_text(),
                region.offset,
                region.length
            )));
        }
        if slot.replace(region).is_some() {
            return Err(corrupt(format!("region {} listed twice", guid.to_text())));
        }
    }
    match (bat, metadata) {
        (Some(bat), Some(metadata)) => Ok(Some(Regions { bat, metadata })),
        _ => Err(corrupt("region table lacks the BAT or the metadata region")),
    }
}

/// The parent locator: its type and key/value pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParentLocator {
    pub entries: BTreeMap<String, String>,
}

/// The metadata items Vireo interprets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub block_size: u32,
    pub leave_blocks_allocated: bool,
    pub has_parent: bool,
    pub virtual_size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub virtual_disk_id: Option<Guid>,
    pub parent_locator: Option<ParentLocator>,
}

/// Largest metadata item accepted (the specification's limit).
const MAX_ITEM: u32 = 1 << 20;
/// Largest virtual size the specification allows (64 TiB).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// Parses the metadata region (`region` is its raw bytes).
pub fn parse_metadata(region: &[u8]) -> Result<Metadata, ImageError> {
    if region.len() < 64 << 10 || &region[0..8] != b"metadata" {
        return Err(corrupt("metadata region has no metadata signature"));
    }
    let count = le16(region, 10) as usize;
    if count > 2047 {
        return Err(corrupt(format!(
            "metadata table lists {count} entries (at most 2047)"
        )));
    }
    let mut items: BTreeMap<[u8; 16], &[u8]> = BTreeMap::new();
    for i in 0..count {
        let e = &region[32 + 32 * i..64 + 32 * i];
        let guid = Guid::from_slice(e);
        let offset = le32(e, 16);
        let length = le32(e, 20);
        let flags = le32(e, 24);
        let required = flags & 4 != 0;
        let known = [
            FILE_PARAMETERS,
            VIRTUAL_DISK_SIZE,
            VIRTUAL_DISK_ID,
            LOGICAL_SECTOR_SIZE,
            PHYSICAL_SECTOR_SIZE,
            PARENT_LOCATOR,
        ]
        .contains(&guid);
        if !known {
            if required {
                return Err(ImageError::Unsupported {
                    format: "vhdx",
                    detail: format!("required metadata item {}", guid.to_text()),
                });
            }
            continue;
        }
        if length > MAX_ITEM || (length > 0 && offset < 64 << 10) {
            return Err(corrupt(format!(
                "metadata item {} has offset {offset}, length {length}",
                guid.to_text()
            )));
        }
        let end = offset as usize + length as usize;
        if end > region.len() {
            return Err(corrupt(format!(
                "metadata item {} lies outside the metadata region",
                guid.to_text()
            )));
        }
        if items
            .insert(guid.0, &region[offset as usize..end])
            .is_some()
        {
            return Err(corrupt(format!(
                "metadata item {} listed twice",
                guid.to_text()
            )));
        }
    }
    let item = |g: Guid, min: usize| -> Result<&[u8], ImageError> {
        match items.get(&g.0) {
            Some(v) if v.len() >= min => Ok(v),
            Some(_) => Err(corrupt(format!(
                "metadata item {} is too short",
                g.to_text()
            ))),
            None => Err(corrupt(format!("metadata item {} is missing", g.to_text()))),
        }
    };
    let params = item(FILE_PARAMETERS, 8)?;
    let block_size = le32(params, 0);
    if !block_size.is_power_of_two() || !(1 << 20..=256 << 20).contains(&block_size) {
        return Err(corrupt(format!("block size of {block_size} bytes")));
    }
    let flags = le32(params, 4);
    let logical_sector_size = le32(item(LOGICAL_SECTOR_SIZE, 4)?, 0);
    if logical_sector_size != 512 && logical_sector_size != 4096 {
        return Err(corrupt(format!(
            "logical sector size of {logical_sector_size} bytes"
        )));
    }
    let physical_sector_size = match items.get(&PHYSICAL_SECTOR_SIZE.0) {
        Some(v) if v.len() >= 4 => le32(v, 0),
        _ => logical_sector_size,
    };
    let virtual_size = le64(item(VIRTUAL_DISK_SIZE, 8)?, 0);
    if !virtual_size.is_multiple_of(u64::from(logical_sector_size))
        || virtual_size > MAX_VIRTUAL_SIZE
    {
        return Err(corrupt(format!(
            "virtual disk size of {virtual_size} bytes"
        )));
    }
    let virtual_disk_id = items
        .get(&VIRTUAL_DISK_ID.0)
        .filter(|v| v.len() >= 16)
        .map(|v| Guid::from_slice(v));
    let has_parent = flags & 2 != 0;
    let parent_locator = match items.get(&PARENT_LOCATOR.0) {
        Some(raw) => Some(parse_parent_locator(raw)?),
        None if has_parent => return Err(corrupt("differencing disk without a parent locator")),
        None => None,
    };
    Ok(Metadata {
        block_size,
        leave_blocks_allocated: flags & 1 != 0,
        has_parent,
        virtual_size,
        logical_sector_size,
        physical_sector_size,
        virtual_disk_id,
        parent_locator,
    })
}

fn parse_parent_locator(raw: &[u8]) -> Result<ParentLocator, ImageError> {
    if raw.len() < 20 {
        return Err(corrupt("parent locator is too short"));
    }
    let kind = Guid::from_slice(raw);
    if kind != VHDX_PARENT_TYPE {
        return Err(ImageError::Unsupported {
            format: "vhdx",
            detail: format!("parent locator type {}", kind.to_text()),
        });
    }
    let count = le16(raw, 18) as usize;
    if 20 + count * 12 > raw.len() {
        return Err(corrupt("parent locator entries exceed the item"));
    }
    let text = |offset: u32, len: u16| -> Result<String, ImageError> {
        let (o, l) = (offset as usize, len as usize);
        if o == 0 || l == 0 || l % 2 != 0 || o + l > raw.len() {
            return Err(corrupt("parent locator key/value is outside the item"));
        }
        let units: Vec<u16> = raw[o..o + l]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).map_err(|_| corrupt("parent locator text is not UTF-16"))
    };
    let mut entries = BTreeMap::new();
    for i in 0..count {
        let e = &raw[20 + 12 * i..32 + 12 * i];
        let key = text(le32(e, 0), le16(e, 8))?;
        let value = text(le32(e, 4), le16(e, 10))?;
        entries.insert(key, value);
    }
    Ok(ParentLocator { entries })
}

/// Payload-to-BAT geometry (pure; MS-VHDX 2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatGeometry {
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    pub data_blocks: u64,
    /// BAT entries the file must have.
    pub entries: u64,
}

impl BatGeometry {
    pub fn new(m: &Metadata) -> BatGeometry {
        let chunk_ratio =
            ((1u64 << 23) * u64::from(m.logical_sector_size)) / u64::from(m.block_size);
        let data_blocks = m.virtual_size.div_ceil(u64::from(m.block_size));
        let entries = if m.has_parent {
            data_blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
        } else if data_blocks == 0 {
            0
        } else {
            data_blocks + (data_blocks - 1) / chunk_ratio
        };
        BatGeometry {
            chunk_ratio,
            data_blocks,
            entries,
        }
    }

    /// BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// BAT index of the sector bitmap block covering payload block `block`.
    pub fn bitmap_index(&self, block: u64) -> u64 {
        (block / self.chunk_ratio) * (self.chunk_ratio + 1) + self.chunk_ratio
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_round_trips() {
        assert_eq!(BAT_REGION.to_text(), "2dc27766-f623-4200-9d64-115e9bfd4a08");
        assert_eq!(
            Guid::parse_text("{2DC27766-F623-4200-9D64-115E9BFD4A08}"),
            Some(BAT_REGION)
        );
        assert_eq!(BAT_REGION.0[0..4], [0x66, 0x77, 0xC2, 0x2D]);
        assert_eq!(Guid::parse_text("not-a-guid"), None);
        assert_eq!(
            Guid::parse_text("2DC27766-F623-4200-9D64-115E9BFD4A0"),
            None
        );
    }

    #[test]
    fn bat_geometry_follows_the_spec() {
        let mut m = Metadata {
            block_size: 32 << 20,
            leave_blocks_allocated: false,
            has_parent: false,
            virtual_size: 10 << 30,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            virtual_disk_id: None,
            parent_locator: None,
        };
        let g = BatGeometry::new(&m);
        assert_eq!(g.chunk_ratio, 128);
        assert_eq!(g.data_blocks, 320);
        assert_eq!(g.entries, 320 + 2);
        assert_eq!(g.payload_index(127), 127);
        assert_eq!(g.payload_index(128), 129);
        assert_eq!(g.bitmap_index(130), 257);
        m.has_parent = true;
        assert_eq!(BatGeometry::new(&m).entries, 3 * 129);
        m.virtual_size = 0;
        m.has_parent = false;
        assert_eq!(BatGeometry::new(&m).entries, 0);
        m.logical_sector_size = 4096;
        m.block_size = 1 << 20;
        assert_eq!(BatGeometry::new(&m).chunk_ratio, 32768);
    }

    #[test]
    fn header_selection_uses_sequence_and_crc() {
        let mk = |seq: u64| {
            let mut b = vec![0u8; HEADER_SIZE];
            b[0..4].copy_from_slice(b"head");
            b[8..16].copy_from_slice(&seq.to_le_bytes());
            b[66..68].copy_from_slice(&1u16.to_le_bytes());
            let c = crc32c::crc32c(&b);
            b[4..8].copy_from_slice(&c.to_le_bytes());
            b
        };
        let (a, b) = (mk(4), mk(9));
        assert_eq!(current_header(&a, &b).unwrap().sequence, 9);
        assert_eq!(current_header(&b, &a).unwrap().sequence, 9);
        let mut bad = b.clone();
        bad[100] = 1;
        assert_eq!(current_header(&a, &bad).unwrap().sequence, 4);
        assert!(current_header(&bad, &bad).is_err());
    }
}
