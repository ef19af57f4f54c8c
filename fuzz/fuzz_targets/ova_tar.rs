//! OVA archives on hostile bytes: tar headers (checksums, octal/base-256 sizes, pax and GNU
//! long names, link and device members, traversal names) and manifests. Every accepted member
//! name must be a safe relative path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_image::ova::{parse_manifest, tar};

fuzz_target!(|data: &[u8]| {
    let mut reader = tar::TarReader::new(data);
    let mut buf = vec![0u8; 64 << 10];
    for _ in 0..64 {
        match reader.next_member(1 << 20) {
            Ok(Some(member)) => {
                assert!(
                    !member.name.starts_with('/') && !member.name.split('/').any(|p| p == "..")
                );
                let mut consumed = 0;
                while consumed < member.size {
                    match reader.read_content(&member, consumed, &mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => consumed += n as u64,
                    }
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_manifest(text);
    }
});
