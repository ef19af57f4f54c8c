//! Microsoft VHD (qemu's "vpc"): fixed, dynamic and differencing disks (read-only).
//!
//! Layout facts (Microsoft "Virtual Hard Disk Image Format Specification"): every VHD ends
//! with a 512-byte big-endian footer (`conectix` cookie, disk type, size, geometry, UUID and a
//! one's-complement byte-sum checksum). Fixed disks are raw data followed by the footer.
//! Dynamic and differencing disks repeat the footer at offset 0 and add a 1024-byte dynamic
//! header (`cxsparse`) locating the block allocation table (BAT, big-endian sector numbers,
//! `0xFFFFFFFF` = unallocated). An allocated block is a sector bitmap (one bit per sector,
//! MSB first, padded to 512 bytes) followed by the block's data. Differencing disks read a
//! sector from the parent unless its bitmap bit is set; the parent is found through the
//! header's parent locators and must carry the UUID the header records.
//!
//! Invariants of an opened [`VhdImage`]:
//! - footer and dynamic header checksums were verified;
//! - the BAT lies inside the file, fits `Limits::max_table_bytes` and covers the virtual
//!   size; every block offset is range-checked when used;
//! - dynamic disks read allocated blocks whole (as qemu does: the bitmap only matters for
//!   differencing disks, whose writers never leave data under a clear bit);
//! - the parent was resolved through the `PathPolicy`, matches the recorded UUID, and the
//!   chain is at most `Limits::max_chain_depth` long.
//!
//! Layout: `layout.rs` parses the footer and the dynamic header (checksums, cookies, sizes),
//! `parent.rs` resolves a differencing disk's parent from its locators; this file opens
//! images, validates the BAT and reads the guest view.

mod layout;
mod parent;

pub use layout::{checksum, DiskType, Footer, COOKIE};
pub(crate) use parent::windows_path_variants;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::device::{BlockSource, Extent, ExtentKind, Format, Limits, PathPolicy};
use crate::error::ImageError;
use layout::{be32, DynamicHeader};
use parent::locate_parent;

/// BAT value of an unallocated block.
const UNALLOCATED: u32 = u32::MAX;
/// Blocks `extent_at` scans at most (converters call it once per chunk; 512 MiB of 2 MiB
/// blocks).
const EXTENT_SCAN_BLOCKS: u64 = 256;
/// Sector bitmaps cached per image (differencing disks only).
const BITMAP_CACHE_ENTRIES: usize = 1024;

fn corrupt(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "vhd",
        detail: detail.into(),
    }
}

fn read_exact_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt(format!(
                "{}: {} bytes at offset {offset} lie past the end of the file",
                path.display(),
                buf.len()
            ))
        } else {
            ImageError::io(format!("reading {} at offset {offset}", path.display()), e)
        }
    })
}

/// Structural facts about a VHD (for `image info`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VhdInfo {
    pub path: PathBuf,
    pub disk_type: DiskType,
    pub virtual_size: u64,
    /// Footer `current_size` (may differ from the virtual size for geometry-sized images).
    pub current_size: u64,
    pub geometry: (u16, u8, u8),
    pub creator_app: String,
    pub creator_version: u32,
    pub creator_os: String,
    pub uuid: String,
    /// Block size of dynamic/differencing disks.
    pub block_size: Option<u32>,
    pub max_table_entries: Option<u32>,
    pub parent_uuid: Option<String>,
    pub parent_name: Option<String>,
    /// Resolved parent path (differencing disks).
    pub parent: Option<PathBuf>,
}

fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn ascii4(b: &[u8; 4]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Bounded FIFO cache of sector bitmaps keyed by block number.
type BitmapCache = (HashMap<u64, Arc<[u8]>>, VecDeque<u64>);

#[derive(Debug)]
struct Sparse {
    header: DynamicHeader,
    bat: Vec<u32>,
    bitmaps: Mutex<BitmapCache>,
}

/// An opened VHD.
#[derive(Debug)]
pub struct VhdImage {
    file: File,
    path: PathBuf,
    file_len: u64,
    footer: Footer,
    virtual_size: u64,
    sparse: Option<Sparse>,
    parent: Option<Box<VhdImage>>,
    info: VhdInfo,
}

/// True when `head` starts with a VHD footer copy (dynamic and differencing disks). Fixed
/// disks only have the footer at the end of the file; see [`probe_tail`].
pub fn probe(head: &[u8]) -> bool {
    head.starts_with(&COOKIE)
}

/// True when the last 512 bytes of a file are a VHD footer (fixed disks).
pub fn probe_tail(tail: &[u8]) -> bool {
    tail.len() >= 512 && tail[tail.len() - 512..].starts_with(&COOKIE)
}

/// Opens a VHD as a guest view.
pub fn open(
    path: &Path,
    limits: &Limits,
    policy: &PathPolicy,
) -> Result<Box<dyn BlockSource>, ImageError> {
    Ok(Box::new(VhdImage::open(path, limits, policy)?))
}

/// Opens `path` as a VHD and reads its guest view (bounded), ignoring errors. For fuzz
/// targets and robustness tests: must never panic or allocate beyond `limits`.
pub fn exercise(path: &Path, limits: &Limits, policy: &PathPolicy) {
    let _ = describe(path, limits, policy);
    if let Ok(img) = open(path, limits, policy) {
        crate::vmdk::exercise_guest_view(img.as_ref());
    }
}

/// Opens `path` and reports its structure.
pub fn describe(path: &Path, limits: &Limits, policy: &PathPolicy) -> Result<VhdInfo, ImageError> {
    Ok(VhdImage::open(path, limits, policy)?.info)
}

impl VhdImage {
    pub fn open(path: &Path, limits: &Limits, policy: &PathPolicy) -> Result<Self, ImageError> {
        Self::open_depth(path, limits, policy, 0)
    }

    pub fn info(&self) -> &VhdInfo {
        &self.info
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
        let file = File::open(path)
            .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
        let file_len = file
            .metadata()
            .map_err(|e| ImageError::io(format!("inspecting {}", path.display()), e))?
            .len();
        if file_len < 512 {
            return Err(corrupt(format!(
                "{} is too short for a VHD footer",
                path.display()
            )));
        }
        // Dynamic disks keep a footer copy at offset 0; prefer it (the end may be torn by an
        // interrupted append), and fall back to the end for fixed disks.
        let mut head = [0u8; 512];
        read_exact_at(&file, path, &mut head, 0)?;
        let head_footer = Footer::parse(&head);
        let footer = match head_footer {
            Ok(f) if f.disk_type != DiskType::Fixed => f,
            head_result => {
                let mut tail = [0u8; 512];
                read_exact_at(&file, path, &mut tail, file_len - 512)?;
                match (Footer::parse(&tail), head_result) {
                    (Ok(f), _) => f,
                    // Report the failure of the copy that at least had a cookie.
                    (Err(_), Err(head_err)) if tail[0..8] != COOKIE && head[0..8] == COOKIE => {
                        return Err(head_err)
                    }
                    (Err(tail_err), _) => return Err(tail_err),
                }
            }
        };
        let virtual_size = footer.virtual_size();
        if virtual_size > limits.max_virtual_size {
            return Err(ImageError::LimitExceeded {
                what: "VHD virtual size",
                requested: virtual_size,
                limit: limits.max_virtual_size,
            });
        }
        let mut info = VhdInfo {
            path: path.to_path_buf(),
            disk_type: footer.disk_type,
            virtual_size,
            current_size: footer.current_size,
            geometry: footer.geometry,
            creator_app: ascii4(&footer.creator_app),
            creator_version: footer.creator_version,
            creator_os: ascii4(&footer.creator_os),
            uuid: uuid_string(&footer.uuid),
            block_size: None,
            max_table_entries: None,
            parent_uuid: None,
            parent_name: None,
            parent: None,
        };
        if footer.disk_type == DiskType::Fixed {
            if virtual_size > file_len - 512 {
                return Err(corrupt(format!(
                    "{}: fixed disk of {virtual_size} bytes in a {file_len}-byte file",
                    path.display()
                )));
            }
            return Ok(VhdImage {
                file,
                path: path.to_path_buf(),
                file_len,
                footer,
                virtual_size,
                sparse: None,
                parent: None,
                info,
            });
        }
        let mut raw = [0u8; 1024];
        let header_pos = footer
            .data_offset
            .checked_add(1024)
            .filter(|&end| end <= file_len)
            .map(|_| footer.data_offset)
            .ok_or_else(|| {
                corrupt(format!(
                    "{}: dynamic header is outside the file",
                    path.display()
                ))
            })?;
        read_exact_at(&file, path, &mut raw, header_pos)?;
        let header = DynamicHeader::parse(&raw)?;
        let bat_bytes = u64::from(header.max_table_entries) * 4;
        if bat_bytes > limits.max_table_bytes {
            return Err(ImageError::LimitExceeded {
                what: "VHD block allocation table",
                requested: bat_bytes,
                limit: limits.max_table_bytes,
            });
        }
        if u64::from(header.max_table_entries) * u64::from(header.block_size) < virtual_size {
            return Err(corrupt(format!(
                "{}: BAT of {} blocks does not cover {virtual_size} bytes",
                path.display(),
                header.max_table_entries
            )));
        }
        if header
            .table_offset
            .checked_add(bat_bytes)
            .is_none_or(|end| end > file_len)
        {
            return Err(corrupt(format!(
                "{}: BAT is outside the file",
                path.display()
            )));
        }
        let mut bat_raw = vec![0u8; bat_bytes as usize];
        read_exact_at(&file, path, &mut bat_raw, header.table_offset)?;
        let bat = bat_raw.chunks_exact(4).map(|c| be32(c, 0)).collect();
        info.block_size = Some(header.block_size);
        info.max_table_entries = Some(header.max_table_entries);
        let parent = if footer.disk_type == DiskType::Differencing {
            info.parent_uuid = Some(uuid_string(&header.parent_uuid));
            info.parent_name = Some(header.parent_name.clone());
            let parent_path = locate_parent(&file, path, file_len, &header, policy)?;
            let parent = Self::open_depth(&parent_path, limits, policy, depth + 1)?;
            if parent.footer.uuid != header.parent_uuid {
                return Err(corrupt(format!(
                    "{}: parent {} has UUID {}, the child expects {}",
                    path.display(),
                    parent_path.display(),
                    uuid_string(&parent.footer.uuid),
                    uuid_string(&header.parent_uuid)
                )));
            }
            info.parent = Some(parent_path);
            Some(Box::new(parent))
        } else {
            None
        };
        Ok(VhdImage {
            file,
            path: path.to_path_buf(),
            file_len,
            footer,
            virtual_size,
            sparse: Some(Sparse {
                header,
                bat,
                bitmaps: Mutex::new((HashMap::new(), VecDeque::new())),
            }),
            parent,
            info,
        })
    }

    /// File offset of the data of `block`, or `None` if unallocated.
    fn block_data(&self, sparse: &Sparse, block: u64) -> Result<Option<u64>, ImageError> {
        let entry = sparse
            .bat
            .get(block as usize)
            .copied()
            .unwrap_or(UNALLOCATED);
        if entry == UNALLOCATED {
            return Ok(None);
        }
        let data = u64::from(entry) * 512 + sparse.header.bitmap_bytes();
        if data + u64::from(sparse.header.block_size) > self.file_len {
            // The last block may legitimately be cut short only by the trailing footer copy
            // never being written; anything else is a hostile or truncated file.
            return Err(corrupt(format!(
                "{}: block {block} at sector {entry} extends past the end of the file",
                self.path.display()
            )));
        }
        Ok(Some(data))
    }

    fn bitmap(&self, sparse: &Sparse, block: u64) -> Result<Arc<[u8]>, ImageError> {
        let lock = || sparse.bitmaps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = lock().0.get(&block) {
            return Ok(b.clone());
        }
        let entry = u64::from(sparse.bat[block as usize]);
        let mut raw = vec![0u8; sparse.header.bitmap_bytes() as usize];
        read_exact_at(&self.file, &self.path, &mut raw, entry * 512)?;
        let bitmap: Arc<[u8]> = raw.into();
        let mut cache = lock();
        if cache.0.insert(block, bitmap.clone()).is_none() {
            cache.1.push_back(block);
            if cache.1.len() > BITMAP_CACHE_ENTRIES {
                if let Some(old) = cache.1.pop_front() {
                    cache.0.remove(&old);
                }
            }
        }
        Ok(bitmap)
    }

    fn read_parent(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        match &self.parent {
            Some(p) => {
                let inside = p.virtual_size.saturating_sub(offset).min(buf.len() as u64) as usize;
                if inside > 0 {
                    p.read_at(&mut buf[..inside], offset)?;
                }
                buf[inside..].fill(0);
            }
            None => buf.fill(0),
        }
        Ok(())
    }

    /// Reads within one allocated block of a differencing disk, sector run by sector run.
    fn read_differencing(
        &self,
        sparse: &Sparse,
        block: u64,
        data: u64,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), ImageError> {
        let bitmap = self.bitmap(sparse, block)?;
        let block_start = block * u64::from(sparse.header.block_size);
        let present = |sector: u64| bitmap[(sector / 8) as usize] & (0x80 >> (sector % 8)) != 0;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let sector = (pos - block_start) / 512;
            let here = present(sector);
            // Extend over following sectors with the same bit.
            let mut end = ((sector + 1) * 512 + block_start - pos) as usize;
            let mut next = sector + 1;
            while done + end < buf.len() && present(next) == here {
                end += 512;
                next += 1;
            }
            let n = end.min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            if here {
                read_exact_at(&self.file, &self.path, chunk, data + (pos - block_start))?;
            } else {
                self.read_parent(chunk, pos)?;
            }
            done += n;
        }
        Ok(())
    }
}

impl BlockSource for VhdImage {
    fn format(&self) -> Format {
        Format::Vhd
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.virtual_size)
        {
            return Err(ImageError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size: self.virtual_size,
            });
        }
        let Some(sparse) = &self.sparse else {
            return read_exact_at(&self.file, &self.path, buf, offset);
        };
        let bs = u64::from(sparse.header.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / bs;
            let n = ((bs - pos % bs) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match self.block_data(sparse, block)? {
                None => self.read_parent(chunk, pos)?,
                Some(data) if self.footer.disk_type == DiskType::Differencing => {
                    self.read_differencing(sparse, block, data, chunk, pos)?
                }
                Some(data) => read_exact_at(&self.file, &self.path, chunk, data + pos % bs)?,
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
        let remaining = self.virtual_size - offset;
        let Some(sparse) = &self.sparse else {
            return Ok(Extent {
                offset,
                length: remaining,
                kind: ExtentKind::Data,
            });
        };
        let bs = u64::from(sparse.header.block_size);
        let unallocated = if self.parent.is_some() {
            ExtentKind::Backing
        } else {
            ExtentKind::Zero
        };
        let kind_of = |block: u64| -> Result<ExtentKind, ImageError> {
            Ok(match self.block_data(sparse, block)? {
                None => unallocated,
                // Partially present blocks of differencing disks are reported as data: the
                // converter reads them through read_at, which merges the parent.
                Some(_) => ExtentKind::Data,
            })
        };
        let block = offset / bs;
        let kind = kind_of(block)?;
        let mut length = (bs - offset % bs).min(remaining);
        let mut next = block + 1;
        while length < remaining && next - block < EXTENT_SCAN_BLOCKS && kind_of(next)? == kind {
            length = (length + bs).min(remaining);
            next += 1;
        }
        Ok(Extent {
            offset,
            length,
            kind,
        })
    }

    fn allocation_unit(&self) -> u64 {
        self.sparse
            .as_ref()
            .map_or(512, |s| u64::from(s.header.block_size))
    }
}
