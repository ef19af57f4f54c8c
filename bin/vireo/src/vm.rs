//! `vireo vm …`: VM lifecycle, console, exec and edits.

use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use vireo_api::operations::Operation;
use vireo_api::vms::{CreateVmRequest, ExecRequest, StopRequest, UpdateVmRequest};
use vireo_client::Client;
use vireo_types::size::parse_size;
use vireo_types::{Firmware, Name, VmState};

use crate::output::OutputFormat;
use crate::{parse_duration, print, progress, GlobalArgs};

/// Default time to wait for an operation.
const DEFAULT_WAIT: &str = "10m";
/// Largest standard input `vm exec --stdin` sends (the request carries it in memory).
const MAX_EXEC_STDIN: u64 = 16 << 20;
/// Daemon-side default of the graceful stop timeout (seconds).
const DEFAULT_STOP_TIMEOUT_S: u32 = 30;

/// Parses a size (`1GiB`, `512MiB`) into whole MiB.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s).map_err(|e| e.to_string())?;
    if bytes == 0 || bytes % (1 << 20) != 0 {
        return Err(format!(
            "{s:?} is not a positive whole number of MiB (bare numbers are bytes; write e.g. 512MiB or 1GiB)"
        ));
    }
    Ok(bytes >> 20)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FirmwareArg {
    Bios,
    Uefi,
}

impl From<FirmwareArg> for Firmware {
    fn from(f: FirmwareArg) -> Self {
        match f {
            FirmwareArg::Bios => Firmware::Bios,
            FirmwareArg::Uefi => Firmware::Uefi,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Create a VM from an image.
    Create(Box<CreateArgs>),
    /// List VMs.
    #[command(alias = "ls")]
    List {
        /// Show only VMs in this state (stopped, starting, running, paused, stopping, crashed).
        #[arg(long)]
        state: Option<VmState>,
    },
    /// Show one VM.
    Show { name: Name },
    /// Start a VM.
    Start(ActionArgs),
    /// Stop a VM (gracefully, then forcefully after --timeout).
    Stop(StopArgs),
    /// Restart a VM.
    Restart(ActionArgs),
    /// Pause a VM's CPUs.
    Pause(ActionArgs),
    /// Resume a paused VM.
    Resume(ActionArgs),
    /// Terminate a VM's QEMU process at once.
    Kill(ActionArgs),
    /// Delete a stopped VM and its disks.
    #[command(alias = "rm")]
    Delete(DeleteArgs),
    /// A VM's NICs (add and remove are hot-plugged on running VMs).
    #[command(subcommand)]
    Nic(crate::network::NicCmd),
    /// Attach to a VM's serial console (detach with Ctrl-] then q).
    Console(ConsoleArgs),
    /// Print the VM's recent serial console output.
    ConsoleLog { name: Name },
    /// Export a stopped VM as an OVA package (OVF + stream-optimized VMDKs + manifest).
    Export {
        name: Name,
        /// Where to write the .ova file.
        out: std::path::PathBuf,
    },
    /// Run a command in the guest (through qemu-guest-agent) and exit with its status.
    Exec(ExecArgs),
    /// Change a stopped VM's vCPUs or memory.
    Edit(EditArgs),
    /// Snapshots of a VM's disks (and memory).
    #[command(subcommand)]
    Snapshot(crate::vm_storage::SnapshotCmd),
    /// Make a new VM from a stopped VM, a template or a snapshot (linked or full).
    Clone(crate::vm_storage::CloneArgs),
    /// Turn a stopped VM into an immutable template for linked clones.
    Template { name: Name },
    /// Attach or detach custom volumes.
    #[command(subcommand)]
    Disk(crate::vm_storage::DiskCmd),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the VM (with --count: use --prefix instead).
    #[arg(required_unless_present = "prefix")]
    pub name: Option<Name>,
    /// Image to create the VM from (e.g. tiny).
    #[arg(
        long,
        required_unless_present = "template",
        conflicts_with = "template"
    )]
    pub image: Option<Name>,
    /// Template to make a linked clone of (see `vireo vm template`).
    #[arg(long)]
    pub template: Option<Name>,
    /// Create this many VMs from the template at once, named PREFIX1, PREFIX2, …
    #[arg(long, requires_all = ["template", "prefix"])]
    pub count: Option<u32>,
    /// Name prefix of the VMs made with --count.
    #[arg(long, requires = "count", conflicts_with = "name")]
    pub prefix: Option<Name>,
    /// Virtual CPUs [default: 1]
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory size, e.g. 512MiB or 1GiB.
    #[arg(long, value_parser = parse_mib, value_name = "SIZE")]
    pub memory: Option<u64>,
    /// Data disk (kernel images) or root disk (disk images) size, e.g. 1GiB.
    #[arg(long, value_parser = parse_mib, value_name = "SIZE")]
    pub disk: Option<u64>,
    /// Network to attach a NIC to (repeatable) [default: user]
    #[arg(long = "network", value_name = "NAME", conflicts_with = "no_network")]
    pub networks: Vec<Name>,
    /// Create the VM without any NIC.
    #[arg(long)]
    pub no_network: bool,
    /// Firmware for disk images [default: the image's]
    #[arg(long, value_enum)]
    pub firmware: Option<FirmwareArg>,
    /// Storage pool for the VM's disks (default: the default pool).
    #[arg(long)]
    pub pool: Option<Name>,
    /// Extra kernel command-line arguments (kernel images).
    #[arg(long)]
    pub kernel_args: Option<String>,
    #[command(flatten)]
    pub cloud_init: crate::cloudinit_args::CloudInitArgs,
    /// Ignition config file (JSON) for Fedora CoreOS/Flatcar, passed through fw_cfg.
    #[arg(long, value_name = "FILE")]
    pub ignition: Option<std::path::PathBuf>,
    /// Start the VM once created.
    #[arg(long)]
    pub start: bool,
    /// With --start: also wait until the guest is ready (its agent answers).
    #[arg(long, conflicts_with = "no_wait")]
    pub wait: bool,
    /// Return at once with the operation instead of waiting for the creation.
    #[arg(long)]
    pub no_wait: bool,
    /// How long --wait waits in all (e.g. 300, 5m).
    #[arg(long, value_parser = parse_duration, default_value = DEFAULT_WAIT)]
    pub timeout: Duration,
}

impl CreateArgs {
    pub fn request(&self) -> anyhow::Result<CreateVmRequest> {
        let networks = if self.no_network {
            Some(Vec::new())
        } else if self.networks.is_empty() {
            None
        } else {
            Some(self.networks.clone())
        };
        let name = self
            .prefix
            .clone()
            .or_else(|| self.name.clone())
            .context("a VM name (or --prefix with --count) is required")?;
        Ok(CreateVmRequest {
            name,
            image: self.image.clone(),
            template: self.template.clone(),
            count: self.count,
            vcpus: self.vcpus,
            memory_mib: self.memory,
            disk_mib: self.disk,
            networks,
            firmware: self.firmware.map(Firmware::from),
            pool: self.pool.clone(),
            kernel_args: self.kernel_args.clone(),
            cloud_init: self.cloud_init.config()?,
            ignition: self
                .ignition
                .as_deref()
                .map(|p| crate::cloudinit_args::read_text(p, "Ignition"))
                .transpose()?,
            start: self.start,
        })
    }
}

/// Waiting behaviour shared by the lifecycle commands.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Return at once with the operation instead of waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the operation (e.g. 90, 5m).
    #[arg(long = "wait-timeout", value_parser = parse_duration, default_value = DEFAULT_WAIT)]
    pub wait_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    pub name: Name,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    pub name: Name,
    /// Terminate QEMU at once instead of a graceful shutdown.
    #[arg(long)]
    pub force: bool,
    /// Seconds to wait for the graceful shutdown before forcing (daemon default 30).
    #[arg(long, value_name = "S")]
    pub timeout: Option<u32>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub name: Name,
    /// Kill the VM first if it is running.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    pub name: Name,
    /// Bytes of recent output to replay on connect (daemon default 4096).
    #[arg(long)]
    pub history: Option<u32>,
    /// When stdin is not a terminal: how long to keep printing output after stdin ends.
    #[arg(long, value_parser = parse_duration, default_value = "2")]
    pub grace: Duration,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub name: Name,
    /// Seconds the command may run (daemon default 60).
    #[arg(long, value_name = "S")]
    pub timeout: Option<u32>,
    /// Send our standard input to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Command and arguments (after `--` when they start with `-`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["vcpus", "memory", "user_data", "ssh_keys", "hostname", "network_config", "vendor_data"])))]
pub struct EditArgs {
    pub name: Name,
    /// New number of virtual CPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// New memory size, e.g. 512MiB or 1GiB.
    #[arg(long, value_parser = parse_mib, value_name = "SIZE")]
    pub memory: Option<u64>,
    /// Replace the cloud-init settings (any of these options; a new instance-id follows).
    #[command(flatten)]
    pub cloud_init: crate::cloudinit_args::CloudInitArgs,
}

pub async fn run(global: &GlobalArgs, cmd: VmCmd) -> anyhow::Result<u8> {
    let client = global.client()?;
    let format = global.output();
    match cmd {
        VmCmd::Create(args) => create(&client, format, *args).await,
        VmCmd::Nic(cmd) => crate::network::nic(global, cmd).await,
        VmCmd::Snapshot(cmd) => crate::vm_storage::snapshot(&client, format, cmd).await,
        VmCmd::Clone(args) => crate::vm_storage::clone(&client, format, args).await,
        VmCmd::Template { name } => crate::vm_storage::template(&client, format, name).await,
        VmCmd::Disk(cmd) => crate::vm_storage::disk(&client, format, cmd).await,
        VmCmd::List { state } => {
            let mut vms = client.list_vms().await.context("cannot list VMs")?;
            if let Some(state) = state {
                vms.retain(|vm| vm.state == state);
            }
            print(format, vms.as_slice())?;
            Ok(0)
        }
        VmCmd::Show { name } => {
            let vm = client
                .get_vm(name.as_str())
                .await
                .with_context(|| format!("cannot show VM {name}"))?;
            print(format, &vm)?;
            Ok(0)
        }
        VmCmd::Start(a) => {
            let op = client.start_vm(a.name.as_str()).await;
            finish_action(&client, format, "start", "started", &a.name, op, &a.wait).await
        }
        VmCmd::Restart(a) => {
            let op = client.restart_vm(a.name.as_str()).await;
            finish_action(
                &client,
                format,
                "restart",
                "restarted",
                &a.name,
                op,
                &a.wait,
            )
            .await
        }
        VmCmd::Pause(a) => {
            let op = client.pause_vm(a.name.as_str()).await;
            finish_action(&client, format, "pause", "paused", &a.name, op, &a.wait).await
        }
        VmCmd::Resume(a) => {
            let op = client.resume_vm(a.name.as_str()).await;
            finish_action(&client, format, "resume", "resumed", &a.name, op, &a.wait).await
        }
        VmCmd::Kill(a) => {
            let op = client.kill_vm(a.name.as_str()).await;
            finish_action(&client, format, "kill", "killed", &a.name, op, &a.wait).await
        }
        VmCmd::Stop(a) => {
            let request = StopRequest {
                force: a.force,
                timeout_s: a.timeout,
            };
            let op = client.stop_vm(a.name.as_str(), &request).await;
            // The graceful phase alone may take the whole stop timeout.
            let graceful =
                Duration::from_secs(u64::from(a.timeout.unwrap_or(DEFAULT_STOP_TIMEOUT_S)));
            let wait = WaitArgs {
                no_wait: a.wait.no_wait,
                wait_timeout: a.wait.wait_timeout.max(graceful + Duration::from_secs(60)),
            };
            finish_action(&client, format, "stop", "stopped", &a.name, op, &wait).await
        }
        VmCmd::Delete(a) => delete(&client, format, a).await,
        VmCmd::Console(a) => {
            crate::console::run(&client, a.name.as_str(), a.history, a.grace).await?;
            Ok(0)
        }
        VmCmd::Export { name, out } => {
            client
                .export_vm(name.as_str(), &out)
                .await
                .with_context(|| format!("cannot export VM {name} to {}", out.display()))?;
            eprintln!("exported VM {name} to {}", out.display());
            Ok(0)
        }
        VmCmd::ConsoleLog { name } => {
            let log = client
                .console_log(name.as_str())
                .await
                .with_context(|| format!("cannot read VM {name}'s console log"))?;
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&log)
                .and_then(|()| stdout.flush())
                .context("cannot write to stdout")?;
            Ok(0)
        }
        VmCmd::Exec(a) => exec(&client, format, a).await,
        VmCmd::Edit(a) => edit(&client, format, a).await,
    }
}

/// Prints the outcome of a lifecycle action: the operation with `--no-wait`, else waits and
/// reports (a line for tables, the final operation for json/yaml).
async fn finish_action(
    client: &Client,
    format: OutputFormat,
    verb: &str,
    done: &str,
    name: &Name,
    op: Result<Operation, vireo_client::ClientError>,
    wait: &WaitArgs,
) -> anyhow::Result<u8> {
    let op = op.with_context(|| format!("cannot {verb} VM {name}"))?;
    if wait.no_wait {
        print(format, &op)?;
        return Ok(0);
    }
    let op = progress::wait_operation(client, &op, wait.wait_timeout)
        .await
        .with_context(|| format!("cannot {verb} VM {name}"))?;
    match format {
        OutputFormat::Table => println!("VM {name} {done}."),
        _ => print(format, &op)?,
    }
    Ok(0)
}

async fn create(client: &Client, format: OutputFormat, args: CreateArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let request = args.request()?;
    if let Some(count) = args.count {
        return create_many(client, format, &args, request, count, started).await;
    }
    let name = request.name.clone();
    let op = client
        .create_vm(&request)
        .await
        .with_context(|| format!("cannot create VM {name}"))?;
    if args.no_wait {
        print(format, &op)?;
        return Ok(0);
    }
    progress::wait_operation(client, &op, args.timeout)
        .await
        .with_context(|| format!("cannot create VM {name}"))?;
    let vm = if args.start && args.wait {
        let remaining = args.timeout.saturating_sub(started.elapsed());
        progress::wait_guest_ready(client, name.as_str(), remaining)
            .await
            .with_context(|| format!("VM {name} was created but did not become ready"))?
    } else {
        client
            .get_vm(name.as_str())
            .await
            .with_context(|| format!("cannot read VM {name} back"))?
    };
    print(format, &vm)?;
    Ok(0)
}

/// `vm create --template T --count N --prefix P`: one operation, then (with --start --wait)
/// every guest ready.
async fn create_many(
    client: &Client,
    format: OutputFormat,
    args: &CreateArgs,
    request: CreateVmRequest,
    count: u32,
    started: Instant,
) -> anyhow::Result<u8> {
    let prefix = request.name.clone();
    let what = || format!("cannot create VMs {prefix}1..{prefix}{count}");
    let op = client.create_vm(&request).await.with_context(what)?;
    if args.no_wait {
        print(format, &op)?;
        return Ok(0);
    }
    progress::wait_operation(client, &op, args.timeout)
        .await
        .with_context(what)?;
    let mut vms = Vec::new();
    for i in 1..=count {
        let name = format!("{prefix}{i}");
        let vm = if args.start && args.wait {
            let remaining = args.timeout.saturating_sub(started.elapsed());
            progress::wait_guest_ready(client, &name, remaining)
                .await
                .with_context(|| format!("VM {name} was created but did not become ready"))?
        } else {
            client
                .get_vm(&name)
                .await
                .with_context(|| format!("cannot read VM {name} back"))?
        };
        vms.push(vm);
    }
    print(format, vms.as_slice())?;
    Ok(0)
}

async fn delete(client: &Client, format: OutputFormat, args: DeleteArgs) -> anyhow::Result<u8> {
    let name = &args.name;
    if args.force {
        let vm = client
            .get_vm(name.as_str())
            .await
            .with_context(|| format!("cannot delete VM {name}"))?;
        if vm.state.has_process() {
            let op = client
                .kill_vm(name.as_str())
                .await
                .with_context(|| format!("cannot kill VM {name} before deleting it"))?;
            progress::wait_operation(client, &op, args.wait.wait_timeout)
                .await
                .with_context(|| format!("cannot kill VM {name} before deleting it"))?;
        }
    }
    let op = client.delete_vm(name.as_str()).await;
    finish_action(client, format, "delete", "deleted", name, op, &args.wait).await
}

/// Exit status for a guest command: its own status, or 128 + signal like a shell.
pub fn exec_exit_status(exit_code: i32, signal: Option<i32>) -> u8 {
    match signal {
        Some(sig) => u8::try_from(128 + sig.clamp(0, 127)).unwrap_or(255),
        None => u8::try_from(exit_code).unwrap_or(255),
    }
}

async fn exec(client: &Client, format: OutputFormat, args: ExecArgs) -> anyhow::Result<u8> {
    let name = &args.name;
    let stdin_base64 = if args.stdin {
        let mut data = Vec::new();
        std::io::stdin()
            .take(MAX_EXEC_STDIN + 1)
            .read_to_end(&mut data)
            .context("cannot read standard input")?;
        if data.len() as u64 > MAX_EXEC_STDIN {
            bail!(
                "standard input is larger than {} MiB, the limit of vm exec --stdin",
                MAX_EXEC_STDIN >> 20
            );
        }
        Some(base64::engine::general_purpose::STANDARD.encode(&data))
    } else {
        None
    };
    let request = ExecRequest {
        command: args.command.clone(),
        stdin_base64,
        timeout_s: args.timeout,
    };
    let result = client
        .exec(name.as_str(), &request)
        .await
        .with_context(|| format!("cannot run {:?} in VM {name}", args.command.join(" ")))?;
    let status = exec_exit_status(result.exit_code, result.signal);
    if format != OutputFormat::Table {
        print(format, &result)?;
        return Ok(status);
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let stdout = engine
        .decode(&result.stdout_base64)
        .context("the daemon sent malformed stdout")?;
    let stderr = engine
        .decode(&result.stderr_base64)
        .context("the daemon sent malformed stderr")?;
    std::io::stdout()
        .write_all(&stdout)
        .and_then(|()| std::io::stdout().flush())
        .context("cannot write to stdout")?;
    std::io::stderr()
        .write_all(&stderr)
        .context("cannot write to stderr")?;
    if result.truncated {
        eprintln!("warning: the guest agent truncated the command's output");
    }
    if let Some(sig) = result.signal {
        if std::io::stderr().is_terminal() {
            eprintln!("warning: the command was killed by signal {sig}");
        }
    }
    Ok(status)
}

async fn edit(client: &Client, format: OutputFormat, args: EditArgs) -> anyhow::Result<u8> {
    let name = &args.name;
    let tagged = client
        .get_vm_tagged(name.as_str())
        .await
        .with_context(|| format!("cannot edit VM {name}"))?;
    // The daemon's ETag is the quoted revision; build the same if a proxy dropped it.
    let etag = tagged
        .etag
        .unwrap_or_else(|| format!("\"{}\"", tagged.value.revision));
    let request = UpdateVmRequest {
        vcpus: args.vcpus,
        memory_mib: args.memory,
        cloud_init: args.cloud_init.config()?,
    };
    let vm = client
        .update_vm(name.as_str(), &request, &etag)
        .await
        .with_context(|| format!("cannot edit VM {name}"))?;
    print(format, &vm)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_mib() {
        assert_eq!(parse_mib("1GiB"), Ok(1024));
        assert_eq!(parse_mib("512M"), Ok(512));
        assert!(parse_mib("512")
            .unwrap_err()
            .contains("bare numbers are bytes"));
        assert!(parse_mib("0MiB").is_err());
        assert!(parse_mib("1.5G").is_err());
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exec_exit_status(0, None), 0);
        assert_eq!(exec_exit_status(3, None), 3);
        assert_eq!(exec_exit_status(0, Some(9)), 137);
        assert_eq!(exec_exit_status(-1, None), 255);
        assert_eq!(exec_exit_status(300, None), 255);
    }
}
