//! Devices and incoming-call signals.

use super::*;
use crm_models::event::{DomainEvent, EventEnvelope};

// --- devices ---

fn device(name: &str, user: UserId, hash: &str, created: Timestamp) -> Device {
    Device {
        id: DeviceId(Uuid::new_v4()),
        user_id: user,
        name: name.into(),
        default_region: Some("SG".into()),
        token_hash: hash.into(),
        token_prefix: "crm_dev_abcd".into(),
        created_at: created,
        revoked_at: None,
        last_upload_at: None,
    }
}

pub async fn devices_insert_get_list_revoke(store: Arc<dyn Store>) {
    let (ann, bob) = (UserId::new(), UserId::new());
    assert!(store.list_devices(None).await.unwrap().is_empty());
    let late = device("Ann's Pixel", ann, "dev-late", at(20));
    let early = device("Ann's old phone", ann, "dev-early", at(10));
    let other = device("Bob's phone", bob, "dev-bob", at(15));
    for d in [&late, &early, &other] {
        store.insert_device(d).await.unwrap();
    }
    assert!(matches!(
        store.insert_device(&late).await,
        Err(StoreError::Conflict(_))
    ));
    let same_hash = device("copy", bob, "dev-late", at(30));
    assert!(matches!(
        store.insert_device(&same_hash).await,
        Err(StoreError::Conflict(_))
    ));

    assert_eq!(store.get_device(late.id).await.unwrap(), Some(late.clone()));
    assert_eq!(store.get_device(DeviceId::new()).await.unwrap(), None);
    assert_eq!(
        store.get_device_by_token_hash("dev-late").await.unwrap(),
        Some(late.clone())
    );
    assert_eq!(
        store.get_device_by_token_hash("dev-none").await.unwrap(),
        None
    );
    assert_eq!(
        store.list_devices(Some(ann)).await.unwrap(),
        vec![early.clone(), late.clone()]
    );
    assert_eq!(
        store.list_devices(None).await.unwrap(),
        vec![early.clone(), other.clone(), late.clone()]
    );
    assert!(store
        .list_devices(Some(UserId::new()))
        .await
        .unwrap()
        .is_empty());

    store.set_device_last_upload(late.id, at(25)).await.unwrap();
    assert_eq!(
        store.set_device_last_upload(DeviceId::new(), at(25)).await,
        Err(StoreError::NotFound)
    );
    assert!(store.revoke_device(late.id, at(30)).await.unwrap());
    assert!(!store.revoke_device(late.id, at(40)).await.unwrap());
    assert!(!store.revoke_device(DeviceId::new(), at(40)).await.unwrap());
    let revoked = store
        .get_device_by_token_hash("dev-late")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        revoked,
        Device {
            revoked_at: Some(at(30)),
            last_upload_at: Some(at(25)),
            ..late
        },
        "revoked devices are kept, with their last upload"
    );
    assert_eq!(store.list_devices(Some(ann)).await.unwrap().len(), 2);
}

fn signal(user: UserId, when: Timestamp) -> CallSignal {
    CallSignal {
        id: Uuid::now_v7(),
        customer_id: Some(CustomerId::new()),
        device_id: DeviceId::new(),
        user_id: user,
        number: PhoneNumber::parse("+6581226418", None).unwrap(),
        at: when,
    }
}

pub async fn call_signals_by_time_and_user(store: Arc<dyn Store>) {
    let (ann, bob) = (UserId::new(), UserId::new());
    assert!(store
        .list_call_signals(None, at(0), 10)
        .await
        .unwrap()
        .is_empty());
    let a1 = signal(ann, at(10));
    // An unknown number: a signal about no customer.
    let b1 = CallSignal {
        customer_id: None,
        ..signal(bob, at(20))
    };
    let a2 = signal(ann, at(30));
    let a3 = signal(ann, at(40));
    store
        .insert_call_signals(vec![a3.clone(), a1.clone()])
        .await
        .unwrap();
    store.insert_call_signals(Vec::new()).await.unwrap();
    // A repeated signal is kept once.
    store
        .insert_call_signals(vec![b1.clone(), a2.clone(), a1.clone()])
        .await
        .unwrap();
    assert_eq!(
        store.list_call_signals(None, at(0), 10).await.unwrap(),
        vec![a1.clone(), b1.clone(), a2.clone(), a3.clone()]
    );
    // One `call.incoming` per signal, ids only: the unknown caller's is
    // about no customer, and no event holds the number.
    let events = store.events_after(None, 100).await.unwrap();
    let calls: Vec<&EventEnvelope> = events
        .iter()
        .filter(|e| e.name() == "call.incoming")
        .collect();
    // (The embedded store may log a retried signal's event again.)
    let signals: std::collections::HashSet<Uuid> = calls
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::CallIncoming { signal_id, .. } => Some(*signal_id),
            _ => None,
        })
        .collect();
    assert_eq!(signals.len(), 4, "{calls:?}");
    let unknown = calls
        .iter()
        .find(|e| matches!(&e.event, DomainEvent::CallIncoming { signal_id, .. } if *signal_id == b1.id))
        .expect("the unknown caller's event");
    assert_eq!(unknown.customer_id, None);
    assert_eq!(
        calls
            .iter()
            .find(|e| matches!(&e.event, DomainEvent::CallIncoming { signal_id, .. } if *signal_id == a1.id))
            .map(|e| e.customer_id),
        Some(a1.customer_id)
    );
    for e in &calls {
        let json = serde_json::to_string(e).unwrap();
        assert!(!json.contains("6581226418"), "{json}");
    }
    assert_eq!(
        store
            .list_call_signals(Some(ann), at(10), 10)
            .await
            .unwrap(),
        vec![a1.clone(), a2.clone(), a3.clone()],
        "since is inclusive"
    );
    let a2_kept = a2.clone();
    assert_eq!(
        store.list_call_signals(Some(ann), at(11), 1).await.unwrap(),
        vec![a2]
    );
    assert_eq!(
        store
            .list_call_signals(Some(bob), at(21), 10)
            .await
            .unwrap(),
        vec![]
    );
    assert!(store
        .list_call_signals(None, at(0), 0)
        .await
        .unwrap()
        .is_empty());

    // Retention: what came before the cut goes, the rest stays.
    assert_eq!(store.delete_call_signals_before(at(30)).await.unwrap(), 2);
    assert_eq!(
        store.list_call_signals(None, at(0), 10).await.unwrap(),
        vec![a2_kept, a3.clone()]
    );
    assert_eq!(store.delete_call_signals_before(at(30)).await.unwrap(), 0);
    assert_eq!(store.delete_call_signals_before(at(41)).await.unwrap(), 2);
    assert!(store
        .list_call_signals(None, at(0), 10)
        .await
        .unwrap()
        .is_empty());
}

/// Signals milliseconds apart, as the caller-ID writer batches them: listing
/// and pruning are exact to the microsecond whatever records hold them.
pub async fn call_signals_a_moment_apart_list_and_prune_exactly(store: Arc<dyn Store>) {
    let (ann, bob) = (UserId::new(), UserId::new());
    let ms = |n: i64| at(100) + Duration::milliseconds(n);
    let all: Vec<CallSignal> = (0..10)
        .map(|n| signal(if n % 2 == 0 { ann } else { bob }, ms(n)))
        .collect();
    // One batch out of order, then a retried part of it with one more.
    let mut first: Vec<CallSignal> = all[..8].to_vec();
    first.reverse();
    first.swap(2, 5);
    store.insert_call_signals(first).await.unwrap();
    store
        .insert_call_signals(vec![all[9].clone(), all[6].clone(), all[7].clone()])
        .await
        .unwrap();
    // A signal from long before, written late (its phone was offline).
    let late = signal(ann, at(99));
    store
        .insert_call_signals(vec![late.clone(), all[8].clone()])
        .await
        .unwrap();

    let mut expected = vec![late.clone()];
    expected.extend(all.iter().cloned());
    assert_eq!(
        store.list_call_signals(None, at(0), 20).await.unwrap(),
        expected
    );
    assert_eq!(
        store.list_call_signals(None, ms(3), 3).await.unwrap(),
        all[3..6].to_vec(),
        "since is inclusive; at most limit, the oldest"
    );
    let anns: Vec<CallSignal> = all.iter().filter(|s| s.user_id == ann).cloned().collect();
    assert_eq!(
        store.list_call_signals(Some(ann), ms(1), 10).await.unwrap(),
        anns[1..].to_vec()
    );

    assert_eq!(
        store.delete_call_signals_before(ms(5)).await.unwrap(),
        6,
        "the late one and five"
    );
    assert_eq!(
        store.list_call_signals(None, at(0), 20).await.unwrap(),
        all[5..].to_vec()
    );
    assert_eq!(store.delete_call_signals_before(ms(5)).await.unwrap(), 0);
    assert_eq!(
        store.list_call_signals(Some(bob), at(0), 1).await.unwrap(),
        vec![all[5].clone()]
    );
    assert_eq!(store.delete_call_signals_before(ms(10)).await.unwrap(), 5);
    assert!(store
        .list_call_signals(None, at(0), 20)
        .await
        .unwrap()
        .is_empty());
}
