//! An in-memory hypervisor for engine tests (tier 2): machines that obey the same contract as
//! real QEMU — events, exits, a guest agent that answers after a boot delay, a console that
//! echoes input — without spawning anything. Never used by the daemon.
//!
//! Machines live in the hypervisor, not in the engine, so a test can drop an engine and open
//! a new one over the same store and hypervisor to simulate a daemon restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use uuid::Uuid;
use vireo_types::BootSource;

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
}

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
        let m = FakeMachine::new(pid, behaviour);
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
    /// Monitor commands received, in order (`command` or `command <arguments JSON>`).
    monitor_log: Mutex<Vec<String>>,
    /// Emulated PCIe hotplug ports `hp0`..: the device id plugged into each.
    hotplug_ports: Mutex<Vec<Option<String>>>,
}

impl FakeMachine {
    fn new(pid: u32, behaviour: FakeBehaviour) -> Arc<Self> {
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
            monitor_log: Mutex::new(vec![]),
            hotplug_ports: Mutex::new(vec![None; FAKE_HOTPLUG_PORTS]),
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
    async fn monitor(
        &self,
        command: &'static str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, HvError> {
        self.alive()?;
        self.monitor_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(match &arguments {
                Some(a) => format!("{command} {a}"),
                None => command.to_string(),
            });
        let arg = |k: &str| {
            arguments
                .as_ref()
                .and_then(|a| a[k].as_str())
                .unwrap_or("")
                .to_string()
        };
        let fail = |detail: String| HvError::Monitor { command, detail };
        let mut ports = self.hotplug_ports.lock().unwrap_or_else(|p| p.into_inner());
        match command {
            "query-pci" => {
                let devices: Vec<serde_json::Value> = ports
                    .iter()
                    .enumerate()
                    .map(|(i, occ)| {
                        let inner: Vec<serde_json::Value> = occ
                            .iter()
                            .map(|id| serde_json::json!({"qdev_id": id}))
                            .collect();
                        serde_json::json!({"qdev_id": format!("hp{i}"), "pci_bridge": {"devices": inner}})
                    })
                    .collect();
                Ok(serde_json::json!([{"bus": 0, "devices": devices}]))
            }
            "device_add" => {
                let bus = arg("bus");
                let slot = bus
                    .strip_prefix("hp")
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|i| *i < ports.len())
                    .ok_or_else(|| fail(format!("Bus '{bus}' not found")))?;
                if ports[slot].is_some() {
                    return Err(fail(format!("Bus '{bus}' is full")));
                }
                ports[slot] = Some(arg("id"));
                Ok(serde_json::json!({}))
            }
            "device_del" => {
                let id = arg("id");
                let slot = ports
                    .iter()
                    .position(|o| o.as_deref() == Some(id.as_str()))
                    .ok_or_else(|| fail(format!("Device '{id}' not found")))?;
                ports[slot] = None;
                Ok(serde_json::json!({}))
            }
            "netdev_add" | "netdev_del" | "set_link" => Ok(serde_json::json!({})),
            other => Err(fail(format!("The fake machine does not know {other}"))),
        }
    }
}

/// Hotplug ports a fake machine offers.
pub const FAKE_HOTPLUG_PORTS: usize = 2;

impl FakeMachine {
    /// Monitor commands received so far.
    pub fn monitor_log(&self) -> Vec<String> {
        self.monitor_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Device ids plugged into the hotplug ports.
    pub fn hotplugged(&self) -> Vec<String> {
        self.hotplug_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Used by tests to request a guest-initiated poweroff.
    pub fn guest_poweroff(self: &Arc<Self>) {
        self.shutdown_soon();
    }
}
