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
//! The checks named `service_*` run the linking logic of
//! [`crm_models::service::Crm`] over the adapter, because its race-freedom rests
//! on the store's.
//!
//! # Layout
//! This file holds the harness, the shared helpers and the check of the store
//! itself (`ping_and_kind`); one file per aggregate holds its checks:
//! `customers` (customers and identities), `engagements`, `staff` (users,
//! refresh tokens, API keys), `devices` (devices and call signals); then
//! `linking` (merges, suggestions and the service's linking), `service` (the
//! service over the store), `write_model` (events, transactions, erasure,
//! repair) and `tx_ops` (single-step transactions for the checks).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

mod analytics;
mod confirm;
mod customers;
mod devices;
mod engagements;
mod feed;
mod imports;
mod linking;
mod service;
mod staff;
pub mod tx_ops;
mod webhooks;
pub mod write_model;

pub use analytics::*;
pub use confirm::*;
pub use customers::*;
pub use devices::*;
pub use engagements::*;
pub use feed::*;
pub use imports::*;
pub use linking::*;
pub use service::*;
pub use staff::*;
pub use tx_ops::TxOps;
pub use webhooks::*;
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
use crm_models::staff::{ApiKey, KeyScope, RefreshToken, Role, User};
use crm_models::store::{
    customer_record_hash, Claim, CustomerCursor, EngagementCursor, EngagementFilter,
    EngagementInsert, Store, StoreError,
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
                customers_with_phone_lists_every_profile_with_it,
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
                customers_with_latest_engagements_page_in_id_order,
                customer_record_hashes_are_those_of_the_records,
                users_insert_get_update_conflicts,
                users_list_pages_and_count,
                refresh_token_is_used_once,
                refresh_token_concurrent_use_has_one_winner,
                refresh_tokens_revoked_by_family_and_user,
                revoked_sessions_are_recorded_and_pruned,
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
                dismissed_suggestions_are_not_suggested_again,
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
                service_confirm_create_naming_owned_identifiers_changes_nothing,
                service_confirmed_create_merges_as_the_user,
                service_confirm_patch_with_a_taken_phone_changes_nothing,
                service_confirmed_patch_merges_into_the_edited_customer,
                service_writes_on_a_merged_id_are_refused_and_reads_follow,
                service_concurrent_confirm_creates_of_one_new_phone_never_merge,
                service_confirm_patch_racing_a_create_for_one_phone_never_merges,
                feed_reads_in_commit_order_pages_after_last_and_filters, feed_has_no_page_after_a_cursor_it_does_not_hold, feed_puts_an_event_committed_late_after_the_cursor,
                imports_insert_get_and_idempotency_key,
                import_chunks_keep_rejected_rows_once_and_resume_state,
                webhooks_insert_get_update_list_delete,
                webhook_dispatch_is_idempotent_and_moves_the_cursor,
                webhook_claims_hold_a_lease_and_come_back_when_it_ends,
                webhook_failing_too_long_is_disabled_with_its_event,
                webhook_deliveries_page_requeue_and_prune,
                analytics_count_a_scripted_day_per_agent_channel_and_day,
                analytics_count_each_event_once,
                analytics_days_follow_the_configured_zone,
                analytics_forget_an_erased_customer_but_keep_the_counts,
                analytics_rebuild_gives_the_same_figures_and_verify_finds_drift,
                analytics_count_on_from_the_oldest_event_when_the_cursor_expired,
                analytics_first_responses_count_for_the_agent_who_answered,
                analytics_reads_see_late_writes_to_past_days,
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

fn crm(store: Arc<dyn Store>) -> Crm {
    Crm::new(store)
}

fn ids_of(customers: &[Customer]) -> Vec<CustomerId> {
    customers.iter().map(|c| c.id).collect()
}

fn engagement_ids(items: &[Engagement]) -> Vec<EngagementId> {
    items.iter().map(|e| e.id).collect()
}

// --- the store itself ---

pub async fn ping_and_kind(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    assert!(
        matches!(store.kind(), "embedded" | "mongo"),
        "kind is {}",
        store.kind()
    );
}
