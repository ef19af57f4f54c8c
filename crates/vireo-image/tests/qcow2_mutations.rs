//! Random mutations of valid qcow2 images fed to every read path: open, extent walk, reads and
//! the refcount checker must return (Ok or a clean error) without panicking. Complements the
//! `qcow2_image` fuzz target with a short run in the normal test suite.

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use vireo_image::qcow2::{CompressionType, CreateOptions, Qcow2Sink};
use vireo_image::{BlockSink, Limits, PathPolicy};

/// Builds a small image with plain, compressed and partially written clusters, 512-byte
/// clusters so that metadata spans many clusters.
fn build(path: &Path, version: u32, compression_type: CompressionType) {
    let opts = CreateOptions {
        version,
        cluster_bits: 9,
        compress: true,
        compression_type,
        ..CreateOptions::default()
    };
    let size = 256 << 10;
    let mut sink = Box::new(Qcow2Sink::create(path, size, opts, None).unwrap());
    let enc = sink.unit_encoder().unwrap();
    let pattern: Vec<u8> = (0..512u32).map(|i| (i % 7) as u8 + 1).collect();
    for cluster in [3u64, 4, 100, 300] {
        let encoded = enc.encode(&pattern).unwrap().unwrap();
        sink.write_encoded(cluster * 512, encoded).unwrap();
    }
    sink.write_at(&[0xAB; 4096], 8192).unwrap();
    sink.write_at(&[0xCD; 100], 200_000).unwrap();
    sink.write_at(&[0xEF; 512], (256 << 10) - 512).unwrap();
    sink.finish().unwrap();
}

fn bases() -> &'static Vec<Vec<u8>> {
    static BASES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BASES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        for (v, c) in [
            (3, CompressionType::Zlib),
            (2, CompressionType::Zlib),
            (3, CompressionType::Zstd),
        ] {
            let p = dir.path().join(format!("base-{v}-{c:?}.qcow2"));
            build(&p, v, c);
            // The unmutated bases are valid and clean.
            let report = vireo_image::qcow2::check(&p, &Limits::default()).unwrap();
            assert_eq!(report.exit_code(), 0, "{report:?}");
            out.push(std::fs::read(&p).unwrap());
        }
        out
    })
}

fn limits() -> Limits {
    Limits {
        max_table_bytes: 1 << 20,
        max_virtual_size: 1 << 30,
        ..Limits::default()
    }
}

/// Images with two internal snapshots (one Vireo's, one taken after more writes), built from
/// the plain bases: the starting points of the edit mutations.
fn snapshot_bases() -> &'static Vec<Vec<u8>> {
    static BASES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BASES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let l = Limits::default();
        let mut out = Vec::new();
        for (i, bytes) in bases().iter().enumerate() {
            let p = dir.path().join(format!("snap-{i}.qcow2"));
            std::fs::write(&p, bytes).unwrap();
            vireo_image::qcow2::snapshot_create(&p, "a", &l).unwrap();
            vireo_image::ops::resize(&p, 320 << 10, &l, &PathPolicy::default()).unwrap();
            vireo_image::qcow2::snapshot_create(&p, "b", &l).unwrap();
            let report = vireo_image::qcow2::check(&p, &l).unwrap();
            assert_eq!(report.exit_code(), 0, "{report:?}");
            out.push(std::fs::read(&p).unwrap());
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    #[test]
    fn mutated_images_survive_edits(
        which in 0usize..3,
        edits in proptest::collection::vec((0usize..8192, any::<u8>()), 1..16),
        far_edits in proptest::collection::vec((0usize..1 << 20, any::<u8>()), 0..8),
    ) {
        let mut img = snapshot_bases()[which].clone();
        for (off, b) in edits.into_iter().chain(far_edits) {
            let len = img.len();
            img[off % len] = b;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.qcow2");
        std::fs::write(&p, &img).unwrap();
        vireo_image::qcow2::exercise_edits(&p, &limits(), &PathPolicy::default());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn mutated_images_never_panic(
        which in 0usize..3,
        // Mutations biased towards the header and the first metadata clusters.
        edits in proptest::collection::vec((0usize..4096, any::<u8>()), 1..24),
        far_edits in proptest::collection::vec((0usize..1 << 20, any::<u8>()), 0..8),
        truncate in proptest::option::weighted(0.1, 0usize..8192),
    ) {
        let mut img = bases()[which].clone();
        for (off, b) in edits.into_iter().chain(far_edits) {
            let len = img.len();
            img[off % len] = b;
        }
        if let Some(t) = truncate {
            img.truncate(t);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.qcow2");
        std::fs::write(&p, &img).unwrap();
        vireo_image::qcow2::exercise(&p, &limits(), &PathPolicy::default());
    }

    #[test]
    fn header_word_overwrites_never_panic(
        which in 0usize..3,
        field in 0usize..14,
        value in any::<u64>(),
    ) {
        // Overwrite whole header fields with arbitrary values (sizes, offsets, counts).
        const FIELDS: [(usize, usize); 14] = [
            (4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (36, 4), (40, 8),
            (48, 8), (56, 4), (60, 4), (64, 8), (72, 8), (96, 4), (100, 4),
        ];
        let mut img = bases()[which].clone();
        let (at, len) = FIELDS[field];
        img[at..at + len].copy_from_slice(&value.to_be_bytes()[8 - len..]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.qcow2");
        std::fs::write(&p, &img).unwrap();
        vireo_image::qcow2::exercise(&p, &limits(), &PathPolicy::default());
    }
}
