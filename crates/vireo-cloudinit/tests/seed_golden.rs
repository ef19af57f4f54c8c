//! Golden tests: the seed files and the ISO (its SHA-256 and a structural listing) for each
//! spec in `common::cases()` must match `tests/golden/<case>/` exactly. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p vireo-cloudinit --test seed_golden` and review the diff.

mod common;

use std::fmt::Write as _;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use vireo_cloudinit::iso9660::reader::{file_data, read_volume};
use vireo_cloudinit::{render_seed, SeedFiles};

fn golden_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
}

/// Compares `got` with the golden file, or rewrites it under UPDATE_GOLDEN (removing it when
/// `got` is `None`).
fn check(case: &str, name: &str, got: Option<&str>) {
    let path = golden_dir(case).join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir(case)).unwrap();
        match got {
            Some(text) => std::fs::write(&path, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        return;
    }
    let want = std::fs::read_to_string(&path).ok();
    assert_eq!(
        want.as_deref(),
        got,
        "{case}/{name} differs from {}; run with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

/// SHA-256 of the ISO plus everything a reader sees, one line per fact.
fn iso_description(files: &SeedFiles) -> String {
    let iso = files.to_iso(common::recorded_at()).unwrap();
    let vol = read_volume(&iso).unwrap();
    let mut out = String::new();
    let _ = writeln!(out, "sha256 {}", hex::encode(Sha256::digest(&iso)));
    let _ = writeln!(out, "bytes {} sectors {}", iso.len(), vol.volume_sectors);
    let _ = writeln!(
        out,
        "volume {:?} joliet {:?} rock_ridge {}",
        vol.volume_id, vol.joliet_volume_id, vol.rock_ridge
    );
    for e in &vol.primary_root {
        let _ = writeln!(
            out,
            "primary {:<20} rr {:<16} mode {:o} extent {} size {} at {:?}",
            e.name,
            e.rock_ridge_name.as_deref().unwrap_or("-"),
            e.posix_mode.unwrap_or(0),
            e.extent,
            e.size,
            e.recorded_at
        );
    }
    for e in vol.joliet_root.iter().flatten() {
        let _ = writeln!(
            out,
            "joliet {:<16} extent {} size {}",
            e.name, e.extent, e.size
        );
    }
    out
}

#[test]
fn seeds_match_golden_files() {
    for (case, input) in common::cases() {
        let files = render_seed(&input).unwrap_or_else(|e| panic!("{case}: {e}"));
        check(case, "meta-data", Some(&files.meta_data));
        check(case, "user-data", Some(&files.user_data));
        check(case, "network-config", files.network_config.as_deref());
        check(case, "vendor-data", files.vendor_data.as_deref());
        check(case, "seed.iso.txt", Some(&iso_description(&files)));
    }
}

#[test]
fn iso_contents_read_back_exactly_in_every_namespace() {
    for (case, input) in common::cases() {
        let files = render_seed(&input).unwrap();
        let iso = files.to_iso(common::recorded_at()).unwrap();
        assert_eq!(iso.len() % 2048, 0);
        let vol = read_volume(&iso).unwrap();
        assert_eq!(vol.volume_id, "cidata");
        assert_eq!(vol.joliet_volume_id.as_deref(), Some("cidata"));
        assert!(vol.rock_ridge, "{case}: Rock Ridge not announced");
        let mut expected = vec![
            ("meta-data", files.meta_data.as_str()),
            ("user-data", files.user_data.as_str()),
        ];
        if let Some(n) = &files.network_config {
            expected.push(("network-config", n));
        }
        if let Some(v) = &files.vendor_data {
            expected.push(("vendor-data", v));
        }
        assert_eq!(vol.primary_root.len(), expected.len(), "{case}");
        for (name, text) in expected {
            let rr = vol
                .find(name)
                .unwrap_or_else(|| panic!("{case}: no {name}"));
            assert_eq!(
                file_data(&iso, rr).unwrap(),
                text.as_bytes(),
                "{case}/{name}"
            );
            assert_eq!(rr.posix_mode, Some(0o100444));
            let joliet = vol
                .joliet_root
                .as_ref()
                .unwrap()
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{case}: no Joliet {name}"));
            assert_eq!(joliet.extent, rr.extent);
            let primary = name.to_uppercase().replace('-', "_") + ".;1";
            assert_eq!(rr.name, primary);
        }
    }
}

#[test]
fn output_is_deterministic_and_tracks_the_timestamp() {
    let (_, input) = common::cases().remove(0);
    let files = render_seed(&input).unwrap();
    let a = files.to_iso(common::recorded_at()).unwrap();
    let b = render_seed(&input)
        .unwrap()
        .to_iso(common::recorded_at())
        .unwrap();
    assert_eq!(a, b);
    let later = vireo_cloudinit::IsoTimestamp::from_unix(common::RECORDED_AT + 1).unwrap();
    assert_ne!(a, files.to_iso(later).unwrap());
}
