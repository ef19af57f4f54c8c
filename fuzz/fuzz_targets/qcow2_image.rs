//! Whole-image qcow2 handling on hostile files: open (header, L1, snapshot table), walk the
//! extents, read every allocated byte, and run the refcount checker. Nothing may panic or
//! allocate beyond the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_image::{Limits, PathPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = std::env::temp_dir().canonicalize() else {
        return;
    };
    let path = dir.join(format!("vireo-fuzz-{}.qcow2", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    vireo_image::qcow2::exercise(
        &path,
        &Limits {
            max_table_bytes: 1 << 20,
            max_virtual_size: 1 << 30,
            ..Limits::default()
        },
        &PathPolicy::default(),
    );
    let _ = std::fs::remove_file(&path);
});
