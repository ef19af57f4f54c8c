//! VMDK writers: monolithicSparse and streamOptimized.
//!
//! Both write 64 KiB grains, 512-entry grain tables and an embedded descriptor at sector 1,
//! and never store all-zero grains (they read back as zeros because the image has no parent).
//!
//! monolithicSparse ([`SparseSink`]): header, descriptor, grain directory and *all* grain tables
//! are laid out at creation (the tables as a file hole); grains are appended in write order and
//! their GTEs updated through a bounded write-back cache of tables. Partial writes into an
//! allocated grain update it in place.
//!
//! streamOptimized ([`StreamSink`]), VMware's layout for OVF packages: every grain is deflated
//! (zlib) behind a 12-byte grain marker; grains are emitted in ascending guest order from a
//! bounded reorder buffer; each grain table follows its grains behind a GT marker once the
//! write frontier has passed it; the grain directory, the footer (header copy that locates the
//! GD — the header itself says `GD_AT_END`) and an end-of-stream marker close the file.
//! Invariants: memory is bounded by the reorder budget plus the tables of the grains still
//! pending; a write that lands behind the frontier is still correct (the grain is re-read,
//! merged and re-emitted, its table re-emitted at the end) — only its stream order suffers.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::descriptor::{self, RenderSpec};
use super::sparse::{
    self, corrupt, SparseHeader, COMPRESS_DEFLATE, COMPRESS_NONE, FLAG_COMPRESSED, FLAG_MARKERS,
    FLAG_NL_DETECT, GD_AT_END, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT,
};
use crate::device::{BlockSink, UnitEncoder};
use crate::error::ImageError;

/// Grain size of written images, in sectors (64 KiB).
pub const GRAIN_SECTORS: u64 = 128;
/// Grain table entries of written images.
pub const GTES_PER_GT: u32 = 512;
/// Sectors reserved for the embedded descriptor.
const DESCRIPTOR_SECTORS: u64 = 20;
/// Grain tables the sparse writer keeps in memory before writing them back.
const SPARSE_GT_CACHE: usize = 1024;
/// Bytes of grains the stream writer may hold for reordering.
const STREAM_REORDER_BUDGET: usize = 32 << 20;
/// Largest VMDK capacity: GTEs are 32-bit sector numbers, so data must stay under 2 TiB of
/// file; VMware caps hosted sparse disks at 2 TiB minus one grain.
pub const MAX_CAPACITY: u64 = (2 << 40) - GRAIN_SECTORS * 512;

const GRAIN_BYTES: u64 = GRAIN_SECTORS * 512;
const GT_BYTES: u64 = GTES_PER_GT as u64 * 4;
const GT_COVERAGE: u64 = GRAIN_BYTES * GTES_PER_GT as u64;

fn io_err(path: &Path, what: &str, e: std::io::Error) -> ImageError {
    ImageError::io(format!("{what} {}", path.display()), e)
}

fn sectors_for(bytes: u64) -> u64 {
    bytes.div_ceil(512)
}

fn check_capacity(virtual_size: u64) -> Result<u64, ImageError> {
    if virtual_size > MAX_CAPACITY {
        return Err(ImageError::InvalidArgument(format!(
            "VMDK sparse images hold at most {MAX_CAPACITY} bytes, {virtual_size} requested"
        )));
    }
    Ok(sectors_for(virtual_size))
}

/// Random-enough content ID for a new descriptor (time and pid; only uniqueness matters).
fn new_cid() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    let cid = (mixed ^ (mixed >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    // 0xffffffff means "no parent" in parentCID; avoid it as a CID.
    (cid as u32).min(u32::MAX - 1)
}

fn descriptor_block(path: &Path, create_type: &str, sectors: u64) -> Result<Vec<u8>, ImageError> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        ImageError::InvalidArgument(format!("{} has no UTF-8 file name", path.display()))
    })?;
    if name.contains('"') {
        return Err(ImageError::InvalidArgument(format!(
            "VMDK file name {name:?} contains a quote"
        )));
    }
    let text = descriptor::render(&RenderSpec {
        cid: new_cid(),
        create_type,
        extent_file: name,
        sectors,
        adapter_type: "lsilogic",
    });
    let mut block = text.into_bytes();
    if block.len() as u64 > DESCRIPTOR_SECTORS * 512 {
        return Err(ImageError::InvalidArgument(
            "VMDK file name too long for the descriptor".into(),
        ));
    }
    block.resize((DESCRIPTOR_SECTORS * 512) as usize, 0);
    Ok(block)
}

fn create_file(path: &Path) -> Result<File, ImageError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io_err(path, "creating", e))
}

fn check_write(buf: &[u8], offset: u64, capacity: u64) -> Result<(), ImageError> {
    match offset.checked_add(buf.len() as u64) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(ImageError::OutOfRange {
            offset,
            len: buf.len() as u64,
            size: capacity,
        }),
    }
}

fn is_zero(buf: &[u8]) -> bool {
    buf.iter().all(|&b| b == 0)
}

/// Layout of a freshly created monolithicSparse file (pure; all values in sectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseLayout {
    pub gd_entries: u64,
    pub gd_sector: u64,
    pub first_gt_sector: u64,
    /// First grain; also the header's `overHead`.
    pub overhead: u64,
}

pub fn sparse_layout(capacity_sectors: u64) -> SparseLayout {
    let gd_entries = (capacity_sectors * 512).div_ceil(GT_COVERAGE);
    let gd_sector = 1 + DESCRIPTOR_SECTORS;
    let first_gt_sector = gd_sector + sectors_for(gd_entries * 4);
    let end = first_gt_sector + gd_entries * (GT_BYTES / 512);
    let overhead = end.div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
    SparseLayout {
        gd_entries,
        gd_sector,
        first_gt_sector,
        overhead,
    }
}

/// Writer of monolithicSparse images.
#[derive(Debug)]
pub struct SparseSink {
    file: File,
    path: PathBuf,
    capacity: u64,
    layout: SparseLayout,
    /// Loaded grain tables, keyed by GD index, with their dirty flag.
    gts: HashMap<u64, (Vec<u32>, bool)>,
    /// Next free sector (grain-aligned) at the end of the file.
    next_free: u64,
}

impl SparseSink {
    pub fn create(path: &Path, virtual_size: u64) -> Result<Self, ImageError> {
        let sectors = check_capacity(virtual_size)?;
        let layout = sparse_layout(sectors);
        let header = SparseHeader {
            version: 1,
            flags: FLAG_NL_DETECT,
            capacity: sectors,
            grain_sectors: GRAIN_SECTORS,
            descriptor_offset: 1,
            descriptor_size: DESCRIPTOR_SECTORS,
            gtes_per_gt: GTES_PER_GT,
            rgd_offset: 0,
            gd_offset: layout.gd_sector,
            overhead: layout.overhead,
            unclean_shutdown: false,
            compress_algorithm: COMPRESS_NONE,
        };
        let file = create_file(path)?;
        let mut meta = header.to_bytes().to_vec();
        meta.extend_from_slice(&descriptor_block(path, "monolithicSparse", sectors)?);
        let gd: Vec<u8> = (0..layout.gd_entries)
            .flat_map(|i| {
                let gt = layout.first_gt_sector + i * (GT_BYTES / 512);
                // Fits: capacity is capped far below 2^32 sectors of metadata.
                (gt as u32).to_le_bytes()
            })
            .collect();
        meta.extend_from_slice(&gd);
        file.write_all_at(&meta, 0)
            .map_err(|e| io_err(path, "writing", e))?;
        file.set_len(layout.overhead * 512)
            .map_err(|e| io_err(path, "sizing", e))?;
        Ok(SparseSink {
            file,
            path: path.to_path_buf(),
            capacity: sectors * 512,
            layout,
            gts: HashMap::new(),
            next_free: layout.overhead,
        })
    }

    fn gt_pos(&self, index: u64) -> u64 {
        (self.layout.first_gt_sector + index * (GT_BYTES / 512)) * 512
    }

    fn table(&mut self, index: u64) -> Result<&mut (Vec<u32>, bool), ImageError> {
        if !self.gts.contains_key(&index) {
            if self.gts.len() >= SPARSE_GT_CACHE {
                self.flush_tables()?;
                self.gts.clear();
            }
            let mut raw = vec![0u8; GT_BYTES as usize];
            sparse::read_exact_at(&self.file, &self.path, &mut raw, self.gt_pos(index))?;
            let table = raw.chunks_exact(4).map(|c| sparse::le32(c, 0)).collect();
            self.gts.insert(index, (table, false));
        }
        self.gts
            .get_mut(&index)
            .ok_or_else(|| corrupt("grain table cache lost an entry"))
    }

    fn gte(&mut self, grain: u64) -> Result<u32, ImageError> {
        let per = u64::from(GTES_PER_GT);
        Ok(self.table(grain / per)?.0[(grain % per) as usize])
    }

    fn set_gte(&mut self, grain: u64, sector: u32) -> Result<(), ImageError> {
        let per = u64::from(GTES_PER_GT);
        let t = self.table(grain / per)?;
        t.0[(grain % per) as usize] = sector;
        t.1 = true;
        Ok(())
    }

    fn flush_tables(&mut self) -> Result<(), ImageError> {
        let mut dirty: Vec<u64> = self
            .gts
            .iter()
            .filter(|(_, t)| t.1)
            .map(|(&i, _)| i)
            .collect();
        dirty.sort_unstable();
        for index in dirty {
            let pos = self.gt_pos(index);
            if let Some(t) = self.gts.get_mut(&index) {
                let raw: Vec<u8> = t.0.iter().flat_map(|e| e.to_le_bytes()).collect();
                self.file
                    .write_all_at(&raw, pos)
                    .map_err(|e| io_err(&self.path, "writing", e))?;
                t.1 = false;
            }
        }
        Ok(())
    }

    fn allocate(&mut self) -> Result<u32, ImageError> {
        let sector = u32::try_from(self.next_free)
            .map_err(|_| corrupt("sparse file grew past the 2 TiB the format can address"))?;
        self.next_free += GRAIN_SECTORS;
        Ok(sector)
    }
}

impl BlockSink for SparseSink {
    fn unit_size(&self) -> u64 {
        GRAIN_BYTES
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        check_write(buf, offset, self.capacity)?;
        // A run of bytes going to consecutive file positions, written with one pwrite.
        let mut run: Option<(u64, usize, usize)> = None;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let grain = pos / GRAIN_BYTES;
            let in_grain = pos % GRAIN_BYTES;
            let n = ((GRAIN_BYTES - in_grain) as usize).min(buf.len() - done);
            let piece = &buf[done..done + n];
            let gte = self.gte(grain)?;
            let target = if gte != 0 {
                Some(u64::from(gte) * 512 + in_grain)
            } else if is_zero(piece) {
                None
            } else if n as u64 == GRAIN_BYTES {
                let sector = self.allocate()?;
                self.set_gte(grain, sector)?;
                Some(u64::from(sector) * 512)
            } else {
                // Partial first write into a new grain: write the whole grain, zero-padded.
                let sector = self.allocate()?;
                let mut whole = vec![0u8; GRAIN_BYTES as usize];
                whole[in_grain as usize..in_grain as usize + n].copy_from_slice(piece);
                let at = u64::from(sector) * 512;
                self.file
                    .write_all_at(&whole, at)
                    .map_err(|e| io_err(&self.path, "writing", e))?;
                self.set_gte(grain, sector)?;
                None
            };
            match (target, run) {
                (Some(t), Some((start, from, len)))
                    if start + len as u64 == t && from + len == done =>
                {
                    run = Some((start, from, len + n));
                }
                (t, r) => {
                    if let Some((start, from, len)) = r {
                        self.file
                            .write_all_at(&buf[from..from + len], start)
                            .map_err(|e| io_err(&self.path, "writing", e))?;
                    }
                    run = t.map(|t| (t, done, n));
                }
            }
            done += n;
        }
        if let Some((start, from, len)) = run {
            self.file
                .write_all_at(&buf[from..from + len], start)
                .map_err(|e| io_err(&self.path, "writing", e))?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), ImageError> {
        self.flush_tables()?;
        let end = self.next_free * 512;
        self.file
            .set_len(end)
            .map_err(|e| io_err(&self.path, "sizing", e))?;
        self.file
            .sync_all()
            .map_err(|e| io_err(&self.path, "syncing", e))
    }
}

/// One grain waiting in the reorder buffer.
#[derive(Debug)]
struct PendingGrain {
    data: Box<[u8]>,
}

/// Writer of streamOptimized images.
#[derive(Debug)]
pub struct StreamSink {
    file: File,
    path: PathBuf,
    header: SparseHeader,
    capacity: u64,
    gd_entries: u64,
    /// GD: sector of each emitted grain table (0 = not yet emitted).
    gd: Vec<u32>,
    /// Grain tables not (or no longer) on disk, keyed by GD index.
    gts: BTreeMap<u64, Vec<u32>>,
    /// Every table with a smaller index has been emitted once.
    gts_emitted_below: u64,
    pending: BTreeMap<u64, PendingGrain>,
    /// Next sector to append at.
    next_sector: u64,
    compressor: flate2::Compress,
    scratch: Vec<u8>,
}

impl StreamSink {
    pub fn create(path: &Path, virtual_size: u64) -> Result<Self, ImageError> {
        let sectors = check_capacity(virtual_size)?;
        let header = SparseHeader {
            version: 3,
            flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: sectors,
            grain_sectors: GRAIN_SECTORS,
            descriptor_offset: 1,
            descriptor_size: DESCRIPTOR_SECTORS,
            gtes_per_gt: GTES_PER_GT,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: GRAIN_SECTORS,
            unclean_shutdown: false,
            compress_algorithm: COMPRESS_DEFLATE,
        };
        let file = create_file(path)?;
        let mut meta = header.to_bytes().to_vec();
        meta.extend_from_slice(&descriptor_block(path, "streamOptimized", sectors)?);
        meta.resize((GRAIN_SECTORS * 512) as usize, 0);
        file.write_all_at(&meta, 0)
            .map_err(|e| io_err(path, "writing", e))?;
        let gd_entries = header.gd_entries();
        Ok(StreamSink {
            file,
            path: path.to_path_buf(),
            header,
            capacity: sectors * 512,
            gd_entries,
            gd: vec![0; gd_entries as usize],
            gts: BTreeMap::new(),
            gts_emitted_below: 0,
            pending: BTreeMap::new(),
            next_sector: GRAIN_SECTORS,
            compressor: flate2::Compress::new(flate2::Compression::fast(), true),
            scratch: Vec::new(),
        })
    }

    fn append(&mut self, bytes: &[u8]) -> Result<u64, ImageError> {
        let sector = self.next_sector;
        self.file
            .write_all_at(bytes, sector * 512)
            .map_err(|e| io_err(&self.path, "writing", e))?;
        self.next_sector += sectors_for(bytes.len() as u64);
        Ok(sector)
    }

    /// A metadata marker sector: `val` sectors of metadata of `kind` follow.
    fn marker(val: u64, kind: u32) -> [u8; 512] {
        let mut m = [0u8; 512];
        m[0..8].copy_from_slice(&val.to_le_bytes());
        m[12..16].copy_from_slice(&kind.to_le_bytes());
        m
    }

    /// The table for `index`, read back from the file if it was already emitted.
    fn table(&mut self, index: u64) -> Result<&mut Vec<u32>, ImageError> {
        if !self.gts.contains_key(&index) {
            let sector = self.gd[index as usize];
            let table = if sector == 0 {
                vec![0u32; GTES_PER_GT as usize]
            } else {
                let mut raw = vec![0u8; GT_BYTES as usize];
                sparse::read_exact_at(&self.file, &self.path, &mut raw, u64::from(sector) * 512)?;
                raw.chunks_exact(4).map(|c| sparse::le32(c, 0)).collect()
            };
            self.gts.insert(index, table);
        }
        self.gts
            .get_mut(&index)
            .ok_or_else(|| corrupt("grain table cache lost an entry"))
    }

    /// Content of an emitted grain whose GTE is `gte` (zeros if it was never stored).
    fn emitted_content(&mut self, grain: u64, gte: u32) -> Result<Box<[u8]>, ImageError> {
        debug_assert!(grain * GRAIN_BYTES < self.capacity);
        let mut data = vec![0u8; GRAIN_BYTES as usize].into_boxed_slice();
        if gte > sparse::GTE_ZERO {
            let pos = u64::from(gte) * 512;
            let mut marker = [0u8; 12];
            sparse::read_exact_at(&self.file, &self.path, &mut marker, pos)?;
            let size = sparse::le32(&marker, 8) as usize;
            let mut z = vec![0u8; size];
            sparse::read_exact_at(&self.file, &self.path, &mut z, pos + 12)?;
            let mut d = flate2::Decompress::new(true);
            d.decompress(&z, &mut data, flate2::FlushDecompress::Finish)
                .map_err(|e| corrupt(format!("re-reading an emitted grain: {e}")))?;
        }
        Ok(data)
    }

    fn emit_grain(&mut self, grain: u64, data: &[u8]) -> Result<(), ImageError> {
        if is_zero(data) {
            return self.set_gte(grain, 0);
        }
        let mut z = std::mem::take(&mut self.scratch);
        deflate_grain(&mut self.compressor, data, &mut z).map_err(|e| {
            ImageError::io(
                format!("compressing a grain for {}", self.path.display()),
                e,
            )
        })?;
        let r = self.append_compressed(grain, &z);
        self.scratch = z;
        r
    }

    /// Appends a grain marker and the zlib stream `z` for `grain`, and records its GTE.
    fn append_compressed(&mut self, grain: u64, z: &[u8]) -> Result<(), ImageError> {
        let mut out = Vec::with_capacity((12 + z.len()).div_ceil(512) * 512);
        out.extend_from_slice(&(grain * GRAIN_SECTORS).to_le_bytes());
        out.extend_from_slice(&(z.len() as u32).to_le_bytes());
        out.extend_from_slice(z);
        out.resize(out.len().div_ceil(512) * 512, 0);
        let at = self.append(&out)?;
        let sector = u32::try_from(at)
            .map_err(|_| corrupt("stream grew past the 2 TiB the format can address"))?;
        self.set_gte(grain, sector)
    }

    fn set_gte(&mut self, grain: u64, sector: u32) -> Result<(), ImageError> {
        let per = u64::from(GTES_PER_GT);
        let gt = grain / per;
        let slot = (grain % per) as usize;
        // Skip creating a table just to store "unallocated" in it.
        if sector != 0 || self.gts.contains_key(&gt) || self.gd[gt as usize] != 0 {
            self.table(gt)?[slot] = sector;
        }
        Ok(())
    }

    fn emit_table(&mut self, index: u64) -> Result<(), ImageError> {
        let table = self
            .gts
            .remove(&index)
            .unwrap_or_else(|| vec![0u32; GTES_PER_GT as usize]);
        let mut out = Self::marker(GT_BYTES / 512, MARKER_GT).to_vec();
        out.extend(table.iter().flat_map(|e| e.to_le_bytes()));
        let marker_sector = self.append(&out)?;
        self.gd[index as usize] = u32::try_from(marker_sector + 1)
            .map_err(|_| corrupt("stream grew past the 2 TiB the format can address"))?;
        Ok(())
    }

    /// Emits every table below `limit` that has not been emitted yet.
    fn emit_tables_below(&mut self, limit: u64) -> Result<(), ImageError> {
        while self.gts_emitted_below < limit.min(self.gd_entries) {
            self.emit_table(self.gts_emitted_below)?;
            self.gts_emitted_below += 1;
        }
        Ok(())
    }

    /// Emits the lowest pending grains until at most `keep_bytes` remain buffered, then the
    /// tables the frontier has passed.
    fn drain(&mut self, keep_bytes: usize) -> Result<(), ImageError> {
        let per = u64::from(GTES_PER_GT);
        while self.pending.len() * GRAIN_BYTES as usize > keep_bytes {
            let Some((grain, pg)) = self.pending.pop_first() else {
                break;
            };
            self.emit_grain(grain, &pg.data)?;
            let frontier_gt = match self.pending.first_key_value() {
                Some((&next, _)) => next / per,
                None => grain / per,
            };
            self.emit_tables_below(frontier_gt)?;
        }
        Ok(())
    }
}

impl BlockSink for StreamSink {
    fn unit_size(&self) -> u64 {
        GRAIN_BYTES
    }

    fn unit_encoder(&self) -> Option<Arc<dyn UnitEncoder>> {
        Some(Arc::new(GrainEncoder))
    }

    fn write_encoded(&mut self, offset: u64, encoded: Vec<u8>) -> Result<(), ImageError> {
        if !offset.is_multiple_of(GRAIN_BYTES) || offset >= self.capacity {
            return Err(ImageError::InvalidArgument(format!(
                "encoded grain at offset {offset}"
            )));
        }
        let per = u64::from(GTES_PER_GT);
        let grain = offset / GRAIN_BYTES;
        let behind = grain / per < self.gts_emitted_below
            || self.pending.contains_key(&grain)
            || self
                .gts
                .get(&(grain / per))
                .is_some_and(|t| t[(grain % per) as usize] != 0);
        if behind {
            // Rare: merge through the plain path, which keeps the stream consistent.
            let mut data = vec![0u8; GRAIN_BYTES as usize];
            flate2::Decompress::new(true)
                .decompress(&encoded, &mut data, flate2::FlushDecompress::Finish)
                .map_err(|e| {
                    ImageError::InvalidArgument(format!("encoded grain does not inflate: {e}"))
                })?;
            let len = (self.capacity - offset).min(GRAIN_BYTES) as usize;
            return self.write_at(&data[..len], offset);
        }
        // Keep ascending order: buffered grains before this one go first.
        while self
            .pending
            .first_key_value()
            .is_some_and(|(&g, _)| g < grain)
        {
            if let Some((g, pg)) = self.pending.pop_first() {
                self.emit_grain(g, &pg.data)?;
            }
        }
        self.append_compressed(grain, &encoded)?;
        let frontier = self
            .pending
            .first_key_value()
            .map_or(grain, |(&g, _)| g.min(grain));
        self.emit_tables_below(frontier / per)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        check_write(buf, offset, self.capacity)?;
        let per = u64::from(GTES_PER_GT);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let grain = pos / GRAIN_BYTES;
            let in_grain = (pos % GRAIN_BYTES) as usize;
            let n = (GRAIN_BYTES as usize - in_grain).min(buf.len() - done);
            let piece = &buf[done..done + n];
            if !self.pending.contains_key(&grain) {
                let behind = grain / per < self.gts_emitted_below
                    || self
                        .gts
                        .get(&(grain / per))
                        .is_some_and(|t| t[(grain % per) as usize] != 0);
                let data = if behind {
                    // Behind the frontier: merge with what the file already holds.
                    let gte = self.table(grain / per)?[(grain % per) as usize];
                    if gte == 0 && is_zero(piece) {
                        done += n;
                        continue;
                    }
                    self.emitted_content(grain, gte)?
                } else if is_zero(piece) {
                    // Nothing emitted yet for this grain: zeros need no storage.
                    done += n;
                    continue;
                } else {
                    vec![0u8; GRAIN_BYTES as usize].into_boxed_slice()
                };
                self.pending.insert(grain, PendingGrain { data });
            }
            if let Some(pg) = self.pending.get_mut(&grain) {
                pg.data[in_grain..in_grain + n].copy_from_slice(piece);
            }
            done += n;
        }
        if self.pending.len() * GRAIN_BYTES as usize > STREAM_REORDER_BUDGET {
            self.drain(STREAM_REORDER_BUDGET / 2)?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), ImageError> {
        self.drain(0)?;
        self.emit_tables_below(self.gd_entries)?;
        // Tables re-opened by writes behind the frontier go out again, in order.
        let reopened: Vec<u64> = self.gts.keys().copied().collect();
        for index in reopened {
            self.emit_table(index)?;
        }
        let gd_bytes: Vec<u8> = self.gd.iter().flat_map(|e| e.to_le_bytes()).collect();
        let mut out = Self::marker(sectors_for(gd_bytes.len() as u64), MARKER_GD).to_vec();
        out.extend_from_slice(&gd_bytes);
        let gd_marker = self.append(&out)?;
        let mut footer = self.header;
        footer.gd_offset = gd_marker + 1;
        let mut tail = Self::marker(1, MARKER_FOOTER).to_vec();
        tail.extend_from_slice(&footer.to_bytes());
        tail.extend_from_slice(&Self::marker(0, MARKER_EOS));
        self.append(&tail)?;
        self.file
            .sync_all()
            .map_err(|e| io_err(&self.path, "syncing", e))
    }
}

/// Compresses one whole grain into `out` (a zlib stream; cleared first). A short `data` (the
/// last unit of a disk) is zero-padded to a whole grain, so every reader inflates exactly one
/// grain.
fn deflate_grain(c: &mut flate2::Compress, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let padded;
    let data = if data.len() < GRAIN_BYTES as usize {
        let mut v = data.to_vec();
        v.resize(GRAIN_BYTES as usize, 0);
        padded = v;
        &padded[..]
    } else {
        data
    };
    out.clear();
    out.reserve(data.len() + data.len() / 8 + 64);
    c.reset();
    loop {
        let status = c
            .compress_vec(
                &data[c.total_in() as usize..],
                out,
                flate2::FlushCompress::Finish,
            )
            .map_err(std::io::Error::other)?;
        if status == flate2::Status::StreamEnd {
            return Ok(());
        }
        out.reserve(out.capacity().max(4096));
    }
}

/// Compresses grains on the converter's worker threads (see [`BlockSink::unit_encoder`]).
#[derive(Debug)]
struct GrainEncoder;

impl UnitEncoder for GrainEncoder {
    fn encode(&self, unit: &[u8]) -> Result<Option<Vec<u8>>, ImageError> {
        let mut c = flate2::Compress::new(flate2::Compression::fast(), true);
        let mut out = Vec::new();
        deflate_grain(&mut c, unit, &mut out)
            .map_err(|e| ImageError::io("compressing a VMDK grain", e))?;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_layout_golden() {
        // 1 GiB: 32 grain tables, GD of 128 bytes (1 sector) after header + descriptor.
        let l = sparse_layout(2 * 1024 * 1024);
        assert_eq!(
            l,
            SparseLayout {
                gd_entries: 32,
                gd_sector: 21,
                first_gt_sector: 22,
                overhead: 256
            }
        );
        let empty = sparse_layout(0);
        assert_eq!(empty.gd_entries, 0);
        assert_eq!(empty.overhead, 128);
    }

    #[test]
    fn capacity_is_capped() {
        assert!(check_capacity(MAX_CAPACITY + 1).is_err());
        assert_eq!(check_capacity(1000).unwrap(), 2);
    }

    #[test]
    fn markers_have_the_documented_layout() {
        let m = StreamSink::marker(4, MARKER_GT);
        assert_eq!(sparse::le64(&m, 0), 4);
        assert_eq!(sparse::le32(&m, 8), 0);
        assert_eq!(sparse::le32(&m, 12), MARKER_GT);
    }
}
