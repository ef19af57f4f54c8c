//! `info`: what an image is, with JSON field names following `qemu-img info --output json`.
//!
//! Invariant: the backing chain is reported as nested `backing-image` entries, each opened
//! under the same [`Limits`] and [`PathPolicy`] as the top image (so a chain that could not
//! be read cannot be described either).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::device::{Format, Limits, PathPolicy};
use crate::error::ImageError;
use crate::qcow2::{CompressionType, Snapshot};

/// qcow2-specific facts (`format-specific.data` in qemu's output).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Qcow2Specific {
    /// "0.10" for version 2, "1.1" for version 3 (qemu's names).
    pub compat: String,
    pub compression_type: CompressionType,
    pub lazy_refcounts: bool,
    pub refcount_bits: u32,
    pub corrupt: bool,
    pub extended_l2: bool,
}

/// `format-specific` as qemu nests it: `{"type": "qcow2", "data": {…}}`. Foreign formats
/// carry their reader's structural description.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum FormatSpecific {
    Qcow2(Qcow2Specific),
    Vmdk(serde_json::Value),
    #[serde(rename = "vpc")]
    Vhd(serde_json::Value),
    Vhdx(serde_json::Value),
}

/// Description of an image and (nested) its backing chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub filename: String,
    /// qemu's format name ("qcow2", "raw", "vmdk", "vpc", "vhdx").
    pub format: String,
    pub virtual_size: u64,
    /// Bytes allocated on the host filesystem.
    pub actual_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_flag: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename_format: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<Snapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<FormatSpecific>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_image: Option<Box<ImageInfo>>,
}

impl ImageInfo {
    /// The chain from this image down to its base, top first.
    pub fn chain(&self) -> Vec<&ImageInfo> {
        let mut out = vec![self];
        let mut cur = self;
        while let Some(b) = &cur.backing_image {
            out.push(b);
            cur = b;
        }
        out
    }
}

fn actual_size(path: &Path) -> Result<u64, ImageError> {
    let m = std::fs::metadata(path)
        .map_err(|e| ImageError::io(format!("reading metadata of {}", path.display()), e))?;
    Ok(m.blocks() * 512)
}

/// Describes the image at `path` (format detected by content) and its backing chain.
pub fn info(path: &Path, limits: &Limits, policy: &PathPolicy) -> Result<ImageInfo, ImageError> {
    let format = crate::detect::detect_format(path)?;
    let filename = path.display().to_string();
    if format == Format::Qcow2 {
        let img = crate::qcow2::open_image(path, limits, policy)?;
        let h = img.header();
        let backing_image = match img.backing_path() {
            Some(p) => Some(Box::new(info(p, limits, policy)?)),
            None => None,
        };
        return Ok(ImageInfo {
            filename,
            format: format.as_str().into(),
            virtual_size: h.size,
            actual_size: actual_size(path)?,
            cluster_size: Some(h.cluster_size()),
            dirty_flag: Some(h.is_dirty()),
            backing_filename: h.backing_file.clone(),
            full_backing_filename: img.backing_path().map(|p| p.display().to_string()),
            backing_filename_format: h.backing_format.clone(),
            snapshots: img.snapshots().to_vec(),
            format_specific: Some(FormatSpecific::Qcow2(Qcow2Specific {
                compat: if h.version >= 3 { "1.1" } else { "0.10" }.into(),
                compression_type: h.compression_type,
                lazy_refcounts: h.lazy_refcounts(),
                refcount_bits: h.refcount_bits(),
                corrupt: h.is_corrupt(),
                extended_l2: false,
            })),
            backing_image,
        });
    }
    let src = crate::detect::open(path, limits, policy)?;
    let to_json = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| ImageError::InvalidArgument(format!("describing {}: {e}", path.display())))
    };
    let format_specific = match format {
        Format::Vmdk => Some(FormatSpecific::Vmdk(to_json(serde_json::to_value(
            crate::vmdk::describe(path, limits, policy)?,
        ))?)),
        Format::Vhd => Some(FormatSpecific::Vhd(to_json(serde_json::to_value(
            crate::vhd::describe(path, limits, policy)?,
        ))?)),
        Format::Vhdx => Some(FormatSpecific::Vhdx(to_json(serde_json::to_value(
            crate::vhdx::describe(path, limits, policy)?,
        ))?)),
        Format::Raw | Format::Qcow2 => None,
    };
    Ok(ImageInfo {
        filename,
        format: format.as_str().into(),
        virtual_size: src.virtual_size(),
        actual_size: actual_size(path)?,
        cluster_size: (format != Format::Raw).then(|| src.allocation_unit()),
        dirty_flag: (format != Format::Raw).then_some(false),
        backing_filename: None,
        full_backing_filename: None,
        backing_filename_format: None,
        snapshots: Vec::new(),
        format_specific,
        backing_image: None,
    })
}
