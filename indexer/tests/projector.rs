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
