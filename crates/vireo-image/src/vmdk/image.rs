//! The guest view of a VMDK: extents laid end to end, plus an optional parent (delta disks).
//!
//! Invariants of a [`VmdkImage`]:
//! - `extents` are sorted, contiguous and start at guest offset 0; their lengths sum to
//!   `virtual_size`, which is at most `Limits::max_virtual_size`;
//! - a FLAT extent's file is at least as long as the bytes it maps;
//! - a SPARSE extent's header capacity covers the extent size its descriptor line declares;
//! - every referenced file (extent or parent) was resolved through the `PathPolicy`, and the
//!   parent chain is at most `Limits::max_chain_depth` long.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::descriptor::{self, Access, Descriptor, ExtentType};
use super::sparse::{corrupt, read_exact_at, Grain, SparseExtent, MAGIC};
use super::{SparseInfo, VmdkExtentInfo, VmdkInfo};
use crate::device::{BlockSource, Extent, ExtentKind, Format, Limits, PathPolicy};
use crate::error::ImageError;

/// How many grains `extent_at` scans at most before reporting a run: converters call it once
/// per chunk, so the scan must stay short even on fully allocated disks (64 MiB of 64 KiB
/// grains).
const EXTENT_SCAN_GRAINS: u64 = 1024;

#[derive(Debug)]
enum Storage {
    Flat {
        file: Arc<File>,
        path: PathBuf,
        base: u64,
    },
    Sparse(Box<SparseExtent>),
    Zero,
}

#[derive(Debug)]
struct GuestExtent {
    /// Guest byte offset of the first byte.
    start: u64,
    /// Length in bytes.
    len: u64,
    storage: Storage,
}

/// An opened VMDK image (descriptor + extents + optional parent).
#[derive(Debug)]
pub struct VmdkImage {
    extents: Vec<GuestExtent>,
    virtual_size: u64,
    parent: Option<Box<VmdkImage>>,
    info: VmdkInfo,
}

fn open_file(path: &Path) -> Result<Arc<File>, ImageError> {
    File::open(path)
        .map(Arc::new)
        .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))
}

fn file_len(file: &File, path: &Path) -> Result<u64, ImageError> {
    Ok(file
        .metadata()
        .map_err(|e| ImageError::io(format!("inspecting {}", path.display()), e))?
        .len())
}

/// Reads up to `buf.len()` bytes from the start of `file`; returns how many were read.
fn read_head(file: &File, path: &Path, buf: &mut [u8]) -> Result<usize, ImageError> {
    let mut done = 0;
    while done < buf.len() {
        match std::os::unix::fs::FileExt::read_at(file, &mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::io(format!("reading {}", path.display()), e)),
        }
    }
    Ok(done)
}

impl VmdkImage {
    /// Opens `path` (a text descriptor or a sparse file with an embedded descriptor).
    pub fn open(path: &Path, limits: &Limits, policy: &PathPolicy) -> Result<Self, ImageError> {
        Self::open_depth(path, limits, policy, 0)
    }

    fn open_depth(
        path: &Path,
        limits: &Limits,
        policy: &PathPolicy,
        depth: usize,
    ) -> Result<Self, ImageError> {
        if depth > limits.max_chain_depth {
            return Err(ImageError::ChainTooDeep(limits.max_chain_depth));
        }
        let file = open_file(path)?;
        let mut head = [0u8; 512];
        let got = read_head(&file, path, &mut head)?;
        let (desc, extents) = if got == 512 && head[0..4] == MAGIC {
            Self::open_monolithic(file, path, &head, limits)?
        } else if got >= 4 && &head[0..4] == b"COWD" {
            return Err(ImageError::Unsupported {
                format: "vmdk",
                detail: "ESX sparse (COWD) extents".into(),
            });
        } else {
            Self::open_descriptor_file(&file, path, limits, policy)?
        };
        let virtual_size = extents.last().map(|e| e.start + e.len).unwrap_or(0);
        if virtual_size > limits.max_virtual_size {
            return Err(ImageError::LimitExceeded {
                what: "VMDK virtual size",
                requested: virtual_size,
                limit: limits.max_virtual_size,
            });
        }
        let parent = if desc.has_parent() {
            let hint = desc.parent_file_name_hint.as_deref().unwrap_or_default();
            let parent_path = policy.resolve(path, hint)?;
            Some(Box::new(Self::open_depth(
                &parent_path,
                limits,
                policy,
                depth + 1,
            )?))
        } else {
            None
        };
        let info = build_info(path, &desc, &extents, virtual_size, parent.as_deref());
        Ok(VmdkImage {
            extents,
            virtual_size,
            parent,
            info,
        })
    }

    /// A sparse file opened directly: the file itself is the only extent.
    fn open_monolithic(
        file: Arc<File>,
        path: &Path,
        head: &[u8; 512],
        limits: &Limits,
    ) -> Result<(Descriptor, Vec<GuestExtent>), ImageError> {
        let sparse = SparseExtent::open(file, path, head, limits)?;
        let desc = match sparse.embedded_descriptor(limits)? {
            Some(bytes) => descriptor::parse(&bytes)?,
            None => Descriptor::default(),
        };
        let len = sparse.capacity_bytes();
        let extents = if len == 0 {
            Vec::new()
        } else {
            vec![GuestExtent {
                start: 0,
                len,
                storage: Storage::Sparse(Box::new(sparse)),
            }]
        };
        Ok((desc, extents))
    }

    fn open_descriptor_file(
        file: &File,
        path: &Path,
        limits: &Limits,
        policy: &PathPolicy,
    ) -> Result<(Descriptor, Vec<GuestExtent>), ImageError> {
        let len = file_len(file, path)?;
        if len > limits.max_descriptor_bytes {
            return Err(ImageError::LimitExceeded {
                what: "VMDK descriptor",
                requested: len,
                limit: limits.max_descriptor_bytes,
            });
        }
        let mut text = vec![0u8; len as usize];
        read_exact_at(file, path, &mut text, 0)?;
        if !descriptor::looks_like_descriptor(&text) {
            return Err(corrupt(format!(
                "{} is neither a sparse extent nor a descriptor",
                path.display()
            )));
        }
        let desc = descriptor::parse(&text)?;
        if desc.extents.is_empty() {
            return Err(corrupt(format!(
                "{}: descriptor lists no extents",
                path.display()
            )));
        }
        let mut extents = Vec::with_capacity(desc.extents.len());
        let mut start = 0u64;
        for line in &desc.extents {
            let len = line.sectors * 512;
            let storage = match line.kind {
                ExtentType::Zero => Storage::Zero,
                ExtentType::Flat | ExtentType::Sparse => {
                    let name = line.file.as_deref().unwrap_or_default();
                    let extent_path = policy.resolve(path, name)?;
                    let file = open_file(&extent_path)?;
                    if line.kind == ExtentType::Flat {
                        let base = line
                            .offset_sectors
                            .checked_mul(512)
                            .filter(|b| b.checked_add(len).is_some())
                            .ok_or_else(|| corrupt("flat extent offset overflows"))?;
                        let have = file_len(&file, &extent_path)?;
                        if have < base + len {
                            return Err(corrupt(format!(
                                "flat extent {name:?} is {have} bytes, shorter than the {} bytes \
                                 the descriptor maps",
                                base + len
                            )));
                        }
                        Storage::Flat {
                            file,
                            path: extent_path,
                            base,
                        }
                    } else {
                        let mut head = [0u8; 512];
                        if read_head(&file, &extent_path, &mut head)? < 512 || head[0..4] != MAGIC {
                            return Err(corrupt(format!(
                                "sparse extent {name:?} has no KDMV header"
                            )));
                        }
                        let sparse = SparseExtent::open(file, &extent_path, &head, limits)?;
                        if sparse.capacity_bytes() < len {
                            return Err(corrupt(format!(
                                "sparse extent {name:?} holds {} bytes, less than the {len} the \
                                 descriptor maps",
                                sparse.capacity_bytes()
                            )));
                        }
                        Storage::Sparse(Box::new(sparse))
                    }
                }
            };
            extents.push(GuestExtent {
                start,
                len,
                storage,
            });
            // Cannot overflow: the descriptor parser checked the sum in bytes.
            start += len;
        }
        Ok((desc, extents))
    }

    /// Structural information for `image info`.
    pub fn info(&self) -> &VmdkInfo {
        &self.info
    }

    fn extent_index(&self, offset: u64) -> usize {
        // Extents are sorted and contiguous from 0; callers pass offset < virtual_size.
        self.extents.partition_point(|e| e.start + e.len <= offset)
    }

    /// Reads guest bytes that are unallocated in this image: from the parent, else zeros.
    fn read_unallocated(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        match &self.parent {
            Some(parent) => {
                let psize = parent.virtual_size();
                let inside = psize.saturating_sub(offset).min(buf.len() as u64) as usize;
                if inside > 0 {
                    parent.read_at(&mut buf[..inside], offset)?;
                }
                buf[inside..].fill(0);
                Ok(())
            }
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    fn read_sparse(
        &self,
        sparse: &SparseExtent,
        extent_start: u64,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), ImageError> {
        let grain_bytes = sparse.header().grain_bytes();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let grain = pos / grain_bytes;
            let in_grain = pos % grain_bytes;
            let mut n = ((grain_bytes - in_grain) as usize).min(buf.len() - done);
            match sparse.lookup(grain)? {
                Grain::Data(file_pos) => {
                    // Coalesce grains that are also contiguous in the file into one read.
                    let mut next = grain + 1;
                    let mut expect = file_pos + grain_bytes;
                    while done + n < buf.len() && sparse.lookup(next)? == Grain::Data(expect) {
                        n += (grain_bytes as usize).min(buf.len() - done - n);
                        next += 1;
                        expect += grain_bytes;
                    }
                    read_exact_at(
                        sparse.file(),
                        sparse.path(),
                        &mut buf[done..done + n],
                        file_pos + in_grain,
                    )?;
                }
                Grain::Compressed(file_pos) if n as u64 == grain_bytes => {
                    sparse.inflate_into(file_pos, &mut buf[done..done + n])?;
                }
                Grain::Compressed(file_pos) => {
                    let data = sparse.compressed_grain(file_pos)?;
                    let from = in_grain as usize;
                    buf[done..done + n].copy_from_slice(&data[from..from + n]);
                }
                Grain::Zero => buf[done..done + n].fill(0),
                Grain::Unallocated => {
                    self.read_unallocated(&mut buf[done..done + n], extent_start + pos)?
                }
            }
            done += n;
        }
        Ok(())
    }

    fn grain_kind(&self, grain: Grain) -> ExtentKind {
        match grain {
            Grain::Data(_) | Grain::Compressed(_) => ExtentKind::Data,
            Grain::Zero => ExtentKind::Zero,
            Grain::Unallocated if self.parent.is_some() => ExtentKind::Backing,
            Grain::Unallocated => ExtentKind::Zero,
        }
    }
}

impl BlockSource for VmdkImage {
    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.virtual_size);
        if end.is_none() {
            return Err(ImageError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size: self.virtual_size,
            });
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let extent = &self.extents[self.extent_index(pos)];
            let rel = pos - extent.start;
            let n = ((extent.len - rel) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match &extent.storage {
                Storage::Flat { file, path, base } => read_exact_at(file, path, chunk, base + rel)?,
                Storage::Zero => chunk.fill(0),
                Storage::Sparse(sparse) => self.read_sparse(sparse, extent.start, chunk, rel)?,
            }
            done += n;
        }
        Ok(())
    }

    fn extent_at(&self, offset: u64) -> Result<Extent, ImageError> {
        if offset >= self.virtual_size {
            return Err(ImageError::OutOfRange {
                offset,
                len: 1,
                size: self.virtual_size,
            });
        }
        let extent = &self.extents[self.extent_index(offset)];
        let rel = offset - extent.start;
        let remaining = extent.len - rel;
        let (kind, length) = match &extent.storage {
            Storage::Zero => (ExtentKind::Zero, remaining),
            Storage::Flat { file, base, .. } => flat_extent(file, base + rel, remaining),
            Storage::Sparse(sparse) => {
                let grain_bytes = sparse.header().grain_bytes();
                let grain = rel / grain_bytes;
                let kind = self.grain_kind(sparse.lookup(grain)?);
                let mut length = (grain_bytes - rel % grain_bytes).min(remaining);
                let mut next = grain + 1;
                while length < remaining
                    && next - grain < EXTENT_SCAN_GRAINS
                    && self.grain_kind(sparse.lookup(next)?) == kind
                {
                    length = (length + grain_bytes).min(remaining);
                    next += 1;
                }
                (kind, length)
            }
        };
        Ok(Extent {
            offset,
            length,
            kind,
        })
    }

    fn allocation_unit(&self) -> u64 {
        self.extents
            .iter()
            .find_map(|e| match &e.storage {
                Storage::Sparse(s) => Some(s.header().grain_bytes()),
                _ => None,
            })
            .unwrap_or(512)
    }
}

/// Data/hole classification of a flat extent through `SEEK_DATA`/`SEEK_HOLE`, so sparse flat
/// files convert quickly. Falls back to "data" where the filesystem cannot tell.
fn flat_extent(file: &File, pos: u64, remaining: u64) -> (ExtentKind, u64) {
    let Ok(start) = libc::off_t::try_from(pos) else {
        return (ExtentKind::Data, remaining);
    };
    let fd = file.as_raw_fd();
    // SAFETY: lseek only inspects/moves the file position of a descriptor we own for the
    // lifetime of `file`; all data reads use positioned I/O, so the position is irrelevant.
    let data = unsafe { libc::lseek(fd, start, libc::SEEK_DATA) };
    if data < 0 {
        // ENXIO: no data after `pos` in the file, the rest is a hole.
        let err = std::io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENXIO) {
            (ExtentKind::Zero, remaining)
        } else {
            (ExtentKind::Data, remaining)
        };
    }
    if data > start {
        return (ExtentKind::Zero, ((data - start) as u64).min(remaining));
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if hole > start {
        (ExtentKind::Data, ((hole - start) as u64).min(remaining))
    } else {
        (ExtentKind::Data, remaining)
    }
}

fn build_info(
    path: &Path,
    desc: &Descriptor,
    extents: &[GuestExtent],
    virtual_size: u64,
    parent: Option<&VmdkImage>,
) -> VmdkInfo {
    let extent_infos = extents
        .iter()
        .zip(desc.extents.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(e, line)| {
            let access = line.map(|l| l.access).unwrap_or(Access::ReadWrite);
            match &e.storage {
                Storage::Flat { path, base, .. } => VmdkExtentInfo {
                    kind: ExtentType::Flat,
                    access,
                    file: Some(path.clone()),
                    virtual_size: e.len,
                    flat_offset: *base,
                    sparse: None,
                },
                Storage::Zero => VmdkExtentInfo {
                    kind: ExtentType::Zero,
                    access,
                    file: None,
                    virtual_size: e.len,
                    flat_offset: 0,
                    sparse: None,
                },
                Storage::Sparse(s) => {
                    let h = s.header();
                    VmdkExtentInfo {
                        kind: ExtentType::Sparse,
                        access,
                        file: Some(s.path().to_path_buf()),
                        virtual_size: e.len,
                        flat_offset: 0,
                        sparse: Some(SparseInfo {
                            version: h.version,
                            grain_size: h.grain_bytes(),
                            grain_table_entries: h.gtes_per_gt,
                            compressed: h.compressed(),
                            markers: h.markers(),
                        }),
                    }
                }
            }
        })
        .collect();
    VmdkInfo {
        path: path.to_path_buf(),
        create_type: desc.create_type.clone(),
        virtual_size,
        cid: desc.cid,
        parent_cid: desc.parent_cid.filter(|&c| c != u32::MAX),
        parent_file_name_hint: desc
            .parent_file_name_hint
            .clone()
            .filter(|_| desc.has_parent()),
        parent: parent.map(|p| p.info.path.clone()),
        adapter_type: desc.ddb_value("adapterType").map(str::to_string),
        hardware_version: desc.ddb_value("virtualHWVersion").map(str::to_string),
        extents: extent_infos,
    }
}
