//! VHDX reader against qemu-img (fixed, dynamic, dirty logs replayed by qemu) and
//! hand-built differencing disks.

mod foreign_common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use foreign_common::*;
use vireo_image::vhdx::{self, testing::Guid};
use vireo_image::{BlockSource, ExtentKind, ImageError, Limits, PathPolicy};

const MIB: u64 = 1 << 20;
const BAT_GUID: [u8; 16] = [
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08,
];
const META_GUID: [u8; 16] = [
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
];
const PARENT_LOCATOR_GUID: [u8; 16] = [
    0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c,
];
const VHDX_PARENT_TYPE: [u8; 16] = [
    0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a, 0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13,
];

fn open(path: &Path) -> Box<dyn BlockSource> {
    vhdx::open(path, &Limits::default(), &PathPolicy::default())
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Where qemu put things in a VHDX it made.
#[derive(Debug)]
struct Layout {
    current_header: u64,
    bat: u64,
    meta: u64,
}

fn layout(b: &[u8]) -> Layout {
    let rt = 192 * 1024;
    let n = le32(b, rt + 8) as usize;
    let (mut bat, mut meta) = (0, 0);
    for i in 0..n {
        let e = rt + 16 + 32 * i;
        if b[e..e + 16] == BAT_GUID {
            bat = le64(b, e + 16);
        } else if b[e..e + 16] == META_GUID {
            meta = le64(b, e + 16);
        }
    }
    let (h1, h2) = (64 * 1024usize, 128 * 1024usize);
    let current = if le64(b, h2 + 8) > le64(b, h1 + 8) {
        h2
    } else {
        h1
    };
    Layout {
        current_header: current as u64,
        bat,
        meta,
    }
}

fn reseal_header(b: &mut [u8], at: usize) {
    b[at + 4..at + 8].fill(0);
    let c = crc32c::crc32c(&b[at..at + 4096]);
    b[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn fixed_and_dynamic_images_match_qemu() {
    let dir = scratch();
    for (i, size) in [512u64, 1_000_448, 3 << 20, (9 << 20) + 4096]
        .into_iter()
        .enumerate()
    {
        let raw = dir.path().join("src.raw");
        write_pattern_raw(&raw, size, 60 + i as u64);
        for opts in [
            "subformat=dynamic",
            "subformat=fixed",
            "subformat=dynamic,block_size=1M,block_state_zero=off",
        ] {
            let img = dir.path().join(format!("{i}-{}.vhdx", opts.len()));
            qemu_img_from_raw(&raw, "vhdx", opts, &img);
            let src = open(&img);
            assert_matches_qemu(src.as_ref(), &img, "vhdx", dir.path());
        }
    }
    let empty = dir.path().join("empty.vhdx");
    qemu_img(&["create", "-q", "-f", "vhdx", s(&empty), "0"]);
    assert_eq!(open(&empty).virtual_size(), 0);
}

#[test]
fn large_sparse_image_matches_qemu() {
    let dir = scratch();
    let img = dir.path().join("big.vhdx");
    qemu_img(&["create", "-q", "-f", "vhdx", s(&img), "5G"]);
    qemu_io(
        "vhdx",
        &img,
        &[
            "write -P 0xab 0 64k",
            "write -P 0x5a 4294934528 65536",
            "write -P 0x3c 5368705024 4096",
        ],
    );
    let src = open(&img);
    assert_eq!(src.virtual_size(), 5 << 30);
    assert_matches_qemu(src.as_ref(), &img, "vhdx", dir.path());
    let info = vhdx::describe(&img, &Limits::default(), &PathPolicy::default()).unwrap();
    assert_eq!(info.kind, vhdx::VhdxKind::Dynamic);
    assert_eq!(info.logical_sector_size, 512);
    assert_eq!(info.log_entries_replayed, 0);
}

fn sector(fill: u8) -> [u8; 4096] {
    let mut s = [fill; 4096];
    s[0..8].copy_from_slice(b"LEADING!");
    s[4092..].copy_from_slice(b"TAIL");
    s
}

/// Makes `img` dirty: two logged entries change data in an allocated block, zero part of it,
/// and allocate a new block past the end of the file through a logged BAT update.
fn make_dirty(img: &Path) {
    let mut b = std::fs::read(img).unwrap();
    let l = layout(&b);
    let block0 = (le64(&b, l.bat as usize) >> 20) << 20;
    assert_eq!(le64(&b, l.bat as usize) & 7, 6, "block 0 must be allocated");
    let file_len = b.len() as u64;
    let new_block = file_len.div_ceil(MIB) * MIB;
    let guid = Guid([0x42; 16]);
    let e1 = vhdx::testing::log_entry(
        &guid,
        10,
        0,
        file_len,
        file_len,
        &[(block0 + 4096, sector(0x77))],
        &[(block0 + 65536, 8192)],
    );
    // BAT sector with block 2 made FULLY_PRESENT at `new_block`.
    let mut bat_sector = [0u8; 4096];
    bat_sector.copy_from_slice(&b[l.bat as usize..l.bat as usize + 4096]);
    bat_sector[16..24].copy_from_slice(&(new_block | 6).to_le_bytes());
    let e2 = vhdx::testing::log_entry(
        &guid,
        11,
        0,
        file_len,
        new_block + MIB,
        &[(l.bat, bat_sector), (new_block, sector(0x99))],
        // The new block is zeroed through the log, which also extends the file.
        &[(new_block, MIB)],
    );
    let h = l.current_header as usize;
    let log_offset = le64(&b, h + 72) as usize;
    b[log_offset..log_offset + e1.len()].copy_from_slice(&e1);
    b[log_offset + e1.len()..log_offset + e1.len() + e2.len()].copy_from_slice(&e2);
    b[h + 48..h + 64].copy_from_slice(&guid.0);
    let seq = le64(&b, h + 8) + 2;
    b[h + 8..h + 16].copy_from_slice(&seq.to_le_bytes());
    reseal_header(&mut b, h);
    std::fs::write(img, b).unwrap();
}

#[test]
fn dirty_logs_are_replayed_like_qemu_does() {
    let dir = scratch();
    let img = dir.path().join("dirty.vhdx");
    qemu_img_create(&img, "vhdx", "block_size=1M", "8M");
    qemu_io(
        "vhdx",
        &img,
        &["write -P 0x11 0 1M", "write -P 0x22 3M 512k"],
    );
    make_dirty(&img);
    let before = std::fs::read(&img).unwrap();
    // qemu refuses the file read-only: the log is real and must be replayed.
    let (ok, out) = try_run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            s(&img),
            s(&dir.path().join("x.raw")),
        ],
    );
    assert!(!ok && out.contains("log"), "{out}");
    let replayed = dir.path().join("replayed.vhdx");
    std::fs::copy(&img, &replayed).unwrap();
    let _ = try_run(
        "qemu-img",
        &["check", "-r", "all", "-f", "vhdx", s(&replayed)],
    );
    let src = open(&img);
    assert_matches_qemu(src.as_ref(), &replayed, "vhdx", dir.path());
    let mut b = [0u8; 16];
    src.read_at(&mut b, 4096).unwrap();
    assert_eq!(&b[..8], b"LEADING!");
    src.read_at(&mut b, 2 * MIB + 4092).unwrap();
    assert_eq!(&b[..4], b"TAIL");
    let info = vhdx::describe(&img, &Limits::default(), &PathPolicy::default()).unwrap();
    assert_eq!(info.log_entries_replayed, 2);
    // Reading never modifies the image.
    assert!(std::fs::read(&img).unwrap() == before);

    // A log that claims the file was flushed past its end (truncated file) is refused.
    let mut t = before.clone();
    let cut = t.len() - (MIB as usize);
    t.truncate(cut);
    let truncated = dir.path().join("truncated.vhdx");
    std::fs::write(&truncated, &t).unwrap();
    let err = vhdx::open(&truncated, &Limits::default(), &PathPolicy::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truncated") || err.contains("past the end"),
        "{err}"
    );
}

/// Writes a parent locator item into the metadata region of `b` and sets HasParent.
fn add_parent_locator(b: &mut [u8], meta: usize, pairs: &[(&str, &str)]) {
    let count = u16::from_le_bytes([b[meta + 10], b[meta + 11]]) as usize;
    let item_off = 512 * 1024usize;
    let mut item = Vec::new();
    item.extend_from_slice(&VHDX_PARENT_TYPE);
    item.extend_from_slice(&0u16.to_le_bytes());
    item.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
    let mut strings = Vec::new();
    let base = 20 + 12 * pairs.len();
    let mut entries = Vec::new();
    for (k, v) in pairs {
        let ku: Vec<u8> = k.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        let vu: Vec<u8> = v.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        let ko = base + strings.len();
        strings.extend_from_slice(&ku);
        let vo = base + strings.len();
        strings.extend_from_slice(&vu);
        entries.extend_from_slice(&(ko as u32).to_le_bytes());
        entries.extend_from_slice(&(vo as u32).to_le_bytes());
        entries.extend_from_slice(&(ku.len() as u16).to_le_bytes());
        entries.extend_from_slice(&(vu.len() as u16).to_le_bytes());
    }
    item.extend_from_slice(&entries);
    item.extend_from_slice(&strings);
    b[meta + item_off..meta + item_off + item.len()].copy_from_slice(&item);
    let e = meta + 32 + 32 * count;
    b[e..e + 16].copy_from_slice(&PARENT_LOCATOR_GUID);
    b[e + 16..e + 20].copy_from_slice(&(item_off as u32).to_le_bytes());
    b[e + 20..e + 24].copy_from_slice(&(item.len() as u32).to_le_bytes());
    b[e + 24..e + 28].copy_from_slice(&4u32.to_le_bytes());
    b[meta + 10..meta + 12].copy_from_slice(&((count + 1) as u16).to_le_bytes());
    // File parameters: first item qemu writes; set HasParent.
    for i in 0..count {
        let e = meta + 32 + 32 * i;
        if b[e..e + 4] == [0x37, 0x67, 0xa1, 0xca] {
            let off = meta + le32(b, e + 16) as usize;
            let flags = le32(b, off + 4) | 2;
            b[off + 4..off + 8].copy_from_slice(&flags.to_le_bytes());
        }
    }
}

fn data_write_guid(img: &Path) -> String {
    let b = std::fs::read(img).unwrap();
    let h = layout(&b).current_header as usize;
    Guid::from_slice(&b[h + 32..h + 48]).to_text()
}

/// Turns a qemu-made dynamic 1 MiB-block VHDX of 8 MiB into a differencing disk:
/// block 1 partially present (first half here, second half from the parent), block 5 ZERO,
/// everything not allocated read from the parent.
fn make_differencing(child: &Path, relative: &str, linkage: &str) {
    let mut b = std::fs::read(child).unwrap();
    let l = layout(&b);
    add_parent_locator(
        &mut b,
        l.meta as usize,
        &[("parent_linkage", linkage), ("relative_path", relative)],
    );
    let bitmap_at = (b.len() as u64).div_ceil(MIB) * MIB;
    b.resize((bitmap_at + MIB) as usize, 0);
    // Block 1 = sectors 2048..4096; set the first 1024 of them.
    let first = (bitmap_at + 2048 / 8) as usize;
    b[first..first + 1024 / 8].fill(0xff);
    let bat = l.bat as usize;
    let e1 = le64(&b, bat + 8);
    assert_eq!(e1 & 7, 6, "block 1 must be allocated by the test writes");
    b[bat + 8..bat + 16].copy_from_slice(&((e1 & !7) | 7).to_le_bytes());
    b[bat + 40..bat + 48].copy_from_slice(&2u64.to_le_bytes());
    // Unallocated blocks: NOT_PRESENT (qemu marks them ZERO).
    for blk in [0usize, 2, 4, 6, 7] {
        let e = le64(&b, bat + 8 * blk);
        if e & 7 == 2 {
            b[bat + 8 * blk..bat + 8 * blk + 8].copy_from_slice(&0u64.to_le_bytes());
        }
    }
    // Sector bitmap entry of chunk 0 (chunk ratio 4096 for 512-byte sectors and 1 MiB blocks).
    let sb = bat + 8 * 4096;
    b[sb..sb + 8].copy_from_slice(&(bitmap_at | 6).to_le_bytes());
    std::fs::write(child, b).unwrap();
}

fn diff_pair(dir: &Path, sub: &str) -> (PathBuf, PathBuf, Vec<u8>, Vec<u8>) {
    let d = dir.join(sub);
    std::fs::create_dir_all(&d).unwrap();
    let parent = d.join("parent.vhdx");
    let praw = d.join("p.raw");
    write_pattern_raw(&praw, 8 * MIB, 5);
    qemu_img_from_raw(&praw, "vhdx", "block_size=1M", &parent);
    let child = d.join("child.vhdx");
    qemu_img_create(&child, "vhdx", "block_size=1M", "8M");
    qemu_io(
        "vhdx",
        &child,
        &[
            "write -P 0x61 1M 1M",
            "write -P 0x63 3M 4096",
            "write -P 0x65 5M 1M",
        ],
    );
    let child_raw = raw_of(&child, "vhdx", &d);
    let parent_raw = raw_of(&parent, "vhdx", &d);
    (parent, child, parent_raw, child_raw)
}

#[test]
fn differencing_disks_read_through_sector_bitmaps() {
    let dir = scratch();
    let (parent, child, parent_raw, child_raw) = diff_pair(dir.path(), "a");
    make_differencing(
        &child,
        ".\\parent.vhdx",
        &format!("{{{}}}", data_write_guid(&parent)),
    );
    let mut expected = parent_raw.clone();
    let m = MIB as usize;
    expected[m..m + m / 2].copy_from_slice(&child_raw[m..m + m / 2]);
    expected[3 * m..4 * m].copy_from_slice(&child_raw[3 * m..4 * m]);
    expected[5 * m..6 * m].fill(0);
    let src = open(&child);
    let mut ours = vec![0u8; expected.len()];
    src.read_at(&mut ours, 0).unwrap();
    assert!(ours == expected, "differencing content differs");
    let mut piece = vec![0u8; 3000];
    for off in [
        m as u64 - 1000,
        (m + m / 2) as u64 - 1500,
        (5 * m) as u64 - 10,
    ] {
        src.read_at(&mut piece, off).unwrap();
        assert_eq!(piece[..], expected[off as usize..off as usize + 3000]);
    }
    assert_eq!(src.extent_at(0).unwrap().kind, ExtentKind::Backing);
    assert_eq!(src.extent_at(MIB).unwrap().kind, ExtentKind::Data);
    assert_eq!(src.extent_at(5 * MIB).unwrap().kind, ExtentKind::Zero);
    let info = vhdx::describe(&child, &Limits::default(), &PathPolicy::default()).unwrap();
    assert_eq!(info.kind, vhdx::VhdxKind::Differencing);
    assert_eq!(
        info.parent_locator.get("relative_path").map(String::as_str),
        Some(".\\parent.vhdx")
    );
    assert!(info.parent.is_some());
}

#[test]
fn differencing_parent_checks() {
    let dir = scratch();
    let (parent, child, _, _) = diff_pair(dir.path(), "b");
    let linkage = format!("{{{}}}", data_write_guid(&parent));
    let original = std::fs::read(&child).unwrap();
    // Wrong linkage.
    make_differencing(
        &child,
        "parent.vhdx",
        "{01234567-89ab-cdef-0123-456789abcdef}",
    );
    let err = vhdx::open(&child, &Limits::default(), &PathPolicy::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("DataWriteGuid"), "{err}");
    // Escaping path.
    std::fs::write(&child, &original).unwrap();
    std::fs::copy(&parent, dir.path().join("up.vhdx")).unwrap();
    make_differencing(&child, "..\\up.vhdx", &linkage);
    assert!(matches!(
        vhdx::open(&child, &Limits::default(), &PathPolicy::default()),
        Err(ImageError::PathNotAllowed { .. })
    ));
    let policy = PathPolicy {
        allowed_dirs: vec![dir.path().to_path_buf()],
    };
    assert!(vhdx::open(&child, &Limits::default(), &policy).is_ok());
}

#[test]
fn hostile_images_give_clear_errors() {
    let dir = scratch();
    let img = dir.path().join("h.vhdx");
    qemu_img_create(&img, "vhdx", "block_size=1M", "16M");
    qemu_io("vhdx", &img, &["write -P 0x11 0 1M"]);
    let original = std::fs::read(&img).unwrap();
    let l = layout(&original);
    let write = |b: &[u8]| std::fs::write(&img, b).unwrap();
    let open_err = || vhdx::open(&img, &Limits::default(), &PathPolicy::default()).unwrap_err();

    // Both headers damaged.
    let mut m = original.clone();
    m[64 * 1024 + 100] ^= 1;
    m[128 * 1024 + 100] ^= 1;
    write(&m);
    assert!(open_err().to_string().contains("header"));

    // Both region tables damaged.
    let mut m = original.clone();
    m[192 * 1024 + 40] ^= 1;
    m[256 * 1024 + 40] ^= 1;
    write(&m);
    assert!(open_err().to_string().contains("region table"));

    // An unknown required region.
    let mut m = original.clone();
    for rt in [192 * 1024usize, 256 * 1024] {
        let n = le32(&m, rt + 8) as usize;
        let e = rt + 16 + 32 * n;
        m[e..e + 16].copy_from_slice(&[0xAB; 16]);
        m[e + 16..e + 24].copy_from_slice(&(8 * MIB).to_le_bytes());
        m[e + 24..e + 28].copy_from_slice(&(MIB as u32).to_le_bytes());
        m[e + 28..e + 32].copy_from_slice(&1u32.to_le_bytes());
        m[rt + 8..rt + 12].copy_from_slice(&((n + 1) as u32).to_le_bytes());
        m[rt + 4..rt + 8].fill(0);
        let c = crc32c::crc32c(&m[rt..rt + 65536]);
        m[rt + 4..rt + 8].copy_from_slice(&c.to_le_bytes());
    }
    write(&m);
    assert!(matches!(open_err(), ImageError::Unsupported { .. }));

    // Virtual size so large the BAT exceeds the table limit.
    let mut m = original.clone();
    let meta = l.meta as usize;
    let count = u16::from_le_bytes([m[meta + 10], m[meta + 11]]) as usize;
    for i in 0..count {
        let e = meta + 32 + 32 * i;
        if m[e..e + 4] == [0x24, 0x42, 0xa5, 0x2f] {
            let off = meta + le32(&m, e + 16) as usize;
            m[off..off + 8].copy_from_slice(&(60u64 << 40).to_le_bytes());
        }
    }
    write(&m);
    let limits = Limits {
        max_table_bytes: 1 << 20,
        ..Limits::default()
    };
    let err = vhdx::open(&img, &limits, &PathPolicy::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::LimitExceeded { .. } | ImageError::Corrupt { .. }
        ),
        "{err}"
    );

    // A BAT entry pointing past the end of the file fails that read only.
    let mut m = original.clone();
    m[l.bat as usize..l.bat as usize + 8].copy_from_slice(&((1u64 << 40) | 6).to_le_bytes());
    write(&m);
    let src = open(&img);
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        src.read_at(&mut buf, 0),
        Err(ImageError::Corrupt { .. })
    ));
    assert!(src.read_at(&mut buf, 2 * MIB).is_ok());
    // An invalid block state.
    let mut m = original.clone();
    m[l.bat as usize..l.bat as usize + 8].copy_from_slice(&4u64.to_le_bytes());
    write(&m);
    assert!(open(&img).read_at(&mut buf, 0).is_err());

    // Truncated below the metadata.
    write(&original[..(2 * MIB) as usize]);
    assert!(vhdx::open(&img, &Limits::default(), &PathPolicy::default()).is_err());
}

#[test]
fn mutated_images_never_panic() {
    let dir = scratch();
    let img = dir.path().join("m.vhdx");
    qemu_img_create(&img, "vhdx", "block_size=1M", "4M");
    qemu_io("vhdx", &img, &["write -P 0x11 0 1M"]);
    make_dirty(&img);
    let l = layout(&std::fs::read(&img).unwrap());
    // Mutate the structures (headers, region table, log, metadata, BAT), re-sealing the
    // header CRCs half of the time so the log and region parsing are reached.
    // Mutations are patched into one copy in place and undone after each round (rewriting
    // the 10 MiB file every round would dominate the test's run time).
    let original = std::fs::read(&img).unwrap();
    let target = dir.path().join("mut.vhdx");
    std::fs::write(&target, &original).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let regions = [
        (64 * 1024u64, 4096u64),
        (192 * 1024, 65536),
        (MIB, 3 * 4096),
        (l.bat, 4096),
        (l.meta, 70 * 1024),
    ];
    let h = l.current_header as usize;
    let rt = 192 * 1024usize;
    for round in 0..300 {
        let mut touched = vec![(h, 4096usize), (rt, 65536usize)];
        let mut m_header = original[h..h + 4096].to_vec();
        let mut m_rt = original[rt..rt + 65536].to_vec();
        for _ in 0..1 + round % 3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (start, len) = regions[(x % regions.len() as u64) as usize];
            let at = (start + (x >> 8) % len) as usize;
            let value = (x >> 32) as u8;
            if (h..h + 4096).contains(&at) {
                m_header[at - h] = value;
            } else if (rt..rt + 65536).contains(&at) {
                m_rt[at - rt] = value;
            } else {
                file.write_all_at(&[value], at as u64).unwrap();
                touched.push((at, 1));
            }
        }
        if round % 2 == 0 {
            reseal_header(&mut m_header, 0);
            m_rt[4..8].fill(0);
            let c = crc32c::crc32c(&m_rt);
            m_rt[4..8].copy_from_slice(&c.to_le_bytes());
        }
        file.write_all_at(&m_header, h as u64).unwrap();
        file.write_all_at(&m_rt, rt as u64).unwrap();
        if let Ok(src) = vhdx::open(&target, &Limits::default(), &PathPolicy::default()) {
            exercise(src.as_ref());
        }
        for (at, len) in touched {
            file.write_all_at(&original[at..at + len], at as u64)
                .unwrap();
        }
    }
    mutate_and_check(&img, 30, 23, |p| {
        if let Ok(src) = vhdx::open(p, &Limits::default(), &PathPolicy::default()) {
            exercise(src.as_ref());
        }
    });
    let f = std::fs::File::open(&img).unwrap();
    let mut head = [0u8; 8];
    f.read_exact_at(&mut head, 0).unwrap();
    assert!(vhdx::probe(&head));
}
