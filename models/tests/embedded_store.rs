//! What only the embedded store has: a file that outlives the process, and a
//! lock that keeps a second process away from it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Duration;

use crm_models::customer::{Customer, Identifier};
use crm_models::email::Email;
use crm_models::engagement::{Direction, Engagement, EngagementDetail, Source};
use crm_models::ids::{ApiKeyId, CustomerId, EngagementId, UserId};
use crm_models::phone::PhoneNumber;
use crm_models::staff::{ApiKey, RefreshToken, Role, User};
use crm_models::store::embedded::EmbeddedStore;
use crm_models::store::prelude::*;
use crm_models::store::{EngagementFilter, StoreError};
use crm_models::time;

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = time::parse("2026-03-01T10:00:00Z").unwrap();
    let mut customer = Customer::new(CustomerId::new(), Some("Ann Tan".into()), t);
    customer
        .phones
        .push(PhoneNumber::parse("+6581226418", None).unwrap());
    let engagements: Vec<Engagement> = (0..3)
        .map(|i| Engagement {
            id: EngagementId::new(),
            customer_id: customer.id,
            occurred_at: t + Duration::minutes(i),
            recorded_at: t,
            source: Source::default(),
            detail: EngagementDetail::Sms {
                direction: Direction::Inbound,
                body: format!("m{i}"),
            },
        })
        .collect();
    let user = User {
        id: UserId::new(),
        email: Email::parse("admin@corp.example").unwrap(),
        name: "Admin".into(),
        role: Role::Admin,
        password_hash: "$argon2id$...".into(),
        active: true,
        team: None,
        created_at: t,
        updated_at: t,
    };
    let token = RefreshToken {
        token_hash: "h1".into(),
        user_id: user.id,
        family_id: "f1".into(),
        used: false,
        revoked: false,
        created_at: t,
        expires_at: t + Duration::days(30),
    };
    let key = ApiKey {
        id: ApiKeyId::new(),
        name: "website".into(),
        key_hash: "k1".into(),
        prefix: "crm_1234".into(),
        role: Role::Service,
        scopes: crm_models::staff::KeyScope::default_scopes(),
        created_by: user.id,
        created_at: t,
        revoked_at: None,
    };
    let phone_key = Identifier::Phone(customer.phones[0].clone()).key();

    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(
            store
                .insert_customers_owning(&[(customer.clone(), vec![phone_key.clone()])])
                .await
                .unwrap(),
            vec![true]
        );
        store.insert_engagements(&engagements).await.unwrap();
        store.insert_user(&user, &[]).await.unwrap();
        store.insert_refresh_token(&token).await.unwrap();
        assert!(store.use_refresh_token("h1").await.unwrap());
        store.insert_api_key(&key).await.unwrap();
    }
    assert!(dir.path().join("crm.redb").is_file());

    let store = EmbeddedStore::open(dir.path()).unwrap();
    let stored = store.get_customer(customer.id).await.unwrap().unwrap();
    assert_eq!(stored.counts.sms, 3);
    assert_eq!(stored.last_engagement_at, Some(t + Duration::minutes(2)));
    assert_eq!(
        Customer {
            counts: customer.counts,
            last_engagement_at: None,
            ..stored
        },
        customer
    );
    assert_eq!(store.list_customers(None, None, 10).await.unwrap().len(), 1);
    assert_eq!(
        store.identity_owner(&phone_key).await.unwrap(),
        Some(customer.id)
    );
    assert_eq!(
        store.identities_of(customer.id).await.unwrap(),
        vec![phone_key]
    );
    let timeline = store
        .list_engagements(customer.id, &EngagementFilter::default(), None, 10)
        .await
        .unwrap();
    let mut expected = engagements.clone();
    expected.reverse();
    assert_eq!(timeline, expected);
    assert_eq!(
        store.get_engagement(engagements[0].id).await.unwrap(),
        Some(engagements[0].clone())
    );
    assert_eq!(
        store.get_user_by_email(&user.email).await.unwrap(),
        Some(user.clone())
    );
    assert_eq!(store.count_users().await.unwrap(), 1);
    assert!(store.get_refresh_token("h1").await.unwrap().unwrap().used);
    assert!(!store.use_refresh_token("h1").await.unwrap());
    assert_eq!(store.get_api_key_by_hash("k1").await.unwrap(), Some(key));
    // Still writable after the restart.
    let more = Engagement {
        id: EngagementId::new(),
        ..engagements[0].clone()
    };
    store.insert_engagements(&[more]).await.unwrap();
    assert_eq!(
        store
            .get_customer(customer.id)
            .await
            .unwrap()
            .unwrap()
            .counts
            .sms,
        4
    );
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested").join("data");
    let first = EmbeddedStore::open(&data).unwrap();
    first.ping().await.unwrap();
    assert_eq!(first.kind(), "embedded");

    match EmbeddedStore::open(&data) {
        Err(StoreError::Unavailable(message)) => {
            assert!(
                message.contains("in use by another crm-api process"),
                "{message}"
            );
            assert!(message.contains(&data.display().to_string()), "{message}");
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("a second open of {} succeeded", data.display()),
    }
    // The first store is unaffected, and the lock goes with it.
    first.ping().await.unwrap();
    drop(first);
    let again = EmbeddedStore::open(&data).unwrap();
    again.ping().await.unwrap();
}

#[tokio::test]
async fn a_data_directory_that_cannot_be_created_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    match EmbeddedStore::open(&file.join("data")) {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("data directory"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn call_signals_between_durable_commits_are_read_at_once_and_kept_by_a_clean_close() {
    use crm_models::device::CallSignal;
    use crm_models::ids::DeviceId;

    let dir = tempfile::tempdir().unwrap();
    let user = UserId::new();
    let now = time::now();
    let batch = |n: i64| -> Vec<CallSignal> {
        (0..3)
            .map(|i| CallSignal {
                id: uuid::Uuid::now_v7(),
                customer_id: Some(CustomerId::new()),
                device_id: DeviceId::new(),
                user_id: user,
                number: PhoneNumber::parse("+6581226418", None).unwrap(),
                at: now - Duration::milliseconds(100 * n + i),
            })
            .collect()
    };
    let (a, b, c) = (batch(3), batch(2), batch(1));
    let store = EmbeddedStore::open(dir.path()).unwrap();
    // The first commit is durable; the next two, within a second of it,
    // are not, and are read at once all the same.
    for signals in [&a, &b, &c] {
        store.insert_call_signals(signals.clone()).await.unwrap();
    }
    let mut expected: Vec<CallSignal> = a.iter().chain(&b).chain(&c).cloned().collect();
    expected.sort_by_key(|s| (s.at, s.id));
    let since = now - Duration::days(1);
    assert_eq!(
        store
            .list_call_signals(Some(user), since, 100)
            .await
            .unwrap(),
        expected
    );
    drop(store);

    let reopened = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        reopened
            .list_call_signals(Some(user), since, 100)
            .await
            .unwrap(),
        expected,
        "closing the store keeps the signals of non-durable commits"
    );
}

/// After an erasure and a restart, the file holds none of the person's data:
/// not in the tables, and not in pages the erasure freed (the store compacts
/// the file at the first start after an erasure).
#[tokio::test]
async fn an_erased_person_is_gone_from_the_file_after_a_restart() {
    use crm_models::service::{Crm, CustomerInput, EngagementTarget, NewEngagement};
    use std::sync::Arc;

    const PERSONAL: [&str; 5] = [
        "Zyxwvut",
        "Plonkett",
        "zyx.plonkett",
        "91234567",
        "unmistakable-body-phrase",
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crm.redb");
    let contains = |needle: &str| {
        let bytes = std::fs::read(&file).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    };
    {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let crm = Crm::new(store);
        let phone = Identifier::Phone(PhoneNumber::parse("+6591234567", None).unwrap());
        let (c, _) = crm
            .create_customer(CustomerInput {
                name: Some("Zyxwvut Plonkett".into()),
                identifiers: vec![
                    phone.clone(),
                    Identifier::Email(Email::parse("zyx.plonkett@erase.example").unwrap()),
                ],
                status: None,
            })
            .await
            .unwrap();
        crm.record_engagement(NewEngagement {
            target: EngagementTarget::Customer(c.id),
            occurred_at: time::now(),
            source: Source::default(),
            detail: EngagementDetail::Sms {
                direction: Direction::Inbound,
                body: "unmistakable-body-phrase".into(),
            },
        })
        .await
        .unwrap();
        // Other customers keep the file busy, as in a real store.
        for i in 0..50 {
            crm.create_customer(CustomerInput {
                name: Some(format!("Other {i}")),
                identifiers: vec![],
                status: None,
            })
            .await
            .unwrap();
        }
        assert!(PERSONAL.iter().all(|p| contains(p)), "written to the file");
        crm.delete_customer(c.id).await.unwrap();
    }
    // The first start after the erasure compacts the file.
    drop(EmbeddedStore::open(dir.path()).unwrap());
    let left: Vec<&str> = PERSONAL.iter().copied().filter(|p| contains(p)).collect();
    assert!(left.is_empty(), "still in the file: {left:?}");
}
