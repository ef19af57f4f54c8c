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

    /// Parses a format name as qemu spells it ("vpc" for VHD; "vhd" is accepted too).
    pub fn from_qemu_name(name: &str) -> Option<Format> {
        match name {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            "vmdk" => Some(Format::Vmdk),
            "vpc" | "vhd" => Some(Format::Vhd),
            "vhdx" => Some(Format::Vhdx),
            _ => None,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
            Err(ImageError::PathNotAllowed {
                reference: reference.to_string(),
            })
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

    /// Preferred write granularity in bytes (a power of two): converters skip all-zero units of
    /// this size and hand the sink whole units where they can. Default: 4 KiB.
    fn unit_size(&self) -> u64 {
        4096
    }

    /// For sinks that store units encoded (e.g. compressed clusters): an encoder that
    /// converters may run on worker threads. Default: none, units are written with `write_at`.
    fn unit_encoder(&self) -> Option<std::sync::Arc<dyn UnitEncoder>> {
        None
    }

    /// Reserves storage for the guest run `[offset, offset + len)` and returns where its bytes
    /// must be written, or `None` when the caller should use `write_at` instead. After a
    /// `Some`, the sink already maps the run; the caller must write all `len` bytes there
    /// before calling `finish`. Only offered for 4 KiB-aligned runs of whole units that the
    /// sink has not stored yet. Default: `None`.
    fn place(&mut self, offset: u64, len: u64) -> Result<Option<Placement>, ImageError> {
        let _ = (offset, len);
        Ok(None)
    }

    /// Stores one unit (starting at the unit-aligned guest `offset`) that
    /// [`UnitEncoder::encode`] produced. Only called when [`BlockSink::unit_encoder`] returned
    /// an encoder; other sinks reject it.
    fn write_encoded(&mut self, offset: u64, encoded: Vec<u8>) -> Result<(), ImageError> {
        let _ = encoded;
        Err(ImageError::InvalidArgument(format!(
            "encoded unit at offset {offset} given to a sink without an encoder"
        )))
    }
}

/// Where a sink wants a run of guest data stored, so that a converter can perform the write
/// itself, possibly on another thread and in parallel with other placed writes.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The file to write (opened for writing; may use `O_DIRECT`, so the buffer address,
    /// offset and length must be multiples of 4 KiB — [`crate::dio::AlignedBuf`]).
    pub file: std::sync::Arc<std::fs::File>,
    /// Byte offset in `file` where the run's first byte goes.
    pub offset: u64,
}

/// Encodes whole units for a sink off the writer thread (see [`BlockSink::unit_encoder`]).
pub trait UnitEncoder: Send + Sync + std::fmt::Debug {
    /// Encodes one unit (`unit.len()` is the unit size, or less for the last unit of the
    /// disk). `None` means "store it plainly with `write_at`" (e.g. incompressible data).
    fn encode(&self, unit: &[u8]) -> Result<Option<Vec<u8>>, ImageError>;
}
