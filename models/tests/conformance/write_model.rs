//! The write model on every adapter: events commit with their writes and are
//! relayed once; merges and undos are one transaction each, never form a
//! cycle, and leave nothing behind when they fail at any step; erasure
//! removes the person; `updated_at` moves with what a client syncs.

use super::*;

use crm_models::event::{DomainEvent, EventEnvelope};
use crm_models::events::{EventError, EventLog, EventStream, MemoryEventStream};
use crm_models::relay::Relay;

fn new_sms(identifiers: Vec<Identifier>, body: &str) -> NewEngagement {
    NewEngagement {
        target: EngagementTarget::Identify {
            name: None,
            identifiers,
        },
        occurred_at: time::now(),
        source: Source::default(),
        detail: EngagementDetail::Sms {
            direction: Direction::Inbound,
            body: body.to_string(),
        },
    }
}

async fn customer_with(crm: &Crm, name: &str, identifiers: Vec<Identifier>) -> Customer {
    crm.create_customer(CustomerInput {
        name: Some(name.into()),
        identifiers,
        status: None,
    })
    .await
    .unwrap()
    .0
}

async fn all_events(store: &dyn Store) -> Vec<EventEnvelope> {
    store.events_after(None, 100_000).await.unwrap()
}

fn relay(store: &Arc<dyn Store>, stream: Arc<dyn EventStream>) -> Relay {
    Relay::new(store.clone(), stream, Arc::new(tokio::sync::Notify::new()))
}

/// Everything a test can see of the customers it names: profiles, owned
/// identities, timelines, merge records, and the event log.
async fn snapshot(store: &dyn Store, ids: &[CustomerId]) -> String {
    let mut out = String::new();
    for id in ids {
        let c = store.get_customer(*id).await.unwrap();
        out.push_str(&format!("{c:?}\n"));
        out.push_str(&format!("{:?}\n", store.identities_of(*id).await.unwrap()));
        let timeline = store
            .list_engagements(*id, &EngagementFilter::default(), None, 1000)
            .await
            .unwrap();
        out.push_str(&format!("{:?}\n", engagement_ids(&timeline)));
        out.push_str(&format!("{:?}\n", store.merges_of(*id).await.unwrap()));
    }
    out.push_str(&format!("{:?}\n", all_events(store).await.len()));
    out
}

/// Follows `merged_into` from `id`; panics on a cycle.
async fn survivor(store: &dyn Store, id: CustomerId) -> Customer {
    let mut at = id;
    for _ in 0..16 {
        let c = store.get_customer(at).await.unwrap().unwrap();
        match c.merged_into {
            Some(next) if c.status == CustomerStatus::Merged => at = next,
            _ => return c,
        }
    }
    panic!("a merged_into cycle from {id}");
}

pub async fn events_commit_with_their_writes_and_relay_once(store: Arc<dyn Store>) {
    let crm = crm(store.clone());
    let ph = Identifier::Phone(phone("+6581226418"));
    let c = customer_with(
        &crm,
        "Zed Quux",
        vec![ph.clone(), Identifier::Email(email("zed@quux.example"))],
    )
    .await;
    crm.record_engagement(new_sms(vec![ph], "secret body text"))
        .await
        .unwrap();
    let pending = store.unrelayed_events(100).await.unwrap();
    let types: Vec<&str> = pending.iter().map(|e| e.name()).collect();
    assert_eq!(types, vec!["customer.created", "engagement.recorded"]);
    assert!(pending.iter().all(|e| e.customer_id == Some(c.id)));
    assert!(pending.windows(2).all(|w| w[0].id < w[1].id), "ids sort");
    let json = serde_json::to_string(&pending).unwrap();
    for personal in ["Zed", "Quux", "6581226418", "zed@", "secret body"] {
        assert!(
            !json.contains(personal),
            "events hold no {personal:?}: {json}"
        );
    }

    let stream = Arc::new(MemoryEventStream::default());
    let relay = relay(&store, stream.clone());
    assert_eq!(relay.drain().await.unwrap(), 2);
    assert_eq!(relay.drain().await.unwrap(), 0, "nothing is relayed twice");
    assert_eq!(store.unrelayed_count().await.unwrap(), 0);
    assert_eq!(stream.entry_count().await.unwrap(), 2);
    // Relayed events stay in the log until they are older than the retention.
    assert_eq!(all_events(&*store).await.len(), 2);
    assert_eq!(store.prune_events(at(0)).await.unwrap(), 0);
    let later = time::now() + Duration::days(1);
    assert_eq!(store.prune_events(later).await.unwrap(), 2);
    assert!(all_events(&*store).await.is_empty());
}

/// An event stream that is down until switched on.
#[derive(Default)]
struct FlakyStream {
    up: std::sync::atomic::AtomicBool,
    taken: std::sync::Mutex<Vec<EventEnvelope>>,
}

#[async_trait::async_trait]
impl EventStream for FlakyStream {
    async fn publish(&self, events: Vec<EventEnvelope>) -> Result<(), EventError> {
        if !self.up.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(EventError::Unavailable("down".into()));
        }
        self.taken.lock().unwrap().extend(events);
        Ok(())
    }
}

pub async fn relay_keeps_events_while_the_stream_is_down(store: Arc<dyn Store>) {
    let crm = crm(store.clone());
    let stream = Arc::new(FlakyStream::default());
    let relay = relay(&store, stream.clone());
    let c = customer_with(
        &crm,
        "Ann",
        vec![Identifier::Email(email("ann@example.com"))],
    )
    .await;
    assert!(relay.drain().await.is_err(), "the stream is down");
    assert_eq!(store.unrelayed_count().await.unwrap(), 1, "nothing lost");
    stream.up.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(relay.drain().await.unwrap(), 1);
    let taken = stream.taken.lock().unwrap().clone();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].customer_id, Some(c.id));
    assert_eq!(store.unrelayed_count().await.unwrap(), 0);
}

pub async fn crossing_merges_leave_one_survivor_and_no_cycle(store: Arc<dyn Store>) {
    let crm = crm(store.clone());
    for round in 0..200 {
        let a = customer_with(
            &crm,
            "A",
            vec![Identifier::Email(email(&format!("a{round}@x.example")))],
        )
        .await;
        let b = customer_with(
            &crm,
            "B",
            vec![Identifier::Email(email(&format!("b{round}@x.example")))],
        )
        .await;
        let (only_a, only_b) = ([a.id], [b.id]);
        let (ab, ba) = tokio::join!(
            crm.merge_customers(b.id, &only_a, "u1"),
            crm.merge_customers(a.id, &only_b, "u2"),
        );
        let done = [&ab, &ba].iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            done, 1,
            "round {round}: one merge, one refusal: {ab:?} {ba:?}"
        );
        for refused in [&ab, &ba].into_iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(
                    refused,
                    CrmError::Refused(_) | CrmError::Contention | CrmError::CustomerMerged { .. }
                ),
                "{refused:?}"
            );
        }
        let (sa, sb) = (survivor(&*store, a.id).await, survivor(&*store, b.id).await);
        assert_eq!(sa.id, sb.id, "round {round}");
        assert_eq!(sa.status, CustomerStatus::Active);
        let owned = store.identities_of(sa.id).await.unwrap();
        assert_eq!(owned.len(), 2, "round {round}: {owned:?}");
    }
}

pub async fn merges_racing_auto_links_lose_nothing(store: Arc<dyn Store>) {
    let crm = crm(store.clone());
    for round in 0..50 {
        let pa = Identifier::Phone(phone(&format!("+65812{:05}", round)));
        let eb = Identifier::Email(email(&format!("b{round}@race.example")));
        let a = customer_with(&crm, "A", vec![pa.clone()]).await;
        let b = customer_with(&crm, "B", vec![eb.clone()]).await;
        let only_a = [a.id];
        let (hand, both, one) = tokio::join!(
            crm.merge_customers(b.id, &only_a, "u1"),
            crm.record_engagement(new_sms(vec![pa.clone(), eb.clone()], "x")),
            crm.record_engagement(new_sms(vec![pa.clone()], "y")),
        );
        both.unwrap();
        one.unwrap();
        if let Err(e) = &hand {
            assert!(
                matches!(
                    e,
                    CrmError::Refused(_) | CrmError::Contention | CrmError::CustomerMerged { .. }
                ),
                "{e:?}"
            );
        }
        let (sa, sb) = (survivor(&*store, a.id).await, survivor(&*store, b.id).await);
        assert_eq!(sa.id, sb.id, "round {round}: one person");
        assert_eq!(sa.counts.sms, 2, "round {round}: both engagements counted");
        let timeline = store
            .list_engagements(sa.id, &EngagementFilter::default(), None, 10)
            .await
            .unwrap();
        assert_eq!(
            timeline.len(),
            2,
            "round {round}: every engagement reachable"
        );
        for key in [pa.key(), eb.key()] {
            assert_eq!(store.identity_owner(&key).await.unwrap(), Some(sa.id));
        }
    }
}

async fn merge_setup(crm: &Crm) -> (Customer, Customer) {
    let pa = Identifier::Phone(phone("+6581226418"));
    let eb = Identifier::Email(email("bob@example.com"));
    let a = customer_with(crm, "Ann", vec![pa.clone()]).await;
    let b = customer_with(crm, "Bob", vec![eb.clone()]).await;
    crm.record_engagement(new_sms(vec![pa], "1")).await.unwrap();
    crm.record_engagement(new_sms(vec![eb], "2")).await.unwrap();
    (a, b)
}

pub async fn a_merge_failing_at_any_step_changes_nothing(store: Arc<dyn Store>) {
    let crm = crm(store.clone());
    let (a, b) = merge_setup(&crm).await;
    let before = snapshot(&*store, &[a.id, b.id]).await;
    let mut failed = 0;
    for step in 0.. {
        crm.fault_injection().fail_next_transaction_at(step);
        match crm.merge_customers(a.id, &[b.id], "u1").await {
            Err(e) => {
                failed += 1;
                assert!(matches!(e, CrmError::Store(_)), "{e:?}");
                assert_eq!(
                    snapshot(&*store, &[a.id, b.id]).await,
                    before,
                    "a merge failing at step {step} left changes"
                );
            }
            Ok((record, survivor)) => {
                assert_eq!(survivor.id, a.id);
                assert_eq!(record.merged_ids, vec![b.id]);
                break;
            }
        }
        assert!(step < 200, "the merge never got through");
    }
    assert!(failed >= 5, "a merge has several steps: {failed}");
    assert_eq!(
        store.get_customer(a.id).await.unwrap().unwrap().counts.sms,
        2
    );
}

pub async fn an_undo_failing_at_any_step_leaves_the_merge_undoable(store: Arc<dyn Store>) {
    let crm = crm(store.clone());
    let (a, b) = merge_setup(&crm).await;
    let (record, _) = crm.merge_customers(a.id, &[b.id], "u1").await.unwrap();
    let before = snapshot(&*store, &[a.id, b.id]).await;
    let mut failed = 0;
    for step in 0.. {
        crm.fault_injection().fail_next_transaction_at(step);
        match crm.undo_merge(record.id, "u1").await {
            Err(e) => {
                failed += 1;
                assert!(matches!(e, CrmError::Store(_)), "{e:?}");
                assert_eq!(
                    snapshot(&*store, &[a.id, b.id]).await,
                    before,
                    "step {step}"
                );
            }
            Ok(customers) => {
                assert_eq!(ids_of(&customers), vec![a.id, b.id]);
                break;
            }
        }
        assert!(step < 200, "the undo never got through");
    }
    assert!(failed >= 5, "an undo has several steps: {failed}");
    let b_now = store.get_customer(b.id).await.unwrap().unwrap();
    assert_eq!(b_now.status, CustomerStatus::Active);
    assert_eq!(b_now.counts.sms, 1);
    assert!(matches!(
        crm.undo_merge(record.id, "u1").await,
        Err(CrmError::Refused(_))
    ));
}

pub async fn erasure_removes_the_person_and_everything_merged_into_it(store: Arc<dyn Store>) {
    let crm = crm(store.clone());
    let (a, b) = merge_setup(&crm).await;
    crm.merge_customers(a.id, &[b.id], "u1").await.unwrap();
    let user = UserId::new();
    store
        .insert_call_signals(vec![CallSignal {
            id: Uuid::now_v7(),
            customer_id: Some(a.id),
            device_id: DeviceId::new(),
            user_id: user,
            number: phone("+6581226418"),
            at: time::now(),
        }])
        .await
        .unwrap();
    let other = customer_with(
        &crm,
        "Cat",
        vec![Identifier::Email(email("cat@example.com"))],
    )
    .await;
    crm.keep_suggestion(&crm_models::linking::Suggestion::new(
        a.id,
        other.id,
        crm_models::linking::SuggestionReason::SimilarProfile,
        "same name",
        0.5,
    ))
    .await
    .unwrap();

    assert!(
        matches!(
            crm.delete_customer(b.id).await,
            Err(CrmError::CustomerMerged { id, merged_into }) if id == b.id && merged_into == a.id
        ),
        "a merged id is erased through its survivor"
    );
    crm.delete_customer(a.id).await.unwrap();
    for id in [a.id, b.id] {
        assert_eq!(store.get_customer(id).await.unwrap(), None);
        assert!(store.identities_of(id).await.unwrap().is_empty());
        assert!(store.merges_of(id).await.unwrap().is_empty());
        let timeline = store
            .list_engagements(id, &EngagementFilter::default(), None, 10)
            .await
            .unwrap();
        assert!(timeline.is_empty());
    }
    for key in ["phone:+6581226418", "email:bob@example.com"] {
        assert_eq!(store.identity_owner(key).await.unwrap(), None);
    }
    assert!(store
        .list_call_signals(None, at(0), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.list_suggestions(None, 10).await.unwrap().is_empty());
    let listed = store.list_customers(None, None, 10).await.unwrap();
    assert_eq!(ids_of(&listed), vec![other.id]);
    let events = all_events(&*store).await;
    let erased = events.last().unwrap();
    assert_eq!(erased.customer_id, Some(a.id));
    assert_eq!(
        erased.event,
        DomainEvent::CustomerErased {
            merged_ids: vec![b.id]
        }
    );
    let json = serde_json::to_string(&events).unwrap();
    for personal in ["Ann", "Bob", "6581226418", "bob@"] {
        assert!(!json.contains(personal), "{personal:?} in the log");
    }
}

/// A client syncing with `updated_since` sees every change it would show.
pub async fn updated_since_sees_engagements_merges_and_undos(store: Arc<dyn Store>) {
    let crm = crm(store.clone());
    let (a, b) = merge_setup(&crm).await;
    async fn changed_since(store: &dyn Store, since: Timestamp) -> BTreeSet<CustomerId> {
        store
            .list_customers(Some(since), None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect()
    }
    let since = time::now();
    crm.record_engagement(new_sms(vec![Identifier::Phone(phone("+6581226418"))], "3"))
        .await
        .unwrap();
    assert_eq!(changed_since(&*store, since).await, BTreeSet::from([a.id]));

    let since = time::now();
    let (record, _) = crm.merge_customers(a.id, &[b.id], "u1").await.unwrap();
    assert_eq!(
        changed_since(&*store, since).await,
        BTreeSet::from([a.id, b.id])
    );

    let since = time::now();
    crm.undo_merge(record.id, "u1").await.unwrap();
    assert_eq!(
        changed_since(&*store, since).await,
        BTreeSet::from([a.id, b.id])
    );
}

pub async fn engagements_for_a_merged_customer_land_on_its_survivor(store: Arc<dyn Store>) {
    let crm = crm(store.clone());
    let (a, b) = merge_setup(&crm).await;
    crm.merge_customers(a.id, &[b.id], "u1").await.unwrap();
    let late = sms(b.id, time::now());
    let results = store
        .insert_engagements(std::slice::from_ref(&late))
        .await
        .unwrap();
    // Reported on the survivor, where it is stored.
    assert_eq!(
        results,
        vec![EngagementInsert::Created { customer_id: a.id }]
    );
    let stored = store.get_engagement(late.id).await.unwrap().unwrap();
    assert_eq!(stored.customer_id, a.id);
    assert_eq!(
        store.get_customer(a.id).await.unwrap().unwrap().counts.sms,
        3
    );
    assert_eq!(
        store.get_customer(b.id).await.unwrap().unwrap().counts.sms,
        0
    );
    let events = all_events(&*store).await;
    let last = events.last().unwrap();
    assert_eq!(last.name(), "engagement.recorded");
    assert_eq!(last.customer_id, Some(a.id));
}

/// A store as older versions could leave it, mended by `repair`: a
/// `merged_into` cycle, and a merge marked on the customer but never
/// finished (identities and engagements not moved, no record).
pub async fn repair_mends_what_older_versions_left(store: Arc<dyn Store>) {
    let crm = crm(store.clone());
    // A cycle: C -> D -> C.
    let c = customer_with(&crm, "C", vec![Identifier::Email(email("c@x.example"))]).await;
    let d = customer_with(&crm, "D", vec![Identifier::Email(email("d@x.example"))]).await;
    for (from, to) in [(c.id, d.id), (d.id, c.id)] {
        let mut x = store.get_customer(from).await.unwrap().unwrap();
        x.status = CustomerStatus::Merged;
        x.merged_into = Some(to);
        store.update_profile(&x).await.unwrap();
    }
    // A half-applied merge: B marked merged into A, nothing moved, no record.
    let (a, b) = merge_setup(&crm).await;
    let mut half = store.get_customer(b.id).await.unwrap().unwrap();
    half.status = CustomerStatus::Merged;
    half.merged_into = Some(a.id);
    store.update_profile(&half).await.unwrap();

    let report = crm.repair().await.unwrap();
    assert_eq!(
        report.cycles_broken,
        vec![c.id],
        "the oldest of the cycle survives"
    );
    assert!(report.leftovers_moved.contains(&b.id), "{report:?}");
    assert_eq!(report.records_added.len(), 2, "{report:?}");
    assert_eq!(survivor(&*store, d.id).await.id, c.id);
    assert_eq!(
        store.identity_owner("email:d@x.example").await.unwrap(),
        Some(c.id)
    );
    assert_eq!(
        store.identity_owner("email:bob@example.com").await.unwrap(),
        Some(a.id)
    );
    let a_now = store.get_customer(a.id).await.unwrap().unwrap();
    assert_eq!(a_now.counts.sms, 2);
    assert!(a_now.emails.contains(&email("bob@example.com")));
    let record = store
        .merges_of(b.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.merged_ids == vec![b.id])
        .unwrap();
    assert!(record.repaired);

    assert!(
        crm.repair().await.unwrap().is_clean(),
        "a second run finds nothing"
    );
    // The repaired merge can be undone.
    crm.undo_merge(record.id, "u1").await.unwrap();
    let b_now = store.get_customer(b.id).await.unwrap().unwrap();
    assert_eq!(b_now.status, CustomerStatus::Active);
    assert_eq!(b_now.counts.sms, 1);
    assert_eq!(
        store.identity_owner("email:bob@example.com").await.unwrap(),
        Some(b.id)
    );
}
