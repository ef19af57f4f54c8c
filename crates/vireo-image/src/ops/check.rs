//! `check`: metadata consistency with `qemu-img check` exit-status semantics.
//!
//! qcow2 gets a full refcount recomputation ([`crate::qcow2::check`]); VMDK, VHD and VHDX are
//! checked by opening them (which validates their tables) and reading every allocated byte
//! (which validates grain/block pointers and compressed data); raw has nothing to check.

use std::path::Path;

use crate::device::{ExtentKind, Format, Limits, PathPolicy};
use crate::error::ImageError;
use crate::qcow2::CheckReport;

/// Bytes read per step when verifying foreign formats.
const VERIFY_STEP: u64 = 4 << 20;

/// Result of `check`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum CheckOutcome {
    Checked(CheckReport),
    /// The format has no metadata to check (raw).
    NotSupported {
        format: String,
    },
}

impl CheckOutcome {
    /// 0 clean, 1 check failed to complete, 2 corruptions, 3 leaks only, 63 not supported.
    pub fn exit_code(&self) -> i32 {
        match self {
            CheckOutcome::Checked(r) => r.exit_code(),
            CheckOutcome::NotSupported { .. } => 63,
        }
    }
}

/// Checks the image at `path`.
pub fn check(
    path: &Path,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<CheckOutcome, ImageError> {
    let format = crate::detect::detect_format(path)?;
    match format {
        Format::Qcow2 => Ok(CheckOutcome::Checked(crate::qcow2::check(path, limits)?)),
        Format::Raw => Ok(CheckOutcome::NotSupported {
            format: format.as_str().into(),
        }),
        Format::Vmdk | Format::Vhd | Format::Vhdx => {
            let mut report = CheckReport {
                filename: path.display().to_string(),
                format: format.as_str().into(),
                ..CheckReport::default()
            };
            let src = match crate::detect::open(path, limits, policy) {
                Ok(s) => s,
                Err(e @ ImageError::Corrupt { .. }) => {
                    report.corruptions += 1;
                    report.messages.push(format!("ERROR {e}"));
                    return Ok(CheckOutcome::Checked(report));
                }
                Err(e) => return Err(e),
            };
            let size = src.virtual_size();
            let unit = src.allocation_unit().max(512);
            let mut buf = vec![0u8; VERIFY_STEP as usize];
            let mut pos = 0u64;
            while pos < size {
                let ext = src.extent_at(pos)?;
                let end = pos.saturating_add(ext.length.max(1)).min(size);
                if ext.kind == ExtentKind::Zero {
                    pos = end;
                    continue;
                }
                let n = (end - pos).min(VERIFY_STEP);
                match src.read_at(&mut buf[..n as usize], pos) {
                    Ok(()) => pos += n,
                    Err(e @ ImageError::Corrupt { .. }) => {
                        report.corruptions += 1;
                        if report.messages.len() < 200 {
                            report
                                .messages
                                .push(format!("ERROR at guest offset {pos}: {e}"));
                        }
                        // Skip the damaged allocation unit and carry on.
                        pos = ((pos / unit) + 1) * unit;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(CheckOutcome::Checked(report))
        }
    }
}

/// Repairs refcount errors (leaks, too-low refcounts, a dirty bit left by a crash) of a qcow2
/// image by rebuilding its refcounts, then checks it again. Other formats: `NotSupported`.
pub fn repair(path: &Path, limits: &Limits) -> Result<CheckOutcome, ImageError> {
    match crate::detect::detect_format(path)? {
        Format::Qcow2 => Ok(CheckOutcome::Checked(crate::qcow2::repair(path, limits)?)),
        other => Ok(CheckOutcome::NotSupported {
            format: other.as_str().into(),
        }),
    }
}
