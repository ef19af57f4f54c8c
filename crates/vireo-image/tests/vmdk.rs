//! VMDK reader and writers against qemu-img as the oracle.

mod foreign_common;

use std::path::Path;

use foreign_common::*;
use vireo_image::vmdk::{self, VmdkSubformat};
use vireo_image::{BlockSource, ExtentKind, ImageError, Limits, PathPolicy};

const SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "streamOptimized",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
];

fn open(path: &Path) -> Box<dyn BlockSource> {
    vmdk::open(path, &Limits::default(), &PathPolicy::default())
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

#[test]
fn every_subformat_and_size_matches_qemu() {
    let dir = scratch();
    // qemu-img cannot open the zero-sized VMDKs it creates; size 0 is covered with our writer.
    for (i, size) in [512u64, 1_000_000, 3 << 20, (5 << 20) + 4096]
        .into_iter()
        .enumerate()
    {
        let raw = dir.path().join("src.raw");
        write_pattern_raw(&raw, size, 7 + i as u64);
        for sub in SUBFORMATS {
            let img = dir.path().join(format!("{sub}-{size}.vmdk"));
            qemu_img_from_raw(&raw, "vmdk", &format!("subformat={sub}"), &img);
            assert!(vmdk::probe(
                &std::fs::read(&img).unwrap()
                    [..512.min(std::fs::metadata(&img).unwrap().len() as usize)]
            ));
            let src = open(&img);
            assert_matches_qemu(src.as_ref(), &img, "vmdk", dir.path());
        }
    }
}

#[test]
fn large_sparse_images_over_4gib_match_qemu() {
    let dir = scratch();
    let writes = [
        "write -P 0xab 0 64k",
        "write -P 0x11 2147483136 1024", // across the 2 GiB extent boundary
        "write -P 0x5a 4294934528 65536", // across 4 GiB
        "write -P 0x77 5368643584 65536", // the last 64 KiB
        "write -P 0x03 1234567 777",     // unaligned, partial grain
    ];
    let raw = dir.path().join("big.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&raw), "5G"]);
    qemu_io("raw", &raw, &writes);
    for sub in SUBFORMATS {
        let img = dir.path().join(format!("big-{sub}.vmdk"));
        if sub == "streamOptimized" {
            // qemu only appends to stream-optimized images: convert instead.
            qemu_img_from_raw(&raw, "vmdk", "subformat=streamOptimized", &img);
        } else {
            qemu_img_create(&img, "vmdk", &format!("subformat={sub}"), "5G");
            qemu_io("vmdk", &img, &writes);
        }
        let src = open(&img);
        assert_eq!(src.virtual_size(), 5 << 30);
        assert_matches_qemu(src.as_ref(), &img, "vmdk", dir.path());
        let mut b = [0u8; 4];
        src.read_at(&mut b, (4 << 30) - 2).unwrap();
        assert_eq!(b, [0x5a; 4]);
    }
}

#[test]
fn zero_grains_and_backing_files_match_qemu() {
    let dir = scratch();
    let base = dir.path().join("base.vmdk");
    let raw = dir.path().join("base.raw");
    write_pattern_raw(&raw, 8 << 20, 99);
    qemu_img_from_raw(&raw, "vmdk", "zeroed_grain=on", &base);
    // Zero a grain-aligned range that had data: qemu writes GTE 1 (zero grains).
    qemu_io("vmdk", &base, &["write -z 0 128k", "write -P 0x42 4M 100k"]);
    let src = open(&base);
    assert_eq!(src.extent_at(0).unwrap().kind, ExtentKind::Zero);
    assert_matches_qemu(src.as_ref(), &base, "vmdk", dir.path());

    let child = dir.path().join("child.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        s(&child),
    ]);
    qemu_io(
        "vmdk",
        &child,
        &["write -P 0x99 64k 4k", "write -P 0x98 7M 1M"],
    );
    let src = open(&child);
    assert_eq!(src.extent_at(1 << 20).unwrap().kind, ExtentKind::Backing);
    assert_matches_qemu(src.as_ref(), &child, "vmdk", dir.path());
    let info = vmdk::describe(&child, &Limits::default(), &PathPolicy::default()).unwrap();
    assert_eq!(info.parent_file_name_hint.as_deref(), Some("base.vmdk"));
    assert!(info.parent.is_some());
}

#[test]
fn describe_reports_structure() {
    let dir = scratch();
    let img = dir.path().join("d.vmdk");
    qemu_img_create(
        &img,
        "vmdk",
        "subformat=twoGbMaxExtentSparse,adapter_type=lsilogic",
        "5G",
    );
    let info = vmdk::describe(&img, &Limits::default(), &PathPolicy::default()).unwrap();
    assert_eq!(info.create_type.as_deref(), Some("twoGbMaxExtentSparse"));
    assert_eq!(info.adapter_type.as_deref(), Some("lsilogic"));
    assert_eq!(info.extents.len(), 3);
    assert_eq!(info.virtual_size, 5 << 30);
    let sparse = info.extents[0].sparse.as_ref().unwrap();
    assert_eq!(sparse.grain_size, 65536);
    assert!(!sparse.compressed);
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["extents"][0]["kind"], "sparse");
}

#[test]
fn extent_paths_outside_the_image_directory_are_refused() {
    let dir = scratch();
    let inner = dir.path().join("a/b");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(dir.path().join("secret.raw"), vec![1u8; 4096]).unwrap();
    for target in [
        "../../secret.raw",
        "../../../../../../etc/shadow",
        "/etc/passwd",
    ] {
        let desc = inner.join("evil.vmdk");
        std::fs::write(
            &desc,
            format!("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 8 FLAT \"{target}\" 0\n"),
        )
        .unwrap();
        match vmdk::open(&desc, &Limits::default(), &PathPolicy::default()) {
            Err(ImageError::PathNotAllowed { .. }) | Err(ImageError::Io { .. }) => {}
            other => panic!("{target}: expected refusal, got {other:?}"),
        }
    }
    // A parent hint escaping the directory is refused the same way.
    let child = inner.join("child.vmdk");
    let flat = inner.join("child-flat.vmdk");
    std::fs::write(&flat, vec![0u8; 4096]).unwrap();
    std::fs::write(
        &child,
        "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=12345678\nparentFileNameHint=\"../../secret.raw\"\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"child-flat.vmdk\" 0\n",
    )
    .unwrap();
    assert!(matches!(
        vmdk::open(&child, &Limits::default(), &PathPolicy::default()),
        Err(ImageError::PathNotAllowed { .. })
    ));
}

#[test]
fn hostile_headers_give_clear_errors() {
    let dir = scratch();
    let img = dir.path().join("h.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", s(&img), "64M"]);
    let original = std::fs::read(&img).unwrap();

    // Capacity so large the grain directory exceeds the table limit.
    let mut m = original.clone();
    m[12..20].copy_from_slice(&(1u64 << 50).to_le_bytes());
    std::fs::write(&img, &m).unwrap();
    let limits = Limits {
        max_table_bytes: 1 << 20,
        ..Limits::default()
    };
    assert!(matches!(
        vmdk::open(&img, &limits, &PathPolicy::default()),
        Err(ImageError::LimitExceeded { .. })
    ));

    // Grain directory past the end of the file.
    let mut m = original.clone();
    m[56..64].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&img, &m).unwrap();
    assert!(matches!(
        vmdk::open(&img, &Limits::default(), &PathPolicy::default()),
        Err(ImageError::Corrupt { .. })
    ));

    // A grain table entry pointing past the end of the file fails the read, not the process.
    let mut m = original.clone();
    let gd = u64::from_le_bytes(m[56..64].try_into().unwrap()) as usize * 512;
    let gt = u32::from_le_bytes(m[gd..gd + 4].try_into().unwrap()) as usize * 512;
    m[gt..gt + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    std::fs::write(&img, &m).unwrap();
    let src = open(&img);
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        src.read_at(&mut buf, 0),
        Err(ImageError::Corrupt { .. })
    ));
    assert!(src.read_at(&mut buf, 1 << 20).is_ok());

    // Truncated to the header only.
    std::fs::write(&img, &original[..512]).unwrap();
    assert!(vmdk::open(&img, &Limits::default(), &PathPolicy::default()).is_err());

    // Reads past the virtual size are refused.
    std::fs::write(&img, &original).unwrap();
    let src = open(&img);
    assert!(matches!(
        src.read_at(&mut buf, (64 << 20) - 100),
        Err(ImageError::OutOfRange { .. })
    ));
}

#[test]
fn mutated_images_never_panic() {
    let dir = scratch();
    for (i, sub) in ["monolithicSparse", "streamOptimized"]
        .into_iter()
        .enumerate()
    {
        let raw = dir.path().join("m.raw");
        write_pattern_raw(&raw, 2 << 20, 3);
        let img = dir.path().join(format!("m{i}.vmdk"));
        qemu_img_from_raw(&raw, "vmdk", &format!("subformat={sub}"), &img);
        mutate_and_check(&img, 300, 11 + i as u64, |p| {
            if let Ok(src) = vmdk::open(p, &Limits::default(), &PathPolicy::default()) {
                exercise(src.as_ref());
            }
        });
    }
    // Our own stream-optimized output (GD at the end, footer, markers) as well.
    let raw = dir.path().join("m.raw");
    let img = dir.path().join("ours.vmdk");
    write_from_raw(&raw, &img, VmdkSubformat::StreamOptimized, 1 << 20);
    mutate_and_check(&img, 200, 5, |p| {
        if let Ok(src) = vmdk::open(p, &Limits::default(), &PathPolicy::default()) {
            exercise(src.as_ref());
        }
    });
}

/// Writes `raw` into a new VMDK through our sink in `chunk`-sized sequential writes.
fn write_from_raw(raw: &Path, img: &Path, sub: VmdkSubformat, chunk: usize) {
    let data = std::fs::read(raw).unwrap();
    let mut sink = vmdk::create_sink(img, data.len() as u64, sub).unwrap();
    for (i, piece) in data.chunks(chunk).enumerate() {
        sink.write_at(piece, (i * chunk) as u64).unwrap();
    }
    sink.finish().unwrap();
}

fn check_written(img: &Path, raw: &Path, dir: &Path) {
    let (ok, out) = try_run("qemu-img", &["check", "-f", "vmdk", s(img)]);
    assert!(ok, "qemu-img check {}: {out}", img.display());
    let (same, out) = try_run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vmdk", s(raw), s(img)],
    );
    assert!(same, "qemu-img compare {}: {out}", img.display());
    let src = open(img);
    assert_matches_qemu(src.as_ref(), img, "vmdk", dir);
}

#[test]
fn written_images_pass_qemu_check_and_compare() {
    let dir = scratch();
    for sub in [
        VmdkSubformat::MonolithicSparse,
        VmdkSubformat::StreamOptimized,
    ] {
        for (i, size) in [512u64, 1_000_448, 9 << 20].into_iter().enumerate() {
            let raw = dir.path().join(format!("w{i}.raw"));
            write_pattern_raw(&raw, size, 21 + i as u64);
            for chunk in [4096usize, 1 << 20, 100_000] {
                let img = dir.path().join(format!("w{i}-{chunk}-{sub:?}.vmdk"));
                write_from_raw(&raw, &img, sub, chunk);
                check_written(&img, &raw, dir.path());
            }
        }
    }
}

#[test]
fn zero_sized_images_round_trip() {
    let dir = scratch();
    for sub in [
        VmdkSubformat::MonolithicSparse,
        VmdkSubformat::StreamOptimized,
    ] {
        let img = dir.path().join(format!("zero-{sub:?}.vmdk"));
        vmdk::create_sink(&img, 0, sub).unwrap().finish().unwrap();
        let src = open(&img);
        assert_eq!(src.virtual_size(), 0);
        assert!(src.read_at(&mut [], 0).is_ok());
        assert!(src.extent_at(0).is_err());
    }
}

#[test]
fn out_of_order_and_rewritten_grains_are_correct() {
    let dir = scratch();
    let size: u64 = 80 << 20; // beyond the 32 MiB reorder budget
    for sub in [
        VmdkSubformat::MonolithicSparse,
        VmdkSubformat::StreamOptimized,
    ] {
        let img = dir.path().join(format!("ooo-{sub:?}.vmdk"));
        let raw = dir.path().join("ooo.raw");
        let expected = std::fs::File::create(&raw).unwrap();
        expected.set_len(size).unwrap();
        let mut sink = vmdk::create_sink(&img, size, sub).unwrap();
        let mut put = |data: &[u8], off: u64| {
            sink.write_at(data, off).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&expected, data, off).unwrap();
        };
        // Compressible but distinct 1 MiB chunks (a random sector repeated) keep this fast.
        let chunk = |seed: u64| pseudo_random(512, seed).repeat(2048);
        // Descending 1 MiB chunks in the second half, then ascending in the first.
        for k in (40..80u64).rev() {
            put(&chunk(k), k << 20);
        }
        for k in 0..40u64 {
            put(&chunk(1000 + k), k << 20);
        }
        // Late partial rewrites behind the frontier, including one that zeroes data.
        put(&[0xEE; 1000], 5 << 20);
        put(&[0u8; 65536], 6 << 20);
        put(&pseudo_random(3000, 9), (70 << 20) + 100);
        sink.finish().unwrap();
        check_written(&img, &raw, dir.path());
    }
}

#[test]
fn stream_optimized_output_has_the_vmware_layout() {
    let dir = scratch();
    let raw = dir.path().join("l.raw");
    write_pattern_raw(&raw, 3 << 20, 4);
    let img = dir.path().join("l.vmdk");
    write_from_raw(&raw, &img, VmdkSubformat::StreamOptimized, 1 << 20);
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(&bytes[0..4], b"KDMV");
    // Header: version 3, compressed + markers, GD at the end.
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()) & 0x30000,
        0x30000
    );
    assert_eq!(
        u64::from_le_bytes(bytes[56..64].try_into().unwrap()),
        u64::MAX
    );
    let n = bytes.len();
    assert_eq!(n % 512, 0);
    // footer marker, footer, end-of-stream marker
    assert_eq!(
        u32::from_le_bytes(bytes[n - 1536 + 12..n - 1536 + 16].try_into().unwrap()),
        3
    );
    assert_eq!(&bytes[n - 1024..n - 1020], b"KDMV");
    assert!(bytes[n - 512..].iter().all(|&b| b == 0));
    // First grain marker right after the 64 KiB header area, LBA 0.
    assert_eq!(
        u64::from_le_bytes(bytes[65536..65544].try_into().unwrap()),
        0
    );
    let info = qemu_img(&["info", "--output=json", s(&img)]);
    assert!(info.contains("streamOptimized"), "{info}");
    let desc = String::from_utf8_lossy(&bytes[512..1024]);
    assert!(desc.contains("createType=\"streamOptimized\""), "{desc}");
}

#[test]
fn parallel_convert_pipeline_writes_valid_images() {
    // ops::copy compresses grains on worker threads (the stream sink's unit encoder) and
    // interleaves them with plain writes; the result must still be a valid stream.
    let dir = scratch();
    let raw = dir.path().join("p.raw");
    write_pattern_raw(&raw, (7 << 20) + 1536, 12);
    let src = vireo_image::detect::open(&raw, &Limits::default(), &PathPolicy::default()).unwrap();
    for sub in [
        VmdkSubformat::StreamOptimized,
        VmdkSubformat::MonolithicSparse,
    ] {
        let img = dir.path().join(format!("p-{sub:?}.vmdk"));
        let mut sink = vmdk::create_sink(&img, src.virtual_size(), sub).unwrap();
        vireo_image::ops::copy(
            src.as_ref(),
            sink.as_mut(),
            3,
            &mut |_| {},
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
        // A late rewrite behind the frontier after the pipeline finished.
        sink.write_at(&[0x5A; 4096], 4096).unwrap();
        sink.finish().unwrap();
        let expected = dir.path().join("p-expected.raw");
        std::fs::copy(&raw, &expected).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&expected)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0x5A; 4096], 4096).unwrap();
        check_written(&img, &expected, dir.path());
    }
}

/// Reader throughput in the convert pipeline's access pattern (2 threads, 2 MiB chunks,
/// zero extents skipped), for any image format:
/// `VIREO_READ_BENCH=img cargo test --release -p vireo-image --test vmdk read_throughput -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; needs VIREO_READ_BENCH=<image>"]
fn read_throughput() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let Some(path) = std::env::var_os("VIREO_READ_BENCH") else {
        return;
    };
    let src =
        vireo_image::detect::open(Path::new(&path), &Limits::default(), &PathPolicy::default())
            .unwrap();
    let size = src.virtual_size();
    let chunk = 2u64 << 20;
    let (next, data) = (AtomicU64::new(0), AtomicU64::new(0));
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut buf = vec![0u8; chunk as usize];
                loop {
                    let start = next.fetch_add(chunk, Ordering::Relaxed);
                    if start >= size {
                        break;
                    }
                    let end = (start + chunk).min(size);
                    let mut pos = start;
                    while pos < end {
                        let e = src.extent_at(pos).unwrap();
                        let len = e.length.min(end - pos);
                        if e.kind != ExtentKind::Zero {
                            src.read_at(&mut buf[..len as usize], pos).unwrap();
                            data.fetch_add(len, Ordering::Relaxed);
                        }
                        pos += len;
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}: {} MiB of data read in {secs:.2} s = {:.0} MiB/s of virtual size",
        Path::new(&path).display(),
        data.load(Ordering::Relaxed) >> 20,
        (size >> 20) as f64 / secs
    );
}
