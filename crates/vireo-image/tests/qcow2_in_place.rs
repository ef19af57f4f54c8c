//! qcow2 written in place (copy-on-write of snapshot-shared clusters, lazy refcounts,
//! refusals and repair), checked with qemu-img as the oracle.

use std::path::Path;

use vireo_image::{ImageError, Limits, PathPolicy};

mod native_common;
use native_common::*;

#[test]
fn in_place_writes_cow_snapshots_and_backing() {
    use vireo_image::BlockSink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    std::fs::write(&base, vec![0x5au8; 4 << 20]).unwrap();
    let img = d.join("img.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&img),
            "6M",
        ],
    );
    qio(
        &img,
        "qcow2",
        &[
            "write -P 0x11 0 256k",
            "write -c -P 0x22 1M 64k",
            "write -z 2M 64k",
        ],
    );
    ok("qemu-img", &["snapshot", "-c", "s1", s(&img)]);
    qio(&img, "qcow2", &["write -P 0x33 128k 64k"]);
    let snap_before = d.join("snap-before.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-l",
            "snapshot.name=s1",
            "-O",
            "raw",
            s(&img),
            s(&snap_before),
        ],
    );
    let expected = d.join("expected.raw");
    ok("qemu-img", &["convert", "-O", "raw", s(&img), s(&expected)]);

    // Writes: shared cluster (snapshot), compressed cluster (partial), zero cluster (partial),
    // over the backing file (partial), a cluster allocated after the snapshot (in place),
    // past the backing file's end, and the last sector.
    let writes: Vec<(u64, Vec<u8>)> = vec![
        (4096, vec![0xA1; 1000]),
        ((1 << 20) + 300, vec![0xA2; 5000]),
        ((2 << 20) + 65000, vec![0xA3; 1000]),
        ((3 << 20) + 12345, vec![0xA4; 70000]),
        ((128 << 10) + 7, vec![0xA5; 100]),
        ((5 << 20) + 1, vec![0xA6; 4096]),
        ((6 << 20) - 512, vec![0xA7; 512]),
    ];
    let mut w = Box::new(
        vireo_image::qcow2::open_rw(&img, &Limits::default(), &PathPolicy::default()).unwrap(),
    );
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&expected)
            .unwrap();
        for (off, data) in &writes {
            w.write_at(data, *off).unwrap();
            f.write_all_at(data, *off).unwrap();
        }
    }
    w.finish().unwrap();
    qcheck_clean(&img);
    assert_eq!(vcheck(&img), 0);
    assert_eq!(qcompare(&expected, &img), 0, "active layer has the writes");
    let snap_after = d.join("snap-after.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-l",
            "snapshot.name=s1",
            "-O",
            "raw",
            s(&img),
            s(&snap_after),
        ],
    );
    assert_eq!(
        std::fs::read(&snap_before).unwrap(),
        std::fs::read(&snap_after).unwrap(),
        "snapshot untouched"
    );
    assert_eq!(qinfo(&img)["dirty-flag"], false);
}

#[test]
fn in_place_refusals_and_repair() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let open_rw =
        |p: &Path| vireo_image::qcow2::open_rw(p, &Limits::default(), &PathPolicy::default());
    let v2 = d.join("v2.qcow2");
    qcreate(&v2, "qcow2", "compat=0.10", "1M");
    assert!(matches!(
        open_rw(&v2).unwrap_err(),
        ImageError::WriteRefused { .. }
    ));
    let corrupt = d.join("corrupt.qcow2");
    qcreate(&corrupt, "qcow2", "", "1M");
    poke(&corrupt, 72, &2u64.to_be_bytes());
    let e = open_rw(&corrupt).unwrap_err();
    assert!(matches!(e, ImageError::WriteRefused { .. }), "{e}");

    // A dirty lazy-refcounts image with a leak: opening for writes repairs it.
    let lazy = d.join("lazy.qcow2");
    qcreate(&lazy, "qcow2", "lazy_refcounts=on", "4M");
    qio(&lazy, "qcow2", &["write -P 0x10 0 1M"]);
    let rt = peek_u64(&lazy, 48);
    let rb = peek_u64(&lazy, rt);
    poke(&lazy, rb + 2 * 10, &7u16.to_be_bytes());
    poke(&lazy, 72, &1u64.to_be_bytes());
    // Same verdict as qemu (the raised refcount also contradicts the entry's copied flag).
    let verdict = vcheck(&lazy);
    assert_ne!(verdict, 0);
    assert_eq!(
        Some(verdict),
        run("qemu-img", &["check", s(&lazy)]).status.code()
    );
    let w = Box::new(open_rw(&lazy).unwrap());
    vireo_image::BlockSink::finish(w).unwrap();
    qcheck_clean(&lazy);
    assert_eq!(qinfo(&lazy)["dirty-flag"], false);

    // repair() fixes leaks and too-low refcounts, like `qemu-img check -r all`.
    let leaky = d.join("leaky.qcow2");
    qcreate(&leaky, "qcow2", "", "4M");
    qio(&leaky, "qcow2", &["write -P 0x10 0 1M"]);
    let rt = peek_u64(&leaky, 48);
    let rb = peek_u64(&leaky, rt);
    poke(&leaky, rb + 2 * 12, &3u16.to_be_bytes());
    poke(&leaky, rb + 2 * 3, &0u16.to_be_bytes());
    assert_eq!(vcheck(&leaky), 2);
    let report = vireo_image::qcow2::repair(&leaky, &Limits::default()).unwrap();
    assert_eq!(report.exit_code(), 0, "{report:?}");
    qcheck_clean(&leaky);
    qio(&leaky, "qcow2", &["read -P 0x10 0 1M"]);
}
