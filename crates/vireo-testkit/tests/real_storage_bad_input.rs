//! Bad storage requests (issue 4) get a 4xx with the documented error body and change nothing:
//! not the VMs, not the volume records, not the snapshots, not a byte in the pool directory.
//! No guest boots here; the VMs stay stopped.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use vireo_testkit::TestDaemon;

/// Everything observable a storage request could change.
#[derive(Debug, PartialEq)]
struct World {
    vms: String,
    volumes: String,
    snapshots: BTreeMap<String, String>,
    /// Pool directory: file name → hash of its content.
    pool_files: BTreeMap<String, u64>,
    vm_dirs: Vec<String>,
}

fn world(d: &TestDaemon, vms: &[&str]) -> World {
    let (_, vm_list) = d.http("GET", "/v1/vms", None);
    let (_, volumes) = d.http("GET", "/v1/storage-pools/default/volumes", None);
    let snapshots = vms
        .iter()
        .map(|v| {
            let (_, s) = d.http("GET", &format!("/v1/vms/{v}/snapshots"), None);
            (v.to_string(), s)
        })
        .collect();
    let mut pool_files = BTreeMap::new();
    for e in std::fs::read_dir(d.pool_dir("default")).unwrap().flatten() {
        let mut h = DefaultHasher::new();
        std::fs::read(e.path()).unwrap().hash(&mut h);
        pool_files.insert(e.file_name().to_string_lossy().into_owned(), h.finish());
    }
    let mut vm_dirs: Vec<String> = std::fs::read_dir(d.state_dir().join("vms"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    vm_dirs.sort();
    World {
        vms: vm_list,
        volumes,
        snapshots,
        pool_files,
        vm_dirs,
    }
}

/// (method, path, body, expected status, expected error code, fragment of the message).
type Case<'a> = (&'a str, &'a str, Option<&'a str>, u16, &'a str, &'a str);

#[test]
fn real_storage_bad_input_is_refused_and_changes_nothing() {
    let d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    // v: a stopped VM with a snapshot and an attached custom volume.
    d.ok(&["vm", "create", "v", "--image", "tiny"]);
    d.ok(&["vm", "snapshot", "create", "v", "s1"]);
    d.ok(&["storage", "volume", "create", "att", "--size", "16MiB"]);
    d.ok(&["vm", "disk", "attach", "v", "att"]);
    d.ok(&["storage", "volume", "create", "free", "--size", "32MiB"]);
    // tm: a template with a linked clone tc.
    d.ok(&["vm", "create", "tm", "--image", "tiny"]);
    d.ok(&["vm", "template", "tm"]);
    d.ok(&["vm", "clone", "tm", "tc"]);
    // src: a plain stopped VM; its linked clone lc sits on a materialised base volume.
    d.ok(&["vm", "create", "src", "--image", "tiny"]);
    d.ok(&["vm", "clone", "src", "lc"]);
    let vols = d.volumes("default");
    let base_of = |vm: &str| -> String {
        let overlay = vols
            .iter()
            .find(|v| v["attached_to"]["vm"] == vm)
            .unwrap_or_else(|| panic!("no volume of {vm}: {vols:?}"));
        overlay["backing"]["volume"]
            .as_str()
            .unwrap_or_else(|| panic!("{vm}'s volume has no backing volume: {overlay}"))
            .to_string()
    };
    let materialised = base_of("lc");
    let template_vol = base_of("tc");
    let free_size = 32u64 << 20;

    let vm_names = ["v", "tm", "tc", "src", "lc"];
    let before = world(&d, &vm_names);
    let del_materialised = format!("/v1/storage-pools/default/volumes/{materialised}");
    let del_template_vol = format!("/v1/storage-pools/default/volumes/{template_vol}");
    let smaller = format!(r#"{{"size_bytes":{}}}"#, free_size / 2);
    let same = format!(r#"{{"size_bytes":{free_size}}}"#);
    let unaligned = format!(r#"{{"size_bytes":{}}}"#, free_size + 1);
    let cases: Vec<Case> = vec![
        // Snapshot names are VM-style names: no '/', no dots, no empty names.
        (
            "POST",
            "/v1/vms/v/snapshots",
            Some(r#"{"name":"a/b"}"#),
            400,
            "invalid_request",
            "",
        ),
        (
            "POST",
            "/v1/vms/v/snapshots",
            Some(r#"{"name":"../s1"}"#),
            400,
            "invalid_request",
            "",
        ),
        (
            "POST",
            "/v1/vms/v/snapshots",
            Some(r#"{"name":""}"#),
            400,
            "invalid_request",
            "",
        ),
        (
            "POST",
            "/v1/vms/v/snapshots/a%2Fb/restore",
            None,
            400,
            "invalid_request",
            "invalid snapshot name",
        ),
        (
            "DELETE",
            "/v1/vms/v/snapshots/a%2Fb",
            None,
            400,
            "invalid_request",
            "invalid snapshot name",
        ),
        (
            "POST",
            "/v1/vms/v/snapshots",
            Some(r#"{"name":"s1"}"#),
            409,
            "conflict",
            "already has a snapshot",
        ),
        (
            "POST",
            "/v1/vms/v/snapshots",
            Some(r#"{"name":"m","memory":true}"#),
            409,
            "conflict",
            "running or paused",
        ),
        (
            "POST",
            "/v1/vms/tm/snapshots",
            Some(r#"{"name":"t"}"#),
            409,
            "conflict",
            "template",
        ),
        // Unknown snapshots.
        (
            "POST",
            "/v1/vms/v/snapshots/nope/restore",
            None,
            404,
            "not_found",
            "nope",
        ),
        (
            "DELETE",
            "/v1/vms/v/snapshots/nope",
            None,
            404,
            "not_found",
            "nope",
        ),
        (
            "POST",
            "/v1/vms/v/clone",
            Some(r#"{"name":"x","snapshot":"nope"}"#),
            404,
            "not_found",
            "nope",
        ),
        // Volumes only grow, by whole sectors.
        (
            "POST",
            "/v1/storage-pools/default/volumes/free/resize",
            Some(&smaller),
            400,
            "invalid_request",
            "only grow",
        ),
        (
            "POST",
            "/v1/storage-pools/default/volumes/free/resize",
            Some(&same),
            400,
            "invalid_request",
            "only grow",
        ),
        (
            "POST",
            "/v1/storage-pools/default/volumes/free/resize",
            Some(&unaligned),
            400,
            "invalid_request",
            "multiple of 512",
        ),
        // Bases in use, templates with clones, attached volumes.
        (
            "DELETE",
            &del_materialised,
            None,
            409,
            "conflict",
            "base of 1 linked volume",
        ),
        ("DELETE", &del_template_vol, None, 409, "conflict", ""),
        ("DELETE", "/v1/vms/tm", None, 409, "conflict", "tc"),
        (
            "POST",
            "/v1/storage-pools/default/volumes/free/resize",
            Some(r#"{"size_bytes":1,"x":2}"#),
            400,
            "invalid_request",
            "unknown field",
        ),
        (
            "DELETE",
            "/v1/storage-pools/default/volumes/att",
            None,
            409,
            "conflict",
            "attached to VM \"v\"",
        ),
        (
            "POST",
            "/v1/vms/lc/disks",
            Some(r#"{"pool":"default","volume":"att"}"#),
            409,
            "conflict",
            "",
        ),
        (
            "POST",
            "/v1/storage-pools/default/volumes",
            Some(r#"{"name":"free","size_bytes":1048576}"#),
            409,
            "conflict",
            "",
        ),
        (
            "POST",
            "/v1/vms/v/clone",
            Some(r#"{"name":"tc"}"#),
            409,
            "conflict",
            "",
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, body, status, code, fragment) in &cases {
        let (got, resp) = d.http_json(method, path, *body);
        let ok = got == *status
            && resp["error"]["code"] == *code
            && resp["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(fragment));
        if !ok {
            failures.push(format!(
                "{method} {path} {body:?}: expected {status} {code} containing {fragment:?}, got {got} {resp}"
            ));
        }
        let now = world(&d, &vm_names);
        if now != before {
            failures.push(format!(
                "{method} {path} {body:?} changed state:\nbefore {before:?}\nafter  {now:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The CLI refuses the same names before sending anything.
    let out = d.cli(&["vm", "snapshot", "create", "v", "a/b"]);
    assert!(!out.status.success());
    assert!(!d
        .cli(&["vm", "snapshot", "restore", "v", "nope"])
        .status
        .success());
    assert!(!d
        .cli(&["storage", "volume", "resize", "free", "--size", "16MiB"])
        .status
        .success());
    assert_eq!(world(&d, &vm_names), before);
    assert_eq!(d.pool_mismatch("default"), (vec![], vec![]));

    // Once the dependants go, the same deletes succeed.
    d.ok(&["vm", "delete", "tc"]);
    d.ok(&["vm", "delete", "tm"]);
    d.ok(&["vm", "delete", "lc"]);
    assert!(
        !d.volumes("default")
            .iter()
            .any(|v| v["name"] == materialised.as_str()),
        "the materialised base outlived its last clone"
    );
    d.ok(&["vm", "disk", "detach", "v", "att"]);
    d.ok(&["storage", "volume", "delete", "att"]);
    assert_eq!(d.pool_mismatch("default"), (vec![], vec![]));
}
