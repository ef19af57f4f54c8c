//! `vireo vm console`: the VM's serial console on this terminal.
//!
//! Interactive mode (stdin is a terminal): the terminal is put in raw mode, every key goes to
//! the guest, and `Ctrl-]` followed by `q` detaches. The terminal is restored on every exit
//! path, including panics (a panic hook restores the saved settings).
//!
//! Pipe mode (stdin is not a terminal): stdin is sent as it is; after stdin's end, output is
//! still printed for a grace period, so scripts can send commands and capture the answers.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;
use vireo_client::Client;

/// The detach key: `Ctrl-]` (as telnet and QEMU's monitor use).
pub const ESCAPE_BYTE: u8 = 0x1d;
/// Largest chunk read from stdin at once.
const READ_CHUNK: usize = 4096;

/// Why the console ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot attach to VM {name}'s console")]
    Attach {
        name: String,
        #[source]
        source: vireo_client::ClientError,
    },
    #[error("the console connection failed")]
    Stream(#[source] vireo_client::ClientError),
    #[error("cannot put the terminal into raw mode")]
    RawMode(#[source] nix::Error),
    #[error("cannot write console output")]
    Stdout(#[source] std::io::Error),
}

/// What [`EscapeFilter::feed`] decided for one chunk of keyboard input.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filtered {
    /// Bytes to send to the guest.
    pub send: Vec<u8>,
    /// The user asked to detach.
    pub detach: bool,
}

/// Detects `Ctrl-]` `q` in keyboard input (pure state machine).
///
/// After `Ctrl-]`: `q` or `.` detaches; a second `Ctrl-]` sends one `Ctrl-]` to the guest;
/// any other byte sends both the `Ctrl-]` and that byte.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    pending: bool,
}

impl EscapeFilter {
    pub fn feed(&mut self, input: &[u8]) -> Filtered {
        let mut out = Filtered::default();
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'q' | b'.' => {
                        out.detach = true;
                        return out;
                    }
                    ESCAPE_BYTE => out.send.push(ESCAPE_BYTE),
                    other => out.send.extend_from_slice(&[ESCAPE_BYTE, other]),
                }
            } else if b == ESCAPE_BYTE {
                self.pending = true;
            } else {
                out.send.push(b);
            }
        }
        out
    }
}

/// Terminal settings to restore; shared with the panic hook.
static SAVED_TERMIOS: Mutex<Option<Termios>> = Mutex::new(None);

fn restore_terminal() {
    let saved = SAVED_TERMIOS.lock().map(|mut g| g.take()).unwrap_or(None);
    if let Some(original) = saved {
        let stdin = std::io::stdin();
        // Best effort: nothing more can be done if the terminal is gone.
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &original);
    }
}

/// Raw mode for the lifetime of the guard.
struct RawMode;

impl RawMode {
    fn enter() -> Result<RawMode, ConsoleError> {
        let stdin = std::io::stdin();
        let original = termios::tcgetattr(stdin.as_fd()).map_err(ConsoleError::RawMode)?;
        let mut raw = original.clone();
        termios::cfmakeraw(&mut raw);
        if let Ok(mut saved) = SAVED_TERMIOS.lock() {
            *saved = Some(original);
        }
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous_hook(info);
        }));
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).map_err(ConsoleError::RawMode)?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Reads stdin on a plain thread (a blocked read must not hold up the async runtime) and
/// forwards chunks; the channel closes at end of input.
fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    rx
}

/// Attaches to the console until detach, the end of the connection, or (pipe mode) the end
/// of stdin plus `grace`.
pub async fn run(
    client: &Client,
    name: &str,
    history: Option<u32>,
    grace: Duration,
) -> Result<(), ConsoleError> {
    let (mut sink, mut stream) =
        client
            .console(name, history)
            .await
            .map_err(|source| ConsoleError::Attach {
                name: name.to_string(),
                source,
            })?;
    let interactive = std::io::stdin().is_terminal();
    let _raw = if interactive {
        eprint!("Connected to VM {name}'s console; detach with Ctrl-] then q.\r\n");
        Some(RawMode::enter()?)
    } else {
        None
    };
    let mut input = spawn_stdin_reader();
    let mut escape = EscapeFilter::default();
    let mut stdout = std::io::stdout();
    let mut input_open = true;
    // Armed once stdin ends in pipe mode.
    let grace_timer = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace_timer);
    let mut grace_armed = false;

    let outcome = loop {
        tokio::select! {
            chunk = input.recv(), if input_open => match chunk {
                Some(bytes) => {
                    let send = if interactive {
                        let filtered = escape.feed(&bytes);
                        if filtered.detach {
                            break Ok(());
                        }
                        filtered.send
                    } else {
                        bytes
                    };
                    if !send.is_empty() {
                        if let Err(e) = sink.send(Bytes::from(send)).await {
                            break Err(ConsoleError::Stream(e));
                        }
                    }
                }
                None => {
                    input_open = false;
                    if interactive {
                        break Ok(());
                    }
                    grace_timer.as_mut().reset(tokio::time::Instant::now() + grace);
                    grace_armed = true;
                }
            },
            output = stream.next() => match output {
                Some(Ok(bytes)) => {
                    if let Err(e) = stdout.write_all(&bytes).and_then(|()| stdout.flush()) {
                        break Err(ConsoleError::Stdout(e));
                    }
                }
                Some(Err(e)) => break Err(ConsoleError::Stream(e)),
                None => break Ok(()),
            },
            () = &mut grace_timer, if grace_armed => break Ok(()),
        }
    };
    // Closing says goodbye to the daemon; failure to do so changes nothing for the user.
    let _ = sink.close().await;
    drop(_raw);
    if interactive {
        eprintln!("\nDetached from VM {name}'s console.");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_ordinary_input() {
        let mut f = EscapeFilter::default();
        assert_eq!(
            f.feed(b"ls -l\r"),
            Filtered {
                send: b"ls -l\r".to_vec(),
                detach: false
            }
        );
    }

    #[test]
    fn detaches_on_escape_q_even_across_chunks() {
        let mut f = EscapeFilter::default();
        assert_eq!(
            f.feed(b"ab\x1d"),
            Filtered {
                send: b"ab".to_vec(),
                detach: false
            }
        );
        assert_eq!(
            f.feed(b"q"),
            Filtered {
                send: vec![],
                detach: true
            }
        );
        let mut f = EscapeFilter::default();
        assert!(f.feed(b"x\x1d.").detach);
    }

    #[test]
    fn escape_followed_by_other_bytes_is_forwarded() {
        let mut f = EscapeFilter::default();
        assert_eq!(
            f.feed(b"\x1dz"),
            Filtered {
                send: b"\x1dz".to_vec(),
                detach: false
            }
        );
        assert_eq!(
            f.feed(b"\x1d\x1d"),
            Filtered {
                send: b"\x1d".to_vec(),
                detach: false
            }
        );
        assert_eq!(
            f.feed(b"q"),
            Filtered {
                send: b"q".to_vec(),
                detach: false
            }
        );
    }
}
