//! Templates and linked clones end to end (issue 4): a template's linked clones boot from
//! copy-on-write overlays of its read-only volumes, start with the template's data and
//! diverge from each other.

use vireo_testkit::TestDaemon;

/// The data volume (the volume of disk `data`) of `vm`.
fn data_volume(d: &TestDaemon, vm: &str) -> serde_json::Value {
    d.volumes("default")
        .into_iter()
        .find(|v| v["attached_to"]["vm"] == vm && v["attached_to"]["disk"] == "data")
        .unwrap_or_else(|| panic!("no data volume attached to {vm}"))
}

#[test]
fn real_template_linked_clones_boot_and_diverge() {
    let d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    // The template-to-be leaves a file on its data disk.
    d.ok(&[
        "vm", "create", "gold", "--image", "tiny", "--start", "--wait",
    ]);
    d.sh("gold", "echo golden > /data/origin && sync");
    d.ok(&["vm", "stop", "gold"]);
    let tmpl = d.json(&["vm", "template", "gold"]);
    assert_eq!(tmpl["template"], true, "{tmpl}");
    let base = data_volume(&d, "gold");
    assert_eq!(base["read_only"], true, "{base}");
    // A template never starts.
    assert!(!d.cli(&["vm", "start", "gold"]).status.success());

    // One linked clone with `vm clone`, one with `vm create --template`.
    d.ok(&["vm", "clone", "gold", "c1"]);
    d.ok(&["vm", "create", "c2", "--template", "gold"]);
    let (gold_uuid, gold_mac) = (
        tmpl["uuid"].clone(),
        d.json(&["vm", "show", "gold"])["nics"][0]["mac"].clone(),
    );
    for c in ["c1", "c2"] {
        let vm = d.json(&["vm", "show", c]);
        assert_ne!(vm["uuid"], gold_uuid, "{vm}");
        assert_ne!(vm["nics"][0]["mac"], gold_mac, "{vm}");
        let vol = data_volume(&d, c);
        assert_eq!(vol["backing"]["volume"], base["name"], "{c}: {vol}");
        // Thin: the overlay holds no data of its own yet.
        assert!(
            vol["allocated_bytes"].as_u64().unwrap() < 4 << 20,
            "{c}'s overlay is not thin: {vol}"
        );
    }
    let base = d.json(&["storage", "volume", "show", base["name"].as_str().unwrap()]);
    assert_eq!(
        base["dependants"].as_array().map(Vec::len),
        Some(2),
        "{base}"
    );

    for c in ["c1", "c2"] {
        d.ok(&["vm", "start", c]);
    }
    for c in ["c1", "c2"] {
        d.wait_ready(c);
        assert_eq!(d.sh(c, "cat /data/origin").trim(), "golden", "{c}");
        assert_eq!(d.sh(c, "hostname").trim(), c);
        d.sh(c, &format!("echo mine-{c} > /data/who && sync"));
    }
    for c in ["c1", "c2"] {
        assert_eq!(d.sh(c, "cat /data/who").trim(), format!("mine-{c}"));
    }
    // The divergence survives a reboot (it is on the overlays) and never reaches the base.
    d.ok(&["vm", "stop", "c1"]);
    d.ok(&["vm", "start", "c1"]);
    d.wait_ready("c1");
    assert_eq!(d.sh("c1", "cat /data/who").trim(), "mine-c1");
    assert_eq!(d.sh("c2", "cat /data/who").trim(), "mine-c2");
    let base_after = d.json(&["storage", "volume", "show", base["name"].as_str().unwrap()]);
    assert_eq!(
        base_after["allocated_bytes"], base["allocated_bytes"],
        "the base changed"
    );

    // Several at once from the template: one operation, linked, distinct identities.
    d.ok(&[
        "vm",
        "create",
        "--template",
        "gold",
        "--count",
        "3",
        "--prefix",
        "w",
    ]);
    let mut uuids = std::collections::BTreeSet::new();
    for w in ["w1", "w2", "w3"] {
        let vm = d.json(&["vm", "show", w]);
        assert_eq!(vm["template_source"], "gold", "{vm}");
        uuids.insert(vm["uuid"].as_str().unwrap().to_string());
        assert_eq!(data_volume(&d, w)["backing"]["volume"], base["name"]);
    }
    assert_eq!(uuids.len(), 3);

    // Once every clone is gone the template can go, and with it its volumes.
    for c in ["c1", "c2"] {
        d.ok(&["vm", "kill", c]);
    }
    for c in ["c1", "c2", "w1", "w2", "w3"] {
        d.ok(&["vm", "delete", c]);
    }
    d.ok(&["vm", "delete", "gold"]);
    assert_eq!(d.pool_mismatch("default"), (vec![], vec![]));
    assert!(
        d.volumes("default").is_empty(),
        "{:?}",
        d.volumes("default")
    );
}
