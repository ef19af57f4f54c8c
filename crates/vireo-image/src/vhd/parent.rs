//! Parent resolution of differencing VHDs: locator payloads (UTF-16LE Windows paths, UTF-8
//! `MacX` file URLs) and the header's parent name, tried in order of preference.
//!
//! Invariants: locator payloads are bounded by [`MAX_LOCATOR_BYTES`] and range-checked against
//! the file before being read; every candidate is resolved through the caller's `PathPolicy`,
//! so a locator can never name a file the policy refuses.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::layout::DynamicHeader;
use super::{corrupt, read_exact_at};
use crate::device::PathPolicy;
use crate::error::ImageError;

/// Largest parent locator payload read.
const MAX_LOCATOR_BYTES: u32 = 64 << 10;

/// Finds the parent of a differencing disk from its locators, resolved through `policy`.
/// Relative Windows locators (`W2ru`) are preferred, then `MacX` file URLs, then absolute
/// Windows paths (`W2ku`) and the header's parent name; a Windows absolute path that cannot
/// exist here is retried as a file name next to the child.
pub(super) fn locate_parent(
    file: &File,
    path: &Path,
    file_len: u64,
    header: &DynamicHeader,
    policy: &PathPolicy,
) -> Result<PathBuf, ImageError> {
    let mut candidates: Vec<(u8, String)> = Vec::new();
    for loc in &header.locators {
        let rank = match &loc.code {
            b"W2ru" => 0,
            b"MacX" => 1,
            b"W2ku" => 2,
            _ => continue,
        };
        if loc.data_len == 0 || loc.data_len > MAX_LOCATOR_BYTES {
            continue;
        }
        if loc
            .data_offset
            .checked_add(u64::from(loc.data_len))
            .is_none_or(|e| e > file_len)
        {
            return Err(corrupt(format!(
                "{}: parent locator data is outside the file",
                path.display()
            )));
        }
        let mut raw = vec![0u8; loc.data_len as usize];
        read_exact_at(file, path, &mut raw, loc.data_offset)?;
        let text = if rank == 1 {
            let s = String::from_utf8_lossy(&raw)
                .trim_end_matches('\0')
                .to_string();
            s.strip_prefix("file://").map(str::to_string).unwrap_or(s)
        } else {
            let units: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
                .trim_end_matches('\0')
                .to_string()
        };
        candidates.push((rank, text));
    }
    if !header.parent_name.is_empty() {
        candidates.push((3, header.parent_name.clone()));
    }
    candidates.sort_by_key(|(rank, _)| *rank);
    let mut refusal = None;
    let mut last_error = None;
    for (_, name) in candidates {
        for attempt in windows_path_variants(&name) {
            match policy.resolve(path, &attempt) {
                Ok(p) => return Ok(p),
                Err(e @ ImageError::PathNotAllowed { .. }) => refusal = Some(e),
                Err(e) => last_error = Some(e),
            }
        }
    }
    Err(refusal.or(last_error).unwrap_or_else(|| {
        corrupt(format!(
            "{}: differencing disk has no usable parent locator",
            path.display()
        ))
    }))
}

/// The ways a locator path may name a file here: as is with `\` turned into `/`, and for
/// drive-letter paths only the file name (next to the child).
pub(crate) fn windows_path_variants(name: &str) -> Vec<String> {
    let unix = name.replace('\\', "/");
    let drive = unix.len() >= 2 && unix.as_bytes()[1] == b':';
    let mut out = Vec::new();
    if !drive {
        out.push(unix.clone());
    }
    if let Some(base) = unix
        .rsplit('/')
        .next()
        .filter(|b| !b.is_empty() && *b != "." && *b != "..")
    {
        if drive || base != unix {
            out.push(base.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_become_candidates() {
        assert_eq!(
            windows_path_variants(".\\parent.vhd"),
            vec!["./parent.vhd", "parent.vhd"]
        );
        assert_eq!(windows_path_variants("C:\\vms\\base.vhd"), vec!["base.vhd"]);
        assert_eq!(windows_path_variants("base.vhd"), vec!["base.vhd"]);
        assert_eq!(
            windows_path_variants("..\\..\\etc\\shadow"),
            vec!["../../etc/shadow", "shadow"]
        );
        assert!(windows_path_variants("C:\\").is_empty());
    }
}
