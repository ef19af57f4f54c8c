//! The real hypervisor: QEMU processes driven through QMP, qemu-guest-agent and the serial
//! chardev socket (`vireo-qemu` builds argv and supervises processes, `vireo-qmp` speaks the
//! protocols).
//!
//! Invariants:
//! - QEMU runs in its own session with its output in the per-VM log, so it outlives the
//!   daemon; everything needed to re-attach (pid, sockets, console log) is in the VM directory;
//! - a machine reports `Exited` exactly once, when the process is gone (pidfd) or QMP hangs
//!   up, whichever comes first.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use vireo_api::host::AccelInfo;
use vireo_qemu::accel::{Accel, AccelPolicy, AccelProbe};
use vireo_qemu::argv::disk_ids;
use vireo_qemu::argv::LaunchContext;
use vireo_qemu::hotplug::HotplugPort;
use vireo_qemu::process::QemuProcess;
use vireo_qmp::{
    BlockFormat, BlockNodes, DiskHotplug, GuestAgent, QmpClient, ShutdownMode, VmSnapshot,
};
use vireo_types::{BootSource, DiskSpec, Firmware, Name, NicSpec};

use crate::console::{Console, HISTORY_BYTES};
use crate::error::chain;
use crate::hv::{
    ExecOutput, GuestFacts, HvError, Hypervisor, LaunchRequest, Machine, MachineEvent,
};

/// Settings of the real hypervisor.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub qemu_binary: PathBuf,
    /// `auto`, `kvm` or `tcg`.
    pub accel_policy: String,
    /// Where the accelerator probe result is cached.
    pub accel_cache: PathBuf,
}

#[derive(Debug)]
pub struct QemuHypervisor {
    cfg: QemuConfig,
    policy: AccelPolicy,
    decided: tokio::sync::Mutex<Option<AccelProbe>>,
    snapshot: Mutex<Option<AccelProbe>>,
}

impl QemuHypervisor {
    pub fn new(cfg: QemuConfig) -> Self {
        let policy = cfg.accel_policy.parse().unwrap_or(AccelPolicy::Auto);
        QemuHypervisor {
            cfg,
            policy,
            decided: tokio::sync::Mutex::new(None),
            snapshot: Mutex::new(None),
        }
    }

    /// Decides the accelerator (probing with `kernel` when the policy is `auto`); idempotent.
    pub async fn decide_accel(&self, kernel: &Path) -> Accel {
        let mut d = self.decided.lock().await;
        if let Some(p) = d.as_ref() {
            return p.chosen;
        }
        let probe = vireo_qemu::accel::decide(
            self.policy,
            &self.cfg.qemu_binary,
            Some(kernel),
            &self.cfg.accel_cache,
        )
        .await;
        if probe.chosen == Accel::Tcg && probe.kvm_device_present {
            tracing::warn!(detail = %probe.detail, "using TCG software emulation: /dev/kvm is present but cannot run guests");
        } else {
            tracing::info!(accel = %probe.chosen, detail = %probe.detail, "accelerator decided");
        }
        let chosen = probe.chosen;
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(probe.clone());
        *d = Some(probe);
        chosen
    }

    async fn accel_for(&self, req: &LaunchRequest) -> Accel {
        if let Some(p) = self.decided.lock().await.as_ref() {
            return p.chosen;
        }
        match &req.spec.boot {
            BootSource::Kernel { kernel, .. } => self.decide_accel(kernel).await,
            BootSource::Disk { .. } => {
                // No kernel to probe with: only trust KVM when explicitly configured.
                if self.policy == AccelPolicy::Kvm {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
        }
    }

    /// What `GET /v1/host` reports.
    pub fn accel_info(&self) -> AccelInfo {
        let snap = self
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match snap {
            Some(p) => AccelInfo {
                chosen: p.chosen.to_string(),
                configured: self.cfg.accel_policy.clone(),
                kvm_device_present: p.kvm_device_present,
                kvm_boots_guest: p.kvm_boots_guest,
                detail: p.detail,
            },
            None => AccelInfo {
                chosen: if self.policy == AccelPolicy::Kvm {
                    "kvm".into()
                } else {
                    "tcg".into()
                },
                configured: self.cfg.accel_policy.clone(),
                kvm_device_present: Path::new("/dev/kvm").exists(),
                kvm_boots_guest: false,
                detail: "not probed yet: the probe runs when the first kernel image is available"
                    .into(),
            },
        }
    }

    pub fn qemu_version(&self) -> Option<String> {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|p| p.qemu_version.clone())
    }

    fn context(&self, req: &LaunchRequest, accel: Accel) -> Result<LaunchContext, HvError> {
        let ovmf = match &req.spec.boot {
            BootSource::Disk {
                firmware: Firmware::Uefi,
            } => {
                let launch_err = |e: vireo_qemu::ovmf::OvmfError| HvError::Launch {
                    vm: req.name.clone(),
                    detail: crate::error::chain(&e),
                };
                let template = vireo_qemu::ovmf::locate().map_err(launch_err)?;
                let paths = vireo_qemu::rundir::RunPaths::new(&req.run_dir);
                Some(
                    vireo_qemu::ovmf::prepare_vars(&template, &paths.uefi_vars())
                        .map_err(launch_err)?,
                )
            }
            _ => None,
        };
        Ok(LaunchContext {
            qemu_binary: self.cfg.qemu_binary.clone(),
            uuid: req.uuid,
            name: req.name.clone(),
            run_dir: req.run_dir.clone(),
            accel,
            ovmf,
        })
    }
}

#[async_trait]
impl Hypervisor for QemuHypervisor {
    async fn launch(&self, req: &LaunchRequest) -> Result<Arc<dyn Machine>, HvError> {
        let accel = self.accel_for(req).await;
        for sock in ["qmp.sock", "qga.sock", "serial.sock", "qemu.pid"] {
            let _ = std::fs::remove_file(req.run_dir.join(sock));
        }
        let ctx = self.context(req, accel)?;
        let options = vireo_qemu::argv::LaunchOptions {
            placement: req.placement.clone(),
            start_paused: req.start_paused,
        };
        let argv = vireo_qemu::argv::build_with(&req.spec, &ctx, &options).map_err(|e| {
            HvError::Launch {
                vm: req.name.clone(),
                detail: crate::error::chain(&e),
            }
        })?;
        let paths = vireo_qemu::rundir::RunPaths::new(&req.run_dir);
        let process = vireo_qemu::process::spawn(
            &argv,
            &paths.qemu_log(),
            &paths.pidfile(),
            &paths.qmp_socket(),
        )
        .await
        .map_err(|e| HvError::Launch {
            vm: req.name.clone(),
            detail: crate::error::chain(&e),
        })?;
        QemuMachine::attach(req, process, false).await
    }

    async fn adopt(&self, req: &LaunchRequest, pid: u32) -> Result<Arc<dyn Machine>, HvError> {
        let pid = if pid == 0 {
            std::fs::read_to_string(req.run_dir.join("qemu.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(HvError::AdoptMismatch {
                    vm: req.name.clone(),
                    pid,
                })?
        } else {
            pid
        };
        let process =
            vireo_qemu::process::adopt(pid, req.uuid).map_err(|_| HvError::AdoptMismatch {
                vm: req.name.clone(),
                pid,
            })?;
        // Re-deciding the accelerator is not needed: the process keeps what it started with.
        QemuMachine::attach(req, process, true).await
    }

    fn accel_name(&self) -> String {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| p.chosen.to_string())
            .unwrap_or_else(|| "tcg".into())
    }
}

/// One running QEMU.
#[derive(Debug)]
pub struct QemuMachine {
    pid: u32,
    name: String,
    process: QemuProcess,
    qmp: QmpClient,
    ga: GuestAgent,
    events: broadcast::Sender<MachineEvent>,
    exited: Arc<AtomicBool>,
    console: Console,
}

impl QemuMachine {
    async fn attach(
        req: &LaunchRequest,
        process: QemuProcess,
        adopted: bool,
    ) -> Result<Arc<dyn Machine>, HvError> {
        let pid = process.pid();
        let qmp = match QmpClient::connect(req.run_dir.join("qmp.sock")).await {
            Ok(q) => q,
            Err(e) => {
                if !adopted {
                    let _ = process.kill();
                }
                return Err(HvError::Launch {
                    vm: req.name.clone(),
                    detail: format!("connecting to QMP: {e}"),
                });
            }
        };
        let backend = Console::create(HISTORY_BYTES);
        let console = backend.console.clone();
        if adopted {
            // Restore history from the console log QEMU kept writing while we were away.
            if let Ok(log) = std::fs::read(req.run_dir.join("console.log")) {
                let tail = &log[log.len().saturating_sub(HISTORY_BYTES)..];
                console.push_output(tail);
            }
        }
        let (events, _) = broadcast::channel(256);
        let exited = Arc::new(AtomicBool::new(false));
        let m = Arc::new(QemuMachine {
            pid,
            name: req.name.clone(),
            process,
            qmp,
            ga: GuestAgent::new(req.run_dir.join("qga.sock")),
            events,
            exited,
            console,
        });
        m.spawn_serial(req.run_dir.join("serial.sock"), backend.input);
        m.spawn_watchers();
        Ok(m)
    }

    fn spawn_serial(
        self: &Arc<Self>,
        path: PathBuf,
        mut input: tokio::sync::mpsc::Receiver<Bytes>,
    ) {
        let console = self.console.clone();
        let exited = self.exited.clone();
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut stream = None;
            for _ in 0..50 {
                match tokio::net::UnixStream::connect(&path).await {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(_) if !exited.load(Ordering::SeqCst) => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(_) => return,
                }
            }
            let Some(stream) = stream else {
                tracing::warn!(vm = %name, "could not connect to the serial console socket");
                return;
            };
            let (mut rd, mut wr) = stream.into_split();
            let reader_console = console.clone();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => reader_console.push_output(&buf[..n]),
                    }
                }
            });
            let writer = tokio::spawn(async move {
                while let Some(data) = input.recv().await {
                    if wr.write_all(&data).await.is_err() {
                        break;
                    }
                }
            });
            let _ = reader.await;
            writer.abort();
        });
    }

    fn spawn_watchers(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let mut qmp_events = self.qmp.events();
        let events = self.events.clone();
        // QMP events → machine events.
        tokio::spawn(async move {
            loop {
                match qmp_events.recv().await {
                    Ok(ev) => {
                        let mapped = match ev.name.as_str() {
                            "STOP" => Some(MachineEvent::CpusStopped),
                            "RESUME" => Some(MachineEvent::CpusResumed),
                            "SHUTDOWN" => Some(MachineEvent::ShutdownAnnounced {
                                guest: ev
                                    .data
                                    .get("guest")
                                    .and_then(|g| g.as_bool())
                                    .unwrap_or(false),
                            }),
                            "RESET" => Some(MachineEvent::Reset),
                            _ => None,
                        };
                        if let Some(m) = mapped {
                            let _ = events.send(m);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        // Process exit (pidfd) or QMP hang-up → Exited, once.
        let weak2 = weak.clone();
        tokio::spawn(async move {
            let Some(m) = weak2.upgrade() else { return };
            let exit = m.process.exited();
            let hangup = m.qmp.closed();
            tokio::select! {
                _ = exit => {}
                _ = hangup => {
                    // QMP closes a moment before the process is fully gone; wait briefly.
                    let _ = tokio::time::timeout(Duration::from_secs(2), m.process.exited()).await;
                }
            }
            m.mark_exited();
        });
    }

    fn mark_exited(&self) {
        if !self.exited.swap(true, Ordering::SeqCst) {
            self.console.mark_closed();
            let _ = self.events.send(MachineEvent::Exited);
        }
    }

    fn alive(&self) -> Result<(), HvError> {
        if self.exited.load(Ordering::SeqCst) {
            Err(HvError::Gone)
        } else {
            Ok(())
        }
    }

    fn monitor(command: &'static str) -> impl Fn(vireo_qmp::QmpError) -> HvError {
        move |e| HvError::Monitor {
            command,
            detail: e.to_string(),
        }
    }
}

/// Maps a typed QMP helper error to [`HvError::Monitor`] with its whole cause chain.
fn monitor_chain<E: std::error::Error + 'static>(command: &'static str) -> impl Fn(E) -> HvError {
    move |e| HvError::Monitor {
        command,
        detail: chain(&e),
    }
}

/// Upper bound of a snapshot-save/-load job (RAM size over disk speed, TCG included).
const SNAPSHOT_JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// The job description of a memory snapshot over Vireo's disk node names.
fn vm_snapshot(verb: &str, tag: &str, vmstate_disk: &Name, disks: &[Name]) -> VmSnapshot {
    VmSnapshot {
        job_id: format!("vireo-{verb}-{}", uuid::Uuid::now_v7().simple()),
        tag: tag.to_string(),
        vmstate: disk_ids(vmstate_disk).format_node,
        devices: disks.iter().map(|d| disk_ids(d).format_node).collect(),
    }
}

fn agent_err(e: vireo_qmp::GuestAgentError) -> HvError {
    match e {
        vireo_qmp::GuestAgentError::RunTimeout { timeout, .. } => HvError::Timeout(timeout),
        other => HvError::Agent(other.to_string()),
    }
}

#[async_trait]
impl Machine for QemuMachine {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn subscribe(&self) -> broadcast::Receiver<MachineEvent> {
        self.events.subscribe()
    }
    fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }
    async fn cpus_running(&self) -> Result<bool, HvError> {
        self.alive()?;
        Ok(self
            .qmp
            .query_status()
            .await
            .map_err(Self::monitor("query-status"))?
            .running)
    }
    async fn pause(&self) -> Result<(), HvError> {
        self.alive()?;
        self.qmp.stop().await.map_err(Self::monitor("stop"))
    }
    async fn resume(&self) -> Result<(), HvError> {
        self.alive()?;
        self.qmp.cont().await.map_err(Self::monitor("cont"))
    }
    async fn powerdown(&self) -> Result<(), HvError> {
        self.alive()?;
        self.qmp
            .system_powerdown()
            .await
            .map_err(Self::monitor("system_powerdown"))
    }
    async fn reset(&self) -> Result<(), HvError> {
        self.alive()?;
        self.qmp
            .system_reset()
            .await
            .map_err(Self::monitor("system_reset"))
    }
    async fn kill(&self) -> Result<(), HvError> {
        if self.has_exited() {
            return Ok(());
        }
        let quit = tokio::time::timeout(Duration::from_secs(2), self.qmp.quit()).await;
        if !matches!(quit, Ok(Ok(()))) {
            let _ = self.process.kill();
        }
        // Make sure it is gone within a bound; SIGKILL if QEMU lingers after quit.
        if tokio::time::timeout(Duration::from_secs(3), self.process.exited())
            .await
            .is_err()
        {
            let _ = self.process.kill();
        }
        Ok(())
    }
    async fn agent_ping(&self, timeout: Duration) -> Result<(), HvError> {
        self.alive()?;
        self.ga.ping_with_timeout(timeout).await.map_err(agent_err)
    }
    async fn agent_shutdown(&self, reboot: bool) -> Result<(), HvError> {
        self.alive()?;
        let mode = if reboot {
            ShutdownMode::Reboot
        } else {
            ShutdownMode::Powerdown
        };
        self.ga.shutdown(mode).await.map_err(agent_err)
    }
    async fn agent_facts(&self, timeout: Duration) -> Result<GuestFacts, HvError> {
        self.alive()?;
        let fut = async {
            let info = self.ga.info().await.map_err(agent_err)?;
            let os = self.ga.get_osinfo().await.ok();
            let hostname = self.ga.get_host_name().await.ok();
            let ifaces = self.ga.network_get_interfaces().await.unwrap_or_default();
            Ok::<GuestFacts, HvError>(GuestFacts {
                agent_version: Some(info.version),
                hostname,
                os_name: os
                    .as_ref()
                    .and_then(|o| o.pretty_name.clone().or(o.name.clone())),
                os_version: os.as_ref().and_then(|o| o.version.clone()),
                kernel_release: os.as_ref().and_then(|o| o.kernel_release.clone()),
                interfaces: ifaces
                    .into_iter()
                    .filter_map(|i| {
                        let mac = i.hardware_address?;
                        Some((
                            mac,
                            i.ip_addresses
                                .into_iter()
                                .map(|a| format!("{}/{}", a.ip_address, a.prefix))
                                .collect(),
                        ))
                    })
                    .collect(),
            })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| HvError::Timeout(timeout))?
    }
    async fn agent_exec(
        &self,
        command: &[String],
        stdin: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<ExecOutput, HvError> {
        self.alive()?;
        let (path, args) = command
            .split_first()
            .ok_or_else(|| HvError::Agent("empty command".into()))?;
        let st = self
            .ga
            .run(path, args, stdin.as_deref(), timeout)
            .await
            .map_err(agent_err)?;
        Ok(ExecOutput {
            exit_code: st.exit_code.unwrap_or(if st.signal.is_some() {
                128 + st.signal.unwrap_or(0)
            } else {
                0
            }),
            signal: st.signal,
            stdout: st.stdout,
            stderr: st.stderr,
            truncated: st.stdout_truncated || st.stderr_truncated,
        })
    }
    fn console(&self) -> Console {
        self.console.clone()
    }

    async fn block_resize(&self, disk: &Name, size: u64) -> Result<(), HvError> {
        self.alive()?;
        let node = disk_ids(disk).format_node;
        self.qmp
            .block_resize(&node, size)
            .await
            .map_err(monitor_chain("block_resize"))
    }
    async fn hotplug_disk(&self, disk: &DiskSpec, port: HotplugPort) -> Result<(), HvError> {
        self.alive()?;
        let ids = disk_ids(&disk.name);
        let hp = DiskHotplug {
            device_id: ids.device,
            nodes: BlockNodes {
                file: ids.file_node,
                format: ids.format_node,
            },
            path: disk.path.clone(),
            format: match disk.format {
                vireo_types::DiskFormat::Qcow2 => BlockFormat::Qcow2,
                vireo_types::DiskFormat::Raw => BlockFormat::Raw,
            },
            read_only: disk.read_only,
            serial: Some(disk.name.to_string()),
            port: port.id(),
        };
        self.qmp
            .hot_add_disk(&hp)
            .await
            .map_err(monitor_chain("device_add"))
    }
    async fn unplug_disk(&self, disk: &Name, timeout: Duration) -> Result<(), HvError> {
        self.alive()?;
        let ids = disk_ids(disk);
        let nodes = BlockNodes {
            file: ids.file_node,
            format: ids.format_node,
        };
        self.qmp
            .hot_remove_disk(&ids.device, &nodes, timeout)
            .await
            .map_err(monitor_chain("device_del"))
    }
    async fn snapshot_disks(&self, tag: &str, disks: &[Name]) -> Result<(), HvError> {
        self.alive()?;
        // One transaction: all disks are captured at the same instant or none is.
        let actions: Vec<serde_json::Value> = disks
            .iter()
            .map(|d| {
                serde_json::json!({
                    "type": "blockdev-snapshot-internal-sync",
                    "data": {"device": disk_ids(d).format_node, "name": tag},
                })
            })
            .collect();
        self.qmp
            .execute(
                "transaction",
                Some(serde_json::json!({ "actions": actions })),
            )
            .await
            .map(|_| ())
            .map_err(Self::monitor("transaction"))
    }
    async fn delete_disk_snapshots(&self, tag: &str, disks: &[Name]) -> Result<(), HvError> {
        self.alive()?;
        for d in disks {
            self.qmp
                .snapshot_internal_delete(&disk_ids(d).format_node, tag)
                .await
                .map_err(monitor_chain("blockdev-snapshot-delete-internal-sync"))?;
        }
        Ok(())
    }
    async fn save_snapshot(
        &self,
        tag: &str,
        vmstate_disk: &Name,
        disks: &[Name],
    ) -> Result<(), HvError> {
        self.alive()?;
        let snap = vm_snapshot("save", tag, vmstate_disk, disks);
        self.qmp
            .snapshot_save(&snap, SNAPSHOT_JOB_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(monitor_chain("snapshot-save"))
    }
    async fn load_snapshot(
        &self,
        tag: &str,
        vmstate_disk: &Name,
        disks: &[Name],
    ) -> Result<(), HvError> {
        self.alive()?;
        let snap = vm_snapshot("load", tag, vmstate_disk, disks);
        self.qmp
            .snapshot_restore(&snap, false, SNAPSHOT_JOB_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(monitor_chain("snapshot-load"))
    }
    async fn agent_fsfreeze(&self, timeout: Duration) -> Result<u32, HvError> {
        self.alive()?;
        self.ga.fsfreeze_freeze(timeout).await.map_err(agent_err)
    }
    async fn agent_fsthaw(&self, timeout: Duration) -> Result<(), HvError> {
        self.alive()?;
        self.ga
            .fsfreeze_thaw(timeout)
            .await
            .map(|_| ())
            .map_err(agent_err)
    }
    async fn hotplug_nic(&self, nic: &NicSpec, port: HotplugPort) -> Result<(), HvError> {
        self.alive()?;
        let hp = vireo_qemu::hotplug::nic_hotplug(nic, port);
        self.qmp
            .hot_add_nic(&hp)
            .await
            .map_err(monitor_chain("device_add"))
    }
    async fn unplug_nic(&self, nic: &Name, timeout: Duration) -> Result<(), HvError> {
        self.alive()?;
        let ids = vireo_qemu::argv::nic_ids(nic);
        self.qmp
            .hot_remove_nic(&ids.device, &ids.netdev, timeout)
            .await
            .map_err(monitor_chain("device_del"))
    }
    async fn set_nic_link(&self, nic: &Name, up: bool) -> Result<(), HvError> {
        self.alive()?;
        let ids = vireo_qemu::argv::nic_ids(nic);
        self.qmp
            .set_link(&ids.device, up)
            .await
            .map_err(monitor_chain("set_link"))
    }
}
