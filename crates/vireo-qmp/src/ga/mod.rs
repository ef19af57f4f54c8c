//! Client for qemu-guest-agent over the host end of its virtio-serial chardev socket.
//!
//! Protocol (QEMU docs/interop/qemu-ga-ref): QMP-style JSON requests and replies, but no
//! greeting, and the channel outlives both the guest agent and this client: requests sent
//! while the guest is not up are delivered when it opens the port, replies meant for an earlier
//! client may still be queued. Resynchronisation uses `guest-sync-delimited`: the client sends
//! the byte 0xFF (which resets the agent's JSON parser; the agent may answer it with a parse
//! error) followed by the sync request with a fresh random id; the agent writes 0xFF before the
//! reply. The client discards everything up to a 0xFF, reads the reply and repeats until the
//! id matches its own.
//!
//! Invariants:
//! - one request at a time per [`GuestAgent`] (calls are serialised by a mutex);
//! - a request is only sent on a synchronised stream; a timeout or a malformed reply marks the
//!   stream unsynchronised, so the next call resynchronises first;
//! - a closed or failed socket is dropped and the next call reconnects;
//! - every call is bounded by a timeout covering connect, sync, request and reply;
//! - replies are matched on `id` (qemu-ga echoes it), so stale replies are skipped.
//!
//! Layout: `types.rs` holds the reply and request types and their (pure) wire encodings,
//! `channel.rs` one connected socket with delimiter-based resynchronisation; this file holds
//! the client that serialises calls, enforces timeouts and reconnects.

mod channel;
mod freeze;
mod types;

pub use freeze::{FreezeError, FsFreezeStatus};

pub use types::{
    ExecRequest, ExecStatus, GuestCommandInfo, GuestInfo, GuestIpAddress, GuestIpAddressType,
    GuestNetworkInterface, GuestOsInfo, ShutdownMode,
};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::framing::{FrameError, SYNC_DELIMITER};
use channel::{reply_result, Channel, Incoming};
use types::{decode_exec_status, exec_arguments};

/// Largest reply accepted from the guest. qemu-ga caps captured output at 16 MiB per stream;
/// both streams base64-encoded in one reply stay below this.
pub const MAX_REPLY_BYTES: usize = 48 << 20;

/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the guest-agent client.
#[derive(Debug, thiserror::Error)]
pub enum GuestAgentError {
    #[error("cannot connect to guest agent socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest agent did not answer {command} within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("cannot send {command} to the guest agent")]
    Write {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the guest agent's reply to {command}")]
    Read {
        command: String,
        #[source]
        source: FrameError,
    },
    #[error("guest agent channel closed during {command}")]
    Closed { command: String },
    #[error("guest agent sent a malformed reply to {command}: {detail}")]
    Protocol { command: String, detail: String },
    #[error("guest agent command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("unexpected reply to guest agent command {command}")]
    Decode {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("guest agent returned invalid base64 in {field} of {command}")]
    Base64 {
        command: String,
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    #[error("guest process {pid} ({path}) did not exit within {timeout:?}")]
    RunTimeout {
        path: String,
        pid: i64,
        timeout: Duration,
    },
}

impl GuestAgentError {
    /// Whether the socket must be dropped and reopened after this error.
    fn breaks_connection(&self) -> bool {
        matches!(
            self,
            GuestAgentError::Write { .. }
                | GuestAgentError::Read { .. }
                | GuestAgentError::Closed { .. }
        )
    }
}

/// A guest-agent client bound to one chardev socket path. Connects lazily and reconnects
/// after failures, so one value can be kept for the VM's whole life (across QEMU restarts).
#[derive(Debug)]
pub struct GuestAgent {
    path: PathBuf,
    default_timeout: Duration,
    channel: tokio::sync::Mutex<Option<Channel>>,
    next_id: AtomicU64,
}

impl GuestAgent {
    /// A client for the agent behind `path`, using [`DEFAULT_TIMEOUT`] per call.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::with_timeout(path, DEFAULT_TIMEOUT)
    }

    pub fn with_timeout(path: impl Into<PathBuf>, default_timeout: Duration) -> Self {
        // Ids seed from the clock so a restarted daemon never mistakes a reply queued for its
        // previous incarnation for its own; kept below 2^53 to stay exact in any JSON reader.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            & ((1u64 << 52) - 1);
        Self {
            path: path.into(),
            default_timeout,
            channel: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(seed.max(1)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops the current socket; the next call reconnects and resynchronises.
    pub async fn disconnect(&self) {
        *self.channel.lock().await = None;
    }

    /// Sends `command` and returns its `return` value, waiting at most `timeout` overall.
    pub async fn call_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, GuestAgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut slot = tokio::time::timeout_at(deadline, self.channel.lock())
            .await
            .map_err(|_| GuestAgentError::Timeout {
                command: command.into(),
                timeout,
            })?;
        let request_id = self.fresh_id();
        let sync_id = self.fresh_id();
        let outcome = tokio::time::timeout_at(deadline, async {
            let channel = self.ensure_synced(&mut slot, sync_id).await?;
            channel.synced = false;
            let mut request = json!({"execute": command, "id": request_id});
            if let Some(args) = arguments {
                request["arguments"] = args;
            }
            let mut line = request.to_string().into_bytes();
            line.push(b'\n');
            channel.write(command, &line).await?;
            loop {
                match channel.read_incoming(command).await? {
                    Incoming::Plain(reply) if reply.get("id").and_then(Value::as_u64) == Some(request_id) => {
                        channel.synced = true;
                        return reply_result(command, &reply);
                    }
                    Incoming::Plain(reply) => {
                        tracing::debug!(command, reply = %reply, "skipping unrelated guest agent reply")
                    }
                    Incoming::Delimited(_) => tracing::debug!(command, "skipping stale guest-sync reply"),
                }
            }
        })
        .await;
        self.finish(&mut slot, command, timeout, outcome)
    }

    /// Maps the outcome of an exchange, dropping the channel when it is broken.
    fn finish<T>(
        &self,
        slot: &mut Option<Channel>,
        command: &str,
        timeout: Duration,
        outcome: Result<Result<T, GuestAgentError>, tokio::time::error::Elapsed>,
    ) -> Result<T, GuestAgentError> {
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.breaks_connection() {
                    *slot = None;
                }
                Err(e)
            }
            Err(_) => {
                if let Some(ch) = slot.as_mut() {
                    ch.synced = false;
                }
                Err(GuestAgentError::Timeout {
                    command: command.into(),
                    timeout,
                })
            }
        }
    }

    async fn ensure_synced<'a>(
        &self,
        slot: &'a mut Option<Channel>,
        sync_id: u64,
    ) -> Result<&'a mut Channel, GuestAgentError> {
        let channel = match slot.take() {
            Some(channel) => channel,
            None => Channel::connect(&self.path).await?,
        };
        let channel = slot.insert(channel);
        if !channel.synced {
            channel.sync(sync_id).await?;
        }
        Ok(channel)
    }

    /// Sends `command` with the default timeout.
    pub async fn call(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, GuestAgentError> {
        self.call_with_timeout(command, arguments, self.default_timeout)
            .await
    }

    async fn call_typed<T: serde::de::DeserializeOwned>(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, GuestAgentError> {
        let v = self.call(command, arguments).await?;
        serde_json::from_value(v).map_err(|source| GuestAgentError::Decode {
            command: command.into(),
            source,
        })
    }

    /// `guest-ping` with the default timeout.
    pub async fn ping(&self) -> Result<(), GuestAgentError> {
        self.ping_with_timeout(self.default_timeout).await
    }

    /// `guest-ping`; use a short timeout to poll whether the agent is up.
    pub async fn ping_with_timeout(&self, timeout: Duration) -> Result<(), GuestAgentError> {
        self.call_with_timeout("guest-ping", None, timeout)
            .await
            .map(drop)
    }

    /// `guest-info`.
    pub async fn info(&self) -> Result<GuestInfo, GuestAgentError> {
        self.call_typed("guest-info", None).await
    }

    /// `guest-get-osinfo`.
    pub async fn get_osinfo(&self) -> Result<GuestOsInfo, GuestAgentError> {
        self.call_typed("guest-get-osinfo", None).await
    }

    /// `guest-get-host-name`.
    pub async fn get_host_name(&self) -> Result<String, GuestAgentError> {
        #[derive(Deserialize)]
        struct HostName {
            #[serde(rename = "host-name")]
            host_name: String,
        }
        let h: HostName = self.call_typed("guest-get-host-name", None).await?;
        Ok(h.host_name)
    }

    /// `guest-network-get-interfaces`.
    pub async fn network_get_interfaces(
        &self,
    ) -> Result<Vec<GuestNetworkInterface>, GuestAgentError> {
        self.call_typed("guest-network-get-interfaces", None).await
    }

    /// `guest-shutdown`. The agent sends no reply on success, so the request is followed by a
    /// sync: an error reply fails the call, the sync reply (or silence/EOF while the guest goes
    /// down) means the agent accepted the request. Confirm the outcome through QMP.
    pub async fn shutdown(&self, mode: ShutdownMode) -> Result<(), GuestAgentError> {
        const CMD: &str = "guest-shutdown";
        let timeout = self.default_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut slot = tokio::time::timeout_at(deadline, self.channel.lock())
            .await
            .map_err(|_| GuestAgentError::Timeout {
                command: CMD.into(),
                timeout,
            })?;
        let (request_id, first_sync, confirm_sync) =
            (self.fresh_id(), self.fresh_id(), self.fresh_id());
        let outcome = tokio::time::timeout_at(deadline, async {
            let channel = self.ensure_synced(&mut slot, first_sync).await?;
            channel.synced = false;
            let mut bytes =
                json!({"execute": CMD, "arguments": {"mode": mode.as_str()}, "id": request_id})
                    .to_string()
                    .into_bytes();
            bytes.push(b'\n');
            bytes.push(SYNC_DELIMITER);
            bytes.extend_from_slice(
                json!({"execute": "guest-sync-delimited", "arguments": {"id": confirm_sync}})
                    .to_string()
                    .as_bytes(),
            );
            bytes.push(b'\n');
            channel.write(CMD, &bytes).await?;
            loop {
                match channel.read_incoming(CMD).await {
                    Ok(Incoming::Plain(reply))
                        if reply.get("id").and_then(Value::as_u64) == Some(request_id) =>
                    {
                        return reply_result(CMD, &reply).map(drop);
                    }
                    Ok(Incoming::Delimited(reply))
                        if reply.get("return").and_then(Value::as_u64) == Some(confirm_sync) =>
                    {
                        channel.synced = true;
                        return Ok(());
                    }
                    Ok(_) => continue,
                    Err(GuestAgentError::Closed { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match outcome {
            // Silence after a responsive agent accepted the request: the guest is going down.
            Err(_) => {
                tracing::debug!(
                    mode = mode.as_str(),
                    "no confirmation of guest-shutdown; assuming delivered"
                );
                if let Some(ch) = slot.as_mut() {
                    ch.synced = false;
                }
                Ok(())
            }
            other => self.finish(&mut slot, CMD, timeout, other),
        }
    }

    /// `guest-exec`: starts a process and returns its guest pid.
    pub async fn exec(&self, request: &ExecRequest) -> Result<i64, GuestAgentError> {
        #[derive(Deserialize)]
        struct Pid {
            pid: i64,
        }
        let p: Pid = self
            .call_typed("guest-exec", Some(exec_arguments(request)))
            .await?;
        Ok(p.pid)
    }

    /// `guest-exec-status`.
    pub async fn exec_status(&self, pid: i64) -> Result<ExecStatus, GuestAgentError> {
        let v = self
            .call("guest-exec-status", Some(json!({"pid": pid})))
            .await?;
        decode_exec_status("guest-exec-status", v)
    }

    /// Runs `path args…` with `stdin`, capturing output, and polls until it exits or
    /// `timeout` passes.
    pub async fn run(
        &self,
        path: &str,
        args: &[String],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecStatus, GuestAgentError> {
        let started = Instant::now();
        let request = ExecRequest {
            path: path.to_string(),
            args: args.to_vec(),
            env: Vec::new(),
            input: stdin.map(<[u8]>::to_vec),
            capture_output: true,
        };
        let pid = self.exec(&request).await?;
        let mut delay = Duration::from_millis(10);
        loop {
            let remaining = timeout.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(GuestAgentError::RunTimeout {
                    path: path.to_string(),
                    pid,
                    timeout,
                });
            }
            let status = self
                .call_with_timeout(
                    "guest-exec-status",
                    Some(json!({"pid": pid})),
                    remaining.min(self.default_timeout),
                )
                .await
                .and_then(|v| decode_exec_status("guest-exec-status", v))?;
            if status.exited {
                return Ok(status);
            }
            tokio::time::sleep(delay.min(timeout.saturating_sub(started.elapsed()))).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }
}
