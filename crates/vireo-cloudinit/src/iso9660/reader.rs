//! A defensive reader for single-directory ISO 9660 volumes (the seeds this crate writes and
//! the ones other tools write): volume labels, the root directory in the primary, Rock Ridge
//! and Joliet namespaces, and file contents.
//!
//! Invariants: every offset and length read from the image is checked against the image
//! before use; loops are bounded ([`MAX_DESCRIPTORS`], [`MAX_DIRECTORY_BYTES`],
//! [`MAX_CONTINUATIONS`]); no input panics. Subdirectories are listed but not descended into.

use super::{IsoTimestamp, SECTOR_SIZE};

/// Volume descriptors examined after sector 16 before giving up on a terminator.
pub const MAX_DESCRIPTORS: usize = 64;
/// Largest root directory extent read, in bytes.
pub const MAX_DIRECTORY_BYTES: usize = 1 << 20;
/// SUSP continuation areas followed per directory record.
pub const MAX_CONTINUATIONS: usize = 16;

/// Why an image cannot be read as ISO 9660.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsoReadError {
    #[error("no primary volume descriptor at sector 16 (not an ISO 9660 image)")]
    NoPrimaryDescriptor,
    #[error("logical block size {size} is not {SECTOR_SIZE}")]
    BlockSize { size: u16 },
    #[error("{what} at byte {offset} with length {len} lies outside the {image_len}-byte image")]
    OutOfBounds {
        what: &'static str,
        offset: u64,
        len: u64,
        image_len: usize,
    },
    #[error("root directory is {size} bytes, more than {MAX_DIRECTORY_BYTES}")]
    DirectoryTooLarge { size: u32 },
    #[error("malformed directory record at byte {offset}: {reason}")]
    BadRecord { offset: usize, reason: &'static str },
}

/// One entry of a root directory (`.` and `..` excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name in this namespace: the raw identifier (`USER_DATA.;1`) in the primary tree,
    /// the Rock Ridge `NM` name when [`DirEntry::rock_ridge_name`] is used, the UCS-2-decoded
    /// name in the Joliet tree.
    pub name: String,
    /// Rock Ridge alternate name, when the record carries `NM` entries.
    pub rock_ridge_name: Option<String>,
    /// Rock Ridge POSIX mode (`PX`), when present.
    pub posix_mode: Option<u32>,
    pub is_dir: bool,
    pub extent: u32,
    pub size: u32,
    pub recorded_at: Option<IsoTimestamp>,
}

/// What [`read_volume`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoVolume {
    /// Primary volume identifier with trailing spaces removed.
    pub volume_id: String,
    /// Joliet volume identifier, when a Joliet descriptor is present.
    pub joliet_volume_id: Option<String>,
    /// Whether the root's `.` record announces RRIP in an `ER` entry.
    pub rock_ridge: bool,
    pub primary_root: Vec<DirEntry>,
    pub joliet_root: Option<Vec<DirEntry>>,
    /// Volume space size in sectors, as recorded.
    pub volume_sectors: u32,
}

impl IsoVolume {
    /// Looks a file up the way Linux does by default: Rock Ridge names when RRIP is present,
    /// else Joliet names, else primary identifiers without `;1` and trailing `.`, lower case.
    pub fn find(&self, name: &str) -> Option<&DirEntry> {
        if self.rock_ridge {
            return self
                .primary_root
                .iter()
                .find(|e| e.rock_ridge_name.as_deref() == Some(name));
        }
        if let Some(joliet) = &self.joliet_root {
            return joliet.iter().find(|e| e.name == name);
        }
        self.primary_root.iter().find(|e| {
            let plain = e.name.strip_suffix(";1").unwrap_or(&e.name);
            plain
                .strip_suffix('.')
                .unwrap_or(plain)
                .to_ascii_lowercase()
                == name
        })
    }
}

/// Bytes of `entry`'s extent, bounds-checked against `image`.
pub fn file_data<'a>(image: &'a [u8], entry: &DirEntry) -> Result<&'a [u8], IsoReadError> {
    slice(
        image,
        u64::from(entry.extent) * SECTOR_SIZE as u64,
        u64::from(entry.size),
        "file extent",
    )
}

/// Reads the descriptors and root directories of `image`.
pub fn read_volume(image: &[u8]) -> Result<IsoVolume, IsoReadError> {
    let mut primary = None;
    let mut joliet = None;
    for index in 0..MAX_DESCRIPTORS {
        let offset = (16 + index as u64) * SECTOR_SIZE as u64;
        let Ok(d) = slice(image, offset, SECTOR_SIZE as u64, "volume descriptor") else {
            break;
        };
        if &d[1..6] != b"CD001" {
            break;
        }
        match d[0] {
            1 if primary.is_none() => primary = Some(d),
            2 if &d[88..91] == b"%/@" || &d[88..91] == b"%/C" || &d[88..91] == b"%/E" => {
                joliet = joliet.or(Some(d))
            }
            255 => break,
            _ => {}
        }
    }
    let primary = primary.ok_or(IsoReadError::NoPrimaryDescriptor)?;
    let block_size = u16::from_le_bytes([primary[128], primary[129]]);
    if usize::from(block_size) != SECTOR_SIZE {
        return Err(IsoReadError::BlockSize { size: block_size });
    }
    let volume_sectors = le32(&primary[80..84]);
    let volume_id = String::from_utf8_lossy(&primary[40..72])
        .trim_end()
        .to_string();

    let root = root_extent(primary)?;
    let primary_dir = slice(image, root.0, root.1, "primary root directory")?;
    let primary_records = records(primary_dir, root.0 as usize)?;
    // SUSP: the root's `.` record says whether system use entries exist and how many
    // bytes to skip at the start of each record's system use area.
    let (skip, rock_ridge) = match primary_records.first() {
        Some(dot) => root_susp(image, dot),
        None => (None, false),
    };
    let primary_root = primary_records
        .iter()
        .filter(|r| !is_dot_or_dotdot(r.identifier))
        .map(|r| {
            let mut entry = r.to_entry(String::from_utf8_lossy(r.identifier).into_owned());
            if let Some(skip) = skip {
                let rr = rock_ridge_fields(image, r.system_use.get(skip..).unwrap_or(&[]));
                entry.rock_ridge_name = rr.name;
                entry.posix_mode = rr.mode;
            }
            entry
        })
        .collect();

    let joliet_root = match joliet {
        None => None,
        Some(d) => {
            let root = root_extent(d)?;
            let dir = slice(image, root.0, root.1, "Joliet root directory")?;
            Some(
                records(dir, root.0 as usize)?
                    .iter()
                    .filter(|r| !is_dot_or_dotdot(r.identifier))
                    .map(|r| r.to_entry(decode_ucs2(r.identifier)))
                    .collect(),
            )
        }
    };
    let joliet_volume_id = joliet.map(|d| decode_ucs2(&d[40..72]).trim_end().to_string());
    Ok(IsoVolume {
        volume_id,
        joliet_volume_id,
        rock_ridge,
        primary_root,
        joliet_root,
        volume_sectors,
    })
}

struct RawRecord<'a> {
    extent: u32,
    size: u32,
    is_dir: bool,
    stamp: [u8; 7],
    identifier: &'a [u8],
    system_use: &'a [u8],
}

impl RawRecord<'_> {
    fn to_entry(&self, name: String) -> DirEntry {
        DirEntry {
            name,
            rock_ridge_name: None,
            posix_mode: None,
            is_dir: self.is_dir,
            extent: self.extent,
            size: self.size,
            recorded_at: IsoTimestamp::from_dir_record_bytes(self.stamp),
        }
    }
}

fn is_dot_or_dotdot(identifier: &[u8]) -> bool {
    identifier == [0] || identifier == [1]
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn slice<'a>(
    image: &'a [u8],
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8], IsoReadError> {
    let end = offset.checked_add(len);
    match end {
        Some(end) if end <= image.len() as u64 => Ok(&image[offset as usize..end as usize]),
        _ => Err(IsoReadError::OutOfBounds {
            what,
            offset,
            len,
            image_len: image.len(),
        }),
    }
}

/// Byte offset and size of the root directory named by a volume descriptor.
fn root_extent(descriptor: &[u8]) -> Result<(u64, u64), IsoReadError> {
    let root = &descriptor[156..190];
    let extent = le32(&root[2..6]);
    let size = le32(&root[10..14]);
    if size as usize > MAX_DIRECTORY_BYTES {
        return Err(IsoReadError::DirectoryTooLarge { size });
    }
    Ok((u64::from(extent) * SECTOR_SIZE as u64, u64::from(size)))
}

/// Splits a directory extent into records. `base` is the extent's image offset (for errors).
fn records(dir: &[u8], base: usize) -> Result<Vec<RawRecord<'_>>, IsoReadError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < dir.len() {
        let len = usize::from(dir[pos]);
        if len == 0 {
            // Records do not cross sectors: a zero length means "continue at the next sector".
            pos = (pos / SECTOR_SIZE + 1) * SECTOR_SIZE;
            continue;
        }
        let bad = |reason| IsoReadError::BadRecord {
            offset: base + pos,
            reason,
        };
        if len < 34 {
            return Err(bad("shorter than 34 bytes"));
        }
        if pos % SECTOR_SIZE + len > SECTOR_SIZE || pos + len > dir.len() {
            return Err(bad("crosses a sector boundary or the directory's end"));
        }
        let r = &dir[pos..pos + len];
        let id_len = usize::from(r[32]);
        let id_end = 33 + id_len;
        if id_len == 0 || id_end > len {
            return Err(bad("file identifier length out of range"));
        }
        let su_start = (id_end + usize::from(id_len % 2 == 0)).min(len);
        let mut stamp = [0u8; 7];
        stamp.copy_from_slice(&r[18..25]);
        out.push(RawRecord {
            extent: le32(&r[2..6]),
            size: le32(&r[10..14]),
            is_dir: r[25] & 0x02 != 0,
            stamp,
            identifier: &r[33..id_end],
            system_use: &r[su_start..],
        });
        pos += len;
    }
    Ok(out)
}

/// Iterates SUSP entries of one area: (signature, entry bytes including the header).
fn susp_entries(area: &[u8]) -> impl Iterator<Item = ([u8; 2], &[u8])> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let header = area.get(pos..pos + 4)?;
        let len = usize::from(header[2]);
        if len < 4 {
            return None;
        }
        let entry = area.get(pos..pos + len)?;
        pos += len;
        Some(([header[0], header[1]], entry))
    })
}

/// Entries of a system use area followed by its `CE` continuation areas (bounded).
fn susp_with_continuations<'a>(image: &'a [u8], area: &'a [u8]) -> Vec<([u8; 2], &'a [u8])> {
    let mut out = Vec::new();
    let mut current = area;
    for _ in 0..=MAX_CONTINUATIONS {
        let mut next = None;
        for (sig, entry) in susp_entries(current) {
            if &sig == b"CE" && entry.len() >= 28 {
                let block = u64::from(le32(&entry[4..8]));
                let offset = u64::from(le32(&entry[12..16]));
                let len = u64::from(le32(&entry[20..24]));
                next = slice(
                    image,
                    block * SECTOR_SIZE as u64 + offset,
                    len,
                    "continuation",
                )
                .ok();
            } else if &sig == b"ST" {
                break;
            } else {
                out.push((sig, entry));
            }
        }
        match next {
            Some(area) => current = area,
            None => break,
        }
    }
    out
}

/// From the root's `.` record: the SUSP skip length (when `SP` is present) and whether an
/// `ER` entry announces Rock Ridge.
fn root_susp(image: &[u8], dot: &RawRecord<'_>) -> (Option<usize>, bool) {
    let su = dot.system_use;
    let skip = match su.get(..7) {
        Some([b'S', b'P', 7, _, 0xBE, 0xEF, skip]) => usize::from(*skip),
        _ => return (None, false),
    };
    let area = su.get(skip..).unwrap_or(&[]);
    let rock_ridge = susp_with_continuations(image, area).iter().any(|(sig, e)| {
        if sig != b"ER" || e.len() < 8 {
            return false;
        }
        let id_len = usize::from(e[4]);
        matches!(
            e.get(8..8 + id_len),
            Some(b"RRIP_1991A" | b"IEEE_P1282" | b"IEEE_1282")
        )
    });
    (Some(skip), rock_ridge)
}

struct RockRidgeFields {
    name: Option<String>,
    mode: Option<u32>,
}

fn rock_ridge_fields(image: &[u8], area: &[u8]) -> RockRidgeFields {
    let mut name: Option<Vec<u8>> = None;
    let mut mode = None;
    for (sig, e) in susp_with_continuations(image, area) {
        match &sig {
            // Flags 0x02/0x04 mean "." / ".."; 0x01 means the name continues.
            b"NM" if e.len() >= 5 && e[4] & 0x06 == 0 => {
                name.get_or_insert_with(Vec::new).extend_from_slice(&e[5..]);
            }
            b"PX" if e.len() >= 12 => mode = Some(le32(&e[4..8])),
            _ => {}
        }
    }
    RockRidgeFields {
        name: name.map(|n| String::from_utf8_lossy(&n).into_owned()),
        mode,
    }
}

fn decode_ucs2(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}
