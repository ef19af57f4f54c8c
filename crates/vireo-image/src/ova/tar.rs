//! Minimal, defensive tar (POSIX ustar, with pax and GNU long-name extensions) for OVA files.
//!
//! Reading: 512-byte headers with verified checksums, octal or base-256 sizes, ustar prefixes,
//! pax `path`/`size` records and GNU `L` long names. Only regular files (and directories,
//! which are skipped) are accepted; links, devices and FIFOs are refused. Every member name
//! must be a plain relative path: no absolute paths, no `..`, no backslashes, no NULs.
//!
//! Writing: ustar headers (base-256 sizes beyond 8 GiB), content padded to 512 bytes, two zero
//! blocks at the end.
//!
//! Invariants: extension records are bounded ([`MAX_EXTENSION`]), member sizes are bounded by
//! the caller's cap before any content is read, and a short read anywhere is an error.

use std::io::{Read, Write};

use crate::error::ImageError;

/// Largest pax/GNU extension record accepted.
pub const MAX_EXTENSION: u64 = 64 << 10;
/// Longest member name accepted.
pub const MAX_NAME: usize = 1024;
const BLOCK: usize = 512;

fn bad(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "ova",
        detail: detail.into(),
    }
}

/// Checks that `name` is a plain relative path and returns it without a leading `./`.
pub fn safe_name(name: &str) -> Result<String, ImageError> {
    let trimmed = name.trim_start_matches("./");
    let refuse = |why: &str| Err(bad(format!("member name {name:?} {why}")));
    if trimmed.is_empty() || trimmed.len() > MAX_NAME {
        return refuse("is empty or too long");
    }
    if trimmed.starts_with('/') {
        return refuse("is absolute");
    }
    if trimmed.contains('\\') || trimmed.contains('\0') {
        return refuse("contains a backslash or NUL");
    }
    let trimmed = trimmed.trim_end_matches('/');
    for part in trimmed.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return refuse("has an empty, `.` or `..` component");
        }
    }
    Ok(trimmed.to_string())
}

/// Parses an octal or base-256 numeric field.
fn number(field: &[u8], what: &str) -> Result<u64, ImageError> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        // Base-256: the remaining bits of the field, big-endian.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| bad(format!("{what} field overflows")))?;
        }
        return Ok(v);
    }
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| bad(format!("{what} field {text:?} is not octal")))
}

fn text_field(field: &[u8]) -> Result<String, ImageError> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8(field[..end].to_vec()).map_err(|_| bad("member name is not UTF-8"))
}

/// What a header describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
    /// pax extended header for the next member.
    PaxLocal,
    /// pax global header (ignored).
    PaxGlobal,
    /// GNU long name for the next member.
    GnuLongName,
}

/// A parsed header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub size: u64,
    pub kind: Kind,
}

/// Parses one header block; `Ok(None)` for an all-zero (end-of-archive) block.
pub fn parse_header(block: &[u8; BLOCK]) -> Result<Option<Header>, ImageError> {
    if block.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let stored = number(&block[148..156], "checksum")?;
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return Err(bad(format!(
            "header checksum {stored} does not match {unsigned}"
        )));
    }
    let mut name = text_field(&block[0..100])?;
    if &block[257..262] == b"ustar" {
        let prefix = text_field(&block[345..500])?;
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
    }
    let size = number(&block[124..136], "size")?;
    let kind = match block[156] {
        b'0' | 0 | b'7' => Kind::File,
        b'5' => Kind::Directory,
        b'x' => Kind::PaxLocal,
        b'g' => Kind::PaxGlobal,
        b'L' => Kind::GnuLongName,
        b'1' | b'2' => {
            return Err(bad(format!(
                "member {name:?} is a link, which OVAs must not contain"
            )))
        }
        other => {
            return Err(bad(format!(
                "member {name:?} has unsupported type {:?}",
                other as char
            )))
        }
    };
    Ok(Some(Header { name, size, kind }))
}

/// Parses pax records (`LEN key=value\n`…) for `path` and `size`.
fn parse_pax(data: &[u8]) -> Result<(Option<String>, Option<u64>), ImageError> {
    let (mut path, mut size) = (None, None);
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("malformed pax record"))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&l| l > space + 1 && l <= rest.len())
            .ok_or_else(|| bad("malformed pax record length"))?;
        let record = &rest[space + 1..len];
        let record = record
            .strip_suffix(b"\n")
            .ok_or_else(|| bad("pax record without newline"))?;
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("pax record without '='"))?;
        let value =
            std::str::from_utf8(&record[eq + 1..]).map_err(|_| bad("pax value is not UTF-8"))?;
        match &record[..eq] {
            b"path" => path = Some(value.to_string()),
            b"size" => size = Some(value.parse().map_err(|_| bad("pax size is not a number"))?),
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok((path, size))
}

/// A regular-file member whose content the reader is positioned at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Validated relative name.
    pub name: String,
    pub size: u64,
}

/// Sequential reader of tar members.
#[derive(Debug)]
pub struct TarReader<R: Read> {
    inner: R,
    /// Content bytes (plus padding) of the current member not consumed yet.
    pending: u64,
    /// Bytes consumed from the archive so far.
    pub position: u64,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            pending: 0,
            position: 0,
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ImageError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad(format!("archive is truncated at byte {}", self.position))
            } else {
                ImageError::io("reading the archive", e)
            }
        })?;
        self.position += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, mut n: u64) -> Result<(), ImageError> {
        let mut scratch = [0u8; 8192];
        while n > 0 {
            let k = (n as usize).min(scratch.len());
            self.read_exact(&mut scratch[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    fn padded(size: u64) -> u64 {
        size.div_ceil(BLOCK as u64) * BLOCK as u64
    }

    fn read_extension(&mut self, size: u64) -> Result<Vec<u8>, ImageError> {
        if size > MAX_EXTENSION {
            return Err(bad(format!("extension record of {size} bytes")));
        }
        let mut data = vec![0u8; size as usize];
        self.read_exact(&mut data)?;
        self.skip(Self::padded(size) - size)?;
        Ok(data)
    }

    /// Advances to the next regular file; `None` at the end of the archive. Content of the
    /// previous member that was not read is skipped. `max_size` caps every member's size.
    pub fn next_member(&mut self, max_size: u64) -> Result<Option<Member>, ImageError> {
        self.skip(self.pending)?;
        self.pending = 0;
        let (mut long_name, mut pax_size) = (None, None);
        loop {
            let mut block = [0u8; BLOCK];
            match self.inner.read(&mut block[..1]) {
                // A missing end-of-archive marker after a complete member is tolerated.
                Ok(0) => return Ok(None),
                Ok(_) => {
                    self.position += 1;
                    self.read_exact(&mut block[1..])?;
                }
                Err(e) => return Err(ImageError::io("reading the archive", e)),
            }
            let Some(header) = parse_header(&block)? else {
                return Ok(None);
            };
            match header.kind {
                Kind::PaxLocal => {
                    let data = self.read_extension(header.size)?;
                    let (path, size) = parse_pax(&data)?;
                    long_name = path.or(long_name);
                    pax_size = size.or(pax_size);
                }
                Kind::PaxGlobal => {
                    self.read_extension(header.size)?;
                }
                Kind::GnuLongName => {
                    let data = self.read_extension(header.size)?;
                    long_name = Some(text_field(&data)?);
                }
                Kind::Directory => {
                    safe_name(long_name.as_deref().unwrap_or(&header.name))?;
                    self.skip(Self::padded(header.size))?;
                    long_name = None;
                    pax_size = None;
                }
                Kind::File => {
                    let name = safe_name(long_name.as_deref().unwrap_or(&header.name))?;
                    let size = pax_size.unwrap_or(header.size);
                    if size > max_size {
                        return Err(ImageError::LimitExceeded {
                            what: "OVA member",
                            requested: size,
                            limit: max_size,
                        });
                    }
                    self.pending = Self::padded(size);
                    return Ok(Some(Member { name, size }));
                }
            }
        }
    }

    /// Reads up to `buf.len()` bytes of the current member's content (exactly, unless fewer
    /// remain of the member); returns how many were read.
    pub fn read_content(
        &mut self,
        member: &Member,
        consumed: u64,
        buf: &mut [u8],
    ) -> Result<usize, ImageError> {
        let left = member.size.saturating_sub(consumed);
        let n = (buf.len() as u64).min(left) as usize;
        self.read_exact(&mut buf[..n])?;
        self.pending -= n as u64;
        Ok(n)
    }
}

/// Writes a ustar header for a regular file.
pub fn write_header<W: Write>(
    out: &mut W,
    name: &str,
    size: u64,
    mtime: u64,
) -> Result<(), ImageError> {
    let name = safe_name(name)?;
    if name.len() > 100 {
        return Err(ImageError::InvalidArgument(format!(
            "member name {name:?} longer than 100 bytes"
        )));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 0o77777777777 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(format!("{:011o}\0", mtime.min(0o77777777777)).as_bytes());
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.write_all(&h)
        .map_err(|e| ImageError::io("writing the archive", e))
}

/// Pads a member of `size` bytes to the block size.
pub fn write_padding<W: Write>(out: &mut W, size: u64) -> Result<(), ImageError> {
    let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
    out.write_all(&[0u8; BLOCK][..pad as usize])
        .map_err(|e| ImageError::io("writing the archive", e))
}

/// Writes the end-of-archive marker.
pub fn write_end<W: Write>(out: &mut W) -> Result<(), ImageError> {
    out.write_all(&[0u8; 2 * BLOCK])
        .map_err(|e| ImageError::io("writing the archive", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            write_header(&mut out, name, data.len() as u64, 0).unwrap();
            out.extend_from_slice(data);
            write_padding(&mut out, data.len() as u64).unwrap();
        }
        write_end(&mut out).unwrap();
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
        let mut r = TarReader::new(bytes);
        let mut out = Vec::new();
        while let Some(m) = r.next_member(1 << 20)? {
            let mut data = vec![0u8; m.size as usize];
            let n = r.read_content(&m, 0, &mut data)?;
            assert_eq!(n as u64, m.size);
            out.push((m.name, data));
        }
        Ok(out)
    }

    #[test]
    fn round_trips() {
        let a = archive(&[
            ("a.ovf", b"<Envelope/>"),
            ("./dir/b.vmdk", &[7u8; 1000]),
            ("empty", b""),
        ]);
        assert_eq!(a.len() % 512, 0);
        let got = read_all(&a).unwrap();
        assert_eq!(got[0], ("a.ovf".to_string(), b"<Envelope/>".to_vec()));
        assert_eq!(got[1].0, "dir/b.vmdk");
        assert_eq!(got[1].1, vec![7u8; 1000]);
        assert_eq!(got[2].1.len(), 0);
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad_name in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            "a\\b",
            "",
            ".",
            "a//b",
            "./",
        ] {
            assert!(safe_name(bad_name).is_err(), "{bad_name:?}");
        }
        assert_eq!(safe_name("./a/b.vmdk").unwrap(), "a/b.vmdk");
        // A crafted header with a traversal name is refused by the reader.
        let mut a = archive(&[("xx/evil", b"data")]);
        a[0..7].copy_from_slice(b"../evil");
        let sum: u64 = a[..512]
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        a[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(read_all(&a).is_err());
    }

    #[test]
    fn damaged_archives_are_errors() {
        let a = archive(&[("a", &[1u8; 600])]);
        let mut bad_sum = a.clone();
        bad_sum[10] = b'z';
        assert!(read_all(&bad_sum)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        assert!(read_all(&a[..700])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        // Links are refused.
        let mut link = a.clone();
        link[156] = b'2';
        let sum: u64 = link[..512]
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        link[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(read_all(&link).unwrap_err().to_string().contains("link"));
        // Size caps apply before content is read.
        let mut r = TarReader::new(&a[..]);
        assert!(matches!(
            r.next_member(100),
            Err(ImageError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn base256_and_pax() {
        let mut out = Vec::new();
        write_header(&mut out, "big", 1 << 40, 0).unwrap();
        assert_eq!(
            parse_header(out[..512].try_into().unwrap())
                .unwrap()
                .unwrap()
                .size,
            1 << 40
        );
        let (p, s) = parse_pax(b"28 path=some/long/name.vmdk\n11 size=42\n").unwrap();
        assert_eq!(p.as_deref(), Some("some/long/name.vmdk"));
        assert_eq!(s, Some(42));
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"x").is_err());
    }
}
