//! The embedded store: one SQLite file, `state.db`, in the state directory.
//!
//! Design and invariants:
//! - One dedicated thread owns the only connection and executes requests one at a time from
//!   a channel, so transactions are trivially serializable and the in-memory copy of the
//!   global revision is always the committed one. Async callers wait on a oneshot reply;
//!   nothing blocks the tokio runtime except [`Drop`], which joins the thread.
//! - Each transaction is one SQLite transaction; the revision row, the keys and the watch
//!   publication change together: events are published only after `COMMIT` succeeded and in
//!   commit order, before the caller gets its reply.
//! - Durability: WAL with `synchronous=FULL`. With `NORMAL`, a transaction acknowledged just
//!   before a power loss may be rolled back; the engine acts on acknowledged writes (it
//!   starts QEMU, hands out ETags), so an acknowledged write must survive. The price, one
//!   fsync per commit, is small at control-plane write rates.
//! - `locking_mode=EXCLUSIVE`: the daemon holds the database lock for its lifetime, so a
//!   second daemon on the same state directory fails to open ([`StoreError::Locked`]) instead
//!   of silently diverging from the cached revision.
//! - Lease deadlines are wall-clock Unix milliseconds (they must survive restarts). Leases
//!   past their deadline are expired at open, before any request, and then whenever a
//!   deadline passes (the worker waits on its channel with a timeout). A wall-clock jump
//!   shortens or lengthens leases accordingly.
//! - `state.db` is created with mode 0600 (it holds token hashes).
//! - A request whose caller stopped waiting still runs to completion.

mod schema;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

pub use schema::{latest_version as latest_schema_version, APPLICATION_ID};

use crate::error::StoreError;
use crate::key::{prefix_end, validate_prefix};
use crate::store::Store;
use crate::types::{
    EventKind, KeyValue, Lease, LeaseId, OpResponse, Revision, Txn, TxnOp, TxnResponse, WatchEvent,
};
use crate::watch::{Watch, WatchHub, WatchLimits};

/// Name of the database file inside the state directory.
pub const DB_FILE_NAME: &str = "state.db";
/// Longest lease TTL accepted (one year).
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long opening waits for another connection's lock before reporting it as in use.
const BUSY_TIMEOUT: Duration = Duration::from_millis(500);
/// Retry delay after a failed lease-expiry sweep.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// Tunables of a [`SqliteStore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SqliteOptions {
    pub watch: WatchLimits,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

#[derive(Debug)]
enum Request {
    Txn(Txn, Reply<TxnResponse>),
    LeaseGrant(Duration, Reply<Lease>),
    LeaseKeepAlive(LeaseId, Reply<Duration>),
    LeaseRevoke(LeaseId, Reply<Revision>),
    LeaseTimeToLive(LeaseId, Reply<Option<Duration>>),
    Shutdown,
}

/// The SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    requests: mpsc::Sender<Request>,
    hub: Arc<WatchHub>,
    worker: Option<JoinHandle<()>>,
    location: PathBuf,
}

fn sql(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::backend(operation, source)
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Wall-clock time in Unix milliseconds (0 if the clock is before 1970).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/state.db`, migrating its schema to the latest version.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, SqliteOptions::default())
    }

    /// [`SqliteStore::open`] with explicit options.
    pub fn open_with(dir: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE_NAME);
        let prepare = |source| StoreError::Prepare {
            path: path.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(prepare)?;
        // Create the file ourselves so it gets mode 0600 (SQLite would honour the umask);
        // SQLite gives its -wal file the same mode.
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(prepare)?;
        let conn = Connection::open(&path).map_err(sql("opening the state database"))?;
        let locked = |source: rusqlite::Error| {
            if is_busy(&source) {
                StoreError::Locked {
                    path: path.clone(),
                    source: Box::new(source),
                }
            } else {
                StoreError::backend("configuring the state database", source)
            }
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(locked)?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(locked)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(locked)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt {
                detail: format!("{} refused WAL journal mode (got {mode})", path.display()),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(locked)?;
        // Take the exclusive lock now (held until close, see the module docs).
        conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;")
            .map_err(locked)?;
        Self::start(conn, path, options)
    }

    /// A private in-memory store (for tests): same semantics, nothing persisted.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::in_memory_with(SqliteOptions::default())
    }

    /// [`SqliteStore::in_memory`] with explicit options.
    pub fn in_memory_with(options: SqliteOptions) -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(sql("opening an in-memory database"))?;
        Self::start(conn, PathBuf::from(":memory:"), options)
    }

    /// Where the database lives (`:memory:` for in-memory stores).
    pub fn location(&self) -> &Path {
        &self.location
    }

    fn start(
        mut conn: Connection,
        location: PathBuf,
        options: SqliteOptions,
    ) -> Result<Self, StoreError> {
        schema::migrate(&mut conn, &location, schema::latest_version())?;
        let revision = read_revision(&conn)?;
        let mut worker = Worker {
            conn,
            revision,
            hub: None,
            next_deadline_ms: None,
        };
        worker.refresh_next_deadline()?;
        // Leases that ran out while the daemon was down end before anything can read.
        worker.expire_due_leases(now_ms())?;
        let hub = Arc::new(WatchHub::new(worker.revision, options.watch));
        worker.hub = Some(hub.clone());
        let (requests, receiver) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("vireo-store".into())
            .spawn(move || worker.run(receiver))
            .map_err(|source| StoreError::Prepare {
                path: location.clone(),
                source,
            })?;
        tracing::info!(location = %location.display(), revision, "state store open");
        Ok(SqliteStore {
            requests,
            hub,
            worker: Some(handle),
            location,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, StoreError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(make(reply))
            .map_err(|_| StoreError::Closed)?;
        response.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Ignore a send failure: it means the worker already stopped.
        let _ = self.requests.send(Request::Shutdown);
        if let Some(handle) = self.worker.take() {
            if handle.join().is_err() {
                tracing::error!(location = %self.location.display(), "state store worker panicked");
            }
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        txn.validate()?;
        self.call(|reply| Request::Txn(txn, reply)).await
    }

    async fn watch(&self, prefix: &str, after: Option<Revision>) -> Result<Watch, StoreError> {
        validate_prefix(prefix)?;
        self.hub.subscribe(prefix, after)
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        if ttl.is_zero() || ttl > MAX_LEASE_TTL {
            return Err(StoreError::InvalidTtl {
                ttl_ms: ttl.as_millis(),
                max_ms: MAX_LEASE_TTL.as_millis() as u64,
            });
        }
        self.call(|reply| Request::LeaseGrant(ttl, reply)).await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.call(|reply| Request::LeaseKeepAlive(lease, reply))
            .await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<Revision, StoreError> {
        self.call(|reply| Request::LeaseRevoke(lease, reply)).await
    }

    async fn lease_time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        self.call(|reply| Request::LeaseTimeToLive(lease, reply))
            .await
    }
}

/// State owned by the store thread.
struct Worker {
    conn: Connection,
    /// Last committed revision.
    revision: Revision,
    /// Set before the thread starts; `None` only while expiring leases during open.
    hub: Option<Arc<WatchHub>>,
    /// Earliest lease deadline (Unix ms), if any lease exists.
    next_deadline_ms: Option<i64>,
}

impl Worker {
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        loop {
            let now = now_ms();
            if let Err(error) = self.expire_due_leases(now) {
                tracing::error!(error = %error_chain(&error), "lease expiry failed; retrying");
                self.next_deadline_ms = Some(now + EXPIRY_RETRY.as_millis() as i64);
            }
            let request = match self.next_deadline_ms {
                Some(deadline) => {
                    let wait = u64::try_from(deadline - now_ms()).unwrap_or(0);
                    match requests.recv_timeout(Duration::from_millis(wait)) {
                        Ok(request) => request,
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match requests.recv() {
                    Ok(request) => request,
                    Err(mpsc::RecvError) => break,
                },
            };
            // A failed reply means the caller stopped waiting; the work is done regardless.
            match request {
                Request::Txn(txn, reply) => {
                    let _ = reply.send(self.txn(txn));
                }
                Request::LeaseGrant(ttl, reply) => {
                    let _ = reply.send(self.lease_grant(ttl));
                }
                Request::LeaseKeepAlive(lease, reply) => {
                    let _ = reply.send(self.lease_keep_alive(lease));
                }
                Request::LeaseRevoke(lease, reply) => {
                    let _ = reply.send(self.lease_revoke(lease));
                }
                Request::LeaseTimeToLive(lease, reply) => {
                    let _ = reply.send(self.lease_time_to_live(lease));
                }
                Request::Shutdown => break,
            }
        }
        if let Some(hub) = &self.hub {
            hub.close();
        }
    }

    fn txn(&mut self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let now = now_ms();
        let new_revision = self.revision + 1;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("starting a transaction"))?;
        let mut succeeded = true;
        for compare in &txn.compares {
            let current = read_kv(&tx, &compare.key)?;
            if !compare.holds(current.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { txn.success } else { txn.failure };
        let mut responses = Vec::with_capacity(ops.len());
        let mut events = Vec::new();
        for op in ops {
            responses.push(apply_op(&tx, op, new_revision, now, &mut events)?);
        }
        finish(tx, &mut self.revision, self.hub.as_deref(), events)?;
        Ok(TxnResponse {
            succeeded,
            responses,
            revision: self.revision,
        })
    }

    fn lease_grant(&mut self, ttl: Duration) -> Result<Lease, StoreError> {
        // Round up to whole milliseconds; the caller bounded `ttl`, so this fits in i64.
        let ttl_ms = ttl.as_nanos().div_ceil(1_000_000) as i64;
        let deadline = now_ms().saturating_add(ttl_ms);
        self.conn
            .execute(
                "INSERT INTO leases (ttl_ms, deadline_ms) VALUES (?1, ?2)",
                params![ttl_ms, deadline],
            )
            .map_err(sql("granting a lease"))?;
        let id = LeaseId(self.conn.last_insert_rowid());
        self.next_deadline_ms = Some(self.next_deadline_ms.map_or(deadline, |d| d.min(deadline)));
        Ok(Lease {
            id,
            ttl: Duration::from_millis(ttl_ms as u64),
        })
    }

    /// The lease's TTL if it exists and has not passed its deadline at `now`.
    fn live_lease_ttl(
        conn: &Connection,
        lease: LeaseId,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let row: Option<(i64, i64)> = conn
            .query_row(
                "SELECT ttl_ms, deadline_ms FROM leases WHERE id = ?1",
                params![lease.0],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(sql("reading a lease"))?;
        Ok(row
            .filter(|(_, deadline)| *deadline > now)
            .map(|(ttl, _)| ttl))
    }

    fn lease_keep_alive(&mut self, lease: LeaseId) -> Result<Duration, StoreError> {
        let now = now_ms();
        let ttl = Self::live_lease_ttl(&self.conn, lease, now)?
            .ok_or(StoreError::LeaseNotFound { lease })?;
        self.conn
            .execute(
                "UPDATE leases SET deadline_ms = ?1 WHERE id = ?2",
                params![now.saturating_add(ttl), lease.0],
            )
            .map_err(sql("renewing a lease"))?;
        self.refresh_next_deadline()?;
        Ok(Duration::from_millis(ttl as u64))
    }

    fn lease_time_to_live(&mut self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let now = now_ms();
        let deadline: Option<i64> = self
            .conn
            .query_row(
                "SELECT deadline_ms FROM leases WHERE id = ?1",
                params![lease.0],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql("reading a lease"))?;
        Ok(deadline
            .filter(|deadline| *deadline > now)
            .map(|deadline| Duration::from_millis((deadline - now) as u64)))
    }

    fn lease_revoke(&mut self, lease: LeaseId) -> Result<Revision, StoreError> {
        if Self::live_lease_ttl(&self.conn, lease, now_ms())?.is_none() {
            return Err(StoreError::LeaseNotFound { lease });
        }
        self.remove_lease(lease)?;
        self.refresh_next_deadline()?;
        Ok(self.revision)
    }

    /// Deletes the lease and its keys as one revision (no revision if it had no keys).
    fn remove_lease(&mut self, lease: LeaseId) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("starting a lease removal"))?;
        let attached = query_kvs(
            &tx,
            "SELECT key, value, create_revision, mod_revision, version, lease FROM kv \
             WHERE lease = ?1 ORDER BY key",
            params![lease.0],
        )?;
        tx.execute("DELETE FROM kv WHERE lease = ?1", params![lease.0])
            .map_err(sql("deleting a lease's keys"))?;
        tx.execute("DELETE FROM leases WHERE id = ?1", params![lease.0])
            .map_err(sql("deleting a lease"))?;
        let revision = self.revision + 1;
        let events: Vec<WatchEvent> = attached
            .into_iter()
            .map(|kv| deletion_event(kv, revision))
            .collect();
        if events.is_empty() {
            // Still commit: the lease row itself is gone.
            return tx.commit().map_err(sql("committing a lease removal"));
        }
        finish(tx, &mut self.revision, self.hub.as_deref(), events)
    }

    fn expire_due_leases(&mut self, now: i64) -> Result<(), StoreError> {
        if self.next_deadline_ms.is_none_or(|deadline| deadline > now) {
            return Ok(());
        }
        let due: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT id FROM leases WHERE deadline_ms <= ?1 ORDER BY deadline_ms, id",
                )
                .map_err(sql("listing expired leases"))?;
            let rows = stmt
                .query_map(params![now], |row| row.get(0))
                .map_err(sql("listing expired leases"))?;
            rows.collect::<Result<_, _>>()
                .map_err(sql("listing expired leases"))?
        };
        for id in due {
            tracing::debug!(lease = %LeaseId(id), "lease expired");
            self.remove_lease(LeaseId(id))?;
        }
        self.refresh_next_deadline()
    }

    fn refresh_next_deadline(&mut self) -> Result<(), StoreError> {
        self.next_deadline_ms = self
            .conn
            .query_row("SELECT min(deadline_ms) FROM leases", [], |row| row.get(0))
            .map_err(sql("reading lease deadlines"))?;
        Ok(())
    }
}

/// Commits `tx` as revision `*revision + 1` if `events` is non-empty and publishes them; a
/// transaction without changes is rolled back and keeps the revision.
fn finish(
    tx: Transaction<'_>,
    revision: &mut Revision,
    hub: Option<&WatchHub>,
    events: Vec<WatchEvent>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return tx.rollback().map_err(sql("ending a read-only transaction"));
    }
    let next = *revision + 1;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE name = 'revision'",
        params![next],
    )
    .map_err(sql("advancing the revision"))?;
    tx.commit().map_err(sql("committing a transaction"))?;
    *revision = next;
    if let Some(hub) = hub {
        hub.publish(next, events);
    }
    Ok(())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

fn read_revision(conn: &Connection) -> Result<Revision, StoreError> {
    let revision: Revision = conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'revision'",
            [],
            |row| row.get(0),
        )
        .map_err(sql("reading the revision"))?;
    if revision < 0 {
        return Err(StoreError::Corrupt {
            detail: format!("negative revision {revision}"),
        });
    }
    Ok(revision)
}

type RawRow = (Vec<u8>, Vec<u8>, i64, i64, i64, Option<i64>);

fn decode_row(raw: RawRow) -> Result<KeyValue, StoreError> {
    let (key, value, create_revision, mod_revision, version, lease) = raw;
    let key = String::from_utf8(key).map_err(|e| StoreError::Corrupt {
        detail: format!("key is not UTF-8: {:?}", e.as_bytes()),
    })?;
    Ok(KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
        version,
        lease: lease.map(LeaseId),
    })
}

fn query_kvs(
    conn: &Connection,
    query: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<KeyValue>, StoreError> {
    let mut stmt = conn.prepare_cached(query).map_err(sql("reading keys"))?;
    let rows = stmt
        .query_map(params, |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
            ))
        })
        .map_err(sql("reading keys"))?;
    let mut kvs = Vec::new();
    for raw in rows {
        kvs.push(decode_row(raw.map_err(sql("reading keys"))?)?);
    }
    Ok(kvs)
}

fn read_kv(conn: &Connection, key: &str) -> Result<Option<KeyValue>, StoreError> {
    Ok(query_kvs(
        conn,
        "SELECT key, value, create_revision, mod_revision, version, lease FROM kv WHERE key = ?1",
        params![key.as_bytes()],
    )?
    .pop())
}

fn read_range(conn: &Connection, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
    match prefix_end(prefix.as_bytes()) {
        Some(end) => query_kvs(
            conn,
            "SELECT key, value, create_revision, mod_revision, version, lease FROM kv \
             WHERE key >= ?1 AND key < ?2 ORDER BY key",
            params![prefix.as_bytes(), end],
        ),
        None => query_kvs(
            conn,
            "SELECT key, value, create_revision, mod_revision, version, lease FROM kv \
             WHERE key >= ?1 ORDER BY key",
            params![prefix.as_bytes()],
        ),
    }
}

fn deletion_event(previous: KeyValue, revision: Revision) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: previous.key,
            value: previous.value,
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: None,
        },
    }
}

fn apply_op(
    tx: &Transaction<'_>,
    op: TxnOp,
    revision: Revision,
    now: i64,
    events: &mut Vec<WatchEvent>,
) -> Result<OpResponse, StoreError> {
    match op {
        TxnOp::Put { key, value, lease } => {
            if let Some(lease) = lease {
                if Worker::live_lease_ttl(tx, lease, now)?.is_none() {
                    return Err(StoreError::LeaseNotFound { lease });
                }
            }
            let prev = read_kv(tx, &key)?;
            let create_revision = prev.as_ref().map_or(revision, |p| p.create_revision);
            let version = match &prev {
                None => 1,
                Some(p) => p
                    .version
                    .checked_add(1)
                    .ok_or_else(|| StoreError::Corrupt {
                        detail: format!("version of {key:?} overflows"),
                    })?,
            };
            tx.execute(
                "INSERT INTO kv (key, value, create_revision, mod_revision, version, lease) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 mod_revision = excluded.mod_revision, version = excluded.version, \
                 lease = excluded.lease",
                params![
                    key.as_bytes(),
                    value,
                    create_revision,
                    revision,
                    version,
                    lease.map(|l| l.0)
                ],
            )
            .map_err(sql("writing a key"))?;
            events.push(WatchEvent {
                kind: EventKind::Put,
                kv: KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision: revision,
                    version,
                    lease,
                },
            });
            Ok(OpResponse::Put { prev })
        }
        TxnOp::Delete { key } => {
            let prev = read_kv(tx, &key)?;
            if prev.is_some() {
                tx.execute("DELETE FROM kv WHERE key = ?1", params![key.as_bytes()])
                    .map_err(sql("deleting a key"))?;
            }
            let deleted: Vec<KeyValue> = prev.into_iter().collect();
            events.extend(
                deleted
                    .iter()
                    .cloned()
                    .map(|kv| deletion_event(kv, revision)),
            );
            Ok(OpResponse::Delete { deleted })
        }
        TxnOp::DeletePrefix { prefix } => {
            let deleted = read_range(tx, &prefix)?;
            for kv in &deleted {
                tx.execute("DELETE FROM kv WHERE key = ?1", params![kv.key.as_bytes()])
                    .map_err(sql("deleting a key"))?;
            }
            events.extend(
                deleted
                    .iter()
                    .cloned()
                    .map(|kv| deletion_event(kv, revision)),
            );
            Ok(OpResponse::Delete { deleted })
        }
        TxnOp::Get { key } => Ok(OpResponse::Get {
            kv: read_kv(tx, &key)?,
        }),
        TxnOp::Range { prefix } => Ok(OpResponse::Range {
            kvs: read_range(tx, &prefix)?,
        }),
    }
}

#[cfg(test)]
mod tests;
