//! Microsoft VHDX: fixed, dynamic and differencing disks (read-only), with in-memory replay of
//! a dirty metadata log.
//!
//! Opening order (every step validated before the next relies on it): file identifier, the
//! current header (CRC-32C, highest sequence number), the log (replayed into an overlay when
//! the header names one), the region table, the metadata region, the BAT. From the log step on
//! every read of file structures goes through the overlay, so a logged BAT or metadata update
//! is seen exactly as if it had been applied.
//!
//! Invariants of an opened [`VhdxImage`]:
//! - the BAT has at least the entries the geometry requires and fits `Limits::max_table_bytes`;
//!   every block offset is checked against the (replayed) file length when used;
//! - payload block states: FULLY_PRESENT reads from the file, ZERO reads zeros,
//!   PARTIALLY_PRESENT (differencing only) consults the sector bitmap (bit *n* of the chunk's
//!   bitmap, LSB first, set = this file), and NOT_PRESENT/UNDEFINED/UNMAPPED read the parent
//!   (differencing) or zeros;
//! - the parent was resolved through the `PathPolicy`, its DataWriteGuid equals the locator's
//!   `parent_linkage`, and the chain is at most `Limits::max_chain_depth` long.

mod log;
mod meta;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::device::{BlockSource, Extent, ExtentKind, Format, Limits, PathPolicy};
use crate::error::ImageError;
use log::Overlay;
use meta::{corrupt, BatGeometry, Guid, Metadata};

const MIB: u64 = 1 << 20;
/// Blocks `extent_at` scans at most (converters call it once per chunk).
const EXTENT_SCAN_BLOCKS: u64 = 64;
const STATE_NOT_PRESENT: u64 = 0;
const STATE_UNDEFINED: u64 = 1;
const STATE_ZERO: u64 = 2;
/// The specification's value for UNMAPPED; qemu's reader uses 5, so both are accepted.
const STATE_UNMAPPED: u64 = 3;
const STATE_UNMAPPED_QEMU: u64 = 5;
const STATE_FULLY_PRESENT: u64 = 6;
const STATE_PARTIALLY_PRESENT: u64 = 7;

/// Test-fixture helpers (building log entries for dirty-log tests).
pub mod testing {
    pub use super::log::build_entry as log_entry;
    pub use super::meta::Guid;
}

/// The file with the replayed log layered over it.
#[derive(Debug)]
struct Store {
    file: File,
    path: PathBuf,
    /// Bytes actually in the file.
    real_len: u64,
    /// Length after log replay (bytes past `real_len` read as zeros unless logged).
    len: u64,
    overlay: Overlay,
}

impl Store {
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                corrupt(format!(
                    "{}: {} bytes at offset {offset} lie past the end of the file",
                    self.path.display(),
                    buf.len()
                ))
            })?;
        let in_file = end.min(self.real_len).saturating_sub(offset) as usize;
        if in_file > 0 {
            self.file
                .read_exact_at(&mut buf[..in_file], offset)
                .map_err(|e| {
                    ImageError::io(
                        format!("reading {} at offset {offset}", self.path.display()),
                        e,
                    )
                })?;
        }
        buf[in_file..].fill(0);
        if !self.overlay.is_empty() {
            self.overlay.apply(buf, offset);
        }
        Ok(())
    }

    fn read_vec(
        &self,
        len: u64,
        offset: u64,
        what: &'static str,
        limits: &Limits,
    ) -> Result<Vec<u8>, ImageError> {
        if len > limits.max_table_bytes {
            return Err(ImageError::LimitExceeded {
                what,
                requested: len,
                limit: limits.max_table_bytes,
            });
        }
        let mut v = vec![0u8; len as usize];
        self.read(&mut v, offset)?;
        Ok(v)
    }
}

/// Kind of VHDX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VhdxKind {
    Fixed,
    Dynamic,
    Differencing,
}

/// Structural facts about a VHDX (for `image info`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VhdxInfo {
    pub path: PathBuf,
    pub kind: VhdxKind,
    pub virtual_size: u64,
    pub block_size: u32,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    /// Creator string of the file identifier (diagnostic only).
    pub creator: String,
    pub data_write_guid: String,
    pub virtual_disk_id: Option<String>,
    /// Log entries replayed in memory while opening (0 for a clean image).
    pub log_entries_replayed: usize,
    /// Parent locator key/value pairs (differencing disks).
    pub parent_locator: BTreeMap<String, String>,
    /// Resolved parent path.
    pub parent: Option<PathBuf>,
}

/// An opened VHDX.
#[derive(Debug)]
pub struct VhdxImage {
    store: Store,
    meta: Metadata,
    geometry: BatGeometry,
    bat: Vec<u64>,
    data_write_guid: Guid,
    parent: Option<Box<VhdxImage>>,
    info: VhdxInfo,
}

/// True when `head` starts with the VHDX file identifier.
pub fn probe(head: &[u8]) -> bool {
    head.starts_with(meta::FILE_SIGNATURE)
}

/// Opens a VHDX as a guest view.
pub fn open(
    path: &Path,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<Box<dyn BlockSource>, ImageError> {
    Ok(Box::new(VhdxImage::open(path, limits, policy)?))
}

/// Opens `path` as a VHDX and reads its guest view (bounded), ignoring errors. For fuzz
/// targets and robustness tests: must never panic or allocate beyond `limits`.
pub fn exercise(path: &Path, limits: &Limits, policy: &PathPolicy) {
    let _ = describe(path, limits, policy);
    if let Ok(img) = open(path, limits, policy) {
        crate::vmdk::exercise_guest_view(img.as_ref());
    }
}

/// Opens `path` and reports its structure.
pub fn describe(path: &Path, limits: &Limits, policy: &PathPolicy) -> Result<VhdxInfo, ImageError> {
    Ok(VhdxImage::open(path, limits, policy)?.info)
}

impl VhdxImage {
    pub fn open(path: &Path, limits: &Limits, policy: &PathPolicy) -> Result<Self, ImageError> {
        Self::open_depth(path, limits, policy, 0)
    }

    pub fn info(&self) -> &VhdxInfo {
        &self.info
    }

    fn open_depth(
        path: &Path,
        limits: &Limits,
        policy: &PathPolicy,
        depth: usize,
    ) -> Result<Self, ImageError> {
        if depth > limits.max_chain_depth {
            return Err(ImageError::ChainTooDeep(limits.max_chain_depth));
        }
        let file = File::open(path)
            .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
        let real_len = file
            .metadata()
            .map_err(|e| ImageError::io(format!("inspecting {}", path.display()), e))?
            .len();
        let mut store = Store {
            file,
            path: path.to_path_buf(),
            real_len,
            len: real_len,
            overlay: Overlay::default(),
        };
        if real_len < MIB {
            return Err(corrupt(format!(
                "{} is too short for a VHDX",
                path.display()
            )));
        }
        let mut ident = vec![0u8; 520];
        store.read(&mut ident, 0)?;
        if !probe(&ident) {
            return Err(corrupt(format!(
                "{} has no vhdxfile signature",
                path.display()
            )));
        }
        let units: Vec<u16> = ident[8..520]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let creator = String::from_utf16_lossy(&units);
        let mut h1 = vec![0u8; meta::HEADER_SIZE];
        let mut h2 = vec![0u8; meta::HEADER_SIZE];
        store.read(&mut h1, meta::HEADER_OFFSETS[0])?;
        store.read(&mut h2, meta::HEADER_OFFSETS[1])?;
        let header = meta::current_header(&h1, &h2)?;

        let mut log_entries_replayed = 0;
        if !header.log_guid.is_zero() && header.log_length != 0 {
            if header.log_version != 0 {
                return Err(ImageError::Unsupported {
                    format: "vhdx",
                    detail: format!("log version {}", header.log_version),
                });
            }
            let (offset, length) = (header.log_offset, u64::from(header.log_length));
            if offset % MIB != 0 || offset < MIB || length % MIB != 0 {
                return Err(corrupt(format!(
                    "log at {offset} of {length} bytes is not 1 MiB aligned"
                )));
            }
            let raw = store.read_vec(length, offset, "VHDX log", limits)?;
            let replay = log::replay(&raw, &header.log_guid, real_len)?;
            log_entries_replayed = replay.entries;
            store.len = replay.file_len;
            store.overlay = replay.overlay;
        }

        let mut regions = None;
        for at in meta::REGION_TABLE_OFFSETS {
            let mut table = vec![0u8; meta::REGION_TABLE_SIZE];
            store.read(&mut table, at)?;
            if let Some(r) = meta::parse_regions(&table)? {
                regions = Some(r);
                break;
            }
        }
        let regions = regions
            .ok_or_else(|| corrupt("neither region table has a valid signature and checksum"))?;
        let meta_raw = store.read_vec(
            regions.metadata.length,
            regions.metadata.offset,
            "VHDX metadata region",
            limits,
        )?;
        let meta = meta::parse_metadata(&meta_raw)?;
        if meta.virtual_size > limits.max_virtual_size {
            return Err(ImageError::LimitExceeded {
                what: "VHDX virtual size",
                requested: meta.virtual_size,
                limit: limits.max_virtual_size,
            });
        }
        let geometry = BatGeometry::new(&meta);
        let bat_bytes = geometry.entries * 8;
        if bat_bytes > regions.bat.length {
            return Err(corrupt(format!(
                "BAT region of {} bytes cannot hold the {} entries the disk needs",
                regions.bat.length, geometry.entries
            )));
        }
        let bat_raw = store.read_vec(
            bat_bytes,
            regions.bat.offset,
            "VHDX block allocation table",
            limits,
        )?;
        let bat: Vec<u64> = bat_raw.chunks_exact(8).map(|c| meta::le64(c, 0)).collect();

        let kind = if meta.has_parent {
            VhdxKind::Differencing
        } else if meta.leave_blocks_allocated {
            VhdxKind::Fixed
        } else {
            VhdxKind::Dynamic
        };
        let locator = meta.parent_locator.clone().unwrap_or_default();
        let mut info = VhdxInfo {
            path: path.to_path_buf(),
            kind,
            virtual_size: meta.virtual_size,
            block_size: meta.block_size,
            logical_sector_size: meta.logical_sector_size,
            physical_sector_size: meta.physical_sector_size,
            creator,
            data_write_guid: header.data_write_guid.to_text(),
            virtual_disk_id: meta.virtual_disk_id.map(Guid::to_text),
            log_entries_replayed,
            parent_locator: locator.entries.clone(),
            parent: None,
        };
        let parent = if meta.has_parent {
            let (parent_path, parent) = open_parent(path, &locator.entries, limits, policy, depth)?;
            info.parent = Some(parent_path);
            Some(Box::new(parent))
        } else {
            None
        };
        Ok(VhdxImage {
            store,
            meta,
            geometry,
            bat,
            data_write_guid: header.data_write_guid,
            parent,
            info,
        })
    }

    /// State and file offset of payload block `block`.
    fn payload(&self, block: u64) -> Result<(u64, u64), ImageError> {
        let entry = self
            .bat
            .get(self.geometry.payload_index(block) as usize)
            .copied()
            .unwrap_or(0);
        let state = entry & 7;
        let offset = (entry >> 20) << 20;
        match state {
            STATE_FULLY_PRESENT | STATE_PARTIALLY_PRESENT => {
                if state == STATE_PARTIALLY_PRESENT && !self.meta.has_parent {
                    return Err(corrupt(format!(
                        "block {block} is partially present in a disk without a parent"
                    )));
                }
                if offset < MIB || offset + u64::from(self.meta.block_size) > self.store.len {
                    return Err(corrupt(format!(
                        "{}: block {block} at offset {offset} is outside the file",
                        self.store.path.display()
                    )));
                }
            }
            STATE_NOT_PRESENT | STATE_UNDEFINED | STATE_ZERO | STATE_UNMAPPED
            | STATE_UNMAPPED_QEMU => {}
            other => return Err(corrupt(format!("block {block} has invalid state {other}"))),
        }
        Ok((state, offset))
    }

    fn read_parent(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        match &self.parent {
            Some(p) => {
                let inside = p
                    .meta
                    .virtual_size
                    .saturating_sub(offset)
                    .min(buf.len() as u64) as usize;
                if inside > 0 {
                    p.read_at(&mut buf[..inside], offset)?;
                }
                buf[inside..].fill(0);
            }
            None => buf.fill(0),
        }
        Ok(())
    }

    /// Reads part of a partially present block: sectors whose bitmap bit is set come from this
    /// file, the others from the parent.
    fn read_partial(
        &self,
        block: u64,
        data: u64,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), ImageError> {
        let sb = self
            .bat
            .get(self.geometry.bitmap_index(block) as usize)
            .copied()
            .unwrap_or(0);
        let sb_offset = (sb >> 20) << 20;
        if sb & 7 != STATE_FULLY_PRESENT || sb_offset < MIB || sb_offset + MIB > self.store.len {
            return Err(corrupt(format!(
                "block {block} is partially present but its sector bitmap is not"
            )));
        }
        let ss = u64::from(self.meta.logical_sector_size);
        let bs = u64::from(self.meta.block_size);
        let chunk_bytes = self.geometry.chunk_ratio * bs;
        let first = (offset % chunk_bytes) / ss;
        let last = ((offset + buf.len() as u64 - 1) % chunk_bytes) / ss;
        let mut bits = vec![0u8; (last / 8 - first / 8 + 1) as usize];
        self.store.read(&mut bits, sb_offset + first / 8)?;
        let present = |sector: u64| {
            let i = sector / 8 - first / 8;
            bits[i as usize] & (1 << (sector % 8)) != 0
        };
        let block_start = block * bs;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let sector = (pos % chunk_bytes) / ss;
            let here = present(sector);
            let mut end = ((sector + 1) * ss - pos % chunk_bytes) as usize;
            let mut next = sector + 1;
            while done + end < buf.len() && present(next) == here {
                end += ss as usize;
                next += 1;
            }
            let n = end.min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            if here {
                self.store.read(chunk, data + (pos - block_start))?;
            } else {
                self.read_parent(chunk, pos)?;
            }
            done += n;
        }
        Ok(())
    }

    fn kind_of(&self, state: u64) -> ExtentKind {
        match state {
            STATE_FULLY_PRESENT | STATE_PARTIALLY_PRESENT => ExtentKind::Data,
            STATE_ZERO => ExtentKind::Zero,
            _ if self.parent.is_some() => ExtentKind::Backing,
            _ => ExtentKind::Zero,
        }
    }
}

/// Resolves and opens the parent named by a differencing disk's locator.
fn open_parent(
    child: &Path,
    locator: &BTreeMap<String, String>,
    limits: &Limits,
    policy: &PathPolicy,
    depth: usize,
) -> Result<(PathBuf, VhdxImage), ImageError> {
    let linkage: Vec<Guid> = ["parent_linkage", "parent_linkage2"]
        .iter()
        .filter_map(|k| locator.get(*k))
        .filter_map(|v| Guid::parse_text(v))
        .collect();
    if linkage.is_empty() {
        return Err(corrupt(format!(
            "{}: parent locator has no parent_linkage",
            child.display()
        )));
    }
    let mut refusal = None;
    let mut last_error = None;
    for key in ["relative_path", "absolute_win32_path"] {
        let Some(name) = locator.get(key) else {
            continue;
        };
        for attempt in crate::vhd::windows_path_variants(name) {
            match policy.resolve(child, &attempt) {
                Ok(p) => {
                    let parent = VhdxImage::open_depth(&p, limits, policy, depth + 1)?;
                    if !linkage.contains(&parent.data_write_guid) {
                        return Err(corrupt(format!(
                            "{}: parent {} has DataWriteGuid {}, the child expects {}",
                            child.display(),
                            p.display(),
                            parent.data_write_guid.to_text(),
                            linkage[0].to_text()
                        )));
                    }
                    return Ok((p, parent));
                }
                Err(e @ ImageError::PathNotAllowed { .. }) => refusal = Some(e),
                Err(e) => last_error = Some(e),
            }
        }
    }
    Err(refusal.or(last_error).unwrap_or_else(|| {
        corrupt(format!(
            "{}: parent locator has no usable path",
            child.display()
        ))
    }))
}

impl BlockSource for VhdxImage {
    fn format(&self) -> Format {
        Format::Vhdx
    }

    fn virtual_size(&self) -> u64 {
        self.meta.virtual_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let size = self.meta.virtual_size;
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > size)
        {
            return Err(ImageError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size,
            });
        }
        let bs = u64::from(self.meta.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / bs;
            let mut n = ((bs - pos % bs) as usize).min(buf.len() - done);
            let (state, data) = self.payload(block)?;
            match state {
                STATE_FULLY_PRESENT => {
                    // Coalesce blocks that are also contiguous in the file (fixed disks).
                    let mut next = block + 1;
                    while done + n < buf.len()
                        && self.payload(next)? == (STATE_FULLY_PRESENT, data + (next - block) * bs)
                    {
                        n += (bs as usize).min(buf.len() - done - n);
                        next += 1;
                    }
                    self.store.read(&mut buf[done..done + n], data + pos % bs)?;
                }
                STATE_PARTIALLY_PRESENT => {
                    self.read_partial(block, data, &mut buf[done..done + n], pos)?
                }
                STATE_ZERO => buf[done..done + n].fill(0),
                _ => self.read_parent(&mut buf[done..done + n], pos)?,
            }
            done += n;
        }
        Ok(())
    }

    fn extent_at(&self, offset: u64) -> Result<Extent, ImageError> {
        let size = self.meta.virtual_size;
        if offset >= size {
            return Err(ImageError::OutOfRange {
                offset,
                len: 1,
                size,
            });
        }
        let bs = u64::from(self.meta.block_size);
        let remaining = size - offset;
        let block = offset / bs;
        let kind = self.kind_of(self.payload(block)?.0);
        let mut length = (bs - offset % bs).min(remaining);
        let mut next = block + 1;
        while length < remaining
            && next - block < EXTENT_SCAN_BLOCKS
            && self.kind_of(self.payload(next)?.0) == kind
        {
            length = (length + bs).min(remaining);
            next += 1;
        }
        Ok(Extent {
            offset,
            length,
            kind,
        })
    }

    fn allocation_unit(&self) -> u64 {
        u64::from(self.meta.block_size)
    }
}
