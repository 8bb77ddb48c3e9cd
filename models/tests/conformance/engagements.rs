//! Engagements: inserts with their counters and duplicates, and timelines
//! (order, filters, paging).

use super::*;

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
    let landed: Vec<EngagementInsert> = batch
        .iter()
        .map(|e| EngagementInsert::Created {
            customer_id: e.customer_id,
        })
        .collect();
    assert_eq!(results, landed);

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
        vec![EngagementInsert::Created { customer_id: a.id }; 2]
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
            EngagementInsert::Created { customer_id: a.id },
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
        vec![EngagementInsert::Created { customer_id: ghost }]
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

pub async fn customers_with_latest_engagements_page_in_id_order(store: Arc<dyn Store>) {
    // Ids in no particular creation order, so id order is not insert order.
    let customers: Vec<Customer> = (0..7)
        .map(|_| Customer::new(CustomerId(Uuid::new_v4()), Some("Ann Tan".into()), at(0)))
        .collect();
    for c in &customers {
        store.insert_customer(c).await.unwrap();
    }
    // Customer i has i * 9 engagements (none, a few, more than wanted,
    // more than a scan steps over before it seeks), some at the same time.
    let mut items = Vec::new();
    for (i, c) in customers.iter().enumerate() {
        for n in 0..i * 9 {
            let when = at((n % 5) as i64 * 10);
            items.push(if n % 2 == 0 {
                sms(c.id, when)
            } else {
                call(c.id, when)
            });
        }
    }
    // Engagements of customers that are not stored, on either side of
    // every stored one in id order.
    items.push(sms(CustomerId(Uuid::from_u128(0)), at(1)));
    items.push(sms(CustomerId(Uuid::from_u128(u128::MAX)), at(1)));
    items.extend((0..3).map(|_| sms(CustomerId(Uuid::new_v4()), at(2))));
    for chunk in items.chunks(50) {
        store.insert_engagements(chunk).await.unwrap();
    }

    let mut by_id: Vec<CustomerId> = customers.iter().map(|c| c.id).collect();
    by_id.sort();
    for (page, per_customer) in [(1, 10), (2, 10), (3, 4), (100, 10), (4, 0), (2, 100)] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let got = store
                .customers_with_latest_engagements(after, page, per_customer)
                .await
                .unwrap();
            assert!(got.len() <= page);
            for (customer, latest) in &got {
                let stored = store.get_customer(customer.id).await.unwrap();
                assert_eq!(Some(customer), stored.as_ref());
                let expected = store
                    .list_engagements(
                        customer.id,
                        &EngagementFilter::default(),
                        None,
                        per_customer,
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    latest, &expected,
                    "page {page}, {per_customer} engagements each"
                );
                seen.push(customer.id);
            }
            let Some((last, _)) = got.last() else { break };
            after = Some(last.id);
        }
        assert_eq!(seen, by_id, "page {page}: every customer once, in id order");
    }
    // The largest timeline is cut at the number wanted, newest first.
    let busiest = customers.last().unwrap().id;
    let got = store
        .customers_with_latest_engagements(None, 100, 10)
        .await
        .unwrap();
    let (_, latest) = got.iter().find(|(c, _)| c.id == busiest).unwrap();
    assert_eq!(latest.len(), 10);
    assert_eq!(latest.first().map(|e| e.occurred_at), Some(at(40)));
    assert!(store
        .customers_with_latest_engagements(None, 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .customers_with_latest_engagements(Some(*by_id.last().unwrap()), 10, 10)
        .await
        .unwrap()
        .is_empty());
}

/// The hashes a load checks the index's snapshot by: each record's, in id
/// order, a page at a time (pages large enough to be read in parts too),
/// and a new one when the record changes.
pub async fn customer_record_hashes_are_those_of_the_records(store: Arc<dyn Store>) {
    let customers: Vec<Customer> = (0..2_100)
        .map(|i| {
            let mut c = Customer::new(CustomerId(Uuid::new_v4()), Some(format!("Ann {i}")), at(0));
            if i % 3 == 0 {
                c.emails
                    .push(Email::parse(&format!("ann{i}@example.com")).unwrap());
            }
            c
        })
        .collect();
    for chunk in customers.chunks(100) {
        futures::future::try_join_all(chunk.iter().map(|c| store.insert_customer(c)))
            .await
            .unwrap();
    }
    let first = customers[0].id;
    let before = store.customer_record_hashes(None, 5_000).await.unwrap();
    store
        .insert_engagements(&[sms(first, at(5))])
        .await
        .unwrap();

    let mut by_id: Vec<CustomerId> = customers.iter().map(|c| c.id).collect();
    by_id.sort();
    for page in [1_000, 2_500] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let got = store.customer_record_hashes(after, page).await.unwrap();
            assert!(got.len() <= page);
            seen.extend(got.iter().map(|(id, _)| *id));
            let Some(&(last, _)) = got.last() else { break };
            after = Some(last);
        }
        assert_eq!(seen, by_id, "page {page}: every customer once, in id order");
    }
    let now = store.customer_record_hashes(None, 5_000).await.unwrap();
    let records = store.get_customers(&by_id).await.unwrap();
    assert_eq!(records.len(), now.len());
    for (id, hash) in &now {
        let record = records.iter().find(|c| c.id == *id).unwrap();
        assert_eq!(*hash, customer_record_hash(record), "{id}");
        let old = before.iter().find(|(b, _)| b == id).unwrap().1;
        assert_eq!(
            old == *hash,
            *id != first,
            "only the changed record hashes anew"
        );
    }
    assert!(store
        .customer_record_hashes(None, 0)
        .await
        .unwrap()
        .is_empty());
}
