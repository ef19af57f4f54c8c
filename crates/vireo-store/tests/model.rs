//! Property test: the SQLite store behaves exactly like a tiny in-memory model of etcd's
//! semantics (revisions, versions, compares, branch atomicity, leases, watch events) for
//! random operation sequences.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use vireo_store::{
    Compare, CompareOp, CompareTarget, EventKind, KeyValue, LeaseId, OpResponse, SqliteStore,
    Store, StoreError, Txn, TxnOp, TxnResponse, WatchEvent,
};

const KEYS: &[&str] = &["/a", "/a/b", "/a/c", "/ab", "/b", "/b/a"];
const PREFIXES: &[&str] = &["/", "/a", "/a/", "/b/", "/c"];
const UNKNOWN_LEASE: LeaseId = LeaseId(1 << 40);

#[derive(Clone, Debug)]
enum ModelOp {
    Put {
        key: usize,
        value: Vec<u8>,
        lease: Option<usize>,
    },
    Delete(usize),
    DeletePrefix(usize),
    Get(usize),
    Range(usize),
}

#[derive(Clone, Debug)]
enum Step {
    Txn {
        compares: Vec<Compare>,
        success: Vec<ModelOp>,
        failure: Vec<ModelOp>,
    },
    Grant,
    Revoke(usize),
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..3, 0..3)
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        4 => (0..KEYS.len(), value(), prop::option::weighted(0.3, 0usize..4))
            .prop_map(|(key, value, lease)| ModelOp::Put { key, value, lease }),
        2 => (0..KEYS.len()).prop_map(ModelOp::Delete),
        1 => (0..PREFIXES.len()).prop_map(ModelOp::DeletePrefix),
        1 => (0..KEYS.len()).prop_map(ModelOp::Get),
        1 => (0..PREFIXES.len()).prop_map(ModelOp::Range),
    ]
}

fn compare() -> impl Strategy<Value = Compare> {
    let op = prop_oneof![
        Just(CompareOp::Equal),
        Just(CompareOp::NotEqual),
        Just(CompareOp::Less),
        Just(CompareOp::Greater),
    ];
    (0..KEYS.len(), op, 0..4u8, 0i64..8, value()).prop_map(|(key, op, target, n, value)| {
        let key = KEYS[key];
        match target {
            0 => Compare::mod_revision(key, op, n),
            1 => Compare::create_revision(key, op, n),
            2 => Compare::version(key, op, n % 3),
            _ => Compare::value(key, op, value),
        }
    })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(model_op(), 0..4),
            prop::collection::vec(model_op(), 0..3),
        )
            .prop_map(|(compares, success, failure)| Step::Txn { compares, success, failure }),
        1 => Just(Step::Grant),
        1 => (0usize..4).prop_map(Step::Revoke),
    ]
}

/// Outcome classes compared between model and store.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    DuplicateKey,
    LeaseNotFound,
}

fn classify(error: StoreError) -> Failure {
    match error {
        StoreError::DuplicateKeyInTxn { .. } => Failure::DuplicateKey,
        StoreError::LeaseNotFound { .. } => Failure::LeaseNotFound,
        other => panic!("unexpected store error: {other}"),
    }
}

#[derive(Clone, Debug, Default)]
struct Model {
    kvs: BTreeMap<String, KeyValue>,
    revision: i64,
    live_leases: BTreeSet<LeaseId>,
    events: Vec<WatchEvent>,
}

fn resolve_lease(granted: &[LeaseId], index: usize) -> LeaseId {
    if granted.is_empty() {
        UNKNOWN_LEASE
    } else {
        granted[index % granted.len()]
    }
}

fn to_txn_op(op: &ModelOp, granted: &[LeaseId]) -> TxnOp {
    match op {
        ModelOp::Put { key, value, lease } => TxnOp::Put {
            key: KEYS[*key].into(),
            value: value.clone(),
            lease: lease.map(|i| resolve_lease(granted, i)),
        },
        ModelOp::Delete(key) => TxnOp::delete(KEYS[*key]),
        ModelOp::DeletePrefix(prefix) => TxnOp::delete_prefix(PREFIXES[*prefix]),
        ModelOp::Get(key) => TxnOp::get(KEYS[*key]),
        ModelOp::Range(prefix) => TxnOp::range(PREFIXES[*prefix]),
    }
}

/// The model's own statement of etcd's "no key written twice per branch" rule.
fn writes_a_key_twice(ops: &[TxnOp]) -> bool {
    let puts: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            TxnOp::Put { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let distinct: BTreeSet<&str> = puts.iter().copied().collect();
    if distinct.len() != puts.len() {
        return true;
    }
    ops.iter().any(|op| match op {
        TxnOp::Delete { key } => distinct.contains(key.as_str()),
        TxnOp::DeletePrefix { prefix } => distinct.iter().any(|k| k.starts_with(prefix.as_str())),
        _ => false,
    })
}

/// etcd's compare rules, restated independently of `Compare::holds`.
fn model_compare(compare: &Compare, current: Option<&KeyValue>) -> bool {
    use std::cmp::Ordering;
    let ordering: Ordering = match (&compare.target, current) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(target), Some(kv)) => kv.value.as_slice().cmp(target.as_slice()),
        (CompareTarget::Version(target), kv) => kv.map_or(0, |kv| kv.version).cmp(target),
        (CompareTarget::ModRevision(target), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(target),
        (CompareTarget::CreateRevision(target), kv) => {
            kv.map_or(0, |kv| kv.create_revision).cmp(target)
        }
    };
    match compare.op {
        CompareOp::Equal => ordering == Ordering::Equal,
        CompareOp::NotEqual => ordering != Ordering::Equal,
        CompareOp::Less => ordering == Ordering::Less,
        CompareOp::Greater => ordering == Ordering::Greater,
    }
}

fn tombstone(kv: &KeyValue, revision: i64) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: kv.key.clone(),
            value: kv.value.clone(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: None,
        },
    }
}

impl Model {
    fn txn(&mut self, txn: &Txn) -> Result<TxnResponse, Failure> {
        if writes_a_key_twice(&txn.success) || writes_a_key_twice(&txn.failure) {
            return Err(Failure::DuplicateKey);
        }
        let succeeded = txn
            .compares
            .iter()
            .all(|c| model_compare(c, self.kvs.get(&c.key)));
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut next = self.clone();
        let revision = self.revision + 1;
        let mut events = Vec::new();
        let mut responses = Vec::new();
        for op in ops {
            let response = match op {
                TxnOp::Put { key, value, lease } => {
                    if let Some(lease) = lease {
                        if !self.live_leases.contains(lease) {
                            return Err(Failure::LeaseNotFound);
                        }
                    }
                    let prev = next.kvs.get(key).cloned();
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        lease: *lease,
                    };
                    next.kvs.insert(key.clone(), kv.clone());
                    events.push(WatchEvent {
                        kind: EventKind::Put,
                        kv,
                    });
                    OpResponse::Put { prev }
                }
                TxnOp::Delete { key } => {
                    let deleted: Vec<KeyValue> = next.kvs.remove(key).into_iter().collect();
                    events.extend(deleted.iter().map(|kv| tombstone(kv, revision)));
                    OpResponse::Delete { deleted }
                }
                TxnOp::DeletePrefix { prefix } => {
                    let keys: Vec<String> = next
                        .kvs
                        .keys()
                        .filter(|k| k.starts_with(prefix.as_str()))
                        .cloned()
                        .collect();
                    let deleted: Vec<KeyValue> =
                        keys.iter().filter_map(|k| next.kvs.remove(k)).collect();
                    events.extend(deleted.iter().map(|kv| tombstone(kv, revision)));
                    OpResponse::Delete { deleted }
                }
                TxnOp::Get { key } => OpResponse::Get {
                    kv: next.kvs.get(key).cloned(),
                },
                TxnOp::Range { prefix } => OpResponse::Range {
                    kvs: next
                        .kvs
                        .values()
                        .filter(|kv| kv.key.starts_with(prefix.as_str()))
                        .cloned()
                        .collect(),
                },
            };
            responses.push(response);
        }
        if !events.is_empty() {
            next.revision = revision;
            next.events.extend(events);
        }
        *self = next;
        Ok(TxnResponse {
            succeeded,
            responses,
            revision: self.revision,
        })
    }

    fn revoke(&mut self, lease: LeaseId) -> Result<i64, Failure> {
        if !self.live_leases.remove(&lease) {
            return Err(Failure::LeaseNotFound);
        }
        let attached: Vec<String> = self
            .kvs
            .values()
            .filter(|kv| kv.lease == Some(lease))
            .map(|kv| kv.key.clone())
            .collect();
        if !attached.is_empty() {
            self.revision += 1;
            for key in attached {
                if let Some(kv) = self.kvs.remove(&key) {
                    self.events.push(tombstone(&kv, self.revision));
                }
            }
        }
        Ok(self.revision)
    }
}

async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let store = SqliteStore::in_memory().unwrap();
    let mut all = store.watch("/", Some(0)).await.unwrap();
    let mut under_a = store.watch("/a/", Some(0)).await.unwrap();
    let mut model = Model::default();
    let mut granted: Vec<LeaseId> = Vec::new();
    for step in steps {
        match step {
            Step::Txn {
                compares,
                success,
                failure,
            } => {
                let txn = Txn {
                    compares,
                    success: success.iter().map(|op| to_txn_op(op, &granted)).collect(),
                    failure: failure.iter().map(|op| to_txn_op(op, &granted)).collect(),
                };
                let expected = model.txn(&txn);
                let actual = store.txn(txn.clone()).await.map_err(classify);
                prop_assert_eq!(actual, expected, "txn {:?}", txn);
            }
            Step::Grant => {
                let lease = store.lease_grant(Duration::from_secs(3600)).await.unwrap();
                prop_assert!(!granted.contains(&lease.id));
                granted.push(lease.id);
                model.live_leases.insert(lease.id);
            }
            Step::Revoke(index) => {
                let lease = resolve_lease(&granted, index);
                let expected = model.revoke(lease);
                let actual = store.lease_revoke(lease).await.map_err(classify);
                prop_assert_eq!(actual, expected);
            }
        }
    }
    let range = store.range("/").await.unwrap();
    prop_assert_eq!(range.revision, model.revision);
    prop_assert_eq!(range.kvs, model.kvs.values().cloned().collect::<Vec<_>>());

    let drain = |watch: &mut vireo_store::Watch| {
        let mut events = Vec::new();
        while let Some(event) = watch.try_recv() {
            events.push(event.unwrap());
        }
        events
    };
    prop_assert_eq!(drain(&mut all), model.events.clone());
    let expected_a: Vec<WatchEvent> = model
        .events
        .iter()
        .filter(|e| e.kv.key.starts_with("/a/"))
        .cloned()
        .collect();
    prop_assert_eq!(drain(&mut under_a), expected_a);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(steps in prop::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(steps))?;
    }
}
