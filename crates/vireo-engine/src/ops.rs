//! Long-running operations: registry, progress, waiting, cancellation and the undo journal.
//!
//! Every operation is persisted under `/operations/<id>` together with its undo journal
//! ([`Cleanup`] steps recorded *before* the side effect they undo happens). When an
//! operation fails, its journal is replayed in reverse; when the daemon dies mid-operation,
//! [`Operations::recover`] marks it failed on the next start and replays the journal, so
//! nothing half-created survives a crash.
//!
//! Invariant: an operation reaches a final status exactly once; its journal is empty after
//! success and has been replayed after failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;
use vireo_api::operations::{Operation, OperationStatus, Progress};

use crate::db::Db;
use crate::events::EventBus;

/// One undo step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cleanup {
    /// Remove a file or a directory tree the operation created.
    RemovePath { path: PathBuf },
    /// Delete a store key the operation created.
    DeleteKey { key: String },
}

/// What is persisted for crash recovery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedOp {
    pub op: Operation,
    pub journal: Vec<Cleanup>,
}

/// How many finished operations are kept for listing.
const KEEP_FINISHED: usize = 500;

#[derive(Debug)]
struct Entry {
    tx: watch::Sender<Operation>,
    journal: Vec<Cleanup>,
    cancel: watch::Sender<bool>,
}

/// Registry of operations.
#[derive(Debug, Clone)]
pub struct Operations {
    inner: Arc<Mutex<HashMap<Uuid, Entry>>>,
    db: Db,
    events: Arc<EventBus>,
}

/// Handle held by the task doing the work.
#[derive(Debug, Clone)]
pub struct OpHandle {
    pub id: Uuid,
    ops: Operations,
    cancel: watch::Receiver<bool>,
}

impl Operations {
    pub fn new(db: Db, events: Arc<EventBus>) -> Self {
        Operations {
            inner: Arc::new(Mutex::new(HashMap::new())),
            db,
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a running operation.
    pub async fn begin(
        &self,
        kind: &str,
        target: &str,
        requestor: &str,
        cancellable: bool,
    ) -> OpHandle {
        let now = Utc::now();
        let op = Operation {
            id: Uuid::now_v7(),
            kind: kind.to_string(),
            target: target.to_string(),
            status: OperationStatus::Running,
            progress: Progress::default(),
            created_at: now,
            updated_at: now,
            error: None,
            requestor: requestor.to_string(),
            log: vec![],
            cancellable,
        };
        let id = op.id;
        let (tx, _) = watch::channel(op.clone());
        let (cancel_tx, cancel_rx) = watch::channel(false);
        self.lock().insert(
            id,
            Entry {
                tx,
                journal: vec![],
                cancel: cancel_tx,
            },
        );
        self.persist(id).await;
        self.events.emit(
            "operation",
            None,
            target,
            requestor,
            serde_json::json!({"id": id, "kind": kind, "status": "running"}),
        );
        OpHandle {
            id,
            ops: self.clone(),
            cancel: cancel_rx,
        }
    }

    async fn persist(&self, id: Uuid) {
        let snapshot = {
            let map = self.lock();
            map.get(&id).map(|e| PersistedOp {
                op: e.tx.borrow().clone(),
                journal: e.journal.clone(),
            })
        };
        if let Some(p) = snapshot {
            if let Err(e) = self.db.put_operation(&p).await {
                tracing::warn!(op = %id, error = %crate::error::chain(&e), "persisting operation failed");
            }
        }
    }

    pub fn get(&self, id: Uuid) -> Option<Operation> {
        self.lock().get(&id).map(|e| e.tx.borrow().clone())
    }

    pub fn list(&self) -> Vec<Operation> {
        let mut v: Vec<Operation> = self
            .lock()
            .values()
            .map(|e| e.tx.borrow().clone())
            .collect();
        v.sort_by_key(|o| o.created_at);
        v
    }

    /// Waits until the operation is final or `timeout` passes; returns it as it is then.
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> Option<Operation> {
        let mut rx = self.lock().get(&id)?.tx.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|o| o.status.is_final())).await;
        let op = rx.borrow().clone();
        Some(op)
    }

    /// Requests cancellation; returns false when the operation cannot be cancelled.
    pub fn cancel(&self, id: Uuid) -> Option<bool> {
        let map = self.lock();
        let e = map.get(&id)?;
        let op = e.tx.borrow();
        if !op.cancellable || op.status.is_final() {
            return Some(false);
        }
        let _ = e.cancel.send(true);
        Some(true)
    }

    fn update(&self, id: Uuid, f: impl FnOnce(&mut Operation)) {
        if let Some(e) = self.lock().get(&id) {
            e.tx.send_modify(|o| {
                f(o);
                o.updated_at = Utc::now();
            });
        }
    }

    fn prune(&self) {
        let mut map = self.lock();
        let mut finished: Vec<(chrono::DateTime<Utc>, Uuid)> = map
            .iter()
            .filter(|(_, e)| e.tx.borrow().status.is_final())
            .map(|(id, e)| (e.tx.borrow().updated_at, *id))
            .collect();
        if finished.len() > KEEP_FINISHED {
            finished.sort();
            for (_, id) in &finished[..finished.len() - KEEP_FINISHED] {
                map.remove(id);
            }
        }
    }

    /// Marks operations left running by a previous daemon as failed and replays their undo
    /// journals. Returns how many were recovered.
    pub async fn recover(&self) -> usize {
        let persisted = match self.db.list_operations().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "listing operations failed");
                return 0;
            }
        };
        let mut n = 0;
        for mut p in persisted {
            if p.op.status == OperationStatus::Running {
                n += 1;
                tracing::warn!(op = %p.op.id, kind = %p.op.kind, target = %p.op.target, "operation interrupted by a daemon restart; undoing it");
                replay(&self.db, &p.journal).await;
                p.journal.clear();
                p.op.status = OperationStatus::Failed;
                p.op.error =
                    Some("interrupted by a daemon restart; its partial work was undone".into());
                p.op.updated_at = Utc::now();
                let _ = self.db.put_operation(&p).await;
            }
            let (tx, _) = watch::channel(p.op.clone());
            let (cancel, _) = watch::channel(false);
            self.lock().insert(
                p.op.id,
                Entry {
                    tx,
                    journal: vec![],
                    cancel,
                },
            );
        }
        self.prune();
        n
    }
}

/// Runs undo steps in reverse order, logging (not failing on) errors: cleanup is best effort.
pub async fn replay(db: &Db, journal: &[Cleanup]) {
    for step in journal.iter().rev() {
        match step {
            Cleanup::RemovePath { path } => {
                let res = if path.is_dir() {
                    tokio::fs::remove_dir_all(path).await
                } else {
                    tokio::fs::remove_file(path).await
                };
                match res {
                    Ok(()) => tracing::info!(path = %path.display(), "undo: removed"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "undo: removing failed")
                    }
                }
            }
            Cleanup::DeleteKey { key } => {
                if let Err(e) = db.delete_key(key).await {
                    tracing::warn!(key, error = %crate::error::chain(&e), "undo: deleting key failed");
                }
            }
        }
    }
}

impl OpHandle {
    pub fn log(&self, line: impl Into<String>) {
        let line = format!("{} {}", Utc::now().format("%H:%M:%S%.3f"), line.into());
        self.ops.update(self.id, |o| o.log.push(line));
    }

    pub fn progress(&self, p: Progress) {
        self.ops.update(self.id, |o| o.progress = p);
    }

    pub fn stage(&self, stage: &str) {
        self.log(stage);
        let stage = stage.to_string();
        self.ops.update(self.id, |o| o.progress.stage = Some(stage));
    }

    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Records an undo step; persisted before the caller performs the side effect.
    pub async fn journal(&self, step: Cleanup) {
        if let Some(e) = self.ops.lock().get_mut(&self.id) {
            e.journal.push(step);
        }
        self.ops.persist(self.id).await;
    }

    pub async fn succeed(&self) {
        if let Some(e) = self.ops.lock().get_mut(&self.id) {
            e.journal.clear();
        }
        self.finish(OperationStatus::Succeeded, None).await;
    }

    /// Fails the operation after undoing its journal.
    pub async fn fail(&self, message: &str) {
        let journal = self
            .ops
            .lock()
            .get_mut(&self.id)
            .map(|e| std::mem::take(&mut e.journal))
            .unwrap_or_default();
        replay(&self.ops.db, &journal).await;
        let status = if self.is_cancelled() {
            OperationStatus::Cancelled
        } else {
            OperationStatus::Failed
        };
        self.finish(status, Some(message.to_string())).await;
    }

    async fn finish(&self, status: OperationStatus, error: Option<String>) {
        let mut target = String::new();
        let mut kind = String::new();
        let mut requestor = String::new();
        self.ops.update(self.id, |o| {
            o.status = status;
            o.error = error.clone();
            if status == OperationStatus::Succeeded {
                if let Some(t) = o.progress.bytes_total {
                    o.progress.bytes_done = Some(t);
                }
                o.progress.percent = Some(100.0);
            }
            target = o.target.clone();
            kind = o.kind.clone();
            requestor = o.requestor.clone();
        });
        self.ops.persist(self.id).await;
        self.ops.events.emit(
            "operation",
            None,
            &target,
            &requestor,
            serde_json::json!({"id": self.id, "kind": kind, "status": status, "error": error}),
        );
        self.ops.prune();
    }

    pub fn snapshot(&self) -> Option<Operation> {
        self.ops.get(self.id)
    }
}
