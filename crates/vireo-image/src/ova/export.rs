//! OVA export: each disk as a stream-optimized VMDK, the OVF envelope ([`ovf::render`]) and a
//! SHA-256 manifest, packed descriptor first into a tar written beside the destination and
//! renamed over it when complete.
//!
//! Invariants: disk names are checked ([`export_name`]) before anything is written; staging
//! files and the temporary archive live next to `out` under unique names and are removed on
//! any error; the destination only ever appears complete (atomic rename after `sync_all`).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sha1::Digest as _;

use super::manifest::{hex, sha256_file};
use super::{tar, Cleanup, OvaPhase, OvaProgress, VMDK_STREAM_FORMAT};
use crate::device::BlockSource;
use crate::error::ImageError;
use crate::ovf::{self, OvfDescriptor, OvfDisk, OvfFile};
use crate::vmdk::{self, VmdkSubformat};

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportedOva {
    pub path: PathBuf,
    /// The descriptor as written (file references, sizes and capacities filled in).
    pub descriptor: OvfDescriptor,
    /// Archive members in order, with their sizes and SHA-256 digests.
    pub members: Vec<(String, u64, String)>,
}

/// Checks a disk name for use as `NAME.vmdk` inside the archive.
fn export_name(name: &str) -> Result<String, ImageError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    if ok {
        Ok(format!("{name}.vmdk"))
    } else {
        Err(ImageError::InvalidArgument(format!(
            "disk name {name:?} must be 1-64 characters of letters, digits, '-', '_' and '.'"
        )))
    }
}

/// Writes an OVA of `disks` described by `descriptor` to `out` (see [`export_with`]).
pub fn export(
    disks: &[(&str, &dyn BlockSource)],
    descriptor: &OvfDescriptor,
    out: &Path,
) -> Result<ExportedOva, ImageError> {
    export_with(disks, descriptor, out, &mut |_| {}, &AtomicBool::new(false))
}

/// Writes an OVA: the descriptor's VM settings (name, CPUs, memory, firmware, OS, NICs,
/// controllers of the disks in order) with `disks` as stream-optimized VMDKs named
/// `NAME.vmdk`, and a SHA-256 manifest. The archive is written to a temporary file next to
/// `out` and renamed over it when complete.
pub fn export_with(
    disks: &[(&str, &dyn BlockSource)],
    descriptor: &OvfDescriptor,
    out: &Path,
    progress: &mut dyn FnMut(OvaProgress),
    cancel: &AtomicBool,
) -> Result<ExportedOva, ImageError> {
    let out_name = out.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        ImageError::InvalidArgument(format!("{} is not a file path", out.display()))
    })?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = Path::new(out_name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("vm");
    let ovf_name = export_name(stem)
        .map(|n| n.replace(".vmdk", ".ovf"))
        .unwrap_or_else(|_| "vm.ovf".into());
    let mut names = BTreeSet::new();
    let mut vmdk_names = Vec::new();
    for (name, _) in disks {
        let file = export_name(name)?;
        if !names.insert(file.clone()) || file == ovf_name {
            return Err(ImageError::InvalidArgument(format!(
                "disk name {name:?} is used twice"
            )));
        }
        vmdk_names.push(file);
    }

    let mut cleanup = Cleanup::new();
    let staging = dir.join(format!(".{out_name}.vireo-export-{}", unique_suffix()));
    std::fs::create_dir(&staging)
        .map_err(|e| ImageError::io(format!("creating {}", staging.display()), e))?;
    cleanup.paths.push(staging.clone());

    // 1. Each disk as a stream-optimized VMDK in the staging directory.
    let mut desc = descriptor.clone();
    desc.files.clear();
    let given_disks = std::mem::take(&mut desc.disks);
    let mut members: Vec<(String, PathBuf, u64, String)> = Vec::new();
    for (i, ((name, src), file)) in disks.iter().zip(&vmdk_names).enumerate() {
        let path = staging.join(file);
        let mut sink =
            vmdk::create_sink(&path, src.virtual_size(), VmdkSubformat::StreamOptimized)?;
        let mut report = |p: crate::ops::Progress| {
            progress(OvaProgress {
                phase: OvaPhase::Exporting {
                    disk: (*name).to_string(),
                },
                done_bytes: p.done_bytes,
                total_bytes: p.total_bytes,
            })
        };
        crate::ops::copy(*src, sink.as_mut(), 0, &mut report, cancel)?;
        sink.finish()?;
        if cancel.load(Ordering::Relaxed) {
            return Err(ImageError::Cancelled);
        }
        let (size, sha256) = sha256_file(&path)?;
        let id = format!("file{}", i + 1);
        desc.files.push(OvfFile {
            id: id.clone(),
            href: file.clone(),
            size: Some(size),
            compression: None,
        });
        let template = given_disks.get(i);
        desc.disks.push(OvfDisk {
            disk_id: template
                .map(|d| d.disk_id.clone())
                .unwrap_or_else(|| format!("vmdisk{}", i + 1)),
            file_ref: Some(id),
            capacity_bytes: src.virtual_size().div_ceil(512) * 512,
            populated_size: None,
            format: Some(VMDK_STREAM_FORMAT.into()),
            controller: template.and_then(|d| d.controller),
            controller_model: template.and_then(|d| d.controller_model.clone()),
            address_on_parent: template.and_then(|d| d.address_on_parent),
        });
        members.push((file.clone(), path, size, sha256));
    }
    let desc = ovf::with_export_defaults(&desc);

    // 2. Descriptor and manifest.
    let xml = ovf::render(&desc);
    let ovf_sha = hex(&sha2::Sha256::digest(xml.as_bytes()));
    let mut mf = format!("SHA256({ovf_name})= {ovf_sha}\n");
    for (name, _, _, sha) in &members {
        mf.push_str(&format!("SHA256({name})= {sha}\n"));
    }
    let mf_name = ovf_name.replace(".ovf", ".mf");
    let mf_sha = hex(&sha2::Sha256::digest(mf.as_bytes()));

    // 3. The archive: descriptor first, manifest second, then the disks.
    let tmp = dir.join(format!(".{out_name}.vireo-{}.tmp", unique_suffix()));
    let total: u64 = members.iter().map(|m| m.2).sum::<u64>() + xml.len() as u64 + mf.len() as u64;
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| ImageError::io(format!("creating {}", tmp.display()), e))?;
    cleanup.paths.push(tmp.clone());
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let io = |e: std::io::Error| ImageError::io(format!("writing {}", tmp.display()), e);
    let mut done = 0u64;
    for (name, data) in [(&ovf_name, xml.as_bytes()), (&mf_name, mf.as_bytes())] {
        tar::write_header(&mut w, name, data.len() as u64, mtime)?;
        w.write_all(data).map_err(io)?;
        tar::write_padding(&mut w, data.len() as u64)?;
        done += data.len() as u64;
    }
    let mut buf = vec![0u8; 1 << 20];
    for (name, path, size, _) in &members {
        tar::write_header(&mut w, name, *size, mtime)?;
        let mut f = File::open(path)
            .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
        let mut copied = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).map_err(io)?;
            copied += n as u64;
            done += n as u64;
            progress(OvaProgress {
                phase: OvaPhase::Packing,
                done_bytes: done,
                total_bytes: total,
            });
            if cancel.load(Ordering::Relaxed) {
                return Err(ImageError::Cancelled);
            }
        }
        if copied != *size {
            return Err(ImageError::io(
                format!("{} changed while packing", path.display()),
                std::io::Error::other("size changed"),
            ));
        }
        tar::write_padding(&mut w, *size)?;
    }
    tar::write_end(&mut w)?;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, out).map_err(|e| {
        ImageError::io(
            format!("renaming {} to {}", tmp.display(), out.display()),
            e,
        )
    })?;
    cleanup.paths.retain(|p| p != &tmp);
    // `cleanup` still removes the staging directory.

    let mut listing = vec![
        (ovf_name, xml.len() as u64, ovf_sha),
        (mf_name, mf.len() as u64, mf_sha),
    ];
    listing.extend(members.into_iter().map(|(n, _, s, h)| (n, s, h)));
    Ok(ExportedOva {
        path: out.to_path_buf(),
        descriptor: desc,
        members: listing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(export_name("web-1_a.b").unwrap(), "web-1_a.b.vmdk");
        for bad in ["", "a/b", "..", ".hidden", "a b", &"x".repeat(65)] {
            assert!(export_name(bad).is_err(), "{bad:?}");
        }
    }
}
