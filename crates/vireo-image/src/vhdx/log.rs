//! VHDX metadata log: finding the active sequence and replaying it *in memory*.
//!
//! A VHDX whose current header carries a non-zero `LogGuid` may hold metadata updates that
//! were logged but not yet applied. The specification requires replaying them before the file
//! is interpreted. Vireo never writes to an image it reads, so the replay produces an
//! [`Overlay`]: the logged writes (4 KiB data sectors and zeroed ranges) layered over the file,
//! plus the file length the log says the file must be extended to.
//!
//! Format facts (MS-VHDX 2.3): the log is a circular buffer of 4 KiB sectors. An entry is a
//! 64-byte header (`loge`, CRC-32C over the whole entry, entry length, tail, sequence number,
//! descriptor count, log GUID, flushed and last file offsets), 32-byte descriptors (`desc` for
//! a data sector, carrying its first 8 and last 4 bytes; `zero` for a zeroed range) padded to
//! whole sectors, then one data sector (`data`, sequence split high/low around 4084 bytes) per
//! data descriptor. The active sequence is the valid chain of entries with consecutive sequence
//! numbers, from the tail its last (highest) entry names to that entry.
//!
//! Invariants: the whole log is read into memory once (bounded by `Limits::max_table_bytes`);
//! every entry is validated (signature, GUID, lengths, CRC, descriptor and data-sector sequence
//! numbers) before it is considered; overlay data never exceeds the log's size; a log whose
//! entries say the file was flushed past its current end is refused (truncated file).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::meta::{corrupt, le32, le64, Guid};
use crate::error::ImageError;

/// Log sectors are always 4 KiB.
pub const LOG_SECTOR: u64 = 4096;
const ENTRY_SIGNATURE: &[u8; 4] = b"loge";
const DATA_DESC_SIGNATURE: &[u8; 4] = b"desc";
const ZERO_DESC_SIGNATURE: &[u8; 4] = b"zero";
const DATA_SECTOR_SIGNATURE: &[u8; 4] = b"data";

/// What one overlay segment reads as.
#[derive(Debug, Clone)]
enum Content {
    Zero,
    /// Bytes of `data` starting at `from`.
    Data {
        data: Arc<[u8]>,
        from: usize,
    },
}

/// Logged writes layered over the file: non-overlapping segments keyed by start offset.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    segments: BTreeMap<u64, (u64, Content)>,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Records a write of `len` bytes at `start` (later writes win).
    fn put(&mut self, start: u64, len: u64, content: Content) {
        if len == 0 {
            return;
        }
        let end = start + len;
        // Split or drop the segments that overlap [start, end).
        let overlapping: Vec<u64> = self
            .segments
            .range(..end)
            .rev()
            .take_while(|(_, (seg_end, _))| *seg_end > start)
            .map(|(&s, _)| s)
            .collect();
        for s in overlapping {
            let Some((seg_end, c)) = self.segments.remove(&s) else {
                continue;
            };
            if s < start {
                self.segments.insert(s, (start, c.clone()));
            }
            if seg_end > end {
                let shifted = match c {
                    Content::Zero => Content::Zero,
                    Content::Data { data, from } => Content::Data {
                        data,
                        from: from + (end - s) as usize,
                    },
                };
                self.segments.insert(end, (seg_end, shifted));
            }
        }
        self.segments.insert(start, (end, content));
    }

    /// Patches `buf` (file bytes at `offset`) with every overlapping segment.
    pub fn apply(&self, buf: &mut [u8], offset: u64) {
        let end = offset + buf.len() as u64;
        let first = self
            .segments
            .range(..=offset)
            .next_back()
            .filter(|(_, (e, _))| *e > offset)
            .map(|(&s, _)| s)
            .unwrap_or(offset);
        for (&s, (e, c)) in self.segments.range(first..end) {
            let lo = s.max(offset);
            let hi = (*e).min(end);
            if lo >= hi {
                continue;
            }
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match c {
                Content::Zero => dst.fill(0),
                Content::Data { data, from } => {
                    let a = from + (lo - s) as usize;
                    dst.copy_from_slice(&data[a..a + dst.len()]);
                }
            }
        }
    }
}

/// Result of a replay.
#[derive(Debug, Default)]
pub struct Replay {
    pub overlay: Overlay,
    /// Length the file has once the log is applied (at least its current length).
    pub file_len: u64,
    /// Entries replayed.
    pub entries: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    len: u64,
    tail: u64,
    seq: u64,
    flushed_file_offset: u64,
    last_file_offset: u64,
    /// (file offset, content) in descriptor order.
    writes: Vec<(u64, u64, Content)>,
}

/// Reads `len` bytes of the circular log starting at `pos` (wrapping at its end).
fn circular(log: &[u8], pos: u64, len: u64) -> Vec<u8> {
    let size = log.len() as u64;
    let start = (pos % size) as usize;
    let first = (len as usize).min(log.len() - start);
    let mut out = log[start..start + first].to_vec();
    out.extend_from_slice(&log[..len as usize - first]);
    out
}

/// Parses and validates the entry at `pos`, or `None` if it is not a valid entry.
fn parse_entry(log: &[u8], pos: u64, guid: &Guid) -> Option<Entry> {
    let size = log.len() as u64;
    let head = circular(log, pos, LOG_SECTOR);
    if &head[0..4] != ENTRY_SIGNATURE {
        return None;
    }
    let len = u64::from(le32(&head, 8));
    let tail = u64::from(le32(&head, 12));
    let seq = le64(&head, 16);
    let descriptors = u64::from(le32(&head, 24));
    if len < LOG_SECTOR
        || len % LOG_SECTOR != 0
        || len > size
        || tail % LOG_SECTOR != 0
        || tail >= size
        || seq == 0
    {
        return None;
    }
    if head[32..48] != guid.0 {
        return None;
    }
    let desc_sectors = (64 + 32 * descriptors).div_ceil(LOG_SECTOR);
    if desc_sectors * LOG_SECTOR > len {
        return None;
    }
    let mut bytes = circular(log, pos, len);
    let stored = le32(&bytes, 4);
    bytes[4..8].fill(0);
    if crc32c::crc32c(&bytes) != stored {
        return None;
    }
    let mut writes = Vec::with_capacity(descriptors as usize);
    let mut data_sector = desc_sectors;
    for i in 0..descriptors as usize {
        let d = &bytes[64 + 32 * i..96 + 32 * i];
        let file_offset = le64(d, 16);
        if le64(d, 24) != seq || !file_offset.is_multiple_of(LOG_SECTOR) {
            return None;
        }
        if &d[0..4] == ZERO_DESC_SIGNATURE {
            let zero_len = le64(d, 8);
            if !zero_len.is_multiple_of(LOG_SECTOR) || file_offset.checked_add(zero_len).is_none() {
                return None;
            }
            writes.push((file_offset, zero_len, Content::Zero));
        } else if &d[0..4] == DATA_DESC_SIGNATURE {
            if (data_sector + 1) * LOG_SECTOR > len {
                return None;
            }
            let s = &bytes
                [(data_sector * LOG_SECTOR) as usize..((data_sector + 1) * LOG_SECTOR) as usize];
            let sector_seq = (u64::from(le32(s, 4)) << 32) | u64::from(le32(s, 4092));
            if &s[0..4] != DATA_SECTOR_SIGNATURE || sector_seq != seq {
                return None;
            }
            let mut full = Vec::with_capacity(LOG_SECTOR as usize);
            full.extend_from_slice(&d[8..16]); // leading bytes
            full.extend_from_slice(&s[8..4092]);
            full.extend_from_slice(&d[4..8]); // trailing bytes
            writes.push((
                file_offset,
                LOG_SECTOR,
                Content::Data {
                    data: full.into(),
                    from: 0,
                },
            ));
            data_sector += 1;
        } else {
            return None;
        }
    }
    Some(Entry {
        len,
        tail,
        seq,
        flushed_file_offset: le64(&head, 48),
        last_file_offset: le64(&head, 56),
        writes,
    })
}

/// Finds the active sequence in `log` (the raw log region) and replays it over a file of
/// `file_len` bytes. An empty or entirely invalid log replays nothing.
pub fn replay(log: &[u8], guid: &Guid, file_len: u64) -> Result<Replay, ImageError> {
    let size = log.len() as u64;
    if size == 0 || !size.is_multiple_of(LOG_SECTOR) {
        return Err(corrupt(format!(
            "log length {size} is not a multiple of 4 KiB"
        )));
    }
    let mut entries: HashMap<u64, Entry> = HashMap::new();
    for i in 0..size / LOG_SECTOR {
        if let Some(e) = parse_entry(log, i * LOG_SECTOR, guid) {
            entries.insert(i * LOG_SECTOR, e);
        }
    }
    let mut heads: Vec<(u64, u64)> = entries.iter().map(|(&pos, e)| (e.seq, pos)).collect();
    heads.sort_unstable_by(|a, b| b.cmp(a));
    let mut active: Option<Vec<u64>> = None;
    'heads: for &(seq, head_pos) in &heads {
        let head = &entries[&head_pos];
        // Walk from the tail the head names, one consecutive sequence number at a time.
        let mut chain = Vec::new();
        let mut pos = head.tail;
        let mut expect: Option<u64> = None;
        loop {
            let Some(e) = entries.get(&pos) else {
                continue 'heads;
            };
            if expect.is_some_and(|x| x != e.seq) || chain.len() > entries.len() {
                continue 'heads;
            }
            chain.push(pos);
            if pos == head_pos && e.seq == seq {
                break;
            }
            if e.seq >= seq {
                continue 'heads;
            }
            expect = Some(e.seq + 1);
            pos = (pos + e.len) % size;
        }
        active = Some(chain);
        break;
    }
    let mut out = Replay {
        overlay: Overlay::default(),
        file_len,
        entries: 0,
    };
    let Some(chain) = active else {
        return Ok(out);
    };
    for pos in chain {
        let e = &entries[&pos];
        if e.flushed_file_offset > file_len {
            return Err(corrupt(format!(
                "log entry {} says the file was flushed up to {} bytes, but it has only {file_len} \
                 (truncated file)",
                e.seq, e.flushed_file_offset
            )));
        }
        for (offset, len, content) in &e.writes {
            out.overlay.put(*offset, *len, content.clone());
            out.file_len = out.file_len.max(offset + len);
        }
        out.file_len = out.file_len.max(e.last_file_offset);
        out.entries += 1;
    }
    Ok(out)
}

/// Builds a valid log entry (test helper shared with the integration tests through
/// [`super::testing`]): data sectors and zero ranges at 4 KiB-aligned file offsets.
pub fn build_entry(
    guid: &Guid,
    seq: u64,
    tail: u32,
    flushed_file_offset: u64,
    last_file_offset: u64,
    data: &[(u64, [u8; 4096])],
    zeros: &[(u64, u64)],
) -> Vec<u8> {
    let descriptors = (data.len() + zeros.len()) as u64;
    let desc_sectors = (64 + 32 * descriptors).div_ceil(LOG_SECTOR);
    let len = (desc_sectors + data.len() as u64) * LOG_SECTOR;
    let mut b = vec![0u8; len as usize];
    b[0..4].copy_from_slice(ENTRY_SIGNATURE);
    b[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    b[12..16].copy_from_slice(&tail.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..28].copy_from_slice(&(descriptors as u32).to_le_bytes());
    b[32..48].copy_from_slice(&guid.0);
    b[48..56].copy_from_slice(&flushed_file_offset.to_le_bytes());
    b[56..64].copy_from_slice(&last_file_offset.to_le_bytes());
    let mut d = 64usize;
    for &(offset, len) in zeros {
        b[d..d + 4].copy_from_slice(ZERO_DESC_SIGNATURE);
        b[d + 8..d + 16].copy_from_slice(&len.to_le_bytes());
        b[d + 16..d + 24].copy_from_slice(&offset.to_le_bytes());
        b[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
        d += 32;
    }
    for (i, (offset, sector)) in data.iter().enumerate() {
        b[d..d + 4].copy_from_slice(DATA_DESC_SIGNATURE);
        b[d + 4..d + 8].copy_from_slice(&sector[4092..4096]);
        b[d + 8..d + 16].copy_from_slice(&sector[0..8]);
        b[d + 16..d + 24].copy_from_slice(&offset.to_le_bytes());
        b[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
        d += 32;
        let s = ((desc_sectors + i as u64) * LOG_SECTOR) as usize;
        b[s..s + 4].copy_from_slice(DATA_SECTOR_SIGNATURE);
        b[s + 4..s + 8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
        b[s + 8..s + 4092].copy_from_slice(&sector[8..4092]);
        b[s + 4092..s + 4096].copy_from_slice(&(seq as u32).to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(fill: u8) -> [u8; 4096] {
        let mut s = [fill; 4096];
        s[0] = 0xA0;
        s[4095] = 0x0B;
        s
    }

    fn read(o: &Overlay, base: &[u8], off: u64, len: usize) -> Vec<u8> {
        let mut b = base[off as usize..off as usize + len].to_vec();
        o.apply(&mut b, off);
        b
    }

    #[test]
    fn overlay_later_writes_win_and_split() {
        let mut o = Overlay::default();
        let base = vec![9u8; 64];
        o.put(
            8,
            16,
            Content::Data {
                data: (0..16u8).collect::<Vec<_>>().into(),
                from: 0,
            },
        );
        o.put(12, 4, Content::Zero);
        let got = read(&o, &base, 0, 32);
        let mut want = vec![9u8; 32];
        want[8..24].copy_from_slice(&(0..16u8).collect::<Vec<_>>());
        want[12..16].fill(0);
        assert_eq!(got, want);
        // Partial read from the middle of a split segment.
        assert_eq!(read(&o, &base, 17, 3), vec![9, 10, 11]);
        o.put(0, 64, Content::Zero);
        assert_eq!(read(&o, &base, 0, 64), vec![0u8; 64]);
        assert_eq!(o.segments.len(), 1);
    }

    #[test]
    fn replays_the_active_sequence_only() {
        let guid = Guid([5; 16]);
        let mut log = vec![0u8; 1 << 20];
        // A stale entry (seq 3) at 0, then the active sequence 7, 8 starting at 8 KiB.
        let stale = build_entry(&guid, 3, 0, 0, 0, &[(4096, sector(1))], &[]);
        log[..stale.len()].copy_from_slice(&stale);
        let e7 = build_entry(&guid, 7, 8192, 0, 0, &[(4096, sector(2))], &[(16384, 8192)]);
        log[8192..8192 + e7.len()].copy_from_slice(&e7);
        let at = 8192 + e7.len();
        let e8 = build_entry(&guid, 8, 8192, 1 << 20, 3 << 20, &[(8192, sector(3))], &[]);
        log[at..at + e8.len()].copy_from_slice(&e8);
        let r = replay(&log, &guid, 2 << 20).unwrap();
        assert_eq!(r.entries, 2);
        assert_eq!(r.file_len, 3 << 20);
        let base = vec![0xFFu8; 32768];
        assert_eq!(read(&r.overlay, &base, 4096, 4096), sector(2).to_vec());
        assert_eq!(read(&r.overlay, &base, 8192, 4096), sector(3).to_vec());
        assert_eq!(read(&r.overlay, &base, 16384, 8192), vec![0u8; 8192]);
        assert_eq!(read(&r.overlay, &base, 24576, 10), vec![0xFF; 10]);
        // A different GUID makes every entry invalid: nothing to replay.
        assert_eq!(replay(&log, &Guid([6; 16]), 2 << 20).unwrap().entries, 0);
        // A flushed offset past the end of the file means the file was truncated.
        assert!(replay(&log, &guid, 4096).is_err());
    }

    #[test]
    fn corrupt_entries_are_ignored() {
        let guid = Guid([5; 16]);
        let mut log = vec![0u8; 1 << 20];
        let e = build_entry(&guid, 1, 0, 0, 0, &[(4096, sector(2))], &[]);
        log[..e.len()].copy_from_slice(&e);
        assert_eq!(replay(&log, &guid, 1 << 20).unwrap().entries, 1);
        for flip in [5usize, 20, 70, 4096 + 100, 4096 + 4093] {
            let mut bad = log.clone();
            bad[flip] ^= 0x40;
            assert_eq!(
                replay(&bad, &guid, 1 << 20).unwrap().entries,
                0,
                "flip {flip}"
            );
        }
        // A chain whose tail entry is missing is not active.
        let lone = build_entry(&guid, 9, 65536, 0, 0, &[], &[]);
        let mut log2 = vec![0u8; 1 << 20];
        log2[..lone.len()].copy_from_slice(&lone);
        assert_eq!(replay(&log2, &guid, 1 << 20).unwrap().entries, 0);
    }

    #[test]
    fn entries_may_wrap_around_the_log_end() {
        let guid = Guid([1; 16]);
        let size = 1usize << 20;
        let mut log = vec![0u8; size];
        let e = build_entry(&guid, 4, (size - 4096) as u32, 0, 0, &[(0, sector(7))], &[]);
        assert_eq!(e.len(), 8192);
        log[size - 4096..].copy_from_slice(&e[..4096]);
        log[..4096].copy_from_slice(&e[4096..]);
        let r = replay(&log, &guid, 1 << 20).unwrap();
        assert_eq!(r.entries, 1);
        assert_eq!(
            read(&r.overlay, &vec![0u8; 4096], 0, 4096),
            sector(7).to_vec()
        );
    }
}
