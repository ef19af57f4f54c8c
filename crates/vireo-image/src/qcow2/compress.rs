//! Compressed-cluster codecs: raw deflate with a 4 KiB window (qcow2 "zlib", what qemu reads
//! with `inflateInit2(-12)`) and Zstandard frames.
//!
//! Invariants: decompression produces exactly one cluster or fails; it never allocates more
//! than the output cluster plus a bounded zstd window (frames asking for a window larger than
//! [`MAX_ZSTD_WINDOW`] are refused before any decoder state is built); trailing bytes after
//! the stream (the rest of the last 512-byte sector) are ignored.

use std::io::Read;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::header::CompressionType;
use crate::error::ImageError;

/// Deflate window qemu uses for qcow2 clusters (2^12 bytes).
const DEFLATE_WINDOW_BITS: u8 = 12;
/// Largest zstd window accepted from an image (qemu's largest cluster is 2 MiB).
pub const MAX_ZSTD_WINDOW: u64 = 8 << 20;
const ZSTD_MAGIC: u32 = 0xFD2F_B528;

fn corrupt(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "qcow2",
        detail: detail.into(),
    }
}

/// Decompresses `input` into exactly `out.len()` bytes.
pub fn decompress(kind: CompressionType, input: &[u8], out: &mut [u8]) -> Result<(), ImageError> {
    match kind {
        CompressionType::Zlib => inflate_raw(input, out),
        CompressionType::Zstd => zstd_decompress(input, out),
    }
}

fn inflate_raw(input: &[u8], out: &mut [u8]) -> Result<(), ImageError> {
    let mut d = Decompress::new_with_window_bits(false, DEFLATE_WINDOW_BITS);
    loop {
        let in_pos = d.total_in() as usize;
        let out_pos = d.total_out() as usize;
        if out_pos == out.len() {
            return Ok(());
        }
        let status = d
            .decompress(
                &input[in_pos..],
                &mut out[out_pos..],
                FlushDecompress::Finish,
            )
            .map_err(|e| corrupt(format!("deflate stream: {e}")))?;
        let progressed = d.total_in() as usize != in_pos || d.total_out() as usize != out_pos;
        match status {
            Status::StreamEnd if (d.total_out() as usize) < out.len() => {
                return Err(corrupt(
                    "compressed cluster decompresses to less than a cluster",
                ));
            }
            Status::StreamEnd => return Ok(()),
            Status::Ok | Status::BufError if !progressed => {
                return Err(corrupt("compressed cluster is truncated"));
            }
            Status::Ok | Status::BufError => {}
        }
    }
}

/// Window size a zstd frame header asks for (spec RFC 8878 §3.1.1.1), or an error if the
/// header is malformed. Skippable frames are rejected: qemu never writes them.
fn zstd_window(frame: &[u8]) -> Result<u64, ImageError> {
    if frame.len() < 6 {
        return Err(corrupt("zstd frame header truncated"));
    }
    let magic = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    if magic != ZSTD_MAGIC {
        return Err(corrupt("compressed cluster is not a zstd frame"));
    }
    let fhd = frame[4];
    let single_segment = fhd & 0x20 != 0;
    let fcs_flag = fhd >> 6;
    let did_flag = fhd & 3;
    if !single_segment {
        let wd = frame[5];
        let exponent = u64::from(wd >> 3);
        let mantissa = u64::from(wd & 7);
        let base = 1u64 << (10 + exponent);
        return Ok(base + (base / 8) * mantissa);
    }
    // Single segment: the window is the frame content size.
    let did_len = [0usize, 1, 2, 4][did_flag as usize];
    let fcs_len = [1usize, 2, 4, 8][fcs_flag as usize];
    let start = 5 + did_len;
    let bytes = frame
        .get(start..start + fcs_len)
        .ok_or_else(|| corrupt("zstd frame header truncated"))?;
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    if fcs_len == 2 {
        v += 256;
    }
    Ok(v)
}

fn zstd_decompress(input: &[u8], out: &mut [u8]) -> Result<(), ImageError> {
    let mut filled = 0usize;
    let mut rest = input;
    // A cluster may be split over several frames; decode frames until the cluster is full.
    while filled < out.len() {
        let window = zstd_window(rest)?;
        if window > MAX_ZSTD_WINDOW {
            return Err(corrupt(format!("zstd window of {window} bytes")));
        }
        let mut src = rest;
        let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut src)
            .map_err(|e| corrupt(format!("zstd frame: {e}")))?;
        let before = filled;
        loop {
            let n = dec
                .read(&mut out[filled..])
                .map_err(|e| corrupt(format!("zstd data: {e}")))?;
            if n == 0 {
                break;
            }
            filled += n;
            if filled == out.len() {
                return Ok(());
            }
        }
        drop(dec);
        if filled == before {
            return Err(corrupt("zstd frame produced no data"));
        }
        rest = src;
    }
    Ok(())
}

/// Compresses one cluster. Returns `None` when the result would not be smaller than the
/// cluster (the caller then stores it uncompressed, as qemu does).
pub fn compress(kind: CompressionType, cluster: &[u8]) -> Result<Option<Vec<u8>>, ImageError> {
    let limit = cluster.len().saturating_sub(1);
    let out = match kind {
        CompressionType::Zlib => deflate_raw(cluster, limit)?,
        CompressionType::Zstd => {
            let v = ruzstd::encoding::compress_to_vec(
                cluster,
                ruzstd::encoding::CompressionLevel::Fastest,
            );
            (v.len() <= limit).then_some(v)
        }
    };
    Ok(out)
}

fn deflate_raw(input: &[u8], limit: usize) -> Result<Option<Vec<u8>>, ImageError> {
    let mut c = Compress::new_with_window_bits(Compression::default(), false, DEFLATE_WINDOW_BITS);
    let mut out = vec![0u8; limit];
    loop {
        let in_pos = c.total_in() as usize;
        let out_pos = c.total_out() as usize;
        if out_pos == limit {
            return Ok(None);
        }
        let status = c
            .compress(&input[in_pos..], &mut out[out_pos..], FlushCompress::Finish)
            .map_err(|e| ImageError::InvalidArgument(format!("deflate failed: {e}")))?;
        match status {
            Status::StreamEnd => {
                out.truncate(c.total_out() as usize);
                return Ok(Some(out));
            }
            Status::Ok | Status::BufError => {
                if c.total_out() as usize == out_pos && c.total_in() as usize == in_pos {
                    // No room left to make progress: incompressible within the limit.
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i / 7) % 251) as u8).collect()
    }

    #[test]
    fn deflate_round_trip() {
        let data = pattern(65536);
        let c = compress(CompressionType::Zlib, &data).unwrap().unwrap();
        assert!(c.len() < data.len());
        let mut out = vec![0u8; 65536];
        // Trailing garbage after the stream must be ignored.
        let mut padded = c.clone();
        padded.extend_from_slice(&[0xAA; 300]);
        decompress(CompressionType::Zlib, &padded, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn zstd_round_trip() {
        let data = pattern(65536);
        let c = compress(CompressionType::Zstd, &data).unwrap().unwrap();
        let mut out = vec![0u8; 65536];
        let mut padded = c.clone();
        padded.extend_from_slice(&[0x55; 100]);
        decompress(CompressionType::Zstd, &padded, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn incompressible_is_none() {
        let mut x = 0x1234_5678_u32;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(compress(CompressionType::Zlib, &data).unwrap().is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = vec![0u8; 4096];
        for input in [
            &[][..],
            &[0xff; 10][..],
            &[0x28, 0xb5, 0x2f, 0xfd, 0, 0][..],
        ] {
            assert!(decompress(CompressionType::Zlib, input, &mut out).is_err());
            assert!(decompress(CompressionType::Zstd, input, &mut out).is_err());
        }
    }
}
