//! Read side of qcow2: the guest view of an image and its backing chain.
//!
//! Invariants:
//! - the L1 table is loaded once (bounded by `Limits::max_table_bytes`); L2 tables are loaded
//!   on demand into a byte-bounded cache shared by all reader threads;
//! - every table entry is validated before use (reserved bits, alignment, host offsets inside
//!   the file); a bad entry is reported as [`ImageError::Corrupt`], never followed;
//! - reads never go past the virtual size; host reads past EOF (a data cluster whose tail was
//!   never written) read as zeros, but a cluster that starts past EOF is corrupt.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::compress;
use super::header::{CompressionType, Header};
use crate::detect::ChainContext;
use crate::device::{BlockSource, Extent, ExtentKind, Format, Limits, PathPolicy};
use crate::error::ImageError;

/// Bits 9..=55 of an L1/L2 entry: a host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63: refcount is exactly one ("copied").
pub const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: compressed cluster.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry: reads as zeros (v3 only).
pub const OFLAG_ZERO: u64 = 1;
/// Reserved bits of an L1 entry (1..=8 and 56..=62).
const L1_RESERVED: u64 = 0x7f00_0000_0000_01fe;
/// Reserved bits of a standard L2 entry (1..=8 and 56..=61).
const L2_STD_RESERVED: u64 = 0x3f00_0000_0000_01fe;

/// Upper bound on the bytes of L2 tables one open image keeps cached.
const L2_CACHE_BYTES: u64 = 8 << 20;

fn corrupt(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "qcow2",
        detail: detail.into(),
    }
}

/// Where a guest cluster's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated in this image (reads the backing file, or zeros).
    Unallocated,
    /// Reads as zeros (v3 zero flag); `host` is a preallocation if non-zero.
    Zero { host: u64 },
    /// A standard data cluster at `host`.
    Data { host: u64 },
    /// Compressed data starting at byte `host`, at most `len` bytes long.
    Compressed { host: u64, len: u64 },
}

/// Decodes an L2 entry (pure), validating it against the image geometry.
pub fn decode_l2_entry(
    entry: u64,
    cluster_bits: u32,
    version: u32,
    file_len: u64,
) -> Result<Mapping, ImageError> {
    let cluster_size = 1u64 << cluster_bits;
    if entry & OFLAG_COMPRESSED != 0 {
        let x = 62 - (cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = (entry >> x) & ((1u64 << (cluster_bits - 8)) - 1);
        let len = (sectors + 1) * 512 - (host & 511);
        if host >= file_len {
            return Err(corrupt(format!(
                "compressed cluster at {host:#x} is past end of file"
            )));
        }
        return Ok(Mapping::Compressed { host, len });
    }
    if entry & L2_STD_RESERVED != 0 {
        return Err(corrupt(format!(
            "L2 entry {entry:#x} has reserved bits set"
        )));
    }
    let host = entry & OFFSET_MASK;
    if entry & OFLAG_ZERO != 0 {
        if version < 3 {
            return Err(corrupt("zero cluster flag in a version 2 image"));
        }
        return Ok(Mapping::Zero { host });
    }
    if host == 0 {
        if entry & OFLAG_COPIED != 0 {
            return Err(corrupt("L2 entry marks host offset 0 as allocated"));
        }
        return Ok(Mapping::Unallocated);
    }
    if !host.is_multiple_of(cluster_size) {
        return Err(corrupt(format!(
            "data cluster offset {host:#x} is not cluster-aligned"
        )));
    }
    if host >= file_len {
        return Err(corrupt(format!(
            "data cluster offset {host:#x} is past end of file"
        )));
    }
    Ok(Mapping::Data { host })
}

/// Validates an L1 entry and returns the L2 table offset (0 = no table).
pub fn decode_l1_entry(entry: u64, cluster_bits: u32, file_len: u64) -> Result<u64, ImageError> {
    if entry & L1_RESERVED != 0 {
        return Err(corrupt(format!(
            "L1 entry {entry:#x} has reserved bits set"
        )));
    }
    let off = entry & OFFSET_MASK;
    if off == 0 {
        return Ok(0);
    }
    let cluster_size = 1u64 << cluster_bits;
    if !off.is_multiple_of(cluster_size) {
        return Err(corrupt(format!(
            "L2 table offset {off:#x} is not cluster-aligned"
        )));
    }
    if off.saturating_add(cluster_size) > file_len {
        return Err(corrupt(format!("L2 table at {off:#x} is past end of file")));
    }
    Ok(off)
}

/// One internal snapshot (read from the snapshot table).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub l1_table_offset: u64,
    #[serde(skip)]
    pub l1_size: u32,
    pub vm_state_size: u64,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_sec: u64,
    pub vm_clock_nsec: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icount: Option<u64>,
    #[serde(skip)]
    pub disk_size: Option<u64>,
}

/// Positioned read that fills `buf` completely, zero-filling past end of file.
pub(crate) fn pread_fill(
    file: &File,
    buf: &mut [u8],
    mut off: u64,
    path: &Path,
) -> Result<(), ImageError> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => {
                done += n;
                off += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ImageError::io(
                    format!("reading {} at {off}", path.display()),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// Reads a big-endian u64 table of `entries` entries at `offset`.
pub(crate) fn read_table(
    file: &File,
    path: &Path,
    offset: u64,
    entries: u64,
    limits: &Limits,
    what: &'static str,
) -> Result<Vec<u64>, ImageError> {
    let bytes = entries.saturating_mul(8);
    if bytes > limits.max_table_bytes {
        return Err(ImageError::LimitExceeded {
            what,
            requested: bytes,
            limit: limits.max_table_bytes,
        });
    }
    let mut raw = vec![0u8; bytes as usize];
    pread_fill(file, &mut raw, offset, path)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// Reads and validates the snapshot table (see [`super::snapshot`] for the rules).
pub(crate) fn read_snapshots(
    file: &File,
    path: &Path,
    header: &Header,
    limits: &Limits,
) -> Result<Vec<Snapshot>, ImageError> {
    let (raw, _) = super::snapshot::read_raw_table(file, path, header, limits)?;
    Ok(raw
        .iter()
        .map(|r| Snapshot {
            id: String::from_utf8_lossy(&r.id).into_owned(),
            name: String::from_utf8_lossy(&r.name).into_owned(),
            l1_table_offset: r.l1_table_offset,
            l1_size: r.l1_size,
            vm_state_size: r.vm_state_size(),
            date_sec: r.date_sec,
            date_nsec: r.date_nsec,
            vm_clock_sec: r.vm_clock_nsec / 1_000_000_000,
            vm_clock_nsec: r.vm_clock_nsec % 1_000_000_000,
            icount: r.icount(),
            disk_size: r.disk_size(),
        })
        .collect())
}

/// Byte-bounded cache of decoded L2 tables keyed by host offset (FIFO eviction: converters
/// walk tables in order, so recency adds nothing).
#[derive(Debug, Default)]
struct L2Cache {
    tables: HashMap<u64, Arc<[u64]>>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl L2Cache {
    fn get(&self, off: u64) -> Option<Arc<[u64]>> {
        self.tables.get(&off).cloned()
    }

    fn insert(&mut self, off: u64, table: Arc<[u64]>) {
        if self.tables.insert(off, table).is_none() {
            self.order.push_back(off);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.tables.remove(&old);
                }
            }
        }
    }
}

/// An open qcow2 image (read-only guest view).
#[derive(Debug)]
pub struct Qcow2Image {
    path: PathBuf,
    file: File,
    header: Header,
    file_len: u64,
    l1: Vec<u64>,
    l2_cache: Mutex<L2Cache>,
    backing: Option<Box<dyn BlockSource>>,
    backing_path: Option<PathBuf>,
    snapshots: Vec<Snapshot>,
}

impl Qcow2Image {
    /// Opens `path` and its backing chain.
    pub(crate) fn open_in_chain(
        path: &Path,
        limits: &Limits,
        policy: &PathPolicy,
        chain: &mut ChainContext,
    ) -> Result<Qcow2Image, ImageError> {
        let file = File::open(path)
            .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
        let file_len = file
            .metadata()
            .map_err(|e| ImageError::io(format!("reading metadata of {}", path.display()), e))?
            .len();
        // Read the first 2 MiB at most (largest cluster); parse validates the real size.
        let mut head = vec![0u8; (2u64 << 20).min(file_len) as usize];
        pread_fill(&file, &mut head, 0, path)?;
        let header = Header::parse(&head, limits)?;
        let cluster_bits = header.cluster_bits;
        let l1_bytes = u64::from(header.l1_size) * 8;
        if header.l1_size > 0 && header.l1_table_offset.saturating_add(l1_bytes) > file_len {
            return Err(corrupt("L1 table is past end of file"));
        }
        let l1 = read_table(
            &file,
            path,
            header.l1_table_offset,
            u64::from(header.l1_size),
            limits,
            "qcow2 L1 table",
        )?;
        for &e in &l1 {
            decode_l1_entry(e, cluster_bits, file_len)?;
        }
        let snapshots = read_snapshots(&file, path, &header, limits)?;
        let capacity = (L2_CACHE_BYTES >> cluster_bits).max(4) as usize;

        let (backing, backing_path) = match &header.backing_file {
            None => (None, None),
            Some(reference) => {
                let resolved = policy.resolve(path, reference)?;
                let declared =
                    match header.backing_format.as_deref() {
                        None => None,
                        Some(f) => Some(Format::from_qemu_name(f).ok_or_else(|| {
                            ImageError::Unsupported {
                                format: "qcow2",
                                detail: format!("backing format {f:?}"),
                            }
                        })?),
                    };
                let src = crate::detect::open_in_chain(&resolved, declared, limits, policy, chain)?;
                (Some(src), Some(resolved))
            }
        };
        tracing::debug!(path = %path.display(), size = header.size, "opened qcow2 image");
        Ok(Qcow2Image {
            path: path.to_path_buf(),
            file,
            header,
            file_len,
            l1,
            l2_cache: Mutex::new(L2Cache {
                capacity,
                ..L2Cache::default()
            }),
            backing,
            backing_path,
            snapshots,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    pub fn backing(&self) -> Option<&dyn BlockSource> {
        self.backing.as_deref()
    }

    /// Canonical path of the backing file, if any.
    pub fn backing_path(&self) -> Option<&Path> {
        self.backing_path.as_deref()
    }

    fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// The L2 table for `l1_index`, or `None` when unallocated.
    fn l2_table(&self, l1_index: u64) -> Result<Option<Arc<[u64]>>, ImageError> {
        let entry = match self.l1.get(l1_index as usize) {
            Some(e) => *e,
            None => return Ok(None),
        };
        let off = entry & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if let Some(t) = self.lock_cache().get(off) {
            return Ok(Some(t));
        }
        let limits = Limits {
            max_table_bytes: self.cluster_size(),
            ..Limits::default()
        };
        let table: Arc<[u64]> = read_table(
            &self.file,
            &self.path,
            off,
            self.cluster_size() / 8,
            &limits,
            "qcow2 L2 table",
        )?
        .into();
        self.lock_cache().insert(off, table.clone());
        Ok(Some(table))
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, L2Cache> {
        // A panic while holding the lock cannot leave the cache inconsistent (each operation
        // is a single map update), so a poisoned lock is still usable.
        self.l2_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mapping of the guest cluster with index `cluster`.
    pub fn map_cluster(&self, cluster: u64) -> Result<Mapping, ImageError> {
        let per_l2 = self.cluster_size() / 8;
        match self.l2_table(cluster / per_l2)? {
            None => Ok(Mapping::Unallocated),
            Some(t) => decode_l2_entry(
                t[(cluster % per_l2) as usize],
                self.header.cluster_bits,
                self.header.version,
                self.file_len,
            ),
        }
    }

    /// Reads and decompresses one compressed cluster into `out` (one cluster long).
    fn read_compressed(&self, host: u64, len: u64, out: &mut [u8]) -> Result<(), ImageError> {
        let len = len.min(self.file_len - host);
        let mut input = vec![0u8; len as usize];
        pread_fill(&self.file, &mut input, host, &self.path)?;
        compress::decompress(self.header.compression_type, &input, out)
    }

    /// Fills `buf` (guest range `[offset, offset+len)`) from the backing image or zeros.
    fn read_unallocated(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        match &self.backing {
            None => buf.fill(0),
            Some(b) => {
                let bsize = b.virtual_size();
                let end = offset + buf.len() as u64;
                if offset >= bsize {
                    buf.fill(0);
                } else if end <= bsize {
                    b.read_at(buf, offset)?;
                } else {
                    let split = (bsize - offset) as usize;
                    b.read_at(&mut buf[..split], offset)?;
                    buf[split..].fill(0);
                }
            }
        }
        Ok(())
    }

    pub fn compression_type(&self) -> CompressionType {
        self.header.compression_type
    }
}

impl BlockSource for Qcow2Image {
    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn virtual_size(&self) -> u64 {
        self.header.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let size = self.header.size;
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ImageError::OutOfRange { offset, len, size });
        }
        let cs = self.cluster_size();
        let mut done = 0usize;
        let mut scratch: Vec<u8> = Vec::new();
        while done < buf.len() {
            let pos = offset + done as u64;
            let in_cluster = pos % cs;
            let chunk = ((cs - in_cluster) as usize).min(buf.len() - done);
            match self.map_cluster(pos / cs)? {
                Mapping::Data { host } => {
                    // Coalesce following clusters that are contiguous on the host.
                    let mut run = chunk;
                    let mut next_host = host + cs;
                    while done + run < buf.len() {
                        let p = offset + (done + run) as u64;
                        match self.map_cluster(p / cs)? {
                            Mapping::Data { host: h } if h == next_host => {
                                run += (cs as usize).min(buf.len() - done - run);
                                next_host += cs;
                            }
                            _ => break,
                        }
                    }
                    pread_fill(
                        &self.file,
                        &mut buf[done..done + run],
                        host + in_cluster,
                        &self.path,
                    )?;
                    done += run;
                    continue;
                }
                Mapping::Zero { .. } => buf[done..done + chunk].fill(0),
                Mapping::Unallocated => self.read_unallocated(&mut buf[done..done + chunk], pos)?,
                Mapping::Compressed { host, len } => {
                    if in_cluster == 0 && chunk as u64 == cs {
                        self.read_compressed(host, len, &mut buf[done..done + chunk])?;
                    } else {
                        scratch.resize(cs as usize, 0);
                        self.read_compressed(host, len, &mut scratch)?;
                        buf[done..done + chunk].copy_from_slice(
                            &scratch[in_cluster as usize..in_cluster as usize + chunk],
                        );
                    }
                }
            }
            done += chunk;
        }
        Ok(())
    }

    fn extent_at(&self, offset: u64) -> Result<Extent, ImageError> {
        let size = self.header.size;
        if offset >= size {
            return Err(ImageError::OutOfRange {
                offset,
                len: 1,
                size,
            });
        }
        let cs = self.cluster_size();
        // Kind of one cluster, with backing-chain knowledge folded in for unallocated ranges.
        let kind_of = |m: Mapping| match m {
            Mapping::Data { .. } | Mapping::Compressed { .. } => ExtentKind::Data,
            Mapping::Zero { .. } => ExtentKind::Zero,
            Mapping::Unallocated if self.backing.is_some() => ExtentKind::Backing,
            Mapping::Unallocated => ExtentKind::Zero,
        };
        let first = offset / cs;
        let kind = kind_of(self.map_cluster(first)?);
        // Scan forward, bounded so one call stays cheap on huge sparse images.
        let per_l2 = cs / 8;
        let last_cluster = (size - 1) / cs;
        let scan_limit = first.saturating_add(per_l2 * 64).min(last_cluster);
        let unallocated_kind = if self.backing.is_some() {
            ExtentKind::Backing
        } else {
            ExtentKind::Zero
        };
        let mut c = first + 1;
        'scan: while c <= scan_limit {
            let l1_index = c / per_l2;
            let table_end = ((l1_index + 1) * per_l2).min(scan_limit + 1);
            match self.l2_table(l1_index)? {
                // A whole unallocated L2 table is skipped in one step.
                None if unallocated_kind == kind => c = table_end,
                None => break,
                Some(t) => {
                    while c < table_end {
                        let m = decode_l2_entry(
                            t[(c % per_l2) as usize],
                            self.header.cluster_bits,
                            self.header.version,
                            self.file_len,
                        )?;
                        if kind_of(m) != kind {
                            break 'scan;
                        }
                        c += 1;
                    }
                }
            }
        }
        let end = (c.min(last_cluster + 1) * cs).min(size);
        let mut ext = Extent {
            offset,
            length: end - offset,
            kind,
        };
        if kind == ExtentKind::Backing {
            ext = self.refine_backing_extent(ext)?;
        }
        Ok(ext)
    }

    fn allocation_unit(&self) -> u64 {
        self.cluster_size()
    }
}

impl Qcow2Image {
    /// Narrows a `Backing` extent using the backing image's own map: ranges past the backing
    /// size, or that the backing image knows to be zero, are reported as `Zero`.
    fn refine_backing_extent(&self, ext: Extent) -> Result<Extent, ImageError> {
        let Some(b) = &self.backing else {
            return Ok(ext);
        };
        let bsize = b.virtual_size();
        if ext.offset >= bsize {
            return Ok(Extent {
                kind: ExtentKind::Zero,
                ..ext
            });
        }
        let be = b.extent_at(ext.offset)?;
        let len = ext.length.min(be.length).min(bsize - ext.offset);
        let kind = if be.kind == ExtentKind::Zero {
            ExtentKind::Zero
        } else {
            ExtentKind::Backing
        };
        Ok(Extent {
            offset: ext.offset,
            length: len,
            kind,
        })
    }

    /// Length of the image file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// This image seen through another L1 table (an internal snapshot's) with that
    /// snapshot's disk size: a read-only view sharing the file and backing chain. The table
    /// is bounded by `limits` and every entry is validated like the active table's.
    pub(crate) fn into_snapshot_view(
        mut self,
        l1_table_offset: u64,
        l1_size: u32,
        size: u64,
        limits: &Limits,
    ) -> Result<Qcow2Image, ImageError> {
        if size > limits.max_virtual_size {
            return Err(ImageError::LimitExceeded {
                what: "qcow2 snapshot disk size",
                requested: size,
                limit: limits.max_virtual_size,
            });
        }
        let needed = super::header::l1_entries_for(size, self.header.cluster_bits);
        if u64::from(l1_size) < needed {
            return Err(corrupt(format!(
                "snapshot L1 table has {l1_size} entries but its disk size needs {needed}"
            )));
        }
        let l1_bytes = u64::from(l1_size) * 8;
        if l1_size > 0 && l1_table_offset.saturating_add(l1_bytes) > self.file_len {
            return Err(corrupt("snapshot L1 table is past end of file"));
        }
        let l1 = read_table(
            &self.file,
            &self.path,
            l1_table_offset,
            u64::from(l1_size),
            limits,
            "qcow2 snapshot L1 table",
        )?;
        for &e in &l1 {
            decode_l1_entry(e, self.header.cluster_bits, self.file_len)?;
        }
        self.l1 = l1;
        self.header.size = size;
        self.header.l1_size = l1_size;
        self.header.l1_table_offset = l1_table_offset;
        self.lock_cache().tables.clear();
        self.lock_cache().order.clear();
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_l2_entries() {
        let len = 1 << 30;
        assert_eq!(
            decode_l2_entry(0, 16, 3, len).unwrap(),
            Mapping::Unallocated
        );
        assert_eq!(
            decode_l2_entry(1, 16, 3, len).unwrap(),
            Mapping::Zero { host: 0 }
        );
        assert!(decode_l2_entry(1, 16, 2, len).is_err());
        assert_eq!(
            decode_l2_entry(OFLAG_COPIED | 0x50000, 16, 3, len).unwrap(),
            Mapping::Data { host: 0x50000 }
        );
        assert!(decode_l2_entry(0x50200, 16, 3, len).is_err(), "unaligned");
        assert!(
            decode_l2_entry(OFLAG_COPIED | (2 << 30), 16, 3, len).is_err(),
            "past EOF"
        );
        assert!(
            decode_l2_entry(OFLAG_COPIED | 2, 16, 3, len).is_err(),
            "reserved bit"
        );
        // Compressed: x = 62 - 8 = 54 for 64 KiB clusters; 2 extra sectors at 0x10100.
        let e = OFLAG_COMPRESSED | (2u64 << 54) | 0x10100;
        assert_eq!(
            decode_l2_entry(e, 16, 3, len).unwrap(),
            Mapping::Compressed {
                host: 0x10100,
                len: 3 * 512 - 256
            }
        );
    }

    #[test]
    fn decodes_l1_entries() {
        assert_eq!(decode_l1_entry(0, 16, 1 << 20).unwrap(), 0);
        assert_eq!(
            decode_l1_entry(OFLAG_COPIED | 0x30000, 16, 1 << 20).unwrap(),
            0x30000
        );
        assert!(decode_l1_entry(0x30000 | (1 << 60), 16, 1 << 20).is_err());
        assert!(decode_l1_entry(0x100000, 16, 1 << 20).is_err());
    }
}
