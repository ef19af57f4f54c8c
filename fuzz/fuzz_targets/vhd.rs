//! VHD (fixed, dynamic, differencing) on hostile bytes: footer and dynamic header checksums,
//! BAT, sector bitmaps, parent locators. Nothing may panic or allocate beyond the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_image::{Limits, PathPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = std::env::temp_dir().canonicalize() else {
        return;
    };
    let path = dir.join(format!("vireo-fuzz-{}.vhd", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let limits = Limits {
        max_table_bytes: 1 << 20,
        max_virtual_size: 1 << 30,
        ..Limits::default()
    };
    vireo_image::vhd::exercise(&path, &limits, &PathPolicy::default());
    let _ = std::fs::remove_file(&path);
});
