//! VHDX on hostile bytes: headers, log replay, region table, metadata, BAT and sector
//! bitmaps. The input is placed at offset 64 KiB of a 4 MiB file that starts with the file
//! identifier, so the fuzzer spends its effort on the structures rather than the signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_image::{Limits, PathPolicy};

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
