//! Raw images: the file is the disk.
//!
//! Invariants:
//! - [`RawImage`] reports holes (`SEEK_HOLE`/`SEEK_DATA`) as [`ExtentKind::Zero`] extents, so
//!   converters skip them; where the filesystem cannot tell, everything is data;
//! - [`RawSink`] never writes all-zero [`RAW_UNIT`]s into ranges it has not written before:
//!   they stay holes, and the final `ftruncate` sets the size, so sparse output costs no space.
//!   With direct I/O it reserves space ahead of the writes in large steps (on ext4 every
//!   `fallocate` waits for all direct writes in flight, so one per run would serialise them);
//!   the never-written ranges inside a reservation are punched out again right after the next
//!   step and at `finish`, so the output ends exactly as sparse.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::device::{BlockSink, BlockSource, Extent, ExtentKind, Format, Placement};
use crate::dio::{DataWriter, DIO_ALIGN};
use crate::error::ImageError;

/// Hole granularity of the raw writer.
pub const RAW_UNIT: u64 = 4096;

/// A raw image opened for reading.
#[derive(Debug)]
pub struct RawImage {
    path: PathBuf,
    file: File,
    size: u64,
}

impl RawImage {
    pub fn open(path: &Path) -> Result<RawImage, ImageError> {
        let file = File::open(path)
            .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
        let size = file
            .metadata()
            .map_err(|e| ImageError::io(format!("reading metadata of {}", path.display()), e))?
            .len();
        Ok(RawImage {
            path: path.to_path_buf(),
            file,
            size,
        })
    }

    /// `lseek(fd, offset, whence)`; `Ok(None)` when there is no such region before EOF.
    fn seek(&self, offset: u64, whence: libc::c_int) -> Result<Option<u64>, std::io::Error> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: lseek on a valid, owned descriptor has no memory-safety preconditions.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as u64))
    }
}

impl BlockSource for RawImage {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(ImageError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        crate::qcow2::pread_fill(&self.file, buf, offset, &self.path)
    }

    fn extent_at(&self, offset: u64) -> Result<Extent, ImageError> {
        if offset >= self.size {
            return Err(ImageError::OutOfRange {
                offset,
                len: 1,
                size: self.size,
            });
        }
        let whole = Extent {
            offset,
            length: self.size - offset,
            kind: ExtentKind::Data,
        };
        let data = match self.seek(offset, libc::SEEK_DATA) {
            Ok(d) => d,
            // Filesystems without hole reporting: everything is data.
            Err(_) => return Ok(whole),
        };
        let end_of = |e: u64| e.min(self.size);
        match data {
            None => Ok(Extent {
                offset,
                length: self.size - offset,
                kind: ExtentKind::Zero,
            }),
            Some(d) if d > offset => Ok(Extent {
                offset,
                length: end_of(d) - offset,
                kind: ExtentKind::Zero,
            }),
            Some(_) => {
                let hole = self
                    .seek(offset, libc::SEEK_HOLE)
                    .ok()
                    .flatten()
                    .unwrap_or(self.size);
                Ok(Extent {
                    offset,
                    length: end_of(hole).max(offset + 1) - offset,
                    kind: ExtentKind::Data,
                })
            }
        }
    }

    fn allocation_unit(&self) -> u64 {
        512
    }
}

/// Returns true when every byte of `buf` is zero (word-at-a-time).
pub fn is_zero(buf: &[u8]) -> bool {
    let (prefix, words, suffix) = split_aligned(buf);
    prefix.iter().all(|b| *b == 0) && suffix.iter().all(|b| *b == 0) && words_zero(words)
}

/// Splits `buf` into an unaligned head, a 16-byte-aligned body and a tail.
fn split_aligned(buf: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let head = buf.as_ptr().align_offset(16).min(buf.len());
    let (prefix, rest) = buf.split_at(head);
    let body = rest.len() / 16 * 16;
    let (words, suffix) = rest.split_at(body);
    (prefix, words, suffix)
}

fn words_zero(words: &[u8]) -> bool {
    // Check the first chunk early: random data fails here immediately.
    let mut chunks = words.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u128;
        for w in c.chunks_exact(16) {
            let mut a = [0u8; 16];
            a.copy_from_slice(w);
            acc |= u128::from_ne_bytes(a);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|b| *b == 0)
}

/// Writes a raw image sparsely.
#[derive(Debug)]
pub struct RawSink {
    path: PathBuf,
    file: File,
    size: u64,
    /// Everything at or past this offset has never been written (reads as a hole).
    high_water: u64,
    data: DataWriter,
    /// Space is reserved ahead of the writes (direct I/O where holes can be punched).
    reserve_ahead: bool,
    /// Never-written ranges below `high_water` not yet punched out of the reservations.
    holes: Vec<(u64, u64)>,
}

impl RawSink {
    /// Creates (truncating) `path` for a raw image of `size` bytes.
    pub fn create(path: &Path, size: u64) -> Result<RawSink, ImageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| ImageError::io(format!("creating {}", path.display()), e))?;
        // Full size up front: data writes then never extend the file.
        file.set_len(size)
            .map_err(|e| ImageError::io(format!("setting the size of {}", path.display()), e))?;
        Ok(RawSink {
            path: path.to_path_buf(),
            file,
            size,
            high_water: 0,
            data: DataWriter::buffered(path),
            reserve_ahead: false,
            holes: Vec::new(),
        })
    }

    /// Writes aligned data with `O_DIRECT` where the filesystem allows it (see [`crate::dio`]).
    pub fn enable_direct_io(&mut self) -> Result<bool, ImageError> {
        if !self.data.enable_direct() {
            return Ok(false);
        }
        // Reserving ahead needs hole punching to give the unwritten parts back; probe it on
        // the fresh (all-hole) file.
        self.reserve_ahead =
            self.size > 0 && self.data.punch_hole(0, self.size.min(DIO_ALIGN as u64))?;
        self.data.set_reserve_limit(self.size);
        Ok(true)
    }

    /// Records `[start, end)` as left unwritten (to be punched out of reservations).
    fn note_hole(&mut self, start: u64, end: u64) {
        if !self.reserve_ahead || end <= start {
            return;
        }
        match self.holes.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => self.holes.push((start, end)),
        }
    }

    /// Punches the recorded holes out of the space reserved so far.
    fn punch_holes(&mut self) -> Result<(), ImageError> {
        let reserved = self.data.reserved_to();
        for (start, end) in std::mem::take(&mut self.holes) {
            if start < reserved && !self.data.punch_hole(start, end.min(reserved))? {
                return Err(ImageError::io(
                    format!("punching a hole in {}", self.path.display()),
                    std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                ));
            }
        }
        Ok(())
    }

    fn pwrite(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        self.data.write_all_at(&self.file, buf, offset)
    }
}

impl BlockSink for RawSink {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(ImageError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        if offset < self.high_water {
            // Overwrite of a possibly written range: write everything as given, after the
            // pending punches (one of them may cover part of this range).
            self.punch_holes()?;
            self.pwrite(buf, offset)?;
        } else {
            // Fresh range: leave all-zero units as holes, write the rest in runs.
            self.note_hole(self.high_water, offset);
            let mut run_start: Option<usize> = None;
            let mut pos = 0usize;
            while pos < buf.len() {
                let unit_end =
                    (((offset + pos as u64) / RAW_UNIT + 1) * RAW_UNIT - offset) as usize;
                let end = unit_end.min(buf.len());
                let zero = is_zero(&buf[pos..end]);
                match (zero, run_start) {
                    (false, None) => run_start = Some(pos),
                    (true, Some(s)) => {
                        self.pwrite(&buf[s..pos], offset + s as u64)?;
                        run_start = None;
                    }
                    _ => {}
                }
                if zero {
                    self.note_hole(offset + pos as u64, offset + end as u64);
                }
                pos = end;
            }
            if let Some(s) = run_start {
                self.pwrite(&buf[s..], offset + s as u64)?;
            }
        }
        self.high_water = self.high_water.max(offset + len);
        Ok(())
    }

    fn place(&mut self, offset: u64, len: u64) -> Result<Option<Placement>, ImageError> {
        let Some(file) = self.data.direct_file() else {
            return Ok(None);
        };
        let align = DIO_ALIGN as u64;
        if len == 0
            || offset < self.high_water
            || !offset.is_multiple_of(align)
            || !len.is_multiple_of(align)
            || offset.checked_add(len).is_none_or(|e| e > self.size)
        {
            return Ok(None);
        }
        // The write must be an overwrite of allocated space (see the module docs).
        self.note_hole(self.high_water, offset);
        if self.reserve_ahead {
            let before = self.data.reserved_to();
            self.data.reserve(offset, offset + len, true)?;
            if self.data.reserved_to() != before {
                // That step waited for the writes in flight anyway: punch now.
                self.punch_holes()?;
            }
        } else {
            self.data.reserve(offset, offset + len, false)?;
        }
        self.high_water = offset + len;
        Ok(Some(Placement { file, offset }))
    }

    fn finish(mut self: Box<Self>) -> Result<(), ImageError> {
        self.note_hole(self.high_water, self.size);
        self.punch_holes()?;
        self.file
            .set_len(self.size)
            .map_err(|e| ImageError::io(format!("setting the size of {}", self.path.display()), e))
    }

    fn unit_size(&self) -> u64 {
        RAW_UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 10000];
        assert!(is_zero(&v));
        assert!(is_zero(&v[3..9001]));
        v[9999] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&v[..9999]));
        v[0] = 1;
        assert!(!is_zero(&v[..5]));
        assert!(is_zero(&[]));
    }

    /// Data ranges of `path` as `SEEK_DATA`/`SEEK_HOLE` report them.
    fn data_ranges(path: &Path) -> Vec<(u64, u64)> {
        let f = File::open(path).unwrap();
        let size = f.metadata().unwrap().len() as i64;
        let (mut out, mut pos) = (Vec::new(), 0i64);
        while pos < size {
            // SAFETY: lseek on a valid descriptor.
            let data = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
            if data < 0 {
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
            out.push((data as u64, hole as u64));
            pos = hole;
        }
        out
    }

    /// Runs placed with gaps across several reservation steps, a fresh `write_at` with zero
    /// units inside and an overwrite: content as written, and exactly the written runs
    /// allocated (the reservations' unwritten parts are punched out again).
    #[test]
    fn reserving_ahead_leaves_the_output_exactly_as_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.raw");
        let size = 200u64 << 20;
        let mut sink = RawSink::create(&path, size).unwrap();
        let direct = sink.enable_direct_io().unwrap();
        const MIB: u64 = 1 << 20;
        // (offset, len) of placed runs, ascending, with gaps of every size.
        let runs = [
            (0, MIB),
            (MIB + 4096, 3 * 4096),
            (10 * MIB, 2 * MIB),
            (70 * MIB, MIB),
            (140 * MIB, 8 * MIB),
        ];
        let mut expect = vec![0u8; size as usize];
        for (i, &(off, len)) in runs.iter().enumerate() {
            let mut buf = crate::dio::AlignedBuf::new(len as usize);
            buf.as_mut_slice().fill(i as u8 + 1);
            expect[off as usize..(off + len) as usize].fill(i as u8 + 1);
            match sink.place(off, len).unwrap() {
                Some(p) => {
                    use std::os::unix::fs::FileExt;
                    p.file.write_all_at(buf.as_slice(), p.offset).unwrap();
                }
                None => sink.write_at(buf.as_slice(), off).unwrap(),
            }
        }
        // Fresh write: data, a zero unit, data.
        let mut mixed = vec![7u8; 3 * 4096];
        mixed[4096..8192].fill(0);
        sink.write_at(&mixed, 160 * MIB).unwrap();
        expect[(160 * MIB) as usize..(160 * MIB) as usize + mixed.len()].copy_from_slice(&mixed);
        // Overwrite inside the first run.
        sink.write_at(&[9u8; 4096], 8192).unwrap();
        expect[8192..8192 + 4096].fill(9);
        Box::new(sink).finish().unwrap();

        assert_eq!(std::fs::read(&path).unwrap(), expect);
        let allocated = data_ranges(&path);
        let mut want: Vec<(u64, u64)> = runs.iter().map(|&(o, l)| (o, o + l)).collect();
        want.push((160 * MIB, 160 * MIB + 4096));
        want.push((160 * MIB + 8192, 160 * MIB + 3 * 4096));
        // Filesystems may report at a coarser grain than 4 KiB; ext4 (the usual case) does not.
        if direct
            && allocated
                .iter()
                .all(|&(a, b)| a % 4096 == 0 && b % 4096 == 0)
        {
            assert_eq!(allocated, want, "allocated ranges");
        }
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
        let data: u64 = want.iter().map(|(a, b)| b - a).sum();
        assert!(
            blocks <= data + 64 * 1024,
            "{blocks} bytes allocated for {data} of data"
        );
    }

    /// On a filesystem with room for the data but not for a reservation step ahead, the
    /// reservations fall back to exact ones and the conversion completes (needs root to mount
    /// a small tmpfs; skipped with the reason otherwise).
    #[test]
    fn reserving_ahead_falls_back_when_the_step_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("small");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(&mnt)
            .output();
        match mounted {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                return;
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                return;
            }
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let _unmount = Unmount(mnt.clone());
        let path = mnt.join("out.raw");
        const MIB: u64 = 1 << 20;
        // 256 MiB virtual, 12 MiB of data in 3 MiB runs 32 MiB apart on a 16 MiB filesystem: a
        // 64 MiB step ahead does not fit, each run does.
        let mut sink = RawSink::create(&path, 256 * MIB).unwrap();
        sink.enable_direct_io().unwrap();
        let mut buf = crate::dio::AlignedBuf::new((3 * MIB) as usize);
        buf.as_mut_slice().fill(0x5a);
        for i in 0..4u64 {
            let off = i * 32 * MIB;
            match sink.place(off, 3 * MIB).unwrap() {
                Some(p) => {
                    use std::os::unix::fs::FileExt;
                    p.file.write_all_at(buf.as_slice(), p.offset).unwrap();
                }
                None => sink.write_at(buf.as_slice(), off).unwrap(),
            }
        }
        Box::new(sink).finish().unwrap();
        let f = File::open(&path).unwrap();
        use std::os::unix::fs::FileExt;
        for i in 0..4u64 {
            let mut got = vec![0u8; (3 * MIB) as usize];
            f.read_exact_at(&mut got, i * 32 * MIB).unwrap();
            assert!(got.iter().all(|b| *b == 0x5a), "run {i}");
            let mut gap = vec![1u8; 4096];
            f.read_exact_at(&mut gap, i * 32 * MIB + 3 * MIB).unwrap();
            assert!(is_zero(&gap), "gap after run {i}");
        }
    }

    #[test]
    fn sparse_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.raw");
        let size = 1 << 20;
        let mut sink = Box::new(RawSink::create(&p, size).unwrap());
        let mut data = vec![0u8; 256 << 10];
        data[100_000] = 7;
        sink.write_at(&data, 65536).unwrap();
        sink.write_at(&[9u8; 512], 0).unwrap();
        sink.finish().unwrap();
        let img = RawImage::open(&p).unwrap();
        assert_eq!(img.virtual_size(), size);
        let mut back = vec![1u8; size as usize];
        img.read_at(&mut back, 0).unwrap();
        assert_eq!(&back[..512], &[9u8; 512]);
        assert_eq!(back[65536 + 100_000], 7);
        assert_eq!(back.iter().filter(|b| **b != 0).count(), 513);
        let meta = std::fs::metadata(&p).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 64 << 10, "output is sparse");
        // The hole at the end is reported as zero.
        let e = img.extent_at(size - 4096).unwrap();
        assert_eq!(e.kind, ExtentKind::Zero);
    }
}
