//! cloud-init and Ignition validators on hostile text: YAML shape checks (alias bombs, deep
//! nesting, odd tags), user-data format detection and validation, combining with generated
//! cloud-config, network-config, SSH keys and Ignition JSON. All must return, never panic;
//! a document that validates as #cloud-config must also combine into a multipart document
//! that still carries the user's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_cloudinit::seed::network::validate_network_config;
use vireo_cloudinit::seed::ssh::validate_ssh_key;
use vireo_cloudinit::userdata::{self, UserDataFormat};
use vireo_cloudinit::{validate_ignition, yaml};

fuzz_target!(|data: &[u8]| {
    let _ = validate_ignition(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = yaml::top_level(text);
    let _ = validate_network_config(text);
    let _ = validate_ssh_key(text);
    if let Ok(format) = userdata::validate(text) {
        if format != UserDataFormat::Unknown {
            let combined = userdata::combine_with_generated(text, "hostname: \"fuzz\"\n");
            if let Ok(doc) = combined {
                assert!(doc.starts_with("Content-Type: multipart/mixed; boundary=\"vireo-"));
            }
        }
    }
});
