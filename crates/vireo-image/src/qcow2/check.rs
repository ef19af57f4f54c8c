//! Consistency check of a qcow2 file: walk all metadata, recompute every cluster's reference
//! count, compare with the stored refcounts (the semantics of `qemu-img check`).
//!
//! Invariants:
//! - read-only: the image is never modified;
//! - work and memory are bounded by the file size and [`Limits`]: each distinct L1/L2 table is
//!   read once and its references are added with a multiplicity (hostile images that point
//!   thousands of L1 entries at one L2 table cost one read, not thousands);
//! - a stored refcount lower than the computed one is a corruption (data could be freed while
//!   in use); a higher one is a leak (space wasted), exactly as qemu classifies them.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::Header;
use super::reader::{
    decode_l1_entry, decode_l2_entry, pread_fill, read_table, Mapping, OFFSET_MASK, OFLAG_COPIED,
};
use super::writer::{get_refcount, set_refcount};
use crate::device::Limits;
use crate::error::ImageError;

/// Most individual messages kept in a report (counts are always complete).
const MAX_MESSAGES: usize = 200;
/// Total L1 entries (over all distinct L1 tables) a check walks at most.
const MAX_TOTAL_L1_ENTRIES: u64 = 64 << 20;

/// Result of a check, with field names as `qemu-img check --output json` uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckReport {
    pub filename: String,
    pub format: String,
    /// Internal errors that stopped parts of the check.
    pub check_errors: u64,
    pub corruptions: u64,
    pub leaks: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_end_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_clusters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated_clusters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fragmented_clusters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed_clusters: Option<u64>,
    pub dirty_flag: bool,
    pub corrupt_flag: bool,
    /// Human-readable findings, at most `MAX_MESSAGES` (200).
    pub messages: Vec<String>,
}

impl CheckReport {
    /// Exit status with `qemu-img check` semantics: 0 clean, 1 check could not complete,
    /// 2 corruptions, 3 only leaks.
    pub fn exit_code(&self) -> i32 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }

    fn corruption(&mut self, msg: String) {
        self.corruptions += 1;
        self.note(msg);
    }

    fn note(&mut self, msg: String) {
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(msg);
        }
    }
}

struct Checker<'a> {
    file: &'a File,
    path: &'a Path,
    header: &'a Header,
    limits: &'a Limits,
    computed: Vec<u32>,
    report: CheckReport,
}

impl Checker<'_> {
    fn cs(&self) -> u64 {
        self.header.cluster_size()
    }

    /// Adds `times` references to every cluster overlapping `[offset, offset+len)`.
    fn reference(&mut self, offset: u64, len: u64, times: u64, what: &str) {
        if len == 0 {
            return;
        }
        let cs = self.cs();
        let Some(last) = offset.checked_add(len - 1) else {
            self.report
                .corruption(format!("ERROR {what} at {offset:#x}: range overflows"));
            return;
        };
        let first_c = offset / cs;
        let last_c = last / cs;
        if last_c >= self.computed.len() as u64 {
            self.report.corruption(format!(
                "ERROR {what} at {offset:#x} is beyond the end of the image file"
            ));
        }
        let add = u32::try_from(times).unwrap_or(u32::MAX);
        for c in first_c..=last_c.min(self.computed.len() as u64 - 1) {
            let slot = &mut self.computed[c as usize];
            *slot = slot.saturating_add(add);
        }
    }

    fn read_u64_table(
        &mut self,
        offset: u64,
        entries: u64,
        what: &'static str,
    ) -> Option<Vec<u64>> {
        match read_table(self.file, self.path, offset, entries, self.limits, what) {
            Ok(t) => Some(t),
            Err(e) => {
                self.report.check_errors += 1;
                self.report
                    .note(format!("ERROR reading {what} at {offset:#x}: {e}"));
                None
            }
        }
    }
}

/// Walks all metadata of the image and counts the references to every cluster of the file.
/// With `include_refcount_structures`, the refcount table and blocks count too (what `check`
/// compares against); without, they are left out (what a rebuild needs, since it replaces
/// them). Returns the counts, a report of structural findings, and the refcount block offsets
/// that are usable (0 for missing or invalid ones).
pub(crate) fn walk_references(
    file: &File,
    path: &Path,
    header: &Header,
    limits: &Limits,
    include_refcount_structures: bool,
) -> Result<(Vec<u32>, CheckReport, Vec<u64>), ImageError> {
    let file_len = file
        .metadata()
        .map_err(|e| ImageError::io(format!("reading metadata of {}", path.display()), e))?
        .len();
    let cs = header.cluster_size();
    let nb_clusters = file_len.div_ceil(cs);
    // Computed and stored counts, 4 bytes each per cluster.
    let counter_bytes = nb_clusters.saturating_mul(8);
    if counter_bytes > limits.max_table_bytes {
        return Err(ImageError::LimitExceeded {
            what: "qcow2 check refcount array",
            requested: counter_bytes,
            limit: limits.max_table_bytes,
        });
    }
    let mut ck = Checker {
        file,
        path,
        header,
        limits,
        computed: vec![0u32; nb_clusters as usize],
        report: CheckReport {
            filename: path.display().to_string(),
            format: "qcow2".into(),
            dirty_flag: header.is_dirty(),
            corrupt_flag: header.is_corrupt(),
            ..CheckReport::default()
        },
    };
    // Header cluster (includes extensions and the backing file name).
    ck.reference(0, cs, 1, "header");

    // Distinct L1 tables with how often they are referenced (active + snapshots).
    let mut l1_tables: BTreeMap<(u64, u32), u64> = BTreeMap::new();
    *l1_tables
        .entry((header.l1_table_offset, header.l1_size))
        .or_default() += 1;
    match super::snapshot::read_raw_table(file, path, header, limits) {
        Ok((snaps, table_len)) => {
            for s in &snaps {
                *l1_tables.entry((s.l1_table_offset, s.l1_size)).or_default() += 1;
            }
            ck.reference(header.snapshots_offset, table_len, 1, "snapshot table");
        }
        Err(e) => {
            ck.report.corruption(format!("ERROR snapshot table: {e}"));
        }
    }
    let total_l1: u64 = l1_tables.keys().map(|(_, n)| u64::from(*n)).sum();
    if total_l1 > MAX_TOTAL_L1_ENTRIES {
        return Err(ImageError::LimitExceeded {
            what: "qcow2 L1 entries to check",
            requested: total_l1 * 8,
            limit: MAX_TOTAL_L1_ENTRIES * 8,
        });
    }

    // L1 tables → distinct L2 tables with multiplicities.
    let mut l2_tables: BTreeMap<u64, u64> = BTreeMap::new();
    for (&(off, size), &times) in &l1_tables {
        ck.reference(off, u64::from(size) * 8, times, "L1 table");
        if !off.is_multiple_of(cs) {
            ck.report.corruption(format!(
                "ERROR L1 table offset {off:#x} is not cluster-aligned"
            ));
            continue;
        }
        let Some(l1) = ck.read_u64_table(off, u64::from(size), "L1 table") else {
            continue;
        };
        for (i, &e) in l1.iter().enumerate() {
            match decode_l1_entry(e, header.cluster_bits, file_len) {
                Ok(0) => {}
                Ok(l2) => *l2_tables.entry(l2).or_default() += times,
                Err(err) => ck.report.corruption(format!("ERROR L1 entry {i}: {err}")),
            }
        }
    }
    for (&l2_off, &times) in &l2_tables {
        ck.reference(l2_off, cs, times, "L2 table");
        let Some(l2) = ck.read_u64_table(l2_off, cs / 8, "L2 table") else {
            continue;
        };
        for (i, &e) in l2.iter().enumerate() {
            match decode_l2_entry(e, header.cluster_bits, header.version, file_len) {
                Ok(Mapping::Unallocated) => {}
                Ok(Mapping::Zero { host }) => {
                    if host != 0 {
                        if !host.is_multiple_of(cs) {
                            ck.report.corruption(format!(
                                "ERROR zero cluster {host:#x} in L2 table {l2_off:#x} is not aligned"
                            ));
                        } else {
                            ck.reference(host, cs, times, "preallocated zero cluster");
                        }
                    }
                }
                Ok(Mapping::Data { host }) => ck.reference(host, cs, times, "data cluster"),
                Ok(Mapping::Compressed { host, len }) => {
                    ck.reference(host, len, times, "compressed cluster");
                }
                Err(err) => ck
                    .report
                    .corruption(format!("ERROR L2 table {l2_off:#x} entry {i}: {err}")),
            }
        }
    }

    // Refcount table and blocks.
    let rt_entries = u64::from(header.refcount_table_clusters) * cs / 8;
    let rt_times = u64::from(include_refcount_structures);
    ck.reference(
        header.refcount_table_offset,
        u64::from(header.refcount_table_clusters) * cs,
        rt_times,
        "refcount table",
    );
    let reftable = ck
        .read_u64_table(header.refcount_table_offset, rt_entries, "refcount table")
        .unwrap_or_default();
    let mut valid_blocks: Vec<u64> = vec![0; reftable.len()];
    for (i, &e) in reftable.iter().enumerate() {
        let off = e & !0x1ff;
        if e & 0x1ff != 0 {
            ck.report.corruption(format!(
                "ERROR refcount table entry {i} has reserved bits set"
            ));
        }
        if off == 0 {
            continue;
        }
        if !off.is_multiple_of(cs) {
            ck.report.corruption(format!(
                "ERROR refcount block {i} at {off:#x} is not cluster-aligned"
            ));
            continue;
        }
        if off.saturating_add(cs) > file_len {
            ck.report.corruption(format!(
                "ERROR refcount block {i} at {off:#x} is outside the image"
            ));
            continue;
        }
        ck.reference(off, cs, rt_times, "refcount block");
        valid_blocks[i] = off;
    }

    // Bitmaps: directory, bitmap tables and their data clusters.
    if let Some(bm) = header.bitmaps {
        check_bitmaps(
            &mut ck,
            bm.directory_offset,
            bm.directory_size,
            bm.nb_bitmaps,
        );
    }
    Ok((ck.computed, ck.report, valid_blocks))
}

/// Checks the qcow2 image at `path`. Errors are returned only when the image cannot be
/// checked at all (unreadable, header invalid); findings are in the report.
pub fn check(path: &Path, limits: &Limits) -> Result<CheckReport, ImageError> {
    let file =
        File::open(path).map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
    let file_len = file
        .metadata()
        .map_err(|e| ImageError::io(format!("reading metadata of {}", path.display()), e))?
        .len();
    let mut head = vec![0u8; (2u64 << 20).min(file_len) as usize];
    pread_fill(&file, &mut head, 0, path)?;
    let header = Header::parse(&head, limits)?;
    let cs = header.cluster_size();
    let nb_clusters = file_len.div_ceil(cs);
    let (computed, report, valid_blocks) = walk_references(&file, path, &header, limits, true)?;
    let mut ck = Checker {
        file: &file,
        path,
        header: &header,
        limits,
        computed,
        report,
    };

    // Compare stored and computed refcounts.
    let order = header.refcount_order;
    let per_block = cs * 8 / u64::from(header.refcount_bits());
    let mut block_buf = vec![0u8; cs as usize];
    let mut loaded_block: Option<usize> = None;
    let mut stored_of = |ck: &mut Checker, c: u64| -> u64 {
        let bi = (c / per_block) as usize;
        let Some(&off) = valid_blocks.get(bi) else {
            return 0;
        };
        if off == 0 {
            return 0;
        }
        if loaded_block != Some(bi) {
            if let Err(e) = pread_fill(ck.file, &mut block_buf, off, ck.path) {
                ck.report.check_errors += 1;
                ck.report
                    .note(format!("ERROR reading refcount block at {off:#x}: {e}"));
                block_buf.fill(0);
            }
            loaded_block = Some(bi);
        }
        get_refcount(&block_buf, (c % per_block) as usize, order)
    };
    let mut stored_all: Vec<u32> = Vec::with_capacity(nb_clusters as usize);
    for c in 0..nb_clusters {
        let stored = stored_of(&mut ck, c);
        stored_all.push(u32::try_from(stored).unwrap_or(u32::MAX));
        let computed = u64::from(ck.computed[c as usize]);
        if stored != computed {
            if stored > computed {
                ck.report.leaks += 1;
                ck.report.note(format!(
                    "Leaked cluster {c} refcount={stored} reference={computed}"
                ));
            } else {
                ck.report.corruption(format!(
                    "ERROR cluster {c} refcount={stored} reference={computed}"
                ));
            }
        }
    }

    // Active mapping: "copied" flags must say whether the refcount is exactly one; statistics.
    let stored_at = |host: u64| {
        stored_all
            .get((host / cs) as usize)
            .map_or(0, |n| u64::from(*n))
    };
    let mut allocated = 0u64;
    let mut fragmented = 0u64;
    let mut compressed = 0u64;
    let mut image_end = 0u64;
    let mut prev_host: Option<u64> = None;
    if let Some(l1) = ck.read_u64_table(
        header.l1_table_offset,
        u64::from(header.l1_size),
        "L1 table",
    ) {
        for &e in &l1 {
            let Ok(l2_off) = decode_l1_entry(e, header.cluster_bits, file_len) else {
                continue;
            };
            if l2_off == 0 {
                continue;
            }
            if (e & OFLAG_COPIED != 0) != (stored_at(l2_off) == 1) {
                ck.report.corruption(format!(
                    "ERROR OFLAG_COPIED L2 cluster: l1_entry={e:#x} refcount={}",
                    stored_at(l2_off)
                ));
            }
            let Some(l2) = ck.read_u64_table(l2_off, cs / 8, "L2 table") else {
                continue;
            };
            for &le in &l2 {
                match decode_l2_entry(le, header.cluster_bits, header.version, file_len) {
                    Ok(Mapping::Data { host }) => {
                        allocated += 1;
                        if prev_host.is_some_and(|p| p + cs != host) {
                            fragmented += 1;
                        }
                        prev_host = Some(host);
                        if (le & OFLAG_COPIED != 0) != (stored_at(host) == 1) {
                            ck.report.corruption(format!(
                                "ERROR OFLAG_COPIED data cluster: l2_entry={le:#x} refcount={}",
                                stored_at(host)
                            ));
                        }
                    }
                    Ok(Mapping::Compressed { host, .. }) => {
                        // Compressed clusters count as fragmented, as qemu counts them.
                        allocated += 1;
                        compressed += 1;
                        fragmented += 1;
                        if le & OFLAG_COPIED != 0 {
                            ck.report.corruption(format!(
                                "ERROR compressed cluster {host:#x} has the copied flag set"
                            ));
                        }
                        prev_host = None;
                    }
                    _ => {}
                }
            }
        }
    }
    for (c, &n) in ck.computed.iter().enumerate().rev() {
        if n > 0 {
            image_end = (c as u64 + 1) * cs;
            break;
        }
    }
    ck.report.image_end_offset = Some(image_end.max(cs));
    ck.report.total_clusters = Some(header.size.div_ceil(cs));
    ck.report.allocated_clusters = Some(allocated);
    ck.report.fragmented_clusters = Some(fragmented);
    ck.report.compressed_clusters = Some(compressed);
    Ok(ck.report)
}

/// References the bitmap directory, bitmap tables and bitmap data clusters.
fn check_bitmaps(ck: &mut Checker, dir_offset: u64, dir_size: u64, nb: u32) {
    let cs = ck.cs();
    if dir_size > ck.limits.max_table_bytes || dir_size > 64 << 20 {
        ck.report
            .corruption(format!("ERROR bitmap directory of {dir_size} bytes"));
        return;
    }
    ck.reference(dir_offset, dir_size, 1, "bitmap directory");
    let mut dir = vec![0u8; dir_size as usize];
    if let Err(e) = pread_fill(ck.file, &mut dir, dir_offset, ck.path) {
        ck.report.check_errors += 1;
        ck.report
            .note(format!("ERROR reading bitmap directory: {e}"));
        return;
    }
    let mut pos = 0usize;
    for i in 0..nb {
        let Some(fixed) = dir.get(pos..pos + 24) else {
            ck.report
                .corruption(format!("ERROR bitmap directory entry {i} is truncated"));
            return;
        };
        let table_off = u64::from_be_bytes(fixed[0..8].try_into().unwrap_or_default());
        let table_size = u32::from_be_bytes(fixed[8..12].try_into().unwrap_or_default());
        let name_size = u16::from_be_bytes(fixed[18..20].try_into().unwrap_or_default());
        let extra = u32::from_be_bytes(fixed[20..24].try_into().unwrap_or_default());
        pos += (24 + extra as usize + name_size as usize).next_multiple_of(8);
        ck.reference(table_off, u64::from(table_size) * 8, 1, "bitmap table");
        let Some(table) = ck.read_u64_table(table_off, u64::from(table_size), "bitmap table")
        else {
            continue;
        };
        for e in table {
            let off = e & OFFSET_MASK;
            if off != 0 {
                ck.reference(off, cs, 1, "bitmap data cluster");
            }
        }
    }
}

/// Writes fresh refcount structures for the image at the end of the file, counting exactly
/// the references its metadata makes (plus the new structures themselves), and returns the
/// new refcount table's offset and size in clusters. The caller points the header at them;
/// until then the old structures stay in force, so a crash in between changes nothing.
/// Refuses images whose metadata has errors other than refcount mismatches.
pub(crate) fn rebuild_refcounts(
    file: &File,
    path: &Path,
    header: &Header,
    limits: &Limits,
) -> Result<(u64, u32), ImageError> {
    let (mut refs, report, _) = walk_references(file, path, header, limits, false)?;
    if report.corruptions > 0 || report.check_errors > 0 {
        return Err(ImageError::WriteRefused {
            path: path.to_path_buf(),
            reason: format!(
                "the metadata has {} errors that rebuilding refcounts cannot fix",
                report.corruptions + report.check_errors
            ),
        });
    }
    let cs = header.cluster_size();
    let used = refs.len() as u64;
    let bits = u64::from(header.refcount_bits());
    let per_block = cs * 8 / bits;
    let (mut blocks, mut table_clusters) = (0u64, 0u64);
    loop {
        let total = used + blocks + table_clusters;
        let b = total.div_ceil(per_block);
        let t = (b * 8).div_ceil(cs).max(1);
        if b == blocks && t == table_clusters {
            break;
        }
        (blocks, table_clusters) = (b, t);
    }
    let total = used + blocks + table_clusters;
    if table_clusters > u64::from(u32::MAX) || total.saturating_mul(4) > limits.max_table_bytes {
        return Err(ImageError::LimitExceeded {
            what: "rebuilt qcow2 refcount structures",
            requested: total.saturating_mul(4),
            limit: limits.max_table_bytes,
        });
    }
    refs.resize(total as usize, 1);
    let max = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    if let Some((c, n)) = refs.iter().enumerate().find(|(_, n)| u64::from(**n) > max) {
        return Err(ImageError::InvalidArgument(format!(
            "cluster {c} has {n} references, more than {bits}-bit refcounts hold"
        )));
    }
    let blocks_offset = used * cs;
    let table_offset = (used + blocks) * cs;
    let mut block = vec![0u8; cs as usize];
    let mut table = vec![0u8; (table_clusters * cs) as usize];
    for b in 0..blocks {
        block.fill(0);
        let first = b * per_block;
        for c in first..(first + per_block).min(total) {
            set_refcount(
                &mut block,
                (c - first) as usize,
                u64::from(refs[c as usize]),
                header.refcount_order,
            );
        }
        let off = blocks_offset + b * cs;
        file.write_all_at(&block, off).map_err(|e| {
            ImageError::io(format!("writing refcount block to {}", path.display()), e)
        })?;
        super::header::put_u64(&mut table, (b * 8) as usize, off);
    }
    file.write_all_at(&table, table_offset)
        .map_err(|e| ImageError::io(format!("writing refcount table to {}", path.display()), e))?;
    Ok((table_offset, table_clusters as u32))
}
