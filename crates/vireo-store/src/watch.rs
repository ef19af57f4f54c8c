//! Watches: ordered change streams over a key prefix.
//!
//! [`Watch`] is backend-neutral: a backend feeds it through a [`WatchSender`] one revision at
//! a time (all matching events of a revision are delivered together or not at all).
//!
//! [`WatchHub`] is the in-process fan-out used by single-process backends (SQLite):
//! - the writer publishes each committed revision in revision order, under the hub's lock;
//! - it keeps a bounded history (by event count and by bytes). Every event with a revision
//!   above `floor` is in the history, so a watcher may start from any revision `>= floor`
//!   and gets exactly the events it missed; older starts fail with
//!   [`StoreError::Compacted`];
//! - registration replays the history and joins the live stream under the same lock, so a
//!   watcher sees each event after its start revision exactly once, in order;
//! - a watcher whose buffer is full is cancelled with [`StoreError::WatchLagged`] naming the
//!   last revision it fully received, instead of buffering without bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;

use crate::error::StoreError;
use crate::types::{Revision, WatchEvent};

/// Bounds of a [`WatchHub`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    /// Most events kept for late watchers.
    pub history_events: usize,
    /// Most bytes (keys + values) kept for late watchers.
    pub history_bytes: usize,
    /// Most revisions buffered per watcher before it is cancelled as lagging.
    pub watcher_buffer: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            history_events: 4096,
            history_bytes: 64 * 1024 * 1024,
            watcher_buffer: 1024,
        }
    }
}

type EndSlot = Arc<Mutex<Option<StoreError>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The protected data stays consistent across a panic in another holder (every critical
    // section here is a few non-panicking collection operations), so poisoning is ignored.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Receiving end: yields the events of one watch in revision order.
#[derive(Debug)]
pub struct Watch {
    pending: VecDeque<WatchEvent>,
    rx: mpsc::Receiver<Vec<WatchEvent>>,
    end: EndSlot,
}

/// Sending end used by backends to feed a [`Watch`].
#[derive(Debug)]
pub struct WatchSender {
    tx: mpsc::Sender<Vec<WatchEvent>>,
    end: EndSlot,
}

/// Outcome of [`WatchSender::offer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Delivered,
    /// The buffer is full; the batch was not delivered.
    Full,
    /// The watcher was dropped.
    Gone,
}

impl Watch {
    /// A watch that first yields `backlog`, then whatever is sent through the returned sender
    /// (at most `buffer` revisions queued).
    pub fn channel(backlog: Vec<WatchEvent>, buffer: usize) -> (WatchSender, Watch) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let end: EndSlot = Arc::default();
        (
            WatchSender {
                tx,
                end: end.clone(),
            },
            Watch {
                pending: backlog.into(),
                rx,
                end,
            },
        )
    }

    /// The next event. Errors are final: [`StoreError::WatchLagged`] (watch again from the
    /// revision it names), [`StoreError::Closed`] (the store shut down), or whatever the
    /// backend reported through [`WatchSender::fail`].
    pub async fn recv(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            match self.rx.recv().await {
                Some(batch) => self.pending.extend(batch),
                None => return Err(lock(&self.end).take().unwrap_or(StoreError::Closed)),
            }
        }
    }

    /// The next event if one is ready now, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            match self.rx.try_recv() {
                Ok(batch) => self.pending.extend(batch),
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Some(Err(lock(&self.end).take().unwrap_or(StoreError::Closed)))
                }
            }
        }
    }
}

impl WatchSender {
    /// Queues the events of one revision, all or nothing, without waiting.
    pub fn offer(&self, batch: Vec<WatchEvent>) -> Offer {
        // A batch is one channel item, so a revision is delivered whole or not at all.
        match self.tx.try_send(batch) {
            Ok(()) => Offer::Delivered,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
        }
    }

    /// Ends the watch with `error` (delivered after everything already queued).
    pub fn fail(self, error: StoreError) {
        *lock(&self.end) = Some(error);
        // Dropping `self.tx` closes the channel.
    }

    /// Whether the watcher has been dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[derive(Debug)]
struct Subscriber {
    prefix: String,
    /// Only events with a revision above this are delivered.
    after: Revision,
    tx: WatchSender,
}

#[derive(Debug)]
struct HubState {
    /// Events with revision > `floor`, oldest first, whole revisions only.
    history: VecDeque<WatchEvent>,
    history_bytes: usize,
    floor: Revision,
    /// Latest published revision.
    head: Revision,
    subscribers: Vec<Subscriber>,
    closed: bool,
}

/// In-process watch fan-out with a bounded history (see the module docs).
#[derive(Debug)]
pub struct WatchHub {
    limits: WatchLimits,
    state: Mutex<HubState>,
}

fn event_bytes(event: &WatchEvent) -> usize {
    event.kv.key.len() + event.kv.value.len() + std::mem::size_of::<WatchEvent>()
}

impl WatchHub {
    /// A hub for a store whose current revision is `head`; history starts empty, so watches
    /// may start from `head` or later.
    pub fn new(head: Revision, limits: WatchLimits) -> Self {
        WatchHub {
            limits,
            state: Mutex::new(HubState {
                history: VecDeque::new(),
                history_bytes: 0,
                floor: head,
                head,
                subscribers: Vec::new(),
                closed: false,
            }),
        }
    }

    /// Publishes the events of the newly committed `revision` (must exceed every earlier
    /// published revision; events must all carry it).
    pub fn publish(&self, revision: Revision, events: Vec<WatchEvent>) {
        debug_assert!(events.iter().all(|e| e.revision() == revision));
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        state.head = revision;
        let subscribers = std::mem::take(&mut state.subscribers);
        for sub in subscribers {
            if sub.tx.is_closed() {
                continue;
            }
            let batch: Vec<WatchEvent> = if revision > sub.after {
                events
                    .iter()
                    .filter(|e| e.kv.key.starts_with(&sub.prefix))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            if batch.is_empty() {
                state.subscribers.push(sub);
                continue;
            }
            match sub.tx.offer(batch) {
                Offer::Delivered => state.subscribers.push(sub),
                Offer::Gone => {}
                Offer::Full => {
                    tracing::warn!(prefix = %sub.prefix, revision, "cancelling lagging watcher");
                    sub.tx.fail(StoreError::WatchLagged {
                        resume_after: revision - 1,
                    });
                }
            }
        }
        for event in events {
            state.history_bytes += event_bytes(&event);
            state.history.push_back(event);
        }
        self.evict(&mut state);
    }

    fn evict(&self, state: &mut HubState) {
        while state.history.len() > self.limits.history_events
            || state.history_bytes > self.limits.history_bytes
        {
            let Some(oldest) = state.history.front().map(WatchEvent::revision) else {
                break;
            };
            while state
                .history
                .front()
                .is_some_and(|e| e.revision() == oldest)
            {
                if let Some(event) = state.history.pop_front() {
                    state.history_bytes -= event_bytes(&event);
                }
            }
            state.floor = oldest;
        }
    }

    /// Starts a watch of `prefix` for events with revision above `after` (`None`: above the
    /// current revision, i.e. future changes only).
    pub fn subscribe(&self, prefix: &str, after: Option<Revision>) -> Result<Watch, StoreError> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(StoreError::Closed);
        }
        let after = after.unwrap_or(state.head);
        if after < state.floor {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: state.floor,
            });
        }
        let backlog: Vec<WatchEvent> = state
            .history
            .iter()
            .filter(|e| e.revision() > after && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        let (tx, watch) = Watch::channel(backlog, self.limits.watcher_buffer);
        state.subscribers.retain(|sub| !sub.tx.is_closed());
        state.subscribers.push(Subscriber {
            prefix: prefix.to_owned(),
            after,
            tx,
        });
        Ok(watch)
    }

    /// Ends every watch with [`StoreError::Closed`] and refuses new ones.
    pub fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.subscribers.clear();
        state.history.clear();
        state.history_bytes = 0;
    }
}
