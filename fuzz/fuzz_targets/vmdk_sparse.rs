//! Hosted sparse / stream-optimized VMDK extents on hostile bytes: header, footer, grain
//! directory and tables, compressed grains, embedded descriptor. Nothing may panic or
//! allocate beyond the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_image::{Limits, PathPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = std::env::temp_dir().canonicalize() else {
        return;
    };
    let path = dir.join(format!("vireo-fuzz-{}.vmdk", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    vireo_image::vmdk::exercise(&path, &limits(), &PathPolicy::default());
    let _ = std::fs::remove_file(&path);
});

fn limits() -> Limits {
    Limits {
        max_table_bytes: 1 << 20,
        max_virtual_size: 1 << 30,
        ..Limits::default()
    }
}
