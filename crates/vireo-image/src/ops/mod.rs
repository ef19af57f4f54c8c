//! Image operations built on the format readers and writers: `create`, `info`, `convert`,
//! `check`, `compare`, `map`, `resize` (the `qemu-img` verbs Vireo needs, without QEMU).
//!
//! Invariants:
//! - operations that produce a file write it to a temporary file in the destination directory
//!   and rename it into place only after it is complete and synced: an error, a cancel or a
//!   crash never leaves a half-written destination (`TempTarget`);
//! - inputs are opened by content through [`crate::detect`], with the caller's [`Limits`] and
//!   [`PathPolicy`].

mod check;
mod compare;
mod convert;
mod info;
mod map;
mod resize;

pub use check::{check, repair, CheckOutcome};
pub use compare::{compare, compare_sources, CompareOutcome};
pub use convert::{convert, convert_with, copy, ConvertOptions, CopyStats, Progress, CHUNK};
pub use info::{info, FormatSpecific, ImageInfo, Qcow2Specific};
pub use map::{map, map_source, MapEntry};
pub use resize::{resize, ResizeError};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::device::{BlockSink, Format, Limits, PathPolicy};
use crate::error::ImageError;
use crate::qcow2::{CreateOptions, Qcow2Sink};
use crate::raw::RawSink;
use crate::vmdk::VmdkSubformat;

/// A file being produced under a temporary name next to its destination. Dropping it without
/// [`TempTarget::commit`] deletes the temporary file.
#[derive(Debug)]
pub(crate) struct TempTarget {
    tmp: PathBuf,
    dst: PathBuf,
    committed: bool,
}

impl TempTarget {
    pub(crate) fn new(dst: &Path) -> Result<TempTarget, ImageError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = dst.file_name().ok_or_else(|| {
            ImageError::InvalidArgument(format!("{} is not a file path", dst.display()))
        })?;
        let dir = match dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.vireo-{}-{unique}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        Ok(TempTarget {
            tmp,
            dst: dst.to_path_buf(),
            committed: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the finished temporary file over the destination; with `sync`, first flushes
    /// it to stable storage (so a crash cannot leave a renamed but incomplete file).
    pub(crate) fn commit(mut self, sync: bool) -> Result<(), ImageError> {
        if sync {
            let f = std::fs::File::open(&self.tmp)
                .map_err(|e| ImageError::io(format!("opening {}", self.tmp.display()), e))?;
            f.sync_all()
                .map_err(|e| ImageError::io(format!("syncing {}", self.tmp.display()), e))?;
        }
        std::fs::rename(&self.tmp, &self.dst).map_err(|e| {
            ImageError::io(
                format!("renaming {} to {}", self.tmp.display(), self.dst.display()),
                e,
            )
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempTarget {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the file may not exist yet if creation failed.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Opens an image by content for reading, or with `snapshot`, the internal snapshot of that
/// name of a qcow2 image (a read-only view: see [`crate::qcow2::open_snapshot`]). An unknown
/// snapshot name is an [`ImageError::InvalidArgument`] naming it.
pub fn open_source(
    path: &Path,
    snapshot: Option<&str>,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<Box<dyn crate::device::BlockSource>, ImageError> {
    let Some(name) = snapshot else {
        return crate::detect::open(path, limits, policy);
    };
    let format = crate::detect::detect_format(path)?;
    if format != Format::Qcow2 {
        return Err(ImageError::InvalidArgument(format!(
            "{} is a {format} image; only qcow2 images have internal snapshots",
            path.display()
        )));
    }
    crate::qcow2::open_snapshot(path, name, limits, policy).map_err(|e| match e {
        crate::qcow2::SnapshotError::Image { source, .. } => source,
        other => ImageError::InvalidArgument(other.to_string()),
    })
}

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// Backing file as it should be recorded (relative paths are relative to the new image).
    pub backing: Option<PathBuf>,
    /// qcow2 parameters (version, cluster size, preallocation, lazy refcounts…). The backing
    /// fields are filled from `backing`.
    pub qcow2: CreateOptions,
    /// VMDK variant to write (qemu's default is monolithicSparse).
    pub vmdk_subformat: VmdkSubformat,
    /// Write bulk data with `O_DIRECT` where possible (qcow2 and raw; see [`crate::dio`]).
    pub direct_io: bool,
}

impl Default for CreateSpec {
    fn default() -> Self {
        CreateSpec {
            backing: None,
            qcow2: CreateOptions::default(),
            vmdk_subformat: VmdkSubformat::MonolithicSparse,
            direct_io: false,
        }
    }
}

/// Creates an empty image of `size` bytes (qcow2 or raw). With a backing file (qcow2 only) a
/// `size` of 0 means "the backing file's size". The image is written to a temporary file and
/// renamed over `path`.
pub fn create(
    path: &Path,
    format: Format,
    size: u64,
    backing: Option<&Path>,
) -> Result<(), ImageError> {
    let spec = CreateSpec {
        backing: backing.map(Path::to_path_buf),
        ..CreateSpec::default()
    };
    create_with(path, format, size, &spec)
}

/// [`create`] with explicit qcow2 options.
pub fn create_with(
    path: &Path,
    format: Format,
    size: u64,
    spec: &CreateSpec,
) -> Result<(), ImageError> {
    create_with_policy(path, format, size, spec, None)
}

/// [`create_with`] for callers that keep backing chains across directories they trust (a VM
/// volume over a template's volume over an image in the image store): the backing file's own
/// chain must resolve into `backing_policy`'s directories instead of the backing file's own
/// directory (`None`: that directory, as [`create_with`]).
pub fn create_with_policy(
    path: &Path,
    format: Format,
    size: u64,
    spec: &CreateSpec,
    backing_policy: Option<&PathPolicy>,
) -> Result<(), ImageError> {
    let target = TempTarget::new(path)?;
    let sink = new_sink(target.path(), path, format, size, spec, backing_policy)?;
    sink.finish()?;
    target.commit(true)
}

/// Opens the backing file named in `spec` relative to the image at `image_path`.
fn open_backing(
    image_path: &Path,
    backing: &Path,
    policy: Option<&PathPolicy>,
) -> Result<(Box<dyn crate::device::BlockSource>, Format), ImageError> {
    let resolved = if backing.is_absolute() {
        backing.to_path_buf()
    } else {
        image_path.parent().unwrap_or(Path::new(".")).join(backing)
    };
    // The caller chose this backing file, so its own directory is allowed; its chain is
    // confined to that directory like any other chain unless the caller names the
    // directories it trusts.
    let own_dir = PathPolicy {
        allowed_dirs: vec![resolved.parent().unwrap_or(Path::new(".")).to_path_buf()],
    };
    let policy = policy.unwrap_or(&own_dir);
    let format = crate::detect::detect_format(&resolved)?;
    let src = crate::detect::open(&resolved, &Limits::default(), policy)?;
    Ok((src, format))
}

/// Builds a sink writing `format` into `file` (`final_path` is where it will live, for
/// resolving a relative backing file).
pub(crate) fn new_sink(
    file: &Path,
    final_path: &Path,
    format: Format,
    size: u64,
    spec: &CreateSpec,
    backing_policy: Option<&PathPolicy>,
) -> Result<Box<dyn BlockSink>, ImageError> {
    match format {
        Format::Qcow2 => {
            let mut opts = spec.qcow2.clone();
            let mut size = size;
            let mut backing_src = None;
            if let Some(b) = &spec.backing {
                let (src, fmt) = open_backing(final_path, b, backing_policy)?;
                if size == 0 {
                    size = src.virtual_size();
                }
                opts.backing_file = Some(
                    b.to_str()
                        .ok_or_else(|| {
                            ImageError::InvalidArgument("backing path is not UTF-8".into())
                        })?
                        .to_string(),
                );
                opts.backing_format = Some(fmt);
                backing_src = Some(src);
            }
            let mut sink = Qcow2Sink::create(file, size, opts, backing_src)?;
            if spec.direct_io {
                sink.enable_direct_io();
            }
            Ok(Box::new(sink))
        }
        Format::Raw => {
            if spec.backing.is_some() {
                return Err(ImageError::InvalidArgument(
                    "raw images cannot have a backing file".into(),
                ));
            }
            let mut sink = RawSink::create(file, size)?;
            if spec.direct_io {
                sink.enable_direct_io()?;
            }
            Ok(Box::new(sink))
        }
        Format::Vmdk => {
            if spec.backing.is_some() {
                return Err(ImageError::InvalidArgument(
                    "VMDK output with a backing file is not supported".into(),
                ));
            }
            crate::vmdk::create_sink(file, size, spec.vmdk_subformat)
        }
        Format::Vhd | Format::Vhdx => Err(ImageError::Unsupported {
            format: format.as_str(),
            detail: "writing this format".into(),
        }),
    }
}
