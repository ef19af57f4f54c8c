//! VHD (fixed, dynamic, differencing) on hostile bytes: footer and dynamic header checksums,
//! BAT, sector bitmaps, parent locators. When the first input byte is odd the checksums are
//! re-sealed before the file is written, so mutations also reach the structures behind them.
//! Nothing may panic or allocate beyond the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_image::{vhd, Limits, PathPolicy};

fn reseal(b: &mut [u8], at: usize, len: usize, field: usize) {
    if at.checked_add(len).is_some_and(|end| end <= b.len()) {
        let block = &mut b[at..at + len];
        block[field..field + 4].fill(0);
        let c = vhd::checksum(block, field);
        block[field..field + 4].copy_from_slice(&c.to_be_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = std::env::temp_dir().canonicalize() else {
        return;
    };
    let mut bytes = data.to_vec();
    if bytes.first().is_some_and(|b| b & 1 == 1) && bytes.len() >= 512 {
        reseal(&mut bytes, 0, 512, 64);
        let end = bytes.len() - 512;
        reseal(&mut bytes, end, 512, 64);
        let dyn_header = u64::from_be_bytes(bytes[16..24].try_into().unwrap_or([0xff; 8]));
        if let Ok(at) = usize::try_from(dyn_header) {
            reseal(&mut bytes, at, 1024, 36);
        }
    }
    let path = dir.join(format!("vireo-fuzz-{}.vhd", std::process::id()));
    if std::fs::write(&path, &bytes).is_err() {
        return;
    }
    let limits = Limits {
        max_table_bytes: 1 << 20,
        max_virtual_size: 1 << 30,
        ..Limits::default()
    };
    vhd::exercise(&path, &limits, &PathPolicy::default());
    let _ = std::fs::remove_file(&path);
});
