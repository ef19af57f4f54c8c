//! Write side of qcow2: a sequential-friendly sink that builds a new image.
//!
//! Layout: cluster 0 holds the header; data clusters (and L2 tables evicted from memory) are
//! appended in the order they are written; at [`BlockSink::finish`] the remaining L2 tables,
//! the L1 table, the refcount blocks and the refcount table are appended, then the header is
//! written. Until `finish` the file is not a valid image (the caller writes to a temp file).
//!
//! Invariants:
//! - host clusters are only ever appended (`next_free` grows), so every cluster below
//!   `next_free` is referenced exactly once, except clusters holding compressed data, whose
//!   reference counts are tracked explicitly in `refcount_overrides` (and clusters released
//!   by overwrites, recorded there with count 0);
//! - at most `l2_capacity` L2 tables are held in memory; others are on disk and are reloaded
//!   if written again, so memory stays bounded for any virtual size;
//! - the refcount structures written at `finish` cover every cluster of the file, including
//!   themselves, so `qemu-img check` finds neither leaks nor corruptions.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::compress;
use super::header::{self, CompressionType, Header};
use super::reader::{pread_fill, OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};
use crate::device::{BlockSink, BlockSource, Format, Placement, UnitEncoder};
use crate::dio::{DataWriter, DIO_ALIGN};
use crate::error::ImageError;

/// Bytes of L2 tables a sink keeps in memory before writing the oldest out.
const L2_MEMORY_BYTES: u64 = 16 << 20;

/// How much of the image `create` allocates up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preallocation {
    /// Nothing beyond the metadata an empty image needs.
    #[default]
    Off,
    /// L2 tables and host clusters for the whole disk (file stays sparse).
    Metadata,
}

/// Parameters of a new qcow2 image.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// 2 (qemu "compat=0.10") or 3 ("compat=1.1").
    pub version: u32,
    /// log2 of the cluster size, 9..=21.
    pub cluster_bits: u32,
    /// log2 of the refcount width in bits, 0..=6 (4 = 16-bit, the default).
    pub refcount_order: u32,
    /// Backing file reference stored verbatim in the header.
    pub backing_file: Option<String>,
    pub backing_format: Option<Format>,
    /// Codec for compressed clusters (zstd needs version 3).
    pub compression_type: CompressionType,
    /// Whether converters should compress clusters (see [`BlockSink::unit_encoder`]).
    pub compress: bool,
    /// Sets the lazy-refcounts compatible feature (version 3 only).
    pub lazy_refcounts: bool,
    pub preallocation: Preallocation,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            version: 3,
            cluster_bits: 16,
            refcount_order: 4,
            backing_file: None,
            backing_format: None,
            compression_type: CompressionType::Zlib,
            compress: false,
            lazy_refcounts: false,
            preallocation: Preallocation::Off,
        }
    }
}

impl CreateOptions {
    fn validate(&self) -> Result<(), ImageError> {
        let bad = |m: &str| Err(ImageError::InvalidArgument(m.to_string()));
        if !(9..=21).contains(&self.cluster_bits) {
            return bad("qcow2 cluster size must be a power of two from 512 B to 2 MiB");
        }
        if self.version != 2 && self.version != 3 {
            return bad("qcow2 version must be 2 or 3");
        }
        if self.refcount_order > 6 {
            return bad("qcow2 refcount width must be 1 to 64 bits");
        }
        if self.version == 2 {
            if self.refcount_order != 4 {
                return bad("qcow2 version 2 needs 16-bit refcounts");
            }
            if self.lazy_refcounts {
                return bad("lazy refcounts need qcow2 version 3");
            }
            if self.compression_type != CompressionType::Zlib {
                return bad("zstd compression needs qcow2 version 3");
            }
        }
        Ok(())
    }
}

/// Compresses whole clusters for a [`Qcow2Sink`] on converter threads.
#[derive(Debug)]
pub struct Qcow2Encoder {
    kind: CompressionType,
    cluster_size: usize,
}

impl UnitEncoder for Qcow2Encoder {
    fn encode(&self, unit: &[u8]) -> Result<Option<Vec<u8>>, ImageError> {
        if unit.len() == self.cluster_size {
            return compress::compress(self.kind, unit);
        }
        // Last cluster of a disk whose size is not cluster-aligned: compress it zero-padded.
        let mut padded = vec![0u8; self.cluster_size];
        padded[..unit.len().min(self.cluster_size)]
            .copy_from_slice(&unit[..unit.len().min(self.cluster_size)]);
        compress::compress(self.kind, &padded)
    }
}

#[derive(Debug)]
struct L2Slot {
    entries: Vec<u64>,
    dirty: bool,
}

/// A qcow2 image being written.
#[derive(Debug)]
pub struct Qcow2Sink {
    path: PathBuf,
    file: File,
    opts: CreateOptions,
    size: u64,
    cluster_bits: u32,
    /// Byte offset of the first never-allocated host cluster.
    next_free: u64,
    /// Host offsets of L2 tables on disk (0 = not on disk yet).
    l1: Vec<u64>,
    l2_tables: BTreeMap<u64, L2Slot>,
    l2_capacity: usize,
    /// Reference counts of clusters that do not hold exactly one reference.
    refcount_overrides: BTreeMap<u64, u64>,
    /// Where the next compressed stream may start (inside the last allocated cluster).
    compressed_tail: Option<u64>,
    /// Read for partial-cluster writes over unallocated ranges.
    backing: Option<Box<dyn BlockSource>>,
    /// Bulk data clusters go through here (optionally bypassing the page cache).
    data: DataWriter,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> ImageError {
    ImageError::io(format!("{what} {}", path.display()), e)
}

impl Qcow2Sink {
    /// Creates (truncating) `path` for an image of `size` guest bytes (rounded up to 512). `backing` is the opened
    /// backing image when `opts.backing_file` is set (used to fill partially written clusters).
    pub fn create(
        path: &Path,
        size: u64,
        opts: CreateOptions,
        backing: Option<Box<dyn BlockSource>>,
    ) -> Result<Qcow2Sink, ImageError> {
        opts.validate()?;
        // qemu addresses qcow2 disks in 512-byte sectors and ignores a partial last sector,
        // so the virtual size is rounded up to keep every written byte visible to it.
        let size = size.checked_next_multiple_of(512).ok_or_else(|| {
            ImageError::InvalidArgument(format!("virtual size {size} is too large"))
        })?;
        let cluster_bits = opts.cluster_bits;
        let l1_entries = header::l1_entries_for(size, cluster_bits);
        if l1_entries > u64::from(u32::MAX) / 8 {
            return Err(ImageError::InvalidArgument(format!(
                "virtual size {size} needs an L1 table too large for cluster size {}",
                1u64 << cluster_bits
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io_err(path, "creating", e))?;
        let cs = 1u64 << cluster_bits;
        let mut sink = Qcow2Sink {
            path: path.to_path_buf(),
            file,
            size,
            cluster_bits,
            next_free: cs, // cluster 0 is the header
            l1: vec![0; l1_entries as usize],
            l2_tables: BTreeMap::new(),
            l2_capacity: (L2_MEMORY_BYTES >> cluster_bits).max(2) as usize,
            refcount_overrides: BTreeMap::new(),
            compressed_tail: None,
            backing,
            data: DataWriter::buffered(path),
            opts,
        };
        if sink.opts.preallocation == Preallocation::Metadata {
            sink.preallocate_metadata()?;
        }
        Ok(sink)
    }

    fn cs(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Writes whole data clusters with `O_DIRECT` where the filesystem allows it (see
    /// [`crate::dio`]). Returns whether direct I/O is in use.
    pub fn enable_direct_io(&mut self) -> bool {
        self.data.enable_direct()
    }

    fn per_l2(&self) -> u64 {
        self.cs() / 8
    }

    fn alloc(&mut self, clusters: u64) -> u64 {
        let off = self.next_free;
        self.next_free += clusters * self.cs();
        self.compressed_tail = None;
        off
    }

    fn pwrite(&self, buf: &[u8], off: u64) -> Result<(), ImageError> {
        self.file
            .write_all_at(buf, off)
            .map_err(|e| ImageError::io(format!("writing {} at {off}", self.path.display()), e))
    }

    /// Allocates an L2 table and host clusters for every guest cluster; data stays a hole.
    fn preallocate_metadata(&mut self) -> Result<(), ImageError> {
        let cs = self.cs();
        let clusters = self.size.div_ceil(cs);
        let per_l2 = self.per_l2();
        for l1_index in 0..self.l1.len() as u64 {
            let first = l1_index * per_l2;
            let n = per_l2.min(clusters - first);
            let data = self.alloc(n);
            let mut entries = vec![0u64; per_l2 as usize];
            for (i, e) in entries.iter_mut().take(n as usize).enumerate() {
                *e = (data + i as u64 * cs) | OFLAG_COPIED;
            }
            self.l2_tables.insert(
                l1_index,
                L2Slot {
                    entries,
                    dirty: true,
                },
            );
            self.flush_l2(l1_index)?;
        }
        Ok(())
    }

    /// Makes the L2 table for `l1_index` resident and returns it.
    fn l2_slot(&mut self, l1_index: u64) -> Result<&mut L2Slot, ImageError> {
        if !self.l2_tables.contains_key(&l1_index) {
            while self.l2_tables.len() >= self.l2_capacity {
                // Converters write in order: the lowest table is the one done with.
                let Some((&victim, _)) = self.l2_tables.iter().next() else {
                    break;
                };
                self.flush_l2(victim)?;
            }
            let per_l2 = self.per_l2() as usize;
            let on_disk = self.l1[l1_index as usize];
            let entries = if on_disk == 0 {
                vec![0u64; per_l2]
            } else {
                let mut raw = vec![0u8; per_l2 * 8];
                pread_fill(&self.file, &mut raw, on_disk, &self.path)?;
                raw.chunks_exact(8)
                    .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect()
            };
            self.l2_tables.insert(
                l1_index,
                L2Slot {
                    entries,
                    dirty: false,
                },
            );
        }
        self.l2_tables
            .get_mut(&l1_index)
            .ok_or_else(|| ImageError::InvalidArgument("L2 table vanished".into()))
    }

    /// Writes the table out (allocating its cluster on first flush) and drops it from memory.
    fn flush_l2(&mut self, l1_index: u64) -> Result<(), ImageError> {
        let Some(slot) = self.l2_tables.remove(&l1_index) else {
            return Ok(());
        };
        if !slot.dirty {
            return Ok(());
        }
        let mut off = self.l1[l1_index as usize];
        if off == 0 {
            off = self.alloc(1);
            self.l1[l1_index as usize] = off;
        }
        let bytes: Vec<u8> = slot.entries.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.pwrite(&bytes, off)
    }

    fn entry(&mut self, cluster: u64) -> Result<u64, ImageError> {
        let per_l2 = self.per_l2();
        Ok(self.l2_slot(cluster / per_l2)?.entries[(cluster % per_l2) as usize])
    }

    fn set_entry(&mut self, cluster: u64, value: u64) -> Result<(), ImageError> {
        let per_l2 = self.per_l2();
        let slot = self.l2_slot(cluster / per_l2)?;
        slot.entries[(cluster % per_l2) as usize] = value;
        slot.dirty = true;
        Ok(())
    }

    fn compressed_span(&self, entry: u64) -> (u64, u64) {
        let x = 62 - (self.cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = (entry >> x) & ((1u64 << (self.cluster_bits - 8)) - 1);
        (host, (sectors + 1) * 512 - (host & 511))
    }

    /// Drops the reference an L2 entry held before it is replaced.
    fn release(&mut self, entry: u64) {
        let cs = self.cs();
        if entry & OFLAG_COMPRESSED != 0 {
            let (host, len) = self.compressed_span(entry);
            for c in host / cs..=(host + len - 1) / cs {
                if let Some(n) = self.refcount_overrides.get_mut(&c) {
                    *n = n.saturating_sub(1);
                }
            }
        } else if entry & OFFSET_MASK != 0 {
            self.refcount_overrides
                .insert((entry & OFFSET_MASK) / cs, 0);
        }
    }

    /// Current guest content of a cluster this sink has not stored as plain data.
    fn old_content(&mut self, cluster: u64, entry: u64, out: &mut [u8]) -> Result<(), ImageError> {
        let cs = self.cs();
        if entry & OFLAG_COMPRESSED != 0 {
            let (host, len) = self.compressed_span(entry);
            let mut input = vec![0u8; len as usize];
            pread_fill(&self.file, &mut input, host, &self.path)?;
            let mut full = vec![0u8; cs as usize];
            compress::decompress(self.opts.compression_type, &input, &mut full)?;
            out.copy_from_slice(&full[..out.len()]);
        } else if entry & OFLAG_ZERO != 0 || self.backing.is_none() {
            out.fill(0);
        } else if let Some(b) = &self.backing {
            let start = cluster * cs;
            let bsize = b.virtual_size();
            out.fill(0);
            if start < bsize {
                let n = ((bsize - start) as usize).min(out.len());
                b.read_at(&mut out[..n], start)?;
            }
        }
        Ok(())
    }

    /// Guest bytes of cluster `cluster` (the last cluster may be short).
    fn guest_cluster_len(&self, cluster: u64) -> u64 {
        let cs = self.cs();
        (self.size - cluster * cs).min(cs)
    }

    /// Writes `buf` (whole guest clusters from `first_cluster` on, none of them mapped to an
    /// overwritable host cluster) into freshly allocated, contiguous host clusters.
    fn write_fresh_run(&mut self, first_cluster: u64, buf: &[u8]) -> Result<(), ImageError> {
        let cs = self.cs();
        let n = (buf.len() as u64).div_ceil(cs);
        for c in first_cluster..first_cluster + n {
            let old = self.entry(c)?;
            self.release(old);
        }
        let host = self.alloc(n);
        self.data.write_all_at(&self.file, buf, host)?;
        for i in 0..n {
            self.set_entry(first_cluster + i, (host + i * cs) | OFLAG_COPIED)?;
        }
        Ok(())
    }

    /// Whether an L2 entry maps a plain data cluster this sink may overwrite in place.
    fn in_place_host(entry: u64) -> Option<u64> {
        let host = entry & OFFSET_MASK;
        (entry & OFLAG_COMPRESSED == 0 && entry & OFLAG_ZERO == 0 && host != 0).then_some(host)
    }
}

impl BlockSink for Qcow2Sink {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(ImageError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        let cs = self.cs();
        let mut pos = 0usize;
        while pos < buf.len() {
            let g = offset + pos as u64;
            let cluster = g / cs;
            let in_c = g % cs;
            let chunk = ((cs - in_c) as usize).min(buf.len() - pos);
            let entry = self.entry(cluster)?;
            if let Some(host) = Self::in_place_host(entry) {
                self.data
                    .write_all_at(&self.file, &buf[pos..pos + chunk], host + in_c)?;
                pos += chunk;
                continue;
            }
            let full = in_c == 0 && chunk as u64 == self.guest_cluster_len(cluster);
            if full {
                // Gather the longest run of fully covered clusters that all need allocation.
                let mut run = chunk;
                loop {
                    let next = offset + (pos + run) as u64;
                    if pos + run >= buf.len() {
                        break;
                    }
                    let c = next / cs;
                    let glen = self.guest_cluster_len(c) as usize;
                    if buf.len() - pos - run < glen || Self::in_place_host(self.entry(c)?).is_some()
                    {
                        break;
                    }
                    run += glen;
                }
                self.write_fresh_run(cluster, &buf[pos..pos + run])?;
                pos += run;
                continue;
            }
            // Partial cluster: merge with the current content, then store the whole cluster.
            let glen = self.guest_cluster_len(cluster) as usize;
            let mut whole = vec![0u8; glen];
            self.old_content(cluster, entry, &mut whole)?;
            whole[in_c as usize..in_c as usize + chunk].copy_from_slice(&buf[pos..pos + chunk]);
            self.write_fresh_run(cluster, &whole)?;
            pos += chunk;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), ImageError> {
        let resident: Vec<u64> = self.l2_tables.keys().copied().collect();
        for i in resident {
            self.flush_l2(i)?;
        }
        let cs = self.cs();
        let l1_clusters = (self.l1.len() as u64 * 8).div_ceil(cs);
        let l1_offset = self.alloc(l1_clusters);
        let used = self.next_free / cs;

        // Refcount structures must also count themselves: iterate to a fixed point.
        let refcount_bits = 1u64 << self.opts.refcount_order;
        let per_block = cs * 8 / refcount_bits;
        let (mut blocks, mut table_clusters) = (0u64, 0u64);
        loop {
            let total = used + blocks + table_clusters;
            let b = total.div_ceil(per_block);
            let t = (b * 8).div_ceil(cs);
            if b == blocks && t == table_clusters {
                break;
            }
            (blocks, table_clusters) = (b, t);
        }
        let blocks_offset = self.alloc(blocks);
        let table_offset = self.alloc(table_clusters);
        let total = self.next_free / cs;

        // L1 table.
        let l1_bytes: Vec<u8> = self
            .l1
            .iter()
            .flat_map(|&off| if off == 0 { 0u64 } else { off | OFLAG_COPIED }.to_be_bytes())
            .collect();
        if !l1_bytes.is_empty() {
            self.pwrite(&l1_bytes, l1_offset)?;
        }
        // Refcount blocks: every cluster below `total` holds one reference unless overridden.
        let max_refcount = if refcount_bits == 64 {
            u64::MAX
        } else {
            (1u64 << refcount_bits) - 1
        };
        let mut block = vec![0u8; cs as usize];
        for b in 0..blocks {
            block.fill(0);
            let first = b * per_block;
            for c in first..(first + per_block).min(total) {
                let count = self.refcount_overrides.get(&c).copied().unwrap_or(1);
                if count > max_refcount {
                    return Err(ImageError::InvalidArgument(format!(
                        "cluster {c} needs refcount {count}, more than {refcount_bits}-bit refcounts hold"
                    )));
                }
                set_refcount(
                    &mut block,
                    (c - first) as usize,
                    count,
                    self.opts.refcount_order,
                );
            }
            self.pwrite(&block, blocks_offset + b * cs)?;
        }
        // Refcount table.
        let mut table = vec![0u8; (table_clusters * cs) as usize];
        for b in 0..blocks {
            header::put_u64(&mut table, (b * 8) as usize, blocks_offset + b * cs);
        }
        self.pwrite(&table, table_offset)?;

        let opts = &self.opts;
        let mut compatible = 0;
        if opts.lazy_refcounts {
            compatible |= header::COMPAT_LAZY_REFCOUNTS;
        }
        let incompatible = if opts.compression_type == CompressionType::Zstd {
            header::INCOMPAT_COMPRESSION
        } else {
            0
        };
        let h = Header {
            version: opts.version,
            cluster_bits: self.cluster_bits,
            size: self.size,
            l1_size: self.l1.len() as u32,
            l1_table_offset: l1_offset,
            refcount_table_offset: table_offset,
            refcount_table_clusters: table_clusters as u32,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: incompatible,
            compatible_features: compatible,
            autoclear_features: 0,
            refcount_order: opts.refcount_order,
            header_length: if opts.version >= 3 {
                header::V3_HEADER_LEN
            } else {
                header::V2_HEADER_LEN
            },
            compression_type: opts.compression_type,
            backing_file: opts.backing_file.clone(),
            backing_format: opts.backing_format.map(|f| f.as_str().to_string()),
            bitmaps: None,
        };
        self.pwrite(&h.to_cluster()?, 0)?;
        self.file
            .set_len(self.next_free)
            .map_err(|e| io_err(&self.path, "setting the length of", e))?;
        tracing::debug!(path = %self.path.display(), clusters = total, "qcow2 image written");
        Ok(())
    }

    fn unit_size(&self) -> u64 {
        self.cs()
    }

    fn unit_encoder(&self) -> Option<Arc<dyn UnitEncoder>> {
        self.opts.compress.then(|| {
            Arc::new(Qcow2Encoder {
                kind: self.opts.compression_type,
                cluster_size: self.cs() as usize,
            }) as Arc<dyn UnitEncoder>
        })
    }

    fn place(&mut self, offset: u64, len: u64) -> Result<Option<Placement>, ImageError> {
        let cs = self.cs();
        let Some(file) = self.data.direct_file() else {
            return Ok(None);
        };
        if cs < DIO_ALIGN as u64
            || len == 0
            || !offset.is_multiple_of(cs)
            || !len.is_multiple_of(cs)
            || offset.checked_add(len).is_none_or(|e| e > self.size)
        {
            return Ok(None);
        }
        let first = offset / cs;
        let n = len / cs;
        for c in first..first + n {
            if Self::in_place_host(self.entry(c)?).is_some() {
                return Ok(None);
            }
        }
        for c in first..first + n {
            let old = self.entry(c)?;
            self.release(old);
        }
        let host = self.alloc(n);
        self.data.reserve(host, host + len, true)?;
        for i in 0..n {
            self.set_entry(first + i, (host + i * cs) | OFLAG_COPIED)?;
        }
        Ok(Some(Placement { file, offset: host }))
    }

    fn write_encoded(&mut self, offset: u64, encoded: Vec<u8>) -> Result<(), ImageError> {
        let cs = self.cs();
        if !self.opts.compress
            || !offset.is_multiple_of(cs)
            || offset >= self.size
            || encoded.is_empty()
        {
            return Err(ImageError::InvalidArgument(format!(
                "bad compressed cluster at {offset}"
            )));
        }
        if encoded.len() as u64 >= cs {
            return Err(ImageError::InvalidArgument(
                "compressed cluster is not smaller than a cluster".into(),
            ));
        }
        let cluster = offset / cs;
        let old = self.entry(cluster)?;
        self.release(old);
        let len = encoded.len() as u64;
        let start = match self.compressed_tail {
            Some(t) => t,
            None => {
                let c = self.alloc(1);
                self.refcount_overrides.insert(c / cs, 0);
                c
            }
        };
        let end = start + len;
        if end > self.next_free {
            // Spill into freshly allocated clusters directly after (contiguous by construction).
            let extra = (end - self.next_free).div_ceil(cs);
            let first_new = self.alloc(extra);
            for i in 0..extra {
                self.refcount_overrides.insert(first_new / cs + i, 0);
            }
        }
        for c in start / cs..=(end - 1) / cs {
            *self.refcount_overrides.entry(c).or_insert(0) += 1;
        }
        self.pwrite(&encoded, start)?;
        self.compressed_tail = (end < self.next_free).then_some(end);
        let x = 62 - (self.cluster_bits - 8);
        let sectors = (end - 1) / 512 - start / 512;
        self.set_entry(cluster, OFLAG_COMPRESSED | (sectors << x) | start)
    }
}

/// Stores `value` as refcount number `index` of a block with entries of 2^order bits.
pub(crate) fn set_refcount(block: &mut [u8], index: usize, value: u64, order: u32) {
    let bits = 1usize << order;
    if bits >= 8 {
        let bytes = bits / 8;
        let at = index * bytes;
        block[at..at + bytes].copy_from_slice(&value.to_be_bytes()[8 - bytes..]);
    } else {
        // Sub-byte widths: bit 0 is the least significant bit of the byte.
        let bit = index * bits;
        let byte = bit / 8;
        let shift = bit % 8;
        let mask = (((1u16 << bits) - 1) as u8) << shift;
        block[byte] = (block[byte] & !mask) | (((value as u8) << shift) & mask);
    }
}

/// Reads refcount number `index` from a block with entries of 2^order bits.
pub(crate) fn get_refcount(block: &[u8], index: usize, order: u32) -> u64 {
    let bits = 1usize << order;
    if bits >= 8 {
        let bytes = bits / 8;
        let at = index * bytes;
        block[at..at + bytes]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    } else {
        let bit = index * bits;
        let mask = ((1u16 << bits) - 1) as u8;
        u64::from((block[bit / 8] >> (bit % 8)) & mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_packing_round_trips() {
        for order in 0..=6u32 {
            let bits = 1u32 << order;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let mut block = vec![0u8; 512];
            let n = 512 * 8 / bits as usize;
            for i in 0..n {
                set_refcount(&mut block, i, (i as u64 * 7) & max, order);
            }
            for i in 0..n {
                assert_eq!(
                    get_refcount(&block, i, order),
                    (i as u64 * 7) & max,
                    "order {order} index {i}"
                );
            }
        }
    }
}
