//! qcow2 editing on hostile files: snapshot list/create/apply/delete, snapshot views and
//! growth. Nothing may panic or allocate beyond the limits, and an edit that accepts an image
//! must leave it consistent (no structural errors, no refcount below its references).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_image::{Limits, PathPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = std::env::temp_dir().canonicalize() else {
        return;
    };
    let path = dir.join(format!("vireo-fuzz-edit-{}.qcow2", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    vireo_image::qcow2::exercise_edits(
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
