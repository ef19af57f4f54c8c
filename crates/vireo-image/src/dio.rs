//! Bulk data writes that bypass the page cache (`O_DIRECT`) when buffer, offset and length
//! allow it, falling back to ordinary positioned writes otherwise.
//!
//! Why: converting a disk image streams gigabytes the host will not read again soon. Through
//! the page cache every byte is copied into freshly allocated cache pages (on virtualised hosts
//! with free-page reporting, each such page also costs a host fault) and later written back;
//! direct I/O hands the writer's buffer to the device instead and leaves the cache to the VMs.
//!
//! Invariants: a direct write is only attempted when the buffer address, file offset and length
//! are all multiples of [`DIO_ALIGN`] (4 KiB satisfies every common logical block size); if the
//! filesystem rejects direct I/O (`EINVAL`), the writer switches to buffered writes for good and
//! repeats the write, so callers never see the difference.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::ImageError;

/// Alignment of buffer addresses, offsets and lengths for direct writes.
pub const DIO_ALIGN: usize = 4096;

/// Writes data either directly or through the page cache.
#[derive(Debug)]
pub(crate) struct DataWriter {
    path: PathBuf,
    direct: Option<Arc<File>>,
    /// Bytes below this offset are already allocated by `fallocate` (or it is unsupported).
    reserved_to: u64,
    fallocate_supported: bool,
    /// Reservations ahead of the writes stop here (the size of a fixed-size file).
    reserve_limit: u64,
    /// Reserving ahead ran out of space once: from then on only exact ranges are reserved.
    ahead_failed: bool,
}

/// How far ahead of the writes [`DataWriter::reserve`] allocates space at once.
const RESERVE_STEP: u64 = 64 << 20;

impl DataWriter {
    /// A writer that always uses the caller's buffered file.
    pub(crate) fn buffered(path: &Path) -> DataWriter {
        DataWriter {
            path: path.to_path_buf(),
            direct: None,
            reserved_to: 0,
            fallocate_supported: true,
            reserve_limit: u64::MAX,
            ahead_failed: false,
        }
    }

    /// Keeps reservations ahead of the writes below `limit` (a file whose size is fixed must
    /// not grow by them).
    pub(crate) fn set_reserve_limit(&mut self, limit: u64) {
        self.reserve_limit = limit;
    }

    /// Bytes below this offset have been reserved ahead of the writes.
    pub(crate) fn reserved_to(&self) -> u64 {
        self.reserved_to
    }

    /// Frees the blocks of `[start, end)` (`FALLOC_FL_PUNCH_HOLE`, size kept). `Ok(false)`
    /// when the filesystem cannot punch holes.
    pub(crate) fn punch_hole(&self, start: u64, end: u64) -> Result<bool, ImageError> {
        let Some(f) = &self.direct else {
            return Ok(false);
        };
        if end <= start {
            return Ok(true);
        }
        let (Ok(off), Ok(len)) = (
            libc::off_t::try_from(start),
            libc::off_t::try_from(end - start),
        ) else {
            return Ok(false);
        };
        // SAFETY: fallocate on a valid, owned descriptor has no memory-safety preconditions.
        let r = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
            _ => Err(ImageError::io(
                format!("punching a hole in {} at {start}", self.path.display()),
                e,
            )),
        }
    }

    /// Opens a second, `O_DIRECT` descriptor on `path`; stays buffered if that fails.
    pub(crate) fn enable_direct(&mut self) -> bool {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)
        {
            Ok(f) => self.direct = Some(Arc::new(f)),
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "direct I/O unavailable")
            }
        }
        self.direct.is_some()
    }

    /// The direct descriptor, for callers that write placed runs themselves.
    pub(crate) fn direct_file(&self) -> Option<Arc<File>> {
        self.direct.clone()
    }

    /// Allocates file space for `[offset, end)` ahead of direct writes (in steps of
    /// [`RESERVE_STEP`] when `ahead`), so that those writes overwrite allocated blocks and the
    /// filesystem can run them in parallel instead of serialising allocating writes.
    /// Filesystems without `fallocate` are tolerated; running out of space is an error.
    pub(crate) fn reserve(&mut self, offset: u64, end: u64, ahead: bool) -> Result<(), ImageError> {
        if !self.fallocate_supported || (ahead && end <= self.reserved_to) {
            return Ok(());
        }
        let ahead = ahead && !self.ahead_failed;
        let (start, stop) = if ahead {
            (
                self.reserved_to.max(offset),
                end.max(self.reserved_to + RESERVE_STEP)
                    .min(self.reserve_limit.max(end)),
            )
        } else {
            (offset, end)
        };
        if stop <= start {
            return Ok(());
        }
        let Some(f) = &self.direct else { return Ok(()) };
        let (Ok(off), Ok(len)) = (
            libc::off_t::try_from(start),
            libc::off_t::try_from(stop - start),
        ) else {
            return Ok(());
        };
        // SAFETY: fallocate on a valid, owned descriptor has no memory-safety preconditions.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, off, len) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => self.fallocate_supported = false,
                // Space for the step ahead is missing, perhaps not for the data: reserve exactly
                // what is written from now on.
                Some(libc::ENOSPC) if ahead => {
                    self.ahead_failed = true;
                    return self.reserve(offset, end, false);
                }
                _ => {
                    return Err(ImageError::io(
                        format!("allocating space in {} at {start}", self.path.display()),
                        e,
                    ))
                }
            }
        } else if ahead {
            self.reserved_to = stop;
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`, directly when aligned, else through `buffered`.
    pub(crate) fn write_all_at(
        &mut self,
        buffered: &File,
        buf: &[u8],
        offset: u64,
    ) -> Result<(), ImageError> {
        let aligned = (buf.as_ptr() as usize).is_multiple_of(DIO_ALIGN)
            && buf.len().is_multiple_of(DIO_ALIGN)
            && offset.is_multiple_of(DIO_ALIGN as u64);
        if aligned {
            if let Some(d) = &self.direct {
                match d.write_all_at(buf, offset) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        tracing::debug!(path = %self.path.display(), "direct write refused; using the page cache");
                        self.direct = None;
                    }
                    Err(e) => {
                        return Err(ImageError::io(
                            format!("writing {} at {offset}", self.path.display()),
                            e,
                        ))
                    }
                }
            }
        }
        buffered
            .write_all_at(buf, offset)
            .map_err(|e| ImageError::io(format!("writing {} at {offset}", self.path.display()), e))
    }
}

/// A heap buffer whose usable part starts at a [`DIO_ALIGN`]-aligned address.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> AlignedBuf {
        let storage = vec![0u8; len + DIO_ALIGN];
        let start = storage.as_ptr().align_offset(DIO_ALIGN).min(DIO_ALIGN);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [0, 1, 4096, 65536 + 3] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().len(), len);
            assert_eq!(b.as_mut_slice().as_ptr() as usize % DIO_ALIGN, 0);
        }
    }

    #[test]
    fn direct_and_fallback_writes_land() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let mut w = DataWriter::buffered(&p);
        w.enable_direct();
        let mut a = AlignedBuf::new(8192);
        a.as_mut_slice().fill(7);
        w.write_all_at(&f, a.as_slice(), 4096).unwrap();
        w.write_all_at(&f, &[9u8; 100], 3).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 12288);
        assert_eq!(&data[3..103], &[9u8; 100]);
        assert!(data[4096..].iter().all(|b| *b == 7));
    }
}
