//! VMware VMDK: text descriptors and embedded descriptors; monolithicSparse, streamOptimized,
//! monolithicFlat, twoGbMaxExtentSparse/Flat (and any descriptor made of FLAT, VMFS, SPARSE and
//! ZERO extents); delta disks through `parentFileNameHint`. Writers for monolithicSparse and
//! streamOptimized (the OVA export format).
//!
//! Invariants:
//! - extent and parent file names come from untrusted descriptors and are only ever opened after
//!   [`PathPolicy::resolve`] accepted them;
//! - metadata tables are bounded by [`Limits`], grain tables are cached (bounded), decompressed
//!   grains are cached (bounded) and every offset read from the file is range-checked;
//! - reads use positioned I/O only, so one opened image serves many threads.

mod descriptor;
mod image;
mod sink;
mod sparse;

use std::path::{Path, PathBuf};

pub use descriptor::{Access, ExtentType};
pub use image::VmdkImage;
pub use sink::{SparseSink, StreamSink, MAX_CAPACITY};

use crate::device::{BlockSink, BlockSource, Limits, PathPolicy};
use crate::error::ImageError;

/// The VMDK variants Vireo writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VmdkSubformat {
    /// One growable sparse file with an embedded descriptor.
    MonolithicSparse,
    /// Compressed, grain-ordered sparse file for OVF/OVA packages.
    StreamOptimized,
}

/// Structural facts about an opened VMDK (for `image info`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VmdkInfo {
    pub path: PathBuf,
    /// `createType` of the descriptor (monolithicSparse, streamOptimized, …).
    pub create_type: Option<String>,
    pub virtual_size: u64,
    pub cid: Option<u32>,
    pub parent_cid: Option<u32>,
    pub parent_file_name_hint: Option<String>,
    /// Resolved path of the parent image of a delta disk.
    pub parent: Option<PathBuf>,
    /// `ddb.adapterType` (ide, lsilogic, buslogic, legacyESX, pvscsi).
    pub adapter_type: Option<String>,
    pub hardware_version: Option<String>,
    pub extents: Vec<VmdkExtentInfo>,
}

/// One extent of a VMDK.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VmdkExtentInfo {
    pub kind: ExtentType,
    pub access: Access,
    /// Resolved file; `None` for ZERO extents.
    pub file: Option<PathBuf>,
    /// Guest bytes this extent maps.
    pub virtual_size: u64,
    /// Byte offset into a FLAT extent's file.
    pub flat_offset: u64,
    pub sparse: Option<SparseInfo>,
}

/// Header facts of a sparse extent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SparseInfo {
    pub version: u32,
    /// Grain size in bytes.
    pub grain_size: u64,
    pub grain_table_entries: u32,
    pub compressed: bool,
    pub markers: bool,
}

/// True when `head` (the first bytes of a file, up to 64 KiB) is a VMDK sparse extent or a
/// VMDK text descriptor.
pub fn probe(head: &[u8]) -> bool {
    head.starts_with(&sparse::MAGIC) || descriptor::looks_like_descriptor(head)
}

/// Opens a VMDK (descriptor file or monolithic sparse file) as a guest view.
pub fn open(
    path: &Path,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<Box<dyn BlockSource>, ImageError> {
    Ok(Box::new(VmdkImage::open(path, limits, policy)?))
}

/// Opens `path` and reports its structure.
pub fn describe(path: &Path, limits: &Limits, policy: &PathPolicy) -> Result<VmdkInfo, ImageError> {
    Ok(VmdkImage::open(path, limits, policy)?.info().clone())
}

/// Creates a new VMDK of `virtual_size` bytes (rounded up to whole sectors) at `path`.
pub fn create_sink(
    path: &Path,
    virtual_size: u64,
    sub: VmdkSubformat,
) -> Result<Box<dyn BlockSink>, ImageError> {
    Ok(match sub {
        VmdkSubformat::MonolithicSparse => Box::new(SparseSink::create(path, virtual_size)?),
        VmdkSubformat::StreamOptimized => Box::new(StreamSink::create(path, virtual_size)?),
    })
}

/// Opens `path` as a VMDK and reads its guest view, extent by extent (bounded), ignoring
/// errors. For fuzz targets and robustness tests: must never panic or allocate beyond
/// `limits`.
pub fn exercise(path: &Path, limits: &Limits, policy: &PathPolicy) {
    let _ = describe(path, limits, policy);
    if let Ok(img) = open(path, limits, policy) {
        exercise_guest_view(img.as_ref());
    }
}

/// Walks up to 4096 extents of `src` from the start, reading up to 64 KiB of each non-zero
/// one, plus the last byte; checks the extent contract. Shared by the foreign readers'
/// `exercise` entry points.
pub(crate) fn exercise_guest_view(src: &dyn BlockSource) {
    let size = src.virtual_size();
    let unit = src.allocation_unit().max(1);
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0u64;
    for _ in 0..4096 {
        if pos >= size {
            break;
        }
        match src.extent_at(pos) {
            Ok(e) => {
                assert_eq!(e.offset, pos, "extent starts where asked");
                assert!(
                    e.length >= 1 && e.length <= size - pos,
                    "extent inside the disk"
                );
                if e.kind != crate::device::ExtentKind::Zero {
                    let n = e.length.min(buf.len() as u64) as usize;
                    let _ = src.read_at(&mut buf[..n], pos);
                }
                pos += e.length;
            }
            Err(_) => pos = (pos / unit + 1).saturating_mul(unit),
        }
    }
    if size > 0 {
        let _ = src.read_at(&mut buf[..1], size - 1);
        // An unaligned read across the first allocation unit boundary.
        let n = (buf.len() as u64).min(size) as usize;
        let start = (size - n as u64).min(unit.saturating_sub(n as u64 / 2));
        let _ = src.read_at(&mut buf[..n], start);
    }
}
