//! Seeds as real cloud-init reads them: Debian's `cloud-init` package (fetched with its Python
//! dependencies by `common::python_oracle_path`, extracted, never installed) parses the rendered
//! user-data (MIME processing, part merging with `merge_how`), meta-data and network-config
//! (`tests/data/cloud_init_oracle.py`). This is the check that the documented merge rules and
//! the network-config v2 rendering mean what they say to cloud-init itself.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use vireo_cloudinit::{render_seed, SeedFiles, SeedInput};

/// What cloud-init makes of `files` (see the Python script for the fields).
fn cloud_init_view(files: &SeedFiles) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let mut args = vec![
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/cloud_init_oracle.py")
            .to_str()
            .unwrap()
            .to_string(),
        write("user-data", &files.user_data),
        write("meta-data", &files.meta_data),
    ];
    if let Some(n) = &files.network_config {
        args.push(write("network-config", n));
    }
    let out = Command::new("python3")
        .args(&args)
        .env("PYTHONPATH", common::python_oracle_path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "cloud-init oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn case(name: &str) -> SeedInput {
    common::cases()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
}

fn view_of(input: &SeedInput) -> Value {
    cloud_init_view(&render_seed(input).unwrap())
}

/// The interface named `name` in cloud-init's network state.
fn interface<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no interface {name} in {view}"))
}

#[test]
fn generated_cloud_config_and_meta_data() {
    let input = case("flags_only");
    let view = view_of(&input);
    assert_eq!(
        view["meta_data"],
        json!({"instance-id": input.instance_id, "local-hostname": "web1"})
    );
    assert_eq!(
        view["cloud_config"],
        json!({"hostname": "web1", "ssh_authorized_keys": input.ssh_authorized_keys})
    );
    let net0 = interface(&view, "net0");
    assert_eq!(net0["mac_address"], "52:54:00:12:34:01");
    assert_eq!(net0["subnets"], json!([{"type": "dhcp4", "routes": []}]));
}

#[test]
fn user_cloud_config_passes_through_with_yaml_1_1_meaning() {
    let view = view_of(&case("user_cloud_config"));
    let cc = &view["cloud_config"];
    assert_eq!(cc["packages"], json!(["postgresql"]));
    // YAML 1.1: 0644 is octal, and the bytes (non-ASCII included) were not rewritten.
    assert_eq!(cc["write_files"][0]["permissions"], 0o644);
    assert_eq!(cc["write_files"][0]["content"], "héllo ✓\n");
    assert!(
        cc.get("hostname").is_none(),
        "hostname comes from meta-data here"
    );
    assert_eq!(view["meta_data"]["local-hostname"], "db1.example.com");
}

#[test]
fn static_addresses_gateways_and_dns_reach_cloud_init() {
    let view = view_of(&case("user_cloud_config"));
    let lan = interface(&view, "lan");
    assert_eq!(lan["mac_address"], "52:54:00:ab:cd:02");
    let subnets = lan["subnets"].as_array().unwrap();
    assert_eq!(subnets.len(), 2, "{lan}");
    assert_eq!(subnets[0]["type"], "static");
    assert_eq!(subnets[0]["address"], "192.0.2.10");
    assert_eq!(subnets[0]["prefix"], 24);
    assert_eq!(subnets[0]["gateway"], "192.0.2.1");
    assert_eq!(subnets[1]["address"], "2001:db8::10");
    assert_eq!(subnets[1]["prefix"], 64);
    assert_eq!(subnets[1]["gateway"], "2001:db8::1");
    assert_eq!(view["dns"], json!(["192.0.2.53", "2001:db8::53"]));
    let mgmt = interface(&view, "mgmt");
    assert_eq!(mgmt["subnets"][0]["type"], "dhcp4");
}

#[test]
fn keys_merge_into_users_cloud_config_and_user_keys_win() {
    let input = case("merge_cloud_config");
    let view = view_of(&input);
    let cc = &view["cloud_config"];
    assert_eq!(cc["hostname"], "chosen-by-user");
    let user_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA user";
    assert_eq!(
        cc["ssh_authorized_keys"],
        json!([user_key, input.ssh_authorized_keys[0]])
    );
    assert_eq!(cc["runcmd"], json!([["touch", "/run/done"]]));
    // The user's document reached cloud-init byte for byte.
    assert_eq!(
        view["parts"][0]["payload"],
        input.user_data.unwrap().as_str()
    );
}

#[test]
fn keys_combine_with_a_shell_script() {
    let input = case("merge_script");
    let view = view_of(&input);
    assert_eq!(view["parts"][0]["type"], "text/x-shellscript");
    assert_eq!(
        view["parts"][0]["payload"],
        input.user_data.unwrap().as_str()
    );
    assert_eq!(view["cloud_config"]["hostname"], "batch");
    // Keys are written trimmed (the fake key has an empty comment, so a trailing space).
    assert_eq!(
        view["cloud_config"]["ssh_authorized_keys"],
        json!([input.ssh_authorized_keys[0].trim()])
    );
}

#[test]
fn keys_combine_with_users_own_multipart_document() {
    let users = "Content-Type: multipart/mixed; boundary=\"===user===\"\nMIME-Version: 1.0\n\n--===user===\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\nMIME-Version: 1.0\n\n#!/bin/sh\necho part one\n\n--===user===\nContent-Type: text/cloud-config; charset=\"us-ascii\"\nMIME-Version: 1.0\n\n#cloud-config\nssh_authorized_keys: [\"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC0 mine\"]\npackages: [htop]\n\n--===user===--\n";
    let input = SeedInput {
        instance_id: "iid-multi".into(),
        hostname: "multi".into(),
        user_data: Some(users.into()),
        ssh_authorized_keys: vec![common::fake_key("ssh-ed25519", 9, "ops")],
        ..SeedInput::default()
    };
    let view = view_of(&input);
    let types: Vec<&str> = view["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "text/x-shellscript",
            "text/cloud-config",
            "text/cloud-config"
        ]
    );
    assert_eq!(view["parts"][0]["payload"], "#!/bin/sh\necho part one\n");
    let cc = &view["cloud_config"];
    assert_eq!(cc["packages"], json!(["htop"]));
    assert_eq!(
        cc["ssh_authorized_keys"],
        json!([
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC0 mine",
            input.ssh_authorized_keys[0]
        ])
    );
    assert_eq!(cc["hostname"], "multi");
}

#[test]
fn script_bytes_survive_exactly() {
    let script = "#!/bin/bash\r\necho 'naïve — ✓ 日本'\r\nprintf '%s\\n' \"$HOME\"\r\n\n\n";
    let input = SeedInput {
        instance_id: "iid-bytes".into(),
        hostname: "bytes".into(),
        user_data: Some(script.into()),
        ssh_authorized_keys: vec![common::fake_key("ssh-ed25519", 7, "")],
        ..SeedInput::default()
    };
    let view = view_of(&input);
    assert_eq!(view["parts"][0]["payload"], script);
}

#[test]
fn explicit_network_config_is_what_cloud_init_uses() {
    let view = view_of(&case("explicit_network_config"));
    let eth0 = interface(&view, "eth0");
    assert_eq!(eth0["subnets"][0]["type"], "dhcp"); // v1 keeps its own spelling
    assert!(view["interfaces"].as_array().unwrap().len() == 1);
    assert_eq!(view["cloud_config"], json!({"hostname": "net"}));
}
