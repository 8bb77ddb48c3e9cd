//! Sales analytics rollups ([`AnalyticsStore`]) and the consumer that
//! fills them from the event log ([`Consumer`]): exact counts per agent,
//! channel and day, each event counted once, days of the configured zone.

use super::*;

use std::collections::HashMap;

use chrono::NaiveDate;
use crm_models::analytics::{
    AnalyticsBatch, Consumer, Counts, DailyRow, Engaged, Metric, RowKey, Step, Zone,
};
use crm_models::engagement::PayloadType;

/// What the relay does before publishing: takes the unrelayed events (in
/// MongoDB this places them in the feed), then marks them relayed.
async fn relay(store: &dyn Store) {
    loop {
        let batch = store.unrelayed_events(1000).await.unwrap();
        if batch.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
        store.mark_events_relayed(&ids).await.unwrap();
    }
}

/// Relays, then steps the consumer (pages of `page`) until the log is counted.
async fn count_all(store: &dyn Store, consumer: &Consumer, page: usize) {
    relay(store).await;
    let mut cursor = store.analytics_cursor().await.unwrap();
    for _ in 0..10_000 {
        match consumer.step(store, cursor, page).await.unwrap() {
            Step::Moved { to, .. } => cursor = Some(to),
            Step::Idle => return,
            other => panic!("unexpected step {other:?}"),
        }
    }
    panic!("the consumer never reached the head of the log");
}

fn day(raw: &str) -> NaiveDate {
    NaiveDate::parse_from_str(raw, "%Y-%m-%d").unwrap()
}

/// The rows of one day as `(agent, channel) -> counts`, without the
/// first-response figures (their own check looks at them).
async fn rows_of(
    store: &dyn Store,
    d: NaiveDate,
) -> HashMap<(Option<String>, Option<Channel>), Counts> {
    with_responses(store, d)
        .await
        .into_iter()
        .map(|(k, c)| {
            let mut kept = Counts::default();
            for (name, n) in c.fields() {
                if !name.starts_with("first_response") {
                    kept.set(name, n);
                }
            }
            (k, kept)
        })
        .filter(|(_, c)| !c.is_empty())
        .collect()
}

/// The rows of one day as `(agent, channel) -> counts`.
async fn with_responses(
    store: &dyn Store,
    d: NaiveDate,
) -> HashMap<(Option<String>, Option<Channel>), Counts> {
    store
        .analytics_rows(d, d)
        .await
        .unwrap()
        .into_iter()
        .map(|r| ((r.key.agent, r.key.channel), r.counts))
        .collect()
}

fn engagement(
    customer: CustomerId,
    at: &str,
    source: Source,
    detail: EngagementDetail,
) -> Engagement {
    let t = time::parse(at).unwrap();
    Engagement {
        id: EngagementId(Uuid::new_v4()),
        customer_id: customer,
        occurred_at: t,
        recorded_at: t,
        source,
        detail,
    }
}

fn call_of(direction: Direction, status: CallStatus, secs: u32) -> EngagementDetail {
    EngagementDetail::Call {
        direction,
        duration_s: secs,
        status,
    }
}

fn sms_of(direction: Direction) -> EngagementDetail {
    EngagementDetail::Sms {
        direction,
        body: "a message that never reaches analytics".into(),
    }
}

fn whatsapp_of(direction: Direction) -> EngagementDetail {
    EngagementDetail::Whatsapp {
        direction,
        payload_type: PayloadType::Text,
        payload: "hello".into(),
    }
}

fn web_view() -> EngagementDetail {
    EngagementDetail::Web {
        url: "https://shop.example/p/1".into(),
        view: "product".into(),
        view_desc: None,
        category: None,
        object_id: None,
    }
}

fn phone_of(user: UserId, hash: &str) -> Device {
    Device {
        id: DeviceId(Uuid::new_v4()),
        user_id: user,
        name: "phone".into(),
        default_region: None,
        token_hash: hash.into(),
        token_prefix: "crm_dev_test".into(),
        created_at: t0(),
        revoked_at: None,
        last_upload_at: None,
    }
}

fn counts(fields: &[(&str, u64)]) -> Counts {
    let mut c = Counts::default();
    for (name, n) in fields {
        assert!(c.set(name, *n), "no field {name}");
    }
    c
}

pub async fn analytics_count_a_scripted_day_per_agent_channel_and_day(store: Arc<dyn Store>) {
    let (ann, bob) = (UserId::new(), UserId::new());
    let key = ApiKeyId::new();
    let ann_phone = phone_of(ann, "analytics-ann");
    let bob_phone = phone_of(bob, "analytics-bob");
    store.insert_device(&ann_phone).await.unwrap();
    store.insert_device(&bob_phone).await.unwrap();
    let customers: Vec<Customer> = (0..3).map(|_| customer_at(t0())).collect();
    for c in &customers {
        store.insert_customer(c).await.unwrap();
    }
    let (c1, c2, c3) = (customers[0].id, customers[1].id, customers[2].id);
    // Ann's phone uploads without naming a user: its owner is the agent.
    let by_ann = || Source {
        device_id: Some(ann_phone.id),
        ..Source::default()
    };
    // Bob's phone names him, as mobile uploads do.
    let by_bob = || Source {
        device_id: Some(bob_phone.id),
        user_id: Some(format!("user:{bob}")),
        ..Source::default()
    };
    let by_key = || Source {
        user_id: Some(format!("key:{key}")),
        ..Source::default()
    };
    use CallStatus::*;
    use Direction::*;
    let day_at = |hms: &str| format!("2026-11-21T{hms}Z");
    let script = vec![
        engagement(
            c1,
            &day_at("09:00:00"),
            by_ann(),
            call_of(Inbound, Answered, 120),
        ),
        engagement(
            c2,
            &day_at("09:05:00"),
            by_ann(),
            call_of(Inbound, Missed, 0),
        ),
        engagement(c1, &day_at("09:10:00"), by_ann(), sms_of(Outbound)),
        engagement(c3, &day_at("10:00:00"), by_ann(), whatsapp_of(Inbound)),
        engagement(
            c1,
            &day_at("10:30:00"),
            by_ann(),
            call_of(Inbound, Voicemail, 15),
        ),
        engagement(
            c2,
            &day_at("11:00:00"),
            by_bob(),
            call_of(Outbound, Answered, 60),
        ),
        engagement(c2, &day_at("11:01:00"), by_bob(), sms_of(Inbound)),
        engagement(c2, &day_at("11:02:00"), by_bob(), sms_of(Outbound)),
        engagement(c1, &day_at("12:00:00"), by_bob(), whatsapp_of(Outbound)),
        engagement(c3, &day_at("13:00:00"), by_key(), sms_of(Outbound)),
        engagement(c1, &day_at("14:00:00"), by_key(), web_view()),
        // The next day, for Ann.
        engagement(
            c3,
            "2026-11-22T08:00:00Z",
            by_ann(),
            call_of(Outbound, Answered, 30),
        ),
    ];
    // In three writes, as uploads arrive.
    for part in script.chunks(4) {
        store.insert_engagements(part).await.unwrap();
    }
    let consumer = Consumer::new(Zone::default());
    count_all(store.as_ref(), &consumer, 5).await;

    let (ann_agent, bob_agent, key_agent) = (
        Some(format!("user:{ann}")),
        Some(format!("user:{bob}")),
        Some(format!("key:{key}")),
    );
    let expected: HashMap<(Option<String>, Option<Channel>), Counts> = [
        ((None, Some(Channel::Web)), counts(&[("web_views", 1)])),
        (
            (ann_agent.clone(), Some(Channel::Call)),
            counts(&[
                ("calls_inbound", 3),
                ("calls_answered", 1),
                ("calls_missed", 2),
                ("talk_seconds", 120),
            ]),
        ),
        (
            (ann_agent.clone(), Some(Channel::Sms)),
            counts(&[("sms_outbound", 1)]),
        ),
        (
            (ann_agent.clone(), Some(Channel::Whatsapp)),
            counts(&[("whatsapp_inbound", 1)]),
        ),
        (
            (ann_agent.clone(), None),
            counts(&[("customers_engaged", 3)]),
        ),
        (
            (bob_agent.clone(), Some(Channel::Call)),
            counts(&[
                ("calls_outbound", 1),
                ("calls_answered", 1),
                ("talk_seconds", 60),
            ]),
        ),
        (
            (bob_agent.clone(), Some(Channel::Sms)),
            counts(&[("sms_inbound", 1), ("sms_outbound", 1)]),
        ),
        (
            (bob_agent.clone(), Some(Channel::Whatsapp)),
            counts(&[("whatsapp_outbound", 1)]),
        ),
        (
            (bob_agent.clone(), None),
            counts(&[("customers_engaged", 2)]),
        ),
        (
            (key_agent.clone(), Some(Channel::Sms)),
            counts(&[("sms_outbound", 1)]),
        ),
        (
            (key_agent.clone(), None),
            counts(&[("customers_engaged", 1)]),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(rows_of(store.as_ref(), day("2026-11-21")).await, expected);

    // The hourly totals (no agent) of the same day.
    let hours = store
        .analytics_hours(day("2026-11-21"), day("2026-11-21"))
        .await
        .unwrap();
    let nine: HashMap<Option<Channel>, Counts> = hours
        .iter()
        .filter(|h| h.key.hour == 9)
        .map(|h| (h.key.channel, h.counts))
        .collect();
    let expected_nine: HashMap<Option<Channel>, Counts> = [
        (
            Some(Channel::Call),
            counts(&[
                ("calls_inbound", 2),
                ("calls_answered", 1),
                ("calls_missed", 1),
                ("talk_seconds", 120),
            ]),
        ),
        (Some(Channel::Sms), counts(&[("sms_outbound", 1)])),
    ]
    .into_iter()
    .collect();
    assert_eq!(nine, expected_nine);
    let engagements: u64 = hours
        .iter()
        .map(|h| Metric::Engagements.of(&h.counts))
        .sum();
    assert_eq!(
        engagements, 10,
        "every engagement of the day but the page view"
    );
    let views: u64 = hours.iter().map(|h| h.counts.web_views).sum();
    assert_eq!(views, 1);

    let next: HashMap<_, _> = [
        (
            (ann_agent.clone(), Some(Channel::Call)),
            counts(&[
                ("calls_outbound", 1),
                ("calls_answered", 1),
                ("talk_seconds", 30),
            ]),
        ),
        (
            (ann_agent.clone(), None),
            counts(&[("customers_engaged", 1)]),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(rows_of(store.as_ref(), day("2026-11-22")).await, next);

    // New customers count on the day they were created (now), with no agent.
    let today = Zone::default().day_of(&time::now());
    let around = store
        .analytics_rows(today.pred_opt().unwrap(), today.succ_opt().unwrap())
        .await
        .unwrap();
    let new_customers: u64 = around
        .iter()
        .filter(|r| r.key.agent.is_none() && r.key.channel.is_none())
        .map(|r| r.counts.new_customers)
        .sum();
    assert_eq!(new_customers, 3);

    // Two days at once, in key order.
    let both = store
        .analytics_rows(day("2026-11-21"), day("2026-11-22"))
        .await
        .unwrap();
    assert_eq!(both.len(), expected.len() + next.len());
    let keys: Vec<&RowKey> = both.iter().map(|r| &r.key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(both[0].key.agent, None, "no agent sorts first");
}

pub async fn analytics_count_each_event_once(store: Arc<dyn Store>) {
    let user = UserId::new();
    let customer = customer_at(t0());
    store.insert_customer(&customer).await.unwrap();
    let source = || Source {
        user_id: Some(format!("user:{user}")),
        ..Source::default()
    };
    let first = vec![
        engagement(
            customer.id,
            "2026-11-21T09:00:00Z",
            source(),
            sms_of(Direction::Inbound),
        ),
        engagement(
            customer.id,
            "2026-11-21T09:01:00Z",
            source(),
            sms_of(Direction::Outbound),
        ),
    ];
    store.insert_engagements(&first).await.unwrap();
    // A retried upload stores nothing new, and so counts nothing.
    store.insert_engagements(&first).await.unwrap();
    relay(store.as_ref()).await;

    // Two consumers read the same page at once: one commits it.
    let (a, b) = (
        Consumer::new(Zone::default()),
        Consumer::new(Zone::default()),
    );
    let (x, y) = tokio::join!(
        a.step(store.as_ref(), None, 100),
        b.step(store.as_ref(), None, 100)
    );
    let moved = [x.unwrap(), y.unwrap()]
        .into_iter()
        .filter(|s| matches!(s, Step::Moved { .. }))
        .count();
    assert_eq!(moved, 1, "exactly one consumer counted the page");
    let d = day("2026-11-21");
    let agent = Some(format!("user:{user}"));
    let once = rows_of(store.as_ref(), d).await;
    assert_eq!(
        once.get(&(agent.clone(), Some(Channel::Sms))),
        Some(&counts(&[("sms_inbound", 1), ("sms_outbound", 1)]))
    );

    // The page delivered again (a crash before the cursor was read back):
    // the stale cursor is refused and nothing is added.
    assert_eq!(a.step(store.as_ref(), None, 100).await.unwrap(), Step::Lost);
    let cursor = store.analytics_cursor().await.unwrap();
    assert!(cursor.is_some());
    let batch = AnalyticsBatch {
        rows: vec![DailyRow {
            key: RowKey {
                day: d,
                agent: agent.clone(),
                channel: Some(Channel::Sms),
            },
            counts: counts(&[("sms_inbound", 1)]),
        }],
        ..AnalyticsBatch::default()
    };
    assert!(!store
        .apply_analytics(None, Uuid::now_v7(), &batch)
        .await
        .unwrap());
    assert_eq!(store.analytics_cursor().await.unwrap(), cursor);
    assert_eq!(rows_of(store.as_ref(), d).await, once);
    assert_eq!(
        a.step(store.as_ref(), cursor, 100).await.unwrap(),
        Step::Idle
    );

    // The same customer again on the same day: one more SMS, not one more customer.
    let later = vec![engagement(
        customer.id,
        "2026-11-21T17:00:00Z",
        source(),
        sms_of(Direction::Outbound),
    )];
    store.insert_engagements(&later).await.unwrap();
    count_all(store.as_ref(), &a, 100).await;
    let now = rows_of(store.as_ref(), d).await;
    assert_eq!(
        now.get(&(agent.clone(), Some(Channel::Sms))),
        Some(&counts(&[("sms_inbound", 1), ("sms_outbound", 2)]))
    );
    assert_eq!(
        now.get(&(agent.clone(), None)),
        Some(&counts(&[("customers_engaged", 1)]))
    );
}

pub async fn analytics_days_follow_the_configured_zone(store: Arc<dyn Store>) {
    let user = UserId::new();
    let customer = customer_at(t0());
    store.insert_customer(&customer).await.unwrap();
    let source = || Source {
        user_id: Some(format!("user:{user}")),
        ..Source::default()
    };
    // 23:59:59 and 00:00:00 in Singapore (UTC+8): two days there, one in UTC.
    let items = vec![
        engagement(
            customer.id,
            "2026-11-21T15:59:59Z",
            source(),
            sms_of(Direction::Inbound),
        ),
        engagement(
            customer.id,
            "2026-11-21T16:00:00Z",
            source(),
            sms_of(Direction::Outbound),
        ),
    ];
    store.insert_engagements(&items).await.unwrap();
    let singapore: Zone = "Asia/Singapore".parse().unwrap();
    count_all(store.as_ref(), &Consumer::new(singapore), 100).await;
    let agent = Some(format!("user:{user}"));
    let first = rows_of(store.as_ref(), day("2026-11-21")).await;
    assert_eq!(
        first.get(&(agent.clone(), Some(Channel::Sms))),
        Some(&counts(&[("sms_inbound", 1)]))
    );
    let second = rows_of(store.as_ref(), day("2026-11-22")).await;
    assert_eq!(
        second.get(&(agent.clone(), Some(Channel::Sms))),
        Some(&counts(&[("sms_outbound", 1)]))
    );
    // The customer counts on both days: they are two days.
    for rows in [&first, &second] {
        assert_eq!(
            rows.get(&(agent.clone(), None)),
            Some(&counts(&[("customers_engaged", 1)]))
        );
    }
    assert_eq!(
        singapore.day_of(&time::parse("2026-11-21T16:00:00Z").unwrap()),
        day("2026-11-22")
    );
}

pub async fn analytics_forget_an_erased_customer_but_keep_the_counts(store: Arc<dyn Store>) {
    let d = day("2026-11-21");
    let customer = CustomerId::new();
    let marker = Engaged {
        day: d,
        agent: "user:a".into(),
        customer,
    };
    let sms = DailyRow {
        key: RowKey {
            day: d,
            agent: Some("user:a".into()),
            channel: Some(Channel::Sms),
        },
        counts: counts(&[("sms_inbound", 1)]),
    };
    let first = AnalyticsBatch {
        rows: vec![sms.clone()],
        engaged: vec![marker.clone()],
        ..AnalyticsBatch::default()
    };
    let (one, two, three) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    assert!(store.apply_analytics(None, one, &first).await.unwrap());
    // The same marker again: the customer counts once.
    assert!(store.apply_analytics(Some(one), two, &first).await.unwrap());
    let engaged_of = |rows: HashMap<(Option<String>, Option<Channel>), Counts>| {
        rows.get(&(Some("user:a".to_string()), None))
            .map(|c| c.customers_engaged)
    };
    assert_eq!(engaged_of(rows_of(store.as_ref(), d).await), Some(1));
    // Erased: the marker goes, the counts stay.
    let erased = AnalyticsBatch {
        forget: vec![customer],
        ..AnalyticsBatch::default()
    };
    assert!(store
        .apply_analytics(Some(two), three, &erased)
        .await
        .unwrap());
    let rows = rows_of(store.as_ref(), d).await;
    assert_eq!(
        rows.get(&(Some("user:a".to_string()), Some(Channel::Sms))),
        Some(&counts(&[("sms_inbound", 2)]))
    );
    assert_eq!(engaged_of(rows), Some(1));
    // With the marker gone, the same id would count again: nothing names it any more.
    let again = AnalyticsBatch {
        engaged: vec![marker],
        ..AnalyticsBatch::default()
    };
    assert!(store
        .apply_analytics(Some(three), Uuid::now_v7(), &again)
        .await
        .unwrap());
    assert_eq!(engaged_of(rows_of(store.as_ref(), d).await), Some(2));
}

pub async fn analytics_rebuild_gives_the_same_figures_and_verify_finds_drift(
    store: Arc<dyn Store>,
) {
    let (ann, bob) = (UserId::new(), UserId::new());
    let ann_phone = phone_of(ann, "rebuild-ann");
    store.insert_device(&ann_phone).await.unwrap();
    // Created now, as the service creates them: `customer.created` counts on
    // the day of the event, a recount on the day of `created_at`.
    let customers: Vec<Customer> = (0..2).map(|_| customer_at(time::now())).collect();
    for c in &customers {
        store.insert_customer(c).await.unwrap();
    }
    let by_ann = || Source {
        device_id: Some(ann_phone.id),
        ..Source::default()
    };
    let by_bob = || Source {
        user_id: Some(format!("user:{bob}")),
        ..Source::default()
    };
    let (c1, c2) = (customers[0].id, customers[1].id);
    use Direction::*;
    let items = vec![
        engagement(
            c1,
            "2026-11-21T09:00:00Z",
            by_ann(),
            call_of(Inbound, CallStatus::Answered, 75),
        ),
        engagement(c2, "2026-11-21T09:30:00Z", by_ann(), sms_of(Outbound)),
        engagement(c2, "2026-11-21T23:59:59Z", by_bob(), whatsapp_of(Inbound)),
        engagement(c1, "2026-11-22T00:00:00Z", by_bob(), sms_of(Inbound)),
        engagement(c1, "2026-11-22T10:00:00Z", by_bob(), web_view()),
    ];
    store.insert_engagements(&items).await.unwrap();
    let consumer = Consumer::new(Zone::default());
    count_all(store.as_ref(), &consumer, 2).await;
    let (from, to) = (day("2000-01-01"), day("2100-01-01"));
    let counted = store.analytics_rows(from, to).await.unwrap();
    let counted_hours = store.analytics_hours(from, to).await.unwrap();
    let cursor = store.analytics_cursor().await.unwrap();

    // A recount of the store gives what the consumer counted.
    let mut walked = Vec::new();
    let recount = consumer
        .recount(store.as_ref(), &mut |n| walked.push(n))
        .await
        .unwrap();
    assert_eq!((recount.customers, recount.engagements), (2, 5));
    assert_eq!(walked.last(), Some(&2));
    assert_eq!(
        recount.head, cursor,
        "the head of the log is what was counted"
    );
    assert_eq!(
        crm_models::analytics::verify(store.as_ref(), &recount)
            .await
            .unwrap(),
        vec![]
    );

    // Drift (a figure the events never gave) is found, then rebuilt away.
    let drift = AnalyticsBatch {
        rows: vec![DailyRow {
            key: RowKey {
                day: day("2026-11-21"),
                agent: Some(format!("user:{bob}")),
                channel: Some(Channel::Whatsapp),
            },
            counts: counts(&[("whatsapp_inbound", 2)]),
        }],
        ..AnalyticsBatch::default()
    };
    let moved = Uuid::now_v7();
    assert!(store.apply_analytics(cursor, moved, &drift).await.unwrap());
    let found = crm_models::analytics::verify(store.as_ref(), &recount)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].to_string(),
        format!("2026-11-21 user:{bob} whatsapp whatsapp_inbound: stored 3, recounted 1")
    );
    store
        .replace_analytics(recount.head, &recount.batch)
        .await
        .unwrap();
    assert_eq!(store.analytics_rows(from, to).await.unwrap(), counted);
    assert_eq!(
        store.analytics_hours(from, to).await.unwrap(),
        counted_hours
    );
    assert_eq!(store.analytics_cursor().await.unwrap(), cursor);

    // The consumer goes on after the rebuild: what comes next counts once.
    let next = vec![engagement(
        c2,
        "2026-11-22T11:00:00Z",
        by_ann(),
        sms_of(Outbound),
    )];
    store.insert_engagements(&next).await.unwrap();
    count_all(store.as_ref(), &consumer, 100).await;
    let rows = rows_of(store.as_ref(), day("2026-11-22")).await;
    assert_eq!(
        rows.get(&(Some(format!("user:{ann}")), Some(Channel::Sms))),
        Some(&counts(&[("sms_outbound", 1)]))
    );
    let again = consumer.recount(store.as_ref(), &mut |_| {}).await.unwrap();
    assert_eq!(
        crm_models::analytics::verify(store.as_ref(), &again)
            .await
            .unwrap(),
        vec![]
    );
}

pub async fn analytics_count_on_from_the_oldest_event_when_the_cursor_expired(
    store: Arc<dyn Store>,
) {
    let user = UserId::new();
    let customer = customer_at(time::now());
    store.insert_customer(&customer).await.unwrap();
    let source = Source {
        user_id: Some(format!("user:{user}")),
        ..Source::default()
    };
    let items = vec![engagement(
        customer.id,
        "2026-11-21T09:00:00Z",
        source,
        sms_of(Direction::Inbound),
    )];
    store.insert_engagements(&items).await.unwrap();
    relay(store.as_ref()).await;
    // A cursor the log does not hold (its event was pruned).
    let gone = Uuid::now_v7();
    assert!(store
        .apply_analytics(None, gone, &AnalyticsBatch::default())
        .await
        .unwrap());
    let consumer = Consumer::new(Zone::default());
    assert_eq!(
        consumer
            .step(store.as_ref(), Some(gone), 100)
            .await
            .unwrap(),
        Step::Expired
    );
    // A restart that does not hold the stored cursor changes nothing.
    assert_eq!(
        consumer.restart(store.as_ref(), None, 100).await.unwrap(),
        Step::Lost
    );
    let Step::Moved { to, .. } = consumer
        .restart(store.as_ref(), Some(gone), 100)
        .await
        .unwrap()
    else {
        panic!("the restart counts from the oldest event");
    };
    assert_eq!(store.analytics_cursor().await.unwrap(), Some(to));
    let rows = rows_of(store.as_ref(), day("2026-11-21")).await;
    assert_eq!(
        rows.get(&(Some(format!("user:{user}")), Some(Channel::Sms))),
        Some(&counts(&[("sms_inbound", 1)]))
    );
    assert_eq!(
        consumer.step(store.as_ref(), Some(to), 100).await.unwrap(),
        Step::Idle
    );
}

pub async fn analytics_first_responses_count_for_the_agent_who_answered(store: Arc<dyn Store>) {
    let (ann, bob) = (UserId::new(), UserId::new());
    let customer = customer_at(time::now());
    store.insert_customer(&customer).await.unwrap();
    let by = |user: UserId| Source {
        user_id: Some(format!("user:{user}")),
        ..Source::default()
    };
    let c = customer.id;
    use Direction::*;
    let items = vec![
        // Waiting since 09:00 (the earliest inbound since the last outbound).
        engagement(c, "2026-11-21T09:00:00Z", by(ann), sms_of(Inbound)),
        engagement(
            c,
            "2026-11-21T09:02:00Z",
            by(ann),
            call_of(Inbound, CallStatus::Missed, 0),
        ),
        // A page view is no answer.
        engagement(c, "2026-11-21T09:05:00Z", by(ann), web_view()),
        // Bob answers ten minutes later.
        engagement(c, "2026-11-21T09:10:00Z", by(bob), sms_of(Outbound)),
        // Nobody was waiting any more.
        engagement(
            c,
            "2026-11-21T09:15:00Z",
            by(ann),
            call_of(Outbound, CallStatus::Answered, 40),
        ),
        // Ann answers the next one in 20 seconds.
        engagement(c, "2026-11-21T10:00:00Z", by(ann), whatsapp_of(Inbound)),
        engagement(c, "2026-11-21T10:00:20Z", by(ann), whatsapp_of(Outbound)),
    ];
    store.insert_engagements(&items).await.unwrap();
    let consumer = Consumer::new(Zone::default());
    count_all(store.as_ref(), &consumer, 3).await;
    let rows = with_responses(store.as_ref(), day("2026-11-21")).await;
    let bob_sms = rows[&(Some(format!("user:{bob}")), Some(Channel::Sms))];
    assert_eq!(
        (
            bob_sms.first_responses,
            bob_sms.first_response_seconds,
            bob_sms.first_response_le_10m
        ),
        (1, 600, 1)
    );
    let ann_call = rows[&(Some(format!("user:{ann}")), Some(Channel::Call))];
    assert_eq!(ann_call.first_responses, 0);
    let ann_whatsapp = rows[&(Some(format!("user:{ann}")), Some(Channel::Whatsapp))];
    assert_eq!(
        (
            ann_whatsapp.first_responses,
            ann_whatsapp.first_response_seconds
        ),
        (1, 20)
    );
    assert_eq!(Metric::FirstResponseMedian.of(&ann_whatsapp), 30);
    assert_eq!(Metric::FirstResponseMedian.of(&bob_sms), 600);
    // A recount finds the same responses.
    let recount = consumer.recount(store.as_ref(), &mut |_| {}).await.unwrap();
    assert_eq!(
        crm_models::analytics::verify(store.as_ref(), &recount)
            .await
            .unwrap(),
        vec![]
    );
}

/// One agent's SMS count on `d`, as an increment.
fn sms_row(d: NaiveDate, n: u64) -> DailyRow {
    DailyRow {
        key: RowKey {
            day: d,
            agent: Some("user:reader".into()),
            channel: Some(Channel::Sms),
        },
        counts: Counts {
            sms_outbound: n,
            ..Counts::default()
        },
    }
}

/// Sum of `sms_outbound` over the rows of `from..=to`.
async fn sms_total(store: &dyn Store, from: NaiveDate, to: NaiveDate) -> u64 {
    store
        .analytics_rows(from, to)
        .await
        .unwrap()
        .iter()
        .map(|r| r.counts.sms_outbound)
        .sum()
}

/// Reads of past days see every later write to them (an engagement recorded
/// late, a rebuild), also while reads and writes race: the store may keep
/// decoded days, never stale ones.
pub async fn analytics_reads_see_late_writes_to_past_days(store: Arc<dyn Store>) {
    let (d1, d2, d3) = (day("2026-10-01"), day("2026-10-02"), day("2026-10-03"));
    let mut cursor = store.analytics_cursor().await.unwrap();
    let mut apply = |rows: Vec<DailyRow>| {
        let store = Arc::clone(&store);
        let from = cursor;
        let to = Uuid::now_v7();
        cursor = Some(to);
        async move {
            let batch = AnalyticsBatch {
                rows,
                ..AnalyticsBatch::default()
            };
            assert!(store.apply_analytics(from, to, &batch).await.unwrap());
        }
    };
    apply(vec![sms_row(d1, 1), sms_row(d2, 2), sms_row(d3, 4)]).await;
    assert_eq!(sms_total(store.as_ref(), d1, d3).await, 7);
    assert_eq!(sms_total(store.as_ref(), d1, d3).await, 7, "read twice");
    apply(vec![sms_row(d2, 10)]).await;
    assert_eq!(
        sms_total(store.as_ref(), d1, d3).await,
        17,
        "a late write to a day read before"
    );
    assert_eq!(sms_total(store.as_ref(), d2, d2).await, 12);

    // Readers racing a writer: every read sees a total the writes passed
    // through, and the last read sees them all.
    let writer = {
        let mut apply_n = Vec::new();
        for _ in 0..20 {
            apply_n.push(vec![sms_row(d1, 1)]);
        }
        let store = Arc::clone(&store);
        let mut cursor = cursor;
        tokio::spawn(async move {
            for rows in apply_n {
                let to = Uuid::now_v7();
                let batch = AnalyticsBatch {
                    rows,
                    ..AnalyticsBatch::default()
                };
                assert!(store.apply_analytics(cursor, to, &batch).await.unwrap());
                cursor = Some(to);
            }
            cursor
        })
    };
    let reader = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..50 {
                let now = sms_total(store.as_ref(), d1, d3).await;
                assert!(
                    (17..=37).contains(&now) && now >= last,
                    "{now} after {last}"
                );
                last = now;
            }
        })
    };
    let cursor = writer.await.unwrap();
    reader.await.unwrap();
    assert_eq!(sms_total(store.as_ref(), d1, d3).await, 37);
    let blocks = store.analytics_row_blocks(d1, d3).await.unwrap();
    let flat: Vec<DailyRow> = blocks.iter().flat_map(|b| b.iter().cloned()).collect();
    assert_eq!(
        flat,
        store.analytics_rows(d1, d3).await.unwrap(),
        "blocks hold the rows, in order"
    );

    let rebuilt = AnalyticsBatch {
        rows: vec![sms_row(d1, 5)],
        ..AnalyticsBatch::default()
    };
    store.replace_analytics(cursor, &rebuilt).await.unwrap();
    assert_eq!(
        sms_total(store.as_ref(), d1, d3).await,
        5,
        "a rebuild replaces every day"
    );
}
