//! OVA import: one front-to-back pass over the archive that extracts the referenced disks
//! while hashing every member ([`extract`]), then conversion of each disk to qcow2 through the
//! ops layer ([`import`]).
//!
//! Invariants: the descriptor is the first member; only disk files the descriptor references
//! are written, each created new (never clobbering) under a name Vireo chooses inside
//! `dest_dir`; metadata members are capped by `Limits::max_descriptor_bytes` before being
//! read; the manifest is verified before any disk is returned; on error only the files this
//! import created are removed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::manifest::{
    parse_manifest, verify_members, Hashes, ManifestEntry, ManifestStatus, MemberDigests,
};
use super::{bad, tar, Cleanup, OvaPhase, OvaProgress};
use crate::device::{BlockSource, Format, Limits, PathPolicy};
use crate::error::ImageError;
use crate::ovf::{self, OvfDescriptor};

/// A disk of an imported package, converted to qcow2.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportedDisk {
    pub disk_id: String,
    /// Archive member it came from.
    pub member: String,
    pub path: PathBuf,
    pub source_format: Format,
    pub virtual_size: u64,
}

/// Result of [`import`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportedOva {
    pub descriptor: OvfDescriptor,
    pub disks: Vec<ImportedDisk>,
    pub manifest: ManifestStatus,
    /// A `.cert` member was present (its signature is not verified).
    pub certificate_present: bool,
}

/// A name for an extracted member that stays inside `dest_dir` whatever the package calls it.
fn extract_file_name(index: usize, member: &str) -> String {
    let base = member.rsplit('/').next().unwrap_or(member);
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("extract{index}-{}", clean.trim_start_matches('.'))
}

/// A name for an imported disk that stays inside `dest_dir` whatever the package calls it.
fn disk_file_name(index: usize, disk_id: &str) -> String {
    let clean: String = disk_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("disk{index}-{clean}.qcow2")
}

/// Imports `ova_path`: verifies it, extracts its disks into `dest_dir` and converts them to
/// qcow2 there (the extracted copies are removed afterwards).
pub fn import(
    ova_path: &Path,
    dest_dir: &Path,
    limits: &Limits,
    progress: &mut dyn FnMut(OvaProgress),
) -> Result<ImportedOva, ImageError> {
    import_with(
        ova_path,
        dest_dir,
        limits,
        progress,
        &AtomicBool::new(false),
    )
}

/// [`import`] with cancellation.
pub fn import_with(
    ova_path: &Path,
    dest_dir: &Path,
    limits: &Limits,
    progress: &mut dyn FnMut(OvaProgress),
    cancel: &AtomicBool,
) -> Result<ImportedOva, ImageError> {
    let extracted = extract_with(ova_path, dest_dir, limits, progress, cancel)?;
    let mut cleanup = Cleanup::new();
    cleanup
        .paths
        .extend(extracted.disks.iter().map(|d| d.path.clone()));
    let mut disks = Vec::new();
    for (index, disk) in extracted.disks.iter().enumerate() {
        let dst = dest_dir.join(disk_file_name(index, &disk.disk_id));
        if dst.exists() {
            return Err(ImageError::InvalidArgument(format!(
                "{} already exists",
                dst.display()
            )));
        }
        let result = convert_disk(&disk.path, &dst, limits, &disk.disk_id, progress, cancel);
        // Even a failed conversion may leave a partial file behind.
        cleanup.paths.push(dst.clone());
        let (format, size) = result?;
        if size < disk.capacity_bytes {
            return Err(bad(format!(
                "disk {} holds {size} bytes, less than its declared capacity {}",
                disk.disk_id, disk.capacity_bytes
            )));
        }
        disks.push(ImportedDisk {
            disk_id: disk.disk_id.clone(),
            member: disk.member.clone(),
            path: dst,
            source_format: format,
            virtual_size: size,
        });
    }
    // The extracted copies were only needed for the conversion.
    for d in &extracted.disks {
        let _ = std::fs::remove_file(&d.path);
    }
    cleanup.armed = false;
    Ok(ImportedOva {
        descriptor: extracted.descriptor,
        disks,
        manifest: extracted.manifest,
        certificate_present: extracted.certificate_present,
    })
}

/// A disk file extracted from a package, as stored there (typically a stream-optimized VMDK).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExtractedDisk {
    pub disk_id: String,
    /// Archive member it came from.
    pub member: String,
    /// Where it was extracted (a name Vireo chose inside the destination directory).
    pub path: PathBuf,
    /// Capacity the descriptor declares.
    pub capacity_bytes: u64,
}

impl ExtractedDisk {
    /// Opens the extracted file (format detected by content) as a guest view.
    pub fn open(&self, limits: &Limits) -> Result<Box<dyn BlockSource>, ImageError> {
        crate::detect::open(&self.path, limits, &PathPolicy::default())
    }
}

/// Result of [`extract`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExtractedOva {
    pub descriptor: OvfDescriptor,
    /// Disks with an image file, in descriptor order (blank disks have no file).
    pub disks: Vec<ExtractedDisk>,
    pub manifest: ManifestStatus,
    pub certificate_present: bool,
}

/// Verifies `ova_path` and extracts the disk files its descriptor references into
/// `dest_dir`, without converting them.
pub fn extract(
    ova_path: &Path,
    dest_dir: &Path,
    limits: &Limits,
    progress: &mut dyn FnMut(OvaProgress),
) -> Result<ExtractedOva, ImageError> {
    extract_with(
        ova_path,
        dest_dir,
        limits,
        progress,
        &AtomicBool::new(false),
    )
}

/// [`extract`] with cancellation.
pub fn extract_with(
    ova_path: &Path,
    dest_dir: &Path,
    limits: &Limits,
    progress: &mut dyn FnMut(OvaProgress),
    cancel: &AtomicBool,
) -> Result<ExtractedOva, ImageError> {
    let file = File::open(ova_path)
        .map_err(|e| ImageError::io(format!("opening {}", ova_path.display()), e))?;
    let archive_len = file
        .metadata()
        .map_err(|e| ImageError::io(format!("inspecting {}", ova_path.display()), e))?
        .len();
    let mut reader = tar::TarReader::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut cleanup = Cleanup::new();
    let mut descriptor: Option<OvfDescriptor> = None;
    let mut manifest: Option<Vec<ManifestEntry>> = None;
    let mut certificate_present = false;
    let mut digests = MemberDigests::new();
    let mut extracted: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut buf = vec![0u8; 1 << 20];
    let meta_cap = limits.max_descriptor_bytes;
    let disk_cap = limits.max_virtual_size.max(meta_cap);

    while let Some(member) = reader.next_member(disk_cap)? {
        if cancel.load(Ordering::Relaxed) {
            return Err(ImageError::Cancelled);
        }
        if digests.contains_key(&member.name) {
            return Err(bad(format!("member {} appears twice", member.name)));
        }
        let lower = member.name.to_ascii_lowercase();
        let is_meta = lower.ends_with(".ovf") || lower.ends_with(".mf") || lower.ends_with(".cert");
        if descriptor.is_none() && !lower.ends_with(".ovf") {
            return Err(bad(format!(
                "the first member is {}, not the OVF descriptor",
                member.name
            )));
        }
        if is_meta && member.size > meta_cap {
            return Err(ImageError::LimitExceeded {
                what: "OVA metadata member",
                requested: member.size,
                limit: meta_cap,
            });
        }
        let target = match &descriptor {
            Some(d) if !is_meta => d
                .files
                .iter()
                .find(|f| {
                    f.href == member.name
                        && d.disks
                            .iter()
                            .any(|k| k.file_ref.as_deref() == Some(f.id.as_str()))
                })
                .map(|f| {
                    if let Some(expected) = f.size.filter(|&s| s != member.size) {
                        return Err(bad(format!(
                            "member {} is {} bytes, the descriptor says {expected}",
                            member.name, member.size
                        )));
                    }
                    if f.compression.is_some() {
                        return Err(ImageError::Unsupported {
                            format: "ova",
                            detail: format!("compressed file {} ({:?})", f.href, f.compression),
                        });
                    }
                    Ok(dest_dir.join(extract_file_name(extracted.len(), &member.name)))
                })
                .transpose()?,
            _ => None,
        };
        let mut out = match &target {
            Some(p) => {
                // Never clobber an existing file in the destination (and only clean up
                // what this import created).
                let f = File::options()
                    .write(true)
                    .create_new(true)
                    .open(p)
                    .map_err(|e| ImageError::io(format!("creating {}", p.display()), e))?;
                cleanup.paths.push(p.clone());
                Some(BufWriter::with_capacity(1 << 20, f))
            }
            None => None,
        };
        let mut hashes = Hashes::default();
        let mut content = Vec::new();
        let mut consumed = 0u64;
        while consumed < member.size {
            let n = reader.read_content(&member, consumed, &mut buf)?;
            consumed += n as u64;
            hashes.update(&buf[..n]);
            if let Some(w) = out.as_mut() {
                w.write_all(&buf[..n])
                    .map_err(|e| ImageError::io(format!("extracting {}", member.name), e))?;
            } else if is_meta {
                content.extend_from_slice(&buf[..n]);
            }
            progress(OvaProgress {
                phase: OvaPhase::Extracting,
                done_bytes: reader.position,
                total_bytes: archive_len,
            });
            if cancel.load(Ordering::Relaxed) {
                return Err(ImageError::Cancelled);
            }
        }
        if let Some(w) = out {
            let f = w.into_inner().map_err(|e| {
                ImageError::io(format!("extracting {}", member.name), e.into_error())
            })?;
            f.sync_all()
                .map_err(|e| ImageError::io(format!("syncing {}", member.name), e))?;
        }
        if let Some(p) = target {
            extracted.insert(member.name.clone(), p);
        }
        if lower.ends_with(".ovf") {
            if descriptor.is_some() {
                return Err(bad("the package holds more than one OVF descriptor"));
            }
            descriptor = Some(ovf::parse(&content, limits)?);
        } else if lower.ends_with(".mf") {
            if manifest.is_some() {
                return Err(bad("the package holds more than one manifest"));
            }
            let text = String::from_utf8(content).map_err(|_| bad("manifest is not UTF-8"))?;
            manifest = Some(parse_manifest(&text)?);
        } else if lower.ends_with(".cert") {
            certificate_present = true;
        }
        digests.insert(member.name.clone(), hashes.finish());
    }
    let descriptor = descriptor.ok_or_else(|| bad("the archive holds no OVF descriptor"))?;
    let manifest_status = verify_members(manifest.as_deref(), &digests)?;

    let mut disks = Vec::new();
    for disk in &descriptor.disks {
        let Some(file) = descriptor.disk_file(disk) else {
            continue; // A blank disk to be created by the caller (capacity only).
        };
        let path = extracted.get(&file.href).ok_or_else(|| {
            bad(format!(
                "disk {} refers to {}, which the archive does not hold",
                disk.disk_id, file.href
            ))
        })?;
        disks.push(ExtractedDisk {
            disk_id: disk.disk_id.clone(),
            member: file.href.clone(),
            path: path.clone(),
            capacity_bytes: disk.capacity_bytes,
        });
    }
    cleanup.armed = false;
    Ok(ExtractedOva {
        descriptor,
        disks,
        manifest: manifest_status,
        certificate_present,
    })
}

/// The single place where an extracted disk becomes qcow2: detection by content and the copy
/// itself are the ops layer's (the source may be any format it reads).
fn convert_disk(
    source: &Path,
    dst: &Path,
    limits: &Limits,
    disk_id: &str,
    progress: &mut dyn FnMut(OvaProgress),
    cancel: &AtomicBool,
) -> Result<(Format, u64), ImageError> {
    let format = crate::detect::detect_format(source)?;
    let mut opts = crate::ops::ConvertOptions::new(Format::Qcow2);
    opts.limits = *limits;
    let mut report = |p: crate::ops::Progress| {
        progress(OvaProgress {
            phase: OvaPhase::Converting {
                disk: disk_id.to_string(),
            },
            done_bytes: p.done_bytes,
            total_bytes: p.total_bytes,
        })
    };
    crate::ops::convert_with(source, dst, &opts, &mut report, cancel)?;
    let size = crate::detect::open(dst, limits, &opts.policy)?.virtual_size();
    Ok((format, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(disk_file_name(0, "../../x y"), "disk0-______x_y.qcow2");
        assert_eq!(
            extract_file_name(2, "dir/.hidden disk.vmdk"),
            "extract2-hidden_disk.vmdk"
        );
    }
}
