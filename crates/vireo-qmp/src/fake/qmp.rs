//! A fake QMP server speaking the real wire protocol (test-only).
//!
//! It listens on a unix socket, sends a QEMU-7.2-shaped greeting, insists on
//! `qmp_capabilities` first (like QEMU), records every command, and answers through a handler
//! closure. Replies can be delayed (other commands are answered meanwhile, so replies arrive
//! out of order), withheld, followed by events, or followed by closing the connection. Events
//! can also be emitted and the connection dropped at any time through [`FakeQmpControl`].
//!
//! Invariants: one client connection is served at a time (a new connection replaces the
//! previous one, as QEMU's monitor chardev does); dropping the server stops all its tasks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use crate::framing::{is_blank, read_line_bounded};

/// A command as the fake received it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCommand {
    pub name: String,
    pub arguments: Option<Value>,
    pub id: Option<Value>,
}

/// What the fake does in response to a command.
#[derive(Debug, Clone, PartialEq)]
pub enum FakeReply {
    /// `{"return": value}`.
    Return(Value),
    /// `{"error": {"class", "desc"}}`.
    Error { class: String, desc: String },
    /// Answer after `Duration`; later commands are answered in the meantime.
    Delayed(Duration, Box<FakeReply>),
    /// Never answer.
    NoReply,
    /// Send `reply`, then the events in order, then close the connection if `close`.
    Then {
        reply: Box<FakeReply>,
        events: Vec<(String, Value)>,
        close: bool,
    },
}

impl FakeReply {
    pub fn ok() -> Self {
        FakeReply::Return(json!({}))
    }

    pub fn error(class: &str, desc: &str) -> Self {
        FakeReply::Error {
            class: class.into(),
            desc: desc.into(),
        }
    }
}

type Handler = Arc<dyn Fn(&FakeCommand, &FakeQmpControl) -> FakeReply + Send + Sync>;

enum Outgoing {
    Line(String),
    Close,
}

struct Shared {
    handler: Handler,
    received: Mutex<Vec<FakeCommand>>,
    current: Mutex<Option<mpsc::UnboundedSender<Outgoing>>>,
    connections: AtomicUsize,
    tasks: Mutex<Vec<AbortHandle>>,
    version: (u32, u32, u32),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Test-only code; a poisoned lock still holds consistent data (single pushes/replaces).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Handle for emitting events and dropping the connection; cheap to clone.
#[derive(Clone)]
pub struct FakeQmpControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeQmpControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeQmpControl").finish_non_exhaustive()
    }
}

fn event_line(name: &str, data: &Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut ev = json!({
        "event": name,
        "timestamp": {"seconds": now.as_secs(), "microseconds": now.subsec_micros()},
    });
    if !data.is_null() {
        ev["data"] = data.clone();
    }
    ev.to_string()
}

impl FakeQmpControl {
    fn send(&self, out: Outgoing) -> bool {
        match lock(&self.shared.current).as_ref() {
            Some(tx) => tx.send(out).is_ok(),
            None => false,
        }
    }

    /// Sends an event to the connected client. Returns false when no client is connected.
    pub fn emit_event(&self, name: &str, data: Value) -> bool {
        self.send(Outgoing::Line(event_line(name, &data)))
    }

    /// Closes the current connection (the client sees EOF). Returns false if none.
    pub fn drop_connection(&self) -> bool {
        self.send(Outgoing::Close)
    }
}

/// The fake server. Dropping it stops listening and closes the connection.
pub struct FakeQmpServer {
    path: PathBuf,
    control: FakeQmpControl,
}

impl std::fmt::Debug for FakeQmpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeQmpServer")
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for FakeQmpServer {
    fn drop(&mut self) {
        for t in lock(&self.control.shared.tasks).drain(..) {
            t.abort();
        }
    }
}

impl FakeQmpServer {
    /// Listens on `path` (which must not exist) and answers commands with `handler`.
    pub async fn start<F>(path: impl AsRef<Path>, handler: F) -> std::io::Result<Self>
    where
        F: Fn(&FakeCommand, &FakeQmpControl) -> FakeReply + Send + Sync + 'static,
    {
        let path = path.as_ref().to_path_buf();
        let listener = UnixListener::bind(&path)?;
        let shared = Arc::new(Shared {
            handler: Arc::new(handler),
            received: Mutex::new(Vec::new()),
            current: Mutex::new(None),
            connections: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
            version: (7, 2, 0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        lock(&shared.tasks).push(accept.abort_handle());
        Ok(Self {
            path,
            control: FakeQmpControl { shared },
        })
    }

    /// A server backed by [`FakeVm`] in the `running` state.
    pub async fn start_vm(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let vm = FakeVm::new(true);
        Self::start(path, move |cmd, _| vm.handle(cmd)).await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn control(&self) -> FakeQmpControl {
        self.control.clone()
    }

    pub fn emit_event(&self, name: &str, data: Value) -> bool {
        self.control.emit_event(name, data)
    }

    pub fn drop_connection(&self) -> bool {
        self.control.drop_connection()
    }

    /// Commands received after capabilities negotiation, in arrival order.
    pub fn received(&self) -> Vec<FakeCommand> {
        lock(&self.control.shared.received).clone()
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.control.shared.connections.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let task = tokio::spawn(serve(stream, shared.clone()));
        lock(&shared.tasks).push(task.abort_handle());
    }
}

fn reply_line(reply: &FakeReply, id: &Option<Value>) -> Option<String> {
    let mut msg = match reply {
        FakeReply::Return(v) => json!({ "return": v }),
        FakeReply::Error { class, desc } => json!({"error": {"class": class, "desc": desc}}),
        _ => return None,
    };
    if let Some(id) = id {
        msg["id"] = id.clone();
    }
    Some(msg.to_string())
}

/// Queues the outgoing messages for `reply`, spawning a timer for delayed ones.
fn send_reply(
    tx: &mpsc::UnboundedSender<Outgoing>,
    reply: FakeReply,
    id: Option<Value>,
    shared: &Arc<Shared>,
) {
    match reply {
        FakeReply::Delayed(delay, inner) => {
            let tx = tx.clone();
            let shared2 = shared.clone();
            let task = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                send_reply(&tx, *inner, id, &shared2);
            });
            lock(&shared.tasks).push(task.abort_handle());
        }
        FakeReply::NoReply => {}
        FakeReply::Then {
            reply,
            events,
            close,
        } => {
            send_reply(tx, *reply, id, shared);
            for (name, data) in events {
                let _ = tx.send(Outgoing::Line(event_line(&name, &data)));
            }
            if close {
                let _ = tx.send(Outgoing::Close);
            }
        }
        plain => {
            if let Some(line) = reply_line(&plain, &id) {
                let _ = tx.send(Outgoing::Line(line));
            }
        }
    }
}

async fn serve(stream: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    *lock(&shared.current) = Some(tx.clone());
    let closing = Arc::new(Notify::new());
    let closing_w = closing.clone();
    let writer = async move {
        while let Some(out) = rx.recv().await {
            match out {
                Outgoing::Line(mut line) => {
                    line.push_str("\r\n");
                    if write.write_all(line.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Outgoing::Close => break,
            }
        }
        let _ = write.shutdown().await;
        closing_w.notify_one();
    };
    let (major, minor, micro) = shared.version;
    let greeting = json!({"QMP": {"version": {"qemu": {"major": major, "minor": minor, "micro": micro},
        "package": "vireo-fake"}, "capabilities": ["oob"]}});
    let _ = tx.send(Outgoing::Line(greeting.to_string()));
    let control = FakeQmpControl {
        shared: shared.clone(),
    };
    let reader = async {
        let mut reader = BufReader::new(read);
        let mut buf = Vec::new();
        let mut negotiated = false;
        while let Ok(true) = read_line_bounded(&mut reader, &mut buf, 1 << 20).await {
            if is_blank(&buf) {
                continue;
            }
            let Ok(msg) = serde_json::from_slice::<Value>(&buf) else {
                let err = FakeReply::error("GenericError", "JSON parse error");
                send_reply(&tx, err, None, &shared);
                continue;
            };
            let id = msg.get("id").cloned();
            let Some(name) = msg.get("execute").and_then(Value::as_str) else {
                send_reply(
                    &tx,
                    FakeReply::error("GenericError", "QMP input lacks member 'execute'"),
                    id,
                    &shared,
                );
                continue;
            };
            if !negotiated {
                let reply = if name == "qmp_capabilities" {
                    negotiated = true;
                    FakeReply::ok()
                } else {
                    FakeReply::error(
                        "CommandNotFound",
                        "Expecting capabilities negotiation with 'qmp_capabilities'",
                    )
                };
                send_reply(&tx, reply, id, &shared);
                continue;
            }
            let cmd = FakeCommand {
                name: name.to_string(),
                arguments: msg.get("arguments").cloned(),
                id,
            };
            lock(&shared.received).push(cmd.clone());
            let reply = (shared.handler)(&cmd, &control);
            send_reply(&tx, reply, cmd.id, &shared);
        }
    };
    let writer = tokio::spawn(writer);
    lock(&shared.tasks).push(writer.abort_handle());
    // The connection ends when the client hangs up or the writer closes it.
    tokio::select! {
        _ = reader => {}
        _ = closing.notified() => {}
    }
    let mut current = lock(&shared.current);
    if current.as_ref().is_some_and(|c| c.same_channel(&tx)) {
        *current = None;
    }
    drop(current);
    // With every sender gone the writer flushes what is queued (e.g. a final reply) and ends.
    drop(tx);
}

/// A minimal model of a VM's run state answering the commands the engine uses, with the
/// events real QEMU emits: `stop`→STOP, `cont`→RESUME, `system_reset`→RESET,
/// `system_powerdown`→POWERDOWN then (guest honours ACPI) SHUTDOWN and connection close,
/// `quit`→reply, SHUTDOWN, close.
#[derive(Debug, Clone)]
pub struct FakeVm {
    running: Arc<Mutex<String>>,
}

impl FakeVm {
    pub fn new(running: bool) -> Self {
        let status = if running { "running" } else { "prelaunch" };
        Self {
            running: Arc::new(Mutex::new(status.to_string())),
        }
    }

    /// Current run state name.
    pub fn status(&self) -> String {
        lock(&self.running).clone()
    }

    pub fn handle(&self, cmd: &FakeCommand) -> FakeReply {
        let mut status = lock(&self.running);
        let event = |name: &str, data: Value| (name.to_string(), data);
        match cmd.name.as_str() {
            "query-status" => FakeReply::Return(json!({
                "running": *status == "running", "singlestep": false, "status": *status,
            })),
            "query-version" => FakeReply::Return(json!({
                "qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "vireo-fake",
            })),
            "stop" => {
                let was_running = *status == "running";
                *status = "paused".into();
                let events = if was_running {
                    vec![event("STOP", Value::Null)]
                } else {
                    vec![]
                };
                FakeReply::Then {
                    reply: Box::new(FakeReply::ok()),
                    events,
                    close: false,
                }
            }
            "cont" => {
                let was_running = *status == "running";
                *status = "running".into();
                let events = if was_running {
                    vec![]
                } else {
                    vec![event("RESUME", Value::Null)]
                };
                FakeReply::Then {
                    reply: Box::new(FakeReply::ok()),
                    events,
                    close: false,
                }
            }
            "system_reset" => FakeReply::Then {
                reply: Box::new(FakeReply::ok()),
                events: vec![event(
                    "RESET",
                    json!({"guest": false, "reason": "host-qmp-system-reset"}),
                )],
                close: false,
            },
            "system_powerdown" => {
                *status = "shutdown".into();
                FakeReply::Then {
                    reply: Box::new(FakeReply::ok()),
                    events: vec![
                        event("POWERDOWN", Value::Null),
                        event(
                            "SHUTDOWN",
                            json!({"guest": true, "reason": "guest-shutdown"}),
                        ),
                    ],
                    close: true,
                }
            }
            "quit" => {
                *status = "shutdown".into();
                FakeReply::Then {
                    reply: Box::new(FakeReply::ok()),
                    events: vec![event(
                        "SHUTDOWN",
                        json!({"guest": false, "reason": "host-qmp-quit"}),
                    )],
                    close: true,
                }
            }
            other => FakeReply::error(
                "CommandNotFound",
                &format!("The command {other} has not been found"),
            ),
        }
    }
}
