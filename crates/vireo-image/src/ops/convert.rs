//! Conversion between formats: a bounded parallel pipeline from any [`BlockSource`] to any
//! [`BlockSink`].
//!
//! Shape: reader threads claim fixed-size chunks of the guest address space in order, skip
//! ranges the source reports as zero (`extent_at`), read the rest, drop all-zero units (the
//! sink's `unit_size`) and, for compressing sinks, encode units. The calling thread receives
//! finished chunks, reorders them and hands them to the sink in ascending guest order, so the
//! sink allocates output clusters in order. Where the sink offers a placement for a run
//! ([`BlockSink::place`]: qcow2 and raw with direct I/O), the bytes are written by a pool of
//! writer threads at the placed offset, in parallel; otherwise the sink writes them itself.
//!
//! Invariants:
//! - at most `window` chunks are claimed but not yet handed to the sink, and at most
//!   `window + WRITERS` chunk buffers exist ([`BufPool`]), so memory is bounded by that many
//!   [`CHUNK`]s regardless of the image size or of how far writes lag behind;
//! - the sink is only touched by the calling thread; sources are read concurrently through
//!   `&self` (`BlockSource: Sync`); a chunk buffer is reused only after every write of it
//!   has completed (it is shared by reference count with the write jobs);
//! - all placed writes have completed before `copy` returns (the thread scope joins the
//!   writers), so the caller may `finish` the sink;
//! - cancellation and errors stop all threads promptly; the output of a failed or cancelled
//!   conversion is a temporary file that is deleted ([`super::TempTarget`]).

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use super::{new_sink, CreateSpec, TempTarget};
use crate::device::{
    BlockSink, BlockSource, ExtentKind, Format, Limits, PathPolicy, Placement, UnitEncoder,
};
use crate::dio::AlignedBuf;
use crate::error::ImageError;
use crate::raw::is_zero;

/// Guest bytes per pipeline chunk.
pub const CHUNK: u64 = 2 << 20;

/// Progress of a long operation, in guest bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// Parameters of a conversion.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub format: Format,
    /// Compress output clusters (qcow2).
    pub compress: bool,
    /// Output parameters (qcow2 version, cluster size, compression type…).
    pub spec: CreateSpec,
    /// Worker threads; 0 = one per available CPU (at least 4, at most 8).
    pub threads: usize,
    pub limits: Limits,
    pub policy: PathPolicy,
    /// Flush the output to stable storage before renaming it into place. `qemu-img convert`
    /// does not (its target cache mode is "unsafe"); the library default is to sync.
    pub sync: bool,
    /// Read this internal snapshot of a qcow2 source instead of its active layer (`qemu-img
    /// convert -l snapshot.name=NAME`): its content and disk size, over the image's backing
    /// chain. Other source formats are refused.
    pub source_snapshot: Option<String>,
}

impl ConvertOptions {
    /// Defaults: no compression, direct I/O for the output data, sync before rename.
    pub fn new(format: Format) -> ConvertOptions {
        ConvertOptions {
            format,
            compress: false,
            spec: CreateSpec {
                direct_io: true,
                ..CreateSpec::default()
            },
            threads: 0,
            limits: Limits::default(),
            policy: PathPolicy::default(),
            sync: true,
            source_snapshot: None,
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyStats {
    /// Guest bytes read from the source.
    pub bytes_read: u64,
    /// Guest bytes handed to the sink (before any compression).
    pub bytes_written: u64,
}

/// Converts `src` (any format, detected by content) into a new `format` image at `dst`.
pub fn convert(
    src: &Path,
    dst: &Path,
    format: Format,
    compress: bool,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<CopyStats, ImageError> {
    let mut opts = ConvertOptions::new(format);
    opts.compress = compress;
    convert_with(src, dst, &opts, progress, cancel)
}

/// [`convert`] with all options.
pub fn convert_with(
    src: &Path,
    dst: &Path,
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<CopyStats, ImageError> {
    if opts.compress && opts.format != Format::Qcow2 {
        return Err(ImageError::InvalidArgument(format!(
            "compression is only available for qcow2 output, not {}",
            opts.format
        )));
    }
    let source = super::open_source(
        src,
        opts.source_snapshot.as_deref(),
        &opts.limits,
        &opts.policy,
    )?;
    let target = TempTarget::new(dst)?;
    let mut spec = opts.spec.clone();
    spec.qcow2.compress = opts.compress;
    let mut sink = new_sink(
        target.path(),
        dst,
        opts.format,
        source.virtual_size(),
        &spec,
        None,
    )?;
    let stats = copy(
        source.as_ref(),
        sink.as_mut(),
        opts.threads,
        progress,
        cancel,
    )?;
    sink.finish()?;
    if cancel.load(Ordering::Relaxed) {
        return Err(ImageError::Cancelled);
    }
    target.commit(opts.sync)?;
    tracing::info!(src = %src.display(), dst = %dst.display(), format = %opts.format, "converted image");
    Ok(stats)
}

/// One piece of a finished chunk, ready for the sink.
#[derive(Debug)]
enum Piece {
    /// `len` bytes of the chunk buffer starting at `at` go to guest offset `offset`.
    Plain { offset: u64, at: usize, len: usize },
    /// An encoded unit for guest offset `offset`.
    Encoded { offset: u64, bytes: Vec<u8> },
}

#[derive(Debug)]
struct Done<'p> {
    index: u64,
    buf: Pooled<'p>,
    pieces: Vec<Piece>,
    read: u64,
}

/// A bounded set of recycled chunk buffers (aligned, so sinks may write them with direct I/O).
/// At most `cap` buffers exist; `get` blocks until one is free, which is what bounds memory
/// when placed writes lag behind reading.
#[derive(Debug)]
struct BufPool {
    state: Mutex<(Vec<AlignedBuf>, usize)>, // (free buffers, buffers allocated)
    freed: Condvar,
    cap: usize,
    len: usize,
    stop: AtomicBool,
}

impl BufPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<AlignedBuf>, usize)> {
        // A list and a counter, each updated in one step: poisoning cannot break them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self) -> Option<Pooled<'_>> {
        let mut st = self.lock();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(b) = st.0.pop() {
                return Some(Pooled {
                    buf: Some(b),
                    pool: self,
                });
            }
            if st.1 < self.cap {
                st.1 += 1;
                drop(st);
                return Some(Pooled {
                    buf: Some(AlignedBuf::new(self.len)),
                    pool: self,
                });
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn halt(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _guard = self.lock();
        self.freed.notify_all();
    }
}

/// A buffer on loan from a [`BufPool`]; returns itself when dropped.
#[derive(Debug)]
struct Pooled<'p> {
    buf: Option<AlignedBuf>,
    pool: &'p BufPool,
}

impl Pooled<'_> {
    fn slice(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.as_slice())
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pool.lock().0.push(b);
            self.pool.freed.notify_one();
        }
    }
}

/// A placed write for the writer threads: `len` bytes of `buf` from `at` go to `placement`.
#[derive(Debug)]
struct WriteJob<'p> {
    buf: Arc<Pooled<'p>>,
    at: usize,
    len: usize,
    placement: Placement,
}

/// Claims chunk indices in order, never more than `window` ahead of the writer.
#[derive(Debug)]
struct Scheduler {
    state: Mutex<(u64, u64)>, // (next to claim, next to write)
    moved: Condvar,
    window: u64,
    chunks: u64,
    stop: AtomicBool,
}

impl Scheduler {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        // The state is two counters updated atomically under the lock; poisoning cannot
        // leave them inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim(&self, cancel: &AtomicBool) -> Option<u64> {
        let mut st = self.lock();
        loop {
            if self.stop.load(Ordering::Relaxed)
                || cancel.load(Ordering::Relaxed)
                || st.0 >= self.chunks
            {
                return None;
            }
            if st.0 < st.1 + self.window {
                let i = st.0;
                st.0 += 1;
                return Some(i);
            }
            st = self.moved.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn written(&self, next: u64) {
        self.lock().1 = next;
        self.moved.notify_all();
    }

    fn halt(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _guard = self.lock();
        self.moved.notify_all();
    }
}

/// Placed writes run on this many threads: direct writes to a file whose space is already
/// allocated proceed in parallel, which keeps the device queue full.
const WRITERS: usize = 4;

/// Copies the guest content of `src` into `sink` (which must be at least as large). Ranges
/// that read as zero are not written. Does not call `finish`.
pub fn copy(
    src: &dyn BlockSource,
    sink: &mut dyn BlockSink,
    threads: usize,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<CopyStats, ImageError> {
    let size = src.virtual_size();
    let unit = sink.unit_size().clamp(512, CHUNK);
    let chunk = CHUNK.max(unit);
    let chunks = size.div_ceil(chunk);
    // Readers block on I/O (page cache misses, decompression of other formats' grains), so
    // run at least 4 even on small machines: it keeps the disk queue and the writer busy.
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .clamp(4, 8)
    } else {
        threads
    };
    let encoder = sink.unit_encoder();
    let window = threads as u64 + 2;
    let sched = Scheduler {
        state: Mutex::new((0, 0)),
        moved: Condvar::new(),
        window,
        chunks,
        stop: AtomicBool::new(false),
    };
    let pool = BufPool {
        state: Mutex::new((Vec::new(), 0)),
        freed: Condvar::new(),
        cap: window as usize + WRITERS,
        len: chunk as usize,
        stop: AtomicBool::new(false),
    };
    let write_error: Mutex<Option<ImageError>> = Mutex::new(None);
    let (tx, rx) = mpsc::channel::<Result<Done, ImageError>>();
    let (job_tx, job_rx) = mpsc::channel::<WriteJob>();
    let job_rx = Mutex::new(job_rx);
    let mut stats = CopyStats::default();
    let halt_all = || {
        sched.halt();
        pool.halt();
    };

    std::thread::scope(|scope| -> Result<(), ImageError> {
        for _ in 0..threads {
            let tx = tx.clone();
            let (sched, pool, encoder, halt_all) = (&sched, &pool, encoder.clone(), &halt_all);
            scope.spawn(move || {
                while let Some(index) = sched.claim(cancel) {
                    let Some(buf) = pool.get() else { return };
                    let start = index * chunk;
                    let end = (start + chunk).min(size);
                    let r = process_chunk(src, start, end, unit, encoder.as_deref(), buf).map(
                        |(buf, pieces, read)| Done {
                            index,
                            buf,
                            pieces,
                            read,
                        },
                    );
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        halt_all();
                        return;
                    }
                }
            });
        }
        drop(tx);
        for _ in 0..WRITERS {
            let (job_rx, write_error, halt_all) = (&job_rx, &write_error, &halt_all);
            scope.spawn(move || loop {
                let job = match job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                let bytes = &job.buf.slice()[job.at..job.at + job.len];
                if let Err(e) = job.placement.file.write_all_at(bytes, job.placement.offset) {
                    let mut slot = write_error.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(ImageError::io(
                        format!("writing output at {}", job.placement.offset),
                        e,
                    ));
                    halt_all();
                }
            });
        }

        let result = (|| {
            let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
            let mut next = 0u64;
            while next < chunks {
                if cancel.load(Ordering::Relaxed) {
                    return Err(ImageError::Cancelled);
                }
                if let Some(e) = write_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Err(e);
                }
                let done = match rx.recv() {
                    Ok(r) => r?,
                    // All readers gone without finishing: cancelled, or a write failed.
                    Err(_) => {
                        return Err(write_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .take()
                            .unwrap_or(ImageError::Cancelled))
                    }
                };
                pending.insert(done.index, done);
                while let Some(done) = pending.remove(&next) {
                    let Done {
                        buf, pieces, read, ..
                    } = done;
                    let buf = Arc::new(buf);
                    for piece in pieces {
                        match piece {
                            Piece::Plain { offset, at, len } => {
                                match sink.place(offset, len as u64)? {
                                    Some(placement) => {
                                        let job = WriteJob {
                                            buf: buf.clone(),
                                            at,
                                            len,
                                            placement,
                                        };
                                        if job_tx.send(job).is_err() {
                                            return Err(ImageError::Cancelled);
                                        }
                                    }
                                    None => sink.write_at(&buf.slice()[at..at + len], offset)?,
                                }
                                stats.bytes_written += len as u64;
                            }
                            Piece::Encoded { offset, bytes } => {
                                sink.write_encoded(offset, bytes)?;
                                stats.bytes_written += unit.min(size - offset);
                            }
                        }
                    }
                    stats.bytes_read += read;
                    next += 1;
                    sched.written(next);
                    progress(Progress {
                        done_bytes: (next * chunk).min(size),
                        total_bytes: size,
                    });
                }
            }
            Ok(())
        })();
        // Let the writers drain the queue (or stop on error), then report the first failure.
        drop(job_tx);
        if result.is_err() {
            halt_all();
        }
        result
    })?;
    if let Some(e) = write_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    Ok(stats)
}

/// Reads one chunk `[start, end)` and splits it into pieces for the sink.
fn process_chunk<'p>(
    src: &dyn BlockSource,
    start: u64,
    end: u64,
    unit: u64,
    encoder: Option<&dyn UnitEncoder>,
    mut chunk_buf: Pooled<'p>,
) -> Result<(Pooled<'p>, Vec<Piece>, u64), ImageError> {
    let len = (end - start) as usize;
    let Some(aligned) = chunk_buf.buf.as_mut() else {
        return Err(ImageError::InvalidArgument("chunk buffer missing".into()));
    };
    if aligned.len() < len {
        *aligned = AlignedBuf::new(len);
    }
    let buf = aligned.as_mut_slice();
    // Ranges (relative to `start`) holding source data.
    let mut data: Vec<(usize, usize)> = Vec::new();
    let mut pos = start;
    while pos < end {
        let ext = src.extent_at(pos)?;
        if ext.length == 0 || ext.offset != pos {
            return Err(ImageError::InvalidArgument(format!(
                "{} source returned an invalid extent at {pos}",
                src.format()
            )));
        }
        let ext_end = pos.saturating_add(ext.length).min(end);
        if ext.kind != ExtentKind::Zero {
            let (a, b) = ((pos - start) as usize, (ext_end - start) as usize);
            src.read_at(&mut buf[a..b], pos)?;
            match data.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => data.push((a, b)),
            }
        }
        pos = ext_end;
    }
    let read: u64 = data.iter().map(|(a, b)| (b - a) as u64).sum();

    // Walk units overlapping data; zero the parts of those units that had no data, then
    // keep the units that are not entirely zero.
    let unit = unit as usize;
    let mut pieces: Vec<Piece> = Vec::new();
    let mut run: Option<(usize, usize)> = None;
    let flush_run = |run: &mut Option<(usize, usize)>, pieces: &mut Vec<Piece>| {
        if let Some((a, b)) = run.take() {
            pieces.push(Piece::Plain {
                offset: start + a as u64,
                at: a,
                len: b - a,
            });
        }
    };
    // Chunks start unit-aligned (CHUNK is a multiple of every unit size).
    let mut covered_to = 0usize;
    for &(a, b) in &data {
        let first_unit = a / unit;
        let last_unit = (b - 1) / unit;
        for u in first_unit..=last_unit {
            let ua = u * unit;
            if ua < covered_to {
                continue;
            }
            let ub = (ua + unit).min(len);
            covered_to = ub;
            // Zero-fill the gaps of this unit that no data range covers.
            zero_gaps(&mut buf[..len], ua, ub, &data);
            let bytes = &buf[ua..ub];
            if is_zero(bytes) {
                flush_run(&mut run, &mut pieces);
                continue;
            }
            if let Some(enc) = encoder {
                if let Some(encoded) = enc.encode(bytes)? {
                    flush_run(&mut run, &mut pieces);
                    pieces.push(Piece::Encoded {
                        offset: start + ua as u64,
                        bytes: encoded,
                    });
                    continue;
                }
            }
            run = match run {
                Some((ra, rb)) if rb == ua => Some((ra, ub)),
                other => {
                    let mut other = other;
                    flush_run(&mut other, &mut pieces);
                    Some((ua, ub))
                }
            };
        }
    }
    flush_run(&mut run, &mut pieces);
    Ok((chunk_buf, pieces, read))
}

/// Zeroes the bytes of `[ua, ub)` not covered by any range in `data` (sorted, disjoint).
fn zero_gaps(buf: &mut [u8], ua: usize, ub: usize, data: &[(usize, usize)]) {
    let mut pos = ua;
    for &(a, b) in data {
        if b <= pos {
            continue;
        }
        if a >= ub {
            break;
        }
        if a > pos {
            buf[pos..a].fill(0);
        }
        pos = b;
        if pos >= ub {
            return;
        }
    }
    if pos < ub {
        buf[pos..ub].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_gaps_fills_only_gaps() {
        let mut buf = vec![1u8; 16];
        zero_gaps(&mut buf, 0, 16, &[(2, 4), (8, 10)]);
        assert_eq!(buf, [0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]);
        let mut buf = vec![1u8; 16];
        zero_gaps(&mut buf, 4, 12, &[(0, 6), (10, 20)]);
        assert_eq!(buf, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
    }
}
