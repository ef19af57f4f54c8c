//! Bounded framing helpers shared by the QMP and guest-agent clients (and their fakes).
//!
//! Both protocols send one JSON object per line. The peer is not trusted to be well behaved
//! (a guest controls what the guest agent channel carries), so every read is bounded: a line
//! longer than the caller's limit is an error instead of an unbounded allocation.
//!
//! Invariants: `buf` only ever grows up to `max + chunk` bytes before the limit is reported;
//! bytes are consumed from the reader exactly up to and including the delimiter.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The guest-agent resynchronisation sentinel: never valid in UTF-8, so never inside JSON.
pub const SYNC_DELIMITER: u8 = 0xFF;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("read failed")]
    Io(#[source] std::io::Error),
    #[error("message longer than {max} bytes")]
    TooLong { max: usize },
    #[error("connection closed in the middle of a message")]
    TruncatedAtEof,
}

/// Reads bytes up to and including `\n` into `buf` (cleared first), without the newline.
///
/// Returns `Ok(false)` on a clean end of stream (no bytes pending), `Ok(true)` when a line was
/// read. Not cancellation safe: a cancelled call may leave a partial line consumed.
pub async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, FrameError> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await.map_err(FrameError::Io)?;
        if available.is_empty() {
            return if buf.is_empty() {
                Ok(false)
            } else {
                Err(FrameError::TruncatedAtEof)
            };
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if buf.len() + chunk.len() > max {
            return Err(FrameError::TooLong { max });
        }
        buf.extend_from_slice(chunk);
        let used = found.unwrap_or(available.len());
        reader.consume(used);
        if found.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(true);
        }
    }
}

/// Discards bytes up to and including the next [`SYNC_DELIMITER`]. Returns `Ok(false)` if the
/// stream ended first. Nothing is buffered, so arbitrary amounts of garbage are harmless.
pub async fn skip_past_delimiter<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<bool, FrameError> {
    loop {
        let available = reader.fill_buf().await.map_err(FrameError::Io)?;
        if available.is_empty() {
            return Ok(false);
        }
        match available.iter().position(|&b| b == SYNC_DELIMITER) {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(true);
            }
            None => {
                let n = available.len();
                reader.consume(n);
            }
        }
    }
}

/// Returns true when `line` holds only ASCII whitespace (QEMU separates messages with CRLF).
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn reads_lines_and_strips_crlf() {
        let data: &[u8] = b"{\"a\":1}\r\n{\"b\":2}\nrest";
        let mut r = BufReader::with_capacity(3, data);
        let mut buf = Vec::new();
        assert!(read_line_bounded(&mut r, &mut buf, 100).await.unwrap());
        assert_eq!(buf, b"{\"a\":1}");
        assert!(read_line_bounded(&mut r, &mut buf, 100).await.unwrap());
        assert_eq!(buf, b"{\"b\":2}");
        assert!(matches!(
            read_line_bounded(&mut r, &mut buf, 100).await,
            Err(FrameError::TruncatedAtEof)
        ));
    }

    #[tokio::test]
    async fn clean_eof_and_limit() {
        let mut r = BufReader::new(&b""[..]);
        let mut buf = Vec::new();
        assert!(!read_line_bounded(&mut r, &mut buf, 10).await.unwrap());
        let long = vec![b'x'; 1000];
        let mut r = BufReader::with_capacity(16, &long[..]);
        assert!(matches!(
            read_line_bounded(&mut r, &mut buf, 64).await,
            Err(FrameError::TooLong { max: 64 })
        ));
        assert!(buf.len() <= 64);
    }

    #[tokio::test]
    async fn skips_garbage_to_delimiter() {
        let mut data = vec![b'g'; 5000];
        data.push(SYNC_DELIMITER);
        data.extend_from_slice(b"{\"return\":1}\n");
        let mut r = BufReader::with_capacity(7, &data[..]);
        assert!(skip_past_delimiter(&mut r).await.unwrap());
        let mut buf = Vec::new();
        assert!(read_line_bounded(&mut r, &mut buf, 100).await.unwrap());
        assert_eq!(buf, b"{\"return\":1}");
        assert!(!skip_past_delimiter(&mut r).await.unwrap());
    }
}
