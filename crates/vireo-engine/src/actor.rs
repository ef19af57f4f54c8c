//! The per-VM actor: one task owns a VM's runtime state (record, QEMU handle, guest-agent
//! status) and serialises every action on it. Handlers talk to it through [`VmHandle`];
//! reads never wait for the actor — they use the [`VmView`] it publishes on a watch channel.
//!
//! Invariants:
//! - the persisted record's `state` always follows [`vireo_types::lifecycle`]: actions are
//!   admitted by `check_action`, runtime events applied by `apply_event`;
//! - the record is persisted before the actor replies to the action that changed it;
//! - an exit not preceded by our stop/kill request or a QMP `SHUTDOWN` marks the VM `crashed`
//!   and emits a `vm.crashed` event.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use vireo_types::lifecycle::{apply_event, check_action};
use vireo_types::{VmAction, VmEvent, VmState};

use crate::db::Db;
use crate::error::{EngineError, Result};
use crate::events::EventBus;
use crate::hv::{GuestFacts, HvError, Hypervisor, LaunchRequest, Machine, MachineEvent};
use crate::records::VmRecord;

/// Default and maximum graceful-stop timeouts.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(3600);

/// What readers see.
#[derive(Debug, Clone)]
pub struct VmView {
    pub record: VmRecord,
    pub revision: u64,
    pub guest_ready: bool,
    pub facts: Option<GuestFacts>,
    pub machine: Option<Arc<dyn Machine>>,
}

/// Options of an action.
#[derive(Debug, Clone, Default)]
pub struct ActionOpts {
    pub force: bool,
    pub timeout: Option<Duration>,
    pub requestor: String,
    /// Start: launch with the vCPUs stopped (the VM is `paused` once started).
    pub start_paused: bool,
}

/// A change to a stopped VM's record.
type RecordEdit = Box<dyn FnOnce(&mut VmRecord) -> Result<()> + Send>;

/// Work that needs the VM to itself (storage changes, snapshots): it runs inside the actor,
/// so no action or other work on this VM interleaves with it. It sees the current record and
/// the running machine (if any) and may return a changed record, which is persisted.
pub type ExclusiveWork = Box<
    dyn FnOnce(
            VmRecord,
            Option<Arc<dyn Machine>>,
        ) -> futures::future::BoxFuture<'static, Result<Option<VmRecord>>>
        + Send,
>;

enum Msg {
    Action {
        action: VmAction,
        opts: ActionOpts,
        reply: oneshot::Sender<Result<()>>,
    },
    Guest {
        pid: u32,
        ready: bool,
        facts: Option<GuestFacts>,
    },
    Update {
        f: RecordEdit,
        if_match: Option<u64>,
        reply: oneshot::Sender<Result<()>>,
    },
    Exclusive {
        work: ExclusiveWork,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Cheap handle to a VM actor.
#[derive(Clone)]
pub struct VmHandle {
    tx: mpsc::Sender<Msg>,
    view: watch::Receiver<VmView>,
}

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle")
            .field("vm", &self.view.borrow().record.name)
            .finish()
    }
}

impl VmHandle {
    pub fn view(&self) -> VmView {
        self.view.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<VmView> {
        self.view.clone()
    }

    /// Runs `action`; resolves when it has taken effect (for stop/kill: when QEMU is gone).
    pub async fn act(&self, action: VmAction, opts: ActionOpts) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Action {
                action,
                opts,
                reply,
            })
            .await
            .map_err(|_| EngineError::Conflict("the VM is being deleted".into()))?;
        rx.await
            .map_err(|_| EngineError::Conflict("the VM is being deleted".into()))?
    }

    /// Changes the record (only allowed while stopped), with optimistic concurrency.
    pub async fn update(
        &self,
        if_match: Option<u64>,
        f: impl FnOnce(&mut VmRecord) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Update {
                f: Box::new(f),
                if_match,
                reply,
            })
            .await
            .map_err(|_| EngineError::Conflict("the VM is being deleted".into()))?;
        rx.await
            .map_err(|_| EngineError::Conflict("the VM is being deleted".into()))?
    }

    /// Runs `work` with the VM to itself (see [`ExclusiveWork`]); its output comes back
    /// through the closure's own captures.
    pub async fn exclusive(&self, work: ExclusiveWork) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Exclusive { work, reply })
            .await
            .map_err(|_| EngineError::Conflict("the VM is being deleted".into()))?;
        rx.await
            .map_err(|_| EngineError::Conflict("the VM is being deleted".into()))?
    }

    /// Checks an action against the current state without running it.
    pub fn precheck(&self, action: VmAction) -> Result<()> {
        let state = self.view.borrow().record.state;
        check_action(state, action)
            .map(|_| ())
            .map_err(|e| EngineError::Conflict(e.to_string()))
    }
}

struct Actor {
    view: watch::Sender<VmView>,
    db: Db,
    hv: Arc<dyn Hypervisor>,
    events: Arc<EventBus>,
    tx: mpsc::WeakSender<Msg>,
    machine_events: Option<broadcast::Receiver<MachineEvent>>,
    /// We asked QEMU to go away (stop/kill) or it announced a shutdown.
    exit_expected: bool,
    stop_deadline: Option<Instant>,
    exit_waiters: Vec<oneshot::Sender<Result<()>>>,
    last_requestor: String,
}

/// Starts the actor for `record`, optionally with an already running (adopted) machine.
pub fn spawn(
    record: VmRecord,
    revision: u64,
    machine: Option<Arc<dyn Machine>>,
    db: Db,
    hv: Arc<dyn Hypervisor>,
    events: Arc<EventBus>,
) -> VmHandle {
    let (tx, rx) = mpsc::channel(64);
    let view = VmView {
        record,
        revision,
        guest_ready: false,
        facts: None,
        machine: None,
    };
    let (view_tx, view_rx) = watch::channel(view);
    let mut actor = Actor {
        view: view_tx,
        db,
        hv,
        events,
        tx: tx.downgrade(),
        machine_events: None,
        exit_expected: false,
        stop_deadline: None,
        exit_waiters: vec![],
        last_requestor: "system".into(),
    };
    if let Some(m) = machine {
        actor.attach(m);
    }
    tokio::spawn(actor.run(rx));
    VmHandle { tx, view: view_rx }
}

impl Actor {
    fn record(&self) -> VmRecord {
        self.view.borrow().record.clone()
    }

    fn machine(&self) -> Option<Arc<dyn Machine>> {
        self.view.borrow().machine.clone()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            // An exit that happened before we subscribed is not in the event stream.
            if self.machine_events.is_some() && self.machine().is_some_and(|m| m.has_exited()) {
                self.on_exit().await;
                continue;
            }
            let deadline = self.stop_deadline;
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => self.handle(m).await,
                    None => break,
                },
                ev = next_event(&mut self.machine_events) => self.on_machine_event(ev).await,
                _ = sleep_until_opt(deadline) => self.on_stop_deadline().await,
            }
        }
        // Handles are gone (VM deleted). Nothing to clean up: delete ran with no process.
        tracing::debug!(vm = %self.record().name, "actor finished");
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Action {
                action,
                opts,
                reply,
            } => self.on_action(action, opts, reply).await,
            Msg::Guest { pid, ready, facts } => {
                let current = self.machine().map(|m| m.pid());
                if current != Some(pid) {
                    return; // stale report from a previous QEMU
                }
                let was = self.view.borrow().guest_ready;
                self.view.send_modify(|v| {
                    v.guest_ready = ready;
                    if facts.is_some() {
                        v.facts = facts;
                    }
                });
                if was != ready {
                    let r = self.record();
                    self.events.emit(
                        "vm.guest_ready",
                        Some(r.project.as_str()),
                        &r.target(),
                        "system",
                        serde_json::json!({ "guest_ready": ready }),
                    );
                }
            }
            Msg::Update { f, if_match, reply } => {
                let res = self.update(f, if_match).await;
                let _ = reply.send(res);
            }
            Msg::Exclusive { work, reply } => {
                let (record, machine) = {
                    let v = self.view.borrow();
                    (v.record.clone(), v.machine.clone())
                };
                let res = match work(record, machine).await {
                    Ok(Some(changed)) => self.persist(changed).await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                // Run-state events QEMU sent during the work (snapshot jobs stop and resume
                // the CPUs) are stale now: settle the state from QEMU before replying.
                self.settle_after_exclusive().await;
                let _ = reply.send(res);
            }
        }
    }

    async fn update(&mut self, f: RecordEdit, if_match: Option<u64>) -> Result<()> {
        let (mut record, revision) = {
            let v = self.view.borrow();
            (v.record.clone(), v.revision)
        };
        if let Some(expected) = if_match {
            if expected != revision {
                return Err(EngineError::Precondition {
                    expected,
                    actual: revision,
                });
            }
        }
        if record.state != VmState::Stopped {
            return Err(EngineError::Conflict(format!(
                "VM {} must be stopped to change its configuration (it is {})",
                record.name, record.state
            )));
        }
        f(&mut record)?;
        self.persist(record).await
    }

    /// Persists `record` and publishes it.
    async fn persist(&mut self, record: VmRecord) -> Result<()> {
        let rev = self.db.put_vm(&record).await?;
        self.view.send_modify(|v| {
            v.record = record;
            v.revision = rev;
        });
        Ok(())
    }

    async fn set_state(&mut self, state: VmState, pid: Option<u32>) {
        let mut r = self.record();
        let old = r.state;
        r.state = state;
        r.pid = pid;
        if !state.has_process() {
            r.accel = None;
        }
        if let Err(e) = self.persist(r.clone()).await {
            tracing::error!(vm = %r.name, error = %crate::error::chain(&e), "persisting VM state failed");
            // Still publish, so readers see the truth.
            self.view.send_modify(|v| v.record = r.clone());
        }
        if old != state {
            self.events.emit(
                "vm.state",
                Some(r.project.as_str()),
                &r.target(),
                &self.last_requestor,
                serde_json::json!({ "from": old, "to": state }),
            );
        }
    }

    fn attach(&mut self, m: Arc<dyn Machine>) {
        self.machine_events = Some(m.subscribe());
        self.exit_expected = false;
        let pid = m.pid();
        self.view.send_modify(|v| {
            v.machine = Some(m.clone());
            v.guest_ready = false;
        });
        if let Some(tx) = self.tx.upgrade() {
            tokio::spawn(guest_watch(m, pid, tx.downgrade()));
        }
    }

    async fn on_action(
        &mut self,
        action: VmAction,
        opts: ActionOpts,
        reply: oneshot::Sender<Result<()>>,
    ) {
        let record = self.record();
        let next = match check_action(record.state, action) {
            Ok(n) => n,
            Err(e) => {
                let _ = reply.send(Err(EngineError::Conflict(e.to_string())));
                return;
            }
        };
        self.last_requestor = opts.requestor.clone();
        match action {
            VmAction::Start if record.template => {
                let _ = reply.send(Err(EngineError::Conflict(format!(
                    "VM {} is a template and cannot start; create a VM from it (vireo vm create NAME --template {})",
                    record.name, record.name
                ))));
            }
            VmAction::Start => {
                let res = self.start(next, opts.start_paused).await;
                let _ = reply.send(res);
            }
            VmAction::Stop if !record.state.has_process() => {
                // Acknowledging a crash.
                self.set_state(next, None).await;
                let _ = reply.send(Ok(()));
            }
            VmAction::Stop => self.stop(opts, reply).await,
            VmAction::Kill => {
                self.exit_expected = true;
                self.set_state(VmState::Stopping, record.pid).await;
                match self.machine() {
                    Some(m) => {
                        self.exit_waiters.push(reply);
                        if let Err(e) = m.kill().await {
                            tracing::warn!(vm = %record.name, error = %e, "kill failed");
                        }
                    }
                    None => {
                        self.set_state(VmState::Stopped, None).await;
                        let _ = reply.send(Ok(()));
                    }
                }
            }
            VmAction::Pause | VmAction::Resume | VmAction::Restart => {
                let res = self.simple(action, next, opts.force).await;
                let _ = reply.send(res);
            }
            VmAction::Delete => {
                // Deletion of files and record is done by the engine once this succeeds; the
                // actor only confirms there is no process.
                let _ = reply.send(Ok(()));
            }
        }
    }

    async fn start(&mut self, during: VmState, start_paused: bool) -> Result<()> {
        let record = self.record();
        self.set_state(during, None).await;
        let req = LaunchRequest {
            uuid: record.uuid,
            name: record.name.to_string(),
            spec: record.spec.clone(),
            run_dir: record.dir.clone(),
            placement: record.placement.clone(),
            start_paused,
        };
        match self.hv.launch(&req).await {
            Ok(m) => {
                let pid = m.pid();
                let mut r = self.record();
                r.accel = Some(self.hv.accel_name());
                r.pid = Some(pid);
                r.state = apply_event(during, VmEvent::Started);
                if start_paused {
                    // QEMU sits in prelaunch (`-S`); no STOP event will tell us.
                    r.state = apply_event(r.state, VmEvent::CpusStopped);
                }
                let old = during;
                let to = r.state;
                if let Err(e) = self.persist(r.clone()).await {
                    // Without a persisted pid the VM could not be re-attached: do not leave
                    // an untracked QEMU behind.
                    let _ = m.kill().await;
                    self.set_state(VmState::Stopped, None).await;
                    return Err(e);
                }
                self.events.emit(
                    "vm.state",
                    Some(r.project.as_str()),
                    &r.target(),
                    &self.last_requestor,
                    serde_json::json!({"from": old, "to": to}),
                );
                self.attach(m);
                Ok(())
            }
            Err(e) => {
                let next = apply_event(during, VmEvent::StartFailed);
                self.set_state(next, None).await;
                Err(match e {
                    HvError::Launch { detail, .. } => EngineError::Unavailable(format!(
                        "starting VM {} failed: {detail}",
                        record.name
                    )),
                    other => EngineError::internal(format!("starting VM {}", record.name), other),
                })
            }
        }
    }

    async fn stop(&mut self, opts: ActionOpts, reply: oneshot::Sender<Result<()>>) {
        let record = self.record();
        let Some(m) = self.machine() else {
            self.set_state(VmState::Stopped, None).await;
            let _ = reply.send(Ok(()));
            return;
        };
        self.exit_expected = true;
        let was_paused = record.state == VmState::Paused;
        self.set_state(VmState::Stopping, record.pid).await;
        self.exit_waiters.push(reply);
        if opts.force {
            let _ = m.kill().await;
            return;
        }
        if was_paused {
            // ACPI and the agent need running guest CPUs.
            let _ = m.resume().await;
        }
        let graceful = if self.view.borrow().guest_ready {
            match m.agent_shutdown(false).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::info!(vm = %record.name, error = %e, "guest agent shutdown failed; using ACPI");
                    m.powerdown().await
                }
            }
        } else {
            m.powerdown().await
        };
        if let Err(e) = graceful {
            tracing::warn!(vm = %record.name, error = %e, "graceful shutdown request failed; forcing");
            let _ = m.kill().await;
            return;
        }
        let timeout = opts
            .timeout
            .unwrap_or(DEFAULT_STOP_TIMEOUT)
            .min(MAX_STOP_TIMEOUT);
        self.stop_deadline = Some(Instant::now() + timeout);
    }

    async fn on_stop_deadline(&mut self) {
        self.stop_deadline = None;
        if let Some(m) = self.machine() {
            tracing::warn!(vm = %self.record().name, "graceful shutdown timed out; forcing");
            let _ = m.kill().await;
        }
    }

    async fn simple(&mut self, action: VmAction, next: VmState, force: bool) -> Result<()> {
        let record = self.record();
        let m = self.machine().ok_or_else(|| {
            EngineError::Conflict(format!("VM {} has no QEMU process", record.name))
        })?;
        let res = match action {
            VmAction::Pause => m.pause().await,
            VmAction::Resume => m.resume().await,
            VmAction::Restart => {
                if record.state == VmState::Paused {
                    let _ = m.resume().await;
                }
                let ready = self.view.borrow().guest_ready;
                self.view.send_modify(|v| v.guest_ready = false);
                if ready && !force {
                    match m.agent_shutdown(true).await {
                        Ok(()) => Ok(()),
                        Err(_) => m.reset().await,
                    }
                } else {
                    m.reset().await
                }
            }
            _ => Ok(()),
        };
        res.map_err(|e| EngineError::internal(format!("{action} of VM {}", record.name), e))?;
        self.set_state(next, record.pid).await;
        Ok(())
    }

    /// Drops the CPU stop/resume events queued while exclusive work ran, handles any other
    /// event, and sets `running`/`paused` from QEMU's own answer.
    async fn settle_after_exclusive(&mut self) {
        let mut other = Vec::new();
        if let Some(rx) = self.machine_events.as_mut() {
            loop {
                match rx.try_recv() {
                    Ok(MachineEvent::CpusStopped | MachineEvent::CpusResumed) => {}
                    Ok(ev) => other.push(ev),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
        }
        for ev in other {
            self.on_machine_event(Some(ev)).await;
        }
        let record = self.record();
        if !matches!(record.state, VmState::Running | VmState::Paused) {
            return;
        }
        if let Some(m) = self.machine() {
            if let Ok(running) = m.cpus_running().await {
                let want = if running {
                    VmState::Running
                } else {
                    VmState::Paused
                };
                if want != record.state {
                    self.set_state(want, record.pid).await;
                }
            }
        }
    }

    async fn on_machine_event(&mut self, ev: Option<MachineEvent>) {
        let Some(ev) = ev else {
            // Event channel closed: the machine is gone.
            return self.on_exit().await;
        };
        let record = self.record();
        match ev {
            MachineEvent::CpusStopped => {
                let next = apply_event(record.state, VmEvent::CpusStopped);
                self.set_state(next, record.pid).await;
            }
            MachineEvent::CpusResumed => {
                let next = apply_event(record.state, VmEvent::CpusResumed);
                self.set_state(next, record.pid).await;
            }
            MachineEvent::ShutdownAnnounced { guest } => {
                tracing::info!(vm = %record.name, guest, "shutdown announced");
                self.exit_expected = true;
            }
            MachineEvent::Reset => {
                self.view.send_modify(|v| v.guest_ready = false);
            }
            MachineEvent::Exited => self.on_exit().await,
        }
    }

    async fn on_exit(&mut self) {
        self.machine_events = None;
        self.stop_deadline = None;
        let record = self.record();
        let requested = self.exit_expected;
        let next = apply_event(record.state, VmEvent::Exited { requested });
        self.view.send_modify(|v| {
            v.machine = None;
            v.guest_ready = false;
        });
        if next == VmState::Crashed {
            tracing::warn!(vm = %record.name, "QEMU exited unexpectedly");
            self.last_requestor = "system".into();
            self.events.emit(
                "vm.crashed",
                Some(record.project.as_str()),
                &record.target(),
                "system",
                serde_json::json!({ "pid": record.pid }),
            );
        }
        self.set_state(next, None).await;
        for w in self.exit_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        self.exit_expected = false;
    }
}

async fn next_event(rx: &mut Option<broadcast::Receiver<MachineEvent>>) -> Option<MachineEvent> {
    match rx {
        Some(r) => loop {
            match r.recv().await {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Pause between agent pings while the guest is not ready yet. Every failed ping makes the
/// agent client resynchronise the virtio-serial channel, which costs the booting guest CPU
/// time, so booting guests are probed gently; a ready guest is re-checked rarely.
const PING_WHILE_BOOTING: Duration = Duration::from_millis(500);
const PING_WHEN_READY: Duration = Duration::from_secs(5);
/// How often a ready guest's facts are read again: the agent usually answers before DHCP has
/// finished or cloud-init has set the host name, and NICs are hot-added later, so facts read
/// only when the agent first answered would stay stale for the guest's lifetime.
const FACTS_REFRESH: Duration = Duration::from_secs(15);

/// Polls the guest agent while the machine lives and reports readiness changes, and facts that
/// changed while the guest stays ready (read every [`FACTS_REFRESH`]), to the actor.
async fn guest_watch(m: Arc<dyn Machine>, pid: u32, tx: mpsc::WeakSender<Msg>) {
    let mut ready = false;
    // The facts last reported, and when they were read.
    let mut reported: Option<GuestFacts> = None;
    let mut read_at = Instant::now();
    let mut exits = m.subscribe();
    // No agent answers before the guest kernel has even started.
    tokio::time::sleep(PING_WHILE_BOOTING).await;
    loop {
        if m.has_exited() {
            return;
        }
        let ok = m.agent_ping(Duration::from_millis(1500)).await.is_ok();
        let refresh = ok && ready && read_at.elapsed() >= FACTS_REFRESH;
        if ok != ready || refresh {
            let facts = if ok {
                read_at = Instant::now();
                m.agent_facts(Duration::from_secs(3)).await.ok()
            } else {
                None
            };
            // A refresh reports only facts it could read that differ from the last report.
            let changed = facts.is_some() && facts != reported;
            if ok != ready || changed {
                if facts.is_some() {
                    reported.clone_from(&facts);
                }
                let Some(tx) = tx.upgrade() else { return };
                if tx
                    .send(Msg::Guest {
                        pid,
                        ready: ok,
                        facts,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            ready = ok;
        }
        let pause = if ready {
            PING_WHEN_READY
        } else {
            PING_WHILE_BOOTING
        };
        // Wake early on a reset (the guest reboots and loses its agent) or exit.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            ev = exits.recv() => match ev {
                Ok(MachineEvent::Exited) | Err(broadcast::error::RecvError::Closed) => return,
                Ok(MachineEvent::Reset) => {
                    ready = false;
                }
                _ => {}
            }
        }
    }
}
