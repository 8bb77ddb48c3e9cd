//! Webhook endpoints, the dispatcher's cursor and deliveries ([`WebhookStore`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Duration as Span;
use uuid::Uuid;

use crm_models::event::{DomainEvent, EventEnvelope};
use crm_models::store::{Store, StoreError};
use crm_models::time::{self, Timestamp};
use crm_models::webhook::{
    delivery_id, AttemptResult, ClaimRequest, Delivery, DeliveryCursor, DeliveryStatus,
    EndpointOutcome, Requeue, Webhook, WebhookSecret,
};

fn endpoint(created_at: Timestamp) -> Webhook {
    Webhook {
        id: Uuid::now_v7(),
        url: "https://example.com/hooks".into(),
        types: vec![],
        description: Some("test".into()),
        enabled: true,
        disabled_reason: None,
        failing_since: None,
        secrets: vec![WebhookSecret {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            expires_at: None,
        }],
        created_at,
        updated_at: created_at,
    }
}

fn event() -> EventEnvelope {
    EventEnvelope::new(None, DomainEvent::CustomerCreated {})
}

fn claim(now: Timestamp, limit: usize, per_webhook: usize) -> ClaimRequest {
    ClaimRequest {
        now,
        lease: Duration::from_secs(30),
        limit,
        per_webhook,
        in_flight: HashMap::new(),
    }
}

fn ids(ds: &[Delivery]) -> Vec<Uuid> {
    let mut v: Vec<Uuid> = ds.iter().map(|d| d.id).collect();
    v.sort();
    v
}

pub async fn webhooks_insert_get_update_list_delete(store: Arc<dyn Store>) {
    let now = time::now();
    let a = endpoint(now);
    let b = endpoint(now + Span::seconds(1));
    store.insert_webhook(&a).await.unwrap();
    store.insert_webhook(&b).await.unwrap();
    assert!(matches!(
        store.insert_webhook(&a).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_webhook(a.id).await.unwrap(), Some(a.clone()));
    let listed: Vec<Uuid> = store
        .list_webhooks()
        .await
        .unwrap()
        .iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(listed, vec![a.id, b.id]);

    let mut changed = a.clone();
    changed.url = "https://example.org/other".into();
    changed.types = vec!["customer.updated".into()];
    store.update_webhook(&changed).await.unwrap();
    assert_eq!(store.get_webhook(a.id).await.unwrap(), Some(changed));
    let missing = endpoint(now);
    assert_eq!(
        store.update_webhook(&missing).await,
        Err(StoreError::NotFound)
    );

    // Deleting takes the endpoint's deliveries with it.
    let e = event();
    let d = Delivery::new(a.id, &e, now);
    assert!(store
        .dispatch_deliveries(None, e.id, std::slice::from_ref(&d))
        .await
        .unwrap());
    assert!(store.delete_webhook(a.id).await.unwrap());
    assert!(!store.delete_webhook(a.id).await.unwrap());
    assert_eq!(store.get_webhook(a.id).await.unwrap(), None);
    assert_eq!(store.get_delivery(d.id).await.unwrap(), None);
    assert!(store
        .claim_deliveries(&claim(now + Span::seconds(1), 10, 10))
        .await
        .unwrap()
        .is_empty());
}

pub async fn webhook_dispatch_is_idempotent_and_moves_the_cursor(store: Arc<dyn Store>) {
    let now = time::now();
    let w = endpoint(now);
    store.insert_webhook(&w).await.unwrap();
    assert_eq!(store.webhook_cursor().await.unwrap(), None);
    let (e1, e2) = (event(), event());
    let d1 = Delivery::new(w.id, &e1, now);
    assert_eq!(d1.id, delivery_id(w.id, e1.id));
    assert!(store
        .dispatch_deliveries(None, e1.id, std::slice::from_ref(&d1))
        .await
        .unwrap());
    assert_eq!(store.webhook_cursor().await.unwrap(), Some(e1.id));

    // A dispatcher that still believes the cursor is at the start changes
    // nothing.
    let d2 = Delivery::new(w.id, &e2, now);
    assert!(!store
        .dispatch_deliveries(None, e2.id, std::slice::from_ref(&d2))
        .await
        .unwrap());
    assert_eq!(store.webhook_cursor().await.unwrap(), Some(e1.id));
    assert_eq!(store.get_delivery(d2.id).await.unwrap(), None);

    // The same page again (after a crash) creates nothing twice and leaves
    // a delivery that was attempted as it is.
    let claimed = store.claim_deliveries(&claim(now, 10, 10)).await.unwrap();
    assert_eq!(ids(&claimed), vec![d1.id]);
    let mut done = claimed[0].clone();
    done.status = DeliveryStatus::Succeeded;
    done.attempts = 1;
    done.next_attempt_at = None;
    store
        .finish_attempt(&AttemptResult {
            delivery: done,
            endpoint: EndpointOutcome::Succeeded,
        })
        .await
        .unwrap();
    let again = Delivery::new(w.id, &e1, now + Span::seconds(5));
    assert!(store
        .dispatch_deliveries(Some(e1.id), e2.id, &[again, d2.clone()])
        .await
        .unwrap());
    let kept = store.get_delivery(d1.id).await.unwrap().unwrap();
    assert_eq!(kept.status, DeliveryStatus::Succeeded);
    assert_eq!(kept.attempts, 1);
    assert_eq!(kept.created_at, now);
    assert_eq!(store.webhook_cursor().await.unwrap(), Some(e2.id));
    let listed = store.list_deliveries(w.id, None, 10).await.unwrap();
    assert_eq!(ids(&listed), ids(&[d1, d2]));
}

pub async fn webhook_claims_hold_a_lease_and_come_back_when_it_ends(store: Arc<dyn Store>) {
    let now = time::now();
    let (w1, w2) = (endpoint(now), endpoint(now));
    store.insert_webhook(&w1).await.unwrap();
    store.insert_webhook(&w2).await.unwrap();
    let events: Vec<EventEnvelope> = (0..4).map(|_| event()).collect();
    let mut deliveries: Vec<Delivery> = events
        .iter()
        .map(|e| Delivery::new(w1.id, e, now))
        .collect();
    deliveries.push(Delivery::new(w2.id, &events[0], now));
    let last = events[3].id;
    assert!(store
        .dispatch_deliveries(None, last, &deliveries)
        .await
        .unwrap());

    // Nothing is due before it was created.
    assert!(store
        .claim_deliveries(&claim(now - Span::seconds(1), 10, 10))
        .await
        .unwrap()
        .is_empty());

    // At most two per endpoint, counting those in flight: w1 has one.
    let mut request = claim(now, 10, 2);
    request.in_flight.insert(w1.id, 1);
    let first = store.claim_deliveries(&request).await.unwrap();
    let per: HashMap<Uuid, usize> = first.iter().fold(HashMap::new(), |mut m, d| {
        *m.entry(d.webhook_id).or_default() += 1;
        m
    });
    assert_eq!(per.get(&w1.id), Some(&1));
    assert_eq!(per.get(&w2.id), Some(&1));
    for d in &first {
        assert_eq!(d.locked_until, Some(request.locked_until()));
    }

    // Concurrent claims never take the same delivery.
    let (ra, rb) = (claim(now, 10, 10), claim(now, 10, 10));
    let (a, b) = tokio::join!(store.claim_deliveries(&ra), store.claim_deliveries(&rb));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut both = ids(&a);
    both.extend(ids(&b));
    both.sort();
    both.dedup();
    assert_eq!(
        both.len(),
        a.len() + b.len(),
        "a delivery was claimed twice"
    );
    assert_eq!(both.len(), 3);
    assert!(store
        .claim_deliveries(&claim(now + Span::seconds(29), 10, 10))
        .await
        .unwrap()
        .is_empty());

    // The worker died: when the lease ends, all of them come back.
    let back = store
        .claim_deliveries(&claim(now + Span::seconds(31), 10, 10))
        .await
        .unwrap();
    assert_eq!(ids(&back), ids(&deliveries));

    // A failed attempt is due again at its next attempt, not before.
    let mut failed = back[0].clone();
    failed.attempts = 1;
    failed.last_status_code = Some(503);
    failed.last_error = Some("HTTP 503".into());
    failed.next_attempt_at = Some(now + Span::seconds(100));
    store
        .finish_attempt(&AttemptResult {
            delivery: failed.clone(),
            endpoint: EndpointOutcome::Unchanged,
        })
        .await
        .unwrap();
    let stored = store.get_delivery(failed.id).await.unwrap().unwrap();
    assert_eq!(stored.locked_until, None);
    assert_eq!(stored.last_status_code, Some(503));
    assert!(store
        .claim_deliveries(&claim(now + Span::seconds(99), 10, 10))
        .await
        .unwrap()
        .iter()
        .all(|d| d.id != failed.id));
    let due = store
        .claim_deliveries(&claim(now + Span::seconds(100), 10, 10))
        .await
        .unwrap();
    assert!(due.iter().any(|d| d.id == failed.id));
}

pub async fn webhook_failing_too_long_is_disabled_with_its_event(store: Arc<dyn Store>) {
    let t = time::now();
    let w = endpoint(t);
    store.insert_webhook(&w).await.unwrap();
    let e = event();
    let d = Delivery::new(w.id, &e, t);
    assert!(store
        .dispatch_deliveries(None, e.id, std::slice::from_ref(&d))
        .await
        .unwrap());
    let mut attempt = store.claim_deliveries(&claim(t, 1, 1)).await.unwrap()[0].clone();
    attempt.attempts = 1;
    attempt.last_attempt_at = Some(t);
    attempt.next_attempt_at = Some(t + Span::seconds(5));
    // The first failure starts the count; it is not old enough to disable.
    store
        .finish_attempt(&AttemptResult {
            delivery: attempt.clone(),
            endpoint: EndpointOutcome::Failed {
                disable_if_failing_since: t - Span::days(5),
            },
        })
        .await
        .unwrap();
    let stored = store.get_webhook(w.id).await.unwrap().unwrap();
    assert_eq!(stored.failing_since, Some(t));
    assert!(stored.enabled);
    // A success clears it.
    store
        .finish_attempt(&AttemptResult {
            delivery: attempt.clone(),
            endpoint: EndpointOutcome::Succeeded,
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .get_webhook(w.id)
            .await
            .unwrap()
            .unwrap()
            .failing_since,
        None
    );
    // Failing since t, and five days later still failing: disabled, with
    // its event in the log.
    for at in [t, t + Span::days(5)] {
        attempt.last_attempt_at = Some(at);
        store
            .finish_attempt(&AttemptResult {
                delivery: attempt.clone(),
                endpoint: EndpointOutcome::Failed {
                    disable_if_failing_since: at - Span::days(5),
                },
            })
            .await
            .unwrap();
    }
    let stored = store.get_webhook(w.id).await.unwrap().unwrap();
    assert!(!stored.enabled);
    assert!(stored.disabled_reason.unwrap().contains("failed since"));
    let log = store.events_after(None, 1000).await.unwrap();
    let disabled: Vec<&EventEnvelope> = log
        .iter()
        .filter(|e| {
            matches!(&e.event, DomainEvent::WebhookDisabled { webhook_id, .. } if *webhook_id == w.id.to_string())
        })
        .collect();
    assert_eq!(disabled.len(), 1, "{log:?}");

    // 410 disables another endpoint at once, once.
    let gone = endpoint(t);
    store.insert_webhook(&gone).await.unwrap();
    let e2 = event();
    let d2 = Delivery::new(gone.id, &e2, t);
    assert!(store
        .dispatch_deliveries(Some(e.id), e2.id, std::slice::from_ref(&d2))
        .await
        .unwrap());
    for _ in 0..2 {
        let mut done = d2.clone();
        done.status = DeliveryStatus::Failed;
        done.next_attempt_at = None;
        store
            .finish_attempt(&AttemptResult {
                delivery: done,
                endpoint: EndpointOutcome::Disable {
                    reason: "410".into(),
                },
            })
            .await
            .unwrap();
    }
    assert!(!store.get_webhook(gone.id).await.unwrap().unwrap().enabled);
    let log = store.events_after(None, 1000).await.unwrap();
    assert_eq!(
        log.iter()
            .filter(|e| matches!(&e.event, DomainEvent::WebhookDisabled { .. }))
            .count(),
        2
    );
}

pub async fn webhook_deliveries_page_requeue_and_prune(store: Arc<dyn Store>) {
    let t = time::now();
    let w = endpoint(t);
    store.insert_webhook(&w).await.unwrap();
    let events: Vec<EventEnvelope> = (0..5).map(|_| event()).collect();
    // Created a second apart, the last two at the same time.
    let deliveries: Vec<Delivery> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Delivery::new(w.id, e, t + Span::seconds(i.min(3) as i64)))
        .collect();
    assert!(store
        .dispatch_deliveries(None, events[4].id, &deliveries)
        .await
        .unwrap());
    // Newest first, ties by larger id first, in pages of two.
    let mut expected = deliveries.clone();
    expected.sort_by_key(|d| std::cmp::Reverse((d.created_at, d.id)));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_deliveries(w.id, after, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|d| DeliveryCursor {
            created_at: d.created_at,
            id: d.id,
        });
        seen.extend(page.into_iter().map(|d| d.id));
    }
    assert_eq!(seen, expected.iter().map(|d| d.id).collect::<Vec<_>>());

    // All of them fail for good.
    let claimed = store
        .claim_deliveries(&claim(t + Span::seconds(10), 10, 10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
    for d in claimed {
        let mut failed = d.clone();
        failed.status = DeliveryStatus::Failed;
        failed.next_attempt_at = None;
        failed.attempts = 10;
        store
            .finish_attempt(&AttemptResult {
                delivery: failed,
                endpoint: EndpointOutcome::Unchanged,
            })
            .await
            .unwrap();
    }
    let now = t + Span::seconds(20);
    assert!(store
        .claim_deliveries(&claim(now, 10, 10))
        .await
        .unwrap()
        .is_empty());

    // Recover since the third: three come back, due now.
    let n = store
        .requeue_deliveries(w.id, Requeue::FailedSince(t + Span::seconds(2)), now)
        .await
        .unwrap();
    assert_eq!(n, 3);
    let back = store.claim_deliveries(&claim(now, 10, 10)).await.unwrap();
    assert_eq!(ids(&back), ids(&deliveries[2..]));
    // One delivery by hand, but not while it is being attempted.
    assert_eq!(
        store
            .requeue_deliveries(w.id, Requeue::One(back[0].id), now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .requeue_deliveries(w.id, Requeue::One(deliveries[0].id), now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .requeue_deliveries(Uuid::now_v7(), Requeue::One(deliveries[1].id), now)
            .await
            .unwrap(),
        0
    );
    let again = store.get_delivery(deliveries[0].id).await.unwrap().unwrap();
    assert_eq!(again.status, DeliveryStatus::Pending);
    assert_eq!(again.attempts, 10);
    assert_eq!(again.next_attempt_at, Some(now));

    // Pruning takes finished deliveries created before the time, never
    // pending ones.
    let pruned = store.prune_deliveries(t + Span::seconds(2)).await.unwrap();
    assert_eq!(pruned, 1, "only the second is finished and old enough");
    assert_eq!(store.get_delivery(deliveries[1].id).await.unwrap(), None);
    assert!(store
        .get_delivery(deliveries[0].id)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store.list_deliveries(w.id, None, 10).await.unwrap().len(),
        4
    );
}
