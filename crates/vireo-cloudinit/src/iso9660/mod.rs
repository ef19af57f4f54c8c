//! ISO 9660 (ECMA-119) volumes with Joliet and Rock Ridge names, for NoCloud seeds.
//!
//! The writer produces a single-directory volume: every file lives in the root directory.
//! Each file is recorded three times over the same data extent so that every reader sees its
//! exact name:
//! - the primary tree (ECMA-119 level 2): `USER_DATA.;1` (upper case, `-` → `_`), the only
//!   names a strict ISO 9660 reader knows;
//! - Rock Ridge (SUSP 1.10 / RRIP 1.10 `RRIP_1991A`) `NM` entries on the primary tree, which
//!   Linux's isofs prefers: `user-data`, with POSIX modes (r-x for the root, r-- for files);
//! - a Joliet tree (supplementary descriptor, UCS-2 level 3): `user-data`, for readers
//!   mounted with `norock` and for Windows guests.
//!
//! Layout (2048-byte sectors, fixed order, so output is a pure function of the input):
//! 0–15 system area (zero), 16 primary descriptor, 17 Joliet descriptor, 18 terminator,
//! 19/20 primary path tables (L/M), 21/22 Joliet path tables (L/M), 23 Rock Ridge continuation
//! area holding the `ER` entry, then the primary root directory, the Joliet root directory and
//! the file extents (one per file, in input order, sector-aligned, at least one sector each so
//! every extent lies inside the volume). Directory entries are sorted as ECMA-119 9.3 requires;
//! every timestamp is the caller's [`IsoImage::recorded_at`].
//!
//! Invariants: names are validated before anything is laid out (charset, length, no two
//! names mapping to the same primary identifier); file count and sizes are bounded
//! ([`MAX_FILES`], [`MAX_FILE_BYTES`]), so every length fits its on-disk field.

pub mod reader;
mod time;

pub use time::{IsoTimestamp, TimestampOutOfRange};

/// Logical sector and block size of the volume.
pub const SECTOR_SIZE: usize = 2048;
/// Most files one volume may hold (a seed has at most four).
pub const MAX_FILES: usize = 32;
/// Largest accepted size of one file, in bytes.
pub const MAX_FILE_BYTES: usize = 16 << 20;
/// Longest accepted file name (ECMA-119 level 2 allows 30 characters of name and extension).
pub const MAX_NAME_LEN: usize = 30;
/// Longest volume identifier (the Joliet descriptor's field holds 16 UCS-2 characters).
pub const MAX_VOLUME_ID_LEN: usize = 16;

/// One file of the root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoFile {
    /// Name as guests should see it, e.g. `user-data`: 1–30 characters of `a-z A-Z 0-9 . _ -`,
    /// not starting with `.`.
    pub name: String,
    pub data: Vec<u8>,
}

/// What to write: a volume identifier, the time recorded everywhere, and the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoImage {
    /// Volume label, e.g. `cidata`: 1–16 characters of `a-z A-Z 0-9 _`. Recorded as given in
    /// both descriptors (lower case included, as cloud-init and blkid expect `cidata`).
    pub volume_id: String,
    pub recorded_at: IsoTimestamp,
    pub files: Vec<IsoFile>,
}

/// Why an [`IsoImage`] cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsoWriteError {
    #[error("volume identifier {volume_id:?} must be 1 to {MAX_VOLUME_ID_LEN} characters of a-z, A-Z, 0-9 and _")]
    VolumeId { volume_id: String },
    #[error("file name {name:?} must be 1 to {MAX_NAME_LEN} characters of a-z, A-Z, 0-9, '.', '_' and '-', not starting with '.'")]
    FileName { name: String },
    #[error("file names {first:?} and {second:?} both map to the ISO 9660 name {iso_name:?}")]
    NameClash {
        first: String,
        second: String,
        iso_name: String,
    },
    #[error("{count} files given, at most {MAX_FILES} fit one volume")]
    TooManyFiles { count: usize },
    #[error("file {name:?} is {size} bytes, more than the {MAX_FILE_BYTES} allowed")]
    FileTooLarge { name: String, size: usize },
}

// Fixed sectors of the layout described in the module docs.
const PRIMARY_DESCRIPTOR_SECTOR: u32 = 16;
const JOLIET_DESCRIPTOR_SECTOR: u32 = 17;
const TERMINATOR_SECTOR: u32 = 18;
const PRIMARY_PATH_L_SECTOR: u32 = 19;
const PRIMARY_PATH_M_SECTOR: u32 = 20;
const JOLIET_PATH_L_SECTOR: u32 = 21;
const JOLIET_PATH_M_SECTOR: u32 = 22;
const CONTINUATION_SECTOR: u32 = 23;
const FIRST_DIRECTORY_SECTOR: u32 = 24;

const STANDARD_ID: &[u8; 5] = b"CD001";
/// Joliet UCS-2 level 3 escape sequence (supplementary descriptor bytes 88..).
const JOLIET_ESCAPE: &[u8; 3] = b"%/E";
/// Path table of a single-directory volume: one 10-byte record for the root.
const PATH_TABLE_SIZE: u32 = 10;

/// Rock Ridge extension reference (RRIP 1.10): identifier, descriptor and source texts.
const RRIP_ID: &[u8] = b"RRIP_1991A";
const RRIP_DESCRIPTOR: &[u8] =
    b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const RRIP_SOURCE: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

const MODE_ROOT_DIR: u32 = 0o040_555;
const MODE_FILE: u32 = 0o100_444;
const APPLICATION_ID: &str = "VIREO-CLOUDINIT";

/// Writes `image` as ISO 9660 bytes (a whole number of sectors). Pure and deterministic.
pub fn write_iso(image: &IsoImage) -> Result<Vec<u8>, IsoWriteError> {
    validate(image)?;
    let files = &image.files;
    let stamp = image.recorded_at;

    // Data extents follow the directories, whose sizes do not depend on extent numbers:
    // lay the directories out once with placeholder extents to learn their sizes.
    let placeholder = vec![(0u32, 0u32); files.len()];
    let primary_dir_sectors = directory_sectors(&primary_records(image, &placeholder, 0, 0));
    let joliet_dir_sectors = directory_sectors(&joliet_records(image, &placeholder, 0, 0));
    let primary_dir = FIRST_DIRECTORY_SECTOR;
    let joliet_dir = primary_dir + primary_dir_sectors;
    let mut next = joliet_dir + joliet_dir_sectors;
    let mut extents = Vec::with_capacity(files.len());
    for file in files {
        // Sizes are ≤ MAX_FILE_BYTES (validated), so these fit u32.
        let sectors = file.data.len().div_ceil(SECTOR_SIZE).max(1) as u32;
        extents.push((next, file.data.len() as u32));
        next += sectors;
    }
    let total_sectors = next;

    let primary_dir_bytes = pack_directory(&primary_records(
        image,
        &extents,
        primary_dir,
        primary_dir_sectors,
    ));
    let joliet_dir_bytes = pack_directory(&joliet_records(
        image,
        &extents,
        joliet_dir,
        joliet_dir_sectors,
    ));

    let mut out = vec![0u8; total_sectors as usize * SECTOR_SIZE];
    let mut put = |sector: u32, bytes: &[u8]| {
        let at = sector as usize * SECTOR_SIZE;
        out[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(
        PRIMARY_DESCRIPTOR_SECTOR,
        &volume_descriptor(
            Tree::Primary,
            &image.volume_id,
            stamp,
            total_sectors,
            primary_dir,
            primary_dir_sectors,
        ),
    );
    put(
        JOLIET_DESCRIPTOR_SECTOR,
        &volume_descriptor(
            Tree::Joliet,
            &image.volume_id,
            stamp,
            total_sectors,
            joliet_dir,
            joliet_dir_sectors,
        ),
    );
    put(TERMINATOR_SECTOR, &terminator());
    put(
        PRIMARY_PATH_L_SECTOR,
        &path_table(primary_dir, Endian::Little),
    );
    put(PRIMARY_PATH_M_SECTOR, &path_table(primary_dir, Endian::Big));
    put(
        JOLIET_PATH_L_SECTOR,
        &path_table(joliet_dir, Endian::Little),
    );
    put(JOLIET_PATH_M_SECTOR, &path_table(joliet_dir, Endian::Big));
    put(CONTINUATION_SECTOR, &rock_ridge_er());
    put(primary_dir, &primary_dir_bytes);
    put(joliet_dir, &joliet_dir_bytes);
    for (file, (extent, _)) in files.iter().zip(&extents) {
        put(*extent, &file.data);
    }
    Ok(out)
}

fn validate(image: &IsoImage) -> Result<(), IsoWriteError> {
    let id = &image.volume_id;
    let id_ok = (1..=MAX_VOLUME_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !id_ok {
        return Err(IsoWriteError::VolumeId {
            volume_id: id.clone(),
        });
    }
    if image.files.len() > MAX_FILES {
        return Err(IsoWriteError::TooManyFiles {
            count: image.files.len(),
        });
    }
    let mut seen: Vec<(String, &str)> = Vec::with_capacity(image.files.len());
    for file in &image.files {
        let name = file.name.as_str();
        let name_ok = (1..=MAX_NAME_LEN).contains(&name.len())
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(IsoWriteError::FileName { name: name.into() });
        }
        if file.data.len() > MAX_FILE_BYTES {
            return Err(IsoWriteError::FileTooLarge {
                name: name.into(),
                size: file.data.len(),
            });
        }
        let iso_name = primary_identifier(name);
        if let Some((_, first)) = seen.iter().find(|(other, _)| *other == iso_name) {
            return Err(IsoWriteError::NameClash {
                first: (*first).into(),
                second: name.into(),
                iso_name,
            });
        }
        seen.push((iso_name, name));
    }
    Ok(())
}

/// ECMA-119 level-2 identifier of a validated name: d-characters, `NAME.EXT;1`, the
/// extension being what follows the last `.` (empty when there is none).
pub fn primary_identifier(name: &str) -> String {
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    let d_chars = |s: &str| -> String {
        s.chars()
            .map(|c| match c.to_ascii_uppercase() {
                c @ ('A'..='Z' | '0'..='9') => c,
                _ => '_',
            })
            .collect()
    };
    format!("{}.{};1", d_chars(stem), d_chars(ext))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tree {
    Primary,
    Joliet,
}

#[derive(Clone, Copy)]
enum Endian {
    Little,
    Big,
}

/// Both-byte-order 32-bit field (ECMA-119 7.3.3).
fn both32(v: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&v.to_le_bytes());
    out[4..].copy_from_slice(&v.to_be_bytes());
    out
}

/// Both-byte-order 16-bit field (ECMA-119 7.2.3).
fn both16(v: u16) -> [u8; 4] {
    let mut out = [0u8; 4];
    out[..2].copy_from_slice(&v.to_le_bytes());
    out[2..].copy_from_slice(&v.to_be_bytes());
    out
}

fn ucs2_be(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// One directory record (ECMA-119 9.1). Identifiers are ≤ 60 bytes and system use ≤ 140
/// bytes in this module, so the length always fits the record's one-byte length field.
fn dir_record(
    extent: u32,
    size: u32,
    is_dir: bool,
    identifier: &[u8],
    system_use: &[u8],
    stamp: IsoTimestamp,
) -> Vec<u8> {
    let id_pad = usize::from(identifier.len().is_multiple_of(2));
    let mut len = 33 + identifier.len() + id_pad + system_use.len();
    let tail_pad = len % 2; // keep records even-sized so the next starts on an even offset
    len += tail_pad;
    debug_assert!(len <= 255);
    let mut r = Vec::with_capacity(len);
    r.push(len as u8);
    r.push(0); // extended attribute record length
    r.extend_from_slice(&both32(extent));
    r.extend_from_slice(&both32(size));
    r.extend_from_slice(&stamp.to_dir_record_bytes());
    r.push(if is_dir { 0x02 } else { 0x00 });
    r.push(0); // file unit size (not interleaved)
    r.push(0); // interleave gap
    r.extend_from_slice(&both16(1)); // volume sequence number
    r.push(identifier.len() as u8);
    r.extend_from_slice(identifier);
    r.resize(r.len() + id_pad, 0);
    r.extend_from_slice(system_use);
    r.resize(len, 0);
    r
}

/// SUSP entry header (signature, length, version 1) followed by `body`.
fn susp(sig: &[u8; 2], body: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(4 + body.len());
    e.extend_from_slice(sig);
    e.push((4 + body.len()) as u8);
    e.push(1);
    e.extend_from_slice(body);
    e
}

/// RRIP `PX`: mode, link count, uid 0, gid 0 (RRIP 1.10 form, 36 bytes).
fn rr_px(mode: u32, links: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(32);
    for v in [mode, links, 0, 0] {
        body.extend_from_slice(&both32(v));
    }
    susp(b"PX", &body)
}

/// RRIP `TF`: modification, access and attribute-change times, short form.
fn rr_tf(stamp: IsoTimestamp) -> Vec<u8> {
    const MODIFY: u8 = 1 << 1;
    const ACCESS: u8 = 1 << 2;
    const ATTRIBUTES: u8 = 1 << 3;
    let mut body = vec![MODIFY | ACCESS | ATTRIBUTES];
    for _ in 0..3 {
        body.extend_from_slice(&stamp.to_dir_record_bytes());
    }
    susp(b"TF", &body)
}

/// RRIP `NM`: the whole name in one entry (names are ≤ 30 bytes), no flags.
fn rr_nm(name: &str) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(name.as_bytes());
    susp(b"NM", &body)
}

/// The `ER` entry announcing RRIP, kept in the continuation area (it does not fit a record).
fn rock_ridge_er() -> Vec<u8> {
    let mut body = vec![
        RRIP_ID.len() as u8,
        RRIP_DESCRIPTOR.len() as u8,
        RRIP_SOURCE.len() as u8,
        1, // extension version
    ];
    body.extend_from_slice(RRIP_ID);
    body.extend_from_slice(RRIP_DESCRIPTOR);
    body.extend_from_slice(RRIP_SOURCE);
    susp(b"ER", &body)
}

/// System use of the root's `.` record: `SP` (SUSP in use, nothing skipped), `CE` pointing
/// at the `ER` entry, the directory's `PX` and `TF`.
fn root_dot_system_use(stamp: IsoTimestamp) -> Vec<u8> {
    let mut su = susp(b"SP", &[0xBE, 0xEF, 0]);
    let mut ce = Vec::with_capacity(24);
    ce.extend_from_slice(&both32(CONTINUATION_SECTOR));
    ce.extend_from_slice(&both32(0));
    ce.extend_from_slice(&both32(rock_ridge_er().len() as u32));
    su.extend_from_slice(&susp(b"CE", &ce));
    su.extend_from_slice(&rr_px(MODE_ROOT_DIR, 2));
    su.extend_from_slice(&rr_tf(stamp));
    su
}

/// Root directory records of the primary tree (with Rock Ridge), sorted by identifier.
fn primary_records(
    image: &IsoImage,
    extents: &[(u32, u32)],
    dir_extent: u32,
    dir_sectors: u32,
) -> Vec<Vec<u8>> {
    let stamp = image.recorded_at;
    let dir_size = dir_sectors * SECTOR_SIZE as u32;
    let mut records = vec![
        dir_record(
            dir_extent,
            dir_size,
            true,
            &[0],
            &root_dot_system_use(stamp),
            stamp,
        ),
        dir_record(
            dir_extent,
            dir_size,
            true,
            &[1],
            &[rr_px(MODE_ROOT_DIR, 2), rr_tf(stamp)].concat(),
            stamp,
        ),
    ];
    let mut order: Vec<usize> = (0..image.files.len()).collect();
    order.sort_by_key(|&i| primary_sort_key(&primary_identifier(&image.files[i].name)));
    for i in order {
        let name = &image.files[i].name;
        let su = [rr_px(MODE_FILE, 1), rr_nm(name), rr_tf(stamp)].concat();
        let (extent, size) = extents[i];
        records.push(dir_record(
            extent,
            size,
            false,
            primary_identifier(name).as_bytes(),
            &su,
            stamp,
        ));
    }
    records
}

/// Root directory records of the Joliet tree (UCS-2 names, no version suffix), sorted.
fn joliet_records(
    image: &IsoImage,
    extents: &[(u32, u32)],
    dir_extent: u32,
    dir_sectors: u32,
) -> Vec<Vec<u8>> {
    let stamp = image.recorded_at;
    let dir_size = dir_sectors * SECTOR_SIZE as u32;
    let mut records = vec![
        dir_record(dir_extent, dir_size, true, &[0], &[], stamp),
        dir_record(dir_extent, dir_size, true, &[1], &[], stamp),
    ];
    let mut order: Vec<usize> = (0..image.files.len()).collect();
    order.sort_by_key(|&i| ucs2_be(&image.files[i].name));
    for i in order {
        let (extent, size) = extents[i];
        records.push(dir_record(
            extent,
            size,
            false,
            &ucs2_be(&image.files[i].name),
            &[],
            stamp,
        ));
    }
    records
}

/// ECMA-119 9.3 order: by name, then by extension, the shorter padded with spaces.
fn primary_sort_key(identifier: &str) -> (Vec<u8>, Vec<u8>) {
    let without_version = identifier.split(';').next().unwrap_or(identifier);
    let (stem, ext) = without_version
        .split_once('.')
        .unwrap_or((without_version, ""));
    let pad = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        v.resize(MAX_NAME_LEN + 1, b' ');
        v
    };
    (pad(stem), pad(ext))
}

/// Packs records into sectors; a record never straddles a sector boundary (ECMA-119 6.8.1.1).
fn pack_directory(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut used_in_sector = 0;
    for record in records {
        if used_in_sector + record.len() > SECTOR_SIZE {
            out.resize(out.len() + SECTOR_SIZE - used_in_sector, 0);
            used_in_sector = 0;
        }
        out.extend_from_slice(record);
        used_in_sector += record.len();
    }
    out.resize(out.len().div_ceil(SECTOR_SIZE).max(1) * SECTOR_SIZE, 0);
    out
}

fn directory_sectors(records: &[Vec<u8>]) -> u32 {
    // At most MAX_FILES + 2 records of ≤ 255 bytes: a handful of sectors.
    (pack_directory(records).len() / SECTOR_SIZE) as u32
}

fn path_table(root_extent: u32, endian: Endian) -> Vec<u8> {
    let mut t = vec![1, 0]; // identifier length 1, no extended attributes
    match endian {
        Endian::Little => {
            t.extend_from_slice(&root_extent.to_le_bytes());
            t.extend_from_slice(&1u16.to_le_bytes());
        }
        Endian::Big => {
            t.extend_from_slice(&root_extent.to_be_bytes());
            t.extend_from_slice(&1u16.to_be_bytes());
        }
    }
    t.extend_from_slice(&[0, 0]); // root identifier 0x00 and the pad byte
    t
}

/// A text field: ASCII padded with spaces (primary) or UCS-2 padded with U+0020 (Joliet).
fn text_field(tree: Tree, text: &str, width: usize) -> Vec<u8> {
    let mut out = match tree {
        Tree::Primary => text.as_bytes().to_vec(),
        Tree::Joliet => ucs2_be(text),
    };
    let pad: &[u8] = match tree {
        Tree::Primary => b" ",
        Tree::Joliet => &[0x00, 0x20],
    };
    while out.len() + pad.len() <= width {
        out.extend_from_slice(pad);
    }
    out.resize(width, b' ');
    out
}

/// Primary (type 1) or Joliet supplementary (type 2) volume descriptor (ECMA-119 8.4, 8.5).
fn volume_descriptor(
    tree: Tree,
    volume_id: &str,
    stamp: IsoTimestamp,
    total_sectors: u32,
    root_extent: u32,
    root_sectors: u32,
) -> Vec<u8> {
    let (path_l, path_m) = match tree {
        Tree::Primary => (PRIMARY_PATH_L_SECTOR, PRIMARY_PATH_M_SECTOR),
        Tree::Joliet => (JOLIET_PATH_L_SECTOR, JOLIET_PATH_M_SECTOR),
    };
    let mut d = Vec::with_capacity(SECTOR_SIZE);
    d.push(if tree == Tree::Primary { 1 } else { 2 });
    d.extend_from_slice(STANDARD_ID);
    d.push(1); // descriptor version
    d.push(0); // unused (primary) / volume flags (Joliet)
    d.extend_from_slice(&text_field(tree, "", 32)); // system identifier
    d.extend_from_slice(&text_field(tree, volume_id, 32));
    d.extend_from_slice(&[0; 8]);
    d.extend_from_slice(&both32(total_sectors));
    let mut escapes = [0u8; 32];
    if tree == Tree::Joliet {
        escapes[..3].copy_from_slice(JOLIET_ESCAPE);
    }
    d.extend_from_slice(&escapes);
    d.extend_from_slice(&both16(1)); // volume set size
    d.extend_from_slice(&both16(1)); // volume sequence number
    d.extend_from_slice(&both16(SECTOR_SIZE as u16));
    d.extend_from_slice(&both32(PATH_TABLE_SIZE));
    d.extend_from_slice(&path_l.to_le_bytes());
    d.extend_from_slice(&0u32.to_le_bytes()); // optional L path table
    d.extend_from_slice(&path_m.to_be_bytes());
    d.extend_from_slice(&0u32.to_be_bytes()); // optional M path table
    let root_size = root_sectors * SECTOR_SIZE as u32;
    d.extend_from_slice(&dir_record(root_extent, root_size, true, &[0], &[], stamp));
    d.extend_from_slice(&text_field(tree, "", 128)); // volume set
    d.extend_from_slice(&text_field(tree, "", 128)); // publisher
    d.extend_from_slice(&text_field(tree, "", 128)); // data preparer
    d.extend_from_slice(&text_field(tree, APPLICATION_ID, 128));
    d.extend_from_slice(&text_field(tree, "", 37)); // copyright file
    d.extend_from_slice(&text_field(tree, "", 37)); // abstract file
    d.extend_from_slice(&text_field(tree, "", 37)); // bibliographic file
    d.extend_from_slice(&stamp.to_volume_descriptor_bytes()); // creation
    d.extend_from_slice(&stamp.to_volume_descriptor_bytes()); // modification
    let unspecified = *b"0000000000000000\0";
    d.extend_from_slice(&unspecified); // expiration
    d.extend_from_slice(&unspecified); // effective
    d.push(1); // file structure version
    debug_assert_eq!(d.len(), 882);
    d.resize(SECTOR_SIZE, 0);
    d
}

fn terminator() -> Vec<u8> {
    let mut d = vec![255];
    d.extend_from_slice(STANDARD_ID);
    d.push(1);
    d.resize(SECTOR_SIZE, 0);
    d
}
