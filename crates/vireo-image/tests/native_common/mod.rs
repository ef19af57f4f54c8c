//! qemu-img oracle helpers shared by the qcow2/raw engine tests.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use vireo_image::ops::{self, CompareOutcome, ConvertOptions};
use vireo_image::{Format, Limits, PathPolicy};

pub fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    out
}

pub fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `qemu-img create` with options.
pub fn qcreate(path: &Path, fmt: &str, opts: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([s(path), size]);
    ok("qemu-img", &args);
}

/// Runs qemu-io commands on an image.
pub fn qio(path: &Path, fmt: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(s(path));
    ok("qemu-io", &args);
}

pub fn qcompare(a: &Path, b: &Path) -> i32 {
    run("qemu-img", &["compare", s(a), s(b)])
        .status
        .code()
        .unwrap_or(-1)
}

pub fn qcheck_clean(path: &Path) {
    let out = run("qemu-img", &["check", s(path)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "qemu-img check {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn qinfo(path: &Path) -> serde_json::Value {
    serde_json::from_str(&ok("qemu-img", &["info", "--output", "json", s(path)])).unwrap()
}

pub fn never() -> AtomicBool {
    AtomicBool::new(false)
}

pub fn convert(src: &Path, dst: &Path, opts: &ConvertOptions) {
    ops::convert_with(src, dst, opts, &mut |_| {}, &never())
        .unwrap_or_else(|e| panic!("convert {}: {e}", src.display()));
}

pub fn vcheck(path: &Path) -> i32 {
    ops::check(path, &Limits::default(), &PathPolicy::default())
        .unwrap()
        .exit_code()
}

/// Converts `src` to every output flavour Vireo writes and checks each with qemu-img.
pub fn round_trip_all(dir: &Path, src: &Path) {
    let variants: Vec<(&str, ConvertOptions)> = vec![
        ("v3.qcow2", ConvertOptions::new(Format::Qcow2)),
        ("v2.qcow2", {
            let mut o = ConvertOptions::new(Format::Qcow2);
            o.spec.qcow2.version = 2;
            o
        }),
        ("c.qcow2", {
            let mut o = ConvertOptions::new(Format::Qcow2);
            o.compress = true;
            o
        }),
        ("small.qcow2", {
            let mut o = ConvertOptions::new(Format::Qcow2);
            o.spec.qcow2.cluster_bits = 12;
            o
        }),
        ("out.raw", ConvertOptions::new(Format::Raw)),
    ];
    let stem = src.file_name().unwrap().to_string_lossy().into_owned();
    for (suffix, opts) in variants {
        let dst = dir.join(format!("{stem}.{suffix}"));
        convert(src, &dst, &opts);
        assert_eq!(
            qcompare(src, &dst),
            0,
            "{} vs {}",
            src.display(),
            dst.display()
        );
        if opts.format == Format::Qcow2 {
            qcheck_clean(&dst);
            assert_eq!(vcheck(&dst), 0, "vireo check of {}", dst.display());
        }
        // Our own reader agrees with qemu on our own output.
        let cancel = never();
        let o = ops::compare(
            src,
            &dst,
            &Limits::default(),
            &PathPolicy::default(),
            &cancel,
        )
        .unwrap();
        assert_eq!(o, CompareOutcome::Identical, "{}", dst.display());
    }
}

/// Writes a big-endian u64/u32 into a file at `off`.
pub fn poke(path: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

pub fn peek_u64(path: &Path, off: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).unwrap();
    u64::from_be_bytes(b)
}
