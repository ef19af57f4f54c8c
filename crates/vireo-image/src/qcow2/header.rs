//! qcow2 header (cluster 0): parsing with full validation, and serialisation.
//!
//! Invariants of a parsed [`Header`]:
//! - `cluster_bits` is in 9..=21 (512 B to 2 MiB clusters, qemu's implementation range);
//! - every table offset the header names is cluster-aligned and the tables' byte sizes fit the
//!   caller's [`Limits`] and do not overflow `u64`;
//! - the L1 table is large enough to map the whole virtual size;
//! - no unknown incompatible feature bit is set, no encryption, no extended L2 entries and no
//!   external data file (these are refused with [`ImageError::Unsupported`]);
//! - the backing file name and header extensions lie entirely inside cluster 0.

use crate::device::Limits;
use crate::error::ImageError;

/// The four magic bytes every qcow image starts with.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Length of the version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Length of the version 3 header as Vireo writes it (through `compression_type` + padding).
pub const V3_HEADER_LEN: u32 = 112;

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Compatible feature bit: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear feature bit: bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Longest backing file name the format allows.
pub const MAX_BACKING_NAME: u32 = 1023;

/// How compressed clusters are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionType {
    /// Raw deflate with a 4 KiB window (header value 0).
    Zlib,
    /// Zstandard frames (header value 1).
    Zstd,
}

/// The bitmaps header extension (only what refcount checking needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapsExt {
    pub nb_bitmaps: u32,
    pub directory_size: u64,
    pub directory_offset: u64,
}

/// A validated qcow2 header plus the header extensions Vireo understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: CompressionType,
    /// Backing file reference exactly as stored (not resolved).
    pub backing_file: Option<String>,
    /// Backing format from the backing-format extension ("raw", "qcow2"…).
    pub backing_format: Option<String>,
    pub bitmaps: Option<BitmapsExt>,
}

/// Reads a big-endian integer of `N` bytes at `at`; callers guarantee the range (checked once
/// up front against the fixed header length).
fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn corrupt(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "qcow2",
        detail: detail.into(),
    }
}

fn unsupported(detail: impl Into<String>) -> ImageError {
    ImageError::Unsupported {
        format: "qcow2",
        detail: detail.into(),
    }
}

/// Number of L2 entries (= guest clusters) one L2 table maps.
pub fn l2_entries(cluster_bits: u32) -> u64 {
    1u64 << (cluster_bits - 3)
}

/// Number of L1 entries needed to map `size` bytes.
pub fn l1_entries_for(size: u64, cluster_bits: u32) -> u64 {
    let per_l2_bytes = 1u64 << (cluster_bits + cluster_bits - 3);
    size.div_ceil(per_l2_bytes)
}

/// Whether `head` starts like a qcow2 (version 2 or 3) image.
pub fn probe(head: &[u8]) -> bool {
    head.len() >= 8 && head[..4] == MAGIC && matches!(be_u32(head, 4), 2 | 3)
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    pub fn refcount_bits(&self) -> u32 {
        1u32 << self.refcount_order
    }

    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    pub fn is_corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }

    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    /// Parses and validates cluster 0. `head` must hold the first cluster (or the whole file if
    /// it is shorter); `file_len` is the image file's length, used to reject tables past EOF.
    pub fn parse(head: &[u8], limits: &Limits) -> Result<Header, ImageError> {
        if head.len() < V2_HEADER_LEN as usize || head[..4] != MAGIC {
            return Err(corrupt("missing qcow2 magic or truncated header"));
        }
        let version = be_u32(head, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(format!("version {version}")));
        }
        let backing_file_offset = be_u64(head, 8);
        let backing_file_size = be_u32(head, 16);
        let cluster_bits = be_u32(head, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!(
                "cluster_bits {cluster_bits} outside 9..=21"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        let size = be_u64(head, 24);
        if size > limits.max_virtual_size {
            return Err(ImageError::LimitExceeded {
                what: "qcow2 virtual size",
                requested: size,
                limit: limits.max_virtual_size,
            });
        }
        let crypt_method = be_u32(head, 32);
        if crypt_method != 0 {
            return Err(unsupported(format!(
                "encryption (crypt_method {crypt_method})"
            )));
        }
        let l1_size = be_u32(head, 36);
        let l1_table_offset = be_u64(head, 40);
        let refcount_table_offset = be_u64(head, 48);
        let refcount_table_clusters = be_u32(head, 56);
        let nb_snapshots = be_u32(head, 60);
        let snapshots_offset = be_u64(head, 64);

        let (incompatible_features, compatible_features, autoclear_features) = if version >= 3 {
            if head.len() < 104 {
                return Err(corrupt("version 3 header truncated"));
            }
            (be_u64(head, 72), be_u64(head, 80), be_u64(head, 88))
        } else {
            (0, 0, 0)
        };
        let (refcount_order, header_length) = if version >= 3 {
            (be_u32(head, 96), be_u32(head, 100))
        } else {
            (4, V2_HEADER_LEN)
        };
        if version >= 3 {
            if header_length < 104 || !header_length.is_multiple_of(8) {
                return Err(corrupt(format!("header_length {header_length}")));
            }
            if u64::from(header_length) > cluster_size || header_length as usize > head.len() {
                return Err(corrupt("header_length exceeds the first cluster"));
            }
        }
        if refcount_order > 6 {
            return Err(corrupt(format!(
                "refcount_order {refcount_order} exceeds 6"
            )));
        }
        let unknown = incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(unsupported(format!(
                "unknown incompatible features {unknown:#x}"
            )));
        }
        if incompatible_features & INCOMPAT_EXTL2 != 0 {
            return Err(unsupported("extended L2 entries (subclusters)"));
        }
        if incompatible_features & INCOMPAT_DATA_FILE != 0 {
            return Err(unsupported("external data file"));
        }
        let compression_byte = if header_length > 104 { head[104] } else { 0 };
        let compression_type = match (
            compression_byte,
            incompatible_features & INCOMPAT_COMPRESSION != 0,
        ) {
            (0, false) => CompressionType::Zlib,
            (1, true) => CompressionType::Zstd,
            (0, true) => return Err(corrupt("compression type bit set but type is zlib")),
            (t, false) if t != 0 => {
                return Err(corrupt(format!(
                    "compression type {t} without the feature bit"
                )))
            }
            (t, _) => return Err(unsupported(format!("compression type {t}"))),
        };

        // Table placement: aligned, sizes bounded.
        for (name, off) in [
            ("L1 table", l1_table_offset),
            ("refcount table", refcount_table_offset),
            ("snapshot table", snapshots_offset),
        ] {
            if !off.is_multiple_of(cluster_size) {
                return Err(corrupt(format!(
                    "{name} offset {off:#x} is not cluster-aligned"
                )));
            }
        }
        let l1_bytes = u64::from(l1_size) * 8;
        if l1_bytes > limits.max_table_bytes {
            return Err(ImageError::LimitExceeded {
                what: "qcow2 L1 table",
                requested: l1_bytes,
                limit: limits.max_table_bytes,
            });
        }
        if l1_size > 0 && l1_table_offset == 0 {
            return Err(corrupt("L1 table at offset 0"));
        }
        let needed_l1 = l1_entries_for(size, cluster_bits);
        if u64::from(l1_size) < needed_l1 {
            return Err(corrupt(format!(
                "L1 table has {l1_size} entries but the virtual size needs {needed_l1}"
            )));
        }
        let reftable_bytes = u64::from(refcount_table_clusters) << cluster_bits;
        if reftable_bytes > limits.max_table_bytes {
            return Err(ImageError::LimitExceeded {
                what: "qcow2 refcount table",
                requested: reftable_bytes,
                limit: limits.max_table_bytes,
            });
        }
        if refcount_table_clusters == 0 || refcount_table_offset == 0 {
            return Err(corrupt("image has no refcount table"));
        }

        // Extensions live between the header and the backing file name (or cluster end).
        let cluster_end = head.len().min(cluster_size as usize);
        let backing_file = if backing_file_offset != 0 {
            if backing_file_size > MAX_BACKING_NAME {
                return Err(corrupt(format!(
                    "backing file name of {backing_file_size} bytes"
                )));
            }
            let start = backing_file_offset;
            let end = start + u64::from(backing_file_size);
            if end > cluster_end as u64 || start < u64::from(header_length) {
                return Err(corrupt("backing file name outside the header cluster"));
            }
            let raw = &head[start as usize..end as usize];
            let name =
                std::str::from_utf8(raw).map_err(|_| corrupt("backing file name is not UTF-8"))?;
            if name.is_empty() || name.contains('\0') {
                return Err(corrupt("backing file name is empty or contains NUL"));
            }
            Some(name.to_string())
        } else {
            None
        };
        let ext_end = if backing_file_offset != 0 {
            backing_file_offset as usize
        } else {
            cluster_end
        };

        let mut header = Header {
            version,
            cluster_bits,
            size,
            l1_size,
            l1_table_offset,
            refcount_table_offset,
            refcount_table_clusters,
            nb_snapshots,
            snapshots_offset,
            incompatible_features,
            compatible_features,
            autoclear_features,
            refcount_order,
            header_length,
            compression_type,
            backing_file,
            backing_format: None,
            bitmaps: None,
        };
        header.parse_extensions(&head[..ext_end.min(head.len())])?;
        Ok(header)
    }

    fn parse_extensions(&mut self, area: &[u8]) -> Result<(), ImageError> {
        let mut pos = self.header_length as usize;
        let mut seen_types: Vec<u32> = Vec::new();
        while pos + 8 <= area.len() {
            let ext_type = be_u32(area, pos);
            let len = be_u32(area, pos + 4) as usize;
            pos += 8;
            if ext_type == EXT_END {
                break;
            }
            if len > area.len() - pos {
                return Err(corrupt(format!(
                    "header extension {ext_type:#x} overruns the header"
                )));
            }
            if seen_types.contains(&ext_type) && ext_type != EXT_FEATURE_TABLE {
                return Err(corrupt(format!("duplicate header extension {ext_type:#x}")));
            }
            seen_types.push(ext_type);
            let data = &area[pos..pos + len];
            match ext_type {
                EXT_BACKING_FORMAT => {
                    let fmt = std::str::from_utf8(data)
                        .map_err(|_| corrupt("backing format is not UTF-8"))?;
                    self.backing_format = Some(fmt.to_string());
                }
                EXT_BITMAPS => {
                    if len < 24 {
                        return Err(corrupt("bitmaps extension too short"));
                    }
                    self.bitmaps = Some(BitmapsExt {
                        nb_bitmaps: be_u32(data, 0),
                        directory_size: be_u64(data, 8),
                        directory_offset: be_u64(data, 16),
                    });
                }
                EXT_CRYPTO => return Err(unsupported("encryption header extension")),
                EXT_DATA_FILE => return Err(unsupported("external data file")),
                // Feature name table and unknown extensions carry nothing we need.
                _ => {}
            }
            pos += len.next_multiple_of(8);
        }
        Ok(())
    }

    /// Serialises the header, extensions and backing file name into a buffer of one cluster.
    /// Vireo writes version 3 headers of [`V3_HEADER_LEN`] bytes (with the feature name table)
    /// and plain 72-byte version 2 headers.
    pub fn to_cluster(&self) -> Result<Vec<u8>, ImageError> {
        let cluster_size = self.cluster_size() as usize;
        let mut b = vec![0u8; cluster_size];
        b[..4].copy_from_slice(&MAGIC);
        put_u32(&mut b, 4, self.version);
        // backing offset/size are filled below once the extensions are laid out.
        put_u32(&mut b, 20, self.cluster_bits);
        put_u64(&mut b, 24, self.size);
        put_u32(&mut b, 32, 0);
        put_u32(&mut b, 36, self.l1_size);
        put_u64(&mut b, 40, self.l1_table_offset);
        put_u64(&mut b, 48, self.refcount_table_offset);
        put_u32(&mut b, 56, self.refcount_table_clusters);
        put_u32(&mut b, 60, self.nb_snapshots);
        put_u64(&mut b, 64, self.snapshots_offset);
        let mut pos = V2_HEADER_LEN as usize;
        if self.version >= 3 {
            put_u64(&mut b, 72, self.incompatible_features);
            put_u64(&mut b, 80, self.compatible_features);
            put_u64(&mut b, 88, self.autoclear_features);
            put_u32(&mut b, 96, self.refcount_order);
            put_u32(&mut b, 100, V3_HEADER_LEN);
            b[104] = match self.compression_type {
                CompressionType::Zlib => 0,
                CompressionType::Zstd => 1,
            };
            pos = V3_HEADER_LEN as usize;
        } else if self.refcount_order != 4 || self.compression_type != CompressionType::Zlib {
            return Err(ImageError::InvalidArgument(
                "qcow2 version 2 needs 16-bit refcounts and zlib compression".into(),
            ));
        }
        let push_ext = |b: &mut Vec<u8>, pos: &mut usize, ty: u32, data: &[u8]| {
            let padded = data.len().next_multiple_of(8);
            if *pos + 8 + padded + 8 > cluster_size {
                return Err(ImageError::InvalidArgument(
                    "qcow2 header extensions do not fit".into(),
                ));
            }
            put_u32(b, *pos, ty);
            put_u32(b, *pos + 4, data.len() as u32);
            b[*pos + 8..*pos + 8 + data.len()].copy_from_slice(data);
            *pos += 8 + padded;
            Ok(())
        };
        if let Some(fmt) = &self.backing_format {
            push_ext(&mut b, &mut pos, EXT_BACKING_FORMAT, fmt.as_bytes())?;
        }
        if self.version >= 3 {
            push_ext(&mut b, &mut pos, EXT_FEATURE_TABLE, &feature_name_table())?;
        }
        if self.version >= 3 || self.backing_format.is_some() {
            // End-of-extensions marker (type 0, length 0); the buffer is already zeroed.
            pos += 8;
        }
        if let Some(name) = &self.backing_file {
            let bytes = name.as_bytes();
            if bytes.is_empty() || bytes.len() > MAX_BACKING_NAME as usize {
                return Err(ImageError::InvalidArgument(format!(
                    "backing file name must be 1..={MAX_BACKING_NAME} bytes"
                )));
            }
            if pos + bytes.len() > cluster_size {
                return Err(ImageError::InvalidArgument(
                    "backing file name does not fit".into(),
                ));
            }
            put_u64(&mut b, 8, pos as u64);
            put_u32(&mut b, 16, bytes.len() as u32);
            b[pos..pos + bytes.len()].copy_from_slice(bytes);
        }
        Ok(b)
    }
}

/// Names of the features Vireo knows, so that older tools can explain refusals.
fn feature_name_table() -> Vec<u8> {
    const ENTRIES: [(u8, u8, &str); 8] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
        (2, 1, "raw external data"),
    ];
    let mut out = Vec::with_capacity(ENTRIES.len() * 48);
    for (ty, bit, name) in ENTRIES {
        let mut entry = [0u8; 48];
        entry[0] = ty;
        entry[1] = bit;
        entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&entry);
    }
    out
}

pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(version: u32) -> Header {
        Header {
            version,
            cluster_bits: 16,
            size: 1 << 30,
            l1_size: 2,
            l1_table_offset: 0x10000,
            refcount_table_offset: 0x20000,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: if version == 3 {
                V3_HEADER_LEN
            } else {
                V2_HEADER_LEN
            },
            compression_type: CompressionType::Zlib,
            backing_file: Some("base.qcow2".into()),
            backing_format: Some("qcow2".into()),
            bitmaps: None,
        }
    }

    #[test]
    fn round_trips_v2_and_v3() {
        for v in [2, 3] {
            let h = sample(v);
            let bytes = h.to_cluster().unwrap();
            let back = Header::parse(&bytes, &Limits::default()).unwrap();
            assert_eq!(back, h);
        }
    }

    #[test]
    fn rejects_short_l1_and_bad_bits() {
        let mut h = sample(3);
        h.l1_size = 1;
        let bytes = h.to_cluster().unwrap();
        assert!(matches!(
            Header::parse(&bytes, &Limits::default()),
            Err(ImageError::Corrupt { .. })
        ));

        let mut bytes = sample(3).to_cluster().unwrap();
        put_u64(&mut bytes, 72, INCOMPAT_EXTL2);
        assert!(matches!(
            Header::parse(&bytes, &Limits::default()),
            Err(ImageError::Unsupported { .. })
        ));
        put_u64(&mut bytes, 72, 1 << 40);
        assert!(matches!(
            Header::parse(&bytes, &Limits::default()),
            Err(ImageError::Unsupported { .. })
        ));
    }

    #[test]
    fn rejects_huge_l1() {
        let mut h = sample(3);
        h.l1_size = u32::MAX;
        let bytes = h.to_cluster().unwrap();
        assert!(matches!(
            Header::parse(&bytes, &Limits::default()),
            Err(ImageError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn l1_sizing() {
        assert_eq!(l1_entries_for(0, 16), 0);
        assert_eq!(l1_entries_for(1, 16), 1);
        assert_eq!(l1_entries_for(512 << 20, 16), 1);
        assert_eq!(l1_entries_for((512 << 20) + 1, 16), 2);
    }
}
