//! VMDK text descriptors on hostile bytes. The descriptor lives in a private directory next to
//! a small flat file (`f.raw`) and a small sparse extent (`s.vmdk`) that extent lines may name;
//! names reaching outside the directory must be refused, never opened.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vireo_image::{Limits, PathPolicy};

/// A per-process directory holding the extent files descriptors may reference.
fn workdir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir()
            .canonicalize()
            .ok()?
            .join(format!("vireo-fuzz-vmdk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(dir.join("f.raw"), vec![0x5a; 64 << 10]).ok()?;
        // A minimal sparse extent: header only, 128 sectors, GD at sector 1 pointing nowhere.
        let mut h = vec![0u8; 1024];
        h[0..4].copy_from_slice(b"KDMV");
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[12..20].copy_from_slice(&128u64.to_le_bytes());
        h[20..28].copy_from_slice(&128u64.to_le_bytes());
        h[44..48].copy_from_slice(&512u32.to_le_bytes());
        h[56..64].copy_from_slice(&1u64.to_le_bytes());
        std::fs::write(dir.join("s.vmdk"), h).ok()?;
        Some(dir)
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some(dir) = workdir() else {
        return;
    };
    let path = dir.join("d.vmdk");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let limits = Limits {
        max_table_bytes: 1 << 20,
        max_virtual_size: 1 << 30,
        ..Limits::default()
    };
    vireo_image::vmdk::exercise(&path, &limits, &PathPolicy::default());
});
