//! qcow2/raw engine against qemu-img as the oracle: images qemu makes are read correctly,
//! images Vireo makes pass `qemu-img check` and compare identical, `info` agrees with
//! `qemu-img info`, hostile images fail cleanly.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use vireo_image::ops::{self, CheckOutcome, CompareOutcome, ConvertOptions, CreateSpec};
use vireo_image::qcow2::{CompressionType, CreateOptions, Preallocation};
use vireo_image::{ExtentKind, Format, ImageError, Limits, PathPolicy};

mod native_common;
use native_common::*;

#[test]
fn sizes_and_patterns_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // (name, size, qemu-io commands)
    let cases: &[(&str, &str, &[&str])] = &[
        ("empty", "0", &[]),
        ("sector", "512", &["write -P 0x41 0 512"]),
        (
            "unaligned",
            "1000448",
            &["write -P 0x42 4096 70000", "write -P 0x43 999936 512"],
        ),
        (
            "patterns",
            "8M",
            &[
                "write -P 0x11 0 1M",
                "write -z 1M 1M",
                "write -P 0 2M 1M",
                "write -P 0xfe 3145216 131072",
            ],
        ),
        (
            "big",
            "5G",
            &[
                "write -P 0x77 4294901760 131072",
                "write -P 0x78 5368643584 65536",
            ],
        ),
    ];
    for (name, size, cmds) in cases {
        for compat in ["1.1", "0.10"] {
            let src = d.join(format!("{name}-{compat}.qcow2"));
            qcreate(&src, "qcow2", &format!("compat={compat}"), size);
            if !cmds.is_empty() {
                qio(&src, "qcow2", cmds);
            }
            assert_eq!(vcheck(&src), 0);
            round_trip_all(d, &src);
        }
    }
}

#[test]
fn random_data_and_compressed_sources() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Random data through a raw file, then into qcow2 by qemu (plain and compressed).
    let raw = d.join("rand.raw");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = vec![0u8; 6 << 20];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    // Zero run and repeated pattern inside.
    data[1 << 20..2 << 20].fill(0);
    for (i, b) in data[3 << 20..4 << 20].iter_mut().enumerate() {
        *b = (i % 13) as u8;
    }
    std::fs::write(&raw, &data).unwrap();
    round_trip_all(d, &raw);
    for ctype in ["zlib", "zstd"] {
        let c = d.join(format!("rand-{ctype}.qcow2"));
        ok(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &format!("compression_type={ctype}"),
                s(&raw),
                s(&c),
            ],
        );
        round_trip_all(d, &c);
        assert_eq!(vcheck(&c), 0);
    }
    // Compressed output with zstd is readable by qemu.
    let mut o = ConvertOptions::new(Format::Qcow2);
    o.compress = true;
    o.spec.qcow2.compression_type = CompressionType::Zstd;
    let z = d.join("ours-zstd.qcow2");
    convert(&raw, &z, &o);
    qcheck_clean(&z);
    assert_eq!(qcompare(&raw, &z), 0);
    assert_eq!(
        qinfo(&z)["format-specific"]["data"]["compression-type"],
        "zstd"
    );
}

#[test]
fn backing_chains_relative_and_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.qcow2");
    qcreate(&base, "qcow2", "", "64M");
    qio(
        &base,
        "qcow2",
        &["write -P 0x01 0 8M", "write -P 0x02 32M 1M"],
    );
    // mid: relative backing reference with format; top: absolute reference.
    let mid = d.join("mid.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            s(&mid),
        ],
    );
    qio(&mid, "qcow2", &["write -P 0x03 4M 1M", "write -z 33M 64k"]);
    let top = d.join("top.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&mid),
            "-F",
            "qcow2",
            s(&top),
            "80M",
        ],
    );
    qio(
        &top,
        "qcow2",
        &["write -P 0x04 7M 2M", "write -P 0x05 70M 1M"],
    );

    let out = d.join("flat.qcow2");
    convert(&top, &out, &ConvertOptions::new(Format::Qcow2));
    assert_eq!(qcompare(&top, &out), 0);
    qcheck_clean(&out);

    // info agrees with qemu-img on format, size and chain.
    let ours = ops::info(&top, &Limits::default(), &PathPolicy::default()).unwrap();
    let theirs = qinfo(&top);
    assert_eq!(ours.format, theirs["format"]);
    assert_eq!(ours.virtual_size, theirs["virtual-size"].as_u64().unwrap());
    assert_eq!(
        ours.backing_filename.as_deref(),
        theirs["backing-filename"].as_str()
    );
    assert_eq!(
        PathBuf::from(ours.full_backing_filename.as_deref().unwrap()),
        PathBuf::from(theirs["full-backing-filename"].as_str().unwrap())
            .canonicalize()
            .unwrap()
    );
    let chain: Vec<_> = ours
        .chain()
        .iter()
        .map(|i| (i.format.clone(), i.virtual_size))
        .collect();
    assert_eq!(
        chain,
        vec![
            ("qcow2".into(), 80 << 20),
            ("qcow2".into(), 64 << 20),
            ("qcow2".into(), 64 << 20)
        ]
    );
    let json = serde_json::to_value(&ours).unwrap();
    assert_eq!(json["backing-image"]["backing-filename"], "base.qcow2");

    // Vireo-created overlay over a qemu base, read by qemu.
    let overlay = d.join("overlay.qcow2");
    ops::create(&overlay, Format::Qcow2, 0, Some(Path::new("base.qcow2"))).unwrap();
    qcheck_clean(&overlay);
    assert_eq!(qinfo(&overlay)["backing-filename"], "base.qcow2");
    assert_eq!(qcompare(&overlay, &base), 0);

    // The default policy confines backing files to the image's directory.
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let escaping = sub.join("esc.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "../base.qcow2",
            "-F",
            "qcow2",
            s(&escaping),
        ],
    );
    let e = vireo_image::detect::open(&escaping, &Limits::default(), &PathPolicy::default())
        .unwrap_err();
    assert!(matches!(e, ImageError::PathNotAllowed { .. }), "{e}");
    let policy = PathPolicy {
        allowed_dirs: vec![d.to_path_buf()],
    };
    vireo_image::detect::open(&escaping, &Limits::default(), &policy).unwrap();
}

#[test]
fn hostile_backing_references_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Loop: a -> b -> a (written with -u so qemu does not try to open them).
    let a = d.join("a.qcow2");
    let b = d.join("b.qcow2");
    qcreate(&a, "qcow2", "", "1M");
    qcreate(&b, "qcow2", "", "1M");
    ok(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-b",
            "b.qcow2",
            "-F",
            "qcow2",
            s(&a),
        ],
    );
    ok(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-b",
            "a.qcow2",
            "-F",
            "qcow2",
            s(&b),
        ],
    );
    let e = vireo_image::detect::open(&a, &Limits::default(), &PathPolicy::default()).unwrap_err();
    assert!(matches!(e, ImageError::ChainTooDeep(_)), "{e}");
    // Escape to a host file.
    let c = d.join("c.qcow2");
    qcreate(&c, "qcow2", "", "1M");
    ok(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-b",
            "../../etc/shadow",
            "-F",
            "raw",
            s(&c),
        ],
    );
    let e = vireo_image::detect::open(&c, &Limits::default(), &PathPolicy::default()).unwrap_err();
    assert!(
        matches!(e, ImageError::PathNotAllowed { .. } | ImageError::Io { .. }),
        "{e}"
    );
    // Too long a chain.
    let mut prev = d.join("l0.qcow2");
    qcreate(&prev, "qcow2", "", "1M");
    for i in 1..5 {
        let next = d.join(format!("l{i}.qcow2"));
        let name = prev.file_name().unwrap().to_str().unwrap().to_string();
        ok(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                &name,
                "-F",
                "qcow2",
                s(&next),
            ],
        );
        prev = next;
    }
    let limits = Limits {
        max_chain_depth: 3,
        ..Limits::default()
    };
    let e = vireo_image::detect::open(&prev, &limits, &PathPolicy::default()).unwrap_err();
    assert!(matches!(e, ImageError::ChainTooDeep(3)), "{e}");
    vireo_image::detect::open(&prev, &Limits::default(), &PathPolicy::default()).unwrap();
}

#[test]
fn hostile_headers_and_tables_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("good.qcow2");
    qcreate(&good, "qcow2", "", "16M");
    qio(&good, "qcow2", &["write -P 0x61 0 1M"]);
    let open = |p: &Path| vireo_image::detect::open(p, &Limits::default(), &PathPolicy::default());

    // Huge L1 (l1_size at byte 36).
    let p = d.join("hugel1.qcow2");
    std::fs::copy(&good, &p).unwrap();
    poke(&p, 36, &u32::MAX.to_be_bytes());
    assert!(matches!(
        open(&p).unwrap_err(),
        ImageError::LimitExceeded { .. }
    ));

    // L2 table offset past EOF.
    let p = d.join("l2eof.qcow2");
    std::fs::copy(&good, &p).unwrap();
    let l1_off = peek_u64(&p, 40);
    poke(&p, l1_off, &((1u64 << 63) | (1 << 40)).to_be_bytes());
    assert!(matches!(open(&p).unwrap_err(), ImageError::Corrupt { .. }));
    assert_eq!(vcheck(&p), 2);

    // Data cluster offset past EOF: open succeeds, reading that cluster fails cleanly.
    let p = d.join("dataeof.qcow2");
    std::fs::copy(&good, &p).unwrap();
    let l2_off = peek_u64(&p, l1_off) & 0x00ff_ffff_ffff_fe00;
    poke(&p, l2_off, &((1u64 << 63) | (1 << 40)).to_be_bytes());
    let img = open(&p).unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        img.read_at(&mut buf, 0).unwrap_err(),
        ImageError::Corrupt { .. }
    ));
    img.read_at(&mut buf, 65536).unwrap();
    assert_eq!(buf[0], 0x61);
    assert_eq!(vcheck(&p), 2);
    assert_eq!(run("qemu-img", &["check", s(&p)]).status.code(), Some(2));

    // Refcount overflow: 64-bit refcounts with a huge stored count is a leak, not a panic.
    let p = d.join("rc64.qcow2");
    qcreate(&p, "qcow2", "refcount_bits=64", "1M");
    let rt = peek_u64(&p, 48);
    let rb = peek_u64(&p, rt);
    poke(&p, rb, &u64::MAX.to_be_bytes());
    assert_eq!(vcheck(&p), 3);
    assert_eq!(run("qemu-img", &["check", s(&p)]).status.code(), Some(3));

    // Stored refcount too low: corruption (same verdict as qemu).
    let p = d.join("rclow.qcow2");
    std::fs::copy(&good, &p).unwrap();
    let rt = peek_u64(&p, 48);
    let rb = peek_u64(&p, rt);
    poke(&p, rb, &0u16.to_be_bytes());
    assert_eq!(vcheck(&p), 2);
    assert_eq!(run("qemu-img", &["check", s(&p)]).status.code(), Some(2));

    // Extended L2 and unknown incompatible bits are refused.
    let p = d.join("extl2.qcow2");
    qcreate(&p, "qcow2", "extended_l2=on", "1M");
    assert!(matches!(
        open(&p).unwrap_err(),
        ImageError::Unsupported { .. }
    ));
    let p = d.join("unknown.qcow2");
    std::fs::copy(&good, &p).unwrap();
    poke(&p, 72, &(1u64 << 33).to_be_bytes());
    assert!(matches!(
        open(&p).unwrap_err(),
        ImageError::Unsupported { .. }
    ));
    // Truncated file.
    let p = d.join("trunc.qcow2");
    std::fs::write(&p, &std::fs::read(&good).unwrap()[..50]).unwrap();
    assert!(open(&p).is_err());
}

#[test]
fn snapshots_dirty_and_lazy_refcounts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("snap.qcow2");
    qcreate(&p, "qcow2", "", "4M");
    qio(&p, "qcow2", &["write -P 0x10 0 1M"]);
    ok("qemu-img", &["snapshot", "-c", "first", s(&p)]);
    qio(&p, "qcow2", &["write -P 0x20 0 64k"]);
    ok("qemu-img", &["snapshot", "-c", "second", s(&p)]);
    let info = ops::info(&p, &Limits::default(), &PathPolicy::default()).unwrap();
    let names: Vec<_> = info.snapshots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    let theirs = qinfo(&p);
    assert_eq!(theirs["snapshots"][1]["id"], info.snapshots[1].id.as_str());
    assert_eq!(
        vcheck(&p),
        0,
        "shared clusters between snapshots are counted like qemu"
    );
    let out = d.join("snap-out.qcow2");
    convert(&p, &out, &ConvertOptions::new(Format::Qcow2));
    assert_eq!(qcompare(&p, &out), 0);

    // Lazy refcounts and metadata preallocation on create.
    let lazy = d.join("lazy.qcow2");
    let spec = CreateSpec {
        backing: None,
        qcow2: CreateOptions {
            lazy_refcounts: true,
            preallocation: Preallocation::Metadata,
            ..CreateOptions::default()
        },
        ..CreateSpec::default()
    };
    ops::create_with(&lazy, Format::Qcow2, 200 << 20, &spec).unwrap();
    qcheck_clean(&lazy);
    let q = qinfo(&lazy);
    assert_eq!(q["format-specific"]["data"]["lazy-refcounts"], true);
    let map = ok("qemu-img", &["map", "--output", "json", s(&lazy)]);
    assert!(
        map.contains("\"offset\""),
        "metadata preallocation maps clusters: {map}"
    );
    assert_eq!(vcheck(&lazy), 0);
    // qemu writes into the preallocated image; our reader sees it.
    qio(&lazy, "qcow2", &["write -P 0x33 1M 64k"]);
    let img = vireo_image::detect::open(&lazy, &Limits::default(), &PathPolicy::default()).unwrap();
    let mut b = vec![0u8; 65536];
    img.read_at(&mut b, 1 << 20).unwrap();
    assert!(b.iter().all(|x| *x == 0x33));

    // Dirty bit is reported by info and check.
    let dirty = d.join("dirty.qcow2");
    std::fs::copy(&lazy, &dirty).unwrap();
    poke(&dirty, 72, &1u64.to_be_bytes());
    let info = ops::info(&dirty, &Limits::default(), &PathPolicy::default()).unwrap();
    assert_eq!(info.dirty_flag, Some(true));
    match ops::check(&dirty, &Limits::default(), &PathPolicy::default()).unwrap() {
        CheckOutcome::Checked(r) => assert!(r.dirty_flag),
        other => panic!("{other:?}"),
    }
}

#[test]
fn compare_map_and_raw_sparseness() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = d.join("a.qcow2");
    qcreate(&a, "qcow2", "", "10M");
    qio(&a, "qcow2", &["write -P 0x01 1M 1M"]);
    let b = d.join("b.qcow2");
    qcreate(&b, "qcow2", "", "12M");
    qio(&b, "qcow2", &["write -P 0x01 1M 1M"]);
    let cancel = never();
    let cmp = |x: &Path, y: &Path| {
        ops::compare(x, y, &Limits::default(), &PathPolicy::default(), &cancel).unwrap()
    };
    assert_eq!(
        cmp(&a, &b),
        CompareOutcome::Identical,
        "extra zero tail is equal"
    );
    assert_eq!(qcompare(&a, &b), 0);
    qio(&b, "qcow2", &["write -P 0x09 11M 512"]);
    assert_eq!(cmp(&a, &b), CompareOutcome::Differ { offset: 11 << 20 });
    assert_eq!(qcompare(&a, &b), 1);
    qio(&b, "qcow2", &["write -P 0x02 1572864 1"]);
    assert_eq!(cmp(&a, &b), CompareOutcome::Differ { offset: 1572864 });

    // map: data bytes agree with qemu-img map.
    let mut data = 0u64;
    ops::map(&a, &Limits::default(), &PathPolicy::default(), &mut |e| {
        if e.kind == ExtentKind::Data {
            data += e.length;
        }
        Ok(())
    })
    .unwrap();
    let qmap: serde_json::Value =
        serde_json::from_str(&ok("qemu-img", &["map", "--output", "json", s(&a)])).unwrap();
    let qdata: u64 = qmap
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(data, qdata);

    // Raw output is sparse.
    let raw = d.join("a.raw");
    convert(&a, &raw, &ConvertOptions::new(Format::Raw));
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&raw).unwrap();
    assert_eq!(m.len(), 10 << 20);
    assert!(
        m.blocks() * 512 <= 1 << 20,
        "only the data MiB is allocated"
    );
    assert_eq!(vcheck(&raw), 63);
}

#[test]
fn cancel_and_errors_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.qcow2");
    qcreate(&src, "qcow2", "", "64M");
    qio(&src, "qcow2", &["write -P 0x44 0 32M"]);
    let dst = d.join("dst.qcow2");
    let cancel = AtomicBool::new(false);
    let mut calls = 0;
    let r = ops::convert_with(
        &src,
        &dst,
        &ConvertOptions::new(Format::Qcow2),
        &mut |_| {
            calls += 1;
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        },
        &cancel,
    );
    assert!(matches!(r, Err(ImageError::Cancelled)), "{r:?}");
    assert!(calls >= 1);
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "only the source remains: {leftovers:?}");

    // Converting a corrupt source fails and leaves nothing behind either.
    let bad = d.join("bad.qcow2");
    std::fs::copy(&src, &bad).unwrap();
    let l1 = peek_u64(&bad, 40);
    let l2 = peek_u64(&bad, l1) & 0x00ff_ffff_ffff_fe00;
    poke(&bad, l2 + 8 * 100, &((1u64 << 63) | 0x200).to_be_bytes());
    let r = ops::convert(&bad, &dst, Format::Qcow2, false, &mut |_| {}, &never());
    assert!(matches!(r, Err(ImageError::Corrupt { .. })), "{r:?}");
    assert!(!dst.exists());
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 2);
}

#[test]
fn foreign_formats_convert_through_detection() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.qcow2");
    qcreate(&src, "qcow2", "", "40M");
    qio(
        &src,
        "qcow2",
        &[
            "write -P 0x31 0 3M",
            "write -P 0 8M 1M",
            "write -P 0x32 20M 64k",
        ],
    );
    let foreign: &[(&str, &str, &str)] = &[
        ("sparse.vmdk", "vmdk", "subformat=monolithicSparse"),
        ("stream.vmdk", "vmdk", "subformat=streamOptimized"),
        ("dyn.vhdx", "vhdx", ""),
        ("dyn.vhd", "vpc", "subformat=dynamic"),
        ("fixed.vhd", "vpc", "subformat=fixed"),
    ];
    for (name, fmt, opts) in foreign {
        let f = d.join(name);
        let mut args = vec!["convert", "-O", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([s(&src), s(&f)]);
        ok("qemu-img", &args);
        let detected = vireo_image::detect::detect_format(&f).unwrap();
        assert_eq!(detected.as_str(), *fmt, "{name}");
        // qemu probes only the head of a file, so it takes a fixed VHD for raw; we read its
        // footer. Tell qemu the format explicitly.
        let info = ops::info(&f, &Limits::default(), &PathPolicy::default()).unwrap();
        assert_eq!(info.format, *fmt, "{name}");
        let out = d.join(format!("{name}.qcow2"));
        convert(&f, &out, &ConvertOptions::new(Format::Qcow2));
        let cmp = run(
            "qemu-img",
            &["compare", "-f", fmt, "-F", "qcow2", s(&f), s(&out)],
        );
        assert_eq!(cmp.status.code(), Some(0), "{name}");
        qcheck_clean(&out);
    }
    // And out to VMDK with the VMDK writer.
    for sub in ["monolithicSparse", "streamOptimized"] {
        let out = d.join(format!("out-{sub}.vmdk"));
        let mut o = ConvertOptions::new(Format::Vmdk);
        o.spec.vmdk_subformat = if sub == "streamOptimized" {
            vireo_image::vmdk::VmdkSubformat::StreamOptimized
        } else {
            vireo_image::vmdk::VmdkSubformat::MonolithicSparse
        };
        convert(&src, &out, &o);
        assert_eq!(qcompare(&src, &out), 0, "{sub}");
        assert!(
            qinfo(&out)["format-specific"]["data"]["create-type"] == sub,
            "{sub}"
        );
    }
}
