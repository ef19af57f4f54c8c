//! First-boot configuration: the cloud-init NoCloud seed (`cidata` ISO) and Ignition configs.
//!
//! Invariants:
//! - the seed is a pure function of the VM's identity (UUID, name, NICs) and its cloud-init
//!   settings; its instance-id changes when either changes, so clones and edited VMs run
//!   cloud-init's first-boot modules again;
//! - requests are validated by rendering the seed before anything is written (bad YAML,
//!   oversized files, bad keys → 400 naming the field);
//! - the seed lives in the VM's directory as `cidata.iso` (written through a temporary name)
//!   and is attached as the read-only CD-ROM `cidata`.

use std::path::{Path, PathBuf};

use vireo_api::vms::CloudInitConfig;
use vireo_cloudinit::{render_seed, IsoTimestamp, NicSeed, SeedError, SeedFiles, SeedInput};
use vireo_types::{CdromSpec, FwCfgFile, Name};

use crate::error::{EngineError, Result};
use crate::records::VmRecord;

/// Name of the seed CD-ROM (and disk-name space entry) of every VM with cloud-init.
pub const SEED_CDROM: &str = "cidata";
/// fw_cfg entry Ignition reads its config from.
pub const IGNITION_FW_CFG: &str = "opt/com.coreos/config";

/// FNV-1a, 64 bits: a stable fingerprint of the settings (not a security boundary).
fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// What cloud-init gets for `rec` with settings `cfg`.
pub fn seed_input(rec: &VmRecord, cfg: &CloudInitConfig) -> SeedInput {
    let settings = serde_json::to_vec(cfg).unwrap_or_default();
    let macs: Vec<u8> = rec.spec.nics.iter().flat_map(|n| n.mac.0).collect();
    let id = fingerprint(&[
        rec.uuid.as_bytes(),
        rec.name.as_str().as_bytes(),
        &macs,
        &settings,
    ]);
    SeedInput {
        instance_id: format!("vireo-{}-{id:016x}", rec.uuid.simple()),
        hostname: cfg.hostname.clone().unwrap_or_else(|| rec.name.to_string()),
        user_data: cfg.user_data.clone(),
        ssh_authorized_keys: cfg.ssh_authorized_keys.clone(),
        vendor_data: cfg.vendor_data.clone(),
        network_config: cfg.network_config.clone(),
        nics: rec
            .spec
            .nics
            .iter()
            .map(|n| NicSeed {
                name: n.name.to_string(),
                mac: n.mac.0,
                addresses: vec![],
                gateway4: None,
                gateway6: None,
                dns: vec![],
            })
            .collect(),
    }
}

/// The API field a seed error is about.
fn seed_field(e: &SeedError) -> &'static str {
    match e {
        SeedError::Hostname { .. } => "cloud_init.hostname",
        SeedError::TooManySshKeys { .. } | SeedError::SshKey { .. } => {
            "cloud_init.ssh_authorized_keys"
        }
        SeedError::UserData { .. } => "cloud_init.user_data",
        SeedError::VendorData { .. } => "cloud_init.vendor_data",
        SeedError::Network { .. } => "cloud_init.network_config",
        _ => "cloud_init",
    }
}

/// Renders (and so validates) the seed files of `rec`.
pub fn render(rec: &VmRecord, cfg: &CloudInitConfig) -> Result<SeedFiles> {
    render_seed(&seed_input(rec, cfg))
        .map_err(|e| EngineError::invalid(seed_field(&e), crate::error::chain(&e)))
}

/// Checks an Ignition config.
pub fn check_ignition(text: &str) -> Result<()> {
    vireo_cloudinit::validate_ignition(text.as_bytes())
        .map(|_| ())
        .map_err(|e| EngineError::invalid("ignition", crate::error::chain(&e)))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            EngineError::internal(format!("writing {}", path.display()), e)
        })
}

/// Writes (or removes) the seed of `rec` in its directory and points `spec.cdroms` at it.
pub fn apply_seed(rec: &mut VmRecord) -> Result<()> {
    let path = rec.dir.join("cidata.iso");
    rec.spec.cdroms.retain(|c| c.name.as_str() != SEED_CDROM);
    let Some(cfg) = rec.cloud_init.clone() else {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    };
    let files = render(rec, &cfg)?;
    let when = IsoTimestamp::from_unix(rec.created_at.timestamp())
        .map_err(|e| EngineError::internal("seed timestamp", e))?;
    let iso = files
        .to_iso(when)
        .map_err(|e| EngineError::internal("writing the cloud-init seed", e))?;
    write_atomically(&path, &iso)?;
    rec.spec.cdroms.push(CdromSpec {
        name: Name::new(SEED_CDROM).map_err(|e| EngineError::internal("seed name", e))?,
        path,
    });
    Ok(())
}

/// Writes an Ignition config into the VM directory and adds its fw_cfg entry.
pub fn apply_ignition(rec: &mut VmRecord, text: &str) -> Result<PathBuf> {
    check_ignition(text)?;
    let path = rec.dir.join("ignition.json");
    write_atomically(&path, text.as_bytes())?;
    rec.spec.fw_cfg.retain(|f| f.name != IGNITION_FW_CFG);
    rec.spec.fw_cfg.push(FwCfgFile {
        name: IGNITION_FW_CFG.into(),
        path: path.clone(),
    });
    Ok(path)
}

/// Copies fw_cfg files that live in another VM's directory (a clone's source) into
/// `rec`'s own directory, so each VM owns its files.
pub fn rehome_fw_cfg(rec: &mut VmRecord) -> Result<()> {
    for f in rec.spec.fw_cfg.iter_mut() {
        if f.path.starts_with(&rec.dir) {
            continue;
        }
        let file_name = f
            .path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("fw_cfg.bin"));
        let dst = rec.dir.join(file_name);
        std::fs::copy(&f.path, &dst)
            .map_err(|e| EngineError::internal(format!("copying {}", f.path.display()), e))?;
        f.path = dst;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;
    use vireo_types::{BootSource, MacAddr, NicBackend, NicSpec, VmSpec, VmState};

    fn rec(dir: &Path) -> VmRecord {
        VmRecord {
            uuid: Uuid::parse_str("0191c7a4-1f3e-7c2a-9d1e-2b3c4d5e6f70").unwrap(),
            name: Name::new("web1").unwrap(),
            project: Name::new("default").unwrap(),
            image: None,
            created_at: Utc::now(),
            spec: VmSpec {
                vcpus: 1,
                memory_mib: 256,
                boot: BootSource::Kernel {
                    kernel: "/k".into(),
                    initrd: None,
                    cmdline: String::new(),
                },
                disks: vec![],
                nics: vec![NicSpec {
                    name: Name::new("eth0").unwrap(),
                    mac: MacAddr::generated([1, 2, 3]),
                    backend: NicBackend::User,
                }],
                cdroms: vec![],
                fw_cfg: vec![],
            },
            networks: vec![],
            state: VmState::Stopped,
            pid: None,
            accel: None,
            node: "n".into(),
            dir: dir.to_path_buf(),
            volumes: vec![],
            template: false,
            template_source: None,
            current_snapshot: None,
            placement: Default::default(),
            cloud_init: None,
        }
    }

    #[test]
    fn instance_id_follows_identity_and_settings() {
        let t = tempfile::tempdir().unwrap();
        let r = rec(t.path());
        let cfg = CloudInitConfig::default();
        let a = seed_input(&r, &cfg);
        assert_eq!(a.hostname, "web1");
        assert_eq!(a.instance_id, seed_input(&r, &cfg).instance_id, "stable");
        let mut clone = r.clone();
        clone.uuid = Uuid::now_v7();
        assert_ne!(seed_input(&clone, &cfg).instance_id, a.instance_id);
        let edited = CloudInitConfig {
            user_data: Some("#cloud-config\nruncmd: [true]\n".into()),
            ..Default::default()
        };
        assert_ne!(seed_input(&r, &edited).instance_id, a.instance_id);
        assert_eq!(a.nics[0].mac, r.spec.nics[0].mac.0);
    }

    #[test]
    fn seed_is_written_attached_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let mut r = rec(t.path());
        r.cloud_init = Some(CloudInitConfig {
            hostname: Some("db-1".into()),
            ..Default::default()
        });
        apply_seed(&mut r).unwrap();
        assert_eq!(r.spec.cdroms.len(), 1);
        let iso = std::fs::read(t.path().join("cidata.iso")).unwrap();
        assert!(iso.len() >= 32 * 1024);
        assert_eq!(&iso[0x8001..0x8006], b"CD001");
        apply_seed(&mut r).unwrap();
        assert_eq!(r.spec.cdroms.len(), 1, "re-applying does not duplicate");
        r.cloud_init = None;
        apply_seed(&mut r).unwrap();
        assert!(r.spec.cdroms.is_empty());
        assert!(!t.path().join("cidata.iso").exists());
    }

    #[test]
    fn bad_settings_name_their_field() {
        let t = tempfile::tempdir().unwrap();
        let r = rec(t.path());
        for (cfg, field) in [
            (
                CloudInitConfig {
                    user_data: Some("#cloud-config\n: : [\n".into()),
                    ..Default::default()
                },
                "cloud_init.user_data",
            ),
            (
                CloudInitConfig {
                    hostname: Some("bad_host!".into()),
                    ..Default::default()
                },
                "cloud_init.hostname",
            ),
            (
                CloudInitConfig {
                    ssh_authorized_keys: vec!["not a key".into()],
                    ..Default::default()
                },
                "cloud_init.ssh_authorized_keys",
            ),
            (
                CloudInitConfig {
                    user_data: Some(format!("#!/bin/sh\n{}", "x".repeat(1 << 20))),
                    ..Default::default()
                },
                "cloud_init.user_data",
            ),
        ] {
            let err = render(&r, &cfg).unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
        assert_eq!(check_ignition("{").unwrap_err().field(), Some("ignition"));
        assert!(check_ignition(r#"{"ignition":{"version":"3.4.0"}}"#).is_ok());
    }
}
