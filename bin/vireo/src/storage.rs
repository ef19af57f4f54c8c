//! `vireo storage pool|volume …`: storage pools and their volumes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use vireo_api::storage::{
    CreatePoolRequest, CreateVolumeRequest, PoolDriverKind, PoolInfo, ResizeVolumeRequest,
    VolumeInfo, DEFAULT_POOL,
};
use vireo_types::size::{format_size, parse_size};
use vireo_types::Name;

use crate::output::{field_table, list_table, or_dash, timestamp, OutputFormat, Tabular};
use crate::{parse_duration, print, progress, GlobalArgs};

#[derive(Debug, Subcommand)]
pub enum StorageCmd {
    /// Storage pools.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Volumes (virtual disks) in pools.
    #[command(subcommand, alias = "vol")]
    Volume(VolumeCmd),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DriverArg {
    /// A directory of qcow2 files.
    Dir,
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// List pools with capacity and usage.
    #[command(alias = "ls")]
    List,
    /// Show one pool.
    Show { name: Name },
    /// Create a pool.
    Create {
        name: Name,
        #[arg(long, value_enum, default_value = "dir")]
        driver: DriverArg,
        /// Directory of a `dir` pool (absolute; created when missing, must be empty).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Delete an empty pool.
    #[command(alias = "rm")]
    Delete { name: Name },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// List the volumes of a pool.
    #[command(alias = "ls")]
    List {
        #[arg(long, default_value = DEFAULT_POOL)]
        pool: Name,
    },
    /// Show one volume.
    Show {
        name: Name,
        #[arg(long, default_value = DEFAULT_POOL)]
        pool: Name,
    },
    /// Create an empty volume (thin-provisioned qcow2).
    Create {
        name: Name,
        /// Virtual size, e.g. 10GiB.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value = DEFAULT_POOL)]
        pool: Name,
    },
    /// Import a disk image file (qcow2, raw, VMDK, VHD, VHDX; detected by content) as a new
    /// volume, converted to qcow2.
    Import {
        file: PathBuf,
        /// Volume name (default: derived from the file name).
        #[arg(long)]
        name: Option<Name>,
        #[arg(long, default_value = DEFAULT_POOL)]
        pool: Name,
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        wait_timeout: Duration,
    },
    /// Grow a volume (online when its VM runs).
    Resize {
        name: Name,
        /// New virtual size, e.g. 20GiB.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value = DEFAULT_POOL)]
        pool: Name,
    },
    /// Delete a volume that is neither attached nor the base of other volumes.
    #[command(alias = "rm")]
    Delete {
        name: Name,
        #[arg(long, default_value = DEFAULT_POOL)]
        pool: Name,
    },
}

pub async fn run(global: &GlobalArgs, cmd: StorageCmd) -> anyhow::Result<u8> {
    let format = global.output();
    let client = global.client()?;
    match cmd {
        StorageCmd::Pool(PoolCmd::List) => {
            let pools = client.list_pools().await.context("cannot list pools")?;
            print(format, pools.as_slice())?;
        }
        StorageCmd::Pool(PoolCmd::Show { name }) => {
            let pool = client
                .get_pool(name.as_str())
                .await
                .with_context(|| format!("cannot show pool {name}"))?;
            print(format, &pool)?;
        }
        StorageCmd::Pool(PoolCmd::Create { name, driver, path }) => {
            let driver = match driver {
                DriverArg::Dir => PoolDriverKind::Dir,
            };
            let pool = client
                .create_pool(&CreatePoolRequest {
                    name: name.clone(),
                    driver,
                    path,
                })
                .await
                .with_context(|| format!("cannot create pool {name}"))?;
            print(format, &pool)?;
        }
        StorageCmd::Pool(PoolCmd::Delete { name }) => {
            client
                .delete_pool(name.as_str())
                .await
                .with_context(|| format!("cannot delete pool {name}"))?;
            if format == OutputFormat::Table {
                println!("Pool {name} deleted.");
            }
        }
        StorageCmd::Volume(VolumeCmd::List { pool }) => {
            let vols = client
                .list_volumes(pool.as_str())
                .await
                .with_context(|| format!("cannot list the volumes of pool {pool}"))?;
            print(format, vols.as_slice())?;
        }
        StorageCmd::Volume(VolumeCmd::Show { name, pool }) => {
            let vol = client
                .get_volume(pool.as_str(), name.as_str())
                .await
                .with_context(|| format!("cannot show volume {pool}/{name}"))?;
            print(format, &vol)?;
        }
        StorageCmd::Volume(VolumeCmd::Create { name, size, pool }) => {
            let vol = client
                .create_volume(
                    pool.as_str(),
                    &CreateVolumeRequest {
                        name: name.clone(),
                        size_bytes: size,
                    },
                )
                .await
                .with_context(|| format!("cannot create volume {pool}/{name}"))?;
            print(format, &vol)?;
        }
        StorageCmd::Volume(VolumeCmd::Import {
            file,
            name,
            pool,
            wait_timeout,
        }) => {
            let name = match name {
                Some(n) => n,
                None => crate::image::name_from_file(&file)?,
            };
            let what = || format!("cannot import {} as volume {pool}/{name}", file.display());
            let op = client
                .import_volume(pool.as_str(), name.as_str(), &file)
                .await
                .with_context(what)?;
            progress::wait_operation(&client, &op, wait_timeout)
                .await
                .with_context(what)?;
            let vol = client
                .get_volume(pool.as_str(), name.as_str())
                .await
                .with_context(what)?;
            print(format, &vol)?;
        }
        StorageCmd::Volume(VolumeCmd::Resize { name, size, pool }) => {
            let what = || format!("cannot resize volume {pool}/{name}");
            let op = client
                .resize_volume(
                    pool.as_str(),
                    name.as_str(),
                    &ResizeVolumeRequest { size_bytes: size },
                )
                .await
                .with_context(what)?;
            progress::wait_operation(&client, &op, Duration::from_secs(600))
                .await
                .with_context(what)?;
            let vol = client
                .get_volume(pool.as_str(), name.as_str())
                .await
                .with_context(what)?;
            print(format, &vol)?;
        }
        StorageCmd::Volume(VolumeCmd::Delete { name, pool }) => {
            client
                .delete_volume(pool.as_str(), name.as_str())
                .await
                .with_context(|| format!("cannot delete volume {pool}/{name}"))?;
            if format == OutputFormat::Table {
                println!("Volume {pool}/{name} deleted.");
            }
        }
    }
    Ok(0)
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

impl Tabular for [PoolInfo] {
    fn table(&self) -> String {
        list_table(
            &[
                "NAME",
                "DRIVER",
                "VOLUMES",
                "ALLOCATED",
                "PROVISIONED",
                "FREE",
                "USED",
                "PATH",
            ],
            self.iter().map(|p| {
                vec![
                    p.name.to_string(),
                    p.driver.as_str().to_string(),
                    p.volumes.to_string(),
                    format_size(p.allocated_bytes),
                    format_size(p.provisioned_bytes),
                    format_size(p.available_bytes),
                    percent(p.used_bytes, p.capacity_bytes),
                    p.path.display().to_string(),
                ]
            }),
        )
    }
}

impl Tabular for PoolInfo {
    fn table(&self) -> String {
        field_table(vec![
            ("name", self.name.to_string()),
            ("uuid", self.uuid.to_string()),
            ("driver", self.driver.as_str().to_string()),
            ("path", self.path.display().to_string()),
            ("volumes", self.volumes.to_string()),
            ("allocated", format_size(self.allocated_bytes)),
            ("provisioned", format_size(self.provisioned_bytes)),
            ("capacity", format_size(self.capacity_bytes)),
            (
                "used",
                format!(
                    "{} ({})",
                    format_size(self.used_bytes),
                    percent(self.used_bytes, self.capacity_bytes)
                ),
            ),
            ("available", format_size(self.available_bytes)),
            ("created", timestamp(&self.created_at)),
        ])
    }
}

fn kind(v: &VolumeInfo) -> &'static str {
    match v.kind {
        vireo_api::storage::VolumeKind::Vm => "vm",
        vireo_api::storage::VolumeKind::Custom => "custom",
        vireo_api::storage::VolumeKind::Base => "base",
    }
}

fn attached(v: &VolumeInfo) -> String {
    or_dash(v.attached_to.as_ref().map(|a| {
        if a.project.as_str() == vireo_api::DEFAULT_PROJECT {
            format!("{}:{}", a.vm, a.disk)
        } else {
            format!("{}/{}:{}", a.project, a.vm, a.disk)
        }
    }))
}

fn backing(v: &VolumeInfo) -> String {
    match (&v.backing, &v.backing_image) {
        (Some(b), _) => b.to_string(),
        (None, Some(i)) => format!("image {i}"),
        (None, None) => "-".into(),
    }
}

impl Tabular for [VolumeInfo] {
    fn table(&self) -> String {
        list_table(
            &[
                "POOL",
                "NAME",
                "KIND",
                "SIZE",
                "ALLOCATED",
                "ATTACHED",
                "BACKING",
            ],
            self.iter().map(|v| {
                vec![
                    v.pool.to_string(),
                    v.name.to_string(),
                    kind(v).to_string(),
                    format_size(v.virtual_size_bytes),
                    format_size(v.allocated_bytes),
                    attached(v),
                    backing(v),
                ]
            }),
        )
    }
}

impl Tabular for VolumeInfo {
    fn table(&self) -> String {
        let dependants = if self.dependants.is_empty() {
            "-".to_string()
        } else {
            self.dependants
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        field_table(vec![
            ("name", self.name.to_string()),
            ("pool", self.pool.to_string()),
            ("uuid", self.uuid.to_string()),
            ("kind", kind(self).to_string()),
            ("format", self.format.clone()),
            ("size", format_size(self.virtual_size_bytes)),
            ("allocated", format_size(self.allocated_bytes)),
            ("attached", attached(self)),
            ("backing", backing(self)),
            ("dependants", dependants),
            ("read-only", self.read_only.to_string()),
            ("created", timestamp(&self.created_at)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::render;
    use crate::output::tests::golden;

    fn sample() -> Vec<VolumeInfo> {
        serde_json::from_value(serde_json::json!([
            {"name": "web1-root", "pool": "default", "uuid": "01936a2e-0000-7000-8000-000000000001",
             "kind": "vm", "format": "qcow2", "virtual_size_bytes": 2147483648u64,
             "allocated_bytes": 1048576, "created_at": "2026-11-22T03:00:00Z",
             "backing": null, "backing_image": "tiny-disk",
             "attached_to": {"project": "default", "vm": "web1", "disk": "root"},
             "dependants": [], "read_only": false},
            {"name": "scratch", "pool": "fast", "uuid": "01936a2e-0000-7000-8000-000000000002",
             "kind": "custom", "format": "qcow2", "virtual_size_bytes": 10737418240u64,
             "allocated_bytes": 200704, "created_at": "2026-11-22T03:01:00Z",
             "backing": null, "backing_image": null, "attached_to": null,
             "dependants": [{"pool": "fast", "volume": "clone1"}], "read_only": false}
        ]))
        .unwrap()
    }

    #[test]
    fn volume_tables() {
        let vols = sample();
        let list = render(OutputFormat::Table, vols.as_slice()).unwrap();
        golden("volume_list.table", &list);
        assert!(list.contains("web1:root"), "{list}");
        assert!(list.contains("image tiny-disk"), "{list}");
        let show = render(OutputFormat::Table, &vols[1]).unwrap();
        golden("volume_show.table", &show);
        assert!(show.contains("fast/clone1"), "{show}");
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(1, 4), "25%");
        assert_eq!(percent(1, 0), "-");
    }
}
