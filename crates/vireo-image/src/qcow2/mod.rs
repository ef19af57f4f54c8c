//! qcow2 (versions 2 and 3): reader with backing chains, compressed (zlib/zstd) and zero
//! clusters; sequential writer; metadata checker; internal snapshots (list, create, apply,
//! delete, read-only views) and growth of closed images.
//!
//! Refused with a clear error: encryption, extended L2 entries (subclusters), external data
//! files, unknown incompatible features. Writing to an image marked corrupt is refused; a
//! dirty image (lazy refcounts not yet settled) is readable and reported by `info`/`check`.

mod check;
mod compress;
#[cfg(test)]
mod crash_tests;
pub mod header;
mod meta;
mod reader;
mod resize;
mod rw;
mod snapshot;
mod writer;

use std::path::Path;

pub use check::{check, CheckReport};
pub use header::{CompressionType, Header};
pub(crate) use reader::pread_fill;
pub use reader::{decode_l1_entry, decode_l2_entry, Mapping, Qcow2Image, Snapshot};
pub use resize::{resize, ResizeError};
pub use rw::{open_rw, repair, Qcow2Writer};
pub use snapshot::{
    open_snapshot, snapshot_apply, snapshot_create, snapshot_delete, snapshot_list, SnapshotEntry,
    SnapshotError, MAX_NAME_LEN,
};
pub use writer::{CreateOptions, Preallocation, Qcow2Encoder, Qcow2Sink};

use crate::detect::ChainContext;
use crate::device::{BlockSource, Limits, PathPolicy};
use crate::error::ImageError;

/// Whether `head` starts like a qcow2 image (version 2 or 3).
pub fn probe(head: &[u8]) -> bool {
    header::probe(head)
}

/// Opens a qcow2 image (and its backing chain) for reading.
pub fn open(
    path: &Path,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<Box<dyn BlockSource>, ImageError> {
    Ok(Box::new(open_image(path, limits, policy)?))
}

/// Opens a qcow2 image with its concrete type (for `info`, `check`, snapshots).
pub fn open_image(
    path: &Path,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<Qcow2Image, ImageError> {
    Qcow2Image::open_in_chain(path, limits, policy, &mut ChainContext::new_with(path)?)
}

/// Runs every read path of the qcow2 code over the file at `path` and checks the invariants
/// of what comes back (extents are non-empty, contiguous and inside the disk), ignoring
/// errors: the shared body of the fuzz target and the mutation tests. Work is bounded (at
/// most 4096 extents, 64 KiB read per extent).
#[doc(hidden)]
pub fn exercise(path: &Path, limits: &Limits, policy: &PathPolicy) {
    let _ = check(path, limits);
    let Ok(img) = open_image(path, limits, policy) else {
        return;
    };
    let size = img.virtual_size();
    let unit = img.allocation_unit();
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0u64;
    for _ in 0..4096 {
        if pos >= size {
            break;
        }
        match img.extent_at(pos) {
            Ok(e) => {
                assert_eq!(e.offset, pos, "extent starts where asked");
                assert!(
                    e.length >= 1 && e.length <= size - pos,
                    "extent inside the disk"
                );
                if e.kind != crate::device::ExtentKind::Zero {
                    let n = e.length.min(buf.len() as u64) as usize;
                    let _ = img.read_at(&mut buf[..n], pos);
                }
                pos += e.length;
            }
            Err(_) => pos = (pos / unit + 1) * unit,
        }
    }
    let _ = img.snapshots().len();
    let end = size.saturating_sub(1);
    let _ = img.read_at(&mut buf[..1.min(size as usize)], end);
}

/// Runs every editing path (snapshot create, apply, delete, growth) and the snapshot views
/// over the file at `path`, which it modifies, and checks the invariant that matters for
/// hostile input: an edit that accepts the image leaves it without structural errors and
/// without refcounts below their references. The shared body of the `qcow2_edit` fuzz target
/// and the edit mutation tests. Work is bounded by `limits`.
#[doc(hidden)]
pub fn exercise_edits(path: &Path, limits: &Limits, policy: &PathPolicy) {
    let consistent = |what: &str| {
        let Ok(r) = check(path, limits) else {
            panic!("{what} accepted the image but left it uncheckable");
        };
        let copied = r
            .messages
            .iter()
            .filter(|m| m.starts_with("ERROR OFLAG_COPIED"))
            .count() as u64;
        // Stale copied flags of an accepted image are not the edit's doing when it does
        // not rewrite flags (growth); everything else must be clean.
        if r.messages.len() < 200 {
            assert_eq!(r.check_errors, 0, "{what}: {r:?}");
            assert_eq!(r.corruptions, copied, "{what}: {r:?}");
        }
    };
    let names: Vec<String> = snapshot_list(path, limits)
        .map(|l| l.into_iter().map(|e| e.name).collect())
        .unwrap_or_default();
    if let Some(first) = names.first() {
        if let Ok(view) = open_snapshot(path, first, limits, policy) {
            let mut buf = vec![0u8; 4096.min(view.virtual_size()) as usize];
            let _ = view.read_at(&mut buf, 0);
        }
    }
    if snapshot_create(path, "fuzz", limits).is_ok() {
        consistent("create");
    }
    if let Some(first) = names.first() {
        if snapshot_apply(path, first, limits).is_ok() {
            consistent("apply");
        }
        if snapshot_delete(path, first, limits).is_ok() {
            consistent("delete");
        }
    }
    let size = std::fs::File::open(path)
        .ok()
        .and_then(|f| rw::read_header(&f, path, limits).ok())
        .map(|h| h.size);
    if let Some(size) = size {
        let grown = (size + (3 << 20)).next_multiple_of(512);
        if resize(path, grown, limits, policy).is_ok() {
            consistent("grow");
        }
    }
}
