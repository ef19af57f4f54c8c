//! Golden files for the metadata Vireo writes: empty images of fixed parameters must be
//! byte-for-byte stable. The golden form lists every non-zero 16-byte line of the file as
//! `offset: hex`. Regenerate with `UPDATE_GOLDEN=1 cargo test -p vireo-image --test qcow2_golden`
//! (then review the diff: a change here changes every image Vireo creates).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use vireo_image::qcow2::{CompressionType, CreateOptions, Preallocation, Qcow2Sink};
use vireo_image::{BlockSink, Format};

fn dump(bytes: &[u8]) -> String {
    let mut out = format!("length: {}\n", bytes.len());
    for (i, line) in bytes.chunks(16).enumerate() {
        if line.iter().any(|b| *b != 0) {
            let hex: String = line.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(out, "{:08x}: {hex}", i * 16).unwrap();
        }
    }
    out
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        expected == actual,
        "{name} differs from its golden file; rerun with UPDATE_GOLDEN=1 and review"
    );
}

fn write_empty(path: &Path, size: u64, opts: CreateOptions) -> Vec<u8> {
    let sink = Box::new(Qcow2Sink::create(path, size, opts, None).unwrap());
    sink.finish().unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn empty_images_are_stable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(&str, u64, CreateOptions)> = vec![
        ("empty-v3-1g.txt", 1 << 30, CreateOptions::default()),
        (
            "empty-v2-1g.txt",
            1 << 30,
            CreateOptions {
                version: 2,
                ..CreateOptions::default()
            },
        ),
        (
            "overlay-v3-zstd-lazy.txt",
            10 << 20,
            CreateOptions {
                backing_file: Some("base.qcow2".into()),
                backing_format: Some(Format::Qcow2),
                compression_type: CompressionType::Zstd,
                lazy_refcounts: true,
                ..CreateOptions::default()
            },
        ),
        (
            "prealloc-metadata-4k.txt",
            1 << 20,
            CreateOptions {
                cluster_bits: 12,
                preallocation: Preallocation::Metadata,
                ..CreateOptions::default()
            },
        ),
    ];
    for (name, size, opts) in cases {
        let p = d.join(name).with_extension("qcow2");
        let bytes = write_empty(&p, size, opts);
        golden(name, &dump(&bytes));
    }
}

#[test]
fn ops_create_matches_the_sink() {
    // ops::create writes through a temp file and rename; the bytes are the sink's.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.qcow2");
    vireo_image::ops::create(&p, Format::Qcow2, 1 << 30, None).unwrap();
    let q = dir.path().join("b.qcow2");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        write_empty(&q, 1 << 30, CreateOptions::default())
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no temp files left"
    );
}
