//! `compare`: are two images the same as the guest sees them? (`qemu-img compare` semantics:
//! formats and allocation do not matter; if the sizes differ, the larger image's extra bytes
//! must all be zero.)
//!
//! Invariant: ranges both images report as known-zero are never read; memory is two buffers
//! of [`STEP`] bytes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::device::{BlockSource, ExtentKind, Limits, PathPolicy};
use crate::error::ImageError;
use crate::raw::is_zero;

const STEP: u64 = 4 << 20;

/// Result of a comparison.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum CompareOutcome {
    Identical,
    /// First guest byte offset at which the images differ.
    Differ {
        offset: u64,
    },
}

impl CompareOutcome {
    /// 0 identical, 1 different (errors are 2, reported by the caller).
    pub fn exit_code(&self) -> i32 {
        match self {
            CompareOutcome::Identical => 0,
            CompareOutcome::Differ { .. } => 1,
        }
    }
}

/// Compares the images at `a` and `b` (formats detected by content).
pub fn compare(
    a: &Path,
    b: &Path,
    limits: &Limits,
    policy: &PathPolicy,
    cancel: &AtomicBool,
) -> Result<CompareOutcome, ImageError> {
    let sa = crate::detect::open(a, limits, policy)?;
    let sb = crate::detect::open(b, limits, policy)?;
    compare_sources(sa.as_ref(), sb.as_ref(), cancel)
}

/// Length of the known-zero run at `pos` (0 if the range may hold data).
fn zero_run(src: &dyn BlockSource, pos: u64) -> Result<u64, ImageError> {
    let e = src.extent_at(pos)?;
    Ok(if e.kind == ExtentKind::Zero {
        e.length.max(1)
    } else {
        0
    })
}

/// Compares two open images.
pub fn compare_sources(
    a: &dyn BlockSource,
    b: &dyn BlockSource,
    cancel: &AtomicBool,
) -> Result<CompareOutcome, ImageError> {
    let common = a.virtual_size().min(b.virtual_size());
    let mut ba = vec![0u8; STEP as usize];
    let mut bb = vec![0u8; STEP as usize];
    let mut pos = 0u64;
    while pos < common {
        if cancel.load(Ordering::Relaxed) {
            return Err(ImageError::Cancelled);
        }
        let (za, zb) = (zero_run(a, pos)?, zero_run(b, pos)?);
        if za > 0 && zb > 0 {
            pos = pos.saturating_add(za.min(zb)).min(common);
            continue;
        }
        // Read up to the end of the other image's zero run (or one step) and compare bytes.
        let n = STEP.min(common - pos).min(if za > 0 {
            za
        } else if zb > 0 {
            zb
        } else {
            STEP
        }) as usize;
        std::thread::scope(|s| -> Result<(), ImageError> {
            let ha = s.spawn(|| a.read_at(&mut ba[..n], pos));
            b.read_at(&mut bb[..n], pos)?;
            ha.join()
                .map_err(|_| ImageError::InvalidArgument("reader thread panicked".into()))?
        })?;
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            return Ok(CompareOutcome::Differ {
                offset: pos + i as u64,
            });
        }
        pos += n as u64;
    }
    // The larger image's tail must read as zeros.
    let larger = if a.virtual_size() > common { a } else { b };
    let size = larger.virtual_size();
    while pos < size {
        if cancel.load(Ordering::Relaxed) {
            return Err(ImageError::Cancelled);
        }
        let z = zero_run(larger, pos)?;
        if z > 0 {
            pos = pos.saturating_add(z).min(size);
            continue;
        }
        let n = STEP.min(size - pos) as usize;
        larger.read_at(&mut ba[..n], pos)?;
        if !is_zero(&ba[..n]) {
            let i = ba[..n].iter().position(|x| *x != 0).unwrap_or(0);
            return Ok(CompareOutcome::Differ {
                offset: pos + i as u64,
            });
        }
        pos += n as u64;
    }
    Ok(CompareOutcome::Identical)
}
