//! Async client for the QEMU Machine Protocol over a unix socket.
//!
//! Protocol (QEMU docs/interop/qmp-spec): the server sends a greeting
//! `{"QMP": {"version": …, "capabilities": […]}}`, the client leaves capabilities negotiation
//! with `qmp_capabilities`, then sends `{"execute", "arguments", "id"}` requests; the server
//! answers `{"return"|"error", "id"}` and interleaves asynchronous
//! `{"event", "data", "timestamp"}` messages.
//!
//! Invariants:
//! - every request carries a unique numeric `id`; a single reader task routes each reply to
//!   the caller waiting on that id, so several commands may be in flight and replies may
//!   arrive in any order;
//! - a caller that times out or is cancelled removes its waiter, so a late reply is dropped;
//! - once the connection closes (EOF, read error, oversized message) every waiter fails with
//!   [`QmpError::Closed`], new commands fail immediately, and [`QmpClient::closed`] resolves.
//!   The engine relies on this to notice that QEMU died;
//! - dropping the last [`QmpClient`] clone stops the reader task and closes the socket.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::AbortHandle;

use crate::framing::{is_blank, read_line_bounded, FrameError};

/// Largest QMP message accepted from QEMU. Replies such as `query-qmp-schema` are a few
/// hundred KiB; 16 MiB leaves ample room while bounding memory.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP handshake on {path} failed: {reason}")]
    Handshake { path: PathBuf, reason: String },
    #[error("QMP handshake on {path} could not read from the socket")]
    HandshakeRead {
        path: PathBuf,
        #[source]
        source: FrameError,
    },
    #[error("QMP handshake on {path} could not write to the socket")]
    HandshakeWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP handshake on {path} did not finish within {timeout:?}")]
    HandshakeTimeout { path: PathBuf, timeout: Duration },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP command {command} got no reply within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("QMP connection closed before command {command} completed")]
    Closed { command: String },
    #[error("cannot send QMP command {command}")]
    Write {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected reply to QMP command {command}")]
    Decode {
        command: String,
        #[source]
        source: serde_json::Error,
    },
}

impl QmpError {
    /// The QMP error class (`GenericError`, `CommandNotFound`, …) when QEMU rejected a command.
    pub fn class(&self) -> Option<&str> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// QEMU's version triple and package string, as in the greeting and `query-version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuVersion {
    pub qemu: VersionTriple,
    #[serde(default)]
    pub package: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VersionTriple {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl fmt::Display for VersionTriple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// What the server announced before negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub version: QemuVersion,
    /// Capabilities offered (e.g. `oob`); none are enabled by this client.
    pub capabilities: Vec<String>,
}

/// Time QEMU attached to an event (seconds and microseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QmpTimestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

/// An asynchronous QMP event such as `STOP`, `RESUME`, `SHUTDOWN`, `POWERDOWN`, `RESET`.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    /// Event payload; `Value::Null` when the event carries none.
    pub data: Value,
    pub timestamp: QmpTimestamp,
}

/// QEMU run states (`RunState` in qapi/run-state.json); unknown future states are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Debug,
    Inmigrate,
    InternalError,
    IoError,
    Paused,
    Postmigrate,
    Prelaunch,
    FinishMigrate,
    RestoreVm,
    Running,
    SaveVm,
    Shutdown,
    Suspended,
    Watchdog,
    GuestPanicked,
    Colo,
    Other(String),
}

impl RunState {
    const TABLE: [(&'static str, RunState); 16] = [
        ("debug", RunState::Debug),
        ("inmigrate", RunState::Inmigrate),
        ("internal-error", RunState::InternalError),
        ("io-error", RunState::IoError),
        ("paused", RunState::Paused),
        ("postmigrate", RunState::Postmigrate),
        ("prelaunch", RunState::Prelaunch),
        ("finish-migrate", RunState::FinishMigrate),
        ("restore-vm", RunState::RestoreVm),
        ("running", RunState::Running),
        ("save-vm", RunState::SaveVm),
        ("shutdown", RunState::Shutdown),
        ("suspended", RunState::Suspended),
        ("watchdog", RunState::Watchdog),
        ("guest-panicked", RunState::GuestPanicked),
        ("colo", RunState::Colo),
    ];

    pub fn parse(s: &str) -> RunState {
        Self::TABLE
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, state)| state.clone())
            .unwrap_or_else(|| RunState::Other(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            RunState::Other(s) => s,
            known => Self::TABLE
                .iter()
                .find(|(_, state)| state == known)
                .map(|(name, _)| *name)
                .unwrap_or("unknown"),
        }
    }
}

impl<'de> Deserialize<'de> for RunState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(RunState::parse(&s))
    }
}

impl Serialize for RunState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub running: bool,
    pub status: RunState,
}

/// Tunables for [`QmpClient::connect_with`].
#[derive(Debug, Clone)]
pub struct QmpOptions {
    /// Limit for connect + greeting + `qmp_capabilities`.
    pub handshake_timeout: Duration,
    /// Timeout used by [`QmpClient::execute`] and the typed helpers.
    pub command_timeout: Duration,
    /// Events buffered per subscriber before a slow subscriber starts losing the oldest ones.
    pub event_capacity: usize,
}

impl Default for QmpOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(30),
            event_capacity: 256,
        }
    }
}

/// A QMP error reply body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    class: String,
    #[serde(default)]
    desc: String,
}

type Reply = Result<Value, ErrorBody>;

#[derive(Default)]
struct Waiters {
    closed: bool,
    by_id: HashMap<u64, oneshot::Sender<Reply>>,
}

/// State shared by the client handles and the reader task.
struct Shared {
    waiters: Mutex<Waiters>,
    events: broadcast::Sender<QmpEvent>,
    closed_tx: watch::Sender<bool>,
}

impl Shared {
    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still safe to use.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_closed(&self) {
        let mut w = self.lock_waiters();
        w.closed = true;
        // Dropping the senders wakes every waiter with `Closed`.
        w.by_id.clear();
        drop(w);
        self.closed_tx.send_replace(true);
    }
}

/// Owns the socket's write half; dropping it (with the last client clone) stops the reader.
struct Connection {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    next_id: AtomicU64,
    reader: AbortHandle,
    greeting: Greeting,
    options: QmpOptions,
    shared: Arc<Shared>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        // Watchers obtained through `closed_watch` outlive the clients; tell them.
        self.shared.mark_closed();
    }
}

/// A connected, negotiated QMP session. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct QmpClient {
    shared: Arc<Shared>,
    conn: Arc<Connection>,
}

impl fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QmpClient")
            .field("path", &self.conn.path)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Removes a waiter when the request future finishes or is dropped.
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock_waiters().by_id.remove(&self.id);
    }
}

impl QmpClient {
    /// Connects with [`QmpOptions::default`].
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, QmpError> {
        Self::connect_with(path, QmpOptions::default()).await
    }

    /// Connects to the QMP unix socket at `path`, reads the greeting and negotiates
    /// capabilities, then starts the reader task.
    pub async fn connect_with(
        path: impl AsRef<Path>,
        options: QmpOptions,
    ) -> Result<Self, QmpError> {
        let path = path.as_ref().to_path_buf();
        let limit = options.handshake_timeout;
        match tokio::time::timeout(limit, handshake(&path)).await {
            Ok(Ok((reader, writer, greeting))) => {
                Ok(Self::start(path, reader, writer, greeting, options))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(QmpError::HandshakeTimeout {
                path,
                timeout: limit,
            }),
        }
    }

    fn start(
        path: PathBuf,
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
        greeting: Greeting,
        options: QmpOptions,
    ) -> Self {
        let (events, _) = broadcast::channel(options.event_capacity.max(1));
        let (closed_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            waiters: Mutex::new(Waiters::default()),
            events,
            closed_tx,
        });
        let task = tokio::spawn(reader_loop(reader, shared.clone(), path.clone()));
        let conn = Arc::new(Connection {
            path,
            writer: tokio::sync::Mutex::new(writer),
            next_id: AtomicU64::new(1),
            reader: task.abort_handle(),
            greeting,
            options,
            shared: shared.clone(),
        });
        QmpClient { shared, conn }
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.conn.path
    }

    /// The server greeting (QEMU version and offered capabilities).
    pub fn greeting(&self) -> &Greeting {
        &self.conn.greeting
    }

    /// A new subscription to events received from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.shared.events.subscribe()
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed_tx.borrow()
    }

    /// Resolves once the connection has closed (immediately if it already has).
    pub async fn closed(&self) {
        let mut rx = self.shared.closed_tx.subscribe();
        // `wait_for` only fails when the sender is gone, which `self.shared` prevents.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// A watch channel that flips to `true` when the connection closes.
    pub fn closed_watch(&self) -> watch::Receiver<bool> {
        self.shared.closed_tx.subscribe()
    }

    /// Runs `command` with the default command timeout.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, self.conn.options.command_timeout)
            .await
    }

    /// Runs `command` and waits at most `timeout` for its reply.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.shared.lock_waiters();
            if w.closed {
                return Err(QmpError::Closed {
                    command: command.to_string(),
                });
            }
            w.by_id.insert(id, tx);
        }
        let _guard = WaiterGuard {
            shared: &self.shared,
            id,
        };
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        tracing::debug!(command, id, "QMP request");
        let exchange = async {
            {
                let mut w = self.conn.writer.lock().await;
                w.write_all(line.as_bytes())
                    .await
                    .map_err(|source| QmpError::Write {
                        command: command.to_string(),
                        source,
                    })?;
            }
            match rx.await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(body)) => Err(QmpError::Command {
                    command: command.to_string(),
                    class: body.class,
                    desc: body.desc,
                }),
                Err(_) => Err(QmpError::Closed {
                    command: command.to_string(),
                }),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(QmpError::Timeout {
                command: command.to_string(),
                timeout,
            }),
        }
    }

    /// Runs `command` and decodes its `return` value.
    pub(crate) async fn execute_typed<T: serde::de::DeserializeOwned>(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let value = self.execute(command, arguments).await?;
        serde_json::from_value(value).map_err(|source| QmpError::Decode {
            command: command.to_string(),
            source,
        })
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        self.execute_typed("query-status", None).await
    }

    /// `query-version`.
    pub async fn query_version(&self) -> Result<QemuVersion, QmpError> {
        self.execute_typed("query-version", None).await
    }

    /// `stop`: pause all vCPUs (a `STOP` event follows).
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// `cont`: resume vCPUs (a `RESUME` event follows).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// `system_powerdown`: press the ACPI power button; the guest decides what happens.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `system_reset`: hard reset of the machine.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute("system_reset", None).await.map(drop)
    }

    /// `quit`: QEMU exits. A connection that closes before the reply arrives also counts as
    /// success, since QEMU may exit before flushing the reply.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

async fn read_json_line(
    reader: &mut BufReader<OwnedReadHalf>,
    path: &Path,
    buf: &mut Vec<u8>,
) -> Result<Value, QmpError> {
    loop {
        let got = read_line_bounded(reader, buf, MAX_MESSAGE_BYTES)
            .await
            .map_err(|source| QmpError::HandshakeRead {
                path: path.to_path_buf(),
                source,
            })?;
        if !got {
            return Err(QmpError::Handshake {
                path: path.to_path_buf(),
                reason: "server closed the connection".into(),
            });
        }
        if is_blank(buf) {
            continue;
        }
        return serde_json::from_slice(buf).map_err(|e| QmpError::Handshake {
            path: path.to_path_buf(),
            reason: format!("malformed message: {e}"),
        });
    }
}

fn parse_greeting(value: &Value) -> Option<Greeting> {
    let qmp = value.get("QMP")?;
    let version: QemuVersion = serde_json::from_value(qmp.get("version")?.clone()).ok()?;
    let capabilities = qmp
        .get("capabilities")
        .and_then(Value::as_array)
        .map(|caps| {
            caps.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Some(Greeting {
        version,
        capabilities,
    })
}

async fn handshake(
    path: &Path,
) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf, Greeting), QmpError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    let first = read_json_line(&mut reader, path, &mut buf).await?;
    let greeting = parse_greeting(&first).ok_or_else(|| QmpError::Handshake {
        path: path.to_path_buf(),
        reason: format!("expected a QMP greeting, got {}", truncate_for_log(&first)),
    })?;
    write
        .write_all(b"{\"execute\":\"qmp_capabilities\",\"id\":0}\n")
        .await
        .map_err(|source| QmpError::HandshakeWrite {
            path: path.to_path_buf(),
            source,
        })?;
    loop {
        let reply = read_json_line(&mut reader, path, &mut buf).await?;
        if reply.get("event").is_some() {
            continue;
        }
        if let Some(err) = reply.get("error") {
            return Err(QmpError::Handshake {
                path: path.to_path_buf(),
                reason: format!("qmp_capabilities rejected: {err}"),
            });
        }
        if reply.get("return").is_some() {
            tracing::debug!(path = %path.display(), version = %greeting.version.qemu, "QMP connected");
            return Ok((reader, write, greeting));
        }
        return Err(QmpError::Handshake {
            path: path.to_path_buf(),
            reason: format!("unexpected reply {}", truncate_for_log(&reply)),
        });
    }
}

fn truncate_for_log(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Routes one message from the server. Returns nothing: malformed messages are logged.
fn dispatch(shared: &Shared, msg: Value, path: &Path) {
    if let Some(name) = msg.get("event").and_then(Value::as_str) {
        let timestamp = msg
            .get("timestamp")
            .and_then(|t| serde_json::from_value(t.clone()).ok())
            .unwrap_or_default();
        let event = QmpEvent {
            name: name.to_string(),
            data: msg.get("data").cloned().unwrap_or(Value::Null),
            timestamp,
        };
        tracing::debug!(event = %event.name, "QMP event");
        // No subscribers is fine: events are advisory.
        let _ = shared.events.send(event);
        return;
    }
    let Some(id) = msg.get("id").and_then(Value::as_u64) else {
        tracing::warn!(path = %path.display(), msg = %truncate_for_log(&msg), "QMP message without a known id");
        return;
    };
    let reply = if let Some(ret) = msg.get("return") {
        Ok(ret.clone())
    } else if let Some(err) = msg.get("error") {
        Err(serde_json::from_value(err.clone()).unwrap_or(ErrorBody {
            class: "GenericError".into(),
            desc: err.to_string(),
        }))
    } else {
        tracing::warn!(path = %path.display(), id, "QMP reply with neither return nor error");
        return;
    };
    let waiter = shared.lock_waiters().by_id.remove(&id);
    match waiter {
        // The waiter may have given up in the meantime; then the reply is dropped.
        Some(tx) => drop(tx.send(reply)),
        None => tracing::debug!(id, "QMP reply for a request nobody waits for"),
    }
}

async fn reader_loop(mut reader: BufReader<OwnedReadHalf>, shared: Arc<Shared>, path: PathBuf) {
    let mut buf = Vec::new();
    loop {
        match read_line_bounded(&mut reader, &mut buf, MAX_MESSAGE_BYTES).await {
            Ok(true) => {
                if is_blank(&buf) {
                    continue;
                }
                match serde_json::from_slice::<Value>(&buf) {
                    Ok(msg) => dispatch(&shared, msg, &path),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "malformed QMP message")
                    }
                }
            }
            Ok(false) => {
                tracing::debug!(path = %path.display(), "QMP connection closed by peer");
                break;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "QMP connection failed");
                break;
            }
        }
    }
    shared.mark_closed();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_state_round_trip() {
        for (name, state) in RunState::TABLE.iter() {
            assert_eq!(&RunState::parse(name), state);
            assert_eq!(state.as_str(), *name);
        }
        assert_eq!(
            RunState::parse("future-state"),
            RunState::Other("future-state".into())
        );
        let info: StatusInfo = serde_json::from_value(
            json!({"running": false, "status": "paused", "singlestep": false}),
        )
        .unwrap();
        assert_eq!(info.status, RunState::Paused);
    }

    #[test]
    fn greeting_parsing() {
        let g = parse_greeting(
            &json!({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7},
            "package": "Debian"}, "capabilities": ["oob"]}}),
        )
        .unwrap();
        assert_eq!(g.version.qemu.to_string(), "7.2.22");
        assert_eq!(g.capabilities, vec!["oob".to_string()]);
        assert!(parse_greeting(&json!({"return": {}})).is_none());
    }
}
