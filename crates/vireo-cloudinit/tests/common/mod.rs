//! Shared helpers for the vireo-cloudinit integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use vireo_cloudinit::{IsoTimestamp, NicSeed, SeedInput};

/// Fixed instant recorded in every test ISO (2023-11-14T22:13:20Z).
pub const RECORDED_AT: i64 = 1_700_000_000;

pub fn recorded_at() -> IsoTimestamp {
    IsoTimestamp::from_unix(RECORDED_AT).unwrap()
}

/// A syntactically valid public key line (SSH wire blob with a fixed 32-byte key).
pub fn fake_key(key_type: &str, seed: u8, comment: &str) -> String {
    let mut blob = (key_type.len() as u32).to_be_bytes().to_vec();
    blob.extend_from_slice(key_type.as_bytes());
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend((0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(seed)));
    let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
    format!("{key_type} {b64} {comment}")
}

pub fn dhcp_nic(name: &str, last: u8) -> NicSeed {
    NicSeed {
        name: name.into(),
        mac: [0x52, 0x54, 0x00, 0x12, 0x34, last],
        addresses: vec![],
        gateway4: None,
        gateway6: None,
        dns: vec![],
    }
}

pub fn static_nic(name: &str, last: u8) -> NicSeed {
    NicSeed {
        name: name.into(),
        mac: [0x52, 0x54, 0x00, 0xab, 0xcd, last],
        addresses: vec![
            "192.0.2.10/24".parse().unwrap(),
            "2001:db8::10/64".parse().unwrap(),
        ],
        gateway4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        gateway6: Some("2001:db8::1".parse::<Ipv6Addr>().unwrap()),
        dns: vec![
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53)),
            "2001:db8::53".parse().unwrap(),
        ],
    }
}

/// Named seed specs shared by the golden and oracle tests.
pub fn cases() -> Vec<(&'static str, SeedInput)> {
    vec![
        (
            "flags_only",
            SeedInput {
                instance_id: "iid-0190f1a2-7b3c-7d4e-8f50-123456789abc".into(),
                hostname: "web1".into(),
                ssh_authorized_keys: vec![
                    fake_key("ssh-ed25519", 1, "alice@laptop"),
                    fake_key("ecdsa-sha2-nistp256", 2, "bob \"the builder\""),
                ],
                nics: vec![dhcp_nic("net0", 0x01)],
                ..SeedInput::default()
            },
        ),
        (
            "user_cloud_config",
            SeedInput {
                instance_id: "iid-db1".into(),
                hostname: "db1.example.com".into(),
                user_data: Some(
                    "#cloud-config\n# comments and layout survive\npackages: [postgresql]\nwrite_files:\n  - path: /etc/motd\n    permissions: 0644\n    content: |\n      héllo ✓\n".into(),
                ),
                vendor_data: Some("#cloud-config\ntimezone: Etc/UTC\n".into()),
                nics: vec![static_nic("lan", 0x02), dhcp_nic("mgmt", 0x03)],
                ..SeedInput::default()
            },
        ),
        (
            "merge_cloud_config",
            SeedInput {
                instance_id: "iid-app1".into(),
                hostname: "app1".into(),
                user_data: Some(
                    "#cloud-config\nhostname: chosen-by-user\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA user\nruncmd:\n  - [touch, /run/done]\n".into(),
                ),
                ssh_authorized_keys: vec![fake_key("ssh-ed25519", 3, "ops")],
                ..SeedInput::default()
            },
        ),
        (
            "merge_script",
            SeedInput {
                instance_id: "iid-batch".into(),
                hostname: "batch".into(),
                user_data: Some("#!/bin/sh\necho 'hello from user-data' > /run/hello\n".into()),
                ssh_authorized_keys: vec![fake_key("ssh-rsa", 4, "")],
                ..SeedInput::default()
            },
        ),
        (
            "explicit_network_config",
            SeedInput {
                instance_id: "iid-net".into(),
                hostname: "net".into(),
                network_config: Some(
                    "network:\n  version: 1\n  config:\n    - type: physical\n      name: eth0\n      subnets:\n        - type: dhcp\n".into(),
                ),
                nics: vec![dhcp_nic("ignored", 0x09)],
                ..SeedInput::default()
            },
        ),
    ]
}

/// Whether `program` can be run (test oracles are optional outside CI).
pub fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

/// Runs a command and returns stdout; panics with stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian packages whose Python modules the oracles import: cloud-init 22.4 (Debian 12's) and
/// the pure-Python libraries it imports, plus PyYAML, the YAML parser cloud-init uses.
const ORACLE_PACKAGES: [&str; 11] = [
    "cloud-init",
    "python3-yaml",
    "python3-configobj",
    "python3-jsonpatch",
    "python3-json-pointer",
    "python3-requests",
    "python3-urllib3",
    "python3-idna",
    "python3-certifi",
    "python3-chardet",
    "python3-charset-normalizer",
];

/// A `PYTHONPATH` directory holding [`ORACLE_PACKAGES`]' modules, fetched once into the test
/// cache (`VIREO_TEST_CACHE`, default `/var/cache/vireo-test`) with `apt-get download` and
/// extracted with `dpkg-deb -x`; nothing is installed on the host.
pub fn python_oracle_path() -> PathBuf {
    let cache = std::env::var_os("VIREO_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vireo-test"))
        .join("python-oracle-bookworm");
    let site = cache.join("root/usr/lib/python3/dist-packages");
    let complete = cache.join("root/.complete");
    if complete.exists() {
        return site;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let work = tempfile::tempdir_in(&cache).unwrap();
    let out = Command::new("apt-get")
        .arg("download")
        .args(ORACLE_PACKAGES)
        .current_dir(work.path())
        .output()
        .expect("apt-get (run scripts/deps.sh on a Debian host)");
    assert!(
        out.status.success(),
        "apt-get download {ORACLE_PACKAGES:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = work.path().join("root");
    for entry in std::fs::read_dir(work.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "deb") {
            run(
                "dpkg-deb",
                &["-x", path.to_str().unwrap(), root.to_str().unwrap()],
            );
        }
    }
    std::fs::write(root.join(".complete"), b"").unwrap();
    // Another test process may have won the race; either tree is complete.
    let _ = std::fs::rename(&root, cache.join("root"));
    assert!(complete.exists());
    site
}
