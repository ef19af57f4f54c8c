//! The event bus behind `GET /v1/events`: typed lifecycle and operation events that carry
//! their requestor (so the stream doubles as an audit trail; events are also logged).
//!
//! Invariant: sequence numbers increase by one per emitted event within one daemon run.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use tokio::sync::broadcast;
use vireo_api::events::Event;

#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    seq: AtomicU64,
}

impl Default for EventBus {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        EventBus {
            tx,
            seq: AtomicU64::new(0),
        }
    }
}

impl EventBus {
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn emit(
        &self,
        kind: &str,
        project: Option<&str>,
        target: &str,
        requestor: &str,
        data: serde_json::Value,
    ) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(target: "vireo::audit", seq, kind, target, requestor, %data, "event");
        let _ = self.tx.send(Event {
            seq,
            timestamp: Utc::now(),
            kind: kind.to_string(),
            project: project.map(str::to_string),
            target: target.to_string(),
            requestor: requestor.to_string(),
            data,
        });
    }
}
