//! VHDX on hostile bytes: headers, log replay, region table, metadata, BAT and sector
//! bitmaps. The input is placed at offset 64 KiB of a file of at least 4 MiB that starts with
//! the file identifier; when the last input byte is odd the CRC-32C of both headers and both
//! region tables are re-sealed, so mutations also reach the log, metadata and BAT.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_image::{Limits, PathPolicy};

fn reseal(b: &mut [u8], at: usize, len: usize) {
    if at + len <= b.len() {
        b[at + 4..at + 8].fill(0);
        let c = crc32c::crc32c(&b[at..at + len]);
        b[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = std::env::temp_dir().canonicalize() else {
        return;
    };
    let path = dir.join(format!("vireo-fuzz-{}.vhdx", std::process::id()));
    let mut file = vec![0u8; 64 << 10];
    file[..8].copy_from_slice(b"vhdxfile");
    file.extend_from_slice(&data[..data.len().min(4 << 20)]);
    if file.len() < 4 << 20 {
        file.resize(4 << 20, 0);
    }
    if data.last().is_some_and(|b| b & 1 == 1) {
        for (at, len) in [
            (64 << 10, 4096),
            (128 << 10, 4096),
            (192 << 10, 64 << 10),
            (256 << 10, 64 << 10),
        ] {
            reseal(&mut file, at, len);
        }
    }
    if std::fs::write(&path, &file).is_err() {
        return;
    }
    let limits = Limits {
        max_table_bytes: 4 << 20,
        max_virtual_size: 1 << 30,
        ..Limits::default()
    };
    vireo_image::vhdx::exercise(&path, &limits, &PathPolicy::default());
    let _ = std::fs::remove_file(&path);
});
