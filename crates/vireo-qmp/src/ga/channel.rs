//! One connected guest-agent socket: framed reads and writes, and resynchronisation with
//! `guest-sync-delimited`.
//!
//! Invariants: every line read is bounded by [`MAX_REPLY_BYTES`]; `synced` is true only after
//! the agent echoed this channel's own sync id, and callers clear it while a request is in
//! flight, so an interrupted exchange forces a resync before the next request.

use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use super::{GuestAgentError, MAX_REPLY_BYTES};
use crate::framing::{read_line_bounded, skip_past_delimiter, FrameError, SYNC_DELIMITER};

/// One message read from the agent.
pub(super) enum Incoming {
    /// A message preceded by the 0xFF delimiter (a `guest-sync-delimited` reply).
    Delimited(Value),
    Plain(Value),
}

/// A connected socket to the agent.
pub(super) struct Channel {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The stream is known to be at a message boundary with no stale replies pending.
    pub(super) synced: bool,
    line: Vec<u8>,
}

impl Channel {
    /// Connects to the agent socket at `path` (unsynchronised).
    pub(super) async fn connect(path: &Path) -> Result<Self, GuestAgentError> {
        let stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| GuestAgentError::Connect {
                    path: path.to_path_buf(),
                    source,
                })?;
        let (read, writer) = stream.into_split();
        Ok(Channel {
            reader: BufReader::new(read),
            writer,
            synced: false,
            line: Vec::new(),
        })
    }

    pub(super) async fn write(
        &mut self,
        command: &str,
        bytes: &[u8],
    ) -> Result<(), GuestAgentError> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|source| GuestAgentError::Write {
                command: command.to_string(),
                source,
            })
    }

    /// Reads the next message, skipping blank space between messages.
    pub(super) async fn read_incoming(
        &mut self,
        command: &str,
    ) -> Result<Incoming, GuestAgentError> {
        let read_err = |source| GuestAgentError::Read {
            command: command.to_string(),
            source,
        };
        let delimited = loop {
            let buf = self
                .reader
                .fill_buf()
                .await
                .map_err(|e| read_err(FrameError::Io(e)))?;
            let Some(&first) = buf.first() else {
                return Err(GuestAgentError::Closed {
                    command: command.to_string(),
                });
            };
            if first == SYNC_DELIMITER {
                self.reader.consume(1);
                break true;
            }
            if first.is_ascii_whitespace() {
                self.reader.consume(1);
                continue;
            }
            break false;
        };
        let got = read_line_bounded(&mut self.reader, &mut self.line, MAX_REPLY_BYTES)
            .await
            .map_err(read_err)?;
        if !got {
            return Err(GuestAgentError::Closed {
                command: command.to_string(),
            });
        }
        let value: Value =
            serde_json::from_slice(&self.line).map_err(|e| GuestAgentError::Protocol {
                command: command.to_string(),
                detail: e.to_string(),
            })?;
        Ok(if delimited {
            Incoming::Delimited(value)
        } else {
            Incoming::Plain(value)
        })
    }

    /// Sends 0xFF + `guest-sync-delimited` and discards input until its own reply arrives.
    pub(super) async fn sync(&mut self, sync_id: u64) -> Result<(), GuestAgentError> {
        const CMD: &str = "guest-sync-delimited";
        let mut bytes = vec![SYNC_DELIMITER];
        bytes.extend_from_slice(
            json!({"execute": CMD, "arguments": {"id": sync_id}})
                .to_string()
                .as_bytes(),
        );
        bytes.push(b'\n');
        self.write(CMD, &bytes).await?;
        loop {
            let found = skip_past_delimiter(&mut self.reader)
                .await
                .map_err(|source| GuestAgentError::Read {
                    command: CMD.into(),
                    source,
                })?;
            if !found {
                return Err(GuestAgentError::Closed {
                    command: CMD.into(),
                });
            }
            let got = read_line_bounded(&mut self.reader, &mut self.line, MAX_REPLY_BYTES)
                .await
                .map_err(|source| GuestAgentError::Read {
                    command: CMD.into(),
                    source,
                })?;
            if !got {
                return Err(GuestAgentError::Closed {
                    command: CMD.into(),
                });
            }
            let reply: Option<Value> = serde_json::from_slice(&self.line).ok();
            match reply
                .as_ref()
                .and_then(|r| r.get("return"))
                .and_then(Value::as_u64)
            {
                Some(id) if id == sync_id => {
                    self.synced = true;
                    return Ok(());
                }
                other => tracing::debug!(?other, sync_id, "discarding stale guest-sync reply"),
            }
        }
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("synced", &self.synced)
            .finish()
    }
}

/// Converts a reply object into the command's result.
pub(super) fn reply_result(command: &str, reply: &Value) -> Result<Value, GuestAgentError> {
    if let Some(ret) = reply.get("return") {
        return Ok(ret.clone());
    }
    if let Some(err) = reply.get("error") {
        let field = |k: &str| {
            err.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        return Err(GuestAgentError::Command {
            command: command.to_string(),
            class: field("class"),
            desc: field("desc"),
        });
    }
    Err(GuestAgentError::Protocol {
        command: command.to_string(),
        detail: "reply has neither return nor error".into(),
    })
}
