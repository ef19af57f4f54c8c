//! In-place writes to an existing qcow2 image (version 3), with copy-on-write of clusters and
//! L2 tables shared with internal snapshots, and refcounts settled lazily.
//!
//! Protocol (the lazy-refcounts protocol of the qcow2 spec, used for every image): before the
//! first write the dirty bit is set and synced; clusters are then allocated past the end of
//! the file and mapped without touching refcounts; [`BlockSink::finish`] writes the L2/L1
//! tables, syncs, rebuilds the refcount structures from the metadata (at the end of the file),
//! points the header at them, syncs, and clears the dirty bit. A crash at any point leaves a
//! dirty image that qemu (and [`super::repair`]) repairs on open, never silent corruption.
//!
//! Invariants:
//! - images marked corrupt, images with metadata errors, and version 2 images (no dirty bit)
//!   are refused with [`ImageError::WriteRefused`];
//! - a data cluster or L2 table is modified in place only when its entry carries the "copied"
//!   flag (refcount exactly one); anything shared with a snapshot is copied first;
//! - auto-clear feature bits (persistent bitmaps) are cleared before the first write, as the
//!   spec requires of writers that do not maintain them;
//! - memory: the L1 table plus at most [`L2_RESIDENT`] L2 tables.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::check::{rebuild_refcounts, walk_references};
use super::compress;
use super::header::{put_u32, put_u64, Header, INCOMPAT_DIRTY};
use super::reader::{
    decode_l1_entry, decode_l2_entry, pread_fill, read_table, Mapping, OFFSET_MASK, OFLAG_COPIED,
};
use crate::detect::ChainContext;
use crate::device::{BlockSink, BlockSource, Format, Limits, PathPolicy};
use crate::error::ImageError;

/// L2 tables kept in memory before the lowest-numbered one is written out.
const L2_RESIDENT: usize = 256;

fn refused(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::WriteRefused {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

#[derive(Debug)]
struct Slot {
    entries: Vec<u64>,
    dirty: bool,
    /// Where the table lives on disk; 0 when it must be written to a new cluster (new table,
    /// or a copy of a table shared with a snapshot).
    host: u64,
}

/// An existing qcow2 image opened for in-place writes.
#[derive(Debug)]
pub struct Qcow2Writer {
    path: PathBuf,
    file: File,
    header: Header,
    limits: Limits,
    l1: Vec<u64>,
    l2: BTreeMap<u64, Slot>,
    next_free: u64,
    backing: Option<Box<dyn BlockSource>>,
    marked_dirty: bool,
}

/// Opens `path` for in-place writes (see the module documentation for what is refused). A
/// dirty image is repaired first.
pub fn open_rw(
    path: &Path,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<Qcow2Writer, ImageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| ImageError::io(format!("opening {} for writing", path.display()), e))?;
    let mut header = read_header(&file, path, limits)?;
    if header.is_corrupt() {
        return Err(refused(path, "the image is marked corrupt"));
    }
    if header.version < 3 {
        return Err(refused(
            path,
            "in-place writes need qcow2 version 3 (a dirty bit); convert the image first",
        ));
    }
    if header.is_dirty() {
        tracing::info!(path = %path.display(), "image is dirty; rebuilding refcounts before writing");
        settle_refcounts(&file, path, &mut header, limits)?;
    }
    let report = walk_references(&file, path, &header, limits, true)?.1;
    if report.corruptions > 0 || report.check_errors > 0 {
        return Err(refused(
            path,
            format!(
                "`check` finds {} errors in the image metadata",
                report.corruptions + report.check_errors
            ),
        ));
    }
    let file_len = file_len(&file, path)?;
    let l1 = read_table(
        &file,
        path,
        header.l1_table_offset,
        u64::from(header.l1_size),
        limits,
        "qcow2 L1 table",
    )?;
    let backing = match &header.backing_file {
        None => None,
        Some(reference) => {
            let resolved = policy.resolve(path, reference)?;
            let declared = header
                .backing_format
                .as_deref()
                .and_then(Format::from_qemu_name);
            let mut chain = ChainContext::new_with(path)?;
            Some(crate::detect::open_in_chain(
                &resolved, declared, limits, policy, &mut chain,
            )?)
        }
    };
    Ok(Qcow2Writer {
        path: path.to_path_buf(),
        file,
        next_free: file_len.next_multiple_of(header.cluster_size()),
        header,
        limits: *limits,
        l1,
        l2: BTreeMap::new(),
        backing,
        marked_dirty: false,
    })
}

pub(crate) fn file_len(file: &File, path: &Path) -> Result<u64, ImageError> {
    Ok(file
        .metadata()
        .map_err(|e| ImageError::io(format!("reading metadata of {}", path.display()), e))?
        .len())
}

pub(crate) fn read_header(file: &File, path: &Path, limits: &Limits) -> Result<Header, ImageError> {
    let len = file_len(file, path)?;
    let mut head = vec![0u8; (2u64 << 20).min(len) as usize];
    pread_fill(file, &mut head, 0, path)?;
    Header::parse(&head, limits)
}

pub(crate) fn sync(file: &File, path: &Path) -> Result<(), ImageError> {
    file.sync_data()
        .map_err(|e| ImageError::io(format!("syncing {}", path.display()), e))
}

/// Writes the header fields an in-place writer changes (never the rest of cluster 0, which
/// may hold extensions this code does not rewrite).
fn write_header_fields(file: &File, path: &Path, h: &Header) -> Result<(), ImageError> {
    // Version 2 headers end at byte 72 (extensions follow): only patch what exists.
    let len = if h.version >= 3 { 104 } else { 72 };
    let mut b = vec![0u8; len];
    pread_fill(file, &mut b, 0, path)?;
    put_u64(&mut b, 48, h.refcount_table_offset);
    put_u32(&mut b, 56, h.refcount_table_clusters);
    if h.version >= 3 {
        put_u64(&mut b, 72, h.incompatible_features);
        put_u64(&mut b, 88, h.autoclear_features);
    }
    file.write_all_at(&b, 0)
        .map_err(|e| ImageError::io(format!("writing the header of {}", path.display()), e))
}

/// Rebuilds the refcount structures of a (possibly dirty) image and clears the dirty bit.
pub(crate) fn settle_refcounts(
    file: &File,
    path: &Path,
    header: &mut Header,
    limits: &Limits,
) -> Result<(), ImageError> {
    let (table_offset, table_clusters) = rebuild_refcounts(file, path, header, limits)?;
    sync(file, path)?;
    header.refcount_table_offset = table_offset;
    header.refcount_table_clusters = table_clusters;
    write_header_fields(file, path, header)?;
    sync(file, path)?;
    if header.is_dirty() {
        header.incompatible_features &= !INCOMPAT_DIRTY;
        write_header_fields(file, path, header)?;
        sync(file, path)?;
    }
    Ok(())
}

/// Repairs refcounts (leaks, refcounts too low, a dirty bit left by a crash) by rebuilding
/// them from the metadata, like `qemu-img check -r all` does for refcount errors. Refuses
/// images marked corrupt or with pointer errors. Returns a check of the repaired image.
pub fn repair(path: &Path, limits: &Limits) -> Result<super::CheckReport, ImageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| ImageError::io(format!("opening {} for writing", path.display()), e))?;
    let mut header = read_header(&file, path, limits)?;
    if header.is_corrupt() {
        return Err(refused(path, "the image is marked corrupt"));
    }
    settle_refcounts(&file, path, &mut header, limits)?;
    drop(file);
    super::check(path, limits)
}

impl Qcow2Writer {
    fn cs(&self) -> u64 {
        self.header.cluster_size()
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Sets the dirty bit (and drops auto-clear features) before the first modification.
    fn mark_dirty(&mut self) -> Result<(), ImageError> {
        if self.marked_dirty {
            return Ok(());
        }
        self.header.incompatible_features |= INCOMPAT_DIRTY;
        self.header.autoclear_features = 0;
        write_header_fields(&self.file, &self.path, &self.header)?;
        sync(&self.file, &self.path)?;
        self.marked_dirty = true;
        Ok(())
    }

    fn alloc(&mut self) -> u64 {
        let off = self.next_free;
        self.next_free += self.cs();
        off
    }

    fn pwrite(&self, buf: &[u8], off: u64) -> Result<(), ImageError> {
        self.file
            .write_all_at(buf, off)
            .map_err(|e| ImageError::io(format!("writing {} at {off}", self.path.display()), e))
    }

    fn slot(&mut self, l1_index: u64) -> Result<&mut Slot, ImageError> {
        if !self.l2.contains_key(&l1_index) {
            while self.l2.len() >= L2_RESIDENT {
                let Some((&victim, _)) = self.l2.iter().next() else {
                    break;
                };
                self.flush_l2(victim)?;
            }
            let per_l2 = self.cs() / 8;
            let entry = self.l1[l1_index as usize];
            let off = decode_l1_entry(entry, self.header.cluster_bits, self.next_free)?;
            let slot = if off == 0 {
                Slot {
                    entries: vec![0; per_l2 as usize],
                    dirty: false,
                    host: 0,
                }
            } else {
                let limits = Limits {
                    max_table_bytes: self.cs(),
                    ..self.limits
                };
                let entries = read_table(
                    &self.file,
                    &self.path,
                    off,
                    per_l2,
                    &limits,
                    "qcow2 L2 table",
                )?;
                // A table without the copied flag is shared with a snapshot: write a copy.
                let host = if entry & OFLAG_COPIED != 0 { off } else { 0 };
                Slot {
                    entries,
                    dirty: false,
                    host,
                }
            };
            self.l2.insert(l1_index, slot);
        }
        self.l2
            .get_mut(&l1_index)
            .ok_or_else(|| ImageError::InvalidArgument("L2 table vanished".into()))
    }

    fn flush_l2(&mut self, l1_index: u64) -> Result<(), ImageError> {
        let Some(mut slot) = self.l2.remove(&l1_index) else {
            return Ok(());
        };
        if !slot.dirty {
            return Ok(());
        }
        if slot.host == 0 {
            slot.host = self.alloc();
        }
        let bytes: Vec<u8> = slot.entries.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.pwrite(&bytes, slot.host)?;
        self.l1[l1_index as usize] = slot.host | OFLAG_COPIED;
        Ok(())
    }

    fn mapping(&self, entry: u64) -> Result<Mapping, ImageError> {
        decode_l2_entry(
            entry,
            self.header.cluster_bits,
            self.header.version,
            self.next_free,
        )
    }

    /// Current guest content of the cluster whose entry is `entry` (`out` is the guest length
    /// of that cluster).
    fn old_content(&self, cluster: u64, entry: u64, out: &mut [u8]) -> Result<(), ImageError> {
        let cs = self.cs();
        match self.mapping(entry)? {
            Mapping::Data { host } => pread_fill(&self.file, out, host, &self.path),
            Mapping::Zero { .. } => {
                out.fill(0);
                Ok(())
            }
            Mapping::Compressed { host, len } => {
                let len = len.min(self.next_free.saturating_sub(host));
                let mut input = vec![0u8; len as usize];
                pread_fill(&self.file, &mut input, host, &self.path)?;
                let mut full = vec![0u8; cs as usize];
                compress::decompress(self.header.compression_type, &input, &mut full)?;
                out.copy_from_slice(&full[..out.len()]);
                Ok(())
            }
            Mapping::Unallocated => {
                out.fill(0);
                if let Some(b) = &self.backing {
                    let start = cluster * cs;
                    let bsize = b.virtual_size();
                    if start < bsize {
                        let n = ((bsize - start) as usize).min(out.len());
                        b.read_at(&mut out[..n], start)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl BlockSink for Qcow2Writer {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        let size = self.header.size;
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(ImageError::OutOfRange { offset, len, size });
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.mark_dirty()?;
        let cs = self.cs();
        let per_l2 = cs / 8;
        let mut pos = 0usize;
        while pos < buf.len() {
            let g = offset + pos as u64;
            let cluster = g / cs;
            let in_c = (g % cs) as usize;
            let chunk = (cs as usize - in_c).min(buf.len() - pos);
            let (l1_index, l2_index) = (cluster / per_l2, (cluster % per_l2) as usize);
            let entry = self.slot(l1_index)?.entries[l2_index];
            let in_place =
                entry & OFLAG_COPIED != 0 && matches!(self.mapping(entry)?, Mapping::Data { .. });
            if in_place {
                self.pwrite(&buf[pos..pos + chunk], (entry & OFFSET_MASK) + in_c as u64)?;
            } else {
                // Copy-on-write: the whole cluster goes to a new host cluster.
                let glen = (size - cluster * cs).min(cs) as usize;
                let mut whole = vec![0u8; glen];
                if chunk < glen {
                    self.old_content(cluster, entry, &mut whole)?;
                }
                whole[in_c..in_c + chunk].copy_from_slice(&buf[pos..pos + chunk]);
                let host = self.alloc();
                self.pwrite(&whole, host)?;
                if glen < cs as usize {
                    // Keep the file covering the whole cluster.
                    self.pwrite(&[0u8], host + cs - 1)?;
                }
                let slot = self.slot(l1_index)?;
                slot.entries[l2_index] = host | OFLAG_COPIED;
                slot.dirty = true;
            }
            pos += chunk;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), ImageError> {
        if !self.marked_dirty {
            return Ok(());
        }
        let resident: Vec<u64> = self.l2.keys().copied().collect();
        for i in resident {
            self.flush_l2(i)?;
        }
        let l1_bytes: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.pwrite(&l1_bytes, self.header.l1_table_offset)?;
        sync(&self.file, &self.path)?;
        let (file, path, limits) = (&self.file, self.path.clone(), self.limits);
        let mut header = self.header.clone();
        settle_refcounts(file, &path, &mut header, &limits)?;
        tracing::debug!(path = %path.display(), "qcow2 image updated in place");
        Ok(())
    }

    fn unit_size(&self) -> u64 {
        self.cs()
    }
}
