//! Streaming OVF parser: quick-xml events over untrusted input, collected per section, then
//! joined into an [`OvfDescriptor`] by [`finish`].
//!
//! Invariants (see the module above for the full list): a DTD is refused on its first event,
//! only predefined entities and character references are resolved, nesting is capped at
//! [`MAX_DEPTH`] and hardware items at [`MAX_ITEMS`], names are matched by local name, and
//! unknown sections marked required are refused.

use std::collections::BTreeMap;

use quick_xml::events::Event;
use quick_xml::Reader;

use super::units::{parse_u64, scaled};
use super::{
    invalid, ControllerKind, Firmware, OvfDescriptor, OvfDisk, OvfFile, OvfNic, MAX_DEPTH,
    MAX_ITEMS,
};
use crate::device::Limits;
use crate::error::ImageError;

/// Local part of a possibly prefixed XML name.
fn local(name: &[u8]) -> String {
    let name = match name.iter().rposition(|&b| b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    };
    String::from_utf8_lossy(name).into_owned()
}

/// Attributes of an element, by local name (later duplicates win).
fn attributes(
    e: &quick_xml::events::BytesStart<'_>,
) -> Result<BTreeMap<String, String>, ImageError> {
    let mut out = BTreeMap::new();
    for a in e.attributes() {
        let a = a.map_err(|err| invalid(format!("malformed attribute: {err}")))?;
        let value = a.unescape_value().map_err(|err| {
            invalid(format!(
                "attribute value: {err} (only predefined entities are allowed)"
            ))
        })?;
        out.insert(local(a.key.as_ref()), value.into_owned());
    }
    Ok(out)
}

/// Resolves `&name;` references outside a DTD: predefined entities and character references.
fn resolve_reference(r: &quick_xml::events::BytesRef<'_>) -> Result<char, ImageError> {
    if let Some(c) = r
        .resolve_char_ref()
        .map_err(|e| invalid(format!("character reference: {e}")))?
    {
        return Ok(c);
    }
    let name = r
        .decode()
        .map_err(|e| invalid(format!("entity reference: {e}")))?;
    match name.as_ref() {
        "amp" => Ok('&'),
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "quot" => Ok('"'),
        "apos" => Ok('\''),
        other => Err(invalid(format!(
            "entity reference &{other}; is refused (no DTD entities are expanded)"
        ))),
    }
}

/// Sections Vireo reads or may ignore although a producer marks them required.
const KNOWN_SECTIONS: [&str; 10] = [
    "DiskSection",
    "NetworkSection",
    "VirtualSystem",
    "VirtualHardwareSection",
    "OperatingSystemSection",
    "AnnotationSection",
    "ProductSection",
    "EulaSection",
    "StartupSection",
    "DeploymentOptionSection",
];

/// One hardware item being collected: its child elements' text by local name.
type ItemFields = BTreeMap<String, String>;

#[derive(Debug, Default)]
struct Parse {
    desc: OvfDescriptor,
    systems: usize,
    items: Vec<ItemFields>,
    raw_disks: Vec<BTreeMap<String, String>>,
    firmware_config: Option<String>,
    system_id: Option<String>,
}

/// Parses an OVF envelope.
pub fn parse(xml: &[u8], limits: &Limits) -> Result<OvfDescriptor, ImageError> {
    if xml.len() as u64 > limits.max_descriptor_bytes {
        return Err(ImageError::LimitExceeded {
            what: "OVF descriptor",
            requested: xml.len() as u64,
            limit: limits.max_descriptor_bytes,
        });
    }
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut st = Parse::default();
    let mut item: Option<ItemFields> = None;
    let mut saw_envelope = false;
    let mut buf = Vec::new();
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| {
            invalid(format!(
                "XML error at byte {}: {e}",
                reader.buffer_position()
            ))
        })?;
        match event {
            Event::DocType(_) => {
                return Err(invalid("document type declarations (DTDs) are refused"));
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                let name = local(e.name().as_ref());
                let attrs = attributes(e)?;
                if stack.is_empty() {
                    if name != "Envelope" {
                        return Err(invalid(format!("root element is {name}, not Envelope")));
                    }
                    saw_envelope = true;
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(invalid(format!("elements nest deeper than {MAX_DEPTH}")));
                }
                if (name.ends_with("Section") || name == "VirtualSystemCollection")
                    && !KNOWN_SECTIONS.contains(&name.as_str())
                    && attrs.get("required").is_some_and(|v| v == "true")
                {
                    return Err(ImageError::Unsupported {
                        format: "ovf",
                        detail: format!("required section {name}"),
                    });
                }
                start_element(&mut st, &stack, &name, &attrs, &mut item)?;
                text.clear();
                if empty {
                    end_element(&mut st, &stack, &name, "", &mut item)?;
                } else {
                    stack.push(name);
                }
            }
            Event::End(_) => {
                let Some(name) = stack.pop() else {
                    return Err(invalid("unbalanced end tag"));
                };
                let content = std::mem::take(&mut text);
                end_element(&mut st, &stack, &name, content.trim(), &mut item)?;
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| invalid(format!("text: {e}")))?;
                text.push_str(&s);
            }
            Event::CData(t) => {
                let s = t.decode().map_err(|e| invalid(format!("CDATA: {e}")))?;
                text.push_str(&s);
            }
            Event::GeneralRef(r) => text.push(resolve_reference(&r)?),
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
        buf.clear();
    }
    if !saw_envelope || !stack.is_empty() {
        return Err(invalid("document is not a complete OVF Envelope"));
    }
    finish(st)
}

fn start_element(
    st: &mut Parse,
    stack: &[String],
    name: &str,
    attrs: &BTreeMap<String, String>,
    item: &mut Option<ItemFields>,
) -> Result<(), ImageError> {
    let parent = stack.last().map(String::as_str).unwrap_or("");
    match (parent, name) {
        ("References", "File") => {
            let get = |k: &str| attrs.get(k).cloned();
            let (Some(id), Some(href)) = (get("id"), get("href")) else {
                return Err(invalid("File without ovf:id or ovf:href"));
            };
            let size = match attrs.get("size") {
                Some(s) => Some(parse_u64("file size", s)?),
                None => None,
            };
            st.desc.files.push(OvfFile {
                id,
                href,
                size,
                compression: get("compression"),
            });
        }
        ("DiskSection", "Disk") => st.raw_disks.push(attrs.clone()),
        ("NetworkSection", "Network") => {
            if let Some(n) = attrs.get("name") {
                st.desc.networks.push(n.clone());
            }
        }
        (_, "VirtualSystem") => {
            st.systems += 1;
            if st.systems > 1 {
                return Err(ImageError::Unsupported {
                    format: "ovf",
                    detail: "packages with more than one virtual system".into(),
                });
            }
            st.system_id = attrs.get("id").cloned();
        }
        ("VirtualSystem", "OperatingSystemSection") => {
            if let Some(id) = attrs.get("id") {
                st.desc.os.cim_id = Some(
                    id.trim()
                        .parse()
                        .map_err(|_| invalid(format!("operating system id {id:?}")))?,
                );
            }
            st.desc.os.vmware_os_type = attrs.get("osType").cloned();
        }
        ("VirtualHardwareSection", "Item" | "StorageItem" | "EthernetPortItem") => {
            if st.items.len() >= MAX_ITEMS {
                return Err(invalid(format!("more than {MAX_ITEMS} hardware items")));
            }
            *item = Some(ItemFields::new());
        }
        (_, "Config" | "ExtraConfig")
            if stack.iter().any(|s| s == "VirtualHardwareSection")
                && attrs.get("key").is_some_and(|k| k == "firmware") =>
        {
            st.firmware_config = attrs.get("value").cloned();
        }
        // VirtualBox writes <Firmware type="EFI"/> in its own machine section.
        (_, "Firmware") => {
            if let Some(t) = attrs.get("type") {
                st.firmware_config = Some(t.clone());
            }
        }
        _ => {}
    }
    Ok(())
}

fn end_element(
    st: &mut Parse,
    stack: &[String],
    name: &str,
    text: &str,
    item: &mut Option<ItemFields>,
) -> Result<(), ImageError> {
    let parent = stack.last().map(String::as_str).unwrap_or("");
    match (parent, name) {
        ("VirtualSystem", "Name") => st.desc.name = text.to_string(),
        ("OperatingSystemSection", "Description") => {
            st.desc.os.description = Some(text.to_string())
        }
        ("System", "VirtualSystemType") => st.desc.virtual_system_type = Some(text.to_string()),
        ("VirtualHardwareSection", "Item" | "StorageItem" | "EthernetPortItem") => {
            if let Some(fields) = item.take() {
                st.items.push(fields);
            }
        }
        ("Item" | "StorageItem" | "EthernetPortItem", field) => {
            if let Some(fields) = item.as_mut() {
                fields.insert(field.to_string(), text.to_string());
            }
        }
        _ => {}
    }
    Ok(())
}

/// Joins disks with their hardware items and derives CPU, memory, NICs and firmware.
fn finish(mut st: Parse) -> Result<OvfDescriptor, ImageError> {
    if st.systems == 0 {
        return Err(invalid("envelope has no VirtualSystem"));
    }
    let desc = &mut st.desc;
    if desc.name.is_empty() {
        desc.name = st.system_id.clone().unwrap_or_default();
    }
    for raw in &st.raw_disks {
        let Some(disk_id) = raw.get("diskId").cloned() else {
            return Err(invalid("Disk without ovf:diskId"));
        };
        let capacity = raw
            .get("capacity")
            .ok_or_else(|| invalid(format!("disk {disk_id} has no capacity")))?;
        if capacity.contains("${") {
            return Err(ImageError::Unsupported {
                format: "ovf",
                detail: format!("disk {disk_id} capacity set by a property ({capacity})"),
            });
        }
        let units = raw
            .get("capacityAllocationUnits")
            .map(String::as_str)
            .unwrap_or("byte");
        let capacity_bytes = scaled("disk capacity", capacity, units)?;
        let populated_size = match raw.get("populatedSize") {
            Some(p) => Some(parse_u64("populated size", p)?),
            None => None,
        };
        if let Some(r) = raw.get("fileRef") {
            if !desc.files.iter().any(|f| &f.id == r) {
                return Err(invalid(format!(
                    "disk {disk_id} refers to unknown file {r}"
                )));
            }
        }
        desc.disks.push(OvfDisk {
            disk_id,
            file_ref: raw.get("fileRef").cloned(),
            capacity_bytes,
            populated_size,
            format: raw.get("format").cloned(),
            controller: None,
            controller_model: None,
            address_on_parent: None,
        });
    }
    let controllers: BTreeMap<String, (ControllerKind, Option<String>)> = st
        .items
        .iter()
        .filter_map(|f| {
            let kind = match f.get("ResourceType").map(|s| s.trim()) {
                Some("5") => ControllerKind::Ide,
                Some("6") => ControllerKind::Scsi,
                Some("20") => match f.get("ResourceSubType").map(|s| s.to_ascii_lowercase()) {
                    Some(s) if s.contains("nvme") => ControllerKind::Nvme,
                    _ => ControllerKind::Sata,
                },
                _ => return None,
            };
            Some((
                f.get("InstanceID")?.clone(),
                (kind, f.get("ResourceSubType").cloned()),
            ))
        })
        .collect();
    let mut cpus = None;
    let mut memory = None;
    for f in &st.items {
        let field = |k: &str| f.get(k).map(String::as_str);
        match field("ResourceType").map(str::trim) {
            Some("3") => {
                let q = field("VirtualQuantity")
                    .ok_or_else(|| invalid("CPU item without VirtualQuantity"))?;
                let n = parse_u64("CPU count", q)?;
                cpus = Some(
                    u32::try_from(n)
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| invalid(format!("CPU count {n}")))?,
                );
            }
            Some("4") => {
                let q = field("VirtualQuantity")
                    .ok_or_else(|| invalid("memory item without VirtualQuantity"))?;
                // DSP0243 requires AllocationUnits on memory; producers that omit it mean MiB.
                let units = field("AllocationUnits").unwrap_or("byte * 2^20");
                memory = Some(scaled("memory", q, units)?);
            }
            Some("10") => desc.nics.push(OvfNic {
                network: field("Connection")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                model: field("ResourceSubType")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                mac: field("Address")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            }),
            Some("17") => {
                let Some(host) = field("HostResource") else {
                    continue;
                };
                // "ovf:/disk/ID" (or the older "/disk/ID").
                let Some(id) = host.rsplit_once("/disk/").map(|(_, id)| id) else {
                    continue;
                };
                if let Some(d) = desc.disks.iter_mut().find(|d| d.disk_id == id) {
                    if let Some((kind, model)) = field("Parent").and_then(|p| controllers.get(p)) {
                        d.controller = Some(*kind);
                        d.controller_model = model.clone();
                    }
                    d.address_on_parent =
                        field("AddressOnParent").and_then(|a| a.trim().parse().ok());
                }
            }
            _ => {}
        }
    }
    desc.cpus = cpus.unwrap_or(1);
    desc.memory_bytes = memory.ok_or_else(|| invalid("virtual hardware has no memory item"))?;
    desc.firmware = match st.firmware_config.as_deref().map(str::to_ascii_lowercase) {
        Some(f) if f.starts_with("efi") || f == "uefi" => Firmware::Efi,
        _ => Firmware::Bios,
    };
    Ok(st.desc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovf::render;

    /// Shaped like what VMware's ovftool exports.
    const VMWARE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ovf_vmware.ovf"
    ));

    #[test]
    fn parses_a_vmware_envelope() {
        let d = parse(VMWARE.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(d.name, "web & co");
        assert_eq!(d.cpus, 4);
        assert_eq!(d.memory_bytes, 4 << 30);
        assert_eq!(d.firmware, Firmware::Efi);
        assert_eq!(d.os.cim_id, Some(96));
        assert_eq!(d.os.vmware_os_type.as_deref(), Some("debian11_64Guest"));
        assert_eq!(
            d.os.description.as_deref(),
            Some("Debian GNU/Linux 11 (64-bit)")
        );
        assert_eq!(d.virtual_system_type.as_deref(), Some("vmx-19"));
        assert_eq!(d.networks, vec!["VM Network", "backend & db"]);
        assert_eq!(d.files.len(), 2);
        assert_eq!(d.files[0].size, Some(68526592));
        assert_eq!(d.disks.len(), 2);
        assert_eq!(d.disks[0].capacity_bytes, 16 << 30);
        assert_eq!(d.disks[0].controller, Some(ControllerKind::Scsi));
        assert_eq!(d.disks[0].controller_model.as_deref(), Some("VirtualSCSI"));
        assert_eq!(d.disks[1].capacity_bytes, 512 << 20);
        assert_eq!(d.disks[1].controller, Some(ControllerKind::Ide));
        assert_eq!(d.disks[1].address_on_parent, Some(1));
        assert_eq!(d.disk_file(&d.disks[1]).unwrap().href, "web-disk2.vmdk");
        assert_eq!(d.nics.len(), 2);
        assert_eq!(d.nics[0].mac.as_deref(), Some("00:50:56:aa:bb:cc"));
        assert_eq!(d.nics[1].network.as_deref(), Some("backend & db"));
        assert_eq!(d.nics[1].model.as_deref(), Some("E1000"));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["firmware"], "efi");
        assert_eq!(serde_json::from_value::<OvfDescriptor>(json).unwrap(), d);
    }

    /// OVF 2.0 style with StorageItem/EthernetPortItem and VirtualBox's firmware element.
    #[test]
    fn parses_ovf2_items_and_virtualbox_firmware() {
        let xml = r#"<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
 <ovf:References><ovf:File ovf:id="f" ovf:href="d.vmdk"/></ovf:References>
 <ovf:DiskSection><ovf:Disk ovf:diskId="d1" ovf:fileRef="f" ovf:capacity="1073741824"/></ovf:DiskSection>
 <ovf:VirtualSystem ovf:id="vbox-vm">
  <ovf:VirtualHardwareSection>
   <ovf:Item><rasd:ResourceType xmlns:rasd="x">4</rasd:ResourceType><rasd:VirtualQuantity xmlns:rasd="x">2048</rasd:VirtualQuantity><rasd:AllocationUnits xmlns:rasd="x">MegaBytes</rasd:AllocationUnits></ovf:Item>
   <ovf:Item><rasd:ResourceType xmlns:rasd="x">20</rasd:ResourceType><rasd:ResourceSubType xmlns:rasd="x">AHCI</rasd:ResourceSubType><rasd:InstanceID xmlns:rasd="x">5</rasd:InstanceID></ovf:Item>
   <ovf:StorageItem><sasd:ResourceType xmlns:sasd="y">17</sasd:ResourceType><sasd:HostResource xmlns:sasd="y">/disk/d1</sasd:HostResource><sasd:Parent xmlns:sasd="y">5</sasd:Parent></ovf:StorageItem>
   <ovf:EthernetPortItem><epasd:ResourceType xmlns:epasd="z">10</epasd:ResourceType><epasd:Connection xmlns:epasd="z">NAT</epasd:Connection></ovf:EthernetPortItem>
  </ovf:VirtualHardwareSection>
  <vbox:Machine><Hardware><Firmware type="EFI"/></Hardware></vbox:Machine>
 </ovf:VirtualSystem>
</ovf:Envelope>"#;
        let d = parse(xml.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(d.name, "vbox-vm");
        assert_eq!(d.cpus, 1);
        assert_eq!(d.memory_bytes, 2 << 30);
        assert_eq!(d.firmware, Firmware::Efi);
        assert_eq!(d.disks[0].controller, Some(ControllerKind::Sata));
        assert_eq!(d.nics[0].network.as_deref(), Some("NAT"));
    }

    #[test]
    fn billion_laughs_fails_fast() {
        let mut xml =
            String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n");
        for i in 1..10 {
            let prev = if i == 1 {
                "lol".to_string()
            } else {
                format!("lol{}", i - 1)
            };
            xml.push_str(&format!(
                " <!ENTITY lol{i} \"{}\">\n",
                format!("&{prev};").repeat(10)
            ));
        }
        xml.push_str("]>\n<Envelope><VirtualSystem><Name>&lol9;</Name></VirtualSystem></Envelope>");
        let start = std::time::Instant::now();
        let err = parse(xml.as_bytes(), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("DTD"), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        // Undeclared entities (no DTD) are refused too, in text and attributes.
        let text = "<Envelope><VirtualSystem><Name>&xxe;</Name></VirtualSystem></Envelope>";
        assert!(parse(text.as_bytes(), &Limits::default())
            .unwrap_err()
            .to_string()
            .contains("refused"));
        let attr = "<Envelope><VirtualSystem ovf:id=\"&xxe;\"/></Envelope>";
        assert!(parse(attr.as_bytes(), &Limits::default()).is_err());
    }

    #[test]
    fn hostile_documents_are_refused() {
        let limits = Limits {
            max_descriptor_bytes: 1000,
            ..Limits::default()
        };
        assert!(matches!(
            parse(&vec![b' '; 2000], &limits),
            Err(ImageError::LimitExceeded { .. })
        ));
        let deep = format!(
            "<Envelope>{}{}</Envelope>",
            "<a>".repeat(100),
            "</a>".repeat(100)
        );
        assert!(parse(deep.as_bytes(), &Limits::default())
            .unwrap_err()
            .to_string()
            .contains("deeper"));
        for bad in [
            "",
            "<NotOvf/>",
            "<Envelope>",
            "<Envelope></Wrong>",
            "<Envelope/>",
            "<Envelope><VirtualSystem/><VirtualSystem/></Envelope>",
            "<Envelope><DiskSection><Disk ovf:diskId=\"d\" ovf:capacity=\"x\"/></DiskSection><VirtualSystem/></Envelope>",
            "<Envelope><DiskSection><Disk ovf:diskId=\"d\" ovf:capacity=\"99999999999\" ovf:capacityAllocationUnits=\"byte * 2^40\"/></DiskSection><VirtualSystem/></Envelope>",
            "<Envelope><DiskSection><Disk ovf:diskId=\"d\" ovf:capacity=\"1\" ovf:fileRef=\"nope\"/></DiskSection><VirtualSystem/></Envelope>",
            "<Envelope><DiskSection><Disk ovf:diskId=\"d\" ovf:capacity=\"${size}\"/></DiskSection><VirtualSystem/></Envelope>",
            "<Envelope><VirtualSystem><VirtualHardwareSection><Item><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>0</rasd:VirtualQuantity></Item></VirtualHardwareSection></VirtualSystem></Envelope>",
            "<Envelope><VirtualSystem><FancySection ovf:required=\"true\"/></VirtualSystem></Envelope>",
            "<Envelope><VirtualSystem/></Envelope>",
        ] {
            assert!(parse(bad.as_bytes(), &Limits::default()).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Mutated envelopes never panic; whatever parses renders and parses again.
        #[test]
        fn mutated_envelopes_never_panic(
            edits in proptest::collection::vec((0usize..4700, proptest::num::u8::ANY), 1..8),
            cut in 0usize..5000,
        ) {
            let mut bytes = VMWARE.as_bytes().to_vec();
            for (at, value) in edits {
                let i = at % bytes.len();
                bytes[i] = value;
            }
            bytes.truncate(cut.max(1));
            if let Ok(d) = parse(&bytes, &Limits::default()) {
                let again = parse(render(&d).as_bytes(), &Limits::default()).unwrap();
                proptest::prop_assert_eq!(again.cpus, d.cpus);
                proptest::prop_assert_eq!(again.memory_bytes, d.memory_bytes);
                proptest::prop_assert_eq!(again.disks.len(), d.disks.len());
            }
        }
    }
}
