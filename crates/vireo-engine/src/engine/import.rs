//! Importing an OVA package (VMware/VirtualBox export) as a new VM: the package is verified
//! (manifest digests), its disks converted to qcow2 into the VM directory, and the OVF's
//! virtual hardware mapped onto a [`VmSpec`].
//!
//! The mapping is a pure function ([`spec_from_ovf`]) with unit tests; the package itself is
//! parsed by `vireo-image`, which treats it as hostile input.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chrono::Utc;
use uuid::Uuid;
use vireo_api::operations::{Operation, Progress};
use vireo_api::vms::USER_NETWORK;
use vireo_image::ova::{ImportedDisk, OvaPhase};
use vireo_image::ovf::{Firmware as OvfFirmware, OvfDescriptor};
use vireo_types::{
    BootSource, DiskFormat, DiskSpec, Firmware, MacAddr, Name, NicBackend, NicSpec, VmSpec, VmState,
};

use super::*;
use crate::actor::{self, ActionOpts};
use crate::error::{chain, EngineError, Result};
use crate::ops::{Cleanup, OpHandle};
use crate::records::{self, VmRecord};

/// Maps an OVF descriptor and its converted disks onto a VM spec. Disks boot in package
/// order; every NIC joins the built-in user network with a fresh Vireo MAC.
pub fn spec_from_ovf(
    d: &OvfDescriptor,
    disks: &[ImportedDisk],
    mac_seed: [u8; 16],
) -> std::result::Result<(VmSpec, Vec<String>), String> {
    if disks.is_empty() {
        return Err("the package has no disk images".into());
    }
    let memory_mib = d.memory_bytes.div_ceil(1 << 20);
    let mut disk_specs = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        disk_specs.push(DiskSpec {
            name: Name::new(format!("disk{i}")).map_err(|e| e.to_string())?,
            path: disk.path.clone(),
            format: DiskFormat::Qcow2,
            read_only: false,
            boot_index: Some(i as u32 + 1),
        });
    }
    let mut nics = Vec::new();
    let mut networks = Vec::new();
    for i in 0..d.nics.len().min(vireo_types::vm::limits::MAX_NICS) {
        nics.push(NicSpec {
            name: Name::new(format!("eth{i}")).map_err(|e| e.to_string())?,
            mac: MacAddr::generated([
                mac_seed[13],
                mac_seed[14],
                mac_seed[15].wrapping_add(i as u8),
            ]),
            backend: NicBackend::User,
        });
        networks.push(USER_NETWORK.to_string());
    }
    let firmware = match d.firmware {
        OvfFirmware::Bios => Firmware::Bios,
        OvfFirmware::Efi => Firmware::Uefi,
    };
    let spec = VmSpec {
        vcpus: d.cpus.max(1),
        memory_mib,
        boot: BootSource::Disk { firmware },
        disks: disk_specs,
        nics,
        cdroms: vec![],
        fw_cfg: vec![],
    };
    spec.validate()
        .map_err(|e| format!("the package describes hardware Vireo cannot run: {e}"))?;
    Ok((spec, networks))
}

impl Engine {
    /// Where an upload for [`Engine::import_ova`] is written before the operation starts.
    pub fn upload_path(&self) -> Result<PathBuf> {
        let dir = self.inner.cfg.state_dir.join("uploads");
        std::fs::create_dir_all(&dir)
            .map_err(|e| EngineError::internal("creating the upload directory", e))?;
        Ok(dir.join(format!("{}.ova", Uuid::now_v7())))
    }

    /// Imports the OVA at `upload` (a file from [`Engine::upload_path`], removed when done) as
    /// VM `name`.
    pub async fn import_ova(
        &self,
        project: Option<&Name>,
        name: Name,
        start: bool,
        upload: PathBuf,
        requestor: &str,
    ) -> Result<Operation> {
        let p = match self.project(project).await {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_file(&upload);
                return Err(e);
            }
        };
        let reservation = match self.reserve_name(&p, name.as_str()) {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&upload);
                return Err(e);
            }
        };
        let uuid = Uuid::now_v7();
        let dir = self.inner.cfg.state_dir.join("vms").join(uuid.to_string());
        let target = format!("vm/{p}/{name}");
        let op = self
            .inner
            .ops
            .begin("vm.import", &target, requestor, true)
            .await;
        op.journal(Cleanup::RemovePath {
            path: upload.clone(),
        })
        .await;
        let engine = self.clone();
        let requestor = requestor.to_string();
        let op2 = op.clone();
        tokio::spawn(async move {
            let res = engine
                .import_work(&op2, &p, name, uuid, dir, start, &upload, &requestor)
                .await;
            drop(reservation);
            let _ = tokio::fs::remove_file(&upload).await;
            match res {
                Ok(()) => op2.succeed().await,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "OVA import failed");
                    op2.fail(&e.to_string()).await
                }
            }
        });
        Ok(op
            .snapshot()
            .unwrap_or_else(|| super::unreachable_op(op.id)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn import_work(
        &self,
        op: &OpHandle,
        project: &str,
        name: Name,
        uuid: Uuid,
        dir: PathBuf,
        start: bool,
        upload: &Path,
        requestor: &str,
    ) -> Result<()> {
        op.stage("verifying the package and converting its disks");
        op.journal(Cleanup::RemovePath { path: dir.clone() }).await;
        std::fs::create_dir_all(&dir)
            .map_err(|e| EngineError::internal("creating the VM directory", e))?;
        super::restrict_dir(&dir);
        let (upload_p, dir_p, op_p) = (upload.to_path_buf(), dir.clone(), op.clone());
        let imported = tokio::task::spawn_blocking(move || {
            let cancel = AtomicBool::new(false);
            let mut report = |p: vireo_image::ova::OvaProgress| {
                if op_p.is_cancelled() {
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let stage = match &p.phase {
                    OvaPhase::Extracting => "extracting".to_string(),
                    OvaPhase::Converting { disk } => format!("converting disk {disk}"),
                    OvaPhase::Exporting { disk } => format!("exporting disk {disk}"),
                    OvaPhase::Packing => "packing".to_string(),
                };
                op_p.progress(Progress {
                    percent: (p.total_bytes > 0)
                        .then(|| (p.done_bytes as f64 * 100.0 / p.total_bytes as f64) as f32),
                    bytes_done: Some(p.done_bytes),
                    bytes_total: Some(p.total_bytes),
                    stage: Some(stage),
                });
            };
            vireo_image::ova::import_with(
                &upload_p,
                &dir_p,
                &vireo_image::Limits::default(),
                &mut report,
                &cancel,
            )
        })
        .await
        .map_err(|e| EngineError::internal("running the OVA import", e))?
        .map_err(|e| {
            EngineError::invalid(
                "file",
                format!("the OVA package was refused: {}", chain(&e)),
            )
        })?;
        op.log(format!(
            "package {:?}: {} vCPUs, {} MiB, {} disks, manifest {:?}",
            imported.descriptor.name,
            imported.descriptor.cpus,
            imported.descriptor.memory_bytes >> 20,
            imported.disks.len(),
            imported.manifest
        ));
        let (mut spec, networks) =
            spec_from_ovf(&imported.descriptor, &imported.disks, *uuid.as_bytes())
                .map_err(|m| EngineError::invalid("file", m))?;
        op.stage("moving the disks into the storage pool");
        let mut volumes = Vec::new();
        for d in spec.disks.iter_mut() {
            let (vol, path) = self
                .adopt_vm_volume(
                    op,
                    vireo_api::storage::DEFAULT_POOL,
                    project,
                    &name,
                    &d.name,
                    d.path.clone(),
                )
                .await?;
            d.path = path;
            volumes.push(crate::records::DiskVolume {
                disk: d.name.clone(),
                pool: vol.pool.clone(),
                volume: vol.name.clone(),
            });
        }
        let record = VmRecord {
            uuid,
            name: name.clone(),
            project: Name::new(project).map_err(|e| EngineError::internal("project name", e))?,
            image: None,
            created_at: Utc::now(),
            spec,
            networks,
            state: VmState::Stopped,
            pid: None,
            accel: None,
            node: self.inner.cfg.node.clone(),
            dir,
            volumes,
            template: false,
            template_source: None,
            current_snapshot: None,
            placement: Default::default(),
            cloud_init: None,
        };
        op.journal(Cleanup::DeleteKey {
            key: records::vm_key(project, name.as_str()),
        })
        .await;
        let rev = self.inner.db.create_vm(&record).await?;
        let key = (project.to_string(), name.to_string());
        let target = record.target();
        let h = actor::spawn(
            record,
            rev,
            None,
            self.inner.db.clone(),
            self.inner.hv.clone(),
            self.inner.events.clone(),
        );
        self.lock_vms().insert(key.clone(), h.clone());
        self.inner.events.emit(
            "vm.created",
            Some(project),
            &target,
            requestor,
            serde_json::json!({"source": "ova"}),
        );
        if start {
            op.stage("starting");
            if let Err(e) = h
                .act(
                    vireo_types::VmAction::Start,
                    ActionOpts {
                        requestor: requestor.to_string(),
                        ..Default::default()
                    },
                )
                .await
            {
                self.lock_vms().remove(&key);
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_image::ovf::OvfNic;
    use vireo_image::Format;

    fn disk(i: usize) -> ImportedDisk {
        ImportedDisk {
            disk_id: format!("vmdisk{i}"),
            member: format!("d{i}.vmdk"),
            path: PathBuf::from(format!("/s/vms/x/disk{i}.qcow2")),
            source_format: Format::Vmdk,
            virtual_size: 1 << 30,
        }
    }

    fn nic() -> OvfNic {
        OvfNic {
            network: Some("VM Network".into()),
            model: Some("VmxNet3".into()),
            mac: None,
        }
    }

    #[test]
    fn maps_hardware() {
        let d = OvfDescriptor {
            name: "web".into(),
            cpus: 2,
            memory_bytes: 1536 << 20,
            firmware: OvfFirmware::Efi,
            nics: vec![nic(), nic()],
            ..Default::default()
        };
        let (spec, nets) = spec_from_ovf(&d, &[disk(0), disk(1)], [7; 16]).unwrap();
        assert_eq!(spec.vcpus, 2);
        assert_eq!(spec.memory_mib, 1536);
        assert_eq!(
            spec.boot,
            BootSource::Disk {
                firmware: Firmware::Uefi
            }
        );
        assert_eq!(
            spec.disks.iter().map(|d| d.boot_index).collect::<Vec<_>>(),
            vec![Some(1), Some(2)]
        );
        assert_eq!(spec.nics.len(), 2);
        assert_ne!(spec.nics[0].mac, spec.nics[1].mac);
        assert_eq!(nets, vec!["user", "user"]);
    }

    #[test]
    fn rejects_impossible_hardware() {
        let mut d = OvfDescriptor {
            cpus: 1,
            memory_bytes: 1 << 20,
            ..Default::default()
        };
        assert!(spec_from_ovf(&d, &[disk(0)], [0; 16])
            .unwrap_err()
            .contains("memory_mib"));
        d.memory_bytes = 512 << 20;
        d.cpus = 4096;
        assert!(spec_from_ovf(&d, &[disk(0)], [0; 16])
            .unwrap_err()
            .contains("vcpus"));
        d.cpus = 1;
        assert!(spec_from_ovf(&d, &[], [0; 16])
            .unwrap_err()
            .contains("no disk"));
        // Memory rounds up to whole MiB.
        d.memory_bytes = (256 << 20) + 1;
        assert_eq!(
            spec_from_ovf(&d, &[disk(0)], [0; 16]).unwrap().0.memory_mib,
            257
        );
    }
}
