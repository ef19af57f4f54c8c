//! Format detection by content (never by file name) and dispatch to the format readers.
//!
//! Invariants:
//! - a file is raw only when no known signature matches; signatures of formats Vireo cannot
//!   read (qcow v1, LUKS) are refused rather than silently exposed as raw bytes;
//! - backing chains are opened through `open_in_chain`, which bounds their depth
//!   ([`Limits::max_chain_depth`]) and refuses loops (a canonical path seen twice);
//! - a declared backing format of `raw` is honoured even if the content looks like another
//!   format (qemu's rule: probing a raw file a guest wrote could escalate to reading host
//!   files); any other declared format must match the content.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::device::{BlockSource, Format, Limits, PathPolicy};
use crate::error::ImageError;

/// Bytes read from the start of a file for probing (VMDK descriptors may need 64 KiB).
pub const PROBE_HEAD: usize = 64 << 10;
/// Bytes read from the end of a file for probing (fixed VHD footer).
pub const PROBE_TAIL: usize = 512;

/// What a signature says about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A format Vireo reads.
    Known(Format),
    /// A recognised format Vireo does not read (name of it).
    Unsupported(&'static str),
}

/// Pure detection from the first [`PROBE_HEAD`] bytes and last [`PROBE_TAIL`] bytes.
pub fn probe(head: &[u8], tail: &[u8]) -> Probe {
    if head.len() >= 8 && head[..4] == *b"QFI\xfb" {
        return match u32::from_be_bytes([head[4], head[5], head[6], head[7]]) {
            2 | 3 => Probe::Known(Format::Qcow2),
            1 => Probe::Unsupported("qcow (version 1)"),
            _ => Probe::Unsupported("qcow2 of an unknown version"),
        };
    }
    if head.len() >= 6 && head[..6] == *b"LUKS\xba\xbe" {
        return Probe::Unsupported("LUKS");
    }
    if crate::vhdx::probe(head) {
        return Probe::Known(Format::Vhdx);
    }
    if crate::vmdk::probe(head) || head.starts_with(b"COWD") {
        return Probe::Known(Format::Vmdk);
    }
    if crate::vhd::probe(head) || crate::vhd::probe_tail(tail) {
        return Probe::Known(Format::Vhd);
    }
    Probe::Known(Format::Raw)
}

fn read_probe_bytes(path: &Path) -> Result<(Vec<u8>, Vec<u8>), ImageError> {
    let file =
        File::open(path).map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| ImageError::io(format!("reading metadata of {}", path.display()), e))?
        .len();
    let mut head = vec![0u8; (PROBE_HEAD as u64).min(len) as usize];
    crate::qcow2::pread_fill(&file, &mut head, 0, path)?;
    let tail_len = (PROBE_TAIL as u64).min(len);
    let mut tail = vec![0u8; tail_len as usize];
    if tail_len > 0 {
        file.read_exact_at(&mut tail, len - tail_len)
            .map_err(|e| ImageError::io(format!("reading the end of {}", path.display()), e))?;
    }
    Ok((head, tail))
}

/// Detects the format of the file at `path` by content.
pub fn detect_format(path: &Path) -> Result<Format, ImageError> {
    let (head, tail) = read_probe_bytes(path)?;
    match probe(&head, &tail) {
        Probe::Known(f) => Ok(f),
        Probe::Unsupported(name) => Err(ImageError::Unsupported {
            format: "image",
            detail: format!("{name} images"),
        }),
    }
}

/// State carried while opening a backing chain.
#[derive(Debug, Default)]
pub(crate) struct ChainContext {
    visited: Vec<PathBuf>,
}

impl ChainContext {
    /// A context whose chain already contains the image at `top`.
    pub(crate) fn new_with(top: &Path) -> Result<ChainContext, ImageError> {
        let canonical = top
            .canonicalize()
            .map_err(|e| ImageError::io(format!("resolving {}", top.display()), e))?;
        Ok(ChainContext {
            visited: vec![canonical],
        })
    }
}

/// Opens any supported image by content, with its backing chain.
pub fn open(
    path: &Path,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<Box<dyn BlockSource>, ImageError> {
    open_in_chain(path, None, limits, policy, &mut ChainContext::default())
}

/// Opens one link of a chain. `declared` is the format the referencing image names, if any.
pub(crate) fn open_in_chain(
    path: &Path,
    declared: Option<Format>,
    limits: &Limits,
    policy: &PathPolicy,
    chain: &mut ChainContext,
) -> Result<Box<dyn BlockSource>, ImageError> {
    let canonical = path
        .canonicalize()
        .map_err(|e| ImageError::io(format!("resolving {}", path.display()), e))?;
    if chain.visited.contains(&canonical) || chain.visited.len() >= limits.max_chain_depth {
        return Err(ImageError::ChainTooDeep(limits.max_chain_depth));
    }
    chain.visited.push(canonical);
    let format = match declared {
        Some(Format::Raw) => Format::Raw,
        Some(want) => {
            let got = detect_format(path)?;
            if got != want {
                return Err(ImageError::Corrupt {
                    format: want.as_str(),
                    detail: format!(
                        "{} is declared {want} but its content is {got}",
                        path.display()
                    ),
                });
            }
            want
        }
        None => detect_format(path)?,
    };
    tracing::debug!(path = %path.display(), %format, "opening image");
    match format {
        Format::Raw => Ok(Box::new(crate::raw::RawImage::open(path)?)),
        Format::Qcow2 => Ok(Box::new(crate::qcow2::Qcow2Image::open_in_chain(
            path, limits, policy, chain,
        )?)),
        Format::Vmdk | Format::Vhd | Format::Vhdx => open_foreign(format, path, limits, policy),
    }
}

/// Readers of the VMware and Hyper-V formats live in their own modules.
fn open_foreign(
    format: Format,
    path: &Path,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<Box<dyn BlockSource>, ImageError> {
    match format {
        Format::Vmdk => crate::vmdk::open(path, limits, policy),
        Format::Vhd => crate::vhd::open(path, limits, policy),
        Format::Vhdx => crate::vhdx::open(path, limits, policy),
        Format::Raw | Format::Qcow2 => Err(ImageError::InvalidArgument(format!(
            "{format} is not a foreign format"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_signatures() {
        let mut q = vec![0u8; 512];
        q[..4].copy_from_slice(b"QFI\xfb");
        q[7] = 3;
        assert_eq!(probe(&q, &[]), Probe::Known(Format::Qcow2));
        q[7] = 1;
        assert_eq!(probe(&q, &[]), Probe::Unsupported("qcow (version 1)"));
        assert_eq!(probe(b"vhdxfile....", &[]), Probe::Known(Format::Vhdx));
        assert_eq!(probe(b"KDMV\x01\0\0\0", &[]), Probe::Known(Format::Vmdk));
        assert_eq!(
            probe(b"\n# Disk DescriptorFile\nversion=1\n", &[]),
            Probe::Known(Format::Vmdk)
        );
        let mut tail = vec![0u8; 512];
        tail[..8].copy_from_slice(b"conectix");
        assert_eq!(probe(&[0u8; 512], &tail), Probe::Known(Format::Vhd));
        assert_eq!(probe(&[0u8; 512], &[0u8; 512]), Probe::Known(Format::Raw));
        assert_eq!(probe(&[], &[]), Probe::Known(Format::Raw));
    }
}
