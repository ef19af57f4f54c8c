//! OVA packages: a tar of an OVF descriptor, an optional manifest (`.mf`) and certificate
//! (`.cert`), and the disk files.
//!
//! [`import()`] reads the archive once, front to back: the descriptor must be the first member
//! (DSP0243), the disks it references are extracted into the destination directory while
//! every member is hashed (SHA-1, SHA-256, SHA-512), the manifest is checked against those
//! digests, and each disk is converted to qcow2 through the ops layer ([`crate::ops`]).
//! [`export()`] writes the inverse: OVF envelope, SHA-256 manifest and streamOptimized VMDKs, to
//! a temporary file renamed over the destination when complete.
//!
//! Layout: `import.rs` (extract, verify, convert), `export.rs` (pack), `manifest.rs` (`.mf`
//! parsing, digests and their verification), [`tar`] (the archive format); this file holds
//! the progress types and the cleanup guard both directions share.
//!
//! Invariants:
//! - member names are validated by [`tar::safe_name`] and only referenced disk files are
//!   written, each under a name Vireo chooses inside `dest_dir`, so nothing is created
//!   outside it;
//! - sizes are capped before reading: descriptor, manifest and certificate by
//!   `Limits::max_descriptor_bytes`, disk members by `Limits::max_virtual_size`;
//! - with a manifest present every member it lists must exist with a matching digest and every
//!   member but the manifest and certificate must be listed; a `.cert` is recorded but its
//!   signature is not verified (Vireo has no X.509 trust store);
//! - on any error, files the import created are removed.

mod export;
mod import;
mod manifest;
pub mod tar;

pub use export::{export, export_with, ExportedOva};
pub use import::{
    extract, extract_with, import, import_with, ExtractedDisk, ExtractedOva, ImportedDisk,
    ImportedOva,
};
pub use manifest::{parse_manifest, DigestAlgorithm, ManifestEntry, ManifestStatus};

use std::path::PathBuf;

use crate::error::ImageError;

/// Format URI VMware and DSP0243 use for stream-optimized VMDK disks.
pub const VMDK_STREAM_FORMAT: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

fn bad(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "ova",
        detail: detail.into(),
    }
}

/// Phase of a long OVA operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum OvaPhase {
    /// Reading the archive (bytes of the archive).
    Extracting,
    /// Converting disk `disk` (guest bytes).
    Converting { disk: String },
    /// Writing disk `disk` as a stream-optimized VMDK (guest bytes).
    Exporting { disk: String },
    /// Writing the archive (bytes of the archive).
    Packing,
}

/// Progress report of [`import()`] / [`export()`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OvaProgress {
    #[serde(flatten)]
    pub phase: OvaPhase,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// Removes the files it tracks unless disarmed (cleanup on error).
#[derive(Debug, Default)]
struct Cleanup {
    paths: Vec<PathBuf>,
    armed: bool,
}

impl Cleanup {
    fn new() -> Self {
        Cleanup {
            paths: Vec::new(),
            armed: true,
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            for p in &self.paths {
                // Best effort: the file may already be gone.
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(p)
                } else {
                    std::fs::remove_file(p)
                };
            }
        }
    }
}
