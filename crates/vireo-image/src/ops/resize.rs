//! `resize`: grows an image's virtual size in place (qcow2 and raw; shrinking is refused,
//! since it would silently drop guest data).

use std::fs::OpenOptions;
use std::path::Path;

use crate::device::{Format, Limits, PathPolicy};
use crate::error::ImageError;
pub use crate::qcow2::ResizeError;

/// Grows the image at `path` (format detected by content) to `new_size` bytes. qcow2 images
/// keep their internal snapshots unchanged; raw files are extended sparsely.
pub fn resize(
    path: &Path,
    new_size: u64,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<(), ResizeError> {
    let image_err = |source| ResizeError::Image {
        path: path.to_path_buf(),
        source,
    };
    match crate::detect::detect_format(path).map_err(image_err)? {
        Format::Qcow2 => crate::qcow2::resize(path, new_size, limits, policy),
        Format::Raw => resize_raw(path, new_size, limits).map_err(|e| match e {
            RawResize::Shrink(current) => ResizeError::Shrink {
                path: path.to_path_buf(),
                current,
                requested: new_size,
            },
            RawResize::Image(source) => image_err(source),
        }),
        other => Err(ResizeError::UnsupportedFormat {
            path: path.to_path_buf(),
            format: other.as_str(),
        }),
    }
}

enum RawResize {
    Shrink(u64),
    Image(ImageError),
}

fn resize_raw(path: &Path, new_size: u64, limits: &Limits) -> Result<(), RawResize> {
    if new_size > limits.max_virtual_size {
        return Err(RawResize::Image(ImageError::LimitExceeded {
            what: "raw image size",
            requested: new_size,
            limit: limits.max_virtual_size,
        }));
    }
    let io =
        |what: &str, e| RawResize::Image(ImageError::io(format!("{what} {}", path.display()), e));
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io("opening", e))?;
    let current = file
        .metadata()
        .map_err(|e| io("reading metadata of", e))?
        .len();
    if new_size < current {
        return Err(RawResize::Shrink(current));
    }
    if new_size > current {
        file.set_len(new_size).map_err(|e| io("extending", e))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        tracing::info!(path = %path.display(), from = current, to = new_size, "raw image grown");
    }
    Ok(())
}
