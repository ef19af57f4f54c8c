//! Growing the virtual size of a closed qcow2 image (`qemu-img resize` for growth only).
//!
//! The new guest range reads as zeros: growth is refused when it would expose anything else
//! (a backing file larger than the image, stale mappings past the old end, or non-zero bytes
//! in the old last cluster that cannot be zeroed in place). Internal snapshots keep their own
//! disk sizes and L1 tables.
//!
//! Crash safety is that of [`super::meta`]: a larger active L1 table is written to new
//! clusters, the header switches size, L1 size and L1 offset with one write, and the old
//! table is released afterwards; without L1 growth the size field alone is rewritten.

use std::path::{Path, PathBuf};

use super::compress;
use super::header::l1_entries_for;
use super::meta::{refused, MetaFile};
use super::reader::{decode_l1_entry, decode_l2_entry, Mapping, OFLAG_COPIED};
use crate::device::{Limits, PathPolicy};
use crate::error::ImageError;

/// Why a resize failed.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error(
        "{}: shrinking from {current} to {requested} bytes is not supported (data would be lost)",
        path.display()
    )]
    Shrink {
        path: PathBuf,
        current: u64,
        requested: u64,
    },
    #[error("{}: resizing {format} images is not supported", path.display())]
    UnsupportedFormat { path: PathBuf, format: &'static str },
    #[error("resizing {} failed", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
}

fn image_err(path: &Path) -> impl FnOnce(ImageError) -> ResizeError + '_ {
    move |source| ResizeError::Image {
        path: path.to_path_buf(),
        source,
    }
}

/// Grows the qcow2 image at `path` to `new_size` bytes (equal size: nothing to do). The
/// backing chain is opened through `policy` only to learn its size.
pub fn resize(
    path: &Path,
    new_size: u64,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<(), ResizeError> {
    let mut m = MetaFile::open(path, limits).map_err(image_err(path))?;
    let current = m.header.size;
    if new_size < current {
        return Err(ResizeError::Shrink {
            path: path.to_path_buf(),
            current,
            requested: new_size,
        });
    }
    if new_size == current {
        return Ok(());
    }
    if !new_size.is_multiple_of(512) {
        return Err(image_err(path)(ImageError::InvalidArgument(format!(
            "qcow2 sizes are whole 512-byte sectors; {new_size} is not"
        ))));
    }
    grow(&mut m, new_size, policy).map_err(image_err(path))?;
    tracing::info!(path = %path.display(), from = current, to = new_size, "qcow2 image grown");
    Ok(())
}

fn grow(m: &mut MetaFile, new_size: u64, policy: &PathPolicy) -> Result<(), ImageError> {
    let path = m.path.clone();
    let old = m.header.size;
    if new_size > m.limits.max_virtual_size {
        return Err(ImageError::LimitExceeded {
            what: "qcow2 virtual size",
            requested: new_size,
            limit: m.limits.max_virtual_size,
        });
    }
    if m.header.bitmaps.is_some()
        && m.header.autoclear_features & super::header::AUTOCLEAR_BITMAPS != 0
    {
        return Err(refused(&path, "the image has persistent dirty bitmaps"));
    }
    if let Some(reference) = &m.header.backing_file {
        let resolved = policy.resolve(&path, reference)?;
        let backing = crate::detect::open(&resolved, &m.limits, policy)?;
        if backing.virtual_size() > old {
            return Err(refused(
                &path,
                format!(
                    "the backing file ({} bytes) is larger than the image ({old} bytes): growing \
                     would expose its data",
                    backing.virtual_size()
                ),
            ));
        }
    }
    let l1 = m.read_l1(m.header.l1_table_offset, m.header.l1_size)?;
    check_nothing_past_end(m, &l1, old)?;

    let needed = l1_entries_for(new_size, m.header.cluster_bits);
    if needed <= u64::from(m.header.l1_size) {
        let (l1_size, l1_off) = (m.header.l1_size, m.header.l1_table_offset);
        return m.switch_active(new_size, l1_size, l1_off);
    }
    let needed32 = u32::try_from(needed).map_err(|_| ImageError::LimitExceeded {
        what: "qcow2 L1 entries",
        requested: needed,
        limit: u64::from(u32::MAX),
    })?;
    if needed * 8 > m.limits.max_table_bytes {
        return Err(ImageError::LimitExceeded {
            what: "qcow2 L1 table",
            requested: needed * 8,
            limit: m.limits.max_table_bytes,
        });
    }
    let (old_off, old_l1_size) = (m.header.l1_table_offset, m.header.l1_size);
    let mut new_l1 = l1;
    new_l1.resize(needed as usize, 0);
    let bytes: Vec<u8> = new_l1.iter().flat_map(|e| e.to_be_bytes()).collect();
    let new_off = m.write_new_table(&bytes)?;
    m.commit_refcounts()?;
    m.switch_active(new_size, needed32, new_off)?;
    m.begin_release()?;
    m.adjust_range(old_off, u64::from(old_l1_size) * 8, -1)?;
    m.commit_refcounts()
}

/// Makes sure the guest range past `old` reads as zeros once exposed: every cluster the
/// active L1 table maps past the last one is unallocated or a zero cluster (what QEMU leaves
/// after discarding VM state there), and the tail of a partial last cluster is zero (zeroed
/// in place when the cluster is not shared, refused otherwise).
fn check_nothing_past_end(m: &mut MetaFile, l1: &[u64], old: u64) -> Result<(), ImageError> {
    let cs = m.cluster_size();
    let per_l2 = cs / 8;
    let clusters = old.div_ceil(cs);
    let bound = m.file().metadata().map(|md| md.len()).unwrap_or(0);
    let (bits, version) = (m.header.cluster_bits, m.header.version);
    let first_l1 = (clusters / per_l2) as usize;
    for (i, &e) in l1.iter().enumerate().skip(first_l1) {
        let l2 = decode_l1_entry(e, bits, bound)?;
        if l2 == 0 {
            continue;
        }
        let start = if i == first_l1 {
            (clusters % per_l2) as usize
        } else {
            0
        };
        for &le in &m.read_l2(l2)?[start..] {
            match decode_l2_entry(le, bits, version, bound)? {
                Mapping::Unallocated | Mapping::Zero { .. } => {}
                Mapping::Data { .. } | Mapping::Compressed { .. } => {
                    return Err(refused(
                        &m.path,
                        "the image maps data past its virtual size",
                    ))
                }
            }
        }
    }
    let tail = old % cs;
    if tail == 0 {
        return Ok(());
    }
    let last = clusters - 1;
    let l2 = decode_l1_entry(l1[(last / per_l2) as usize], bits, bound)?;
    if l2 == 0 {
        return Ok(());
    }
    let entry = m.read_l2(l2)?[(last % per_l2) as usize];
    let mut cluster = vec![0u8; cs as usize];
    match decode_l2_entry(entry, bits, version, bound)? {
        Mapping::Unallocated | Mapping::Zero { .. } => return Ok(()),
        Mapping::Data { host } => {
            m.pread(&mut cluster, host)?;
            if cluster[tail as usize..].iter().all(|b| *b == 0) {
                return Ok(());
            }
            if entry & OFLAG_COPIED != 0 && m.get_rc(host / cs)? == 1 {
                m.pwrite(&vec![0u8; (cs - tail) as usize], host + tail)?;
                return m.sync();
            }
        }
        Mapping::Compressed { host, len } => {
            let len = len.min(bound.saturating_sub(host));
            let mut input = vec![0u8; len as usize];
            m.pread(&mut input, host)?;
            compress::decompress(m.header.compression_type, &input, &mut cluster)?;
            if cluster[tail as usize..].iter().all(|b| *b == 0) {
                return Ok(());
            }
        }
    }
    Err(refused(
        &m.path,
        "the last cluster holds data past the virtual size and is shared or compressed",
    ))
}
