//! A fake qemu-guest-agent speaking the real wire protocol (test-only).
//!
//! Behaviour copied from qemu-ga 7.2 as observed on the wire: requests are a JSON stream (not
//! necessarily line-delimited); a 0xFF byte resets the parser and, when the parser was idle,
//! produces `{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\uFFFD'"}}`;
//! `guest-sync-delimited` replies are preceded by 0xFF; replies echo the request `id`;
//! `guest-shutdown` sends no reply on success; `guest-exec-status` reports output only once
//! the process has exited, then forgets the process.
//!
//! The fake can be made unresponsive (a guest that is not up yet: bytes are buffered and
//! processed once it becomes responsive, as the virtio-serial channel does), can write
//! arbitrary garbage to the client, and can drop the connection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::framing::SYNC_DELIMITER;

/// Bytes of unprocessed input kept per connection; beyond this the fake drops input (a real
/// channel would stall the writer instead; tests never get close).
const MAX_PENDING: usize = 4 << 20;

/// Static answers of the fake agent.
#[derive(Debug, Clone)]
pub struct FakeGuestConfig {
    pub version: String,
    pub host_name: String,
    /// Value returned by `guest-get-osinfo`.
    pub os_info: Value,
    /// Value returned by `guest-network-get-interfaces`.
    pub interfaces: Value,
    /// Whether the agent processes input from the start.
    pub responsive: bool,
    /// Written to every new connection before anything else (stale output of a previous
    /// session, boot noise…).
    pub garbage_on_connect: Vec<u8>,
}

impl Default for FakeGuestConfig {
    fn default() -> Self {
        Self {
            version: "7.2.0".into(),
            host_name: "fake-guest".into(),
            os_info: json!({"id": "vireo-tiny", "name": "Vireo tiny", "kernel-release": "6.1.0",
                            "machine": "x86_64"}),
            interfaces: json!([
                {"name": "lo", "hardware-address": "00:00:00:00:00:00",
                 "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},
                {"name": "eth0", "hardware-address": "0a:76:72:00:00:01",
                 "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24},
                                  {"ip-address-type": "ipv6", "ip-address": "fe80::876:72ff:fe00:1", "prefix": 64}]}
            ]),
            responsive: true,
            garbage_on_connect: Vec::new(),
        }
    }
}

/// A `guest-exec` request as the fake received it (stdin decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeExec {
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub input: Vec<u8>,
    pub capture_output: bool,
}

/// Scripted result of a fake process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeExecOutcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// `guest-exec-status` answers `exited: false` this many times before the result.
    pub running_polls: u32,
}

type ExecHandler = Arc<dyn Fn(&FakeExec) -> FakeExecOutcome + Send + Sync>;

struct Shared {
    config: Mutex<FakeGuestConfig>,
    responsive: watch::Sender<bool>,
    current: Mutex<Option<mpsc::UnboundedSender<Out>>>,
    received: Mutex<Vec<String>>,
    shutdowns: Mutex<Vec<String>>,
    exec_handler: Mutex<ExecHandler>,
    processes: Mutex<HashMap<i64, (FakeExecOutcome, bool)>>,
    next_pid: AtomicI64,
    connections: AtomicUsize,
    tasks: Mutex<Vec<AbortHandle>>,
}

enum Out {
    Bytes(Vec<u8>),
    Close,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Test-only code; every critical section leaves the data consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake agent, listening on a unix socket like QEMU's chardev would.
pub struct FakeGuestAgent {
    path: PathBuf,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeGuestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGuestAgent")
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for FakeGuestAgent {
    fn drop(&mut self) {
        for t in lock(&self.shared.tasks).drain(..) {
            t.abort();
        }
    }
}

/// Default exec behaviour: exit 0 with stdin echoed to stdout (like `cat`).
fn echo_stdin(exec: &FakeExec) -> FakeExecOutcome {
    FakeExecOutcome {
        exit_code: Some(0),
        stdout: exec.input.clone(),
        ..Default::default()
    }
}

impl FakeGuestAgent {
    /// Listens on `path` (which must not exist).
    pub async fn start(path: impl AsRef<Path>, config: FakeGuestConfig) -> std::io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let listener = UnixListener::bind(&path)?;
        let (responsive, _) = watch::channel(config.responsive);
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            responsive,
            current: Mutex::new(None),
            received: Mutex::new(Vec::new()),
            shutdowns: Mutex::new(Vec::new()),
            exec_handler: Mutex::new(Arc::new(echo_stdin)),
            processes: Mutex::new(HashMap::new()),
            next_pid: AtomicI64::new(1000),
            connections: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        lock(&shared.tasks).push(accept.abort_handle());
        Ok(Self { path, shared })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the agent (un)responsive; buffered input is processed when it becomes responsive.
    pub fn set_responsive(&self, responsive: bool) {
        self.shared.responsive.send_replace(responsive);
    }

    /// Replaces the `guest-exec` behaviour.
    pub fn set_exec_handler<F>(&self, f: F)
    where
        F: Fn(&FakeExec) -> FakeExecOutcome + Send + Sync + 'static,
    {
        *lock(&self.shared.exec_handler) = Arc::new(f);
    }

    /// Writes raw bytes to the connected client. Returns false when none is connected.
    pub fn inject(&self, bytes: &[u8]) -> bool {
        match lock(&self.shared.current).as_ref() {
            Some(tx) => tx.send(Out::Bytes(bytes.to_vec())).is_ok(),
            None => false,
        }
    }

    /// Closes the current connection.
    pub fn drop_connection(&self) -> bool {
        match lock(&self.shared.current).as_ref() {
            Some(tx) => tx.send(Out::Close).is_ok(),
            None => false,
        }
    }

    /// Names of the commands processed so far (including syncs).
    pub fn received(&self) -> Vec<String> {
        lock(&self.shared.received).clone()
    }

    /// Modes of the `guest-shutdown` requests received.
    pub fn shutdown_requests(&self) -> Vec<String> {
        lock(&self.shared.shutdowns).clone()
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let task = tokio::spawn(serve(stream, shared.clone()));
        lock(&shared.tasks).push(task.abort_handle());
    }
}

async fn serve(stream: UnixStream, shared: Arc<Shared>) {
    let (mut read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    *lock(&shared.current) = Some(tx.clone());
    let garbage = lock(&shared.config).garbage_on_connect.clone();
    if !garbage.is_empty() {
        let _ = tx.send(Out::Bytes(garbage));
    }
    let (closed_tx, mut closed_rx) = watch::channel(false);
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Out::Bytes(b) => {
                    if write.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Out::Close => break,
            }
        }
        let _ = write.shutdown().await;
        closed_tx.send_replace(true);
    });
    lock(&shared.tasks).push(writer.abort_handle());
    let mut responsive = shared.responsive.subscribe();
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        tokio::select! {
            n = read.read(&mut chunk) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if pending.len() + n <= MAX_PENDING {
                        pending.extend_from_slice(&chunk[..n]);
                    }
                }
            },
            changed = responsive.changed() => if changed.is_err() { break },
            _ = closed_rx.changed() => break,
        }
        if *responsive.borrow() {
            process(&mut pending, &tx, &shared);
        }
    }
    let mut current = lock(&shared.current);
    if current.as_ref().is_some_and(|c| c.same_channel(&tx)) {
        *current = None;
    }
}

/// Consumes complete requests from `pending`, leaving an incomplete tail.
fn process(pending: &mut Vec<u8>, tx: &mpsc::UnboundedSender<Out>, shared: &Shared) {
    loop {
        let delimiter = pending.iter().position(|&b| b == SYNC_DELIMITER);
        let end = delimiter.unwrap_or(pending.len());
        let mut stream = serde_json::Deserializer::from_slice(&pending[..end]).into_iter::<Value>();
        let mut consumed = 0;
        let mut parse_error = false;
        loop {
            match stream.next() {
                Some(Ok(request)) => {
                    consumed = stream.byte_offset();
                    handle(&request, tx, shared);
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    parse_error = true;
                    break;
                }
                None => {
                    consumed = end;
                    break;
                }
            }
        }
        if parse_error {
            send_json(
                tx,
                &json!({"error": {"class": "GenericError", "desc": "JSON parse error"}}),
            );
            consumed = end;
        }
        match delimiter {
            Some(d) => {
                let idle = pending[consumed..d].iter().all(u8::is_ascii_whitespace);
                if idle {
                    send_json(
                        tx,
                        &json!({"error": {"class": "GenericError", "desc": "JSON parse error, stray '\u{FFFD}'"}}),
                    );
                }
                pending.drain(..=d);
            }
            None => {
                pending.drain(..consumed);
                return;
            }
        }
    }
}

fn send_json(tx: &mpsc::UnboundedSender<Out>, v: &Value) {
    let mut bytes = v.to_string().into_bytes();
    bytes.push(b'\n');
    let _ = tx.send(Out::Bytes(bytes));
}

fn reply(
    tx: &mpsc::UnboundedSender<Out>,
    id: Option<&Value>,
    result: Result<Value, (&str, String)>,
) {
    let mut msg = match result {
        Ok(v) => json!({ "return": v }),
        Err((class, desc)) => json!({"error": {"class": class, "desc": desc}}),
    };
    if let Some(id) = id {
        msg["id"] = id.clone();
    }
    send_json(tx, &msg);
}

const COMMANDS: [&str; 10] = [
    "guest-sync-delimited",
    "guest-sync",
    "guest-ping",
    "guest-info",
    "guest-get-osinfo",
    "guest-get-host-name",
    "guest-network-get-interfaces",
    "guest-shutdown",
    "guest-exec",
    "guest-exec-status",
];

fn handle(request: &Value, tx: &mpsc::UnboundedSender<Out>, shared: &Shared) {
    let id = request.get("id");
    let Some(name) = request.get("execute").and_then(Value::as_str) else {
        reply(
            tx,
            id,
            Err(("GenericError", "QMP input lacks member 'execute'".into())),
        );
        return;
    };
    lock(&shared.received).push(name.to_string());
    let args = request
        .get("arguments")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let config = lock(&shared.config).clone();
    let missing = |p: &str| Err(("GenericError", format!("Parameter '{p}' is missing")));
    match name {
        "guest-sync-delimited" => {
            let _ = tx.send(Out::Bytes(vec![SYNC_DELIMITER]));
            match args.get("id") {
                Some(v) => reply(tx, id, Ok(v.clone())),
                None => reply(tx, id, missing("id")),
            }
        }
        "guest-sync" => match args.get("id") {
            Some(v) => reply(tx, id, Ok(v.clone())),
            None => reply(tx, id, missing("id")),
        },
        "guest-ping" => reply(tx, id, Ok(json!({}))),
        "guest-info" => {
            let cmds: Vec<Value> = COMMANDS
                .iter()
                .map(|c| json!({"name": c, "enabled": true, "success-response": *c != "guest-shutdown"}))
                .collect();
            reply(
                tx,
                id,
                Ok(json!({"version": config.version, "supported_commands": cmds})),
            );
        }
        "guest-get-osinfo" => reply(tx, id, Ok(config.os_info)),
        "guest-get-host-name" => reply(tx, id, Ok(json!({"host-name": config.host_name}))),
        "guest-network-get-interfaces" => reply(tx, id, Ok(config.interfaces)),
        "guest-shutdown" => {
            let mode = args
                .get("mode")
                .and_then(Value::as_str)
                .unwrap_or("powerdown");
            if ["powerdown", "reboot", "halt"].contains(&mode) {
                lock(&shared.shutdowns).push(mode.to_string());
            } else {
                reply(
                    tx,
                    id,
                    Err((
                        "GenericError",
                        format!("Parameter 'mode' does not accept value '{mode}'"),
                    )),
                );
            }
        }
        "guest-exec" => reply(tx, id, start_exec(&args, shared)),
        "guest-exec-status" => reply(tx, id, exec_status(&args, shared)),
        other => reply(
            tx,
            id,
            Err((
                "CommandNotFound",
                format!("The command {other} has not been found"),
            )),
        ),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn start_exec(args: &Value, shared: &Shared) -> Result<Value, (&'static str, String)> {
    let path = args
        .get("path")
        .and_then(Value::as_str)
        .ok_or(("GenericError", "Parameter 'path' is missing".to_string()))?;
    let input = match args.get("input-data").and_then(Value::as_str) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ("GenericError", format!("Invalid base64 data: {e}")))?,
        None => Vec::new(),
    };
    let exec = FakeExec {
        path: path.to_string(),
        args: strings(args.get("arg")),
        env: strings(args.get("env")),
        input,
        capture_output: args
            .get("capture-output")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let handler = lock(&shared.exec_handler).clone();
    let outcome = handler(&exec);
    let pid = shared.next_pid.fetch_add(1, Ordering::SeqCst);
    lock(&shared.processes).insert(pid, (outcome, exec.capture_output));
    Ok(json!({ "pid": pid }))
}

fn exec_status(args: &Value, shared: &Shared) -> Result<Value, (&'static str, String)> {
    let pid = args
        .get("pid")
        .and_then(Value::as_i64)
        .ok_or(("GenericError", "Parameter 'pid' is missing".to_string()))?;
    let mut procs = lock(&shared.processes);
    let Some((outcome, capture)) = procs.get_mut(&pid) else {
        return Err(("GenericError", "Invalid parameter 'pid'".into()));
    };
    if outcome.running_polls > 0 {
        outcome.running_polls -= 1;
        return Ok(json!({"exited": false}));
    }
    let capture = *capture;
    let Some((outcome, _)) = procs.remove(&pid) else {
        return Err(("GenericError", "Invalid parameter 'pid'".into()));
    };
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut status = json!({"exited": true});
    if let Some(code) = outcome.exit_code {
        status["exitcode"] = json!(code);
    }
    if let Some(sig) = outcome.signal {
        status["signal"] = json!(sig);
    }
    if capture {
        status["out-data"] = json!(b64(&outcome.stdout));
        status["err-data"] = json!(b64(&outcome.stderr));
    }
    Ok(status)
}
