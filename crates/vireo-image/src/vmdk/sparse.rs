//! Hosted sparse extents (`KDMV`): header, grain directory/tables and grain lookup.
//!
//! Layout facts (VMware "Virtual Disk Format" technote): a 512-byte little-endian header, an
//! optional embedded descriptor, a grain directory (GD) of `u32` sector offsets of grain tables
//! (GT), and GTs of `u32` sector offsets of grains. A GTE of 0 is an unallocated grain and a
//! GTE of 1 a zero grain. Stream-optimized extents compress every grain (a 12-byte marker
//! `lba: u64, size: u32` followed by zlib data) and may store the GD location only in a footer
//! (a header copy in the second-to-last sector) when the header says `GD_AT_END`.
//!
//! Invariants of an opened [`SparseExtent`]:
//! - the header passed [`SparseHeader::parse`]: known version, power-of-two grain size of at
//!   most [`MAX_GRAIN_SECTORS`], at most [`MAX_GTES_PER_GT`] entries per table, capacity in
//!   bytes fits `u64`;
//! - the GD lies inside the file and its size fits `Limits::max_table_bytes`;
//! - grain tables are loaded lazily into a bounded cache; every GT/grain offset is checked
//!   against the file length when used, so a hostile offset yields `ImageError::Corrupt`.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::device::Limits;
use crate::error::ImageError;

/// `KDMV` read as a little-endian `u32`.
pub const MAGIC: [u8; 4] = *b"KDMV";
/// Header value of `gd_offset` meaning "read the footer".
pub const GD_AT_END: u64 = u64::MAX;
pub const FLAG_NL_DETECT: u32 = 1 << 0;
pub const FLAG_COMPRESSED: u32 = 1 << 16;
pub const FLAG_MARKERS: u32 = 1 << 17;
pub const COMPRESS_NONE: u16 = 0;
pub const COMPRESS_DEFLATE: u16 = 1;
/// Marker types (the `type` field of a metadata marker, whose `size` is 0).
pub const MARKER_EOS: u32 = 0;
pub const MARKER_GT: u32 = 1;
pub const MARKER_GD: u32 = 2;
pub const MARKER_FOOTER: u32 = 3;
/// GTE value of a zero grain.
pub const GTE_ZERO: u32 = 1;

/// Largest grain accepted (1 MiB); real images use 64 KiB.
pub const MAX_GRAIN_SECTORS: u64 = 2048;
/// Largest grain table accepted (64 KiB of entries); real images use 512.
pub const MAX_GTES_PER_GT: u32 = 16384;
/// Bytes of grain tables kept in memory per extent, at most.
const GT_CACHE_BUDGET: u64 = 64 << 20;
/// Decompressed grains kept per extent (one per concurrent reader is enough).
const GRAIN_CACHE_ENTRIES: usize = 8;

pub(crate) fn corrupt(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "vmdk",
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

/// Positioned read of exactly `buf.len()` bytes; reading past the end of the file is a
/// corruption (an offset in the image points outside it), not an I/O error.
pub(crate) fn read_exact_at(
    file: &File,
    path: &Path,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), ImageError> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt(format!(
                "{}: {} bytes at offset {offset} lie past the end of the file",
                path.display(),
                buf.len()
            ))
        } else {
            ImageError::io(format!("reading {} at offset {offset}", path.display()), e)
        }
    })
}

/// The sparse extent header (also used as the stream-optimized footer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    pub version: u32,
    pub flags: u32,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_sectors: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub gtes_per_gt: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    pub overhead: u64,
    pub unclean_shutdown: bool,
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// Parses and validates a header sector.
    pub fn parse(b: &[u8; 512]) -> Result<Self, ImageError> {
        if b[0..4] != MAGIC {
            return Err(corrupt("sparse extent header has no KDMV magic"));
        }
        let h = SparseHeader {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain_sectors: le64(b, 20),
            descriptor_offset: le64(b, 28),
            descriptor_size: le64(b, 36),
            gtes_per_gt: le32(b, 44),
            rgd_offset: le64(b, 48),
            gd_offset: le64(b, 56),
            overhead: le64(b, 64),
            unclean_shutdown: b[72] != 0,
            compress_algorithm: le16(b, 77),
        };
        if !(1..=3).contains(&h.version) {
            return Err(ImageError::Unsupported {
                format: "vmdk",
                detail: format!("sparse extent version {}", h.version),
            });
        }
        if h.flags & FLAG_NL_DETECT != 0 && b[73..77] != *b"\n \r\n" {
            return Err(corrupt(
                "newline detection bytes are altered (file was transferred in text mode)",
            ));
        }
        if h.grain_sectors == 0
            || !h.grain_sectors.is_power_of_two()
            || h.grain_sectors > MAX_GRAIN_SECTORS
        {
            return Err(corrupt(format!(
                "grain size of {} sectors",
                h.grain_sectors
            )));
        }
        if h.gtes_per_gt == 0 || h.gtes_per_gt > MAX_GTES_PER_GT {
            return Err(corrupt(format!(
                "{} entries per grain table",
                h.gtes_per_gt
            )));
        }
        if h.capacity.checked_mul(512).is_none() {
            return Err(corrupt(format!(
                "capacity of {} sectors overflows",
                h.capacity
            )));
        }
        if h.flags & FLAG_COMPRESSED != 0 && h.compress_algorithm != COMPRESS_DEFLATE {
            return Err(ImageError::Unsupported {
                format: "vmdk",
                detail: format!("grain compression algorithm {}", h.compress_algorithm),
            });
        }
        Ok(h)
    }

    /// Serialises the header (the inverse of [`SparseHeader::parse`]).
    pub fn to_bytes(self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_sectors.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = u8::from(self.unclean_shutdown);
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    pub fn markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * 512
    }

    /// Guest bytes one grain table maps.
    pub fn gt_coverage(&self) -> u64 {
        self.grain_bytes() * u64::from(self.gtes_per_gt)
    }

    /// Number of grain directory entries needed for the capacity.
    pub fn gd_entries(&self) -> u64 {
        (self.capacity * 512).div_ceil(self.gt_coverage())
    }
}

/// Where a grain's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// Not allocated in this extent (reads as the parent, or zeros).
    Unallocated,
    /// Explicit zero grain.
    Zero,
    /// Uncompressed grain at this byte offset in the file.
    Data(u64),
    /// Compressed grain (marker or bare zlib stream) at this byte offset.
    Compressed(u64),
}

/// A bounded FIFO cache of grain tables keyed by GD index.
#[derive(Debug)]
struct GtCache {
    map: HashMap<u64, Arc<[u32]>>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl GtCache {
    fn get(&self, index: u64) -> Option<Arc<[u32]>> {
        self.map.get(&index).cloned()
    }

    fn insert(&mut self, index: u64, table: Arc<[u32]>) {
        if self.map.insert(index, table).is_none() {
            self.order.push_back(index);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// An opened hosted sparse extent.
#[derive(Debug)]
pub struct SparseExtent {
    file: Arc<File>,
    path: PathBuf,
    file_len: u64,
    header: SparseHeader,
    /// Grain directory: sector offsets of grain tables (0 = none).
    gd: Vec<u32>,
    gt_cache: Mutex<GtCache>,
    grain_cache: Mutex<VecDeque<(u64, Arc<[u8]>)>>,
}

impl SparseExtent {
    /// Opens the sparse extent in `file` (whose header is `head`).
    pub fn open(
        file: Arc<File>,
        path: &Path,
        head: &[u8; 512],
        limits: &Limits,
    ) -> Result<Self, ImageError> {
        let mut header = SparseHeader::parse(head)?;
        let file_len = file
            .metadata()
            .map_err(|e| ImageError::io(format!("inspecting {}", path.display()), e))?
            .len();
        if header.gd_offset == GD_AT_END {
            header = read_footer(&file, path, file_len, &header)?;
        }
        let entries = header.gd_entries();
        let gd_bytes = entries * 4;
        if gd_bytes > limits.max_table_bytes {
            return Err(ImageError::LimitExceeded {
                what: "VMDK grain directory",
                requested: gd_bytes,
                limit: limits.max_table_bytes,
            });
        }
        let gd_pos = header
            .gd_offset
            .checked_mul(512)
            .filter(|p| p.checked_add(gd_bytes).is_some_and(|end| end <= file_len))
            .ok_or_else(|| {
                corrupt(format!(
                    "{}: grain directory at sector {} is outside the file",
                    path.display(),
                    header.gd_offset
                ))
            })?;
        // Bounded by the table limit checked above.
        let mut raw = vec![0u8; gd_bytes as usize];
        read_exact_at(&file, path, &mut raw, gd_pos)?;
        let gd: Vec<u32> = raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
        let gt_bytes = u64::from(header.gtes_per_gt) * 4;
        let budget = GT_CACHE_BUDGET.min(limits.max_table_bytes).max(gt_bytes);
        let capacity = (budget / gt_bytes).clamp(1, entries.max(1)) as usize;
        Ok(SparseExtent {
            file,
            path: path.to_path_buf(),
            file_len,
            header,
            gd,
            gt_cache: Mutex::new(GtCache {
                map: HashMap::new(),
                order: VecDeque::new(),
                capacity,
            }),
            grain_cache: Mutex::new(VecDeque::new()),
        })
    }

    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.header.capacity * 512
    }

    /// Reads the embedded descriptor, if the header declares one.
    pub fn embedded_descriptor(&self, limits: &Limits) -> Result<Option<Vec<u8>>, ImageError> {
        let h = &self.header;
        if h.descriptor_offset == 0 || h.descriptor_size == 0 {
            return Ok(None);
        }
        let bytes = h
            .descriptor_size
            .checked_mul(512)
            .ok_or_else(|| corrupt("embedded descriptor size overflows"))?;
        if bytes > limits.max_descriptor_bytes {
            return Err(ImageError::LimitExceeded {
                what: "VMDK embedded descriptor",
                requested: bytes,
                limit: limits.max_descriptor_bytes,
            });
        }
        let pos = h
            .descriptor_offset
            .checked_mul(512)
            .ok_or_else(|| corrupt("embedded descriptor offset overflows"))?;
        let mut buf = vec![0u8; bytes as usize];
        read_exact_at(&self.file, &self.path, &mut buf, pos)?;
        Ok(Some(buf))
    }

    fn grain_table(&self, gd_index: u64) -> Result<Option<Arc<[u32]>>, ImageError> {
        let gt_sector = match self.gd.get(gd_index as usize) {
            Some(0) | None => return Ok(None),
            Some(&s) => u64::from(s),
        };
        if let Some(t) = lock(&self.gt_cache).get(gd_index) {
            return Ok(Some(t));
        }
        let gt_bytes = u64::from(self.header.gtes_per_gt) * 4;
        let pos = gt_sector * 512;
        if pos + gt_bytes > self.file_len {
            return Err(corrupt(format!(
                "{}: grain table {gd_index} at sector {gt_sector} is outside the file",
                self.path.display()
            )));
        }
        let mut raw = vec![0u8; gt_bytes as usize];
        read_exact_at(&self.file, &self.path, &mut raw, pos)?;
        let table: Arc<[u32]> = raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
        lock(&self.gt_cache).insert(gd_index, table.clone());
        Ok(Some(table))
    }

    /// Looks up grain number `grain` (guest offset / grain size within this extent).
    pub fn lookup(&self, grain: u64) -> Result<Grain, ImageError> {
        let per_gt = u64::from(self.header.gtes_per_gt);
        let Some(table) = self.grain_table(grain / per_gt)? else {
            return Ok(Grain::Unallocated);
        };
        let gte = table[(grain % per_gt) as usize];
        Ok(match gte {
            0 => Grain::Unallocated,
            // Version 2 announces zero grains with flag bit 2, but GTE 1 can only mean "zero":
            // sector 1 always holds header or descriptor, never grain data.
            GTE_ZERO => Grain::Zero,
            s => {
                let pos = u64::from(s) * 512;
                if pos >= self.file_len {
                    return Err(corrupt(format!(
                        "{}: grain {grain} at sector {s} is past the end of the file",
                        self.path.display()
                    )));
                }
                if self.header.compressed() {
                    Grain::Compressed(pos)
                } else {
                    Grain::Data(pos)
                }
            }
        })
    }

    /// Returns the decompressed grain stored at `pos` (always exactly one grain long; a short
    /// stream — the last grain of a disk — is zero-padded).
    pub fn compressed_grain(&self, pos: u64) -> Result<Arc<[u8]>, ImageError> {
        if let Some((_, g)) = lock(&self.grain_cache).iter().find(|(p, _)| *p == pos) {
            return Ok(g.clone());
        }
        let mut out = vec![0u8; self.header.grain_bytes() as usize];
        self.inflate_into(pos, &mut out)?;
        let grain: Arc<[u8]> = out.into();
        let mut cache = lock(&self.grain_cache);
        cache.push_back((pos, grain.clone()));
        if cache.len() > GRAIN_CACHE_ENTRIES {
            cache.pop_front();
        }
        Ok(grain)
    }

    /// Inflates the compressed grain stored at `pos` into `out` (exactly one grain long),
    /// zero-filling what a short stream (the last grain of a disk) leaves. Used directly for
    /// whole-grain reads, which then need neither the cache nor a copy.
    pub fn inflate_into(&self, pos: u64, out: &mut [u8]) -> Result<(), ImageError> {
        let grain_bytes = self.header.grain_bytes() as usize;
        debug_assert_eq!(out.len(), grain_bytes);
        // zlib never expands data by more than a few bytes per 16 KiB block.
        let max_stream = grain_bytes + grain_bytes / 8 + 1024;
        let (data_pos, len) = if self.header.markers() {
            let mut marker = [0u8; 12];
            read_exact_at(&self.file, &self.path, &mut marker, pos)?;
            let size = le32(&marker, 8) as usize;
            if size == 0 || size > max_stream {
                return Err(corrupt(format!(
                    "{}: compressed grain at offset {pos} has size {size}",
                    self.path.display()
                )));
            }
            (pos + 12, size)
        } else {
            let available = self.file_len.saturating_sub(pos).min(max_stream as u64) as usize;
            (pos, available)
        };
        let mut compressed = vec![0u8; len];
        read_exact_at(&self.file, &self.path, &mut compressed, data_pos)?;
        let produced = inflate_grain(&compressed, out).map_err(|d| {
            corrupt(format!(
                "{}: compressed grain at offset {pos}: {d}",
                self.path.display()
            ))
        })?;
        out[produced..].fill(0);
        Ok(())
    }
}

/// Inflates a zlib (or, failing the header check, raw deflate) stream into `out`, which must
/// be large enough for the whole grain; anything beyond `out` is corruption.
fn inflate_grain(input: &[u8], out: &mut [u8]) -> Result<usize, String> {
    let zlib = input.len() >= 2
        && input[0] & 0x0f == 8
        && u16::from_be_bytes([input[0], input[1]]).is_multiple_of(31);
    let mut d = flate2::Decompress::new(zlib);
    let status = d
        .decompress(input, out, flate2::FlushDecompress::Finish)
        .map_err(|e| format!("inflate failed: {e}"))?;
    let produced = d.total_out() as usize;
    match status {
        flate2::Status::StreamEnd => Ok(produced),
        // Output full before the stream ended: the grain decompresses to more than a grain.
        _ if produced == out.len() => Err("decompresses to more than one grain".into()),
        _ => Err("compressed stream is truncated".into()),
    }
}

/// Reads the footer (a header copy in the second-to-last sector) of a stream-optimized file.
fn read_footer(
    file: &File,
    path: &Path,
    file_len: u64,
    header: &SparseHeader,
) -> Result<SparseHeader, ImageError> {
    if file_len < 1536 {
        return Err(corrupt(format!(
            "{}: too short for a stream-optimized footer",
            path.display()
        )));
    }
    let mut tail = [0u8; 1536];
    read_exact_at(file, path, &mut tail, file_len - 1536)?;
    let marker_type = le32(&tail, 12);
    if le32(&tail, 8) != 0 || marker_type != MARKER_FOOTER {
        return Err(corrupt(format!(
            "{}: header says the grain directory is at the end, but there is no footer marker",
            path.display()
        )));
    }
    let mut footer_sector = [0u8; 512];
    footer_sector.copy_from_slice(&tail[512..1024]);
    let footer = SparseHeader::parse(&footer_sector)?;
    if footer.gd_offset == GD_AT_END {
        return Err(corrupt(format!(
            "{}: footer does not locate the grain directory",
            path.display()
        )));
    }
    if footer.capacity != header.capacity || footer.grain_sectors != header.grain_sectors {
        return Err(corrupt(format!(
            "{}: footer disagrees with the header",
            path.display()
        )));
    }
    Ok(footer)
}

/// Locks a cache mutex; a poisoned cache is still structurally valid (entries are inserted
/// whole), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SparseHeader {
        SparseHeader {
            version: 3,
            flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: 2048,
            grain_sectors: 128,
            descriptor_offset: 1,
            descriptor_size: 20,
            gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: 128,
            unclean_shutdown: false,
            compress_algorithm: COMPRESS_DEFLATE,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        assert_eq!(SparseHeader::parse(&h.to_bytes()).unwrap(), h);
        assert_eq!(h.gd_entries(), 1);
        assert_eq!(h.gt_coverage(), 32 << 20);
    }

    #[test]
    fn header_rejects_bad_fields() {
        let mut b = sample().to_bytes();
        b[0] = b'X';
        assert!(SparseHeader::parse(&b).is_err());
        for (field, value) in [(20usize, 3u64), (20, 0), (20, 4096)] {
            let mut b = sample().to_bytes();
            b[field..field + 8].copy_from_slice(&value.to_le_bytes());
            assert!(SparseHeader::parse(&b).is_err(), "grain {value}");
        }
        let mut b = sample().to_bytes();
        b[44..48].copy_from_slice(&0u32.to_le_bytes());
        assert!(SparseHeader::parse(&b).is_err());
        let mut b = sample().to_bytes();
        b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(SparseHeader::parse(&b).is_err());
        let mut b = sample().to_bytes();
        b[75] = b'\n';
        assert!(
            SparseHeader::parse(&b).is_err(),
            "text-mode mangled newline bytes"
        );
        let mut b = sample().to_bytes();
        b[77] = 2;
        assert!(SparseHeader::parse(&b).is_err());
        let mut b = sample().to_bytes();
        b[4] = 9;
        assert!(SparseHeader::parse(&b).is_err());
    }

    #[test]
    fn inflate_checks_sizes() {
        use std::io::Write;
        let data = vec![7u8; 1024];
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&data).unwrap();
        let z = enc.finish().unwrap();
        let mut out = vec![0u8; 1024];
        assert_eq!(inflate_grain(&z, &mut out).unwrap(), 1024);
        assert_eq!(out, data);
        let mut small = vec![0u8; 512];
        assert!(inflate_grain(&z, &mut small).is_err());
        assert!(inflate_grain(&z[..z.len() / 2], &mut out).is_err());
        assert!(inflate_grain(b"\x78\x9cgarbage", &mut out).is_err());
    }
}
