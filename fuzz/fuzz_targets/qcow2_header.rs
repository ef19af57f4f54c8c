//! qcow2 header + extension parsing (pure, no file): any input must parse or fail cleanly,
//! and whatever parses must serialise and re-parse to the same header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_image::qcow2::Header;
use vireo_image::Limits;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_table_bytes: 1 << 20,
        ..Limits::default()
    };
    if let Ok(h) = Header::parse(data, &limits) {
        // Only headers Vireo could have written round-trip exactly.
        if let Ok(bytes) = h.to_cluster() {
            if let Ok(back) = Header::parse(&bytes, &limits) {
                assert_eq!(back.size, h.size);
                assert_eq!(back.l1_table_offset, h.l1_table_offset);
                assert_eq!(back.backing_file, h.backing_file);
            }
        }
    }
});
