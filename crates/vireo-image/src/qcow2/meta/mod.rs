//! Metadata editor for a closed qcow2 image: exact reference counts, cluster allocation with
//! its refcounts, and the write ordering that makes internal-snapshot and resize operations
//! crash-safe on version 2 and 3 images alike (no dirty bit needed).
//!
//! Protocol of every operation built on [`MetaFile`]:
//! 1. [`MetaFile::open`] takes an exclusive lock (qemu's byte-range locks, so a running QEMU
//!    or `qemu-img` on the same file is detected), refuses dirty or corrupt images and
//!    validates all metadata: no structural error, no stored refcount below the number of
//!    references, no two structures (or a structure and data) sharing a cluster;
//! 2. *up*: new structures are written to newly allocated clusters and the refcounts of
//!    everything newly referenced are raised; [`MetaFile::commit_refcounts`] writes refcount
//!    blocks, then the refcount table, and syncs;
//! 3. *switch*: one write inside the first sector of the header points it at the new
//!    structures, then sync;
//! 4. *down*: refcounts of what is no longer referenced are lowered and committed;
//! 5. copied flags of the active L1/L2 tables are set from the committed refcounts
//!    ([`MetaFile::fix_copied_flags`]; clearing them is always safe, so an operation that
//!    shares clusters clears them before its switch).
//!
//! Invariants:
//! - a stored refcount is never below the number of references on disk, at any point of a
//!   crash: a crash leaks clusters at worst, never frees one that is in use;
//! - clusters are allocated only before the down phase, from clusters whose refcount was zero
//!   when the operation began (holes inside the file, then the end of the file), so nothing
//!   released by the operation is reused before the release is durable;
//! - multi-cluster tables are allocated at the end of the file (contiguous by construction);
//! - memory: the refcount blocks covering the file plus the tables being edited.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::check::walk_references;
use super::header::{put_u32, put_u64, Header};
use super::reader::{
    decode_l1_entry, decode_l2_entry, pread_fill, read_table, Mapping, OFLAG_COPIED,
};
use super::writer::{get_refcount, set_refcount};
use crate::device::Limits;

mod refcount;
use crate::error::ImageError;

/// Highest host offset an L1/L2 entry can hold (bits 9..=55).
const MAX_HOST_OFFSET: u64 = 1 << 56;
/// Recursion bound for refcount-block placement (each level advances by one cluster; two or
/// three levels are the most any real layout needs).
const MAX_BLOCK_DEPTH: u32 = 8;
/// Reserved low bits of a refcount table entry.
const REFTABLE_RESERVED: u64 = 0x1ff;

pub(crate) fn refused(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::WriteRefused {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn corrupt(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "qcow2",
        detail: detail.into(),
    }
}

/// Sets (`F_WRLCK`) or drops (`F_UNLCK`) our lock over qemu's image-lock bytes: QEMU holds
/// shared locks on bytes 100.. (permissions it uses) and 200.. (permissions it does not
/// share) of every image it has open, so an exclusive lock over that range fails while any
/// QEMU process uses the image, and QEMU cannot open it while we hold the lock.
fn ofd_lock(file: &File, kind: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `flock` is plain old data; all-zero is a valid value that is then filled in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 100;
    fl.l_len = 200;
    // SAFETY: the descriptor is open for the lifetime of `file`; `fl` is a valid flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Takes the lock, retrying briefly: a child process forked elsewhere in this process may
/// hold a just-closed descriptor (and its lock) until it executes its program.
fn lock_exclusive(file: &File, path: &Path) -> Result<(), ImageError> {
    let mut attempts = 0;
    loop {
        let err = match ofd_lock(file, libc::F_WRLCK) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) if attempts < 10 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Some(libc::EAGAIN) | Some(libc::EACCES) => {
                return Err(ImageError::InUse {
                    path: path.to_path_buf(),
                })
            }
            _ => return Err(ImageError::io(format!("locking {}", path.display()), err)),
        }
    }
}

/// Fault injection for the crash tests: once armed, writes after the given number are lost,
/// as if the machine had lost power at that point. Writes since the last sync are recorded
/// with the bytes they replaced, so a test can also undo any subset of them: the disk may
/// have persisted unsynced writes in any order.
#[cfg(test)]
pub(crate) mod crash {
    use std::cell::{Cell, RefCell};
    use std::os::unix::fs::FileExt;

    thread_local! {
        static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
        static UNSYNCED: RefCell<Vec<(u64, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn arm(writes: Option<usize>) {
        LEFT.with(|l| l.set(writes));
        UNSYNCED.with(|u| u.borrow_mut().clear());
    }

    /// Whether the next write is lost; otherwise counts it and records what it overwrites.
    pub(crate) fn lose_write(file: &std::fs::File, off: u64, len: usize) -> bool {
        LEFT.with(|l| match l.get() {
            None => false,
            Some(0) => true,
            Some(n) => {
                l.set(Some(n - 1));
                let mut old = vec![0u8; len];
                let mut done = 0;
                while done < len {
                    match file.read_at(&mut old[done..], off + done as u64) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => done += k,
                    }
                }
                // Bytes past the end of the file read back as zeros once it is extended.
                UNSYNCED.with(|u| u.borrow_mut().push((off, old)));
                false
            }
        })
    }

    /// A sync made the recorded writes durable (unless the machine is already "dead").
    pub(crate) fn synced() {
        if !crashed() {
            UNSYNCED.with(|u| u.borrow_mut().clear());
        }
    }

    /// Whether the armed budget ran out (the operation "crashed").
    pub(crate) fn crashed() -> bool {
        LEFT.with(|l| l.get() == Some(0))
    }

    /// Undoes the unsynced writes whose index `keep` rejects (latest first), as if the disk
    /// had not persisted them.
    pub(crate) fn undo_unsynced(path: &std::path::Path, keep: impl Fn(usize) -> bool) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let writes = UNSYNCED.with(|u| std::mem::take(&mut *u.borrow_mut()));
        for (i, (off, old)) in writes.iter().enumerate().rev() {
            if !keep(i) {
                f.write_all_at(old, *off).unwrap();
            }
        }
    }
}

#[derive(Debug)]
struct Block {
    data: Vec<u8>,
    dirty: bool,
}

/// What a cluster holds, for the overlap check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Header,
    RefTable,
    RefBlock,
    SnapshotTable,
    L1(u64),
    L2,
}

/// A qcow2 image opened for metadata edits (see the module documentation).
#[derive(Debug)]
pub(crate) struct MetaFile {
    pub(crate) path: PathBuf,
    file: File,
    pub(crate) header: Header,
    pub(crate) limits: Limits,
    cs: u64,
    per_block: u64,
    rc_max: u64,
    reftable: Vec<u64>,
    reftable_dirty: bool,
    /// A refcount table written to a new place (offset, clusters), not yet in the header.
    new_reftable: Option<(u64, u64)>,
    /// Byte ranges to release in the down phase (the replaced refcount table).
    deferred: Vec<(u64, u64)>,
    blocks: HashMap<u64, Block>,
    /// File length when opened, in clusters: the hole scan stays below it.
    orig_clusters: u64,
    /// Next cluster the hole scan looks at.
    hole: u64,
    /// Next cluster-aligned offset at the end of the file.
    end: u64,
    /// Set once the down phase began: allocation is then an internal error.
    releasing: bool,
}

impl MetaFile {
    /// Opens, locks and validates the image at `path` (see the module documentation).
    pub(crate) fn open(path: &Path, limits: &Limits) -> Result<MetaFile, ImageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ImageError::io(format!("opening {} for writing", path.display()), e))?;
        lock_exclusive(&file, path)?;
        let header = super::rw::read_header(&file, path, limits)?;
        if header.is_corrupt() {
            return Err(refused(path, "the image is marked corrupt"));
        }
        if header.is_dirty() {
            return Err(refused(
                path,
                "the image is dirty (refcounts not settled after a crash or lazy-refcount use); \
                 repair it first (`vireo image check --repair`)",
            ));
        }
        let len = super::rw::file_len(&file, path)?;
        let cs = header.cluster_size();
        let rt_entries = u64::from(header.refcount_table_clusters) * cs / 8;
        let reftable = read_table(
            &file,
            path,
            header.refcount_table_offset,
            rt_entries,
            limits,
            "qcow2 refcount table",
        )?;
        let mut meta = MetaFile {
            path: path.to_path_buf(),
            file,
            cs,
            per_block: cs * 8 / u64::from(header.refcount_bits()),
            rc_max: if header.refcount_bits() == 64 {
                u64::MAX
            } else {
                (1u64 << header.refcount_bits()) - 1
            },
            header,
            limits: *limits,
            reftable,
            reftable_dirty: false,
            new_reftable: None,
            deferred: Vec::new(),
            blocks: HashMap::new(),
            orig_clusters: len.div_ceil(cs),
            hole: 1,
            end: len.next_multiple_of(cs),
            releasing: false,
        };
        meta.validate()?;
        Ok(meta)
    }

    /// Releases the image lock now (it would otherwise last as long as any process that
    /// inherited the descriptor).
    fn unlock(&self) {
        if let Err(e) = ofd_lock(&self.file, libc::F_UNLCK) {
            tracing::warn!(path = %self.path.display(), error = %e, "releasing the image lock");
        }
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn cluster_size(&self) -> u64 {
        self.cs
    }

    /// Upper bound of host offsets that tables may reference (the file grows as we append).
    fn host_bound(&self) -> u64 {
        self.end.max(self.orig_clusters * self.cs)
    }

    // ---- validation -------------------------------------------------------------------

    fn validate(&mut self) -> Result<(), ImageError> {
        let (computed, report, _) =
            walk_references(&self.file, &self.path, &self.header, &self.limits, true)?;
        if report.corruptions > 0 || report.check_errors > 0 {
            let first = report.messages.first().cloned().unwrap_or_default();
            return Err(refused(
                &self.path,
                format!(
                    "the image metadata has {} errors (first: {first})",
                    report.corruptions + report.check_errors
                ),
            ));
        }
        for (c, &n) in computed.iter().enumerate() {
            let stored = self.get_rc(c as u64)?;
            if stored < u64::from(n) {
                return Err(refused(
                    &self.path,
                    format!(
                        "cluster {c} has refcount {stored} but {n} references; repair the \
                         image first (`vireo image check --repair`)"
                    ),
                ));
            }
        }
        self.check_overlaps(&computed)
    }

    /// Refuses images in which two metadata structures, or a structure and guest data, share
    /// a cluster: in-place edits of one would corrupt the other.
    fn check_overlaps(&self, computed: &[u32]) -> Result<(), ImageError> {
        let cs = self.cs;
        let mut roles: HashMap<u64, (Role, u64)> = HashMap::new();
        let mut claim = |off: u64, len: u64, role: Role, times: u64| -> Result<(), ImageError> {
            if len == 0 {
                return Ok(());
            }
            for c in off / cs..=(off + len - 1) / cs {
                let slot = roles.entry(c).or_insert((role, 0));
                if slot.0 != role {
                    return Err(corrupt(format!(
                        "cluster {c} is used as both {:?} and {role:?}",
                        slot.0
                    )));
                }
                slot.1 += times;
            }
            Ok(())
        };
        claim(0, cs, Role::Header, 1)?;
        claim(
            self.header.refcount_table_offset,
            u64::from(self.header.refcount_table_clusters) * cs,
            Role::RefTable,
            1,
        )?;
        for &e in &self.reftable {
            let off = e & !REFTABLE_RESERVED;
            if off != 0 {
                claim(off, cs, Role::RefBlock, 1)?;
            }
        }
        let (snaps, table_len) =
            super::snapshot::read_raw_table(&self.file, &self.path, &self.header, &self.limits)?;
        claim(
            self.header.snapshots_offset,
            table_len,
            Role::SnapshotTable,
            1,
        )?;
        let mut l1s: Vec<(u64, u32)> = vec![(self.header.l1_table_offset, self.header.l1_size)];
        l1s.extend(snaps.iter().map(|s| (s.l1_table_offset, s.l1_size)));
        let mut l2s: BTreeMap<u64, u64> = BTreeMap::new();
        for (off, size) in l1s {
            claim(off, u64::from(size) * 8, Role::L1(off), 1)?;
            for e in self.read_l1(off, size)? {
                let l2 = decode_l1_entry(e, self.header.cluster_bits, self.host_bound())?;
                if l2 != 0 {
                    *l2s.entry(l2).or_default() += 1;
                }
            }
        }
        for (l2, times) in l2s {
            claim(l2, cs, Role::L2, times)?;
        }
        for (c, (role, times)) in roles {
            let n = computed.get(c as usize).map_or(0, |n| u64::from(*n));
            if n != times {
                return Err(corrupt(format!(
                    "cluster {c} ({role:?}) is also referenced as data or by another structure"
                )));
            }
        }
        Ok(())
    }

    // ---- tables ---------------------------------------------------------------------

    pub(crate) fn read_l1(&self, offset: u64, entries: u32) -> Result<Vec<u64>, ImageError> {
        read_table(
            &self.file,
            &self.path,
            offset,
            u64::from(entries),
            &self.limits,
            "qcow2 L1 table",
        )
    }

    pub(crate) fn read_l2(&self, offset: u64) -> Result<Vec<u64>, ImageError> {
        let limits = Limits {
            max_table_bytes: self.cs,
            ..self.limits
        };
        read_table(
            &self.file,
            &self.path,
            offset,
            self.cs / 8,
            &limits,
            "qcow2 L2 table",
        )
    }

    pub(crate) fn pwrite(&self, buf: &[u8], off: u64) -> Result<(), ImageError> {
        #[cfg(test)]
        if crash::lose_write(&self.file, off, buf.len()) {
            return Ok(());
        }
        self.file
            .write_all_at(buf, off)
            .map_err(|e| ImageError::io(format!("writing {} at {off}", self.path.display()), e))
    }

    pub(crate) fn pread(&self, buf: &mut [u8], off: u64) -> Result<(), ImageError> {
        pread_fill(&self.file, buf, off, &self.path)
    }

    pub(crate) fn write_table(&self, entries: &[u64], off: u64) -> Result<(), ImageError> {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.pwrite(&bytes, off)
    }

    pub(crate) fn sync(&self) -> Result<(), ImageError> {
        #[cfg(test)]
        crash::synced();
        super::rw::sync(&self.file, &self.path)
    }

    /// Writes a table into newly allocated clusters (zero-padded to whole clusters) and
    /// returns its offset.
    pub(crate) fn write_new_table(&mut self, bytes: &[u8]) -> Result<u64, ImageError> {
        let clusters = (bytes.len() as u64).div_ceil(self.cs).max(1);
        let off = self.alloc_clusters(clusters)?;
        let mut padded = bytes.to_vec();
        padded.resize((clusters * self.cs) as usize, 0);
        self.pwrite(&padded, off)?;
        Ok(off)
    }

    // ---- header switches (each one write inside the first sector, then sync) ----------

    fn write_header_at(&self, at: u64, bytes: &[u8]) -> Result<(), ImageError> {
        self.pwrite(bytes, at)?;
        self.sync()
    }

    /// Points the header at a snapshot table.
    pub(crate) fn switch_snapshot_table(&mut self, nb: u32, offset: u64) -> Result<(), ImageError> {
        let mut b = [0u8; 12];
        put_u32(&mut b, 0, nb);
        put_u64(&mut b, 4, offset);
        self.write_header_at(60, &b)?;
        self.header.nb_snapshots = nb;
        self.header.snapshots_offset = offset;
        Ok(())
    }

    /// Sets the virtual size and the active L1 table (bytes 24..48: size, crypt method,
    /// L1 size, L1 offset).
    pub(crate) fn switch_active(
        &mut self,
        size: u64,
        l1_size: u32,
        l1_offset: u64,
    ) -> Result<(), ImageError> {
        let mut b = [0u8; 24];
        put_u64(&mut b, 0, size);
        put_u32(&mut b, 8, 0);
        put_u32(&mut b, 12, l1_size);
        put_u64(&mut b, 16, l1_offset);
        self.write_header_at(24, &b)?;
        self.header.size = size;
        self.header.l1_size = l1_size;
        self.header.l1_table_offset = l1_offset;
        Ok(())
    }

    /// Sets the copied flag on exactly those active L1 and L2 entries whose cluster has
    /// refcount one (qemu's invariant), writing only tables that change. Refcounts must be
    /// committed.
    pub(crate) fn fix_copied_flags(&mut self) -> Result<(), ImageError> {
        if self.blocks.values().any(|b| b.dirty) || self.new_reftable.is_some() {
            return Err(corrupt(
                "copied flags fixed before refcounts were committed",
            ));
        }
        let bits = self.header.cluster_bits;
        let mut l1 = self.read_l1(self.header.l1_table_offset, self.header.l1_size)?;
        let mut l1_changed = false;
        let mut seen: HashSet<u64> = HashSet::new();
        for e in l1.iter_mut() {
            let l2 = decode_l1_entry(*e, bits, self.host_bound())?;
            let want = l2 != 0 && self.get_rc(l2 / self.cs)? == 1;
            let new = if want {
                *e | OFLAG_COPIED
            } else {
                *e & !OFLAG_COPIED
            };
            if new != *e {
                *e = new;
                l1_changed = true;
            }
            if l2 == 0 || !seen.insert(l2) {
                continue;
            }
            let mut table = self.read_l2(l2)?;
            let mut changed = false;
            for le in table.iter_mut() {
                let want = match decode_l2_entry(*le, bits, self.header.version, self.host_bound())?
                {
                    Mapping::Data { host } => self.get_rc(host / self.cs)? == 1,
                    Mapping::Zero { host } if host != 0 => self.get_rc(host / self.cs)? == 1,
                    Mapping::Compressed { .. } => false,
                    Mapping::Unallocated | Mapping::Zero { .. } => continue,
                };
                let new = if want {
                    *le | OFLAG_COPIED
                } else {
                    *le & !OFLAG_COPIED
                };
                if new != *le {
                    *le = new;
                    changed = true;
                }
            }
            if changed {
                self.write_table(&table, l2)?;
            }
        }
        if l1_changed {
            self.write_table(&l1, self.header.l1_table_offset)?;
        }
        self.sync()
    }
}

impl Drop for MetaFile {
    fn drop(&mut self) {
        self.unlock();
    }
}
