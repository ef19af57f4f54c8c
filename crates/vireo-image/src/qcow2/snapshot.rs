//! Internal snapshots of a closed qcow2 image: list, create, apply (revert) and delete, with
//! the semantics of `qemu-img snapshot -l|-c|-a|-d` (qemu's own tools read the result), and a
//! read-only guest view of one snapshot ([`open_snapshot`]).
//!
//! Crash safety and validation are those of [`super::meta`]: every operation raises refcounts
//! before it points anything at new structures, switches with one header write, and lowers
//! refcounts last; a crash leaks clusters at worst.
//!
//! Invariants:
//! - snapshot table entries this code does not create are rewritten byte for byte (id, name
//!   and extra data kept verbatim, including fields it does not know);
//! - names are unique among the snapshots Vireo creates; lookups by name refuse ambiguity;
//! - a snapshot's L1 table covers its disk and, for snapshots QEMU saved with VM state, the
//!   VM state past the end of the disk: deleting it releases both;
//! - parsing is bounded: at most [`MAX_SNAPSHOTS`] entries, [`MAX_EXTRA`] bytes of extra
//!   data each, and the table within [`Limits::max_table_bytes`].

use std::fs::File;
use std::path::{Path, PathBuf};

use super::header::{l1_entries_for, Header};
use super::meta::MetaFile;
use super::reader::{pread_fill, OFLAG_COPIED};
use crate::device::{BlockSource, Limits, PathPolicy};
use crate::error::ImageError;

/// Most snapshots an image may have (qemu's limit).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Most extra-data bytes per entry (qemu's limit).
pub const MAX_EXTRA: u32 = 1024;
/// Longest snapshot name Vireo creates.
pub const MAX_NAME_LEN: usize = 1024;
/// Fixed part of a snapshot table entry.
const FIXED_LEN: usize = 40;
/// Extra data Vireo writes: 64-bit VM state size, disk size, icount (as QEMU 7 does).
const EXTRA_LEN: usize = 24;

/// One internal snapshot as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotEntry {
    /// Unique id (qemu numbers them "1", "2", …).
    pub id: String,
    pub name: String,
    /// Creation time, seconds and nanoseconds since the Unix epoch.
    pub date_sec: u32,
    pub date_nsec: u32,
    /// Guest run time when the snapshot was taken (0 for disk-only snapshots of a stopped VM).
    pub vm_clock_nsec: u64,
    /// Bytes of saved VM state (RAM and devices); 0 for disk-only snapshots.
    pub vm_state_size: u64,
    /// Virtual disk size at snapshot time.
    pub disk_size: u64,
    /// Instruction count of record/replay, if the snapshot has one.
    pub icount: Option<u64>,
}

/// Why a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{}: no snapshot named {name:?}", path.display())]
    NotFound { path: PathBuf, name: String },
    #[error("{}: a snapshot named {name:?} already exists", path.display())]
    AlreadyExists { path: PathBuf, name: String },
    #[error("{}: {count} snapshots are named {name:?}; refusing to guess", path.display())]
    Ambiguous {
        path: PathBuf,
        name: String,
        count: usize,
    },
    #[error("invalid snapshot name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{}: snapshot {op} failed", path.display())]
    Image {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: ImageError,
    },
}

fn image_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(ImageError) -> SnapshotError + 'a {
    move |source| SnapshotError::Image {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn corrupt(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "qcow2",
        detail: detail.into(),
    }
}

// ---- table codec (pure) -------------------------------------------------------------------

/// A snapshot table entry as stored (strings and extra data as raw bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawSnapshot {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub id: Vec<u8>,
    pub name: Vec<u8>,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size32: u32,
    pub extra: Vec<u8>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

impl RawSnapshot {
    fn extra_u64(&self, at: usize) -> Option<u64> {
        (self.extra.len() >= at + 8).then(|| be64(&self.extra, at))
    }

    pub(crate) fn vm_state_size(&self) -> u64 {
        self.extra_u64(0).unwrap_or(u64::from(self.vm_state_size32))
    }

    /// Disk size recorded in the entry (absent in entries of old version 2 writers).
    pub(crate) fn disk_size(&self) -> Option<u64> {
        self.extra_u64(8)
    }

    /// Record/replay instruction count, if recorded (-1 means none).
    pub(crate) fn icount(&self) -> Option<u64> {
        self.extra_u64(16).filter(|v| *v != u64::MAX)
    }

    fn entry(&self, current_size: u64) -> SnapshotEntry {
        SnapshotEntry {
            id: String::from_utf8_lossy(&self.id).into_owned(),
            name: String::from_utf8_lossy(&self.name).into_owned(),
            date_sec: self.date_sec,
            date_nsec: self.date_nsec,
            vm_clock_nsec: self.vm_clock_nsec,
            vm_state_size: self.vm_state_size(),
            disk_size: self.disk_size().unwrap_or(current_size),
            icount: self.icount(),
        }
    }

    /// Stored length of the entry, padding included.
    pub(crate) fn stored_len(&self) -> usize {
        (FIXED_LEN + self.extra.len() + self.id.len() + self.name.len()).next_multiple_of(8)
    }
}

/// Length of the entry whose fixed part is `fixed` (40 bytes), padding excluded; refuses
/// oversized extra data.
fn entry_len(fixed: &[u8]) -> Result<usize, ImageError> {
    let id_len = usize::from(u16::from_be_bytes([fixed[12], fixed[13]]));
    let name_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let extra_len = be32(fixed, 36);
    if extra_len > MAX_EXTRA {
        return Err(corrupt(format!(
            "snapshot entry has {extra_len} bytes of extra data"
        )));
    }
    Ok(FIXED_LEN + extra_len as usize + id_len + name_len)
}

/// Parses one entry from `b`, which holds at least the entry's bytes (padding optional).
/// Returns the entry and its stored length (with padding).
pub(crate) fn parse_entry(b: &[u8]) -> Result<(RawSnapshot, usize), ImageError> {
    if b.len() < FIXED_LEN {
        return Err(corrupt("snapshot entry truncated"));
    }
    let len = entry_len(b)?;
    if b.len() < len {
        return Err(corrupt("snapshot entry truncated"));
    }
    let id_len = usize::from(u16::from_be_bytes([b[12], b[13]]));
    let extra_len = be32(b, 36) as usize;
    let var = &b[FIXED_LEN..len];
    let raw = RawSnapshot {
        l1_table_offset: be64(b, 0),
        l1_size: be32(b, 8),
        id: var[extra_len..extra_len + id_len].to_vec(),
        name: var[extra_len + id_len..].to_vec(),
        date_sec: be32(b, 16),
        date_nsec: be32(b, 20),
        vm_clock_nsec: be64(b, 24),
        vm_state_size32: be32(b, 32),
        extra: var[..extra_len].to_vec(),
    };
    Ok((raw, len.next_multiple_of(8)))
}

/// Serialises one entry, padded to a multiple of 8 bytes. Lengths are bounded by the
/// callers (id/name fit 16 bits, extra data at most [`MAX_EXTRA`]).
pub(crate) fn encode_entry(s: &RawSnapshot, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&s.l1_table_offset.to_be_bytes());
    out.extend_from_slice(&s.l1_size.to_be_bytes());
    out.extend_from_slice(&(s.id.len() as u16).to_be_bytes());
    out.extend_from_slice(&(s.name.len() as u16).to_be_bytes());
    out.extend_from_slice(&s.date_sec.to_be_bytes());
    out.extend_from_slice(&s.date_nsec.to_be_bytes());
    out.extend_from_slice(&s.vm_clock_nsec.to_be_bytes());
    out.extend_from_slice(&s.vm_state_size32.to_be_bytes());
    out.extend_from_slice(&(s.extra.len() as u32).to_be_bytes());
    out.extend_from_slice(&s.extra);
    out.extend_from_slice(&s.id);
    out.extend_from_slice(&s.name);
    out.resize(start + s.stored_len(), 0);
}

/// Serialises a whole table.
pub(crate) fn encode_table(entries: &[RawSnapshot]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(RawSnapshot::stored_len).sum());
    for e in entries {
        encode_entry(e, &mut out);
    }
    out
}

/// Reads and validates the snapshot table the header names. Returns the entries and the
/// table's stored length in bytes (0 without snapshots).
pub(crate) fn read_raw_table(
    file: &File,
    path: &Path,
    header: &Header,
    limits: &Limits,
) -> Result<(Vec<RawSnapshot>, u64), ImageError> {
    let n = header.nb_snapshots;
    if n == 0 {
        return Ok((Vec::new(), 0));
    }
    if n > MAX_SNAPSHOTS {
        return Err(corrupt(format!(
            "{n} snapshots exceed the limit of {MAX_SNAPSHOTS}"
        )));
    }
    let file_len = super::rw::file_len(file, path)?;
    if header.snapshots_offset == 0 || header.snapshots_offset >= file_len {
        return Err(corrupt("snapshot table offset is invalid"));
    }
    let cs = header.cluster_size();
    let mut out = Vec::with_capacity(n.min(1024) as usize);
    let mut pos = header.snapshots_offset;
    let mut buf = Vec::new();
    for i in 0..n {
        let mut fixed = [0u8; FIXED_LEN];
        pread_fill(file, &mut fixed, pos, path)?;
        let len = entry_len(&fixed)?;
        let table_len = pos - header.snapshots_offset + len as u64;
        if table_len > limits.max_table_bytes {
            return Err(ImageError::LimitExceeded {
                what: "qcow2 snapshot table",
                requested: table_len,
                limit: limits.max_table_bytes,
            });
        }
        if pos.saturating_add(len as u64) > file_len {
            return Err(corrupt(format!("snapshot {i} entry is past end of file")));
        }
        buf.resize(len, 0);
        pread_fill(file, &mut buf, pos, path)?;
        let (raw, stored) = parse_entry(&buf)?;
        if !raw.l1_table_offset.is_multiple_of(cs) {
            return Err(corrupt(format!(
                "snapshot {i} L1 table is not cluster-aligned"
            )));
        }
        let l1_bytes = u64::from(raw.l1_size) * 8;
        if l1_bytes > limits.max_table_bytes {
            return Err(ImageError::LimitExceeded {
                what: "qcow2 snapshot L1 table",
                requested: l1_bytes,
                limit: limits.max_table_bytes,
            });
        }
        if header.version >= 3 && raw.extra.len() < 16 {
            return Err(corrupt(format!(
                "snapshot {i} lacks the extra data version 3 requires"
            )));
        }
        out.push(raw);
        pos += stored as u64;
    }
    Ok((out, pos - header.snapshots_offset))
}

// ---- name rules and lookups ------------------------------------------------------------

fn validate_name(name: &str) -> Result<(), SnapshotError> {
    let bad = |reason| {
        Err(SnapshotError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 1024 bytes");
    }
    if name.contains('\0') {
        return bad("contains a NUL byte");
    }
    Ok(())
}

/// Index of the only snapshot named `name`.
fn find(path: &Path, snaps: &[RawSnapshot], name: &str) -> Result<usize, SnapshotError> {
    let hits: Vec<usize> = snaps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name == name.as_bytes())
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [i] => Ok(*i),
        [] => Err(SnapshotError::NotFound {
            path: path.to_path_buf(),
            name: name.to_string(),
        }),
        many => Err(SnapshotError::Ambiguous {
            path: path.to_path_buf(),
            name: name.to_string(),
            count: many.len(),
        }),
    }
}

/// Next free numeric id: one more than the largest numeric id (qemu's rule), or, if that
/// overflows, the smallest number no entry uses.
fn next_id(snaps: &[RawSnapshot]) -> Vec<u8> {
    let numeric: Vec<u64> = snaps
        .iter()
        .filter_map(|s| std::str::from_utf8(&s.id).ok()?.parse::<u64>().ok())
        .collect();
    let next = match numeric.iter().max().copied().unwrap_or(0).checked_add(1) {
        Some(n) => n,
        None => (1..)
            .find(|n| !snaps.iter().any(|s| s.id == n.to_string().as_bytes()))
            .unwrap_or(1),
    };
    next.to_string().into_bytes()
}

/// A new disk-only entry, with the extra data QEMU 7 writes (64-bit VM state size, disk size,
/// icount = -1 for "none").
fn new_entry(
    id: Vec<u8>,
    name: &str,
    l1_table_offset: u64,
    l1_size: u32,
    disk_size: u64,
) -> RawSnapshot {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut extra = Vec::with_capacity(EXTRA_LEN);
    extra.extend_from_slice(&0u64.to_be_bytes());
    extra.extend_from_slice(&disk_size.to_be_bytes());
    extra.extend_from_slice(&u64::MAX.to_be_bytes());
    RawSnapshot {
        l1_table_offset,
        l1_size,
        id,
        name: name.as_bytes().to_vec(),
        date_sec: u32::try_from(now.as_secs()).unwrap_or(u32::MAX),
        date_nsec: now.subsec_nanos(),
        vm_clock_nsec: 0,
        vm_state_size32: 0,
        extra,
    }
}

// ---- operations -----------------------------------------------------------------------

/// Lists the internal snapshots of the qcow2 image at `path` (read-only).
pub fn snapshot_list(path: &Path, limits: &Limits) -> Result<Vec<SnapshotEntry>, SnapshotError> {
    let err = image_err(path, "list");
    let list = || -> Result<Vec<SnapshotEntry>, ImageError> {
        let file = File::open(path)
            .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
        let header = super::rw::read_header(&file, path, limits)?;
        let (snaps, _) = read_raw_table(&file, path, &header, limits)?;
        Ok(snaps.iter().map(|s| s.entry(header.size)).collect())
    };
    list().map_err(err)
}

/// Creates a disk-only snapshot named `name` of the closed image at `path` (what `qemu-img
/// snapshot -c` does): the active L1 table is copied, every L2 table and cluster it reaches
/// gains a reference, and the active tables lose their copied flags so the next write
/// copies shared clusters.
pub fn snapshot_create(
    path: &Path,
    name: &str,
    limits: &Limits,
) -> Result<SnapshotEntry, SnapshotError> {
    validate_name(name)?;
    let mut m = MetaFile::open(path, limits).map_err(image_err(path, "create"))?;
    let (snaps, old_len) =
        read_raw_table(m.file(), path, &m.header, limits).map_err(image_err(path, "create"))?;
    if snaps.iter().any(|s| s.name == name.as_bytes()) {
        return Err(SnapshotError::AlreadyExists {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    }
    if snaps.len() as u64 >= u64::from(MAX_SNAPSHOTS) {
        return Err(image_err(path, "create")(ImageError::LimitExceeded {
            what: "qcow2 snapshot count",
            requested: snaps.len() as u64 + 1,
            limit: u64::from(MAX_SNAPSHOTS),
        }));
    }
    let entry = create_in(&mut m, snaps, old_len, name).map_err(image_err(path, "create"))?;
    tracing::info!(path = %path.display(), name, "qcow2 snapshot created");
    Ok(entry)
}

fn create_in(
    m: &mut MetaFile,
    mut snaps: Vec<RawSnapshot>,
    old_len: u64,
    name: &str,
) -> Result<SnapshotEntry, ImageError> {
    let (l1_off, l1_size, size) = (m.header.l1_table_offset, m.header.l1_size, m.header.size);
    let active = m.read_l1(l1_off, l1_size)?;
    // Up: the copy references everything the active table does.
    m.adjust_l1_references(&active, 1)?;
    let copy: Vec<u64> = active.iter().map(|e| e & !OFLAG_COPIED).collect();
    let copy_off = if l1_size == 0 {
        0
    } else {
        let bytes: Vec<u8> = copy.iter().flat_map(|e| e.to_be_bytes()).collect();
        m.write_new_table(&bytes)?
    };
    let raw = new_entry(next_id(&snaps), name, copy_off, l1_size, size);
    let entry = raw.entry(size);
    snaps.push(raw);
    let table = encode_table(&snaps);
    let table_off = m.write_new_table(&table)?;
    m.commit_refcounts()?;
    // Everything the active table reaches is now shared: clear its copied flags before the
    // snapshot becomes visible.
    m.fix_copied_flags()?;
    let (old_off, nb) = (m.header.snapshots_offset, snaps.len() as u32);
    m.switch_snapshot_table(nb, table_off)?;
    // Down: the old table.
    m.begin_release()?;
    if old_len > 0 {
        m.adjust_range(old_off, old_len, -1)?;
    }
    m.commit_refcounts()?;
    Ok(entry)
}

/// Deletes the snapshot named `name`: its entry goes, and its L1 table, the L2 tables and
/// clusters only it references (VM state included) are freed.
pub fn snapshot_delete(path: &Path, name: &str, limits: &Limits) -> Result<(), SnapshotError> {
    let mut m = MetaFile::open(path, limits).map_err(image_err(path, "delete"))?;
    let (mut snaps, old_len) =
        read_raw_table(m.file(), path, &m.header, limits).map_err(image_err(path, "delete"))?;
    let i = find(path, &snaps, name)?;
    let gone = snaps.remove(i);
    delete_in(&mut m, &snaps, old_len, &gone).map_err(image_err(path, "delete"))?;
    tracing::info!(path = %path.display(), name, "qcow2 snapshot deleted");
    Ok(())
}

fn delete_in(
    m: &mut MetaFile,
    rest: &[RawSnapshot],
    old_len: u64,
    gone: &RawSnapshot,
) -> Result<(), ImageError> {
    let gone_l1 = m.read_l1(gone.l1_table_offset, gone.l1_size)?;
    let table_off = if rest.is_empty() {
        0
    } else {
        m.write_new_table(&encode_table(rest))?
    };
    m.commit_refcounts()?;
    let old_off = m.header.snapshots_offset;
    m.switch_snapshot_table(rest.len() as u32, table_off)?;
    m.begin_release()?;
    m.adjust_range(old_off, old_len, -1)?;
    m.adjust_l1_references(&gone_l1, -1)?;
    m.adjust_range(gone.l1_table_offset, u64::from(gone.l1_size) * 8, -1)?;
    m.commit_refcounts()?;
    // Clusters the active image shared only with the deleted snapshot are its own again.
    m.fix_copied_flags()
}

/// Reverts the active image to the snapshot named `name` (what `qemu-img snapshot -a`
/// does): the guest disk becomes the snapshot's content and size; the snapshot stays.
/// Refused for images with persistent dirty bitmaps (their content would be wrong).
pub fn snapshot_apply(path: &Path, name: &str, limits: &Limits) -> Result<(), SnapshotError> {
    let mut m = MetaFile::open(path, limits).map_err(image_err(path, "apply"))?;
    if m.header.bitmaps.is_some()
        && m.header.autoclear_features & super::header::AUTOCLEAR_BITMAPS != 0
    {
        return Err(image_err(path, "apply")(super::meta::refused(
            path,
            "the image has persistent dirty bitmaps, which reverting would invalidate",
        )));
    }
    let (snaps, _) =
        read_raw_table(m.file(), path, &m.header, limits).map_err(image_err(path, "apply"))?;
    let i = find(path, &snaps, name)?;
    apply_in(&mut m, &snaps[i]).map_err(image_err(path, "apply"))?;
    tracing::info!(path = %path.display(), name, "qcow2 snapshot applied");
    Ok(())
}

fn apply_in(m: &mut MetaFile, sn: &RawSnapshot) -> Result<(), ImageError> {
    let size = sn.disk_size().unwrap_or(m.header.size);
    if size > m.limits.max_virtual_size {
        return Err(ImageError::LimitExceeded {
            what: "qcow2 virtual size",
            requested: size,
            limit: m.limits.max_virtual_size,
        });
    }
    // Only the entries that map the disk: VM state past it is for QEMU's loadvm, not the
    // guest disk (and stays referenced by the snapshot).
    let needed = l1_entries_for(size, m.header.cluster_bits);
    if needed.saturating_mul(8) > m.limits.max_table_bytes {
        return Err(ImageError::LimitExceeded {
            what: "qcow2 L1 table",
            requested: needed.saturating_mul(8),
            limit: m.limits.max_table_bytes,
        });
    }
    let needed32 = u32::try_from(needed).map_err(|_| corrupt("snapshot disk size too large"))?;
    let sn_l1 = m.read_l1(sn.l1_table_offset, sn.l1_size)?;
    let mut new_l1: Vec<u64> = sn_l1
        .iter()
        .take(needed as usize)
        .map(|e| e & !OFLAG_COPIED)
        .collect();
    new_l1.resize(needed as usize, 0);
    let old_l1 = m.read_l1(m.header.l1_table_offset, m.header.l1_size)?;
    let (old_off, old_size) = (m.header.l1_table_offset, m.header.l1_size);
    m.adjust_l1_references(&new_l1, 1)?;
    let new_off = if new_l1.is_empty() {
        0
    } else {
        let bytes: Vec<u8> = new_l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        m.write_new_table(&bytes)?
    };
    m.commit_refcounts()?;
    m.switch_active(size, needed32, new_off)?;
    m.begin_release()?;
    m.adjust_l1_references(&old_l1, -1)?;
    m.adjust_range(old_off, u64::from(old_size) * 8, -1)?;
    m.commit_refcounts()?;
    m.fix_copied_flags()
}

/// Opens the snapshot named `name` of the qcow2 image at `path` as a read-only guest view
/// (its content and disk size, the image's backing chain), for `convert`/`compare`.
pub fn open_snapshot(
    path: &Path,
    name: &str,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<Box<dyn BlockSource>, SnapshotError> {
    let err = image_err(path, "open");
    let img = super::open_image(path, limits, policy).map_err(image_err(path, "open"))?;
    let file = File::open(path)
        .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))
        .map_err(image_err(path, "open"))?;
    let (snaps, _) = read_raw_table(&file, path, img.header(), limits).map_err(err)?;
    let i = find(path, &snaps, name)?;
    let sn = &snaps[i];
    let size = sn.disk_size().unwrap_or(img.header().size);
    let view = img
        .into_snapshot_view(sn.l1_table_offset, sn.l1_size, size, limits)
        .map_err(image_err(path, "open"))?;
    Ok(Box::new(view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> RawSnapshot {
        new_entry(b"7".to_vec(), "before-upgrade", 0x30000, 2, 1 << 30)
    }

    #[test]
    fn entry_golden_layout() {
        let mut s = sample();
        s.date_sec = 0x0102_0304;
        s.date_nsec = 5;
        let mut out = Vec::new();
        encode_entry(&s, &mut out);
        // 40 fixed + 24 extra + 1 id + 14 name = 79, padded to 80.
        assert_eq!(out.len(), 80);
        assert_eq!(&out[0..8], &0x30000u64.to_be_bytes());
        assert_eq!(&out[8..12], &2u32.to_be_bytes());
        assert_eq!(&out[12..14], &1u16.to_be_bytes());
        assert_eq!(&out[14..16], &14u16.to_be_bytes());
        assert_eq!(&out[16..20], &0x0102_0304u32.to_be_bytes());
        assert_eq!(&out[36..40], &24u32.to_be_bytes());
        assert_eq!(&out[48..56], &(1u64 << 30).to_be_bytes(), "disk size");
        assert_eq!(&out[56..64], &[0xff; 8], "icount none");
        assert_eq!(out[64], b'7');
        assert_eq!(&out[65..79], b"before-upgrade");
        assert_eq!(out[79], 0);
        let (back, len) = parse_entry(&out).unwrap();
        assert_eq!((back, len), (s.clone(), 80));
        let e = s.entry(5);
        assert_eq!((e.disk_size, e.vm_state_size, e.icount), (1 << 30, 0, None));
    }

    #[test]
    fn ids_and_lookup() {
        let mut a = sample();
        a.id = b"3".to_vec();
        let mut b = sample();
        b.id = b"x".to_vec();
        b.name = b"other".to_vec();
        assert_eq!(next_id(&[a.clone(), b.clone()]), b"4");
        assert_eq!(next_id(&[]), b"1");
        let mut top = sample();
        top.id = u64::MAX.to_string().into_bytes();
        let mut one = sample();
        one.id = b"1".to_vec();
        assert_eq!(next_id(&[top, one]), b"2");
        let p = Path::new("/x");
        assert_eq!(find(p, &[a.clone(), b.clone()], "other").unwrap(), 1);
        assert!(matches!(
            find(p, &[a.clone()], "nope"),
            Err(SnapshotError::NotFound { .. })
        ));
        assert!(matches!(
            find(p, &[a.clone(), a], "before-upgrade"),
            Err(SnapshotError::Ambiguous { count: 2, .. })
        ));
        assert!(validate_name("").is_err());
        assert!(validate_name("a\0b").is_err());
        assert!(validate_name(&"n".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(validate_name("daily 2026-11-22").is_ok());
    }

    #[test]
    fn rejects_oversized_extra_and_truncation() {
        let mut out = Vec::new();
        encode_entry(&sample(), &mut out);
        assert!(parse_entry(&out[..39]).is_err());
        assert!(parse_entry(&out[..70]).is_err());
        let mut big = out.clone();
        big[36..40].copy_from_slice(&(MAX_EXTRA + 1).to_be_bytes());
        assert!(parse_entry(&big).is_err());
    }

    proptest! {
        #[test]
        fn entries_round_trip(
            l1 in any::<u64>(), l1_size in any::<u32>(),
            id in proptest::collection::vec(any::<u8>(), 0..40),
            name in proptest::collection::vec(any::<u8>(), 0..300),
            extra in proptest::collection::vec(any::<u8>(), 0..=MAX_EXTRA as usize),
            date in any::<(u32, u32, u64, u32)>(),
        ) {
            let s = RawSnapshot {
                l1_table_offset: l1, l1_size, id, name,
                date_sec: date.0, date_nsec: date.1, vm_clock_nsec: date.2,
                vm_state_size32: date.3, extra,
            };
            let second = sample();
            let table = encode_table(&[s.clone(), second.clone()]);
            prop_assert_eq!(table.len() % 8, 0);
            let (a, n) = parse_entry(&table).unwrap();
            prop_assert_eq!(&a, &s);
            let (b, m) = parse_entry(&table[n..]).unwrap();
            prop_assert_eq!(b, second);
            prop_assert_eq!(n + m, table.len());
        }

        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            if let Ok((raw, len)) = parse_entry(&bytes) {
                prop_assert!(len >= FIXED_LEN && len % 8 == 0);
                prop_assert!(raw.extra.len() <= MAX_EXTRA as usize);
            }
        }
    }
}
