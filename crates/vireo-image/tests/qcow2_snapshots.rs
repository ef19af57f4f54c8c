//! qcow2 internal snapshots and growth made by Vireo on closed images, checked with qemu-img
//! and qemu-io as the oracle: qemu lists and reads what Vireo writes, Vireo applies and
//! deletes what qemu writes, and `qemu-img check` stays clean (no errors, no leaks).

use std::path::{Path, PathBuf};

use vireo_image::ops::{self, ConvertOptions, ResizeError};
use vireo_image::qcow2::{
    snapshot_apply, snapshot_create, snapshot_delete, snapshot_list, SnapshotError,
};
use vireo_image::{Format, ImageError, Limits, PathPolicy};

mod native_common;
use native_common::*;

fn lim() -> Limits {
    Limits::default()
}

/// The guest content of the active layer, as qemu reads it (raw file).
fn qraw(img: &Path, out: &Path) -> PathBuf {
    ok("qemu-img", &["convert", "-O", "raw", s(img), s(out)]);
    out.to_path_buf()
}

/// The guest content of snapshot `name`, as qemu reads it (raw file).
fn qraw_snap(img: &Path, name: &str, out: &Path) -> PathBuf {
    let opt = format!("snapshot.name={name}");
    ok(
        "qemu-img",
        &["convert", "-l", &opt, "-O", "raw", s(img), s(out)],
    );
    out.to_path_buf()
}

/// Asserts the content of snapshot `name` equals `expected` through qemu and through Vireo's
/// own snapshot view (`ConvertOptions::source_snapshot`).
fn assert_snapshot_is(d: &Path, img: &Path, name: &str, expected: &Path) {
    let q = qraw_snap(img, name, &d.join(format!("q-{name}.raw")));
    assert_eq!(qcompare(expected, &q), 0, "qemu's view of {name}");
    let v = d.join(format!("v-{name}.qcow2"));
    let mut o = ConvertOptions::new(Format::Qcow2);
    o.source_snapshot = Some(name.to_string());
    convert(img, &v, &o);
    assert_eq!(qcompare(expected, &v), 0, "vireo's view of {name}");
    let _ = std::fs::remove_file(v);
}

fn qsnapshot_names(img: &Path) -> Vec<String> {
    let info = qinfo(img);
    info["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// An image with plain, compressed and zero clusters (and optionally a backing file).
fn build(d: &Path, name: &str, opts: &str, backing: bool) -> PathBuf {
    let img = d.join(name);
    if backing {
        let base = d.join(format!("{name}.base.raw"));
        std::fs::write(&base, vec![0x5au8; 3 << 20]).unwrap();
        let o = format!(
            "{opts}{}backing_file={},backing_fmt=raw",
            if opts.is_empty() { "" } else { "," },
            s(&base)
        );
        qcreate(&img, "qcow2", &o, "4M");
    } else {
        qcreate(&img, "qcow2", opts, "4M");
    }
    let mut cmds = vec!["write -P 0x11 0 256k", "write -c -P 0x22 1M 64k"];
    if !opts.contains("compat=0.10") {
        cmds.push("write -z 2M 64k");
    }
    cmds.push("write -P 0x44 3M 100k");
    qio(&img, "qcow2", &cmds);
    img
}

fn create_modify_compare(d: &Path, img: &Path) {
    let t0 = qraw(img, &d.join("t0.raw"));
    let e = snapshot_create(img, "s1", &lim()).unwrap();
    assert_eq!(
        (e.name.as_str(), e.disk_size, e.vm_state_size),
        ("s1", 4 << 20, 0)
    );
    assert_eq!(qsnapshot_names(img), ["s1"]);
    qcheck_clean(img);
    assert_eq!(vcheck(img), 0);
    // Change the active layer everywhere it has content: shared, compressed, zero, backing.
    qio(
        img,
        "qcow2",
        &[
            "write -P 0x99 4k 8k",
            "write -P 0x98 1M 4k",
            "write -P 0x97 2M 4k",
            "write -P 0x96 3584k 4k",
        ],
    );
    qcheck_clean(img);
    assert_ne!(qcompare(&t0, img), 0);
    assert_snapshot_is(d, img, "s1", &t0);
    let listed = snapshot_list(img, &lim()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "1");
}

#[test]
fn create_is_read_by_qemu_v3_v2_backing() {
    let dir = tempfile::tempdir().unwrap();
    for (name, opts, backing) in [
        ("v3.qcow2", "", false),
        ("v2.qcow2", "compat=0.10", false),
        ("bk.qcow2", "", true),
        ("small.qcow2", "cluster_size=4096,refcount_bits=8", false),
    ] {
        let d = dir.path().join(name.replace('.', "_"));
        std::fs::create_dir(&d).unwrap();
        let img = build(&d, name, opts, backing);
        create_modify_compare(&d, &img);
    }
    // One-bit refcounts cannot count a second reference: refused before anything is written.
    let one = dir.path().join("one-bit.qcow2");
    qcreate(&one, "qcow2", "refcount_bits=1", "1M");
    qio(&one, "qcow2", &["write -P 1 0 64k"]);
    let before = std::fs::read(&one).unwrap();
    let e = snapshot_create(&one, "x", &lim()).unwrap_err();
    assert!(
        matches!(
            &e,
            SnapshotError::Image {
                source: ImageError::LimitExceeded { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(std::fs::read(&one).unwrap(), before);
}

#[test]
fn tree_of_three_apply_delete_middle() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = build(d, "tree.qcow2", "", true);
    let c1 = qraw(&img, &d.join("c1.raw"));
    snapshot_create(&img, "s1", &lim()).unwrap();
    qio(
        &img,
        "qcow2",
        &["write -P 0x61 0 64k", "write -P 0x62 3M 4k"],
    );
    let c2 = qraw(&img, &d.join("c2.raw"));
    // The middle one is qemu's own.
    ok("qemu-img", &["snapshot", "-c", "s2", s(&img)]);
    qio(&img, "qcow2", &["write -P 0x63 64k 64k", "write -z 0 4k"]);
    let c3 = qraw(&img, &d.join("c3.raw"));
    let e3 = snapshot_create(&img, "s3", &lim()).unwrap();
    assert_eq!(e3.id, "3", "ids continue after qemu's");
    assert!(matches!(
        snapshot_create(&img, "s2", &lim()),
        Err(SnapshotError::AlreadyExists { .. })
    ));
    qio(&img, "qcow2", &["write -P 0x64 1M 64k"]);
    let c4 = qraw(&img, &d.join("c4.raw"));
    qcheck_clean(&img);

    // Apply qemu's snapshot, write, check.
    snapshot_apply(&img, "s2", &lim()).unwrap();
    qcheck_clean(&img);
    assert_eq!(qcompare(&c2, &img), 0);
    qio(&img, "qcow2", &["write -P 0x65 0 8k"]);
    qcheck_clean(&img);
    assert_eq!(vcheck(&img), 0);

    // Delete the middle: the others stay intact.
    snapshot_delete(&img, "s2", &lim()).unwrap();
    qcheck_clean(&img);
    assert_eq!(qsnapshot_names(&img), ["s1", "s3"]);
    assert_snapshot_is(d, &img, "s1", &c1);
    assert_snapshot_is(d, &img, "s3", &c3);

    // Apply Vireo's snapshots; qemu-img snapshot -a agrees on the content.
    snapshot_apply(&img, "s3", &lim()).unwrap();
    qcheck_clean(&img);
    assert_eq!(qcompare(&c3, &img), 0);
    snapshot_apply(&img, "s1", &lim()).unwrap();
    assert_eq!(qcompare(&c1, &img), 0);
    ok("qemu-img", &["snapshot", "-a", "s3", s(&img)]);
    assert_eq!(qcompare(&c3, &img), 0);
    let _ = c4;

    // Delete the rest (one by qemu, one by Vireo): no leaks remain.
    ok("qemu-img", &["snapshot", "-d", "s1", s(&img)]);
    snapshot_delete(&img, "s3", &lim()).unwrap();
    assert!(snapshot_list(&img, &lim()).unwrap().is_empty());
    qcheck_clean(&img);
    assert_eq!(qcompare(&c3, &img), 0);
    assert!(matches!(
        snapshot_delete(&img, "s3", &lim()),
        Err(SnapshotError::NotFound { .. })
    ));
    assert!(matches!(
        snapshot_apply(&img, "nope", &lim()),
        Err(SnapshotError::NotFound { .. })
    ));
}

#[test]
fn v2_apply_delete_and_vireo_snapshot_after_delete() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = build(d, "v2.qcow2", "compat=0.10", false);
    let c1 = qraw(&img, &d.join("c1.raw"));
    ok("qemu-img", &["snapshot", "-c", "a", s(&img)]);
    qio(&img, "qcow2", &["write -P 0x71 0 1M"]);
    snapshot_create(&img, "b", &lim()).unwrap();
    snapshot_apply(&img, "a", &lim()).unwrap();
    qcheck_clean(&img);
    assert_eq!(qcompare(&c1, &img), 0);
    snapshot_delete(&img, "a", &lim()).unwrap();
    snapshot_delete(&img, "b", &lim()).unwrap();
    qcheck_clean(&img);
    let size_before = std::fs::metadata(&img).unwrap().len();
    // Freed clusters are reused: a new snapshot does not grow the file.
    snapshot_create(&img, "c", &lim()).unwrap();
    qcheck_clean(&img);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), size_before);
    assert_eq!(qcompare(&c1, &img), 0);
}

#[test]
fn apply_restores_the_snapshot_disk_size() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = build(d, "sz.qcow2", "", false);
    let c1 = qraw(&img, &d.join("c1.raw"));
    snapshot_create(&img, "small", &lim()).unwrap();
    ops::resize(&img, 64 << 20, &lim(), &PathPolicy::default()).unwrap();
    qio(&img, "qcow2", &["write -P 0x31 60M 64k"]);
    snapshot_create(&img, "big", &lim()).unwrap();
    let listed = snapshot_list(&img, &lim()).unwrap();
    assert_eq!(listed[0].disk_size, 4 << 20);
    assert_eq!(listed[1].disk_size, 64 << 20);
    snapshot_apply(&img, "small", &lim()).unwrap();
    assert_eq!(qinfo(&img)["virtual-size"], 4 << 20);
    assert_eq!(qcompare(&c1, &img), 0);
    qcheck_clean(&img);
    snapshot_apply(&img, "big", &lim()).unwrap();
    assert_eq!(qinfo(&img)["virtual-size"], 64 << 20);
    qio(&img, "qcow2", &["read -P 0x31 60M 64k"]);
    qcheck_clean(&img);
}

#[test]
fn resize_grows_qcow2_with_l1_and_refcount_table_growth_and_raw() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 512-byte clusters and 64-bit refcounts: one refcount block covers 64 clusters and the
    // one-cluster refcount table 4096 clusters (2 MiB), which the 2 MiB L1 table that 8 GiB
    // need outgrows.
    let img = d.join("tiny-clusters.qcow2");
    qcreate(&img, "qcow2", "cluster_size=512,refcount_bits=64", "1M");
    qio(
        &img,
        "qcow2",
        &["write -P 0x21 0 300k", "write -c -P 0x22 900k 4k"],
    );
    ok("qemu-img", &["snapshot", "-c", "before", s(&img)]);
    let c0 = qraw(&img, &d.join("c0.raw"));
    let rt_before = peek_u64(&img, 48);
    ops::resize(&img, 8 << 30, &lim(), &PathPolicy::default()).unwrap();
    assert_ne!(peek_u64(&img, 48), rt_before, "refcount table moved");
    assert_eq!(qinfo(&img)["virtual-size"], 8u64 << 30);
    qcheck_clean(&img);
    assert_eq!(qcompare(&c0, &img), 0, "content preserved, new range zero");
    assert_eq!(snapshot_list(&img, &lim()).unwrap()[0].disk_size, 1 << 20);
    assert_snapshot_is(d, &img, "before", &c0);
    qio(
        &img,
        "qcow2",
        &["write -P 0x23 1000M 4k", "read -P 0x21 0 300k"],
    );
    qcheck_clean(&img);
    // Snapshots on the grown image still work.
    snapshot_create(&img, "after", &lim()).unwrap();
    qcheck_clean(&img);

    // Growth inside the current L1 table, from a size that ends inside a cluster whose
    // bytes past the end are not zero (zeroed in place before they become visible).
    let odd = d.join("odd.qcow2");
    qcreate(&odd, "qcow2", "", "1000448");
    qio(&odd, "qcow2", &["write -P 0x41 983040 17408"]);
    let map: serde_json::Value =
        serde_json::from_str(&ok("qemu-img", &["map", "--output", "json", s(&odd)])).unwrap();
    let host = map
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["start"] == 983040)
        .and_then(|e| e["offset"].as_u64())
        .unwrap();
    poke(&odd, host + 17408, &[0xEE; 512]);
    let e = ops::resize(&odd, 3_000_000, &lim(), &PathPolicy::default()).unwrap_err();
    assert!(e.to_string().contains("resizing"), "{e}");
    ops::resize(&odd, 3 << 20, &lim(), &PathPolicy::default()).unwrap();
    qcheck_clean(&odd);
    assert_eq!(qinfo(&odd)["virtual-size"], 3 << 20);
    qio(
        &odd,
        "qcow2",
        &["read -P 0x41 983040 17408", "read -P 0 1000448 2145280"],
    );

    // Shrink is refused and changes nothing; equal size is a no-op.
    let e = ops::resize(&img, 1 << 20, &lim(), &PathPolicy::default()).unwrap_err();
    assert!(matches!(e, ResizeError::Shrink { .. }), "{e}");
    ops::resize(&img, 8 << 30, &lim(), &PathPolicy::default()).unwrap();
    assert_eq!(qinfo(&img)["virtual-size"], 8u64 << 30);

    // v2 image.
    let v2 = d.join("v2.qcow2");
    qcreate(&v2, "qcow2", "compat=0.10", "1G");
    qio(&v2, "qcow2", &["write -P 0x51 0 64k"]);
    ops::resize(&v2, 10 << 30, &lim(), &PathPolicy::default()).unwrap();
    qcheck_clean(&v2);
    assert_eq!(qinfo(&v2)["virtual-size"], 10u64 << 30);
    qio(&v2, "qcow2", &["read -P 0x51 0 64k"]);

    // Raw.
    let raw = d.join("disk.raw");
    std::fs::write(&raw, vec![7u8; 4096]).unwrap();
    ops::resize(&raw, 1 << 20, &lim(), &PathPolicy::default()).unwrap();
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 1 << 20);
    assert_eq!(
        &std::fs::read(&raw).unwrap()[..4097],
        &[[7u8; 4096].as_slice(), &[0]].concat()[..]
    );
    assert!(matches!(
        ops::resize(&raw, 10, &lim(), &PathPolicy::default()),
        Err(ResizeError::Shrink { .. })
    ));

    // An overlay whose backing file is larger would expose backing data: refused.
    let base = d.join("base.raw");
    std::fs::write(&base, vec![1u8; 2 << 20]).unwrap();
    let top = d.join("top.qcow2");
    qcreate(&top, "qcow2", "backing_file=base.raw,backing_fmt=raw", "1M");
    let e = ops::resize(&top, 4 << 20, &lim(), &PathPolicy::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ResizeError::Image {
                source: ImageError::WriteRefused { .. },
                ..
            }
        ),
        "{e}"
    );
    qcheck_clean(&top);
}

#[test]
fn refusals_and_hostile_tables() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fresh = |name: &str| {
        let p = d.join(name);
        qcreate(&p, "qcow2", "", "4M");
        qio(&p, "qcow2", &["write -P 0x11 0 128k"]);
        ok("qemu-img", &["snapshot", "-c", "s", s(&p)]);
        p
    };
    // The four editing operations must fail; the read-only ones must merely not panic.
    let editing_ops = |p: &Path| -> Vec<Result<(), String>> {
        let _ = snapshot_list(p, &lim());
        let _ = ops::open_source(p, Some("s"), &lim(), &PathPolicy::default());
        vec![
            snapshot_create(p, "n", &lim())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            snapshot_apply(p, "s", &lim()).map_err(|e| e.to_string()),
            snapshot_delete(p, "s", &lim()).map_err(|e| e.to_string()),
            ops::resize(p, 8 << 20, &lim(), &PathPolicy::default()).map_err(|e| e.to_string()),
        ]
    };

    // Invalid names, dirty and corrupt images.
    let p = fresh("names.qcow2");
    for bad in ["", "a\0b"] {
        assert!(matches!(
            snapshot_create(&p, bad, &lim()),
            Err(SnapshotError::InvalidName { .. })
        ));
    }
    let dirty = fresh("dirty.qcow2");
    poke(&dirty, 72, &1u64.to_be_bytes());
    let e = snapshot_create(&dirty, "x", &lim()).unwrap_err();
    assert!(e.to_string().contains("snapshot create"), "{e}");
    assert!(
        std::error::Error::source(&e)
            .unwrap()
            .to_string()
            .contains("dirty"),
        "{e:?}"
    );
    vireo_image::qcow2::repair(&dirty, &lim()).unwrap();
    snapshot_create(&dirty, "x", &lim()).unwrap();
    qcheck_clean(&dirty);

    // Each hostile image: every editing operation returns an error, nothing panics, and the
    // file is unchanged.
    let l1_off = peek_u64(&fresh("probe.qcow2"), 40);
    let rt_off = peek_u64(&fresh("probe2.qcow2"), 48);
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "l1-past-eof",
            Box::new(|p| poke(p, 40, &(1u64 << 40).to_be_bytes())),
        ),
        (
            "huge-nb-snapshots",
            Box::new(|p| poke(p, 60, &u32::MAX.to_be_bytes())),
        ),
        (
            "l1-over-reftable",
            Box::new(move |p| poke(p, 40, &rt_off.to_be_bytes())),
        ),
        (
            "snapshot-table-past-eof",
            Box::new(|p| poke(p, 64, &(1u64 << 40).to_be_bytes())),
        ),
        (
            "refcount-too-low",
            Box::new(move |p| {
                let rb = peek_u64(p, rt_off);
                poke(p, rb + 2 * (l1_off / 65536), &0u16.to_be_bytes());
            }),
        ),
    ];
    for (name, damage) in cases {
        let p = fresh(&format!("{name}.qcow2"));
        damage(&p);
        let before = std::fs::read(&p).unwrap();
        let results = editing_ops(&p);
        assert!(results.iter().all(Result::is_err), "{name}: {results:?}");
        assert_eq!(std::fs::read(&p).unwrap(), before, "{name}: file changed");
    }
}

#[test]
fn snapshot_with_vm_state_from_real_qemu() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("vm.qcow2");
    qcreate(&img, "qcow2", "", "16M");
    qio(&img, "qcow2", &["write -P 0x11 0 1M"]);
    let drive = format!("file={},format=qcow2,if=none,id=d0", s(&img));
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-nodefaults",
            "-machine",
            "q35",
            "-display",
            "none",
            "-m",
            "32",
            "-S",
            "-qmp",
            "stdio",
            "-drive",
            &drive,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let mut stdin = qemu.stdin.take().unwrap();
    let mut lines = BufReader::new(qemu.stdout.take().unwrap()).lines();
    let mut qmp = |cmd: &str| -> serde_json::Value {
        writeln!(stdin, "{cmd}").unwrap();
        loop {
            let line = lines.next().expect("qmp reply").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v.get("return").is_some() || v.get("error").is_some() {
                return v;
            }
        }
    };
    lines_greeting(&mut qmp);
    // While QEMU has the image open, Vireo refuses to edit it (qemu's image locks).
    let e = snapshot_create(&img, "offline", &lim()).unwrap_err();
    assert!(
        matches!(
            &e,
            SnapshotError::Image {
                source: ImageError::InUse { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let e = ops::resize(&img, 32 << 20, &lim(), &PathPolicy::default()).unwrap_err();
    assert!(
        matches!(
            &e,
            ResizeError::Image {
                source: ImageError::InUse { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let r = qmp(r#"{"execute":"human-monitor-command","arguments":{"command-line":"savevm vm1"}}"#);
    assert_eq!(r["return"], "", "savevm: {r}");
    qmp(r#"{"execute":"quit"}"#);
    drop(stdin);
    assert!(qemu.wait().unwrap().success());

    let listed = snapshot_list(&img, &lim()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "vm1");
    assert!(listed[0].vm_state_size > 0, "{listed:?}");
    assert_eq!(listed[0].disk_size, 16 << 20);
    qcheck_clean(&img);
    // The active table still maps the (discarded) VM state range: growth exposes zeros.
    let c1 = qraw(&img, &d.join("c1.raw"));
    ops::resize(&img, 64 << 20, &lim(), &PathPolicy::default()).unwrap();
    qio(
        &img,
        "qcow2",
        &["read -P 0 16M 48M", "write -P 0x12 20M 64k"],
    );
    qcheck_clean(&img);
    // Applying it restores the 16 MiB disk without the VM state.
    snapshot_apply(&img, "vm1", &lim()).unwrap();
    qcheck_clean(&img);
    assert_eq!(qinfo(&img)["virtual-size"], 16 << 20);
    assert_eq!(qcompare(&c1, &img), 0);
    let before = qinfo(&img)["actual-size"].as_u64().unwrap();
    snapshot_delete(&img, "vm1", &lim()).unwrap();
    qcheck_clean(&img);
    // The VM state's clusters are free again: a new snapshot and data reuse them.
    let rep = vireo_image::qcow2::check(&img, &lim()).unwrap();
    assert_eq!(rep.leaks, 0);
    assert!(before > 0);
    qio(&img, "qcow2", &["read -P 0x11 0 1M"]);
}

/// Consumes the QMP greeting and negotiates capabilities.
fn lines_greeting(qmp: &mut dyn FnMut(&str) -> serde_json::Value) {
    let r = qmp(r#"{"execute":"qmp_capabilities"}"#);
    assert!(r.get("return").is_some(), "{r}");
}
