//! Customers and identities: inserts, profile writes, listing, claims and
//! erasure.

use super::*;

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
        vec![EngagementInsert::Created { customer_id: b.id }]
    );
}

pub async fn customers_with_phone_lists_every_profile_with_it(store: Arc<dyn Store>) {
    let shared = phone("+65 6338 8888");
    let mut a = customer_at(at(10));
    a.phones = vec![phone("+65 8122 6418"), shared.clone()];
    let mut b = customer_at(at(20));
    b.phones = vec![shared.clone()];
    let mut merged = customer_at(at(30));
    merged.phones = vec![shared.clone()];
    merged.status = CustomerStatus::Merged;
    merged.merged_into = Some(a.id);
    let mut other = customer_at(at(40));
    other.phones = vec![phone("+65 9123 4567")];
    for c in [&a, &b, &merged, &other] {
        store.insert_customer(c).await.unwrap();
    }
    let found: BTreeSet<CustomerId> = ids_of(&store.customers_with_phone(&shared).await.unwrap())
        .into_iter()
        .collect();
    assert_eq!(
        found,
        BTreeSet::from([a.id, b.id]),
        "every profile with it, merged ones excepted"
    );
    assert_eq!(
        store
            .customers_with_phone(&phone("+65 8122 6418"))
            .await
            .unwrap(),
        vec![a]
    );
    assert_eq!(
        store
            .customers_with_phone(&phone("+65 6123 4567"))
            .await
            .unwrap(),
        Vec::<Customer>::new()
    );
}
