//! An in-memory hypervisor for engine tests (tier 2): machines that obey the same contract as
//! real QEMU — events, exits, a guest agent that answers after a boot delay, a console that
//! echoes input — without spawning anything. Never used by the daemon.
//!
//! Machines live in the hypervisor, not in the engine, so a test can drop an engine and open
//! a new one over the same store and hypervisor to simulate a daemon restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use uuid::Uuid;
use vireo_image::{Limits, PathPolicy};
use vireo_types::{BootSource, DiskSpec, Name, NicSpec};

use crate::console::Console;
use crate::hv::{
    ExecOutput, GuestFacts, HvError, Hypervisor, LaunchRequest, Machine, MachineEvent,
};

/// Knobs for a test.
#[derive(Debug, Clone)]
pub struct FakeBehaviour {
    /// Time from launch until the guest agent answers.
    pub boot_delay: Duration,
    /// Whether the guest powers off on ACPI/agent shutdown requests.
    pub honours_shutdown: bool,
    /// Whether launching fails (as QEMU does on a bad device or missing firmware).
    pub fail_launch: bool,
}

impl Default for FakeBehaviour {
    fn default() -> Self {
        FakeBehaviour {
            boot_delay: Duration::from_millis(50),
            honours_shutdown: true,
            fail_launch: false,
        }
    }
}

#[derive(Debug, Default)]
pub struct FakeHypervisor {
    next_pid: AtomicU32,
    machines: Mutex<HashMap<Uuid, Arc<FakeMachine>>>,
    pub behaviour: Mutex<FakeBehaviour>,
    launches: AtomicU32,
    /// Memory snapshots outlive a machine (QEMU keeps them in the image): by (vmstate disk
    /// file, tag), whether the CPUs ran.
    saved_states: SavedStates,
}

type SavedStates = Arc<Mutex<HashMap<(PathBuf, String), bool>>>;

impl FakeHypervisor {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeHypervisor {
            next_pid: AtomicU32::new(1000),
            ..Default::default()
        })
    }

    /// The live machine of a VM, if any.
    pub fn machine(&self, uuid: Uuid) -> Option<Arc<FakeMachine>> {
        self.machines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&uuid)
            .filter(|m| !m.has_exited())
            .cloned()
    }

    pub fn launches(&self) -> u32 {
        self.launches.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Hypervisor for FakeHypervisor {
    async fn launch(&self, req: &LaunchRequest) -> Result<Arc<dyn Machine>, HvError> {
        if let BootSource::Kernel { kernel, .. } = &req.spec.boot {
            if !kernel.exists() {
                return Err(HvError::Launch {
                    vm: req.name.clone(),
                    detail: format!("kernel {} not found", kernel.display()),
                });
            }
        }
        for d in &req.spec.disks {
            if !d.path.exists() {
                return Err(HvError::Launch {
                    vm: req.name.clone(),
                    detail: format!("disk {} not found", d.path.display()),
                });
            }
        }
        if self
            .behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail_launch
        {
            return Err(HvError::Launch {
                vm: req.name.clone(),
                detail: "qemu-system-x86_64: simulated failure".into(),
            });
        }
        self.launches.fetch_add(1, Ordering::Relaxed);
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        let behaviour = self
            .behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let m = FakeMachine::new(
            pid,
            behaviour,
            req.spec.disks.clone(),
            self.saved_states.clone(),
        );
        self.machines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req.uuid, m.clone());
        Ok(m)
    }

    async fn adopt(&self, req: &LaunchRequest, pid: u32) -> Result<Arc<dyn Machine>, HvError> {
        match self.machine(req.uuid) {
            Some(m) if m.pid == pid || pid == 0 => Ok(m),
            _ => Err(HvError::AdoptMismatch {
                vm: req.name.clone(),
                pid,
            }),
        }
    }

    fn accel_name(&self) -> String {
        "tcg".into()
    }
}

/// A machine that exists only in memory.
#[derive(Debug)]
pub struct FakeMachine {
    pid: u32,
    events: broadcast::Sender<MachineEvent>,
    exited: AtomicBool,
    cpus_running: AtomicBool,
    booted_at: Mutex<tokio::time::Instant>,
    behaviour: FakeBehaviour,
    console: Console,
    /// Attached disks; storage calls act on their files with the image engine, as QEMU
    /// would on the open images.
    disks: Mutex<Vec<DiskSpec>>,
    /// Run state saved with each memory snapshot (`true` = CPUs were running).
    saved_states: SavedStates,
    /// Filesystems frozen through the "agent".
    frozen: AtomicBool,
    /// How many times the agent froze filesystems.
    pub freezes: AtomicU32,
    /// NIC hotplug calls received, in order (`add eth1 <mac> <tap>`, `remove eth1`,
    /// `link eth1 false`).
    nic_log: Mutex<Vec<String>>,
}

impl FakeMachine {
    fn new(
        pid: u32,
        behaviour: FakeBehaviour,
        disks: Vec<DiskSpec>,
        saved_states: SavedStates,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(64);
        let backend = Console::create(64 * 1024);
        let console = backend.console.clone();
        let m = Arc::new(FakeMachine {
            pid,
            events,
            exited: AtomicBool::new(false),
            cpus_running: AtomicBool::new(true),
            booted_at: Mutex::new(tokio::time::Instant::now()),
            behaviour,
            console: console.clone(),
            disks: Mutex::new(disks),
            saved_states,
            frozen: AtomicBool::new(false),
            freezes: AtomicU32::new(0),
            nic_log: Mutex::new(vec![]),
        });
        // The guest "prints" its boot banner and echoes what is typed.
        console.push_output(b"fake guest booting\r\nVIREO-GUEST-READY\r\n");
        let mut input = backend.input;
        let weak = Arc::downgrade(&m);
        tokio::spawn(async move {
            while let Some(data) = input.recv().await {
                let Some(m) = weak.upgrade() else { break };
                if m.has_exited() {
                    break;
                }
                m.console.push_output(&data);
            }
        });
        m
    }

    /// Simulates QEMU dying (e.g. killed from outside).
    pub fn crash(&self) {
        self.exit();
    }

    fn exit(&self) {
        if !self.exited.swap(true, Ordering::SeqCst) {
            self.console.mark_closed();
            let _ = self.events.send(MachineEvent::Exited);
        }
    }

    fn alive(&self) -> Result<(), HvError> {
        if self.has_exited() {
            Err(HvError::Gone)
        } else {
            Ok(())
        }
    }

    fn shutdown_soon(self: &Arc<Self>) {
        if !self.behaviour.honours_shutdown {
            return;
        }
        let _ = self
            .events
            .send(MachineEvent::ShutdownAnnounced { guest: true });
        let m = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            m.exit();
        });
    }

    fn agent_up(&self) -> bool {
        let booted = *self.booted_at.lock().unwrap_or_else(|p| p.into_inner());
        self.cpus_running.load(Ordering::SeqCst) && booted.elapsed() >= self.behaviour.boot_delay
    }
}

#[async_trait]
impl Machine for FakeMachine {
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
        Ok(self.cpus_running.load(Ordering::SeqCst))
    }
    async fn pause(&self) -> Result<(), HvError> {
        self.alive()?;
        self.cpus_running.store(false, Ordering::SeqCst);
        let _ = self.events.send(MachineEvent::CpusStopped);
        Ok(())
    }
    async fn resume(&self) -> Result<(), HvError> {
        self.alive()?;
        self.cpus_running.store(true, Ordering::SeqCst);
        let _ = self.events.send(MachineEvent::CpusResumed);
        Ok(())
    }
    async fn powerdown(&self) -> Result<(), HvError> {
        self.alive()?;
        // Needs an Arc to schedule the exit; find ourselves through the event channel's
        // lifetime is not possible, so exit synchronously after announcing.
        if self.behaviour.honours_shutdown {
            let _ = self
                .events
                .send(MachineEvent::ShutdownAnnounced { guest: true });
            self.exit();
        }
        Ok(())
    }
    async fn reset(&self) -> Result<(), HvError> {
        self.alive()?;
        *self.booted_at.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
        let _ = self.events.send(MachineEvent::Reset);
        Ok(())
    }
    async fn kill(&self) -> Result<(), HvError> {
        self.exit();
        Ok(())
    }
    async fn agent_ping(&self, timeout: Duration) -> Result<(), HvError> {
        self.alive()?;
        if self.agent_up() {
            Ok(())
        } else {
            tokio::time::sleep(timeout.min(Duration::from_millis(20))).await;
            Err(HvError::Agent("guest agent not running yet".into()))
        }
    }
    async fn agent_shutdown(&self, reboot: bool) -> Result<(), HvError> {
        self.alive()?;
        if !self.agent_up() {
            return Err(HvError::Agent("guest agent not running".into()));
        }
        if reboot {
            return self.reset().await;
        }
        if self.behaviour.honours_shutdown {
            let _ = self
                .events
                .send(MachineEvent::ShutdownAnnounced { guest: true });
            self.exit();
        }
        Ok(())
    }
    async fn agent_facts(&self, _timeout: Duration) -> Result<GuestFacts, HvError> {
        self.alive()?;
        Ok(GuestFacts {
            agent_version: Some("fake".into()),
            hostname: Some("fake".into()),
            os_name: Some("Fake OS".into()),
            ..Default::default()
        })
    }
    async fn agent_exec(
        &self,
        command: &[String],
        stdin: Option<Vec<u8>>,
        _timeout: Duration,
    ) -> Result<ExecOutput, HvError> {
        self.alive()?;
        if !self.agent_up() {
            return Err(HvError::Agent("guest agent not running".into()));
        }
        let out = match command.first().map(String::as_str) {
            Some("echo") => ExecOutput {
                stdout: format!("{}\n", command[1..].join(" ")).into_bytes(),
                ..Default::default()
            },
            Some("cat") => ExecOutput {
                stdout: stdin.unwrap_or_default(),
                ..Default::default()
            },
            Some("true") => ExecOutput::default(),
            Some("false") => ExecOutput {
                exit_code: 1,
                ..Default::default()
            },
            _ => ExecOutput {
                exit_code: 127,
                stderr: b"not found\n".to_vec(),
                ..Default::default()
            },
        };
        Ok(out)
    }
    fn console(&self) -> Console {
        self.console.clone()
    }

    async fn block_resize(&self, disk: &Name, size: u64) -> Result<(), HvError> {
        self.on_disks("block_resize", std::slice::from_ref(disk), |p| {
            vireo_image::ops::resize(p, size, &Limits::default(), &open_policy())
                .map_err(|e| e.to_string())
        })
    }
    async fn hotplug_disk(
        &self,
        disk: &DiskSpec,
        _port: vireo_qemu::hotplug::HotplugPort,
    ) -> Result<(), HvError> {
        self.alive()?;
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        if disks.iter().any(|d| d.name == disk.name) {
            return Err(HvError::Monitor {
                command: "device_add",
                detail: format!("Duplicate device ID '{}'", disk.name),
            });
        }
        if !disk.path.exists() {
            return Err(HvError::Monitor {
                command: "blockdev-add",
                detail: format!("Could not open '{}'", disk.path.display()),
            });
        }
        disks.push(disk.clone());
        Ok(())
    }
    async fn unplug_disk(&self, disk: &Name, _timeout: Duration) -> Result<(), HvError> {
        self.alive()?;
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        let before = disks.len();
        disks.retain(|d| &d.name != disk);
        if disks.len() == before {
            return Err(HvError::Monitor {
                command: "device_del",
                detail: format!("Device '{disk}' not found"),
            });
        }
        Ok(())
    }
    async fn snapshot_disks(&self, tag: &str, disks: &[Name]) -> Result<(), HvError> {
        self.on_disks("transaction", disks, |p| {
            vireo_image::qcow2::snapshot_create(p, tag, &Limits::default())
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
    async fn delete_disk_snapshots(&self, tag: &str, disks: &[Name]) -> Result<(), HvError> {
        self.on_disks("blockdev-snapshot-delete-internal-sync", disks, |p| {
            vireo_image::qcow2::snapshot_delete(p, tag, &Limits::default())
                .map_err(|e| e.to_string())
        })
    }
    async fn save_snapshot(
        &self,
        tag: &str,
        vmstate_disk: &Name,
        disks: &[Name],
    ) -> Result<(), HvError> {
        let vmstate = self.disk_path(vmstate_disk)?;
        self.snapshot_disks(tag, disks).await?;
        self.saved_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (vmstate, tag.to_string()),
                self.cpus_running.load(Ordering::SeqCst),
            );
        Ok(())
    }
    async fn load_snapshot(
        &self,
        tag: &str,
        vmstate_disk: &Name,
        disks: &[Name],
    ) -> Result<(), HvError> {
        let vmstate = self.disk_path(vmstate_disk)?;
        if !self
            .saved_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&(vmstate, tag.to_string()))
        {
            return Err(HvError::Monitor {
                command: "snapshot-load",
                detail: format!("snapshot '{tag}' has no VM state"),
            });
        }
        self.on_disks("snapshot-load", disks, |p| {
            vireo_image::qcow2::snapshot_apply(p, tag, &Limits::default())
                .map_err(|e| e.to_string())
        })?;
        self.cpus_running.store(false, Ordering::SeqCst);
        let _ = self.events.send(MachineEvent::CpusStopped);
        Ok(())
    }
    async fn agent_fsfreeze(&self, _timeout: Duration) -> Result<u32, HvError> {
        self.alive()?;
        if !self.agent_up() {
            return Err(HvError::Agent("guest agent not running".into()));
        }
        self.frozen.store(true, Ordering::SeqCst);
        self.freezes.fetch_add(1, Ordering::SeqCst);
        Ok(1)
    }
    async fn agent_fsthaw(&self, _timeout: Duration) -> Result<(), HvError> {
        self.alive()?;
        self.frozen.store(false, Ordering::SeqCst);
        Ok(())
    }
    async fn hotplug_nic(
        &self,
        nic: &NicSpec,
        port: vireo_qemu::hotplug::HotplugPort,
    ) -> Result<(), HvError> {
        self.alive()?;
        let tap = match &nic.backend {
            vireo_types::NicBackend::Tap { ifname } => ifname.clone(),
            vireo_types::NicBackend::User => "user".into(),
        };
        self.log_nic(format!("add {} {} {tap} {}", nic.name, nic.mac, port.id()));
        Ok(())
    }
    async fn unplug_nic(&self, nic: &Name, _timeout: Duration) -> Result<(), HvError> {
        self.alive()?;
        self.log_nic(format!("remove {nic}"));
        Ok(())
    }
    async fn set_nic_link(&self, nic: &Name, up: bool) -> Result<(), HvError> {
        self.alive()?;
        self.log_nic(format!("link {nic} {up}"));
        Ok(())
    }
}

/// The fake opens only files the engine gave it.
fn open_policy() -> PathPolicy {
    PathPolicy {
        allowed_dirs: vec![PathBuf::from("/")],
    }
}

impl FakeMachine {
    fn log_nic(&self, entry: String) {
        self.nic_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
    }

    /// NIC hotplug calls received so far.
    pub fn nic_log(&self) -> Vec<String> {
        self.nic_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Names of the attached disks.
    pub fn disk_names(&self) -> Vec<String> {
        self.disks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|d| d.name.to_string())
            .collect()
    }

    /// Whether the guest's filesystems are frozen right now.
    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    fn disk_path(&self, disk: &Name) -> Result<PathBuf, HvError> {
        self.disks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|d| &d.name == disk)
            .map(|d| d.path.clone())
            .ok_or_else(|| HvError::Monitor {
                command: "query-block",
                detail: format!("no disk {disk}"),
            })
    }

    /// Runs an image-engine call on the files of `disks`, as QEMU would on its open images.
    fn on_disks(
        &self,
        command: &'static str,
        disks: &[Name],
        f: impl Fn(&std::path::Path) -> Result<(), String>,
    ) -> Result<(), HvError> {
        self.alive()?;
        let paths = disks
            .iter()
            .map(|d| self.disk_path(d))
            .collect::<Result<Vec<_>, _>>()?;
        for p in paths {
            f(&p).map_err(|detail| HvError::Monitor { command, detail })?;
        }
        Ok(())
    }

    /// Used by tests to request a guest-initiated poweroff.
    pub fn guest_poweroff(self: &Arc<Self>) {
        self.shutdown_soon();
    }
}
