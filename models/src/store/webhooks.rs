//! [`WebhookStore`]: webhook endpoints, the dispatcher's cursor and the
//! deliveries (see [`crate::webhook`]).

use async_trait::async_trait;
use uuid::Uuid;

use super::StoreResult;
use crate::time::Timestamp;
use crate::webhook::{AttemptResult, ClaimRequest, Delivery, DeliveryCursor, Requeue, Webhook};

/// Webhook endpoints and their durable deliveries.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// `Conflict` when the id exists.
    async fn insert_webhook(&self, webhook: &Webhook) -> StoreResult<()>;
    async fn get_webhook(&self, id: Uuid) -> StoreResult<Option<Webhook>>;
    /// Every endpoint, by creation time.
    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>>;
    /// Replaces the endpoint; `NotFound` when missing.
    async fn update_webhook(&self, webhook: &Webhook) -> StoreResult<()>;
    /// Deletes the endpoint and its deliveries; false when there was none.
    async fn delete_webhook(&self, id: Uuid) -> StoreResult<bool>;

    /// The last event of the log the dispatcher has handled (feed order).
    async fn webhook_cursor(&self) -> StoreResult<Option<Uuid>>;
    /// In one transaction: creates each delivery that does not exist yet
    /// (an existing id is left as it is) and moves the dispatcher's cursor
    /// from `from` to `to`. False, with nothing changed, when the cursor is
    /// not `from` any more (another dispatcher moved it).
    async fn dispatch_deliveries(
        &self,
        from: Option<Uuid>,
        to: Uuid,
        deliveries: &[Delivery],
    ) -> StoreResult<bool>;

    /// Claims pending deliveries due at `request.now`, oldest due first, and
    /// locks them until [`ClaimRequest::locked_until`]; two claims never take
    /// the same delivery while its lease runs.
    async fn claim_deliveries(&self, request: &ClaimRequest) -> StoreResult<Vec<Delivery>>;
    /// Records the ends of attempts (see [`AttemptResult`]), in order, one
    /// transaction where the adapter can; a delivery that is gone (its
    /// endpoint deleted) is skipped.
    async fn finish_attempts(&self, results: &[AttemptResult]) -> StoreResult<()>;

    /// [`WebhookStore::finish_attempts`] of one.
    async fn finish_attempt(&self, result: &AttemptResult) -> StoreResult<()> {
        self.finish_attempts(std::slice::from_ref(result)).await
    }
    async fn get_delivery(&self, id: Uuid) -> StoreResult<Option<Delivery>>;
    /// An endpoint's deliveries, newest first (ties: larger id first),
    /// strictly after the cursor, at most `limit`.
    async fn list_deliveries(
        &self,
        webhook: Uuid,
        after: Option<DeliveryCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>>;
    /// Makes the chosen deliveries of `webhook` pending again, due at `now`;
    /// how many changed. A delivery being attempted right now is left alone.
    async fn requeue_deliveries(
        &self,
        webhook: Uuid,
        which: Requeue,
        now: Timestamp,
    ) -> StoreResult<u64>;
    /// Deletes finished deliveries created before `before`; how many went.
    async fn prune_deliveries(&self, before: Timestamp) -> StoreResult<u64>;
}
