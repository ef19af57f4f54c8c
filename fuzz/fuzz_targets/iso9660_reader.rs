//! The ISO 9660 reader on hostile images: descriptors, directory records, SUSP/Rock Ridge
//! entries with continuation areas, Joliet names. Reading and extracting must never panic or
//! read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_cloudinit::iso9660::reader::{file_data, read_volume};

fuzz_target!(|data: &[u8]| {
    if let Ok(vol) = read_volume(data) {
        for e in vol.primary_root.iter().chain(vol.joliet_root.iter().flatten()) {
            if let Ok(bytes) = file_data(data, e) {
                assert_eq!(bytes.len(), e.size as usize);
            }
        }
        let _ = vol.find("meta-data");
    }
});
