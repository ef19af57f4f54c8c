//! Untrusted input never panics: the ISO reader on arbitrary and mutated images, the YAML,
//! user-data, network-config, SSH key and Ignition validators on arbitrary text; and the
//! writer round-trips arbitrary file sets through the reader in every namespace.

mod common;

use proptest::prelude::*;
use vireo_cloudinit::iso9660::reader::{file_data, read_volume};
use vireo_cloudinit::iso9660::{write_iso, IsoFile, IsoImage, IsoTimestamp, IsoWriteError};
use vireo_cloudinit::seed::network::validate_network_config;
use vireo_cloudinit::seed::ssh::validate_ssh_key;
use vireo_cloudinit::{userdata, validate_ignition, yaml};

fn seed_iso() -> Vec<u8> {
    let (_, input) = common::cases().remove(1);
    vireo_cloudinit::render_seed(&input)
        .unwrap()
        .to_iso(common::recorded_at())
        .unwrap()
}

/// Reads everything a caller could read; must return, never panic.
fn exercise_reader(image: &[u8]) {
    if let Ok(vol) = read_volume(image) {
        for e in vol
            .primary_root
            .iter()
            .chain(vol.joliet_root.iter().flatten())
        {
            let _ = file_data(image, e);
        }
        let _ = vol.find("user-data");
    }
}

/// Hostile YAML and JSON that once broke parsers somewhere.
const CORPUS: &[&str] = &[
    "#cloud-config\n",
    "#cloud-config\n&a [*a]\n",
    "#cloud-config\na: &a\n  b: *a\n",
    "#cloud-config\n? - a\n  - b\n: c\n",
    "#cloud-config\n!!binary aGVsbG8=\n",
    "#cloud-config\na: !!python/object:os.system 'x'\n",
    "#cloud-config\n---\na: 1\n---\nb: 2\n",
    "#cloud-config\n%YAML 1.1\n---\na: 1\n",
    "#cloud-config\n\"\\uD800\": 1\n",
    "#cloud-config\na: 1\n...\n",
    "#cloud-config\n<<: {a: 1}\nb: 2\n",
    "#cloud-config\na: |-\n\n\n",
    "#cloud-config\n\u{feff}a: 1\n",
    "#cloud-config-archive\n- {type: text/cloud-config, content: 'a: 1'}\n",
    "network:\n  version: 2\n",
    "version: two\n",
    "{\"ignition\":{\"version\":\"3.4.0\"}}",
    "{\"ignition\":{\"version\":\"3.4.0\"},\"a\":1e999999}",
    "\u{0}\u{0}\u{0}",
];

fn exercise_validators(text: &str) {
    let _ = yaml::top_level(text);
    let _ = userdata::validate(text);
    let _ = userdata::combine_with_generated(text, "hostname: \"x\"\n");
    let _ = validate_network_config(text);
    let _ = validate_ssh_key(text);
    let _ = validate_ignition(text.as_bytes());
}

#[test]
fn corpus_never_panics() {
    for text in CORPUS {
        exercise_validators(text);
    }
    let deep = format!("#cloud-config\na: {}\n", "[".repeat(50_000));
    exercise_validators(&deep);
    let wide = format!(
        "#cloud-config\n{}",
        (0..20_000)
            .map(|i| format!("k{i}: {i}\n"))
            .collect::<String>()
    );
    assert!(userdata::validate(&wide).is_ok());
}

#[test]
fn truncated_images_never_panic() {
    let iso = seed_iso();
    for len in (0..iso.len()).step_by(97) {
        exercise_reader(&iso[..len]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn reader_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..80_000)) {
        exercise_reader(&bytes);
    }

    /// Flip bytes of a valid seed anywhere in the metadata sectors.
    #[test]
    fn reader_never_panics_on_mutated_seeds(
        edits in proptest::collection::vec((16usize * 2048..26 * 2048, any::<u8>()), 1..64)
    ) {
        let mut iso = seed_iso();
        for (at, value) in edits {
            iso[at] = value;
        }
        exercise_reader(&iso);
    }

    #[test]
    fn validators_never_panic(text in any::<String>()) {
        exercise_validators(&text);
        let cloud_config = format!("#cloud-config\n{text}");
        exercise_validators(&cloud_config);
    }

    #[test]
    fn validators_never_panic_on_yamlish_text(text in "[-:#&*!|>?\\[\\]{},'\" a-z0-9\\n]{0,400}") {
        exercise_validators(&format!("#cloud-config\n{text}"));
        exercise_validators(&format!("version: 2\n{text}"));
    }

    /// Any valid file set is written and read back exactly under Rock Ridge and Joliet.
    #[test]
    fn write_read_round_trip(
        files in proptest::collection::btree_map(
            "[a-z0-9][a-z0-9._-]{0,29}",
            proptest::collection::vec(any::<u8>(), 0..6000),
            0..12,
        ),
        secs in -2_208_988_800i64..5_869_583_999,
    ) {
        let image = IsoImage {
            volume_id: "cidata".into(),
            recorded_at: IsoTimestamp::from_unix(secs).unwrap(),
            files: files.iter().map(|(n, d)| IsoFile { name: n.clone(), data: d.clone() }).collect(),
        };
        let iso = match write_iso(&image) {
            Ok(iso) => iso,
            // Names such as "a-b" and "a_b" share a primary identifier: refused, not mangled.
            Err(IsoWriteError::NameClash { .. }) => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        let vol = read_volume(&iso).unwrap();
        prop_assert!(vol.rock_ridge);
        prop_assert_eq!(vol.primary_root.len(), files.len());
        for (name, data) in &files {
            let rr = vol.find(name).unwrap();
            prop_assert_eq!(file_data(&iso, rr).unwrap(), &data[..]);
            prop_assert_eq!(rr.recorded_at, Some(image.recorded_at));
            let joliet = vol.joliet_root.as_ref().unwrap().iter().find(|e| &e.name == name).unwrap();
            prop_assert_eq!(file_data(&iso, joliet).unwrap(), &data[..]);
        }
    }
}
