//! Rendering command results as a table (default), pretty JSON or YAML.
//!
//! Everything here is pure: a value in, a `String` out, so the output is golden-tested
//! (`tests/golden/`). JSON and YAML are the API objects as the daemon sent them (stable for
//! scripts); tables are for people and may pick and format fields.

use comfy_table::{presets, Cell, ContentArrangement, Table};
use serde::Serialize;
use vireo_api::host::HostInfo;
use vireo_api::images::{ImageContent, ImageInfo};
use vireo_api::operations::Operation;
use vireo_api::projects::ProjectInfo;
use vireo_api::tokens::{TokenCreated, TokenInfo};
use vireo_api::vms::{ExecResult, VmInfo};
use vireo_types::size::format_size;

/// `--output` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Why a value could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot render the result as JSON")]
    Json(#[source] serde_json::Error),
    #[error("cannot render the result as YAML")]
    Yaml(#[source] serde_saphyr::SerializeError),
}

/// A value with a human table form.
pub trait Tabular {
    fn table(&self) -> String;
}

/// Renders `value` in `format`; the result ends with a newline.
pub fn render<T: Serialize + Tabular + ?Sized>(
    format: OutputFormat,
    value: &T,
) -> Result<String, OutputError> {
    let mut out = match format {
        OutputFormat::Table => value.table(),
        OutputFormat::Json => serde_json::to_string_pretty(value).map_err(OutputError::Json)?,
        OutputFormat::Yaml => serde_saphyr::to_string(&value).map_err(OutputError::Yaml)?,
    };
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// A borderless table with a header row, columns separated by spaces, no trailing blanks.
pub(crate) fn list_table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(Cell::new));
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    tidy(&table.to_string())
}

/// Two columns, `FIELD  value`, for one object.
pub(crate) fn field_table(rows: Vec<(&str, String)>) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    for (key, value) in rows {
        table.add_row(vec![format!("{key}:"), value]);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 1));
    }
    tidy(&table.to_string())
}

fn tidy(s: &str) -> String {
    let mut out: String = s.lines().map(|l| format!("{}\n", l.trim_end())).collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

pub(crate) fn or_dash(s: Option<impl ToString>) -> String {
    s.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string())
}

pub(crate) fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn mib(m: u64) -> String {
    format_size(m.saturating_mul(1 << 20))
}

pub(crate) fn timestamp(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

impl Tabular for [VmInfo] {
    fn table(&self) -> String {
        list_table(
            &["NAME", "STATE", "READY", "VCPUS", "MEMORY", "IMAGE", "NODE"],
            self.iter().map(|vm| {
                vec![
                    vm.name.to_string(),
                    vm.state.to_string(),
                    yes_no(vm.guest_ready),
                    vm.vcpus.to_string(),
                    mib(vm.memory_mib),
                    or_dash(vm.image.as_ref()),
                    vm.node.clone(),
                ]
            }),
        )
    }
}

impl Tabular for VmInfo {
    fn table(&self) -> String {
        let mut rows = vec![
            ("name", self.name.to_string()),
            ("uuid", self.uuid.to_string()),
            ("project", self.project.to_string()),
            ("state", self.state.to_string()),
            ("guest ready", yes_no(self.guest_ready)),
            ("node", self.node.clone()),
            ("vcpus", self.vcpus.to_string()),
            ("memory", mib(self.memory_mib)),
            ("image", or_dash(self.image.as_ref())),
            ("created", timestamp(&self.created_at)),
            ("pid", or_dash(self.pid)),
            ("accelerator", or_dash(self.accel.as_ref())),
        ];
        if self.template {
            rows.push(("template", "yes (immutable; create VMs from it)".into()));
        }
        if let Some(t) = &self.template_source {
            rows.push(("from template", t.to_string()));
        }
        if let Some(s) = &self.current_snapshot {
            rows.push(("snapshot", s.to_string()));
        }
        if let Some(c) = &self.cloud_init {
            rows.push((
                "cloud-init",
                format!(
                    "hostname {}",
                    c.hostname.as_deref().unwrap_or(self.name.as_str())
                ),
            ));
        }
        for disk in &self.disks {
            let mut desc = format!(
                "{} {} {}",
                disk.name,
                disk.format.as_str(),
                format_size(disk.virtual_size_bytes)
            );
            if disk.read_only {
                desc.push_str(" read-only");
            }
            if let Some(i) = disk.boot_index {
                desc.push_str(&format!(" boot={i}"));
            }
            rows.push(("disk", desc));
        }
        for nic in &self.nics {
            let mut desc = format!("{} {} {}", nic.name, nic.mac, nic.network);
            if !nic.addresses.is_empty() {
                desc.push_str(&format!(" {}", nic.addresses.join(",")));
            }
            rows.push(("nic", desc));
        }
        if let Some(guest) = &self.guest {
            let os = [guest.os_name.as_deref(), guest.os_version.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            if !os.is_empty() {
                rows.push(("guest os", os));
            }
            if let Some(k) = &guest.kernel_release {
                rows.push(("guest kernel", k.clone()));
            }
            if let Some(h) = &guest.hostname {
                rows.push(("guest hostname", h.clone()));
            }
            if let Some(a) = &guest.agent_version {
                rows.push(("guest agent", a.clone()));
            }
        }
        rows.push(("revision", self.revision.to_string()));
        field_table(rows)
    }
}

fn image_kind(content: &ImageContent) -> String {
    match content {
        ImageContent::Kernel { .. } => "kernel".to_string(),
        ImageContent::Disk { .. } => "disk".to_string(),
    }
}

impl Tabular for [ImageInfo] {
    fn table(&self) -> String {
        list_table(
            &["NAME", "KIND", "SIZE", "SOURCE", "CREATED"],
            self.iter().map(|image| {
                vec![
                    image.name.to_string(),
                    image_kind(&image.content),
                    format_size(image.size_bytes),
                    image.source.clone(),
                    timestamp(&image.created_at),
                ]
            }),
        )
    }
}

impl Tabular for ImageInfo {
    fn table(&self) -> String {
        let mut rows = vec![
            ("name", self.name.to_string()),
            ("uuid", self.uuid.to_string()),
            ("kind", image_kind(&self.content)),
            ("size", format_size(self.size_bytes)),
            ("source", self.source.clone()),
            ("created", timestamp(&self.created_at)),
        ];
        match &self.content {
            ImageContent::Kernel {
                kernel_version,
                cmdline,
                ready_marker,
                default_data_disk_mib,
            } => {
                rows.push(("kernel", kernel_version.clone()));
                rows.push(("cmdline", cmdline.clone()));
                rows.push(("ready marker", or_dash(ready_marker.as_ref())));
                rows.push(("data disk", mib(*default_data_disk_mib)));
            }
            ImageContent::Disk {
                firmware,
                virtual_size_bytes,
            } => {
                let fw = match firmware {
                    vireo_types::Firmware::Bios => "bios",
                    vireo_types::Firmware::Uefi => "uefi",
                };
                rows.push(("firmware", fw.to_string()));
                rows.push(("virtual size", format_size(*virtual_size_bytes)));
            }
        }
        field_table(rows)
    }
}

impl Tabular for HostInfo {
    fn table(&self) -> String {
        field_table(vec![
            ("node", self.node.clone()),
            ("hostname", self.hostname.clone()),
            ("vireo", self.vireo_version.clone()),
            ("qemu", or_dash(self.qemu_version.as_ref())),
            (
                "accelerator",
                format!(
                    "{} (configured {})",
                    self.accel.chosen, self.accel.configured
                ),
            ),
            ("kvm device", yes_no(self.accel.kvm_device_present)),
            ("kvm boots guest", yes_no(self.accel.kvm_boots_guest)),
            ("accel detail", self.accel.detail.clone()),
            ("cpus", self.cpus.to_string()),
            (
                "memory",
                format!(
                    "{} available of {}",
                    mib(self.memory_available_mib),
                    mib(self.memory_total_mib)
                ),
            ),
            (
                "storage",
                format!(
                    "{} available of {}",
                    format_size(self.storage_available_bytes),
                    format_size(self.storage_total_bytes)
                ),
            ),
            (
                "vms",
                format!("{} running of {}", self.vms_running, self.vms_total),
            ),
            ("uptime", format!("{}s", self.uptime_s)),
        ])
    }
}

fn progress_text(op: &Operation) -> String {
    let mut parts = Vec::new();
    if let Some(p) = op.progress.percent {
        parts.push(format!("{p:.0}%"));
    }
    if let Some(stage) = &op.progress.stage {
        parts.push(stage.clone());
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

fn status_text(op: &Operation) -> String {
    serde_json::to_value(op.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{:?}", op.status))
}

impl Tabular for [Operation] {
    fn table(&self) -> String {
        list_table(
            &["ID", "KIND", "TARGET", "STATUS", "PROGRESS", "CREATED"],
            self.iter().map(|op| {
                vec![
                    op.id.to_string(),
                    op.kind.clone(),
                    op.target.clone(),
                    status_text(op),
                    progress_text(op),
                    timestamp(&op.created_at),
                ]
            }),
        )
    }
}

impl Tabular for Operation {
    fn table(&self) -> String {
        let mut rows = vec![
            ("id", self.id.to_string()),
            ("kind", self.kind.clone()),
            ("target", self.target.clone()),
            ("status", status_text(self)),
            ("progress", progress_text(self)),
            ("created", timestamp(&self.created_at)),
            ("updated", timestamp(&self.updated_at)),
            ("requestor", self.requestor.clone()),
            ("cancellable", yes_no(self.cancellable)),
        ];
        if let Some(e) = &self.error {
            rows.push(("error", e.clone()));
        }
        for line in &self.log {
            rows.push(("log", line.clone()));
        }
        field_table(rows)
    }
}

impl Tabular for [TokenInfo] {
    fn table(&self) -> String {
        list_table(
            &["NAME", "CREATED"],
            self.iter()
                .map(|t| vec![t.name.to_string(), timestamp(&t.created_at)]),
        )
    }
}

impl Tabular for TokenCreated {
    fn table(&self) -> String {
        let mut out = field_table(vec![
            ("name", self.name.to_string()),
            ("created", timestamp(&self.created_at)),
            ("secret", self.secret.clone()),
        ]);
        out.push_str("The secret is shown only once; store it now.\n");
        out
    }
}

impl Tabular for [ProjectInfo] {
    fn table(&self) -> String {
        list_table(
            &["NAME", "DESCRIPTION", "CREATED"],
            self.iter().map(|p| {
                vec![
                    p.name.to_string(),
                    p.description.clone(),
                    timestamp(&p.created_at),
                ]
            }),
        )
    }
}

impl Tabular for ProjectInfo {
    fn table(&self) -> String {
        field_table(vec![
            ("name", self.name.to_string()),
            ("description", self.description.clone()),
            ("created", timestamp(&self.created_at)),
        ])
    }
}

impl Tabular for ExecResult {
    fn table(&self) -> String {
        use base64::Engine;
        let decode = |b64: &str| match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => "<malformed base64>".to_string(),
        };
        field_table(vec![
            ("exit code", self.exit_code.to_string()),
            ("signal", or_dash(self.signal)),
            ("truncated", yes_no(self.truncated)),
            ("stdout", decode(&self.stdout_base64)),
            ("stderr", decode(&self.stderr_base64)),
        ])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Compares with `tests/golden/NAME`, or rewrites it when `VIREO_UPDATE_GOLDEN=1`.
    pub(crate) fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("VIREO_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with VIREO_UPDATE_GOLDEN=1)", path.display()));
        assert_eq!(actual, expected, "golden file {} differs", path.display());
    }

    pub(crate) fn sample_vms() -> Vec<VmInfo> {
        serde_json::from_str(include_str!("../tests/fixtures/vms.json")).unwrap()
    }

    #[test]
    fn vm_list_golden() {
        let vms = sample_vms();
        golden(
            "vm_list.table",
            &render(OutputFormat::Table, vms.as_slice()).unwrap(),
        );
        golden(
            "vm_list.json",
            &render(OutputFormat::Json, vms.as_slice()).unwrap(),
        );
        golden(
            "vm_list.yaml",
            &render(OutputFormat::Yaml, vms.as_slice()).unwrap(),
        );
    }

    #[test]
    fn vm_show_golden() {
        let vms = sample_vms();
        golden(
            "vm_show.table",
            &render(OutputFormat::Table, &vms[0]).unwrap(),
        );
        golden(
            "vm_show.json",
            &render(OutputFormat::Json, &vms[0]).unwrap(),
        );
    }

    #[test]
    fn json_and_yaml_round_trip_the_api_object() {
        let vms = sample_vms();
        let json = render(OutputFormat::Json, vms.as_slice()).unwrap();
        let back: Vec<VmInfo> = serde_json::from_str(&json).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&vms).unwrap()
        );
        let yaml = render(OutputFormat::Yaml, vms.as_slice()).unwrap();
        let back: Vec<VmInfo> = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&vms).unwrap()
        );
    }

    #[test]
    fn show_json_has_the_stable_fields() {
        let vm = &sample_vms()[0];
        let v: serde_json::Value =
            serde_json::from_str(&render(OutputFormat::Json, vm).unwrap()).unwrap();
        for field in [
            "name",
            "uuid",
            "state",
            "guest_ready",
            "node",
            "vcpus",
            "memory_mib",
        ] {
            assert!(v.get(field).is_some(), "{field} missing");
        }
    }

    #[test]
    fn empty_list_has_only_the_header() {
        let empty: Vec<VmInfo> = Vec::new();
        assert_eq!(
            render(OutputFormat::Table, empty.as_slice()).unwrap(),
            "NAME   STATE   READY   VCPUS   MEMORY   IMAGE   NODE\n"
        );
    }
}
