//! Staff edits confirm merges: the service under [`LinkMode::Confirm`] and
//! [`LinkMode::Merge`], and writes on merged ids. Evidence
//! ([`LinkMode::Auto`]) is covered in `linking`.

use super::*;
use crm_models::linking::MergeActor;
use crm_models::service::{LinkMode, Resolution};

async fn person(crm: &Crm, name: &str, identifiers: Vec<Identifier>) -> Customer {
    let (c, how) = crm
        .create_customer_with(
            CustomerInput {
                name: Some(name.into()),
                identifiers,
                status: None,
            },
            LinkMode::Confirm,
        )
        .await
        .unwrap();
    assert_eq!(how, Resolution::Created);
    c
}

fn input(identifiers: Vec<Identifier>) -> CustomerInput {
    CustomerInput {
        name: Some("New Person".into()),
        identifiers,
        status: None,
    }
}

/// Profiles, owned identities, merge records of `ids`, every customer's id
/// and status, and the number of events: what "nothing changed" compares.
async fn state_of(store: &dyn Store, ids: &[CustomerId]) -> String {
    let mut out = String::new();
    for id in ids {
        out.push_str(&format!("{:?}\n", store.get_customer(*id).await.unwrap()));
        out.push_str(&format!("{:?}\n", store.identities_of(*id).await.unwrap()));
        out.push_str(&format!("{:?}\n", store.merges_of(*id).await.unwrap()));
    }
    let all = store.list_customers(None, None, 1000).await.unwrap();
    let mut listed: Vec<String> = all
        .iter()
        .map(|c| format!("{}:{:?}", c.id, c.status))
        .collect();
    listed.sort();
    out.push_str(&listed.join(","));
    out.push_str(&format!(
        "\nevents {}",
        store.events_after(None, 100_000).await.unwrap().len()
    ));
    out
}

fn sorted(mut ids: Vec<CustomerId>) -> Vec<CustomerId> {
    ids.sort();
    ids
}

pub async fn service_confirm_create_naming_owned_identifiers_changes_nothing(
    store: Arc<dyn Store>,
) {
    let crm = crm(Arc::clone(&store));
    let pa = Identifier::Phone(phone("+6581226418"));
    let eb = Identifier::Email(email("bob@example.com"));
    let a = person(&crm, "Ann", vec![pa.clone()]).await;
    let b = person(&crm, "Bob", vec![eb.clone()]).await;
    let before = state_of(&*store, &[a.id, b.id]).await;
    let fresh = Identifier::Phone(phone("+6590001234"));

    // One identifier of each: both owners named, nothing created or merged.
    let err = crm
        .create_customer_with(
            input(vec![pa.clone(), eb.clone(), fresh.clone()]),
            LinkMode::Confirm,
        )
        .await
        .unwrap_err();
    match err {
        CrmError::IdentifierTaken { customers } => {
            assert_eq!(sorted(customers), sorted(vec![a.id, b.id]))
        }
        other => panic!("expected identifier_taken, got {other:?}"),
    }
    // One owner: refused as well (a staff create never edits another customer).
    let err = crm
        .create_customer_with(input(vec![fresh.clone(), pa.clone()]), LinkMode::Confirm)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CrmError::IdentifierTaken {
            customers: vec![a.id]
        }
    );
    assert_eq!(state_of(&*store, &[a.id, b.id]).await, before);
    assert_eq!(store.identity_owner(&fresh.key()).await.unwrap(), None);

    // The same create as evidence links and merges.
    let (c, how) = crm
        .create_customer_with(input(vec![pa, eb, fresh.clone()]), LinkMode::Auto)
        .await
        .unwrap();
    assert_eq!((c.id, how), (a.id, Resolution::Merged));
    assert_eq!(
        store.identity_owner(&fresh.key()).await.unwrap(),
        Some(a.id)
    );
}

pub async fn service_confirmed_create_merges_as_the_user(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    let pa = Identifier::Phone(phone("+6581226418"));
    let eb = Identifier::Email(email("bob@example.com"));
    let a = person(&crm, "Ann", vec![pa.clone()]).await;
    let b = person(&crm, "Bob", vec![eb.clone()]).await;
    let fresh = Identifier::Phone(phone("+6590001234"));
    let mode = LinkMode::Merge {
        user_id: "user:u1".into(),
    };

    // One owner: the new identifier is attached to it.
    let (linked, how) = crm
        .create_customer_with(input(vec![pa.clone(), fresh.clone()]), mode.clone())
        .await
        .unwrap();
    assert_eq!((linked.id, how), (a.id, Resolution::Linked));
    assert_eq!(linked.name.as_deref(), Some("Ann"));
    assert_eq!(
        store.identity_owner(&fresh.key()).await.unwrap(),
        Some(a.id)
    );

    // Two owners: merged into the oldest, recorded as the user's merge.
    let (merged, how) = crm
        .create_customer_with(input(vec![fresh, eb.clone()]), mode)
        .await
        .unwrap();
    assert_eq!((merged.id, how), (a.id, Resolution::Merged));
    let gone = store.get_customer(b.id).await.unwrap().unwrap();
    assert_eq!(
        (gone.status, gone.merged_into),
        (CustomerStatus::Merged, Some(a.id))
    );
    assert_eq!(store.identity_owner(&eb.key()).await.unwrap(), Some(a.id));
    let history = crm.history(a.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        history[0].by,
        MergeActor::User {
            user_id: "user:u1".into()
        }
    );
    assert_eq!(history[0].merged_ids, vec![b.id]);
}

pub async fn service_confirm_patch_with_a_taken_phone_changes_nothing(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    let pa = Identifier::Phone(phone("+6581226418"));
    let a = person(&crm, "Ann", vec![pa]).await;
    let b = person(
        &crm,
        "Bob",
        vec![Identifier::Email(email("bob@example.com"))],
    )
    .await;
    let before = state_of(&*store, &[a.id, b.id]).await;
    let patch = CustomerPatch {
        name: Some(Some("Peter Lim".into())),
        phones: Some(vec![phone("+6581226418"), phone("+6590001234")]),
        ..Default::default()
    };
    let err = crm
        .patch_customer(b.id, patch.clone(), LinkMode::Confirm)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CrmError::IdentifierTaken {
            customers: vec![a.id]
        }
    );
    assert_eq!(state_of(&*store, &[a.id, b.id]).await, before);
    assert_eq!(
        store
            .identity_owner(&Identifier::Phone(phone("+6590001234")).key())
            .await
            .unwrap(),
        None,
        "the free phone of a refused patch is not claimed"
    );

    // A patch naming only free identifiers goes through.
    let ok = CustomerPatch {
        phones: Some(vec![phone("+6590001234")]),
        ..Default::default()
    };
    let patched = crm
        .patch_customer(b.id, ok, LinkMode::Confirm)
        .await
        .unwrap();
    assert_eq!(patched.phones, vec![phone("+6590001234")]);
    assert_eq!(
        store.identities_of(b.id).await.unwrap(),
        vec!["email:bob@example.com", "phone:+6590001234"]
    );
}

pub async fn service_confirmed_patch_merges_into_the_edited_customer(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    let pa = Identifier::Phone(phone("+6581226418"));
    let ea = Identifier::Email(email("ann@example.com"));
    let a = person(&crm, "Ann", vec![pa.clone(), ea.clone()]).await;
    let b = person(
        &crm,
        "Bob",
        vec![Identifier::Email(email("bob@example.com"))],
    )
    .await;
    let events_before = store.events_after(None, 100_000).await.unwrap().len();
    let patch = CustomerPatch {
        phones: Some(vec![phone("+6581226418")]),
        ..Default::default()
    };
    let merged = crm
        .patch_customer(
            b.id,
            patch,
            LinkMode::Merge {
                user_id: "user:u1".into(),
            },
        )
        .await
        .unwrap();
    // The edited customer stays, though Ann is older: the edit was Bob's.
    assert_eq!(merged.id, b.id);
    assert_eq!(merged.name.as_deref(), Some("Bob"));
    assert_eq!(merged.phones, vec![phone("+6581226418")]);
    let mut emails = merged.emails.clone();
    emails.sort();
    assert_eq!(
        emails,
        vec![email("ann@example.com"), email("bob@example.com")]
    );
    assert_eq!(store.get_customer(b.id).await.unwrap(), Some(merged));
    let gone = store.get_customer(a.id).await.unwrap().unwrap();
    assert_eq!(
        (gone.status, gone.merged_into),
        (CustomerStatus::Merged, Some(b.id))
    );
    assert_eq!(
        store.identities_of(b.id).await.unwrap(),
        vec![
            "email:ann@example.com",
            "email:bob@example.com",
            "phone:+6581226418"
        ]
    );
    assert!(store.identities_of(a.id).await.unwrap().is_empty());
    let history = crm.history(b.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].survivor_id, history[0].merged_ids.clone()),
        (b.id, vec![a.id])
    );
    // One transaction: the profile change and the merge, two events.
    let events = store.events_after(None, 100_000).await.unwrap();
    assert_eq!(events.len(), events_before + 2, "{events:?}");

    // Undone: Ann comes back with her phone; Bob keeps his own edit but not
    // what the merge brought.
    crm.undo_merge(history[0].merge_id, "user:admin")
        .await
        .unwrap();
    let ann = store.get_customer(a.id).await.unwrap().unwrap();
    assert_eq!(ann.status, CustomerStatus::Active);
    assert_eq!(ann.phones, vec![phone("+6581226418")]);
    assert_eq!(store.identity_owner(&pa.key()).await.unwrap(), Some(a.id));
    let bob = store.get_customer(b.id).await.unwrap().unwrap();
    assert!(bob.phones.is_empty(), "{bob:?}");
    assert_eq!(bob.emails, vec![email("bob@example.com")]);
}

pub async fn service_writes_on_a_merged_id_are_refused_and_reads_follow(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    let a = person(&crm, "Ann", vec![Identifier::Phone(phone("+6581226418"))]).await;
    let b = person(
        &crm,
        "Bob",
        vec![Identifier::Email(email("bob@example.com"))],
    )
    .await;
    let c = person(
        &crm,
        "Cat",
        vec![Identifier::Email(email("cat@example.com"))],
    )
    .await;
    crm.merge_customers(a.id, &[b.id], "user:u1").await.unwrap();
    // Then Ann into Cat: Bob's chain now leads to Cat.
    crm.merge_customers(c.id, &[a.id], "user:u1").await.unwrap();
    let d = person(
        &crm,
        "Dan",
        vec![Identifier::Email(email("dan@example.com"))],
    )
    .await;
    let before = state_of(&*store, &[a.id, b.id, c.id, d.id]).await;
    let merged_b = CrmError::CustomerMerged {
        id: b.id,
        merged_into: c.id,
    };

    let rename = CustomerPatch {
        name: Some(Some("Peter Lim".into())),
        ..Default::default()
    };
    for mode in [
        LinkMode::Confirm,
        LinkMode::Auto,
        LinkMode::Merge {
            user_id: "user:u1".into(),
        },
    ] {
        assert_eq!(
            crm.patch_customer(b.id, rename.clone(), mode).await,
            Err(merged_b.clone())
        );
    }
    assert_eq!(crm.delete_customer(b.id).await, Err(merged_b.clone()));
    assert_eq!(
        crm.merge_customers(b.id, &[c.id], "user:u1")
            .await
            .map(|(_, c)| c.id),
        Err(merged_b.clone())
    );
    assert_eq!(
        crm.merge_customers(d.id, &[b.id], "user:u1")
            .await
            .map(|(_, c)| c.id),
        Err(merged_b)
    );
    assert_eq!(
        state_of(&*store, &[a.id, b.id, c.id, d.id]).await,
        before,
        "nothing changed"
    );
    // Reads follow to the survivor.
    let read = crm.get_customer(b.id).await.unwrap();
    assert_eq!(read.id, c.id);
    assert_eq!(read.name.as_deref(), Some("Cat"));
    // The survivor takes writes.
    let renamed = crm
        .patch_customer(c.id, rename, LinkMode::Confirm)
        .await
        .unwrap();
    assert_eq!(renamed.name.as_deref(), Some("Peter Lim"));
}

pub async fn service_concurrent_confirm_creates_of_one_new_phone_never_merge(
    store: Arc<dyn Store>,
) {
    let crm = crm(Arc::clone(&store));
    for round in 0..40 {
        let shared = Identifier::Phone(phone(&format!("+65913{round:05}")));
        let e1 = Identifier::Email(email(&format!("one{round}@race.example")));
        let e2 = Identifier::Email(email(&format!("two{round}@race.example")));
        let (first, second) = tokio::join!(
            crm.create_customer_with(input(vec![shared.clone(), e1.clone()]), LinkMode::Confirm),
            crm.create_customer_with(input(vec![shared.clone(), e2.clone()]), LinkMode::Confirm),
        );
        let (winner, winner_mail, loser_mail, refusal) = match (first, second) {
            (Ok((c, Resolution::Created)), Err(e)) => (c, &e1, &e2, e),
            (Err(e), Ok((c, Resolution::Created))) => (c, &e2, &e1, e),
            other => panic!("round {round}: one create and one refusal, got {other:?}"),
        };
        assert_eq!(
            refusal,
            CrmError::IdentifierTaken {
                customers: vec![winner.id]
            },
            "round {round}"
        );
        assert_eq!(
            store.identity_owner(&shared.key()).await.unwrap(),
            Some(winner.id)
        );
        assert_eq!(
            store.identity_owner(&winner_mail.key()).await.unwrap(),
            Some(winner.id)
        );
        assert_eq!(
            store.identity_owner(&loser_mail.key()).await.unwrap(),
            None,
            "round {round}: the refused create claimed nothing"
        );
    }
    let all = store.list_customers(None, None, 1000).await.unwrap();
    assert_eq!(all.len(), 40, "one customer per round");
    assert!(all.iter().all(|c| c.status == CustomerStatus::Active));
    for c in &all {
        assert!(store.merges_of(c.id).await.unwrap().is_empty());
    }
}

pub async fn service_confirm_patch_racing_a_create_for_one_phone_never_merges(
    store: Arc<dyn Store>,
) {
    let crm = crm(Arc::clone(&store));
    let mut creates_won = 0;
    for round in 0..40 {
        let a = person(
            &crm,
            "Ann",
            vec![Identifier::Email(email(&format!(
                "ann{round}@race.example"
            )))],
        )
        .await;
        let raw = format!("+65914{round:05}");
        let shared = Identifier::Phone(phone(&raw));
        let patch = CustomerPatch {
            phones: Some(vec![phone(&raw)]),
            ..Default::default()
        };
        let (patched, created) = tokio::join!(
            crm.patch_customer(a.id, patch, LinkMode::Confirm),
            crm.create_customer_with(input(vec![shared.clone()]), LinkMode::Confirm),
        );
        let owner = store.identity_owner(&shared.key()).await.unwrap();
        match (patched, created) {
            (Ok(p), Err(CrmError::IdentifierTaken { customers })) => {
                assert_eq!(customers, vec![a.id], "round {round}");
                assert_eq!(owner, Some(p.id));
            }
            (Err(CrmError::IdentifierTaken { customers }), Ok((c, Resolution::Created))) => {
                assert_eq!(customers, vec![c.id], "round {round}");
                assert_eq!(owner, Some(c.id));
                creates_won += 1;
                assert!(store
                    .get_customer(a.id)
                    .await
                    .unwrap()
                    .unwrap()
                    .phones
                    .is_empty());
            }
            other => panic!("round {round}: one write and one refusal, got {other:?}"),
        }
    }
    let all = store.list_customers(None, None, 1000).await.unwrap();
    assert!(all.iter().all(|c| c.status == CustomerStatus::Active));
    assert_eq!(
        all.len(),
        40 + creates_won,
        "a customer per round, and each created one"
    );
}
