//! OVF envelopes on hostile bytes (DTDs, entities, deep nesting, huge numbers). Parsing must
//! fail cleanly or produce a descriptor that renders and parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_image::ovf;
use vireo_image::Limits;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_descriptor_bytes: 1 << 20,
        ..Limits::default()
    };
    if let Ok(d) = ovf::parse(data, &limits) {
        let xml = ovf::render(&d);
        let again = ovf::parse(xml.as_bytes(), &limits).expect("rendered envelope parses");
        assert_eq!(again.cpus, d.cpus);
        assert_eq!(again.memory_bytes, d.memory_bytes);
        assert_eq!(again.disks.len(), d.disks.len());
    }
});
