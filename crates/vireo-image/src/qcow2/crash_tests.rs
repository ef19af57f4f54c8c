//! Crash tests of the snapshot and resize operations: each operation is run once per write
//! it makes, losing every write from that point on (power loss), and with the writes since
//! the last sync kept in full, dropped in full, or every other one dropped (the disk may
//! persist unsynced writes in any order). After every such crash the image must be usable: no structural error, no
//! refcount below its references (only leaks and stale copied flags are allowed), the
//! active disk and every listed snapshot hold either the old or the new content, and after
//! `repair` any Vireo operation leaves it fully clean.

use std::collections::BTreeMap;
use std::path::Path;

use super::meta::crash;
use super::{check, open_image, open_rw, repair, snapshot_list, CreateOptions, Qcow2Sink};
use crate::device::{BlockSink, BlockSource, Limits, PathPolicy};

fn lim() -> Limits {
    Limits::default()
}

fn read_all(src: &dyn BlockSource) -> Vec<u8> {
    let mut v = vec![0u8; src.virtual_size() as usize];
    src.read_at(&mut v, 0).unwrap();
    v
}

fn active(p: &Path) -> Vec<u8> {
    read_all(&open_image(p, &lim(), &PathPolicy::default()).unwrap())
}

/// Snapshot name → content.
fn snapshots(p: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot_list(p, &lim())
        .unwrap()
        .into_iter()
        .map(|e| {
            let v = super::open_snapshot(p, &e.name, &lim(), &PathPolicy::default()).unwrap();
            (e.name, read_all(v.as_ref()))
        })
        .collect()
}

/// A version 3 image with 512-byte clusters (metadata spans many clusters and refcount
/// blocks), compressed and plain data, and one snapshot "s1" taken before more writes.
fn base(p: &Path, cluster_bits: u32) {
    let opts = CreateOptions {
        cluster_bits,
        compress: true,
        ..CreateOptions::default()
    };
    let mut sink = Box::new(Qcow2Sink::create(p, 192 << 10, opts, None).unwrap());
    let enc = sink.unit_encoder().unwrap();
    let unit = 1usize << cluster_bits;
    let pattern: Vec<u8> = (0..unit).map(|i| (i % 13) as u8 + 1).collect();
    sink.write_encoded(unit as u64, enc.encode(&pattern).unwrap().unwrap())
        .unwrap();
    sink.write_at(&vec![0xAB; 40_000], 10_000).unwrap();
    sink.finish().unwrap();
    super::snapshot_create(p, "s1", &lim()).unwrap();
    let mut w = Box::new(open_rw(p, &lim(), &PathPolicy::default()).unwrap());
    w.write_at(&vec![0xCD; 30_000], 20_000).unwrap();
    w.write_at(&[0xEF; 700], (192 << 10) - 700).unwrap();
    w.finish().unwrap();
    assert_eq!(check(p, &lim()).unwrap().exit_code(), 0);
}

/// The image is usable after a crash: only leaks and copied-flag mismatches.
fn assert_survivable(p: &Path, at: &str) {
    let r = check(p, &lim()).unwrap();
    let copied = r
        .messages
        .iter()
        .filter(|m| m.starts_with("ERROR OFLAG_COPIED"))
        .count() as u64;
    assert_eq!(r.check_errors, 0, "{at}: {r:?}");
    assert_eq!(r.corruptions, copied, "{at}: {r:?}");
    assert!(r.messages.len() < 200, "messages complete");
}

type Op = fn(&Path);

fn run_crashes(name: &str, cluster_bits: u32, op: Op) {
    let dir = tempfile::tempdir().unwrap();
    let orig = dir.path().join("orig.qcow2");
    base(&orig, cluster_bits);
    let work = dir.path().join("work.qcow2");
    // The outcome without a crash.
    std::fs::copy(&orig, &work).unwrap();
    op(&work);
    assert_eq!(check(&work, &lim()).unwrap().exit_code(), 0, "{name}");
    let (new_active, new_snaps) = (active(&work), snapshots(&work));
    let (old_active, old_snaps) = (active(&orig), snapshots(&orig));
    // Which unsynced writes survive the crash: all, none, every other one.
    let patterns: [fn(usize) -> bool; 3] = [|_| true, |_| false, |i| i % 2 == 0];
    'points: for k in 0.. {
        for (p, keep) in patterns.iter().enumerate() {
            std::fs::copy(&orig, &work).unwrap();
            crash::arm(Some(k));
            op(&work);
            let crashed = crash::crashed();
            if crashed {
                crash::undo_unsynced(&work, keep);
            }
            crash::arm(None);
            if !crashed {
                assert!(k >= 2, "{name}: only {k} writes");
                break 'points;
            }
            let at = format!("{name}: crash after {k} writes, pattern {p}");
            assert_survivable(&work, &at);
            let a = active(&work);
            assert!(a == old_active || a == new_active, "{at}: active content");
            let snaps = snapshots(&work);
            assert!(
                snaps == old_snaps || snaps == new_snaps,
                "{at}: snapshots {:?}",
                snaps.keys().collect::<Vec<_>>()
            );
            repair(&work, &lim()).unwrap();
            super::snapshot_create(&work, "after-crash", &lim()).unwrap();
            let r = check(&work, &lim()).unwrap();
            assert_eq!(r.exit_code(), 0, "{at}: after repair: {r:?}");
        }
    }
}

/// Operations run under fault injection ignore their result: a lost write may make a later
/// read of the operation itself fail, which is part of the simulated crash.
fn create(p: &Path) {
    let _ = super::snapshot_create(p, "s2", &lim());
}

fn delete(p: &Path) {
    let _ = super::snapshot_delete(p, "s1", &lim());
}

fn apply(p: &Path) {
    let _ = super::snapshot_apply(p, "s1", &lim());
}

fn grow(p: &Path) {
    let _ = super::resize(p, 4 << 20, &lim(), &PathPolicy::default());
}

#[test]
fn create_survives_crashes() {
    run_crashes("create", 9, create);
    run_crashes("create 64k", 16, create);
}

#[test]
fn delete_survives_crashes() {
    run_crashes("delete", 9, delete);
    run_crashes("delete 64k", 16, delete);
}

#[test]
fn apply_survives_crashes() {
    run_crashes("apply", 9, apply);
}

#[test]
fn grow_survives_crashes() {
    run_crashes("grow", 9, grow);
}
