//! OVF envelopes (DMTF DSP0243): parsing into an [`OvfDescriptor`] and rendering one back.
//!
//! Parsing is a single streaming pass with quick-xml over untrusted input:
//! - the document is at most `Limits::max_descriptor_bytes` long and at most [`MAX_DEPTH`]
//!   elements deep, with at most [`MAX_ITEMS`] hardware items;
//! - a DTD (`<!DOCTYPE …>`) is refused outright, so no entity can be declared: "billion
//!   laughs" and external entities fail on the first event; the only references accepted are
//!   the five predefined entities and character references;
//! - element and attribute names are matched by *local* name (prefixes vary between
//!   producers), and sections marked `ovf:required="true"` that Vireo does not understand are
//!   refused rather than silently dropped;
//! - numbers are parsed with overflow checks, allocation units per DSP0004 (`byte * 2^20`) and
//!   the legacy names (`MegaBytes`).
//!
//! [`render`] is the inverse for the subset Vireo exports (OVF 1.0 in VMware's dialect: rasd
//! elements in schema order, `vmw:Config` for the firmware); it is golden-tested.

use std::collections::BTreeMap;

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::device::Limits;
use crate::error::ImageError;

/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Most `Item`s in the hardware section accepted.
pub const MAX_ITEMS: usize = 4096;

/// Guest firmware.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    #[default]
    Bios,
    Efi,
}

/// Guest operating system as the package describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OsInfo {
    /// CIM operating system number (`OperatingSystemSection/@ovf:id`, e.g. 101 = Linux 64-bit).
    pub cim_id: Option<u32>,
    /// VMware guest id (`vmw:osType`, e.g. `debian11_64Guest`).
    pub vmware_os_type: Option<String>,
    pub description: Option<String>,
}

/// A file of the package (`References/File`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OvfFile {
    pub id: String,
    pub href: String,
    pub size: Option<u64>,
    /// `ovf:compression` (e.g. `gzip`), if any.
    pub compression: Option<String>,
}

/// Storage controller a disk hangs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControllerKind {
    Ide,
    Scsi,
    Sata,
    Nvme,
}

/// A virtual disk (`DiskSection/Disk` joined with its hardware item).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OvfDisk {
    pub disk_id: String,
    /// Id of the file holding the disk image (`None` for a blank disk to create).
    pub file_ref: Option<String>,
    pub capacity_bytes: u64,
    pub populated_size: Option<u64>,
    /// Format URI (e.g. VMware's `…vmdk.html#streamOptimized`).
    pub format: Option<String>,
    pub controller: Option<ControllerKind>,
    /// Controller model (`ResourceSubType`: lsilogic, VirtualSCSI, AHCI…).
    pub controller_model: Option<String>,
    pub address_on_parent: Option<u32>,
}

/// A network adapter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OvfNic {
    /// Logical network name (`Connection`).
    pub network: Option<String>,
    /// Adapter model (`ResourceSubType`: E1000, VmxNet3, virtio…).
    pub model: Option<String>,
    /// MAC address, if the package fixes one.
    pub mac: Option<String>,
}

/// What Vireo needs from an OVF envelope to build a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OvfDescriptor {
    pub name: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub firmware: Firmware,
    pub os: OsInfo,
    /// `vssd:VirtualSystemType` (e.g. `vmx-13`).
    pub virtual_system_type: Option<String>,
    pub files: Vec<OvfFile>,
    pub disks: Vec<OvfDisk>,
    pub nics: Vec<OvfNic>,
    /// Logical networks of the `NetworkSection`.
    pub networks: Vec<String>,
}

impl OvfDescriptor {
    /// The file a disk's image is stored in.
    pub fn disk_file(&self, disk: &OvfDisk) -> Option<&OvfFile> {
        let r = disk.file_ref.as_deref()?;
        self.files.iter().find(|f| f.id == r)
    }
}

fn invalid(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "ovf",
        detail: detail.into(),
    }
}

/// Bytes per allocation unit: DSP0004 programmatic units (`byte`, `byte * 2^20`,
/// `byte * 1024`, `byte * 10^3`) and the legacy names (`KiloBytes`, `MegaBytes`,
/// `GigaBytes`, `KB`, `MB`, `GB`).
pub fn allocation_unit_bytes(units: &str) -> Result<u64, ImageError> {
    let compact: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    let legacy = match compact.to_ascii_lowercase().as_str() {
        "byte" | "bytes" | "b" => Some(1),
        "kilobytes" | "kb" | "kib" => Some(1 << 10),
        "megabytes" | "mb" | "mib" => Some(1 << 20),
        "gigabytes" | "gb" | "gib" => Some(1 << 30),
        "terabytes" | "tb" | "tib" => Some(1 << 40),
        _ => None,
    };
    if let Some(v) = legacy {
        return Ok(v);
    }
    let mut parts = compact.split('*');
    if !parts.next().is_some_and(|b| b.eq_ignore_ascii_case("byte")) {
        return Err(invalid(format!("allocation units {units:?} are not bytes")));
    }
    let mut total: u64 = 1;
    for factor in parts {
        let value = if let Some((base, exp)) = factor.split_once('^') {
            let base: u64 = base
                .parse()
                .map_err(|_| invalid(format!("allocation units {units:?}")))?;
            let exp: u32 = exp
                .parse()
                .map_err(|_| invalid(format!("allocation units {units:?}")))?;
            base.checked_pow(exp)
        } else {
            factor.parse().ok()
        };
        total = value
            .and_then(|v| total.checked_mul(v))
            .filter(|&t| t > 0)
            .ok_or_else(|| invalid(format!("allocation units {units:?}")))?;
    }
    Ok(total)
}

fn parse_u64(what: &str, text: &str) -> Result<u64, ImageError> {
    text.trim()
        .parse()
        .map_err(|_| invalid(format!("{what} {text:?} is not a number")))
}

fn scaled(what: &str, quantity: &str, units: &str) -> Result<u64, ImageError> {
    parse_u64(what, quantity)?
        .checked_mul(allocation_unit_bytes(units)?)
        .ok_or_else(|| invalid(format!("{what} {quantity} {units} overflows")))
}

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

/// Renders `d` as an OVF 1.0 envelope (pure; the inverse of [`parse`] for what Vireo exports).
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

    /// Shaped like what VMware's ovftool exports.
    const VMWARE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!--Generated by VMware ovftool-->
<Envelope vmw:buildId="build-1" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="web-disk1.vmdk" ovf:id="file1" ovf:size="68526592"/>
    <File ovf:href="web-disk2.vmdk" ovf:id="file2" ovf:size="72192"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="1048576000"/>
    <Disk ovf:capacity="512" ovf:capacityAllocationUnits="MegaBytes" ovf:diskId="vmdisk2" ovf:fileRef="file2" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
    <Network ovf:name="backend &amp; db">
      <Description>x</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="web">
    <Info>A virtual machine</Info>
    <Name>web &#x26; co</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian11_64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Debian GNU/Linux 11 (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>4 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>4</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>4096</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>1</rasd:AddressOnParent>
        <rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:Parent>4</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>00:50:56:aa:bb:cc</rasd:Address>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:InstanceID>8</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Connection>backend &amp; db</rasd:Connection>
        <rasd:InstanceID>9</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:ExtraConfig ovf:required="false" vmw:key="nvram" vmw:value="web.nvram"/>
    </VirtualHardwareSection>
    <vmw:BootOrderSection ovf:required="false" vmw:type="disk"><Info>x</Info></vmw:BootOrderSection>
  </VirtualSystem>
</Envelope>
"#;

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

    #[test]
    fn allocation_units() {
        assert_eq!(allocation_unit_bytes("byte * 2^20").unwrap(), 1 << 20);
        assert_eq!(allocation_unit_bytes("byte*2^30").unwrap(), 1 << 30);
        assert_eq!(allocation_unit_bytes("byte * 1024").unwrap(), 1024);
        assert_eq!(allocation_unit_bytes("byte * 10^3").unwrap(), 1000);
        assert_eq!(allocation_unit_bytes("MegaBytes").unwrap(), 1 << 20);
        assert_eq!(allocation_unit_bytes("GB").unwrap(), 1 << 30);
        assert_eq!(allocation_unit_bytes("byte").unwrap(), 1);
        assert!(allocation_unit_bytes("hertz * 10^6").is_err());
        assert!(allocation_unit_bytes("byte * 2^99").is_err());
        assert!(allocation_unit_bytes("byte * 0").is_err());
        assert!(allocation_unit_bytes("byte * x").is_err());
    }

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
