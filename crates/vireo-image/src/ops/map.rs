//! `map`: the allocation extents of an image, merged, streamed to a callback (an image can
//! have billions of extents, so nothing is collected here).

use std::path::Path;

use crate::device::{BlockSource, ExtentKind, Limits, PathPolicy};
use crate::error::ImageError;

/// One merged extent, as printed by `vireo image map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub kind: ExtentKind,
    /// Reads return data stored in this image or its backing chain.
    pub data: bool,
    /// Known to read as zeros.
    pub zero: bool,
}

/// Streams the merged extents of the image at `path` to `out`.
pub fn map(
    path: &Path,
    limits: &Limits,
    policy: &PathPolicy,
    out: &mut dyn FnMut(MapEntry) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let src = crate::detect::open(path, limits, policy)?;
    map_source(src.as_ref(), out)
}

/// Streams the merged extents of an open image to `out`.
pub fn map_source(
    src: &dyn BlockSource,
    out: &mut dyn FnMut(MapEntry) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let size = src.virtual_size();
    let mut pos = 0u64;
    let mut cur: Option<MapEntry> = None;
    while pos < size {
        let e = src.extent_at(pos)?;
        let len = e.length.max(1).min(size - pos);
        match &mut cur {
            Some(c) if c.kind == e.kind && c.start + c.length == pos => c.length += len,
            _ => {
                if let Some(c) = cur.take() {
                    out(c)?;
                }
                cur = Some(MapEntry {
                    start: pos,
                    length: len,
                    kind: e.kind,
                    data: e.kind != ExtentKind::Zero,
                    zero: e.kind == ExtentKind::Zero,
                });
            }
        }
        pos += len;
    }
    if let Some(c) = cur {
        out(c)?;
    }
    Ok(())
}
