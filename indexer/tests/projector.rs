//! The projector keeps the index in line with the store, fed by the domain
//! events the service commits and the relay publishes (embedded store,
//! in-process log, memory index).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use crm_indexer::projector::Projector;
use crm_indexer::worker::EventHandler;
use crm_indexer::{MemoryIndex, Query, SearchIndex};
use crm_models::events::{EventLog, MemoryEventStream};
use crm_models::relay::Relay;
use crm_models::service::{Crm, CustomerInput, EngagementTarget, NewEngagement};
use crm_models::store::embedded::EmbeddedStore;
use crm_models::store::Store;
use crm_models::{Direction, EngagementDetail, Identifier, PhoneNumber, Region, Source};

struct Setup {
    crm: Crm,
    log: Arc<MemoryEventStream>,
    relay: Relay,
    projector: Projector,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let log = Arc::new(MemoryEventStream::default());
    let crm = Crm::new(store.clone());
    let relay = Relay::new(store.clone(), log.clone(), crm.relay_wake());
    let index: Arc<dyn SearchIndex> = Arc::new(MemoryIndex::new());
    Setup {
        crm,
        log,
        relay,
        projector: Projector::new(store, index),
        _dir: dir,
    }
}

/// Relays what was committed and applies it, as the relay and the worker
/// would.
async fn drain(s: &Setup) {
    s.relay.drain().await.unwrap();
    s.log.ensure_group("indexer").await.unwrap();
    loop {
        let batch = s
            .log
            .read("indexer", "test", 100, Duration::ZERO)
            .await
            .unwrap();
        if batch.is_empty() {
            return;
        }
        let events: Vec<_> = batch.iter().map(|d| d.envelope.clone()).collect();
        s.projector.apply(&events).await.unwrap();
        let ids: Vec<String> = batch.into_iter().map(|d| d.id).collect();
        s.log.ack("indexer", &ids).await.unwrap();
    }
}

fn phone(raw: &str) -> Identifier {
    Identifier::Phone(PhoneNumber::parse(raw, Some(Region::parse("SG").unwrap())).unwrap())
}

fn sms(target: EngagementTarget, body: &str) -> NewEngagement {
    NewEngagement {
        target,
        occurred_at: crm_models::time::now(),
        source: Source::default(),
        detail: EngagementDetail::Sms {
            direction: Direction::Inbound,
            body: body.into(),
        },
    }
}

#[tokio::test]
async fn events_keep_the_index_in_step_and_verify_sees_drift() {
    let s = setup();
    let (ann, _) = s
        .crm
        .create_customer(CustomerInput {
            name: Some("Ann Tan".into()),
            identifiers: vec![phone("81226418")],
            status: None,
        })
        .await
        .unwrap();
    s.crm
        .record_engagement(sms(EngagementTarget::Customer(ann.id), "first"))
        .await
        .unwrap();
    let bob = s
        .crm
        .record_engagement(sms(
            EngagementTarget::Identify {
                name: Some("Bob Lim".into()),
                identifiers: vec![phone("91234567")],
            },
            "hello",
        ))
        .await
        .unwrap();
    drain(&s).await;

    let index = s.projector.index();
    let hits = index.search(&Query::Any("ann".into()), 10).await.unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![ann.id]);
    let p = PhoneNumber::parse("+6591234567", None).unwrap();
    let callers = index.lookup_phone(&p).await.unwrap();
    assert_eq!(callers.len(), 1);
    assert_eq!(callers[0].id, bob.customer_id);
    assert_eq!(callers[0].counts.sms, 1);
    assert_eq!(callers[0].last_engagements[0].preview, "hello");
    let report = s.projector.verify().await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.expected, 2);

    // Applying the same events again changes nothing.
    let all: Vec<_> = {
        s.log.ensure_group("replay").await.unwrap();
        s.log
            .read("replay", "r", 1000, Duration::ZERO)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.envelope)
            .collect()
    };
    s.projector.apply(&all).await.unwrap();
    assert!(s.projector.verify().await.unwrap().is_clean());

    // Erasure leaves nothing behind in the index.
    s.crm.delete_customer(bob.customer_id).await.unwrap();
    drain(&s).await;
    assert!(index.lookup_phone(&p).await.unwrap().is_empty());
    assert!(index.summary(bob.customer_id).await.unwrap().is_none());
    assert!(s.projector.verify().await.unwrap().is_clean());

    // A change the index missed shows as stale, and a rebuild mends it.
    s.crm
        .record_engagement(sms(EngagementTarget::Customer(ann.id), "missed"))
        .await
        .unwrap();
    let report = s.projector.verify().await.unwrap();
    assert_eq!(report.stale, vec![ann.id]);
    let rebuilt = s.projector.rebuild(|_| {}).await.unwrap();
    assert_eq!(rebuilt.customers, 1);
    assert!(s.projector.verify().await.unwrap().is_clean());
    assert_eq!(index.summary(ann.id).await.unwrap().unwrap().counts.sms, 2);
}

/// Merges, concurrent merges and an undo: after each, the index agrees with
/// the store, merged ids are gone from it and the survivor is found by every
/// identifier of every merged customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merges_and_undo_keep_the_index_in_step() {
    let s = setup();
    let index = s.projector.index().clone();
    let numbers = [
        "+65 8122 6418",
        "+65 9123 4567",
        "+65 9000 0001",
        "+65 9000 0002",
    ];
    let mut ids = Vec::new();
    for (i, n) in numbers.iter().enumerate() {
        let (c, _) = s
            .crm
            .create_customer(CustomerInput {
                name: Some(format!("Person {}", ["Ann", "Bob", "Cat", "Dan"][i])),
                identifiers: vec![phone(n)],
                status: None,
            })
            .await
            .unwrap();
        ids.push(c.id);
    }
    drain(&s).await;
    assert!(s.projector.verify().await.unwrap().is_clean());

    // Overlapping links raced: (0,1), (1,2), (2,3).
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let crm = s.crm.clone();
            let pair = EngagementTarget::Identify {
                name: None,
                identifiers: vec![phone(numbers[i]), phone(numbers[i + 1])],
            };
            tokio::spawn(async move { crm.record_engagement(sms(pair, "linked")).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    drain(&s).await;
    let report = s.projector.verify().await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    for n in numbers {
        let found = index
            .lookup_phone(&PhoneNumber::parse(n, None).unwrap())
            .await
            .unwrap();
        let found: Vec<_> = found.iter().map(|c| c.id).collect();
        assert_eq!(found, vec![ids[0]], "{n} finds the survivor only");
    }
    let hits = index
        .search(&Query::Name("Person".into()), 10)
        .await
        .unwrap();
    assert_eq!(
        hits.iter().map(|h| h.id).collect::<Vec<_>>(),
        vec![ids[0]],
        "merged ids are gone from search"
    );

    // Undo the merge that took Bob (whichever write made it).
    let history = s.crm.history(ids[1]).await.unwrap();
    let merge = history
        .iter()
        .find(|h| h.merged_ids.contains(&ids[1]))
        .unwrap()
        .merge_id;
    s.crm.undo_merge(merge, "admin").await.unwrap();
    drain(&s).await;
    let report = s.projector.verify().await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    let bob = index
        .lookup_phone(&PhoneNumber::parse(numbers[1], None).unwrap())
        .await
        .unwrap();
    assert_eq!(bob.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ids[1]]);
}

/// The documents a rebuild or load reads are exactly what the store holds
/// for each customer (its profile and latest engagements, read one customer
/// at a time here), over several pages, customers without engagements,
/// timelines longer than a summary and a merged customer; and the load
/// indexes every searchable one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_and_load_hold_what_the_store_holds() {
    use crm_indexer::SUMMARY_ENGAGEMENTS;
    use crm_models::{Customer, CustomerId, CustomerStatus, Engagement, EngagementId};
    use futures::StreamExt;

    let s = setup();
    let store = s.crm.store().clone();
    let t0 = crm_models::time::parse("2026-03-01T08:00:00Z").unwrap();
    // More than two pages of customers (4,096 a page).
    let total = 9_000usize;
    let mut customers = Vec::with_capacity(total);
    for i in 0..total {
        let mut c = Customer::new(
            CustomerId(uuid::Uuid::new_v4()),
            Some(format!("Customer {i} Tan")),
            t0,
        );
        if i == 7 {
            c.status = CustomerStatus::Merged;
        }
        customers.push((c, Vec::new()));
    }
    for chunk in customers.chunks(1_000) {
        let created = store.insert_customers_owning(chunk).await.unwrap();
        assert!(created.iter().all(|c| *c));
    }
    // Customer i has i % 17 engagements, some at the same time.
    let mut items = Vec::new();
    for (i, (c, _)) in customers.iter().enumerate() {
        for n in 0..i % 17 {
            let when = crm_models::time::parse(&format!("2026-03-01T08:00:0{}Z", n % 6)).unwrap();
            items.push(Engagement {
                id: EngagementId(uuid::Uuid::new_v4()),
                customer_id: c.id,
                occurred_at: when,
                recorded_at: when,
                source: Source::default(),
                detail: EngagementDetail::Sms {
                    direction: Direction::Inbound,
                    body: format!("message {n}"),
                },
            });
        }
    }
    for chunk in items.chunks(5_000) {
        store.insert_engagements(chunk).await.unwrap();
    }

    let mut docs = Vec::new();
    let mut stream = s.projector.documents();
    while let Some(doc) = stream.next().await {
        docs.push(doc.unwrap());
    }
    drop(stream);
    let mut expected_ids: Vec<CustomerId> = customers.iter().map(|(c, _)| c.id).collect();
    expected_ids.sort();
    let ids: Vec<CustomerId> = docs.iter().map(|d| d.id()).collect();
    assert_eq!(ids, expected_ids, "every customer once, in id order");
    let mut long = 0;
    for doc in &docs {
        let one = s.projector.document(doc.id()).await.unwrap().unwrap();
        assert_eq!(doc, &one);
        assert!(doc.last_engagements.len() <= SUMMARY_ENGAGEMENTS);
        if doc.customer.counts.sms as usize > SUMMARY_ENGAGEMENTS {
            long += 1;
            assert_eq!(doc.last_engagements.len(), SUMMARY_ENGAGEMENTS);
        }
    }
    assert!(long > 1_000, "timelines longer than a summary: {long}");

    let report = s.projector.load(std::future::ready(())).await.unwrap();
    assert_eq!(report.rebuild.customers, total as u64);
    assert_eq!((report.from_snapshot, report.from_store), (0, total as u64));
    assert!(s.projector.index_ready());
    let indexed = s.projector.index().all_fingerprints().await.unwrap();
    let expected: Vec<(CustomerId, String)> = docs
        .iter()
        .filter(|d| d.is_searchable())
        .map(|d| (d.id(), d.fingerprint()))
        .collect();
    assert_eq!(
        expected.len(),
        total - 1,
        "the merged customer is not indexed"
    );
    let indexed: Vec<(CustomerId, String)> =
        indexed.into_iter().map(|f| (f.id, f.fingerprint)).collect();
    assert_eq!(indexed, expected);
}

/// A store, the in-process index with its snapshot file in the data
/// directory, and what moves events between them.
struct SnapshotSetup {
    s: Setup,
    path: std::path::PathBuf,
}

fn setup_with_snapshot() -> SnapshotSetup {
    let mut s = setup();
    let path = s
        ._dir
        .path()
        .join(crm_indexer::memory::snapshot::SNAPSHOT_FILE);
    let memory = Arc::new(MemoryIndex::new());
    s.projector =
        Projector::new(s.crm.store().clone(), memory.clone()).with_snapshot(memory, path.clone());
    SnapshotSetup { s, path }
}

/// A fresh in-process index over the same store and snapshot: what a
/// restart starts from.
fn restarted(t: &SnapshotSetup) -> Projector {
    let memory = Arc::new(MemoryIndex::new());
    Projector::new(t.s.crm.store().clone(), memory.clone()).with_snapshot(memory, t.path.clone())
}

async fn customer(s: &Setup, name: &str, number: &str) -> crm_models::CustomerId {
    s.crm
        .create_customer(CustomerInput {
            name: Some(name.into()),
            identifiers: vec![phone(number)],
            status: None,
        })
        .await
        .unwrap()
        .0
        .id
}

/// A restart takes every customer whose record is as the snapshot saw it
/// from the snapshot, and reads the others: renamed, engaged, merged,
/// erased and new customers after the snapshot are all as the store holds
/// them, and verify finds nothing amiss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_takes_unchanged_customers_from_the_snapshot_and_reads_the_rest() {
    let t = setup_with_snapshot();
    let s = &t.s;
    let mut ids = Vec::new();
    for (i, name) in [
        "Ann Tan", "Bob Lim", "Cat Ng", "Dan Ong", "Eve Koh", "Fay Goh", "Gus Teo",
    ]
    .iter()
    .enumerate()
    {
        let id = customer(s, name, &format!("9000 000{i}")).await;
        s.crm
            .record_engagement(sms(EngagementTarget::Customer(id), "before"))
            .await
            .unwrap();
        ids.push(id);
    }
    drain(s).await;
    assert_eq!(s.projector.write_snapshot().await.unwrap(), Some(7));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&t.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the snapshot holds personal data");
    }

    // After the snapshot: a rename, an engagement, a merge, an erasure and
    // a new customer; three customers stay as they were.
    s.crm
        .patch_customer(
            ids[0],
            crm_models::service::CustomerPatch {
                name: Some(Some("Ann Wee".into())),
                ..Default::default()
            },
            crm_models::service::LinkMode::Auto,
        )
        .await
        .unwrap();
    s.crm
        .record_engagement(sms(EngagementTarget::Customer(ids[1]), "after"))
        .await
        .unwrap();
    s.crm
        .merge_customers(ids[2], &[ids[3]], "admin")
        .await
        .unwrap();
    s.crm.delete_customer(ids[4]).await.unwrap();
    let new = customer(s, "Hal Yeo", "9000 0009").await;

    let p = restarted(&t);
    let report = p.load(std::future::ready(())).await.unwrap();
    assert_eq!(
        (report.from_snapshot, report.from_store),
        (2, 4),
        "Fay and Gus from the snapshot; Ann, Bob, Cat (the survivor) and Hal read"
    );
    assert_eq!(
        report.rebuild.customers, 7,
        "Dan's merged record is read too"
    );
    let verified = p.verify().await.unwrap();
    assert!(verified.is_clean(), "{verified:?}");
    assert_eq!(verified.expected, 6);
    let index = p.index();
    let found = |q: &'static str| {
        let index = index.clone();
        async move {
            index
                .search(&Query::Any(q.into()), 10)
                .await
                .unwrap()
                .into_iter()
                .map(|h| h.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found("ann wee").await, vec![ids[0]]);
    assert!(found("tan").await.is_empty(), "the old name is gone");
    assert_eq!(found("hal").await, vec![new]);
    assert!(found("eve").await.is_empty(), "the erased customer is gone");
    assert_eq!(found("fay goh").await, vec![ids[5]]);
    let bob = index.summary(ids[1]).await.unwrap().unwrap();
    assert_eq!(bob.counts.sms, 2);
    assert_eq!(bob.last_engagements[0].preview, "after");
    let cat = index
        .lookup_phone(&PhoneNumber::parse("+6590000003", None).unwrap())
        .await
        .unwrap();
    assert_eq!(cat.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ids[2]]);
}

/// A snapshot that is cut short, damaged, or made by another index layout
/// is not used: the load reads everything from the store, and then the
/// snapshot can be written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_snapshot_is_ignored() {
    let t = setup_with_snapshot();
    let s = &t.s;
    for i in 0..3 {
        customer(s, &format!("Person {i}"), &format!("9100 000{i}")).await;
    }
    drain(s).await;
    assert_eq!(s.projector.write_snapshot().await.unwrap(), Some(3));
    // A header line, three records (each its length, then the record), a
    // trailer (a length of u32::MAX, then the count).
    let whole = std::fs::read(&t.path).unwrap();
    let header_end = whole.iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut at = header_end;
    while u32::from_le_bytes(whole[at..at + 4].try_into().unwrap()) != u32::MAX {
        let n = u32::from_le_bytes(whole[at..at + 4].try_into().unwrap()) as usize;
        records.push(whole[at..at + 4 + n].to_vec());
        at += 4 + n;
    }
    assert_eq!(records.len(), 3, "three customers");
    assert_eq!(whole[at..], [&[0xff; 4][..], &3u64.to_le_bytes()].concat());

    let loads_from_snapshot = |contents: Vec<u8>| {
        std::fs::write(&t.path, contents).unwrap();
        let p = restarted(&t);
        async move {
            let report = p.load(std::future::ready(())).await.unwrap();
            assert!(p.verify().await.unwrap().is_clean());
            assert_eq!(report.rebuild.customers, 3);
            report.from_snapshot
        }
    };
    assert_eq!(
        loads_from_snapshot(whole.clone()).await,
        3,
        "the good one is used"
    );
    let cut = whole[..at].to_vec();
    assert_eq!(loads_from_snapshot(cut).await, 0, "no trailer");
    let mut damaged = whole[..header_end].to_vec();
    damaged.extend_from_slice(&records[0]);
    damaged.extend_from_slice(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
    damaged.extend_from_slice(&records[2]);
    damaged.extend_from_slice(&whole[at..]);
    assert_eq!(loads_from_snapshot(damaged).await, 0, "an unreadable entry");
    let mut miscounted = whole.clone();
    let end = miscounted.len();
    miscounted[end - 8..].copy_from_slice(&4u64.to_le_bytes());
    assert_eq!(loads_from_snapshot(miscounted).await, 0, "a wrong count");
    let header = String::from_utf8(whole[..header_end].to_vec()).unwrap();
    assert!(header.contains("index-v"), "{header}");
    let mut other = header.replacen("index-v", "index-old-v", 1).into_bytes();
    other.extend_from_slice(&whole[header_end..]);
    assert_eq!(loads_from_snapshot(other).await, 0, "another layout");
    assert_eq!(loads_from_snapshot(b"garbage".to_vec()).await, 0);

    // Nothing is written while the index is not loaded.
    let p = restarted(&t);
    p.warmup().begin();
    assert_eq!(p.write_snapshot().await.unwrap(), None);
}
