//! `vireo vm snapshot|clone|template|disk …`: a VM's storage life.

use anyhow::Context;
use clap::{Args, Subcommand};
use vireo_api::operations::Operation;
use vireo_api::snapshots::{CloneMode, CloneVmRequest, CreateSnapshotRequest, SnapshotInfo};
use vireo_api::storage::{AttachDiskRequest, DEFAULT_POOL};
use vireo_client::Client;
use vireo_types::Name;

use crate::output::{list_table, or_dash, timestamp, OutputFormat, Tabular};
use crate::vm::WaitArgs;
use crate::{print, progress};

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot every disk of a VM (with --memory also RAM and device state).
    Create {
        vm: Name,
        name: Name,
        /// Include RAM and device state: a restore resumes exactly here (VM must run).
        #[arg(long)]
        memory: bool,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List a VM's snapshots (the tree: each names its parent).
    #[command(alias = "ls")]
    List { vm: Name },
    /// Revert a VM to a snapshot.
    Restore {
        vm: Name,
        name: Name,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a snapshot (its children stay valid).
    #[command(alias = "rm")]
    Delete {
        vm: Name,
        name: Name,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// VM (stopped) or template to clone.
    pub source: Name,
    /// Name of the new VM.
    pub name: Name,
    /// Independent copies of the disks instead of copy-on-write overlays.
    #[arg(long)]
    pub full: bool,
    /// Clone this snapshot of the source instead of its current state.
    #[arg(long)]
    pub snapshot: Option<Name>,
    /// Pool for the new disks [default: the source's]
    #[arg(long)]
    pub pool: Option<Name>,
    /// Start the clone once made.
    #[arg(long)]
    pub start: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Subcommand)]
pub enum DiskCmd {
    /// Attach a custom volume (hot-plugged when the VM runs).
    Attach {
        vm: Name,
        /// Volume to attach.
        volume: Name,
        #[arg(long, default_value = DEFAULT_POOL)]
        pool: Name,
        /// Disk name inside the VM [default: the volume's name]
        #[arg(long = "as")]
        disk: Option<Name>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Detach an attached custom volume (hot-unplugged when the VM runs).
    Detach {
        vm: Name,
        disk: Name,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// Waits for `op` unless --no-wait, then prints `done` (table) or the operation.
async fn finish(
    client: &Client,
    format: OutputFormat,
    what: String,
    done: String,
    op: Result<Operation, vireo_client::ClientError>,
    wait: &WaitArgs,
) -> anyhow::Result<u8> {
    let op = op.with_context(|| what.clone())?;
    if wait.no_wait {
        print(format, &op)?;
        return Ok(0);
    }
    let op = progress::wait_operation(client, &op, wait.wait_timeout)
        .await
        .with_context(|| what.clone())?;
    match format {
        OutputFormat::Table => println!("{done}"),
        _ => print(format, &op)?,
    }
    Ok(0)
}

pub async fn snapshot(
    client: &Client,
    format: OutputFormat,
    cmd: SnapshotCmd,
) -> anyhow::Result<u8> {
    match cmd {
        SnapshotCmd::Create {
            vm,
            name,
            memory,
            description,
            wait,
        } => {
            let req = CreateSnapshotRequest {
                name: name.clone(),
                memory,
                description,
            };
            let op = client.create_snapshot(vm.as_str(), &req).await;
            finish(
                client,
                format,
                format!("cannot snapshot VM {vm}"),
                format!("Snapshot {name} of VM {vm} created."),
                op,
                &wait,
            )
            .await
        }
        SnapshotCmd::List { vm } => {
            let list = client
                .list_snapshots(vm.as_str())
                .await
                .with_context(|| format!("cannot list the snapshots of VM {vm}"))?;
            print(format, list.as_slice())?;
            Ok(0)
        }
        SnapshotCmd::Restore { vm, name, wait } => {
            let op = client.restore_snapshot(vm.as_str(), name.as_str()).await;
            finish(
                client,
                format,
                format!("cannot restore VM {vm} to snapshot {name}"),
                format!("VM {vm} restored to snapshot {name}."),
                op,
                &wait,
            )
            .await
        }
        SnapshotCmd::Delete { vm, name, wait } => {
            let op = client.delete_snapshot(vm.as_str(), name.as_str()).await;
            finish(
                client,
                format,
                format!("cannot delete snapshot {name} of VM {vm}"),
                format!("Snapshot {name} of VM {vm} deleted."),
                op,
                &wait,
            )
            .await
        }
    }
}

pub async fn clone(client: &Client, format: OutputFormat, args: CloneArgs) -> anyhow::Result<u8> {
    let req = CloneVmRequest {
        name: args.name.clone(),
        mode: if args.full {
            CloneMode::Full
        } else {
            CloneMode::Linked
        },
        snapshot: args.snapshot.clone(),
        pool: args.pool.clone(),
        start: args.start,
    };
    let what = format!("cannot clone VM {} as {}", args.source, args.name);
    let op = client
        .clone_vm(args.source.as_str(), &req)
        .await
        .with_context(|| what.clone())?;
    if args.wait.no_wait {
        print(format, &op)?;
        return Ok(0);
    }
    progress::wait_operation(client, &op, args.wait.wait_timeout)
        .await
        .with_context(|| what.clone())?;
    let vm = client
        .get_vm(args.name.as_str())
        .await
        .with_context(|| what.clone())?;
    print(format, &vm)?;
    Ok(0)
}

pub async fn template(client: &Client, format: OutputFormat, vm: Name) -> anyhow::Result<u8> {
    let info = client
        .template_vm(vm.as_str())
        .await
        .with_context(|| format!("cannot make VM {vm} a template"))?;
    print(format, &info)?;
    Ok(0)
}

pub async fn disk(client: &Client, format: OutputFormat, cmd: DiskCmd) -> anyhow::Result<u8> {
    match cmd {
        DiskCmd::Attach {
            vm,
            volume,
            pool,
            disk,
            wait,
        } => {
            let req = AttachDiskRequest {
                pool: pool.clone(),
                volume: volume.clone(),
                disk,
            };
            let op = client.attach_disk(vm.as_str(), &req).await;
            finish(
                client,
                format,
                format!("cannot attach volume {pool}/{volume} to VM {vm}"),
                format!("Volume {pool}/{volume} attached to VM {vm}."),
                op,
                &wait,
            )
            .await
        }
        DiskCmd::Detach { vm, disk, wait } => {
            let op = client.detach_disk(vm.as_str(), disk.as_str()).await;
            finish(
                client,
                format,
                format!("cannot detach disk {disk} from VM {vm}"),
                format!("Disk {disk} detached from VM {vm}."),
                op,
                &wait,
            )
            .await
        }
    }
}

impl Tabular for [SnapshotInfo] {
    fn table(&self) -> String {
        list_table(
            &[
                "NAME",
                "PARENT",
                "MEMORY",
                "STATE",
                "FROZEN",
                "CREATED",
                "DESCRIPTION",
            ],
            self.iter().map(|s| {
                vec![
                    if s.current {
                        format!("{} *", s.name)
                    } else {
                        s.name.to_string()
                    },
                    or_dash(s.parent.as_ref()),
                    if s.memory { "yes" } else { "no" }.to_string(),
                    s.vm_state.to_string(),
                    if s.fs_frozen { "yes" } else { "no" }.to_string(),
                    timestamp(&s.created_at),
                    s.description.lines().next().unwrap_or("").to_string(),
                ]
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::render;
    use crate::output::tests::golden;

    #[test]
    fn snapshot_list_golden() {
        let list: Vec<SnapshotInfo> = serde_json::from_value(serde_json::json!([
            {"name": "base", "created_at": "2026-11-22T03:00:00Z", "parent": null,
             "memory": false, "vm_state": "stopped", "fs_frozen": false, "disks": ["data"],
             "description": "clean install", "current": false},
            {"name": "live", "created_at": "2026-11-22T03:05:00Z", "parent": "base",
             "memory": true, "vm_state": "running", "fs_frozen": false, "disks": ["data"],
             "description": "", "current": true}
        ]))
        .unwrap();
        golden(
            "snapshot_list.table",
            &render(OutputFormat::Table, list.as_slice()).unwrap(),
        );
    }
}
