//! VMDK text descriptors: parsing (pure, defensive) and rendering for the images Vireo writes.
//!
//! A descriptor is a small line-oriented text file (or a text block embedded in a sparse
//! extent) with three parts: `key=value` header lines, extent lines
//! (`RW 2048 SPARSE "disk.vmdk"`, `RW 4096 FLAT "disk-flat.vmdk" 0`, `RDONLY 100 ZERO`) and the
//! disk database (`ddb.adapterType = "lsilogic"`).
//!
//! Invariants of a parsed [`Descriptor`]:
//! - the sum of all extent sizes, in bytes, fits in `u64` (zero-sized extents, which a
//!   zero-sized disk has, are kept and map nothing);
//! - file-backed extents (FLAT, VMFS, SPARSE) carry a non-empty file name, ZERO extents none;
//! - the number of extents is at most [`MAX_EXTENTS`];
//! - extent file names are *not* resolved here: the caller resolves them through the
//!   [`crate::PathPolicy`], so a hostile name is harmless until then.

use crate::error::ImageError;

/// Most extents a descriptor may list (a twoGbMaxExtent image of 8 TiB has 4096).
pub const MAX_EXTENTS: usize = 4096;

/// Longest single descriptor line accepted (real ones are well under 1 KiB).
const MAX_LINE: usize = 64 * 1024;

/// How an extent's data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentType {
    /// Raw sectors in a file, starting at a sector offset (`FLAT` and ESX's `VMFS`).
    Flat,
    /// A hosted sparse extent (`KDMV` header, grain directory and tables).
    Sparse,
    /// Reads as zeros, has no file.
    Zero,
}

/// Access mode of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExtentLine {
    pub access: Access,
    /// Size of the extent in 512-byte sectors.
    pub sectors: u64,
    pub kind: ExtentType,
    /// File name as written in the descriptor (unresolved); `None` for ZERO extents.
    pub file: Option<String>,
    /// Offset in sectors into a FLAT extent's file.
    pub offset_sectors: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub version: Option<u32>,
    pub cid: Option<u32>,
    pub parent_cid: Option<u32>,
    pub create_type: Option<String>,
    pub parent_file_name_hint: Option<String>,
    pub extents: Vec<ExtentLine>,
    /// `ddb.*` entries in file order, keys without the `ddb.` prefix.
    pub ddb: Vec<(String, String)>,
}

impl Descriptor {
    /// Value of a disk-database key (`adapterType`, `geometry.cylinders`, …).
    pub fn ddb_value(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True when the descriptor names a parent (delta disk).
    pub fn has_parent(&self) -> bool {
        self.parent_cid.is_some_and(|c| c != u32::MAX) && self.parent_file_name_hint.is_some()
    }
}

fn corrupt(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "vmdk",
        detail: detail.into(),
    }
}

/// True when `text` looks like a VMDK text descriptor (used for content detection).
pub fn looks_like_descriptor(head: &[u8]) -> bool {
    let text = match std::str::from_utf8(&head[..head.len().min(4096)]) {
        Ok(t) => t,
        // A cut-off multi-byte character at the end of the probe window is fine.
        Err(e) => match std::str::from_utf8(&head[..e.valid_up_to()]) {
            Ok(t) => t,
            Err(_) => return false,
        },
    };
    let lower = text.to_ascii_lowercase();
    lower.trim_start().starts_with("# disk descriptorfile")
        || (lower.contains("createtype") && lower.contains("# extent description"))
}

/// Parses descriptor text. `bytes` may contain trailing NULs (embedded descriptors are padded).
pub fn parse(bytes: &[u8]) -> Result<Descriptor, ImageError> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = std::str::from_utf8(&bytes[..end]).map_err(|e| {
        corrupt(format!(
            "descriptor is not UTF-8 (byte {})",
            e.valid_up_to()
        ))
    })?;
    let mut desc = Descriptor::default();
    let mut total: u64 = 0;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        if raw.len() > MAX_LINE {
            return Err(corrupt(format!("descriptor line {line_no} is too long")));
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_ascii_whitespace().next().unwrap_or("");
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
            if desc.extents.len() >= MAX_EXTENTS {
                return Err(corrupt(format!(
                    "descriptor lists more than {MAX_EXTENTS} extents"
                )));
            }
            let extent = parse_extent_line(line)
                .map_err(|d| corrupt(format!("descriptor line {line_no}: {d}")))?;
            total = total
                .checked_add(extent.sectors)
                .filter(|t| t.checked_mul(512).is_some())
                .ok_or_else(|| corrupt("total extent size overflows"))?;
            desc.extents.push(extent);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(corrupt(format!(
                "descriptor line {line_no} is neither key=value nor an extent"
            )));
        };
        let key = key.trim();
        let value = unquote(value.trim());
        if let Some(ddb_key) = key.strip_prefix("ddb.") {
            desc.ddb.push((ddb_key.to_string(), value.to_string()));
            continue;
        }
        match key.to_ascii_lowercase().as_str() {
            "version" => desc.version = Some(parse_num(value, line_no)?),
            "cid" => desc.cid = Some(parse_hex(value, line_no)?),
            "parentcid" => desc.parent_cid = Some(parse_hex(value, line_no)?),
            "createtype" => desc.create_type = Some(value.to_string()),
            "parentfilenamehint" => desc.parent_file_name_hint = Some(value.to_string()),
            // encoding, isNativeSnapshot, changeTrackPath…: informational.
            _ => {}
        }
    }
    Ok(desc)
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

fn parse_num(value: &str, line_no: usize) -> Result<u32, ImageError> {
    value.parse().map_err(|_| {
        corrupt(format!(
            "descriptor line {line_no}: {value:?} is not a number"
        ))
    })
}

fn parse_hex(value: &str, line_no: usize) -> Result<u32, ImageError> {
    u32::from_str_radix(value, 16).map_err(|_| {
        corrupt(format!(
            "descriptor line {line_no}: {value:?} is not a hex CID"
        ))
    })
}

/// Parses `ACCESS SIZE TYPE ["FILE" [OFFSET]]`; the file name is quoted and may hold spaces.
fn parse_extent_line(line: &str) -> Result<ExtentLine, String> {
    let (access_tok, rest) = split_token(line);
    let access = match access_tok {
        "RW" => Access::ReadWrite,
        "RDONLY" => Access::ReadOnly,
        _ => return Err(format!("extent access {access_tok:?} is not supported")),
    };
    let (size_tok, rest) = split_token(rest);
    let sectors: u64 = size_tok
        .parse()
        .map_err(|_| format!("bad extent size {size_tok:?}"))?;
    let (type_tok, rest) = split_token(rest);
    let kind = match type_tok {
        "FLAT" | "VMFS" => ExtentType::Flat,
        "SPARSE" => ExtentType::Sparse,
        "ZERO" => ExtentType::Zero,
        other => return Err(format!("extent type {other:?} is not supported")),
    };
    let rest = rest.trim_start();
    if kind == ExtentType::Zero {
        if !rest.is_empty() {
            return Err("ZERO extent must not name a file".into());
        }
        return Ok(ExtentLine {
            access,
            sectors,
            kind,
            file: None,
            offset_sectors: 0,
        });
    }
    let Some(after_quote) = rest.strip_prefix('"') else {
        return Err("extent file name must be quoted".into());
    };
    let Some(close) = after_quote.find('"') else {
        return Err("extent file name has no closing quote".into());
    };
    let file = &after_quote[..close];
    if file.is_empty() || file.contains('\0') {
        return Err("extent file name is empty".into());
    }
    let tail = after_quote[close + 1..].trim();
    let offset_sectors = if tail.is_empty() {
        0
    } else {
        let (off_tok, extra) = split_token(tail);
        if !extra.trim().is_empty() {
            return Err(format!("unexpected text after extent: {extra:?}"));
        }
        off_tok
            .parse()
            .map_err(|_| format!("bad extent offset {off_tok:?}"))?
    };
    if kind == ExtentType::Sparse && offset_sectors != 0 {
        return Err("SPARSE extents cannot start at an offset".into());
    }
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file: Some(file.to_string()),
        offset_sectors,
    })
}

fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Inputs for a descriptor Vireo writes (single sparse extent).
#[derive(Debug, Clone)]
pub struct RenderSpec<'a> {
    pub cid: u32,
    pub create_type: &'a str,
    pub extent_file: &'a str,
    pub sectors: u64,
    pub adapter_type: &'a str,
}

/// Renders the descriptor for a single-extent sparse image (pure; golden-tested).
pub fn render(spec: &RenderSpec<'_>) -> String {
    let (cylinders, heads, sectors_per_track) = geometry(spec.sectors);
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         encoding=\"UTF-8\"\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"{create}\"\n\
         \n\
         # Extent description\n\
         RW {sectors} SPARSE \"{file}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"{heads}\"\n\
         ddb.geometry.sectors = \"{sectors_per_track}\"\n\
         ddb.adapterType = \"{adapter}\"\n",
        cid = spec.cid,
        create = spec.create_type,
        sectors = spec.sectors,
        file = spec.extent_file,
        adapter = spec.adapter_type,
    )
}

/// Legacy CHS geometry VMware writes for a disk of `sectors` (16 heads, 63 sectors/track,
/// cylinders capped at 16383).
fn geometry(sectors: u64) -> (u64, u32, u32) {
    let cylinders = (sectors / (16 * 63)).clamp(1, 16383);
    (cylinders, 16, 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_TWO_GB: &str = "# Disk DescriptorFile\nversion=1\nCID=42d4f6f2\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\n# Extent description\nRW 4194304 SPARSE \"two-s001.vmdk\"\nRW 4194304 SPARSE \"two-s002.vmdk\"\nRW 2097152 SPARSE \"two s003.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n";

    #[test]
    fn parses_qemu_descriptor() {
        let d = parse(QEMU_TWO_GB.as_bytes()).unwrap();
        assert_eq!(d.version, Some(1));
        assert_eq!(d.cid, Some(0x42d4f6f2));
        assert_eq!(d.parent_cid, Some(u32::MAX));
        assert!(!d.has_parent());
        assert_eq!(d.create_type.as_deref(), Some("twoGbMaxExtentSparse"));
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[2].file.as_deref(), Some("two s003.vmdk"));
        assert_eq!(d.extents.iter().map(|e| e.sectors).sum::<u64>(), 10485760);
        assert_eq!(d.ddb_value("adapterType"), Some("ide"));
    }

    #[test]
    fn parses_flat_with_offset_and_zero() {
        let d = parse(b"RW 100 FLAT \"a.img\" 7\nRDONLY 5 ZERO\nRW 8 VMFS \"b\"\n").unwrap();
        assert_eq!(d.extents[0].offset_sectors, 7);
        assert_eq!(d.extents[0].kind, ExtentType::Flat);
        assert_eq!(d.extents[1].kind, ExtentType::Zero);
        assert_eq!(d.extents[1].access, Access::ReadOnly);
        assert_eq!(d.extents[2].kind, ExtentType::Flat);
    }

    #[test]
    fn embedded_descriptor_stops_at_nul() {
        let mut bytes = b"createType=\"monolithicSparse\"\n".to_vec();
        bytes.extend_from_slice(&[0, 0, 0xff, 0xfe]);
        assert_eq!(
            parse(&bytes).unwrap().create_type.as_deref(),
            Some("monolithicSparse")
        );
    }

    #[test]
    fn rejects_bad_extents() {
        for bad in [
            "RW x FLAT \"a\"",
            "RW 10 VMFSSPARSE \"a\"",
            "RW 10 FLAT a",
            "RW 10 FLAT \"a",
            "RW 10 ZERO \"a\"",
            "NOACCESS 10 FLAT \"a\"",
            "RW 10 SPARSE \"a\" 5",
            "RW 18446744073709551615 FLAT \"a\"",
            "garbage line",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let overflow = "RW 18014398509481983 FLAT \"a\"\n".repeat(3);
        assert!(parse(overflow.as_bytes()).is_err());
    }

    proptest::proptest! {
        /// Arbitrary text never panics the parser, and accepted extents keep the invariants.
        #[test]
        fn arbitrary_text_never_panics(text in "(RW|RDONLY|ddb\\.|createType=|# |[ -~]{0,20}|\"|\n| |[0-9]{1,22}|FLAT|SPARSE|ZERO)*") {
            if let Ok(d) = parse(text.as_bytes()) {
                let mut total: u64 = 0;
                for e in &d.extents {
                    total = total.checked_add(e.sectors).unwrap();
                    proptest::prop_assert_eq!(e.file.is_none(), e.kind == ExtentType::Zero);
                }
                proptest::prop_assert!(total.checked_mul(512).is_some());
            }
        }
    }

    #[test]
    fn detects_descriptors() {
        assert!(looks_like_descriptor(QEMU_TWO_GB.as_bytes()));
        assert!(!looks_like_descriptor(b"KDMV\x01\0\0\0"));
        assert!(!looks_like_descriptor(b"hello world"));
    }

    #[test]
    fn render_golden() {
        let text = render(&RenderSpec {
            cid: 0x1234abcd,
            create_type: "streamOptimized",
            extent_file: "disk1.vmdk",
            sectors: 2_097_152,
            adapter_type: "lsilogic",
        });
        let golden = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=1234abcd\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n# Extent description\nRW 2097152 SPARSE \"disk1.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"2080\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"lsilogic\"\n";
        assert_eq!(text, golden);
        let parsed = parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.extents[0].sectors, 2_097_152);
        assert_eq!(parsed.cid, Some(0x1234abcd));
    }
}
