//! Rendering an [`OvfDescriptor`] as an OVF 1.0 envelope in VMware's dialect (pure).
//!
//! Invariants: every text and attribute value is XML-escaped; rasd elements appear in schema
//! (alphabetical) order; what [`render`] writes parses back to [`with_export_defaults`] of its
//! input (round-trip and golden tests below).

use super::{ControllerKind, Firmware, OvfDescriptor};

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// `d` with every field [`render`] would otherwise default filled in (hardware family
/// `vmx-13`, OS id 1 "Other", SCSI `lsilogic` or SATA `vmware.sata.ahci` controllers, disk
/// addresses in order, `VmxNet3` NICs, every NIC's network listed), so that what an export
/// returns equals what parsing its envelope gives back.
pub fn with_export_defaults(d: &OvfDescriptor) -> OvfDescriptor {
    let mut d = d.clone();
    d.virtual_system_type.get_or_insert_with(|| "vmx-13".into());
    d.os.cim_id.get_or_insert(1);
    for (i, disk) in d.disks.iter_mut().enumerate() {
        let kind = *disk.controller.get_or_insert(ControllerKind::Scsi);
        if disk.controller_model.is_none() {
            disk.controller_model = match kind {
                ControllerKind::Scsi => Some("lsilogic".into()),
                ControllerKind::Sata => Some("vmware.sata.ahci".into()),
                ControllerKind::Ide | ControllerKind::Nvme => None,
            };
        }
        disk.address_on_parent.get_or_insert(i as u32);
    }
    for nic in &mut d.nics {
        nic.model.get_or_insert_with(|| "VmxNet3".into());
        if let Some(n) = &nic.network {
            if !d.networks.contains(n) {
                d.networks.push(n.clone());
            }
        }
    }
    d
}

/// Renders `d` as an OVF 1.0 envelope (pure; the inverse of [`parse`](fn@super::parse) for
/// what Vireo exports).
/// Missing optional fields get the defaults of [`with_export_defaults`].
pub fn render(d: &OvfDescriptor) -> String {
    let d = &with_export_defaults(d);
    let mut x = String::new();
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str("<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\" xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\" xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData\" xmlns:vmw=\"http://www.vmware.com/schema/ovf\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n");
    x.push_str("  <References>\n");
    for f in &d.files {
        x.push_str(&format!(
            "    <File ovf:href=\"{}\" ovf:id=\"{}\"",
            esc(&f.href),
            esc(&f.id)
        ));
        if let Some(s) = f.size {
            x.push_str(&format!(" ovf:size=\"{s}\""));
        }
        if let Some(c) = &f.compression {
            x.push_str(&format!(" ovf:compression=\"{}\"", esc(c)));
        }
        x.push_str("/>\n");
    }
    x.push_str("  </References>\n");
    x.push_str("  <DiskSection>\n    <Info>Virtual disk information</Info>\n");
    for disk in &d.disks {
        x.push_str(&format!(
            "    <Disk ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"{}\"",
            disk.capacity_bytes,
            esc(&disk.disk_id)
        ));
        if let Some(r) = &disk.file_ref {
            x.push_str(&format!(" ovf:fileRef=\"{}\"", esc(r)));
        }
        if let Some(f) = &disk.format {
            x.push_str(&format!(" ovf:format=\"{}\"", esc(f)));
        }
        if let Some(p) = disk.populated_size {
            x.push_str(&format!(" ovf:populatedSize=\"{p}\""));
        }
        x.push_str("/>\n");
    }
    x.push_str("  </DiskSection>\n");
    x.push_str("  <NetworkSection>\n    <Info>The list of logical networks</Info>\n");
    for n in &d.networks {
        x.push_str(&format!(
            "    <Network ovf:name=\"{0}\">\n      <Description>The {0} network</Description>\n    </Network>\n",
            esc(n)
        ));
    }
    x.push_str("  </NetworkSection>\n");
    x.push_str(&format!("  <VirtualSystem ovf:id=\"{}\">\n", esc(&d.name)));
    x.push_str("    <Info>A virtual machine</Info>\n");
    x.push_str(&format!("    <Name>{}</Name>\n", esc(&d.name)));
    x.push_str(&format!(
        "    <OperatingSystemSection ovf:id=\"{}\"",
        d.os.cim_id.unwrap_or(1)
    ));
    if let Some(t) = &d.os.vmware_os_type {
        x.push_str(&format!(" vmw:osType=\"{}\"", esc(t)));
    }
    x.push_str(">\n      <Info>The kind of installed guest operating system</Info>\n");
    if let Some(desc) = &d.os.description {
        x.push_str(&format!("      <Description>{}</Description>\n", esc(desc)));
    }
    x.push_str("    </OperatingSystemSection>\n");
    x.push_str("    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements</Info>\n");
    x.push_str("      <System>\n        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n        <vssd:InstanceID>0</vssd:InstanceID>\n");
    x.push_str(&format!(
        "        <vssd:VirtualSystemIdentifier>{}</vssd:VirtualSystemIdentifier>\n",
        esc(&d.name)
    ));
    x.push_str(&format!(
        "        <vssd:VirtualSystemType>{}</vssd:VirtualSystemType>\n      </System>\n",
        esc(d.virtual_system_type.as_deref().unwrap_or("vmx-13"))
    ));
    let mut instance = 0u32;
    let mut next_id = || {
        instance += 1;
        instance
    };
    // rasd elements must appear in schema (alphabetical) order.
    let item = |fields: &[(&str, String)]| -> String {
        let mut s = String::from("      <Item>\n");
        for (k, v) in fields {
            s.push_str(&format!("        <rasd:{k}>{}</rasd:{k}>\n", esc(v)));
        }
        s.push_str("      </Item>\n");
        s
    };
    x.push_str(&item(&[
        ("AllocationUnits", "hertz * 10^6".into()),
        ("Description", "Number of Virtual CPUs".into()),
        ("ElementName", format!("{} virtual CPU(s)", d.cpus)),
        ("InstanceID", next_id().to_string()),
        ("ResourceType", "3".into()),
        ("VirtualQuantity", d.cpus.to_string()),
    ]));
    let (units, quantity, unit_name) = if d.memory_bytes.is_multiple_of(1 << 20) {
        ("byte * 2^20", d.memory_bytes >> 20, "MB")
    } else {
        ("byte", d.memory_bytes, " bytes")
    };
    x.push_str(&item(&[
        ("AllocationUnits", units.into()),
        ("Description", "Memory Size".into()),
        ("ElementName", format!("{quantity}{unit_name} of memory")),
        ("InstanceID", next_id().to_string()),
        ("ResourceType", "4".into()),
        ("VirtualQuantity", quantity.to_string()),
    ]));
    // One controller per kind used (SCSI lsilogic when a disk names none).
    let mut controller_ids: Vec<(ControllerKind, Option<String>, u32)> = Vec::new();
    let mut disk_items = Vec::new();
    for (i, disk) in d.disks.iter().enumerate() {
        let kind = disk.controller.unwrap_or(ControllerKind::Scsi);
        let model = disk.controller_model.clone().or_else(|| match kind {
            ControllerKind::Scsi => Some("lsilogic".to_string()),
            ControllerKind::Sata => Some("vmware.sata.ahci".to_string()),
            _ => None,
        });
        let parent = match controller_ids
            .iter()
            .find(|(k, m, _)| *k == kind && *m == model)
        {
            Some((_, _, id)) => *id,
            None => {
                let id = next_id();
                let (rtype, name) = match kind {
                    ControllerKind::Ide => ("5", "IDE Controller"),
                    ControllerKind::Scsi => ("6", "SCSI Controller"),
                    ControllerKind::Sata => ("20", "SATA Controller"),
                    ControllerKind::Nvme => ("20", "NVMe Controller"),
                };
                let mut fields = vec![
                    ("Description", name.to_string()),
                    ("ElementName", format!("{name} {}", controller_ids.len())),
                    ("InstanceID", id.to_string()),
                ];
                if let Some(m) = &model {
                    fields.push(("ResourceSubType", m.clone()));
                }
                fields.push(("ResourceType", rtype.to_string()));
                x.push_str(&item(&fields));
                controller_ids.push((kind, model.clone(), id));
                id
            }
        };
        disk_items.push((disk, parent, i));
    }
    for (disk, parent, i) in disk_items {
        x.push_str(&item(&[
            (
                "AddressOnParent",
                disk.address_on_parent.unwrap_or(i as u32).to_string(),
            ),
            ("ElementName", format!("Hard disk {}", i + 1)),
            ("HostResource", format!("ovf:/disk/{}", disk.disk_id)),
            ("InstanceID", next_id().to_string()),
            ("Parent", parent.to_string()),
            ("ResourceType", "17".into()),
        ]));
    }
    for (i, nic) in d.nics.iter().enumerate() {
        let mut fields = Vec::new();
        if let Some(mac) = &nic.mac {
            fields.push(("Address", mac.clone()));
        }
        fields.push(("AddressOnParent", (7 + i).to_string()));
        fields.push(("AutomaticAllocation", "true".into()));
        if let Some(n) = &nic.network {
            fields.push(("Connection", n.clone()));
        }
        fields.push(("ElementName", format!("Network adapter {}", i + 1)));
        fields.push(("InstanceID", next_id().to_string()));
        fields.push((
            "ResourceSubType",
            nic.model.clone().unwrap_or_else(|| "VmxNet3".into()),
        ));
        fields.push(("ResourceType", "10".into()));
        x.push_str(&item(&fields));
    }
    let fw = match d.firmware {
        Firmware::Bios => "bios",
        Firmware::Efi => "efi",
    };
    x.push_str(&format!(
        "      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"{fw}\"/>\n"
    ));
    x.push_str("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Limits;
    use crate::ovf::{parse, OsInfo, OvfDisk, OvfFile, OvfNic};

    fn sample() -> OvfDescriptor {
        OvfDescriptor {
            name: "web <1>".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            firmware: Firmware::Efi,
            os: OsInfo {
                cim_id: Some(101),
                vmware_os_type: Some("otherLinux64Guest".into()),
                description: None,
            },
            virtual_system_type: None,
            files: vec![OvfFile {
                id: "file1".into(),
                href: "web-disk1.vmdk".into(),
                size: Some(4096),
                compression: None,
            }],
            disks: vec![OvfDisk {
                disk_id: "vmdisk1".into(),
                file_ref: Some("file1".into()),
                capacity_bytes: 8 << 30,
                populated_size: None,
                format: Some(
                    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
                        .into(),
                ),
                controller: Some(ControllerKind::Scsi),
                controller_model: Some("lsilogic".into()),
                address_on_parent: Some(0),
            }],
            nics: vec![OvfNic {
                network: Some("lan".into()),
                model: Some("E1000".into()),
                mac: None,
            }],
            networks: vec!["lan".into()],
        }
    }

    #[test]
    fn render_round_trips() {
        let d = sample();
        let xml = render(&d);
        let mut back = parse(xml.as_bytes(), &Limits::default()).unwrap();
        back.virtual_system_type = None;
        assert_eq!(back, d);
        let mut bios = d.clone();
        bios.firmware = Firmware::Bios;
        bios.memory_bytes = 1000;
        let back = parse(render(&bios).as_bytes(), &Limits::default()).unwrap();
        assert_eq!(back.firmware, Firmware::Bios);
        assert_eq!(back.memory_bytes, 1000);
    }

    #[test]
    fn render_golden() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/ovf_render_golden.ovf"
        );
        if std::env::var_os("VIREO_BLESS").is_some() {
            std::fs::write(path, render(&sample())).unwrap();
        }
        assert_eq!(render(&sample()), std::fs::read_to_string(path).unwrap());
    }
}
