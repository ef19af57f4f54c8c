//! A serial console shared by any number of viewers: a bounded ring buffer of recent output
//! (for late joiners and `console-log`), a broadcast of live output, and one input channel.
//!
//! Invariant: the ring never holds more than its capacity; bytes are appended in the order
//! the guest wrote them, and every byte broadcast live was appended first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};

/// Default history kept per VM.
pub const HISTORY_BYTES: usize = 256 * 1024;

#[derive(Debug)]
struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
}

/// Handle to a VM's console; cheap to clone.
#[derive(Debug, Clone)]
pub struct Console {
    ring: Arc<Mutex<Ring>>,
    live: broadcast::Sender<Bytes>,
    input: mpsc::Sender<Bytes>,
    /// Becomes true when the serial port is gone (QEMU exited).
    closed: Arc<watch::Sender<bool>>,
}

/// The side owned by whoever talks to the actual serial port.
#[derive(Debug)]
pub struct ConsoleBackend {
    pub console: Console,
    /// Bytes typed by viewers, to be written to the serial port.
    pub input: mpsc::Receiver<Bytes>,
}

impl Console {
    /// A console and its backend side.
    pub fn create(capacity: usize) -> ConsoleBackend {
        let (live, _) = broadcast::channel(1024);
        let (tx, rx) = mpsc::channel(256);
        ConsoleBackend {
            console: Console {
                ring: Arc::new(Mutex::new(Ring {
                    buf: VecDeque::with_capacity(4096),
                    cap: capacity,
                })),
                live,
                input: tx,
                closed: Arc::new(watch::channel(false).0),
            },
            input: rx,
        }
    }

    /// Records output from the guest and forwards it to live viewers.
    pub fn push_output(&self, data: &[u8]) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            let cap = ring.cap;
            if data.len() >= cap {
                ring.buf.clear();
                ring.buf.extend(&data[data.len() - cap..]);
            } else {
                let overflow = (ring.buf.len() + data.len()).saturating_sub(cap);
                ring.buf.drain(..overflow);
                ring.buf.extend(data);
            }
        }
        // No viewers is fine.
        let _ = self.live.send(Bytes::copy_from_slice(data));
    }

    /// The last `max` bytes of output.
    pub fn history(&self, max: usize) -> Vec<u8> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let skip = ring.buf.len().saturating_sub(max);
        ring.buf.iter().skip(skip).copied().collect()
    }

    /// Subscribes to live output and returns the history up to now atomically (no byte is
    /// both in the history and in the subscription, none is lost between them).
    pub fn attach(&self, history: usize) -> (Vec<u8>, broadcast::Receiver<Bytes>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.live.subscribe();
        let skip = ring.buf.len().saturating_sub(history);
        (ring.buf.iter().skip(skip).copied().collect(), rx)
    }

    /// Marks the console as ended (the serial port closed).
    pub fn mark_closed(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once the console has ended.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Sends bytes to the guest's serial input.
    pub async fn send_input(&self, data: Bytes) -> bool {
        self.input.send(data).await.is_ok()
    }

    /// Whether the guest has printed `needle` (within the retained history).
    pub fn contains(&self, needle: &[u8]) -> bool {
        let h = self.history(usize::MAX);
        !needle.is_empty() && h.windows(needle.len()).any(|w| w == needle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_only_the_tail() {
        let b = Console::create(8);
        b.console.push_output(b"hello ");
        b.console.push_output(b"world");
        assert_eq!(b.console.history(100), b"lo world");
        assert_eq!(b.console.history(3), b"rld");
        b.console.push_output(b"0123456789");
        assert_eq!(b.console.history(100), b"23456789");
        assert!(b.console.contains(b"567"));
        assert!(!b.console.contains(b"world"));
    }

    #[tokio::test]
    async fn attach_splits_history_and_live_without_loss() {
        let b = Console::create(64);
        b.console.push_output(b"before");
        let (hist, mut rx) = b.console.attach(1024);
        b.console.push_output(b"after");
        assert_eq!(hist, b"before");
        assert_eq!(&rx.recv().await.unwrap()[..], b"after");
    }
}
