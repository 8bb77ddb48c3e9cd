//! The service over the store: its race-freedom rests on the store's.

use super::*;

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
