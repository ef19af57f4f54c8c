//! Behaviour of the SQLite store (the backend-neutral model check is in tests/model.rs).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::json::StoreJsonExt;
use crate::types::{Compare, CompareOp};

const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

fn memory() -> SqliteStore {
    SqliteStore::in_memory().unwrap()
}

async fn next_event(watch: &mut Watch) -> WatchEvent {
    tokio::time::timeout(EVENT_TIMEOUT, watch.recv())
        .await
        .expect("no watch event within the timeout")
        .unwrap()
}

fn put_event(key: &str, value: &[u8], create: i64, revision: i64, version: i64) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Put,
        kv: KeyValue {
            key: key.into(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: revision,
            version,
            lease: None,
        },
    }
}

fn delete_event(key: &str, old_value: &[u8], revision: i64) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.into(),
            value: old_value.to_vec(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: None,
        },
    }
}

#[tokio::test]
async fn revisions_follow_etcd_rules() {
    let store = memory();
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert_eq!(store.put("/a", b"1".to_vec()).await.unwrap(), 1);
    assert_eq!(store.put("/a", b"2".to_vec()).await.unwrap(), 2);
    assert_eq!(store.put("/b", b"x".to_vec()).await.unwrap(), 3);
    let a = store.get("/a").await.unwrap().unwrap();
    assert_eq!(
        (
            a.value.as_slice(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        (&b"2"[..], 1, 2, 2)
    );
    // Reads, deletes of missing keys and failed compares without writes do not bump.
    assert!(store.get("/missing").await.unwrap().is_none());
    assert!(store.delete("/missing").await.unwrap().is_none());
    let failed = store
        .txn(
            Txn::new()
                .when([Compare::absent("/a")])
                .and_then([TxnOp::put("/c", "1")]),
        )
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert!(failed.responses.is_empty());
    assert_eq!(failed.revision, 3);
    assert_eq!(store.current_revision().await.unwrap(), 3);

    let deleted = store.delete("/a").await.unwrap().unwrap();
    assert_eq!(deleted.value, b"2");
    assert_eq!(store.current_revision().await.unwrap(), 4);
    // Re-creating starts a new life: version 1, new create_revision.
    store.put("/a", b"3".to_vec()).await.unwrap();
    let a = store.get("/a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
}

#[tokio::test]
async fn a_transaction_is_one_revision_and_sees_its_own_writes() {
    let store = memory();
    store.put("/vms/a", b"old".to_vec()).await.unwrap();
    store.put("/vms/z", b"doomed".to_vec()).await.unwrap();
    let response = store
        .txn(Txn::new().when([Compare::exists("/vms/a")]).and_then([
            TxnOp::put("/vms/b", "b"),
            TxnOp::put("/vms/a", "new"),
            TxnOp::range("/vms/"),
            TxnOp::delete("/vms/z"),
            TxnOp::get("/vms/z"),
        ]))
        .await
        .unwrap();
    assert!(response.succeeded);
    assert_eq!(response.revision, 3);
    let OpResponse::Put { prev: Some(prev) } = &response.responses[1] else {
        panic!("put response without prev: {:?}", response.responses[1]);
    };
    assert_eq!(prev.value, b"old");
    let OpResponse::Range { kvs } = &response.responses[2] else {
        panic!("not a range: {:?}", response.responses[2]);
    };
    let seen: Vec<_> = kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.mod_revision))
        .collect();
    assert_eq!(seen, [("/vms/a", 3), ("/vms/b", 3), ("/vms/z", 2)]);
    assert_eq!(response.responses[4], OpResponse::Get { kv: None });

    let mut watch = store.watch("/vms/", Some(2)).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        put_event("/vms/b", b"b", 3, 3, 1)
    );
    assert_eq!(
        next_event(&mut watch).await,
        put_event("/vms/a", b"new", 1, 3, 2)
    );
    assert_eq!(
        next_event(&mut watch).await,
        delete_event("/vms/z", b"doomed", 3)
    );
}

#[tokio::test]
async fn compare_selects_the_branch_and_failed_txns_leave_no_trace() {
    let store = memory();
    let rev = store.put("/k", b"v1".to_vec()).await.unwrap();
    // Stale ETag: the failure branch runs.
    let stale = store
        .txn(
            Txn::new()
                .when([Compare::mod_revision("/k", CompareOp::Equal, rev + 10)])
                .and_then([TxnOp::put("/k", "lost")])
                .or_else([TxnOp::get("/k")]),
        )
        .await
        .unwrap();
    assert!(!stale.succeeded);
    assert!(matches!(&stale.responses[0], OpResponse::Get { kv: Some(kv) } if kv.value == b"v1"));
    // Matching ETag and value: the success branch runs.
    let fresh = store
        .txn(
            Txn::new()
                .when([
                    Compare::mod_revision("/k", CompareOp::Equal, rev),
                    Compare::value("/k", CompareOp::Equal, "v1"),
                ])
                .and_then([TxnOp::put("/k", "v2")]),
        )
        .await
        .unwrap();
    assert!(fresh.succeeded);

    // An operation that fails midway rolls back the whole branch and keeps the revision.
    let before = store.current_revision().await.unwrap();
    let error = store
        .txn(Txn::new().and_then([
            TxnOp::put("/first", "1"),
            TxnOp::delete("/k"),
            TxnOp::put_with_lease("/second", "2", LeaseId(12345)),
        ]))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        StoreError::LeaseNotFound {
            lease: LeaseId(12345)
        }
    ));
    assert!(store.get("/first").await.unwrap().is_none());
    assert_eq!(store.get("/k").await.unwrap().unwrap().value, b"v2");
    assert_eq!(store.current_revision().await.unwrap(), before);

    // Invalid transactions are rejected before running.
    let dup = Txn::new().and_then([TxnOp::put("/x", "1"), TxnOp::put("/x", "2")]);
    assert!(matches!(
        store.txn(dup).await,
        Err(StoreError::DuplicateKeyInTxn { .. })
    ));
    assert!(matches!(
        store.put("relative", vec![]).await,
        Err(StoreError::InvalidKey { .. })
    ));
}

#[tokio::test]
async fn ranges_are_sorted_and_respect_prefix_bounds() {
    let store = memory();
    for key in ["/b", "/ab", "/a0", "/a/b", "/a/a", "/a", "/é"] {
        store.put(key, key.as_bytes().to_vec()).await.unwrap();
    }
    let keys = |kvs: Vec<KeyValue>| kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.range("/a/").await.unwrap().kvs),
        ["/a/a", "/a/b"]
    );
    assert_eq!(
        keys(store.range("/a").await.unwrap().kvs),
        ["/a", "/a/a", "/a/b", "/a0", "/ab"]
    );
    let all = store.range("/").await.unwrap();
    assert_eq!(all.revision, 7);
    assert_eq!(
        keys(all.kvs),
        ["/a", "/a/a", "/a/b", "/a0", "/ab", "/b", "/é"]
    );
    let response = store
        .txn(Txn::new().and_then([TxnOp::delete_prefix("/a/")]))
        .await
        .unwrap();
    assert!(matches!(&response.responses[0], OpResponse::Delete { deleted } if deleted.len() == 2));
    assert_eq!(
        keys(store.range("/a").await.unwrap().kvs),
        ["/a", "/a0", "/ab"]
    );
}

#[tokio::test]
async fn watch_replays_history_then_follows_in_order() {
    let store = memory();
    store.put("/vms/a", b"1".to_vec()).await.unwrap(); // 1
    store.put("/other", b"x".to_vec()).await.unwrap(); // 2
    store
        .txn(Txn::new().and_then([TxnOp::put("/vms/b", "2"), TxnOp::put("/vms/a", "3")]))
        .await
        .unwrap(); // 3

    let mut from_start = store.watch("/vms/", Some(0)).await.unwrap();
    let mut from_two = store.watch("/vms/", Some(2)).await.unwrap();
    let mut from_now = store.watch("/vms/", None).await.unwrap();
    let mut future = store.watch("/vms/", Some(4)).await.unwrap();

    store.delete("/vms/a").await.unwrap(); // 4
    store.put("/vms/c", b"4".to_vec()).await.unwrap(); // 5

    let expected = [
        put_event("/vms/a", b"1", 1, 1, 1),
        put_event("/vms/b", b"2", 3, 3, 1),
        put_event("/vms/a", b"3", 1, 3, 2),
        delete_event("/vms/a", b"3", 4),
        put_event("/vms/c", b"4", 5, 5, 1),
    ];
    for event in &expected {
        assert_eq!(&next_event(&mut from_start).await, event);
    }
    for event in &expected[1..] {
        assert_eq!(&next_event(&mut from_two).await, event);
    }
    for event in &expected[3..] {
        assert_eq!(&next_event(&mut from_now).await, event);
    }
    assert_eq!(&next_event(&mut future).await, &expected[4]);
    assert!(from_start.try_recv().is_none());
    assert!(future.try_recv().is_none());
}

#[tokio::test]
async fn watch_history_is_bounded_and_reports_compaction() {
    let options = SqliteOptions {
        watch: WatchLimits {
            history_events: 3,
            history_bytes: 1 << 20,
            watcher_buffer: 64,
        },
    };
    let store = SqliteStore::in_memory_with(options).unwrap();
    for i in 0..5 {
        store.put(&format!("/k{i}"), vec![i]).await.unwrap(); // revisions 1..=5
    }
    // Revisions 3, 4, 5 are kept; watching from after 2 works, from after 1 does not.
    match store.watch("/", Some(1)).await {
        Err(StoreError::Compacted {
            requested: 1,
            compacted: 2,
        }) => {}
        other => panic!("expected compaction error, got {other:?}"),
    }
    let mut watch = store.watch("/", Some(2)).await.unwrap();
    for revision in 3..=5 {
        assert_eq!(next_event(&mut watch).await.revision(), revision);
    }
}

#[tokio::test]
async fn a_lagging_watcher_is_cancelled_and_can_resume() {
    let options = SqliteOptions {
        watch: WatchLimits {
            history_events: 100,
            history_bytes: 1 << 20,
            watcher_buffer: 2,
        },
    };
    let store = SqliteStore::in_memory_with(options).unwrap();
    let mut slow = store.watch("/", None).await.unwrap();
    for i in 1..=5u8 {
        store.put("/k", vec![i]).await.unwrap();
    }
    assert_eq!(next_event(&mut slow).await.revision(), 1);
    assert_eq!(next_event(&mut slow).await.revision(), 2);
    let resume_after = match slow.recv().await {
        Err(StoreError::WatchLagged { resume_after }) => resume_after,
        other => panic!("expected lag error, got {other:?}"),
    };
    assert_eq!(resume_after, 2);
    let mut resumed = store.watch("/", Some(resume_after)).await.unwrap();
    for revision in 3..=5 {
        assert_eq!(next_event(&mut resumed).await.revision(), revision);
    }
}

#[tokio::test]
async fn dropping_the_store_closes_watches() {
    let store = memory();
    let mut watch = store.watch("/", None).await.unwrap();
    drop(store);
    assert!(matches!(watch.recv().await, Err(StoreError::Closed)));
}

#[tokio::test]
async fn leased_keys_vanish_when_the_lease_expires() {
    let store = memory();
    let lease = store.lease_grant(Duration::from_millis(500)).await.unwrap();
    assert_eq!(lease.ttl, Duration::from_millis(500));
    store
        .put_with_lease("/nodes/n1", b"up".to_vec(), lease.id)
        .await
        .unwrap();
    store.put("/nodes/n2", b"static".to_vec()).await.unwrap();
    let ttl = store.lease_time_to_live(lease.id).await.unwrap().unwrap();
    assert!(ttl <= Duration::from_millis(500));
    let kv = store.get("/nodes/n1").await.unwrap().unwrap();
    assert_eq!(kv.lease, Some(lease.id));

    let mut watch = store.watch("/nodes/", None).await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!(event, delete_event("/nodes/n1", b"up", 3));
    assert!(store.get("/nodes/n1").await.unwrap().is_none());
    assert!(store.get("/nodes/n2").await.unwrap().is_some());
    assert_eq!(store.lease_time_to_live(lease.id).await.unwrap(), None);
    assert!(matches!(
        store.lease_keep_alive(lease.id).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
    assert!(matches!(
        store.put_with_lease("/nodes/n1", vec![], lease.id).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
}

#[tokio::test]
async fn keep_alive_extends_and_revoke_deletes_at_once() {
    let store = memory();
    let lease = store.lease_grant(Duration::from_secs(1)).await.unwrap();
    store
        .put_with_lease("/a", b"1".to_vec(), lease.id)
        .await
        .unwrap();
    store
        .put_with_lease("/b", b"2".to_vec(), lease.id)
        .await
        .unwrap();
    // Six renewals 250 ms apart outlive the 1 s TTL.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            store.lease_keep_alive(lease.id).await.unwrap(),
            Duration::from_secs(1)
        );
    }
    assert!(store.get("/a").await.unwrap().is_some());

    // Re-putting a key without a lease detaches it.
    store.put("/b", b"3".to_vec()).await.unwrap();
    let mut watch = store.watch("/", None).await.unwrap();
    let before = store.current_revision().await.unwrap();
    let revision = store.lease_revoke(lease.id).await.unwrap();
    assert_eq!(revision, before + 1);
    assert_eq!(
        next_event(&mut watch).await,
        delete_event("/a", b"1", revision)
    );
    assert!(store.get("/a").await.unwrap().is_none());
    assert_eq!(store.get("/b").await.unwrap().unwrap().value, b"3");
    assert!(matches!(
        store.lease_revoke(lease.id).await,
        Err(StoreError::LeaseNotFound { .. })
    ));

    // A revoked lease without keys changes no revision.
    let empty = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    assert_eq!(store.lease_revoke(empty.id).await.unwrap(), revision);
    // Lease ids are never reused.
    assert!(empty.id > lease.id);
    assert!(matches!(
        store.lease_grant(Duration::ZERO).await,
        Err(StoreError::InvalidTtl { .. })
    ));
}

#[tokio::test]
async fn state_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let long_lease;
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.put("/a", b"1".to_vec()).await.unwrap();
        store.put("/a", b"2".to_vec()).await.unwrap();
        store.put("/b", b"3".to_vec()).await.unwrap();
        store.delete("/b").await.unwrap();
        long_lease = store.lease_grant(Duration::from_secs(600)).await.unwrap();
        store
            .put_with_lease("/leased", b"l".to_vec(), long_lease.id)
            .await
            .unwrap();
        let short = store.lease_grant(Duration::from_millis(300)).await.unwrap();
        store
            .put_with_lease("/short", b"s".to_vec(), short.id)
            .await
            .unwrap();
        // Close before the short lease expires so that expiry has to happen at open.
        drop(store);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(store.get("/short").await.unwrap().is_none());
    // 6 writes before closing, then the expiry of the short lease at open.
    assert_eq!(store.current_revision().await.unwrap(), 7);
    let a = store.get("/a").await.unwrap().unwrap();
    assert_eq!(
        (
            a.value.as_slice(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        (&b"2"[..], 1, 2, 2)
    );
    assert!(store.get("/b").await.unwrap().is_none());
    let leased = store.get("/leased").await.unwrap().unwrap();
    assert_eq!(leased.lease, Some(long_lease.id));
    assert!(store
        .lease_time_to_live(long_lease.id)
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.lease_revoke(long_lease.id).await.unwrap(), 8);
    // Watches start from the reopened revision.
    assert!(matches!(
        store.watch("/", Some(3)).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store.watch("/", Some(8)).await.unwrap();
    store.put("/c", vec![]).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), 9);
}

#[test]
fn database_file_is_private_and_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("state")).unwrap();
    let db = dir.path().join("state").join(DB_FILE_NAME);
    assert_eq!(store.location(), db);
    let mode = fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = fs::metadata(dir.path().join("state"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    match SqliteStore::open(&dir.path().join("state")) {
        Err(StoreError::Locked { path, .. }) => assert_eq!(path, db),
        other => panic!("second open should fail as locked, got {other:?}"),
    }
    drop(store);
    SqliteStore::open(&dir.path().join("state")).unwrap();
}

#[tokio::test]
async fn an_old_schema_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE_NAME);
    {
        // A database as the first release wrote it: schema version 1, no leases.
        let mut conn = Connection::open(&path).unwrap();
        schema::migrate(&mut conn, &path, 1).unwrap();
        conn.execute(
            "INSERT INTO kv (key, value, create_revision, mod_revision, version) \
             VALUES (?1, ?2, 3, 4, 2)",
            params![b"/old".as_slice(), b"v".as_slice()],
        )
        .unwrap();
        conn.execute("UPDATE meta SET value = 4 WHERE name = 'revision'", [])
            .unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, 1);
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let old = store.get("/old").await.unwrap().unwrap();
    assert_eq!(
        (
            old.create_revision,
            old.mod_revision,
            old.version,
            old.lease
        ),
        (3, 4, 2, None)
    );
    assert_eq!(store.current_revision().await.unwrap(), 4);
    let lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        store
            .put_with_lease("/new", vec![], lease.id)
            .await
            .unwrap(),
        5
    );
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, schema::latest_version());
}

#[test]
fn a_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join(DB_FILE_NAME),
        b"this is not sqlite at all, just text....",
    )
    .unwrap();
    assert!(SqliteStore::open(dir.path()).is_err());
}

/// Optimistic concurrency as the engine does it: read, compute, write guarded by the
/// key's mod_revision, retry on conflict. No increment may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_optimistic_updates_lose_nothing() {
    const TASKS: u64 = 4;
    const INCREMENTS: u64 = 25;
    let store: Arc<dyn Store> = Arc::new(memory());
    store.put_json("/counter", &0u64).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.get_json::<u64>("/counter").await.unwrap().unwrap();
                    // Yield between read and write so tasks really interleave.
                    tokio::task::yield_now().await;
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            "/counter",
                            CompareOp::Equal,
                            current.mod_revision,
                        )])
                        .and_then([TxnOp::put_json("/counter", &(current.value + 1)).unwrap()]);
                    if store.txn(txn).await.unwrap().succeeded {
                        break;
                    }
                    conflicts += 1;
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for handle in handles {
        conflicts += handle.await.unwrap();
    }
    let counter = store.get_json::<u64>("/counter").await.unwrap().unwrap();
    assert_eq!(counter.value, TASKS * INCREMENTS);
    assert_eq!(counter.version as u64, TASKS * INCREMENTS + 1);
    // Every failed attempt was a genuine conflict that left no write behind.
    assert_eq!(
        store.current_revision().await.unwrap() as u64,
        TASKS * INCREMENTS + 1
    );
    eprintln!("optimistic retries: {conflicts}");
}

#[tokio::test]
async fn json_helpers_round_trip_through_dyn_store() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Vm {
        name: String,
        vcpus: u32,
    }
    let store: Arc<dyn Store> = Arc::new(memory());
    let vm = Vm {
        name: "web1".into(),
        vcpus: 2,
    };
    let revision = store.put_json("/vms/default/web1", &vm).await.unwrap();
    let read = store
        .get_json::<Vm>("/vms/default/web1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.value, vm);
    assert_eq!(read.mod_revision, revision);
    let (all, at) = store.range_json::<Vm>("/vms/").await.unwrap();
    assert_eq!(at, revision);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, "/vms/default/web1");
    store
        .put("/vms/default/bad", b"{not json".to_vec())
        .await
        .unwrap();
    assert!(matches!(
        store.get_json::<Vm>("/vms/default/bad").await,
        Err(StoreError::Json {
            direction: "decode",
            ..
        })
    ));
}
