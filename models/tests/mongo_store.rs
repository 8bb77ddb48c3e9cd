//! The MongoDB adapter against a MongoDB-compatible server (see
//! `support/mongo_server.rs`: `CRM_TEST_MONGODB_URI`, or a `secantusd-py`
//! started for this test binary). Each test works in a database of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use chrono::Duration;
use crm_models::customer::{Customer, CustomerStatus, Identifier};
use crm_models::engagement::{CallStatus, Direction, Engagement, EngagementDetail, Source};
use crm_models::ids::{ApiKeyId, CustomerId, DeviceId, EngagementId, UserId};
use crm_models::staff::{ApiKey, RefreshToken, Role, User};
use crm_models::store::mongo::MongoStore;
use crm_models::store::{
    Claim, CustomerCursor, EngagementCursor, EngagementFilter, EngagementInsert, Store, StoreError,
};
use crm_models::time::{self, Timestamp};
use crm_models::{Channel, Email, PhoneNumber};
use support::TestMongo;

fn t(seconds: i64) -> Timestamp {
    time::parse("2026-03-01T09:00:00Z").unwrap() + Duration::seconds(seconds)
}

fn phone(raw: &str) -> PhoneNumber {
    PhoneNumber::parse(raw, None).unwrap()
}

fn email(raw: &str) -> Email {
    Email::parse(raw).unwrap()
}

async fn new_customer(store: &MongoStore, name: &str, at: Timestamp) -> Customer {
    let c = Customer::new(CustomerId::new(), Some(name.to_string()), at);
    store.insert_customer(&c).await.unwrap();
    c
}

fn engagement(customer: CustomerId, at: Timestamp, detail: EngagementDetail) -> Engagement {
    Engagement {
        id: EngagementId::new(),
        customer_id: customer,
        occurred_at: at,
        recorded_at: time::now(),
        source: Source::default(),
        detail,
    }
}

fn sms(customer: CustomerId, at: Timestamp, body: &str) -> Engagement {
    engagement(
        customer,
        at,
        EngagementDetail::Sms {
            direction: Direction::Inbound,
            body: body.into(),
        },
    )
}

fn call(customer: CustomerId, at: Timestamp) -> Engagement {
    engagement(
        customer,
        at,
        EngagementDetail::Call {
            direction: Direction::Outbound,
            duration_s: 61,
            status: CallStatus::Answered,
        },
    )
}

fn web(customer: CustomerId, at: Timestamp) -> Engagement {
    engagement(
        customer,
        at,
        EngagementDetail::Web {
            url: "https://example.com/cars/42".into(),
            view: "product".into(),
            view_desc: Some("A car".into()),
            category: None,
            object_id: Some("42".into()),
        },
    )
}

fn user(address: &str) -> User {
    User {
        id: UserId::new(),
        email: email(address),
        name: "Staff".into(),
        role: Role::Agent,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        active: true,
        created_at: t(0),
        updated_at: t(0),
    }
}

fn refresh_token(hash: &str, user: UserId, family: &str) -> RefreshToken {
    RefreshToken {
        token_hash: hash.into(),
        user_id: user,
        family_id: family.into(),
        used: false,
        revoked: false,
        created_at: t(0),
        expires_at: t(3600),
    }
}

fn api_key(hash: &str, at: Timestamp) -> ApiKey {
    ApiKey {
        id: ApiKeyId::new(),
        name: format!("key {hash}"),
        key_hash: hash.into(),
        prefix: "crm_abcd".into(),
        role: Role::Service,
        created_by: UserId::new(),
        created_at: at,
        revoked_at: None,
    }
}

// --- connecting ---

#[tokio::test]
async fn connects_pings_and_creates_indexes_idempotently() {
    let db = TestMongo::new().await;
    assert_eq!(db.kind(), "mongo");
    db.ping().await.unwrap();
    // A second store on the same database creates the same indexes again.
    let again = MongoStore::connect(&support::mongo_server::mongodb_uri(), &db.database)
        .await
        .unwrap();
    again.ping().await.unwrap();
    let names = db
        .database()
        .collection::<mongodb::bson::Document>("engagements")
        .list_index_names()
        .await
        .unwrap();
    assert_eq!(names.len(), 3, "{names:?}");
    db.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri =
        format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=300");
    match MongoStore::connect(&uri, "crm_test_unreachable").await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        MongoStore::connect("not a uri", "crm").await,
        Err(StoreError::Unavailable(_))
    ));
}

// --- customers ---

#[tokio::test]
async fn customers_insert_get_and_conflict() {
    let db = TestMongo::new().await;
    let mut c = Customer::new(CustomerId::new(), Some("Ann Tan".into()), t(0));
    c.phones.push(phone("+6581226418"));
    c.emails.push(email("ann@example.com"));
    c.social.insert("facebook".into(), "123".into());
    c.status = CustomerStatus::Inactive;
    c.merged_into = Some(CustomerId::new());
    c.last_engagement_at = Some(t(5));
    c.counts.sms = 3;
    db.insert_customer(&c).await.unwrap();
    assert_eq!(db.get_customer(c.id).await.unwrap(), Some(c.clone()));

    let mut same_id = Customer::new(c.id, None, t(1));
    same_id.name = Some("Other".into());
    assert!(matches!(
        db.insert_customer(&same_id).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(db.get_customer(c.id).await.unwrap(), Some(c));
    assert_eq!(db.get_customer(CustomerId::new()).await.unwrap(), None);
    db.cleanup().await;
}

#[tokio::test]
async fn update_profile_writes_profile_fields_and_leaves_counts_alone() {
    let db = TestMongo::new().await;
    let c = new_customer(&db, "Ann", t(0)).await;
    let stale = c.clone();
    db.insert_engagements(&[sms(c.id, t(10), "hi"), call(c.id, t(20))])
        .await
        .unwrap();

    let mut next = stale;
    next.name = Some("Ann Tan".into());
    next.phones = vec![phone("+6581226418")];
    next.emails = vec![email("ann@example.com")];
    next.social.insert("twitter".into(), "anntan".into());
    next.status = CustomerStatus::Merged;
    next.merged_into = Some(CustomerId::new());
    next.updated_at = t(30);
    db.update_profile(&next).await.unwrap();

    let stored = db.get_customer(c.id).await.unwrap().unwrap();
    assert_eq!(stored.name.as_deref(), Some("Ann Tan"));
    assert_eq!(stored.phones, next.phones);
    assert_eq!(stored.emails, next.emails);
    assert_eq!(stored.social, next.social);
    assert_eq!(stored.status, CustomerStatus::Merged);
    assert_eq!(stored.merged_into, next.merged_into);
    assert_eq!(stored.updated_at, t(30));
    assert_eq!(stored.created_at, t(0));
    // Maintained by engagements, not by the (stale) profile.
    assert_eq!(stored.counts.sms, 1);
    assert_eq!(stored.counts.call, 1);
    assert_eq!(stored.last_engagement_at, Some(t(20)));

    // Clearing works too.
    next.name = None;
    next.merged_into = None;
    next.social.clear();
    db.update_profile(&next).await.unwrap();
    let stored = db.get_customer(c.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.name, stored.merged_into, stored.social.len()),
        (None, None, 0)
    );

    let missing = Customer::new(CustomerId::new(), None, t(0));
    assert_eq!(db.update_profile(&missing).await, Err(StoreError::NotFound));
    assert_eq!(db.get_customer(missing.id).await.unwrap(), None);
    db.cleanup().await;
}

#[tokio::test]
async fn add_identifiers_has_set_semantics_and_returns_the_stored_customer() {
    let db = TestMongo::new().await;
    let c = new_customer(&db, "Ann", t(0)).await;
    let ids = [
        Identifier::Phone(phone("+6581226418")),
        Identifier::Email(email("ann@example.com")),
        Identifier::Social {
            network: "facebook".into(),
            id: "123".into(),
        },
        Identifier::Anonymous("visitor-1".into()),
    ];
    let after = db.add_identifiers(c.id, &ids, t(5)).await.unwrap();
    assert_eq!(after.phones, vec![phone("+6581226418")]);
    assert_eq!(after.emails, vec![email("ann@example.com")]);
    assert_eq!(
        after.social.get("facebook").map(String::as_str),
        Some("123")
    );
    assert_eq!(after.updated_at, t(5));
    assert_eq!(after.name.as_deref(), Some("Ann"));

    // Again, plus a new phone and a changed social id: no duplicates.
    let more = [
        Identifier::Phone(phone("+6581226418")),
        Identifier::Phone(phone("+6591234567")),
        Identifier::Email(email("ann@example.com")),
        Identifier::Social {
            network: "facebook".into(),
            id: "456".into(),
        },
    ];
    let after = db.add_identifiers(c.id, &more, t(6)).await.unwrap();
    assert_eq!(
        after.phones,
        vec![phone("+6581226418"), phone("+6591234567")]
    );
    assert_eq!(after.emails, vec![email("ann@example.com")]);
    assert_eq!(
        after.social.get("facebook").map(String::as_str),
        Some("456")
    );
    assert_eq!(after.updated_at, t(6));
    assert_eq!(db.get_customer(c.id).await.unwrap(), Some(after));

    assert_eq!(
        db.add_identifiers(CustomerId::new(), &ids, t(7)).await,
        Err(StoreError::NotFound)
    );
    db.cleanup().await;
}

#[tokio::test]
async fn list_customers_pages_by_updated_at_then_id() {
    let db = TestMongo::new().await;
    let mut all = Vec::new();
    // Several customers share an updated_at, so the id breaks ties.
    for i in 0..9 {
        all.push(new_customer(&db, &format!("c{i}"), t(i / 3)).await);
    }
    all.sort_by_key(|c| (c.updated_at, c.id));

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = db.list_customers(None, after, 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = Some(CustomerCursor {
            updated_at: last.updated_at,
            id: last.id,
        });
        seen.extend(page);
    }
    assert_eq!(
        seen.iter().map(|c| c.id).collect::<Vec<_>>(),
        all.iter().map(|c| c.id).collect::<Vec<_>>()
    );
    assert_eq!(seen, all);

    let since = db.list_customers(Some(t(1)), None, 100).await.unwrap();
    assert_eq!(
        since.iter().map(|c| c.id).collect::<Vec<_>>(),
        all[3..].iter().map(|c| c.id).collect::<Vec<_>>()
    );
    let both = db
        .list_customers(
            Some(t(1)),
            Some(CustomerCursor {
                updated_at: all[4].updated_at,
                id: all[4].id,
            }),
            2,
        )
        .await
        .unwrap();
    assert_eq!(
        both.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![all[5].id, all[6].id]
    );
    assert!(db.list_customers(None, None, 0).await.unwrap().is_empty());
    db.cleanup().await;
}

// --- identities ---

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_have_exactly_one_winner() {
    let db = TestMongo::new().await;
    let store = Arc::new(db.store.clone());
    let key = "phone:+6581226418";
    let claimants: Vec<CustomerId> = (0..50).map(|_| CustomerId::new()).collect();
    let tasks = claimants.iter().map(|&c| {
        let store = store.clone();
        tokio::spawn(async move { (c, store.claim_identity(key, c).await.unwrap()) })
    });
    let results: Vec<(CustomerId, Claim)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winners: Vec<CustomerId> = results
        .iter()
        .filter(|(_, r)| *r == Claim::Claimed)
        .map(|(c, _)| *c)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = winners[0];
    for (c, r) in &results {
        if *c != winner {
            assert_eq!(*r, Claim::OwnedBy(winner));
        }
    }
    assert_eq!(db.identity_owner(key).await.unwrap(), Some(winner));
    // Claiming what one owns already says so.
    assert_eq!(
        db.claim_identity(key, winner).await.unwrap(),
        Claim::OwnedBy(winner)
    );
    db.cleanup().await;
}

#[tokio::test]
async fn release_frees_only_for_the_owner_and_identities_are_sorted() {
    let db = TestMongo::new().await;
    let (ann, bob) = (CustomerId::new(), CustomerId::new());
    for key in [
        "phone:+6581226418",
        "email:ann@example.com",
        "facebook:123",
        "anon:v1",
    ] {
        assert_eq!(db.claim_identity(key, ann).await.unwrap(), Claim::Claimed);
    }
    assert_eq!(
        db.claim_identity("phone:+6591234567", bob).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        db.identities_of(ann).await.unwrap(),
        vec![
            "anon:v1",
            "email:ann@example.com",
            "facebook:123",
            "phone:+6581226418"
        ]
    );

    db.release_identity("phone:+6581226418", bob).await.unwrap();
    assert_eq!(
        db.identity_owner("phone:+6581226418").await.unwrap(),
        Some(ann)
    );
    db.release_identity("phone:+6581226418", ann).await.unwrap();
    assert_eq!(db.identity_owner("phone:+6581226418").await.unwrap(), None);
    // Releasing what nobody owns is fine.
    db.release_identity("phone:+6581226418", ann).await.unwrap();
    assert_eq!(
        db.claim_identity("phone:+6581226418", bob).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        db.identities_of(bob).await.unwrap(),
        vec!["phone:+6581226418", "phone:+6591234567"]
    );
    assert!(db
        .identities_of(CustomerId::new())
        .await
        .unwrap()
        .is_empty());
    db.cleanup().await;
}

#[tokio::test]
async fn delete_customer_erases_its_identities_and_engagements() {
    let db = TestMongo::new().await;
    let ann = new_customer(&db, "Ann", t(0)).await;
    let bob = new_customer(&db, "Bob", t(0)).await;
    db.claim_identity("phone:+6581226418", ann.id)
        .await
        .unwrap();
    db.claim_identity("email:ann@example.com", ann.id)
        .await
        .unwrap();
    db.claim_identity("phone:+6591234567", bob.id)
        .await
        .unwrap();
    let ann_sms = sms(ann.id, t(1), "hello");
    let bob_sms = sms(bob.id, t(1), "hello");
    db.insert_engagements(&[ann_sms.clone(), bob_sms.clone()])
        .await
        .unwrap();
    let ann_stored = db.get_customer(ann.id).await.unwrap();

    assert_eq!(db.delete_customer(ann.id).await.unwrap(), ann_stored);
    assert_eq!(db.get_customer(ann.id).await.unwrap(), None);
    assert!(db.identities_of(ann.id).await.unwrap().is_empty());
    assert_eq!(db.identity_owner("phone:+6581226418").await.unwrap(), None);
    assert_eq!(db.get_engagement(ann_sms.id).await.unwrap(), None);
    assert!(db
        .list_engagements(ann.id, &EngagementFilter::default(), None, 10)
        .await
        .unwrap()
        .is_empty());
    // The identifier is free again.
    assert_eq!(
        db.claim_identity("phone:+6581226418", bob.id)
            .await
            .unwrap(),
        Claim::Claimed
    );

    // Nothing of Bob's went.
    assert!(db.get_customer(bob.id).await.unwrap().is_some());
    assert_eq!(db.get_engagement(bob_sms.id).await.unwrap(), Some(bob_sms));
    assert_eq!(
        db.identity_owner("phone:+6591234567").await.unwrap(),
        Some(bob.id)
    );

    assert_eq!(db.delete_customer(ann.id).await.unwrap(), None);
    db.cleanup().await;
}

// --- engagements ---

#[tokio::test]
async fn insert_engagements_counts_created_ones_per_channel() {
    let db = TestMongo::new().await;
    let ann = new_customer(&db, "Ann", t(0)).await;
    let bob = new_customer(&db, "Bob", t(0)).await;
    let batch = [
        sms(ann.id, t(10), "a"),
        sms(ann.id, t(30), "b"),
        call(ann.id, t(20)),
        web(bob.id, t(5)),
    ];
    let outcomes = db.insert_engagements(&batch).await.unwrap();
    assert_eq!(outcomes, vec![EngagementInsert::Created; 4]);
    for e in &batch {
        assert_eq!(db.get_engagement(e.id).await.unwrap().as_ref(), Some(e));
    }
    let a = db.get_customer(ann.id).await.unwrap().unwrap();
    assert_eq!(
        (a.counts.sms, a.counts.call, a.counts.web, a.counts.total()),
        (2, 1, 0, 3)
    );
    assert_eq!(a.last_engagement_at, Some(t(30)));
    let b = db.get_customer(bob.id).await.unwrap().unwrap();
    assert_eq!((b.counts.web, b.counts.total()), (1, 1));
    assert_eq!(b.last_engagement_at, Some(t(5)));

    // An older engagement counts but does not move last_engagement_at back.
    db.insert_engagements(&[sms(ann.id, t(1), "old")])
        .await
        .unwrap();
    let a = db.get_customer(ann.id).await.unwrap().unwrap();
    assert_eq!((a.counts.sms, a.last_engagement_at), (3, Some(t(30))));
    assert!(db.insert_engagements(&[]).await.unwrap().is_empty());
    db.cleanup().await;
}

#[tokio::test]
async fn duplicate_engagements_are_reported_and_not_counted() {
    let db = TestMongo::new().await;
    let ann = new_customer(&db, "Ann", t(0)).await;
    let bob = new_customer(&db, "Bob", t(0)).await;
    let first = sms(ann.id, t(10), "a");
    db.insert_engagements(std::slice::from_ref(&first))
        .await
        .unwrap();

    // A retried upload: the same id again (even when now aimed at Bob), plus a new one.
    let mut retried = first.clone();
    retried.customer_id = bob.id;
    let fresh = call(ann.id, t(20));
    let outcomes = db
        .insert_engagements(&[retried, fresh.clone()])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            EngagementInsert::Duplicate {
                customer_id: ann.id
            },
            EngagementInsert::Created
        ]
    );
    assert_eq!(
        db.get_engagement(first.id).await.unwrap(),
        Some(first.clone())
    );

    // Within one batch: the first copy wins.
    let twice = web(bob.id, t(30));
    let outcomes = db
        .insert_engagements(&[twice.clone(), twice.clone()])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            EngagementInsert::Created,
            EngagementInsert::Duplicate {
                customer_id: bob.id
            }
        ]
    );

    // The same device event under another id collides on (device_id, client_event_id).
    let device = DeviceId::new();
    let mut from_device = sms(ann.id, t(40), "x");
    from_device.source = Source {
        device_id: Some(device),
        client_event_id: Some("ev-1".into()),
        user_id: None,
        via: None,
    };
    let mut again = from_device.clone();
    again.id = EngagementId::new();
    let outcomes = db
        .insert_engagements(&[from_device, again.clone()])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            EngagementInsert::Created,
            EngagementInsert::Duplicate {
                customer_id: ann.id
            }
        ]
    );
    assert_eq!(db.get_engagement(again.id).await.unwrap(), None);

    // The same client event id from another device, or from users without a
    // device, is a different event.
    let mut other_device = sms(ann.id, t(41), "y");
    other_device.source = Source {
        device_id: Some(DeviceId::new()),
        client_event_id: Some("ev-1".into()),
        user_id: None,
        via: None,
    };
    let mut user_a = sms(ann.id, t(42), "z");
    user_a.source = Source {
        device_id: None,
        client_event_id: Some("ev-1".into()),
        user_id: Some("u1".into()),
        via: None,
    };
    let mut user_b = user_a.clone();
    user_b.id = EngagementId::new();
    user_b.source.user_id = Some("u2".into());
    let outcomes = db
        .insert_engagements(&[other_device, user_a, user_b])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![EngagementInsert::Created; 3]);

    let a = db.get_customer(ann.id).await.unwrap().unwrap();
    assert_eq!((a.counts.sms, a.counts.call), (5, 1));
    assert_eq!(a.last_engagement_at, Some(t(42)));
    let b = db.get_customer(bob.id).await.unwrap().unwrap();
    assert_eq!((b.counts.sms, b.counts.web), (0, 1));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_of_one_batch_count_each_engagement_once() {
    let db = TestMongo::new().await;
    let ann = new_customer(&db, "Ann", t(0)).await;
    let batch: Vec<Engagement> = (0..10).map(|i| sms(ann.id, t(i), "hi")).collect();
    let store = Arc::new(db.store.clone());
    let tasks = (0..8).map(|_| {
        let (store, batch) = (store.clone(), batch.clone());
        tokio::spawn(async move { store.insert_engagements(&batch).await.unwrap() })
    });
    let results: Vec<Vec<EngagementInsert>> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for i in 0..batch.len() {
        let created = results
            .iter()
            .filter(|r| r[i] == EngagementInsert::Created)
            .count();
        assert_eq!(created, 1, "item {i}: {results:?}");
        assert!(results.iter().all(|r| r[i] == EngagementInsert::Created
            || r[i]
                == EngagementInsert::Duplicate {
                    customer_id: ann.id
                }));
    }
    let a = db.get_customer(ann.id).await.unwrap().unwrap();
    assert_eq!((a.counts.sms, a.last_engagement_at), (10, Some(t(9))));
    db.cleanup().await;
}

#[tokio::test]
async fn list_engagements_newest_first_with_filters_and_cursor() {
    let db = TestMongo::new().await;
    let ann = new_customer(&db, "Ann", t(0)).await;
    let bob = new_customer(&db, "Bob", t(0)).await;
    let mut mine = vec![
        sms(ann.id, t(10), "a"),
        call(ann.id, t(20)),
        sms(ann.id, t(20), "tie"),
        web(ann.id, t(20)),
        sms(ann.id, t(30), "b"),
        call(ann.id, t(40)),
        sms(ann.id, t(50), "c"),
    ];
    db.insert_engagements(&mine).await.unwrap();
    db.insert_engagements(&[sms(bob.id, t(25), "not ann's")])
        .await
        .unwrap();
    // Newest first; equal times: larger id first.
    mine.sort_by_key(|e| std::cmp::Reverse((e.occurred_at, e.id)));

    let all = db
        .list_engagements(ann.id, &EngagementFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(all, mine);

    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = db
            .list_engagements(ann.id, &EngagementFilter::default(), after, 2)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(EngagementCursor {
            occurred_at: last.occurred_at,
            id: last.id,
        });
        paged.extend(page);
    }
    assert_eq!(paged, mine);

    let sms_only = EngagementFilter {
        channel: Some(Channel::Sms),
        ..Default::default()
    };
    let got = db
        .list_engagements(ann.id, &sms_only, None, 100)
        .await
        .unwrap();
    assert_eq!(
        got,
        mine.iter()
            .filter(|e| e.channel() == Channel::Sms)
            .cloned()
            .collect::<Vec<_>>()
    );

    // since is inclusive, until exclusive.
    let window = EngagementFilter {
        channel: None,
        since: Some(t(20)),
        until: Some(t(40)),
    };
    let got = db
        .list_engagements(ann.id, &window, None, 100)
        .await
        .unwrap();
    let want: Vec<_> = mine
        .iter()
        .filter(|e| e.occurred_at >= t(20) && e.occurred_at < t(40))
        .cloned()
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), 4);

    // Filter and cursor together, starting inside the tie at t(20).
    let tie = &mine[3];
    assert_eq!(tie.occurred_at, t(20));
    let got = db
        .list_engagements(
            ann.id,
            &window,
            Some(EngagementCursor {
                occurred_at: tie.occurred_at,
                id: tie.id,
            }),
            100,
        )
        .await
        .unwrap();
    assert_eq!(got, mine[4..6].to_vec());

    assert!(db
        .list_engagements(ann.id, &EngagementFilter::default(), None, 0)
        .await
        .unwrap()
        .is_empty());
    assert!(db
        .list_engagements(CustomerId::new(), &EngagementFilter::default(), None, 10)
        .await
        .unwrap()
        .is_empty());
    db.cleanup().await;
}

// --- staff users ---

#[tokio::test]
async fn users_are_unique_by_email_and_id() {
    let db = TestMongo::new().await;
    let ann = user("ann@example.com");
    db.insert_user(&ann).await.unwrap();
    assert_eq!(db.get_user(ann.id).await.unwrap(), Some(ann.clone()));
    assert_eq!(
        db.get_user_by_email(&email("ann@example.com"))
            .await
            .unwrap(),
        Some(ann.clone())
    );
    assert_eq!(
        db.get_user_by_email(&email("nobody@example.com"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(db.get_user(UserId::new()).await.unwrap(), None);

    let same_email = user("ann@example.com");
    assert!(matches!(
        db.insert_user(&same_email).await,
        Err(StoreError::Conflict(_))
    ));
    let mut same_id = user("other@example.com");
    same_id.id = ann.id;
    assert!(matches!(
        db.insert_user(&same_id).await,
        Err(StoreError::Conflict(_))
    ));

    let bob = user("bob@example.com");
    db.insert_user(&bob).await.unwrap();
    let mut taken = bob.clone();
    taken.email = email("ann@example.com");
    assert!(matches!(
        db.update_user(&taken).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(db.get_user(bob.id).await.unwrap(), Some(bob.clone()));

    let mut renamed = bob.clone();
    renamed.email = email("robert@example.com");
    renamed.role = Role::Admin;
    renamed.active = false;
    renamed.updated_at = t(9);
    db.update_user(&renamed).await.unwrap();
    assert_eq!(db.get_user(bob.id).await.unwrap(), Some(renamed.clone()));
    assert_eq!(
        db.get_user_by_email(&email("bob@example.com"))
            .await
            .unwrap(),
        None
    );
    // Bob's old email is free now.
    db.insert_user(&user("bob@example.com")).await.unwrap();

    assert_eq!(
        db.update_user(&user("ghost@example.com")).await,
        Err(StoreError::NotFound)
    );
    db.cleanup().await;
}

#[tokio::test]
async fn users_list_by_id_and_count() {
    let db = TestMongo::new().await;
    assert_eq!(db.count_users().await.unwrap(), 0);
    let mut all: Vec<User> = Vec::new();
    for i in 0..5 {
        let u = user(&format!("u{i}@example.com"));
        db.insert_user(&u).await.unwrap();
        all.push(u);
    }
    all.sort_by_key(|u| u.id);
    assert_eq!(db.count_users().await.unwrap(), 5);
    let first = db.list_users(None, 2).await.unwrap();
    assert_eq!(first, all[..2].to_vec());
    let rest = db.list_users(Some(first[1].id), 10).await.unwrap();
    assert_eq!(rest, all[2..].to_vec());
    assert!(db.list_users(None, 0).await.unwrap().is_empty());
    db.cleanup().await;
}

// --- refresh tokens ---

#[tokio::test]
async fn refresh_tokens_are_used_once_and_revoked_by_family_or_user() {
    let db = TestMongo::new().await;
    let (ann, bob) = (UserId::new(), UserId::new());
    let a1 = refresh_token("hash-a1", ann, "fam-a");
    db.insert_refresh_token(&a1).await.unwrap();
    assert_eq!(
        db.get_refresh_token("hash-a1").await.unwrap(),
        Some(a1.clone())
    );
    assert_eq!(db.get_refresh_token("nope").await.unwrap(), None);
    assert!(matches!(
        db.insert_refresh_token(&a1).await,
        Err(StoreError::Conflict(_))
    ));

    assert!(db.use_refresh_token("hash-a1").await.unwrap());
    assert!(!db.use_refresh_token("hash-a1").await.unwrap());
    assert!(!db.use_refresh_token("nope").await.unwrap());
    assert!(db.get_refresh_token("hash-a1").await.unwrap().unwrap().used);

    let a2 = refresh_token("hash-a2", ann, "fam-a");
    let a3 = refresh_token("hash-a3", ann, "fam-a2");
    let b1 = refresh_token("hash-b1", bob, "fam-b");
    for token in [&a2, &a3, &b1] {
        db.insert_refresh_token(token).await.unwrap();
    }
    db.revoke_refresh_family("fam-a").await.unwrap();
    assert!(
        db.get_refresh_token("hash-a2")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(!db.use_refresh_token("hash-a2").await.unwrap());
    assert!(
        !db.get_refresh_token("hash-a3")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );

    db.revoke_user_refresh_tokens(ann).await.unwrap();
    assert!(
        db.get_refresh_token("hash-a3")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(!db.use_refresh_token("hash-a3").await.unwrap());
    assert!(
        !db.get_refresh_token("hash-b1")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(db.use_refresh_token("hash-b1").await.unwrap());
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refresh_token_use_has_exactly_one_winner() {
    let db = TestMongo::new().await;
    db.insert_refresh_token(&refresh_token("hash-race", UserId::new(), "fam"))
        .await
        .unwrap();
    let store = Arc::new(db.store.clone());
    let tasks = (0..20).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.use_refresh_token("hash-race").await.unwrap() })
    });
    let wins = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(wins, 1);
    db.cleanup().await;
}

// --- API keys ---

#[tokio::test]
async fn api_keys_insert_list_and_revoke() {
    let db = TestMongo::new().await;
    let later = api_key("hash-later", t(20));
    let earlier = api_key("hash-earlier", t(10));
    db.insert_api_key(&later).await.unwrap();
    db.insert_api_key(&earlier).await.unwrap();
    assert_eq!(
        db.get_api_key_by_hash("hash-later").await.unwrap(),
        Some(later.clone())
    );
    assert_eq!(db.get_api_key_by_hash("nope").await.unwrap(), None);
    let same_hash = api_key("hash-later", t(30));
    assert!(matches!(
        db.insert_api_key(&same_hash).await,
        Err(StoreError::Conflict(_))
    ));

    assert_eq!(
        db.list_api_keys().await.unwrap(),
        vec![earlier.clone(), later.clone()]
    );

    assert!(db.revoke_api_key(earlier.id, t(40)).await.unwrap());
    assert!(!db.revoke_api_key(earlier.id, t(50)).await.unwrap());
    assert!(!db.revoke_api_key(ApiKeyId::new(), t(50)).await.unwrap());
    let stored = db
        .get_api_key_by_hash("hash-earlier")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.revoked_at, Some(t(40)));
    // Revoked keys are still listed.
    let listed = db.list_api_keys().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].revoked_at, Some(t(40)));
    assert_eq!(listed[1], later);
    db.cleanup().await;
}
