//! Exporting a stopped VM as an OVA package: OVF envelope (from the VM spec, a pure
//! function), stream-optimized VMDKs written by the image engine, SHA-256 manifest.

use std::path::PathBuf;

use uuid::Uuid;
use vireo_api::vms::USER_NETWORK;
use vireo_image::ovf::{Firmware as OvfFirmware, OvfDescriptor};
use vireo_types::{BootSource, Firmware, Name, VmSpec, VmState};

use super::*;
use crate::error::{EngineError, Result};

/// The OVF descriptor Vireo writes for a VM it exports.
pub fn ovf_from_spec(name: &str, spec: &VmSpec, networks: &[String]) -> OvfDescriptor {
    OvfDescriptor {
        name: name.to_string(),
        cpus: spec.vcpus,
        memory_bytes: spec.memory_mib << 20,
        firmware: match &spec.boot {
            BootSource::Disk {
                firmware: Firmware::Uefi,
            } => OvfFirmware::Efi,
            _ => OvfFirmware::Bios,
        },
        nics: spec
            .nics
            .iter()
            .zip(networks.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(n, net)| vireo_image::ovf::OvfNic {
                network: Some(net.cloned().unwrap_or_else(|| USER_NETWORK.to_string())),
                model: Some("virtio".into()),
                mac: Some(n.mac.to_string()),
            })
            .collect(),
        ..Default::default()
    }
}

impl Engine {
    /// Writes VM `name` (stopped) as an OVA package — OVF envelope, stream-optimized VMDKs,
    /// SHA-256 manifest — into a temporary file under the state directory and returns its
    /// path; the caller streams and removes it.
    pub async fn export_ova(&self, project: Option<&Name>, name: &str) -> Result<PathBuf> {
        let p = self.project(project).await?;
        let h = self.handle(&p, name)?;
        let v = h.view();
        if v.record.state != VmState::Stopped {
            return Err(EngineError::Conflict(format!(
                "VM {name} is {}; stop it before exporting so its disks are consistent",
                v.record.state
            )));
        }
        let dir = self.inner.cfg.state_dir.join("exports");
        std::fs::create_dir_all(&dir)
            .map_err(|e| EngineError::internal("creating the export directory", e))?;
        let out = dir.join(format!("{name}-{}.ova", Uuid::now_v7()));
        let rec = v.record.clone();
        let state_dir = self.inner.cfg.state_dir.clone();
        let out2 = out.clone();
        tokio::task::spawn_blocking(move || {
            let policy = vireo_image::PathPolicy {
                allowed_dirs: vec![state_dir],
            };
            let limits = vireo_image::Limits::default();
            let mut sources = Vec::new();
            for d in &rec.spec.disks {
                let src = vireo_image::detect::open(&d.path, &limits, &policy)?;
                sources.push((d.name.to_string(), src));
            }
            let disks: Vec<(&str, &dyn vireo_image::BlockSource)> = sources
                .iter()
                .map(|(n, s)| (n.as_str(), s.as_ref()))
                .collect();
            let descriptor = ovf_from_spec(rec.name.as_str(), &rec.spec, &rec.networks);
            vireo_image::ova::export(&disks, &descriptor, &out2)
        })
        .await
        .map_err(|e| EngineError::internal("running the export", e))?
        .map_err(|e| EngineError::internal(format!("exporting VM {name}"), e))?;
        Ok(out)
    }
}
