//! OVA packages: a tar of an OVF descriptor, an optional manifest (`.mf`) and certificate
//! (`.cert`), and the disk files.
//!
//! [`import`] reads the archive once, front to back: the descriptor must be the first member
//! (DSP0243), the disks it references are extracted into the destination directory while
//! every member is hashed (SHA-1, SHA-256, SHA-512), the manifest is checked against those
//! digests, and each disk is converted to qcow2 through the ops layer ([`crate::ops`]).
//! [`export`] writes the inverse: OVF envelope, SHA-256 manifest and streamOptimized VMDKs, to
//! a temporary file renamed over the destination when complete.
//!
//! Invariants:
//! - member names are validated by [`tar::safe_name`] and only referenced disk files are
//!   written, each under a name Vireo chooses inside `dest_dir`, so nothing is created
//!   outside it;
//! - sizes are capped before reading: descriptor, manifest and certificate by
//!   `Limits::max_descriptor_bytes`, disk members by `Limits::max_virtual_size`;
//! - with a manifest present every member it lists must exist with a matching digest and every
//!   member but the manifest and certificate must be listed; a `.cert` is recorded but its
//!   signature is not verified (Vireo has no X.509 trust store);
//! - on any error, files the import created are removed.

pub mod tar;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sha1::Digest as _;

use crate::device::{BlockSource, Format, Limits, PathPolicy};
use crate::error::ImageError;
use crate::ovf::{self, OvfDescriptor, OvfDisk, OvfFile};
use crate::vmdk::{self, VmdkSubformat};

/// Format URI VMware and DSP0243 use for stream-optimized VMDK disks.
pub const VMDK_STREAM_FORMAT: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

fn bad(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "ova",
        detail: detail.into(),
    }
}

/// Phase of a long OVA operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum OvaPhase {
    /// Reading the archive (bytes of the archive).
    Extracting,
    /// Converting disk `disk` (guest bytes).
    Converting { disk: String },
    /// Writing disk `disk` as a stream-optimized VMDK (guest bytes).
    Exporting { disk: String },
    /// Writing the archive (bytes of the archive).
    Packing,
}

/// Progress report of [`import`] / [`export`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OvaProgress {
    #[serde(flatten)]
    pub phase: OvaPhase,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// Digest algorithms a manifest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum DigestAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

/// One manifest line: `SHA256(disk1.vmdk)= 0123…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub algorithm: DigestAlgorithm,
    pub file: String,
    /// Lowercase hex.
    pub digest: String,
}

/// Parses a manifest (pure). Blank lines are ignored; anything else must be an entry.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, ImageError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let malformed = || bad(format!("manifest line {} is not ALG(file)= digest", i + 1));
        let open = line.find('(').ok_or_else(malformed)?;
        let close = line.rfind(")=").ok_or_else(malformed)?;
        if close < open {
            return Err(malformed());
        }
        let algorithm = match line[..open].trim().to_ascii_uppercase().as_str() {
            "SHA1" => DigestAlgorithm::Sha1,
            "SHA256" => DigestAlgorithm::Sha256,
            "SHA512" => DigestAlgorithm::Sha512,
            other => {
                return Err(ImageError::Unsupported {
                    format: "ova",
                    detail: format!("manifest digest algorithm {other}"),
                })
            }
        };
        let file = tar::safe_name(&line[open + 1..close])?;
        let digest = line[close + 2..].trim().to_ascii_lowercase();
        let expected_len = match algorithm {
            DigestAlgorithm::Sha1 => 40,
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        };
        if digest.len() != expected_len || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("manifest digest for {file} is malformed")));
        }
        out.push(ManifestEntry {
            algorithm,
            file,
            digest,
        });
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// All three digests of a stream, computed together.
#[derive(Debug, Default, Clone)]
struct Hashes {
    sha1: sha1::Sha1,
    sha256: sha2::Sha256,
    sha512: sha2::Sha512,
}

impl Hashes {
    fn update(&mut self, data: &[u8]) {
        self.sha1.update(data);
        self.sha256.update(data);
        self.sha512.update(data);
    }

    fn finish(self) -> BTreeMap<DigestAlgorithm, String> {
        BTreeMap::from([
            (DigestAlgorithm::Sha1, hex(&self.sha1.finalize())),
            (DigestAlgorithm::Sha256, hex(&self.sha256.finalize())),
            (DigestAlgorithm::Sha512, hex(&self.sha512.finalize())),
        ])
    }
}

/// How the manifest check went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum ManifestStatus {
    /// Every member matched the digests listed (algorithms used).
    Verified { algorithms: Vec<DigestAlgorithm> },
    /// The package has no manifest.
    Absent,
}

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

/// Removes the files it tracks unless disarmed (cleanup on error).
#[derive(Debug, Default)]
struct Cleanup {
    paths: Vec<PathBuf>,
    armed: bool,
}

impl Cleanup {
    fn new() -> Self {
        Cleanup {
            paths: Vec::new(),
            armed: true,
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            for p in &self.paths {
                // Best effort: the file may already be gone.
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(p)
                } else {
                    std::fs::remove_file(p)
                };
            }
        }
    }
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
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
    let mut digests: BTreeMap<String, BTreeMap<DigestAlgorithm, String>> = BTreeMap::new();
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

    let manifest_status = match &manifest {
        None => ManifestStatus::Absent,
        Some(entries) => {
            let mut algorithms = BTreeSet::new();
            let mut listed = BTreeSet::new();
            for e in entries {
                let actual = digests.get(&e.file).ok_or_else(|| {
                    bad(format!(
                        "manifest lists {}, which the archive does not hold",
                        e.file
                    ))
                })?;
                if actual.get(&e.algorithm) != Some(&e.digest) {
                    return Err(bad(format!(
                        "{:?} digest of {} does not match the manifest",
                        e.algorithm, e.file
                    )));
                }
                algorithms.insert(e.algorithm);
                listed.insert(e.file.as_str());
            }
            for name in digests.keys() {
                let lower = name.to_ascii_lowercase();
                if !lower.ends_with(".mf")
                    && !lower.ends_with(".cert")
                    && !listed.contains(name.as_str())
                {
                    return Err(bad(format!("member {name} is not covered by the manifest")));
                }
            }
            ManifestStatus::Verified {
                algorithms: algorithms.into_iter().collect(),
            }
        }
    };

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

fn sha256_file(path: &Path) -> Result<(u64, String), ImageError> {
    let mut f =
        File::open(path).map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines() {
        let m = parse_manifest(&format!(
            "SHA256(vm.ovf)= {}\nSHA1(disk 1.vmdk)={}\n\nsha512(x)= {}\n",
            "a".repeat(64),
            "B".repeat(40),
            "c".repeat(128)
        ))
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].file, "disk 1.vmdk");
        assert_eq!(m[1].digest, "b".repeat(40));
        assert_eq!(m[2].algorithm, DigestAlgorithm::Sha512);
        for bad in [
            "garbage",
            "MD5(x)= 00",
            "SHA1(x)= 123",
            &format!("SHA256(../x)= {}", "a".repeat(64)),
            &format!("SHA256(x)= {}", "z".repeat(64)),
        ] {
            assert!(parse_manifest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(export_name("web-1_a.b").unwrap(), "web-1_a.b.vmdk");
        for bad in ["", "a/b", "..", ".hidden", "a b", &"x".repeat(65)] {
            assert!(export_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(disk_file_name(0, "../../x y"), "disk0-______x_y.qcow2");
        assert_eq!(
            extract_file_name(2, "dir/.hidden disk.vmdk"),
            "extract2-hidden_disk.vmdk"
        );
    }
}
