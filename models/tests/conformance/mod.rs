//! The store conformance suite: every [`Store`] adapter must pass all of it.
//!
//! Each check is an async function taking a fresh, empty store. The
//! [`store_suite!`] macro turns the whole list into `#[tokio::test]`s for one
//! adapter, so adding an adapter is one line in `store_conformance.rs`:
//!
//! ```ignore
//! store_suite!(embedded, || async {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = EmbeddedStore::open(dir.path()).unwrap();
//!     TestStore::new(Arc::new(store), dir)
//! });
//! ```
//!
//! The factory returns a [`TestStore`]: the store plus whatever must live as
//! long as it (a temporary directory), and optionally async cleanup to run
//! after a passing test, e.g. for MongoDB:
//!
//! ```ignore
//! store_suite!(mongo, || async {
//!     let db = support::TestMongo::new().await;
//!     let store = Arc::new(db.store.clone());
//!     TestStore::new(store, ()).with_cleanup(db.cleanup())
//! });
//! ```
//!
//! The checks at the end (`service_*`) run the linking logic of
//! [`crm_models::service::Crm`] over the adapter, because its race-freedom rests
//! on the store's.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod tx_ops;
pub mod write_model;

pub use tx_ops::TxOps;
pub use write_model::*;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::Duration;
use uuid::Uuid;

use crm_models::customer::{Customer, CustomerStatus, Identifier};
use crm_models::device::{CallSignal, Device};
use crm_models::email::Email;
use crm_models::engagement::{
    CallStatus, Channel, Direction, Engagement, EngagementDetail, Source,
};
use crm_models::ids::{ApiKeyId, CustomerId, DeviceId, EngagementId, UserId};
use crm_models::phone::{PhoneNumber, Region};
use crm_models::service::{
    Crm, CrmError, CustomerInput, CustomerPatch, EngagementTarget, NewEngagement,
};
use crm_models::staff::{ApiKey, RefreshToken, Role, User};
use crm_models::store::{
    Claim, CustomerCursor, EngagementCursor, EngagementFilter, EngagementInsert, Store, StoreError,
};
use crm_models::time::{self, Timestamp};

/// A store under test and whatever has to outlive it.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    _keep: Box<dyn Any + Send + Sync>,
    cleanup: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl TestStore {
    /// `keep` is dropped after the test (e.g. a `TempDir`).
    pub fn new(store: Arc<dyn Store>, keep: impl Any + Send + Sync) -> Self {
        TestStore {
            store,
            _keep: Box::new(keep),
            cleanup: None,
        }
    }

    /// Work to await after a passing test (e.g. dropping its database).
    pub fn with_cleanup(mut self, cleanup: impl Future<Output = ()> + Send + 'static) -> Self {
        self.cleanup = Some(Box::pin(cleanup));
        self
    }

    pub async fn finish(self) {
        if let Some(cleanup) = self.cleanup {
            cleanup.await;
        }
    }
}

/// `store_suite!(adapter_name, factory)` where `factory` is a closure returning
/// a future of [`TestStore`], called once per test.
macro_rules! store_suite {
    ($adapter:ident, $factory:expr) => {
        mod $adapter {
            #[allow(unused_imports)]
            use super::*;

            store_suite!(@tests $factory;
                ping_and_kind,
                customer_insert_get_and_duplicate_id,
                get_customers_returns_those_that_exist,
                update_profile_never_touches_counts,
                add_identifiers_has_set_semantics,
                list_customers_orders_filters_and_pages,
                claim_release_and_identities_of,
                concurrent_claims_have_one_winner,
                delete_customer_cascades,
                insert_engagements_counts_and_last_engagement_at,
                insert_engagements_reports_duplicates_once,
                insert_engagements_for_a_missing_customer,
                list_engagements_newest_first_with_filters_and_paging,
                list_engagements_ties_are_ordered_by_id_desc,
                users_insert_get_update_conflicts,
                users_list_pages_and_count,
                refresh_token_is_used_once,
                refresh_token_concurrent_use_has_one_winner,
                refresh_tokens_revoked_by_family_and_user,
                api_keys_insert_get_list_revoke,
                devices_insert_get_list_revoke,
                call_signals_by_time_and_user,
                call_signals_a_moment_apart_list_and_prune_exactly,
                service_concurrent_records_of_one_phone_make_one_customer,
                service_create_with_owned_email_attaches_the_phone,
                identity_shared_flag_and_owner,
                move_identities_and_engagements_carry_counts,
                merge_records_history_and_undo_once,
                suggestions_are_kept_once_per_pair,
                service_call_sms_whatsapp_from_one_number_make_one_customer,
                service_one_event_naming_two_customers_merges_and_undo_restores,
                service_web_visitor_logs_in_then_calls,
                service_blocked_and_shared_identifiers_never_link,
                service_cap_turns_a_merge_into_a_suggestion,
                service_patch_with_a_taken_identifier_merges,
                service_concurrent_overlapping_links_make_one_customer,
                service_delete_frees_the_identifiers,
                events_commit_with_their_writes_and_relay_once,
                relay_keeps_events_while_the_stream_is_down,
                crossing_merges_leave_one_survivor_and_no_cycle,
                merges_racing_auto_links_lose_nothing,
                a_merge_failing_at_any_step_changes_nothing,
                an_undo_failing_at_any_step_leaves_the_merge_undoable,
                erasure_removes_the_person_and_everything_merged_into_it,
                updated_since_sees_engagements_merges_and_undos,
                engagements_for_a_merged_customer_land_on_its_survivor,
                repair_mends_what_older_versions_left,
                identities_are_read_in_bulk,
                customers_owning_their_keys_are_created_all_or_nothing,
                service_batch_resolves_new_known_and_linking_sets,
            );
        }
    };
    (@tests $factory:expr; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let harness: $crate::conformance::TestStore = ($factory)().await;
                $crate::conformance::$test(::std::sync::Arc::clone(&harness.store)).await;
                harness.finish().await;
            }
        )+
    };
}

mod linking;
pub use linking::*;

// --- helpers ---

fn t0() -> Timestamp {
    time::parse("2026-01-01T00:00:00Z").unwrap()
}

fn at(seconds: i64) -> Timestamp {
    t0() + Duration::seconds(seconds)
}

fn phone(raw: &str) -> PhoneNumber {
    PhoneNumber::parse(raw, Region::parse("SG").ok()).unwrap()
}

fn email(raw: &str) -> Email {
    Email::parse(raw).unwrap()
}

fn customer_at(updated: Timestamp) -> Customer {
    Customer::new(CustomerId::new(), Some("Ann Tan".into()), updated)
}

fn sms(customer: CustomerId, occurred_at: Timestamp) -> Engagement {
    Engagement {
        id: EngagementId(Uuid::new_v4()),
        customer_id: customer,
        occurred_at,
        recorded_at: occurred_at,
        source: Source::default(),
        detail: EngagementDetail::Sms {
            direction: Direction::Inbound,
            body: "hello".into(),
        },
    }
}

fn call(customer: CustomerId, occurred_at: Timestamp) -> Engagement {
    Engagement {
        detail: EngagementDetail::Call {
            direction: Direction::Outbound,
            duration_s: 42,
            status: CallStatus::Answered,
        },
        ..sms(customer, occurred_at)
    }
}

fn web(customer: CustomerId, occurred_at: Timestamp) -> Engagement {
    Engagement {
        detail: EngagementDetail::Web {
            url: "https://example.com/p/1".into(),
            view: "product".into(),
            view_desc: None,
            category: Some("shoes".into()),
            object_id: Some("1".into()),
        },
        ..sms(customer, occurred_at)
    }
}

fn user(mail: &str) -> User {
    User {
        id: UserId(Uuid::new_v4()),
        email: email(mail),
        name: "Staff".into(),
        role: Role::Agent,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        active: true,
        created_at: at(0),
        updated_at: at(0),
    }
}

fn refresh(hash: &str, user: UserId, family: &str) -> RefreshToken {
    RefreshToken {
        token_hash: hash.into(),
        user_id: user,
        family_id: family.into(),
        used: false,
        revoked: false,
        created_at: at(0),
        expires_at: at(86_400),
    }
}

fn api_key(name: &str, hash: &str, created: Timestamp) -> ApiKey {
    ApiKey {
        id: ApiKeyId(Uuid::new_v4()),
        name: name.into(),
        key_hash: hash.into(),
        prefix: "crm_abcd".into(),
        role: Role::Service,
        created_by: UserId::new(),
        created_at: created,
        revoked_at: None,
    }
}

fn crm(store: Arc<dyn Store>) -> Crm {
    Crm::new(store)
}

fn ids_of(customers: &[Customer]) -> Vec<CustomerId> {
    customers.iter().map(|c| c.id).collect()
}

fn engagement_ids(items: &[Engagement]) -> Vec<EngagementId> {
    items.iter().map(|e| e.id).collect()
}

/// Timeline order: newest first, ties larger id first.
fn timeline_sorted(mut items: Vec<Engagement>) -> Vec<Engagement> {
    items.sort_by(|a, b| b.occurred_at.cmp(&a.occurred_at).then(b.id.cmp(&a.id)));
    items
}

async fn all_pages(
    store: &Arc<dyn Store>,
    customer: CustomerId,
    filter: &EngagementFilter,
    page: usize,
) -> Vec<Engagement> {
    let mut out: Vec<Engagement> = Vec::new();
    let mut cursor = None;
    loop {
        let items = store
            .list_engagements(customer, filter, cursor, page)
            .await
            .unwrap();
        assert!(items.len() <= page);
        let Some(last) = items.last() else { break };
        cursor = Some(EngagementCursor {
            occurred_at: last.occurred_at,
            id: last.id,
        });
        let done = items.len() < page;
        out.extend(items);
        if done {
            break;
        }
    }
    out
}

// --- customers ---

pub async fn ping_and_kind(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    assert!(
        matches!(store.kind(), "embedded" | "mongo"),
        "kind is {}",
        store.kind()
    );
}

pub async fn get_customers_returns_those_that_exist(store: Arc<dyn Store>) {
    let a = customer_at(at(10));
    let b = customer_at(at(20));
    store.insert_customer(&a).await.unwrap();
    store.insert_customer(&b).await.unwrap();
    let mut found = store
        .get_customers(&[b.id, CustomerId::new(), a.id])
        .await
        .unwrap();
    found.sort_by_key(|c| c.created_at);
    assert_eq!(found, vec![a.clone(), b]);
    assert_eq!(
        store.get_customers(&[]).await.unwrap(),
        Vec::<Customer>::new()
    );
    assert_eq!(
        store.get_customers(&[CustomerId::new()]).await.unwrap(),
        Vec::<Customer>::new()
    );
}

pub async fn customer_insert_get_and_duplicate_id(store: Arc<dyn Store>) {
    let mut c = customer_at(at(10));
    c.emails.push(email("ann@example.com"));
    c.phones.push(phone("+65 8122 6418"));
    c.social.insert("facebook".into(), "123".into());
    c.status = CustomerStatus::Inactive;
    store.insert_customer(&c).await.unwrap();

    assert_eq!(store.get_customer(c.id).await.unwrap(), Some(c.clone()));
    assert_eq!(store.get_customer(CustomerId::new()).await.unwrap(), None);

    let mut again = customer_at(at(20));
    again.id = c.id;
    match store.insert_customer(&again).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("duplicate id: expected Conflict, got {other:?}"),
    }
    assert_eq!(
        store.get_customer(c.id).await.unwrap(),
        Some(c.clone()),
        "unchanged"
    );
    assert_eq!(
        ids_of(&store.list_customers(None, None, 10).await.unwrap()),
        vec![c.id]
    );
}

pub async fn update_profile_never_touches_counts(store: Arc<dyn Store>) {
    let c = customer_at(at(0));
    store.insert_customer(&c).await.unwrap();
    store
        .insert_engagements(&[sms(c.id, at(100)), sms(c.id, at(50)), call(c.id, at(70))])
        .await
        .unwrap();

    // A profile read before the engagements arrived, edited and written back.
    let mut edited = c.clone();
    edited.name = Some("Ann Lim".into());
    edited.emails = vec![email("ann.lim@example.com")];
    edited.phones = vec![phone("81226418")];
    edited.social.insert("twitter".into(), "annlim".into());
    edited.status = CustomerStatus::Inactive;
    edited.updated_at = at(200);
    store.update_profile(&edited).await.unwrap();

    let stored = store.get_customer(c.id).await.unwrap().unwrap();
    assert_eq!(stored.name.as_deref(), Some("Ann Lim"));
    assert_eq!(stored.emails, edited.emails);
    assert_eq!(stored.phones, edited.phones);
    assert_eq!(stored.social, edited.social);
    assert_eq!(stored.status, CustomerStatus::Inactive);
    assert_eq!(stored.updated_at, at(200));
    assert_eq!(stored.created_at, at(0));
    assert_eq!(stored.counts.sms, 2);
    assert_eq!(stored.counts.call, 1);
    assert_eq!(stored.counts.total(), 3);
    assert_eq!(stored.last_engagement_at, Some(at(100)));

    // The list sees the new updated_at, once.
    let listed = store.list_customers(None, None, 10).await.unwrap();
    assert_eq!(listed, vec![stored.clone()]);
    assert_eq!(
        store.list_customers(Some(at(150)), None, 10).await.unwrap(),
        vec![stored]
    );

    let missing = customer_at(at(0));
    assert_eq!(
        store.update_profile(&missing).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.get_customer(missing.id).await.unwrap(), None);
}

pub async fn add_identifiers_has_set_semantics(store: Arc<dyn Store>) {
    let mut c = customer_at(at(0));
    c.phones.push(phone("+6581226418"));
    store.insert_customer(&c).await.unwrap();

    let ph = Identifier::Phone(phone("+6581226418"));
    let ph2 = Identifier::Phone(phone("+6591234567"));
    let em = Identifier::Email(email("ann@example.com"));
    let fb = Identifier::Social {
        network: "facebook".into(),
        id: "123".into(),
    };
    let anon = Identifier::Anonymous("visitor-1".into());

    let after = store
        .add_identifiers(
            c.id,
            &[ph.clone(), em.clone(), fb.clone(), anon.clone(), em.clone()],
            at(5),
        )
        .await
        .unwrap();
    assert_eq!(after.phones, vec![phone("+6581226418")]);
    assert_eq!(after.emails, vec![email("ann@example.com")]);
    assert_eq!(
        after.social,
        BTreeMap::from([("facebook".to_string(), "123".to_string())])
    );
    assert_eq!(after.updated_at, at(5));
    assert_eq!(store.get_customer(c.id).await.unwrap(), Some(after.clone()));

    let again = store
        .add_identifiers(c.id, &[ph, ph2, em, fb, anon], at(9))
        .await
        .unwrap();
    assert_eq!(
        again.phones,
        vec![phone("+6581226418"), phone("+6591234567")]
    );
    assert_eq!(again.emails, vec![email("ann@example.com")]);
    assert_eq!(again.social.len(), 1);
    assert_eq!(again.updated_at, at(9));
    assert_eq!(again.counts, c.counts);
    assert_eq!(store.get_customer(c.id).await.unwrap(), Some(again.clone()));
    assert_eq!(
        store.list_customers(None, None, 10).await.unwrap(),
        vec![again]
    );

    let ghost = CustomerId::new();
    match store
        .add_identifiers(ghost, &[Identifier::Phone(phone("+6591234567"))], at(1))
        .await
    {
        Err(StoreError::NotFound) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(store.get_customer(ghost).await.unwrap(), None);
}

pub async fn list_customers_orders_filters_and_pages(store: Arc<dyn Store>) {
    // 25 customers, three per second, so updated_at ties are broken by id.
    let mut all: Vec<Customer> = (0..25).map(|i| customer_at(at(i / 3))).collect();
    // Insert in an order unrelated to the expected one.
    for c in all.iter().rev() {
        store.insert_customer(c).await.unwrap();
    }
    all.sort_by(|a, b| a.updated_at.cmp(&b.updated_at).then(a.id.cmp(&b.id)));

    let everything = store.list_customers(None, None, 100).await.unwrap();
    assert_eq!(ids_of(&everything), ids_of(&all));

    let first = store.list_customers(None, None, 4).await.unwrap();
    assert_eq!(ids_of(&first), ids_of(&all[..4]));

    // Paging with the cursor visits every customer exactly once.
    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..100 {
        let page = store.list_customers(None, cursor, 7).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        cursor = Some(CustomerCursor {
            updated_at: last.updated_at,
            id: last.id,
        });
        seen.extend(ids_of(&page));
    }
    assert_eq!(seen, ids_of(&all));

    // updated_since is inclusive.
    let since = store.list_customers(Some(at(4)), None, 100).await.unwrap();
    let expected: Vec<_> = all
        .iter()
        .filter(|c| c.updated_at >= at(4))
        .cloned()
        .collect();
    assert_eq!(expected.len(), 13);
    assert_eq!(ids_of(&since), ids_of(&expected));

    // Since and a cursor together: both bounds apply.
    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..100 {
        let page = store.list_customers(Some(at(4)), cursor, 5).await.unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(CustomerCursor {
            updated_at: last.updated_at,
            id: last.id,
        });
        seen.extend(ids_of(&page));
    }
    assert_eq!(seen, ids_of(&expected));

    // A cursor before updated_since: since wins.
    let early = CustomerCursor {
        updated_at: all[0].updated_at,
        id: all[0].id,
    };
    let page = store
        .list_customers(Some(at(4)), Some(early), 100)
        .await
        .unwrap();
    assert_eq!(ids_of(&page), ids_of(&expected));

    // A cursor naming a customer that is not there still positions by value.
    let ghost = CustomerCursor {
        updated_at: at(5),
        id: CustomerId(Uuid::nil()),
    };
    let page = store.list_customers(None, Some(ghost), 100).await.unwrap();
    let expected: Vec<_> = all
        .iter()
        .filter(|c| c.updated_at >= at(5))
        .cloned()
        .collect();
    assert_eq!(ids_of(&page), ids_of(&expected));

    assert!(store
        .list_customers(Some(at(1000)), None, 10)
        .await
        .unwrap()
        .is_empty());
}

// --- identities ---

pub async fn claim_release_and_identities_of(store: Arc<dyn Store>) {
    let a = CustomerId::new();
    let b = CustomerId::new();
    let key = "phone:+6581226418";

    assert_eq!(store.identity_owner(key).await.unwrap(), None);
    assert_eq!(store.claim_identity(key, a).await.unwrap(), Claim::Claimed);
    assert_eq!(store.identity_owner(key).await.unwrap(), Some(a));
    assert_eq!(
        store.claim_identity(key, a).await.unwrap(),
        Claim::OwnedBy(a)
    );
    assert_eq!(
        store.claim_identity(key, b).await.unwrap(),
        Claim::OwnedBy(a)
    );

    assert_eq!(
        store
            .claim_identity("email:ann@example.com", a)
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store.claim_identity("facebook:123", a).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store.claim_identity("anon:v1", b).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store.identities_of(a).await.unwrap(),
        vec!["email:ann@example.com", "facebook:123", "phone:+6581226418"]
    );
    assert_eq!(store.identities_of(b).await.unwrap(), vec!["anon:v1"]);
    assert!(store
        .identities_of(CustomerId::new())
        .await
        .unwrap()
        .is_empty());

    // Only the owner can release.
    store.release_identity(key, b).await.unwrap();
    assert_eq!(store.identity_owner(key).await.unwrap(), Some(a));
    store.release_identity(key, a).await.unwrap();
    assert_eq!(store.identity_owner(key).await.unwrap(), None);
    assert_eq!(
        store.identities_of(a).await.unwrap(),
        vec!["email:ann@example.com", "facebook:123"]
    );
    // Releasing a free key is harmless; then another customer can claim it.
    store.release_identity(key, a).await.unwrap();
    assert_eq!(store.claim_identity(key, b).await.unwrap(), Claim::Claimed);
    assert_eq!(
        store.identities_of(b).await.unwrap(),
        vec!["anon:v1", "phone:+6581226418"]
    );
}

pub async fn concurrent_claims_have_one_winner(store: Arc<dyn Store>) {
    let key = "phone:+6591234567";
    let contenders: Vec<CustomerId> = (0..50).map(|_| CustomerId::new()).collect();
    let tasks: Vec<_> = contenders
        .iter()
        .map(|&c| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { (c, store.claim_identity(key, c).await.unwrap()) })
        })
        .collect();
    let mut winners = Vec::new();
    let mut owners_reported = BTreeSet::new();
    for task in tasks {
        let (c, claim) = task.await.unwrap();
        match claim {
            Claim::Claimed => winners.push(c),
            Claim::OwnedBy(o) => {
                owners_reported.insert(o);
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claim wins: {winners:?}");
    let winner = winners[0];
    assert_eq!(owners_reported, BTreeSet::from([winner]));
    assert_eq!(store.identity_owner(key).await.unwrap(), Some(winner));
    assert_eq!(store.identities_of(winner).await.unwrap(), vec![key]);
    for c in contenders.into_iter().filter(|&c| c != winner) {
        assert!(store.identities_of(c).await.unwrap().is_empty());
    }
}

pub async fn delete_customer_cascades(store: Arc<dyn Store>) {
    let a = customer_at(at(0));
    let b = customer_at(at(1));
    store.insert_customer(&a).await.unwrap();
    store.insert_customer(&b).await.unwrap();
    for key in ["phone:+6581226418", "email:ann@example.com"] {
        assert_eq!(
            store.claim_identity(key, a.id).await.unwrap(),
            Claim::Claimed
        );
    }
    assert_eq!(
        store
            .claim_identity("phone:+6591234567", b.id)
            .await
            .unwrap(),
        Claim::Claimed
    );
    let a_items: Vec<Engagement> = (0..5).map(|i| sms(a.id, at(10 + i))).collect();
    let b_items: Vec<Engagement> = (0..3).map(|i| call(b.id, at(10 + i))).collect();
    store.insert_engagements(&a_items).await.unwrap();
    store.insert_engagements(&b_items).await.unwrap();
    let a_before = store.get_customer(a.id).await.unwrap().unwrap();
    assert_eq!(a_before.counts.sms, 5);

    assert_eq!(store.delete_customer(a.id).await.unwrap(), Some(a_before));
    assert_eq!(store.get_customer(a.id).await.unwrap(), None);
    assert_eq!(
        store.identity_owner("phone:+6581226418").await.unwrap(),
        None
    );
    assert_eq!(
        store.identity_owner("email:ann@example.com").await.unwrap(),
        None
    );
    assert!(store.identities_of(a.id).await.unwrap().is_empty());
    for e in &a_items {
        assert_eq!(store.get_engagement(e.id).await.unwrap(), None);
    }
    let filter = EngagementFilter::default();
    assert!(store
        .list_engagements(a.id, &filter, None, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids_of(&store.list_customers(None, None, 10).await.unwrap()),
        vec![b.id]
    );

    // The other customer is untouched.
    assert_eq!(
        store.identity_owner("phone:+6591234567").await.unwrap(),
        Some(b.id)
    );
    assert_eq!(
        store
            .list_engagements(b.id, &filter, None, 100)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        store.get_customer(b.id).await.unwrap().unwrap().counts.call,
        3
    );

    // Deleting again finds nothing; the identifiers are free to claim.
    assert_eq!(store.delete_customer(a.id).await.unwrap(), None);
    assert_eq!(
        store
            .claim_identity("phone:+6581226418", b.id)
            .await
            .unwrap(),
        Claim::Claimed
    );
    // A re-inserted engagement id is new again (the id index was cleared too).
    let again = Engagement {
        customer_id: b.id,
        ..a_items[0].clone()
    };
    assert_eq!(
        store.insert_engagements(&[again]).await.unwrap(),
        vec![EngagementInsert::Created]
    );
}

// --- engagements ---

pub async fn insert_engagements_counts_and_last_engagement_at(store: Arc<dyn Store>) {
    let a = customer_at(at(0));
    let b = customer_at(at(0));
    store.insert_customer(&a).await.unwrap();
    store.insert_customer(&b).await.unwrap();

    let batch = vec![
        sms(a.id, at(30)),
        call(a.id, at(10)),
        sms(b.id, at(5)),
        web(a.id, at(20)),
        sms(a.id, at(40)),
        call(b.id, at(7)),
    ];
    let results = store.insert_engagements(&batch).await.unwrap();
    assert_eq!(results, vec![EngagementInsert::Created; 6]);

    let sa = store.get_customer(a.id).await.unwrap().unwrap();
    assert_eq!((sa.counts.sms, sa.counts.call, sa.counts.web), (2, 1, 1));
    assert_eq!((sa.counts.whatsapp, sa.counts.email), (0, 0));
    assert_eq!(sa.last_engagement_at, Some(at(40)));
    // What `GET /v1/customers/{id}` shows changed: a client syncing with
    // `updated_since` must see it (the latest `recorded_at`).
    assert_eq!(sa.updated_at, at(40));
    let sb = store.get_customer(b.id).await.unwrap().unwrap();
    assert_eq!(
        (sb.counts.sms, sb.counts.call, sb.counts.total()),
        (1, 1, 2)
    );
    assert_eq!(sb.last_engagement_at, Some(at(7)));

    // An older engagement does not move last_engagement_at back.
    store.insert_engagements(&[sms(a.id, at(1))]).await.unwrap();
    let sa = store.get_customer(a.id).await.unwrap().unwrap();
    assert_eq!(sa.counts.sms, 3);
    assert_eq!(sa.last_engagement_at, Some(at(40)));
    // A newer one does.
    store
        .insert_engagements(&[web(a.id, at(99))])
        .await
        .unwrap();
    let sa = store.get_customer(a.id).await.unwrap().unwrap();
    assert_eq!(sa.counts.web, 2);
    assert_eq!(sa.last_engagement_at, Some(at(99)));

    for e in &batch {
        assert_eq!(store.get_engagement(e.id).await.unwrap(), Some(e.clone()));
    }
    assert_eq!(
        store.get_engagement(EngagementId::new()).await.unwrap(),
        None
    );
    assert_eq!(store.insert_engagements(&[]).await.unwrap(), vec![]);
}

pub async fn insert_engagements_reports_duplicates_once(store: Arc<dyn Store>) {
    let a = customer_at(at(0));
    store.insert_customer(&a).await.unwrap();
    let first = sms(a.id, at(10));
    let second = call(a.id, at(20));
    assert_eq!(
        store
            .insert_engagements(&[first.clone(), second.clone()])
            .await
            .unwrap(),
        vec![EngagementInsert::Created, EngagementInsert::Created]
    );

    // A retried upload: same ids (different content must not overwrite).
    let retried = Engagement {
        occurred_at: at(500),
        ..first.clone()
    };
    let third = web(a.id, at(30));
    let results = store
        .insert_engagements(&[retried, third.clone(), third.clone(), second.clone()])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            EngagementInsert::Duplicate { customer_id: a.id },
            EngagementInsert::Created,
            EngagementInsert::Duplicate { customer_id: a.id },
            EngagementInsert::Duplicate { customer_id: a.id },
        ]
    );
    let stored = store.get_customer(a.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.counts.sms, stored.counts.call, stored.counts.web),
        (1, 1, 1)
    );
    assert_eq!(stored.last_engagement_at, Some(at(30)));
    assert_eq!(
        store.get_engagement(first.id).await.unwrap(),
        Some(first.clone())
    );
    let timeline = store
        .list_engagements(a.id, &EngagementFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(
        engagement_ids(&timeline),
        vec![third.id, second.id, first.id]
    );

    // A duplicate naming another customer reports the customer it belongs to.
    let b = customer_at(at(0));
    store.insert_customer(&b).await.unwrap();
    let moved = Engagement {
        customer_id: b.id,
        ..first.clone()
    };
    assert_eq!(
        store.insert_engagements(&[moved]).await.unwrap(),
        vec![EngagementInsert::Duplicate { customer_id: a.id }]
    );
    assert_eq!(
        store
            .get_customer(b.id)
            .await
            .unwrap()
            .unwrap()
            .counts
            .total(),
        0
    );
}

pub async fn insert_engagements_for_a_missing_customer(store: Arc<dyn Store>) {
    let ghost = CustomerId::new();
    let e = sms(ghost, at(1));
    assert_eq!(
        store
            .insert_engagements(std::slice::from_ref(&e))
            .await
            .unwrap(),
        vec![EngagementInsert::Created]
    );
    assert_eq!(
        store.get_customer(ghost).await.unwrap(),
        None,
        "no customer is conjured up"
    );
    assert_eq!(store.get_engagement(e.id).await.unwrap(), Some(e));
}

pub async fn list_engagements_newest_first_with_filters_and_paging(store: Arc<dyn Store>) {
    let a = customer_at(at(0));
    let other = customer_at(at(0));
    store.insert_customer(&a).await.unwrap();
    store.insert_customer(&other).await.unwrap();
    let mut items = Vec::new();
    for i in 0..30i64 {
        let when = at(1000 + (i * 37) % 30 * 10);
        items.push(match i % 3 {
            0 => sms(a.id, when),
            1 => call(a.id, when),
            _ => web(a.id, when),
        });
    }
    // Pre-epoch times sort too.
    items.push(sms(a.id, t0() - Duration::days(365 * 60)));
    store.insert_engagements(&items[..10]).await.unwrap();
    store.insert_engagements(&items[10..]).await.unwrap();
    store
        .insert_engagements(&[sms(other.id, at(1100)), sms(other.id, at(5000))])
        .await
        .unwrap();

    let all = store
        .list_engagements(a.id, &EngagementFilter::default(), None, 100)
        .await
        .unwrap();
    let expected = timeline_sorted(items.clone());
    assert_eq!(all, expected);
    assert_eq!(
        all.last().map(|e| e.occurred_at),
        Some(t0() - Duration::days(365 * 60))
    );

    let top = store
        .list_engagements(a.id, &EngagementFilter::default(), None, 3)
        .await
        .unwrap();
    assert_eq!(engagement_ids(&top), engagement_ids(&expected[..3]));

    // Cursor paging: every item once, in order.
    for page in [1, 4, 7, 31, 50] {
        let paged = all_pages(&store, a.id, &EngagementFilter::default(), page).await;
        assert_eq!(
            engagement_ids(&paged),
            engagement_ids(&expected),
            "page size {page}"
        );
    }

    // Channel filter.
    let calls = EngagementFilter {
        channel: Some(Channel::Call),
        ..Default::default()
    };
    let got = store
        .list_engagements(a.id, &calls, None, 100)
        .await
        .unwrap();
    let want: Vec<_> = expected
        .iter()
        .filter(|e| e.channel() == Channel::Call)
        .cloned()
        .collect();
    assert_eq!(want.len(), 10);
    assert_eq!(got, want);
    assert_eq!(
        engagement_ids(&all_pages(&store, a.id, &calls, 3).await),
        engagement_ids(&want)
    );
    let none = EngagementFilter {
        channel: Some(Channel::Whatsapp),
        ..Default::default()
    };
    assert!(store
        .list_engagements(a.id, &none, None, 100)
        .await
        .unwrap()
        .is_empty());

    // since is inclusive, until exclusive.
    let window = EngagementFilter {
        channel: None,
        since: Some(at(1050)),
        until: Some(at(1200)),
    };
    let got = store
        .list_engagements(a.id, &window, None, 100)
        .await
        .unwrap();
    let want: Vec<_> = expected
        .iter()
        .filter(|e| e.occurred_at >= at(1050) && e.occurred_at < at(1200))
        .cloned()
        .collect();
    assert_eq!(want.len(), 15);
    assert_eq!(want.first().map(|e| e.occurred_at), Some(at(1190)));
    assert_eq!(want.last().map(|e| e.occurred_at), Some(at(1050)));
    assert_eq!(got, want);
    assert_eq!(
        engagement_ids(&all_pages(&store, a.id, &window, 4).await),
        engagement_ids(&want)
    );

    // All three filters, paged.
    let sms_window = EngagementFilter {
        channel: Some(Channel::Sms),
        since: Some(at(1050)),
        until: Some(at(1200)),
    };
    let want: Vec<_> = want
        .iter()
        .filter(|e| e.channel() == Channel::Sms)
        .cloned()
        .collect();
    assert!(!want.is_empty());
    assert_eq!(
        engagement_ids(&all_pages(&store, a.id, &sms_window, 2).await),
        engagement_ids(&want)
    );

    // A cursor outside the window, above it: the window still applies.
    let above = EngagementCursor {
        occurred_at: at(9999),
        id: EngagementId(Uuid::max()),
    };
    let got = store
        .list_engagements(a.id, &window, Some(above), 100)
        .await
        .unwrap();
    assert_eq!(got.len(), 15);

    // Nothing for a customer without engagements.
    let empty = customer_at(at(0));
    assert!(store
        .list_engagements(empty.id, &EngagementFilter::default(), None, 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn list_engagements_ties_are_ordered_by_id_desc(store: Arc<dyn Store>) {
    let a = customer_at(at(0));
    store.insert_customer(&a).await.unwrap();
    let mut items: Vec<Engagement> = (0..12).map(|_| sms(a.id, at(100))).collect();
    items.extend((0..4).map(|_| call(a.id, at(200))));
    items.extend((0..4).map(|_| call(a.id, at(50))));
    store.insert_engagements(&items).await.unwrap();

    let expected = timeline_sorted(items);
    let got = store
        .list_engagements(a.id, &EngagementFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(engagement_ids(&got), engagement_ids(&expected));
    for pair in got.windows(2) {
        if pair[0].occurred_at == pair[1].occurred_at {
            assert!(pair[0].id > pair[1].id, "ties: larger id first");
        }
    }
    // Paging through a tie with a cursor in the middle of it.
    for page in [1, 2, 5] {
        let paged = all_pages(&store, a.id, &EngagementFilter::default(), page).await;
        assert_eq!(
            engagement_ids(&paged),
            engagement_ids(&expected),
            "page size {page}"
        );
    }
}

// --- users ---

pub async fn users_insert_get_update_conflicts(store: Arc<dyn Store>) {
    let ann = user("ann@corp.example");
    let bob = user("bob@corp.example");
    store.insert_user(&ann, &[]).await.unwrap();
    store.insert_user(&bob, &[]).await.unwrap();

    assert_eq!(store.get_user(ann.id).await.unwrap(), Some(ann.clone()));
    assert_eq!(store.get_user(UserId::new()).await.unwrap(), None);
    assert_eq!(
        store
            .get_user_by_email(&email("bob@corp.example"))
            .await
            .unwrap(),
        Some(bob.clone())
    );
    assert_eq!(
        store
            .get_user_by_email(&email("nobody@corp.example"))
            .await
            .unwrap(),
        None
    );

    // Email taken by another user; id taken.
    let dup_email = User {
        id: UserId::new(),
        ..user("ann@corp.example")
    };
    assert!(matches!(
        store.insert_user(&dup_email, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    let dup_id = User {
        id: ann.id,
        ..user("carol@corp.example")
    };
    assert!(matches!(
        store.insert_user(&dup_id, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .get_user_by_email(&email("carol@corp.example"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.count_users().await.unwrap(), 2);

    // Update: other fields, then a new email (the old one is freed).
    let mut changed = ann.clone();
    changed.name = "Ann T.".into();
    changed.role = Role::Admin;
    changed.active = false;
    changed.updated_at = at(60);
    store.update_user(&changed, &[]).await.unwrap();
    assert_eq!(store.get_user(ann.id).await.unwrap(), Some(changed.clone()));
    changed.email = email("ann.tan@corp.example");
    store.update_user(&changed, &[]).await.unwrap();
    assert_eq!(
        store
            .get_user_by_email(&email("ann.tan@corp.example"))
            .await
            .unwrap(),
        Some(changed.clone())
    );
    assert_eq!(
        store
            .get_user_by_email(&email("ann@corp.example"))
            .await
            .unwrap(),
        None
    );
    let carol = User {
        id: UserId::new(),
        ..user("ann@corp.example")
    };
    store.insert_user(&carol, &[]).await.unwrap();

    // Update to a taken email: Conflict and nothing changes.
    let mut stolen = changed.clone();
    stolen.email = email("bob@corp.example");
    stolen.name = "Thief".into();
    assert!(matches!(
        store.update_user(&stolen, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_user(ann.id).await.unwrap(), Some(changed.clone()));
    assert_eq!(
        store
            .get_user_by_email(&email("bob@corp.example"))
            .await
            .unwrap(),
        Some(bob)
    );

    let ghost = user("ghost@corp.example");
    assert_eq!(
        store.update_user(&ghost, &[]).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store
            .get_user_by_email(&email("ghost@corp.example"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.count_users().await.unwrap(), 3);
}

pub async fn users_list_pages_and_count(store: Arc<dyn Store>) {
    assert_eq!(store.count_users().await.unwrap(), 0);
    assert!(store.list_users(None, 10).await.unwrap().is_empty());
    let mut users: Vec<User> = (0..11)
        .map(|i| user(&format!("user{i}@corp.example")))
        .collect();
    for u in &users {
        store.insert_user(u, &[]).await.unwrap();
    }
    users.sort_by_key(|u| u.id);
    assert_eq!(store.count_users().await.unwrap(), 11);
    assert_eq!(store.list_users(None, 100).await.unwrap(), users);

    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let page = store.list_users(after, 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.into_iter().map(|u| u.id));
    }
    assert_eq!(seen, users.iter().map(|u| u.id).collect::<Vec<_>>());
    assert_eq!(
        store.list_users(Some(users[10].id), 4).await.unwrap(),
        vec![]
    );
}

// --- refresh tokens ---

pub async fn refresh_token_is_used_once(store: Arc<dyn Store>) {
    let u = UserId::new();
    let token = refresh("hash-1", u, "family-1");
    store.insert_refresh_token(&token).await.unwrap();
    assert_eq!(
        store.get_refresh_token("hash-1").await.unwrap(),
        Some(token.clone())
    );
    assert_eq!(store.get_refresh_token("hash-x").await.unwrap(), None);

    assert!(store.use_refresh_token("hash-1").await.unwrap());
    assert!(!store.use_refresh_token("hash-1").await.unwrap());
    assert!(!store.use_refresh_token("hash-x").await.unwrap());
    let stored = store.get_refresh_token("hash-1").await.unwrap().unwrap();
    assert!(stored.used);
    assert!(!stored.revoked);
    assert_eq!(
        stored,
        RefreshToken {
            used: true,
            ..token
        }
    );
}

pub async fn refresh_token_concurrent_use_has_one_winner(store: Arc<dyn Store>) {
    store
        .insert_refresh_token(&refresh("hash-race", UserId::new(), "f"))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.use_refresh_token("hash-race").await.unwrap() })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        if task.await.unwrap() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
}

pub async fn refresh_tokens_revoked_by_family_and_user(store: Arc<dyn Store>) {
    let ann = UserId::new();
    let bob = UserId::new();
    for (hash, user, family) in [
        ("a1", ann, "fam-a"),
        ("a2", ann, "fam-a"),
        ("a3", ann, "fam-a2"),
        ("b1", bob, "fam-b"),
        ("b2", bob, "fam-b2"),
    ] {
        store
            .insert_refresh_token(&refresh(hash, user, family))
            .await
            .unwrap();
    }
    // A family whose name is a prefix of another's is its own family.
    store
        .insert_refresh_token(&refresh("x1", bob, "fam"))
        .await
        .unwrap();

    store.revoke_refresh_family("fam-a").await.unwrap();
    let revoked = |h: &'static str| {
        let store = Arc::clone(&store);
        async move { store.get_refresh_token(h).await.unwrap().unwrap().revoked }
    };
    assert!(revoked("a1").await);
    assert!(revoked("a2").await);
    assert!(!revoked("a3").await);
    assert!(!revoked("b1").await);
    assert!(!revoked("x1").await);
    assert!(
        !store.use_refresh_token("a1").await.unwrap(),
        "a revoked token cannot be used"
    );
    assert!(!store.get_refresh_token("a1").await.unwrap().unwrap().used);

    store.revoke_user_refresh_tokens(bob).await.unwrap();
    assert!(revoked("b1").await);
    assert!(revoked("b2").await);
    assert!(revoked("x1").await);
    assert!(!revoked("a3").await);
    assert!(!store.use_refresh_token("b2").await.unwrap());
    assert!(store.use_refresh_token("a3").await.unwrap());

    // Revoking is idempotent and unknown names are fine.
    store.revoke_refresh_family("fam-a").await.unwrap();
    store.revoke_refresh_family("no-such-family").await.unwrap();
    store
        .revoke_user_refresh_tokens(UserId::new())
        .await
        .unwrap();
    assert!(revoked("a1").await);
}

// --- API keys ---

pub async fn api_keys_insert_get_list_revoke(store: Arc<dyn Store>) {
    assert!(store.list_api_keys().await.unwrap().is_empty());
    let late = api_key("website", "hash-late", at(20));
    let early = api_key("importer", "hash-early", at(10));
    store.insert_api_key(&late).await.unwrap();
    store.insert_api_key(&early).await.unwrap();

    assert_eq!(
        store.get_api_key_by_hash("hash-late").await.unwrap(),
        Some(late.clone())
    );
    assert_eq!(store.get_api_key_by_hash("hash-none").await.unwrap(), None);
    assert_eq!(
        store.list_api_keys().await.unwrap(),
        vec![early.clone(), late.clone()]
    );

    assert!(store.revoke_api_key(late.id, at(30)).await.unwrap());
    assert!(!store.revoke_api_key(late.id, at(40)).await.unwrap());
    assert!(!store.revoke_api_key(ApiKeyId::new(), at(40)).await.unwrap());
    let revoked = store
        .get_api_key_by_hash("hash-late")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(at(30)));
    assert_eq!(
        store.list_api_keys().await.unwrap(),
        vec![
            early,
            ApiKey {
                revoked_at: Some(at(30)),
                ..late
            }
        ],
        "revoked keys are listed too"
    );
}

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
        customer_id: CustomerId::new(),
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
    let b1 = signal(bob, at(20));
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

// --- the service over the store ---

pub async fn service_concurrent_records_of_one_phone_make_one_customer(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    let sg = Region::parse("SG").ok();
    let formats = [
        "+65 8122 6418",
        "(065) 8122-6418",
        "0065 81226418",
        "81226418",
    ];
    let parsed: BTreeSet<PhoneNumber> = formats
        .iter()
        .map(|raw| PhoneNumber::parse(raw, sg).unwrap())
        .collect();
    assert_eq!(parsed.len(), 1, "all formats name one number: {parsed:?}");
    let number = phone("+6581226418");

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let crm = crm.clone();
            let raw = formats[i % formats.len()];
            tokio::spawn(async move {
                let identifier = Identifier::Phone(PhoneNumber::parse(raw, sg).unwrap());
                crm.record_engagement(NewEngagement {
                    target: EngagementTarget::Identify {
                        name: None,
                        identifiers: vec![identifier],
                    },
                    occurred_at: at(i as i64),
                    source: Source::default(),
                    detail: EngagementDetail::Sms {
                        direction: Direction::Inbound,
                        body: format!("m{i}"),
                    },
                })
                .await
            })
        })
        .collect();
    let mut customers = BTreeSet::new();
    let mut created = 0;
    for task in tasks {
        let recorded = task.await.unwrap().unwrap();
        assert!(!recorded.duplicate);
        customers.insert(recorded.customer_id);
        if recorded.customer_created {
            created += 1;
        }
    }
    assert_eq!(
        customers.len(),
        1,
        "one customer for one phone: {customers:?}"
    );
    assert_eq!(created, 1);
    let id = customers.into_iter().next().unwrap();

    let listed = store.list_customers(None, None, 1000).await.unwrap();
    assert_eq!(ids_of(&listed), vec![id], "losers leave no customer behind");
    let c = &listed[0];
    assert_eq!(c.counts.sms, 200);
    assert_eq!(c.counts.total(), 200);
    assert_eq!(c.last_engagement_at, Some(at(199)));
    assert_eq!(c.phones, vec![number.clone()]);
    assert_eq!(
        store.identities_of(id).await.unwrap(),
        vec![format!("phone:{number}")]
    );
    assert_eq!(
        store.identity_owner("phone:+6581226418").await.unwrap(),
        Some(id)
    );
    let timeline = store
        .list_engagements(id, &EngagementFilter::default(), None, 1000)
        .await
        .unwrap();
    assert_eq!(timeline.len(), 200);
}

pub async fn service_create_with_owned_email_attaches_the_phone(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    let em = Identifier::Email(email("Ann@Example.com"));
    let (ann, created) = crm
        .create_customer(CustomerInput {
            name: Some("Ann".into()),
            identifiers: vec![em.clone()],
            status: None,
        })
        .await
        .unwrap();
    assert!(created);

    let ph = Identifier::Phone(phone("+65 8122 6418"));
    let (found, created) = crm
        .create_customer(CustomerInput {
            name: Some("Someone Else".into()),
            identifiers: vec![em, ph],
            status: None,
        })
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(found.id, ann.id);
    assert_eq!(
        found.name.as_deref(),
        Some("Ann"),
        "an existing name is kept"
    );
    assert_eq!(found.emails, vec![email("ann@example.com")]);
    assert_eq!(found.phones, vec![phone("+6581226418")]);
    assert_eq!(store.get_customer(ann.id).await.unwrap(), Some(found));
    assert_eq!(
        store.identities_of(ann.id).await.unwrap(),
        vec!["email:ann@example.com", "phone:+6581226418"]
    );
    assert_eq!(store.list_customers(None, None, 10).await.unwrap().len(), 1);
}

pub async fn service_delete_frees_the_identifiers(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    let em = Identifier::Email(email("ann@example.com"));
    let ph = Identifier::Phone(phone("+6581226418"));
    let (a, _) = crm
        .create_customer(CustomerInput {
            identifiers: vec![em.clone(), ph.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let recorded = crm
        .record_engagement(NewEngagement {
            target: EngagementTarget::Identify {
                name: None,
                identifiers: vec![ph.clone()],
            },
            occurred_at: at(1),
            source: Source::default(),
            detail: EngagementDetail::Sms {
                direction: Direction::Outbound,
                body: "hi".into(),
            },
        })
        .await
        .unwrap();
    assert_eq!(recorded.customer_id, a.id);

    crm.delete_customer(a.id).await.unwrap();
    assert!(matches!(
        crm.delete_customer(a.id).await,
        Err(CrmError::CustomerNotFound(_))
    ));
    assert_eq!(store.identity_owner(&em.key()).await.unwrap(), None);
    assert_eq!(store.identity_owner(&ph.key()).await.unwrap(), None);
    assert_eq!(store.get_engagement(recorded.id).await.unwrap(), None);

    let (again, created) = crm
        .create_customer(CustomerInput {
            identifiers: vec![ph.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(created);
    assert_ne!(again.id, a.id);
    assert_eq!(
        store.identity_owner(&ph.key()).await.unwrap(),
        Some(again.id)
    );
    assert_eq!(again.counts.total(), 0);
}
