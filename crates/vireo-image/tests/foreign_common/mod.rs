//! Shared helpers for the foreign-format tests: `qemu-img`/`qemu-io` as the oracle, and a
//! comparison of a `BlockSource` against `qemu-img convert -O raw` that checks every byte of
//! the ranges qemu's raw output holds data for and samples the holes (zeros) it left.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vireo_image::{BlockSource, ExtentKind};

/// Runs a command and returns stdout; panics with stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns (success, stdout+stderr).
pub fn try_run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

/// `qemu-img convert -f raw -O FMT -o OPTS RAW IMG`: an image of format `fmt` made by qemu from
/// a raw file.
pub fn qemu_img_from_raw(raw: &Path, fmt: &str, opts: &str, img: &Path) {
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        fmt,
        "-o",
        opts,
        s(raw),
        s(img),
    ]);
}

/// `qemu-img create -q -f FMT -o OPTS IMG SIZE`.
pub fn qemu_img_create(img: &Path, fmt: &str, opts: &str, size: &str) {
    qemu_img(&["create", "-q", "-f", fmt, "-o", opts, s(img), size]);
}

/// The guest content of `img` (format `fmt`) as qemu reads it, via a temporary raw file in
/// `dir`.
pub fn raw_of(img: &Path, fmt: &str, dir: &Path) -> Vec<u8> {
    let raw = dir.join("tmp-raw-of");
    qemu_img(&["convert", "-f", fmt, "-O", "raw", s(img), s(&raw)]);
    let v = std::fs::read(&raw).unwrap();
    std::fs::remove_file(raw).unwrap();
    v
}

/// `qemu-io -f FMT -c CMD… PATH`.
pub fn qemu_io(fmt: &str, path: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let p = path.to_str().unwrap();
    args.push(p);
    let out = run("qemu-io", &args);
    assert!(!out.contains("failed"), "qemu-io {cmds:?}: {out}");
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A raw file of `size` bytes with: random data at the start, a repeated pattern in the
/// middle, zeros elsewhere, and random bytes in the last partial sector region.
pub fn write_pattern_raw(path: &Path, size: u64, seed: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    if size == 0 {
        return;
    }
    let head = (size.min(300_000)) as usize;
    f.write_all_at(&pseudo_random(head, seed), 0).unwrap();
    if size > 1 << 20 {
        let rep: Vec<u8> = (0..(size / 4).min(200_000))
            .map(|i| (i % 251) as u8)
            .collect();
        f.write_all_at(&rep, size / 2).unwrap();
        let tail = (size.min(70_000)) as usize;
        f.write_all_at(&pseudo_random(tail, seed ^ 0x55), size - tail as u64)
            .unwrap();
    }
}

/// Data and hole ranges of a file, from `SEEK_DATA`/`SEEK_HOLE` (qemu-img writes zeros of a
/// raw output file as holes, so holes are ranges qemu read as zero).
fn data_ranges(file: &File, size: u64) -> Vec<(u64, u64, bool)> {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on a descriptor owned by `file`; positioned reads ignore the offset.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        let data = if data < 0 {
            size
        } else {
            (data as u64).min(size)
        };
        if data > pos {
            out.push((pos, data - pos, false));
        }
        if data >= size {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        out.push((data, hole - data, true));
        pos = hole;
    }
    out
}

/// Compares every guest byte `src` returns with what qemu-img reads from `image`: all bytes
/// of the ranges qemu's raw output holds data for, and the edges of the ranges it left as
/// holes (zeros).
pub fn assert_matches_qemu(src: &dyn BlockSource, image: &Path, fmt: &str, scratch: &Path) {
    let raw = scratch.join("oracle.raw");
    qemu_img(&["convert", "-f", fmt, "-O", "raw", s(image), s(&raw)]);
    let raw_file = File::open(&raw).unwrap();
    let size = raw_file.metadata().unwrap().len();
    assert_eq!(
        src.virtual_size(),
        size,
        "virtual size of {}",
        image.display()
    );
    let chunk = 1 << 20;
    let mut ours = vec![0u8; chunk];
    let mut theirs = vec![0u8; chunk];
    for (start, length, data) in data_ranges(&raw_file, size) {
        let ranges: Vec<(u64, u64)> = if !data {
            let edge = length.min(64 << 10);
            vec![(start, edge), (start + length - edge, edge)]
        } else {
            vec![(start, length)]
        };
        for (start, len) in ranges {
            let mut pos = start;
            while pos < start + len {
                let n = ((start + len - pos) as usize).min(chunk);
                src.read_at(&mut ours[..n], pos)
                    .unwrap_or_else(|err| panic!("read {n} at {pos}: {err}"));
                raw_file.read_exact_at(&mut theirs[..n], pos).unwrap();
                if ours[..n] != theirs[..n] {
                    let i = ours[..n]
                        .iter()
                        .zip(&theirs[..n])
                        .position(|(a, b)| a != b)
                        .unwrap();
                    panic!(
                        "{}: byte {} differs (ours {:#x}, qemu {:#x})",
                        image.display(),
                        pos + i as u64,
                        ours[i],
                        theirs[i]
                    );
                }
                pos += n as u64;
            }
        }
    }
    // Every range we claim reads as zero must be zero in qemu's view too (sampled).
    let mut pos = 0;
    while pos < size {
        let ext = src.extent_at(pos).unwrap();
        assert_eq!(ext.offset, pos);
        assert!(
            ext.length >= 1 && pos + ext.length <= size,
            "extent {ext:?}"
        );
        if ext.kind == ExtentKind::Zero {
            let n = ext.length.min(1 << 20) as usize;
            raw_file.read_exact_at(&mut theirs[..n], pos).unwrap();
            assert!(
                theirs[..n].iter().all(|&b| b == 0),
                "we claim zero at {pos} but qemu has data"
            );
        }
        pos += ext.length;
    }
    std::fs::remove_file(raw).unwrap();
}

/// A fresh scratch directory under the target dir (removed on drop).
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Applies `mutations` pseudo-random single-byte changes to copies of `original` and runs
/// `check` on each copy; `check` must not panic (errors are fine).
pub fn mutate_and_check(original: &Path, rounds: usize, seed: u64, check: impl Fn(&Path)) {
    let bytes = std::fs::read(original).unwrap();
    let dir = original.parent().unwrap();
    let target = dir.join(format!(
        "mutant-{}",
        original.file_name().unwrap().to_string_lossy()
    ));
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..rounds {
        let mut m = bytes.clone();
        let edits = 1 + next() % 4;
        for _ in 0..edits {
            // Favour the metadata at the start of the file, where parsers look.
            let window = if next() % 4 == 0 {
                m.len()
            } else {
                m.len().min(8192)
            };
            if window == 0 {
                break;
            }
            let i = (next() % window as u64) as usize;
            m[i] = match next() % 4 {
                0 => 0,
                1 => 0xff,
                _ => next() as u8,
            };
        }
        if next() % 8 == 0 {
            let cut = (next() % m.len().max(1) as u64) as usize;
            m.truncate(cut);
        }
        // Unlink first: truncating a file with dirty pages makes ext4 flush it (auto_da_alloc).
        let _ = std::fs::remove_file(&target);
        std::fs::write(&target, &m).unwrap();
        check(&target);
    }
}

/// Reads the whole guest view in 1 MiB chunks and in a few odd-sized spans; errors are
/// acceptable (corrupt input), panics are not.
pub fn exercise(src: &dyn BlockSource) {
    let size = src.virtual_size().min(4 << 20);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size {
        let n = ((size - pos) as usize).min(buf.len());
        if src.read_at(&mut buf[..n], pos).is_err() {
            break;
        }
        pos += n as u64;
    }
    for (off, len) in [
        (1u64, 1000usize),
        (511, 70_000),
        (size.saturating_sub(3), 3),
    ] {
        if off + len as u64 <= src.virtual_size() {
            let _ = src.read_at(&mut buf[..len], off);
        }
    }
    let mut pos = 0;
    for _ in 0..64 {
        if pos >= src.virtual_size() {
            break;
        }
        match src.extent_at(pos) {
            Ok(e) => pos += e.length.max(1),
            Err(_) => break,
        }
    }
}
