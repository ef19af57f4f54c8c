//! The two traits every format implements, and the shared policy types.
//!
//! [`BlockSource`] is the guest-visible view of a disk image: `read_at` takes `&self` so that
//! converters can read from several threads at once (implementations use positioned reads and
//! interior caches behind locks). Offsets are guest byte offsets.

use std::path::{Path, PathBuf};

use crate::error::ImageError;

/// Image formats Vireo understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
    Vhdx,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vpc",
            Format::Vhdx => "vhdx",
        }
    }
}

/// What a guest range holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentKind {
    /// Allocated data in this image.
    Data,
    /// Known to read as zeros (zero cluster/grain, or unallocated with no backing).
    Zero,
    /// Not allocated here; reads come from the backing image (only when one exists).
    Backing,
}

/// A contiguous guest range of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub kind: ExtentKind,
}

/// Caps that keep hostile images from exhausting memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest metadata table (L1, BAT, grain directory, refcount table…) loaded at once.
    pub max_table_bytes: u64,
    /// Largest accepted virtual size.
    pub max_virtual_size: u64,
    /// Longest backing chain.
    pub max_chain_depth: usize,
    /// Largest descriptor/XML document.
    pub max_descriptor_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_table_bytes: 256 << 20,
            max_virtual_size: 64 << 40,
            max_chain_depth: 64,
            max_descriptor_bytes: 16 << 20,
        }
    }
}

/// Where referenced files (backing files, VMDK extents, OVA members) may live.
#[derive(Debug, Clone, Default)]
pub struct PathPolicy {
    /// Directories a referenced file must resolve (canonically) into. Empty = only the
    /// directory of the referencing image.
    pub allowed_dirs: Vec<PathBuf>,
}

impl PathPolicy {
    /// Resolves `reference` (relative to the directory of `referrer`, or absolute) and checks
    /// that the canonical result lies inside an allowed directory.
    pub fn resolve(&self, referrer: &Path, reference: &str) -> Result<PathBuf, ImageError> {
        let base = referrer.parent().unwrap_or(Path::new("."));
        let joined = if Path::new(reference).is_absolute() {
            PathBuf::from(reference)
        } else {
            base.join(reference)
        };
        let canon = joined.canonicalize().map_err(|e| ImageError::Io {
            context: format!("resolving referenced file {reference:?}"),
            source: e,
        })?;
        let base_canon = base.canonicalize().map_err(|e| ImageError::Io {
            context: format!("resolving directory of {}", referrer.display()),
            source: e,
        })?;
        let allowed = if self.allowed_dirs.is_empty() {
            canon.starts_with(&base_canon)
        } else {
            self.allowed_dirs
                .iter()
                .filter_map(|d| d.canonicalize().ok())
                .any(|d| canon.starts_with(d))
        };
        if allowed {
            Ok(canon)
        } else {
            Err(ImageError::PathNotAllowed { reference: reference.to_string() })
        }
    }
}

/// Guest-visible, read-only view of an image.
pub trait BlockSource: Send + Sync + std::fmt::Debug {
    fn format(&self) -> Format;
    /// Guest-visible size in bytes.
    fn virtual_size(&self) -> u64;
    /// Fills `buf` with guest bytes starting at `offset`. `offset + buf.len()` must not exceed
    /// the virtual size. Unallocated ranges read as the backing image or zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError>;
    /// The extent that starts at `offset` (its length is at least 1 and never crosses the
    /// virtual size). Used by converters to skip holes and by `image map`.
    fn extent_at(&self, offset: u64) -> Result<Extent, ImageError>;
    /// Granularity in bytes of allocation (cluster/grain/block size; 512 for raw).
    fn allocation_unit(&self) -> u64;
}

/// Sequential-friendly writer of a new image. Callers write whole allocation units where they
/// can and call [`BlockSink::finish`] exactly once; a sink that is dropped without `finish`
/// leaves an incomplete file that the caller deletes (writes go to a temp file then rename).
pub trait BlockSink: Send {
    /// Writes guest data at `offset`. Ranges that are entirely zero may be skipped by callers;
    /// sinks must make skipped ranges read as zero.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError>;
    /// Flushes metadata and makes the image consistent.
    fn finish(self: Box<Self>) -> Result<(), ImageError>;
}
