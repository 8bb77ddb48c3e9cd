//! Identity linking: the store's merge primitives, then the service's
//! automatic linking, safeguards, undo and concurrency over each adapter.

use super::*;
use crm_models::service::LinkMode;

use crm_models::linking::{
    IdentityInfo, LinkPolicy, MergeActor, MergeRecord, MergedPart, Suggestion, SuggestionReason,
};
use crm_models::service::HistoryEntry;

fn new_sms(identifiers: Vec<Identifier>, when: i64) -> NewEngagement {
    NewEngagement {
        target: EngagementTarget::Identify {
            name: None,
            identifiers,
        },
        occurred_at: at(when),
        source: Source::default(),
        detail: EngagementDetail::Sms {
            direction: Direction::Inbound,
            body: format!("m{when}"),
        },
    }
}

fn with_detail(mut e: NewEngagement, detail: EngagementDetail) -> NewEngagement {
    e.detail = detail;
    e
}

fn page_view(target: EngagementTarget, when: i64) -> NewEngagement {
    NewEngagement {
        target,
        occurred_at: at(when),
        source: Source::default(),
        detail: EngagementDetail::Web {
            url: format!("https://shop.example/p/{when}"),
            view: "product".into(),
            view_desc: None,
            category: None,
            object_id: None,
        },
    }
}

async fn timeline(store: &Arc<dyn Store>, id: CustomerId) -> Vec<Engagement> {
    store
        .list_engagements(id, &EngagementFilter::default(), None, 10_000)
        .await
        .unwrap()
}

/// The profile fields an undo must give back exactly.
type Profile = (
    Option<String>,
    Vec<Email>,
    Vec<PhoneNumber>,
    BTreeMap<String, String>,
    CustomerStatus,
);

fn profile(c: &Customer) -> Profile {
    let mut emails = c.emails.clone();
    emails.sort();
    let mut phones = c.phones.clone();
    phones.sort();
    (c.name.clone(), emails, phones, c.social.clone(), c.status)
}

/// Every identity of every listed customer belongs to an active customer,
/// and the counts agree with the timelines.
async fn assert_consistent(store: &Arc<dyn Store>) {
    let all = store.list_customers(None, None, 10_000).await.unwrap();
    for c in &all {
        let keys = store.identities_of(c.id).await.unwrap();
        let events = timeline(store, c.id).await;
        if c.status == CustomerStatus::Merged {
            assert!(keys.is_empty(), "merged {} still owns {keys:?}", c.id);
            assert!(events.is_empty(), "merged {} still has engagements", c.id);
        }
        assert_eq!(c.counts.total(), events.len() as u64, "counts of {}", c.id);
        for key in keys {
            assert_eq!(store.identity_owner(&key).await.unwrap(), Some(c.id));
        }
    }
}

// --- store primitives ---

pub async fn identity_shared_flag_and_owner(store: Arc<dyn Store>) {
    assert_eq!(store.identity("phone:+6561234567").await.unwrap(), None);
    store
        .set_identity_shared("phone:+6561234567", true)
        .await
        .unwrap();
    let info = store.identity("phone:+6561234567").await.unwrap().unwrap();
    assert_eq!((info.owner, info.shared), (None, true));
    assert_eq!(
        store.identity_owner("phone:+6561234567").await.unwrap(),
        None
    );

    let c = customer_at(at(0));
    store.insert_customer(&c).await.unwrap();
    assert_eq!(
        store
            .claim_identity("phone:+6561234567", c.id)
            .await
            .unwrap(),
        Claim::Claimed
    );
    let info = store.identity("phone:+6561234567").await.unwrap().unwrap();
    assert_eq!((info.owner, info.shared), (Some(c.id), true));

    store
        .set_identity_shared("phone:+6561234567", false)
        .await
        .unwrap();
    let info = store.identity("phone:+6561234567").await.unwrap().unwrap();
    assert_eq!((info.owner, info.shared), (Some(c.id), false));
    store
        .set_identity_shared("email:a@b.co", false)
        .await
        .unwrap();
    assert!(matches!(
        store.identity("email:a@b.co").await.unwrap(),
        None | Some(crm_models::linking::IdentityInfo {
            owner: None,
            shared: false
        })
    ));
}

pub async fn move_identities_and_engagements_carry_counts(store: Arc<dyn Store>) {
    let a = customer_at(at(0));
    let b = customer_at(at(0));
    store.insert_customer(&a).await.unwrap();
    store.insert_customer(&b).await.unwrap();
    store.claim_identity("email:a@x.co", a.id).await.unwrap();
    store.claim_identity("email:b@x.co", b.id).await.unwrap();
    store
        .claim_identity("phone:+6581226418", b.id)
        .await
        .unwrap();
    let b1 = sms(b.id, at(10));
    let b2 = call(b.id, at(30));
    let b3 = web(b.id, at(20));
    let a1 = sms(a.id, at(5));
    store
        .insert_engagements(&[b1.clone(), b2.clone(), b3.clone(), a1.clone()])
        .await
        .unwrap();

    let keys = store.move_identities(b.id, a.id, None).await.unwrap();
    assert_eq!(keys, vec!["email:b@x.co", "phone:+6581226418"]);
    assert_eq!(
        store.identities_of(a.id).await.unwrap(),
        vec!["email:a@x.co", "email:b@x.co", "phone:+6581226418"]
    );
    assert!(store.identities_of(b.id).await.unwrap().is_empty());
    assert_eq!(
        store.move_identities(b.id, a.id, None).await.unwrap(),
        Vec::<String>::new(),
        "moving again moves nothing"
    );

    let mut moved = store.move_engagements(b.id, a.id, None).await.unwrap();
    moved.sort();
    let mut expected = vec![b1.id, b2.id, b3.id];
    expected.sort();
    assert_eq!(moved, expected);
    let a_now = store.get_customer(a.id).await.unwrap().unwrap();
    let b_now = store.get_customer(b.id).await.unwrap().unwrap();
    assert_eq!(
        (a_now.counts.sms, a_now.counts.call, a_now.counts.web),
        (2, 1, 1)
    );
    assert_eq!(b_now.counts.total(), 0);
    assert_eq!(a_now.last_engagement_at, Some(at(30)));
    assert_eq!(b_now.last_engagement_at, None);
    assert_eq!(timeline(&store, a.id).await.len(), 4);
    assert!(timeline(&store, b.id).await.is_empty());
    assert_eq!(
        store
            .get_engagement(b2.id)
            .await
            .unwrap()
            .unwrap()
            .customer_id,
        a.id
    );

    // Only the given ones go back.
    let back = store
        .move_engagements(a.id, b.id, Some(&[b1.id]))
        .await
        .unwrap();
    assert_eq!(back, vec![b1.id]);
    let a_now = store.get_customer(a.id).await.unwrap().unwrap();
    let b_now = store.get_customer(b.id).await.unwrap().unwrap();
    assert_eq!(a_now.counts.sms, 1);
    assert_eq!(b_now.counts.sms, 1);
    assert_eq!(b_now.last_engagement_at, Some(at(10)));
    assert_eq!(a_now.last_engagement_at, Some(at(30)));
    let back = store
        .move_identities(a.id, b.id, Some(&["email:b@x.co".to_string()]))
        .await
        .unwrap();
    assert_eq!(back, vec!["email:b@x.co"]);
    assert_eq!(
        store.identity_owner("email:b@x.co").await.unwrap(),
        Some(b.id)
    );
}

pub async fn merge_records_history_and_undo_once(store: Arc<dyn Store>) {
    let a = customer_at(at(0));
    let b = customer_at(at(1));
    let record = MergeRecord {
        id: crm_models::ids::MergeId::new(),
        survivor_id: a.id,
        merged_ids: vec![b.id],
        by: MergeActor::Auto {
            identifier: "email:b@x.co".into(),
        },
        at: at(2),
        survivor_before: a.clone(),
        parts: vec![MergedPart {
            before: b.clone(),
            identities: vec!["email:b@x.co".into()],
            engagements: vec![EngagementId::new()],
        }],
        undone_at: None,
        undone_by: None,
        repaired: false,
    };
    store.insert_merge(&record).await.unwrap();
    assert_eq!(
        store.get_merge(record.id).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(store.merges_of(a.id).await.unwrap(), vec![record.clone()]);
    assert_eq!(store.merges_of(b.id).await.unwrap(), vec![record.clone()]);
    assert!(store.merges_of(CustomerId::new()).await.unwrap().is_empty());

    assert!(store
        .mark_merge_undone(record.id, at(3), "u1")
        .await
        .unwrap());
    assert!(!store
        .mark_merge_undone(record.id, at(4), "u2")
        .await
        .unwrap());
    let undone = store.get_merge(record.id).await.unwrap().unwrap();
    assert_eq!(undone.undone_at, Some(at(3)));
    assert_eq!(undone.undone_by.as_deref(), Some("u1"));
    assert!(undone.protects(a.id, b.id));
    assert!(!record.protects(a.id, b.id));
}

pub async fn suggestions_are_kept_once_per_pair(store: Arc<dyn Store>) {
    let (a, b, c) = (CustomerId::new(), CustomerId::new(), CustomerId::new());
    let s1 = Suggestion::new(a, b, SuggestionReason::SimilarProfile, "same name", 0.5);
    let s2 = Suggestion::new(b, a, SuggestionReason::IdentifierCap, "cap", 0.8);
    let s3 = Suggestion::new(a, c, SuggestionReason::SimilarProfile, "same name", 0.5);
    store.upsert_suggestion(&s1).await.unwrap();
    store.upsert_suggestion(&s2).await.unwrap();
    store.upsert_suggestion(&s3).await.unwrap();
    let all = store.list_suggestions(None, 10).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let ab = all.iter().find(|s| s.key() == s1.key()).unwrap();
    assert_eq!(ab.reason, SuggestionReason::IdentifierCap, "replaced");
    let first = store.list_suggestions(None, 1).await.unwrap();
    let rest = store
        .list_suggestions(Some(&first[0].key()), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_ne!(rest[0].key(), first[0].key());

    // Several at once: each kept, a later one for the same pair winning.
    let d = CustomerId::new();
    let s4 = Suggestion::new(c, d, SuggestionReason::SimilarProfile, "same name", 0.4);
    let s5 = Suggestion::new(d, c, SuggestionReason::IdentifierCap, "cap", 0.9);
    let s6 = Suggestion::new(b, d, SuggestionReason::SimilarProfile, "same name", 0.6);
    store
        .upsert_suggestions(&[s4, s5.clone(), s6])
        .await
        .unwrap();
    store.upsert_suggestions(&[]).await.unwrap();
    let all = store.list_suggestions(None, 10).await.unwrap();
    assert_eq!(all.len(), 4, "{all:?}");
    let cd = all.iter().find(|s| s.key() == s5.key()).unwrap();
    assert_eq!(cd.reason, SuggestionReason::IdentifierCap, "the later one");
}

/// A dismissed pair stays dismissed: a later suggestion for it (the finder
/// seeing the same pair again) keeps the dismissal, and the service no
/// longer lists it.
pub async fn dismissed_suggestions_are_not_suggested_again(store: Arc<dyn Store>) {
    let crm = crm(store.clone());
    let a = crm
        .create_customer(CustomerInput {
            name: Some("Tan Wei Ming".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .0;
    let b = crm
        .create_customer(CustomerInput {
            name: Some("Wei Ming Tan".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .0;
    let c = crm
        .create_customer(CustomerInput {
            name: Some("Tan Wei Jie".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .0;
    let ab = Suggestion::new(
        a.id,
        b.id,
        SuggestionReason::SimilarProfile,
        "same name",
        0.7,
    );
    let ac = Suggestion::new(
        a.id,
        c.id,
        SuggestionReason::SimilarProfile,
        "same name",
        0.5,
    );
    store
        .upsert_suggestions(&[ab.clone(), ac.clone()])
        .await
        .unwrap();
    assert_eq!(crm.duplicates(10).await.unwrap().len(), 2);

    // Either order names the pair.
    assert!(store.dismiss_suggestion(b.id, a.id, at(5)).await.unwrap());
    let open = crm.duplicates(10).await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].key(), ac.key());
    let kept = store.list_suggestions(None, 10).await.unwrap();
    let dismissed = kept.iter().find(|s| s.key() == ab.key()).unwrap();
    assert_eq!(dismissed.dismissed_at, Some(at(5)));

    // Suggested again, alone or in a batch: still dismissed, at its time.
    let again = Suggestion::new(a.id, b.id, SuggestionReason::IdentifierCap, "cap", 0.9);
    store.upsert_suggestion(&again).await.unwrap();
    store
        .upsert_suggestions(std::slice::from_ref(&again))
        .await
        .unwrap();
    let kept = store.list_suggestions(None, 10).await.unwrap();
    let dismissed = kept.iter().find(|s| s.key() == ab.key()).unwrap();
    assert_eq!(
        dismissed.reason,
        SuggestionReason::IdentifierCap,
        "replaced"
    );
    assert_eq!(dismissed.dismissed_at, Some(at(5)), "still dismissed");
    assert_eq!(crm.duplicates(10).await.unwrap().len(), 1);

    // Dismissing again keeps the first time; a pair never suggested is not
    // dismissed.
    assert!(store.dismiss_suggestion(a.id, b.id, at(9)).await.unwrap());
    let kept = store.list_suggestions(None, 10).await.unwrap();
    let dismissed = kept.iter().find(|s| s.key() == ab.key()).unwrap();
    assert_eq!(dismissed.dismissed_at, Some(at(5)));
    assert!(!store.dismiss_suggestion(b.id, c.id, at(9)).await.unwrap());
    assert!(!crm.dismiss_duplicate(b.id, c.id).await.unwrap());
    assert!(crm.dismiss_duplicate(c.id, a.id).await.unwrap());
    assert!(crm.duplicates(10).await.unwrap().is_empty());
}

// --- the service ---

pub async fn service_call_sms_whatsapp_from_one_number_make_one_customer(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    let sg = Region::parse("SG").ok();
    let p = |raw: &str| Identifier::Phone(PhoneNumber::parse(raw, sg).unwrap());
    let call = with_detail(
        new_sms(vec![p("+65 8122 6418")], 1),
        EngagementDetail::Call {
            direction: Direction::Inbound,
            duration_s: 30,
            status: CallStatus::Answered,
        },
    );
    let text = new_sms(vec![p("(065) 8122-6418")], 2);
    let chat = with_detail(
        new_sms(vec![p("81226418")], 3),
        EngagementDetail::Whatsapp {
            direction: Direction::Inbound,
            payload_type: crm_models::engagement::PayloadType::Text,
            payload: "hi".into(),
        },
    );
    let a = crm.record_engagement(call).await.unwrap();
    let b = crm.record_engagement(text).await.unwrap();
    let c = crm.record_engagement(chat).await.unwrap();
    assert!(a.customer_created);
    assert_eq!(a.customer_id, b.customer_id);
    assert_eq!(a.customer_id, c.customer_id);
    let customer = store.get_customer(a.customer_id).await.unwrap().unwrap();
    assert_eq!(
        (
            customer.counts.call,
            customer.counts.sms,
            customer.counts.whatsapp
        ),
        (1, 1, 1)
    );
    assert_eq!(store.list_customers(None, None, 10).await.unwrap().len(), 1);
}

pub async fn service_one_event_naming_two_customers_merges_and_undo_restores(
    store: Arc<dyn Store>,
) {
    let crm = crm(Arc::clone(&store));
    let ann_mail = Identifier::Email(email("ann@acme.com"));
    let ann_phone = Identifier::Phone(phone("+6581226418"));
    let bob_mail = Identifier::Email(email("ann.tan@gmail.com"));
    let (a, _) = crm
        .create_customer(CustomerInput {
            name: None,
            identifiers: vec![ann_mail.clone(), ann_phone.clone()],
            status: None,
        })
        .await
        .unwrap();
    let (b, _) = crm
        .create_customer(CustomerInput {
            name: Some("Ann Tan".into()),
            identifiers: vec![bob_mail.clone()],
            status: None,
        })
        .await
        .unwrap();
    crm.record_engagement(new_sms(vec![ann_phone.clone()], 1))
        .await
        .unwrap();
    crm.record_engagement(new_sms(vec![bob_mail.clone()], 2))
        .await
        .unwrap();
    crm.record_engagement(new_sms(vec![bob_mail.clone()], 3))
        .await
        .unwrap();
    let a_before = store.get_customer(a.id).await.unwrap().unwrap();
    let b_before = store.get_customer(b.id).await.unwrap().unwrap();

    // One email naming both: merged into the older, A.
    let joined = crm
        .record_engagement(new_sms(vec![ann_mail.clone(), bob_mail.clone()], 4))
        .await
        .unwrap();
    assert_eq!(joined.customer_id, a.id);
    let merged = store.get_customer(a.id).await.unwrap().unwrap();
    assert_eq!(
        merged.name.as_deref(),
        Some("Ann Tan"),
        "an empty name is filled"
    );
    assert!(merged.emails.contains(&email("ann.tan@gmail.com")));
    assert_eq!(merged.counts.sms, 4);
    let gone = store.get_customer(b.id).await.unwrap().unwrap();
    assert_eq!(gone.status, CustomerStatus::Merged);
    assert_eq!(gone.merged_into, Some(a.id));
    assert_eq!(
        crm.get_customer(b.id).await.unwrap().id,
        a.id,
        "a merged id answers with the survivor"
    );
    assert_eq!(
        store.identity_owner(&bob_mail.key()).await.unwrap(),
        Some(a.id)
    );
    assert_consistent(&store).await;

    let history = crm.history(b.id).await.unwrap();
    assert_eq!(history.len(), 1);
    let HistoryEntry {
        merge_id,
        action,
        by,
        ..
    } = history[0].clone();
    assert_eq!(action, "merge");
    assert_eq!(
        by,
        MergeActor::Auto {
            identifier: bob_mail.key()
        }
    );
    assert_eq!(crm.history(a.id).await.unwrap(), history);

    // A later email through B's address: after the undo it belongs to B.
    crm.record_engagement(with_detail(
        new_sms(vec![bob_mail.clone()], 5),
        EngagementDetail::Email {
            direction: Direction::Inbound,
            subject: "later".into(),
        },
    ))
    .await
    .unwrap();
    // And an engagement recorded on the survivor by id stays with it.
    crm.record_engagement(NewEngagement {
        target: EngagementTarget::Customer(b.id),
        ..new_sms(vec![], 6)
    })
    .await
    .unwrap();

    let restored = crm.undo_merge(merge_id, "admin-1").await.unwrap();
    assert_eq!(ids_of(&restored), vec![a.id, b.id]);
    let a_after = store.get_customer(a.id).await.unwrap().unwrap();
    let b_after = store.get_customer(b.id).await.unwrap().unwrap();
    assert_eq!(profile(&a_after), profile(&a_before));
    assert_eq!(profile(&b_after), profile(&b_before));
    assert_eq!(b_after.merged_into, None);
    assert_eq!(
        store.identities_of(a.id).await.unwrap(),
        vec![ann_mail.key(), ann_phone.key()]
    );
    assert_eq!(
        store.identities_of(b.id).await.unwrap(),
        vec![bob_mail.key()]
    );
    // A had one SMS, then the joining SMS and the one recorded by id.
    assert_eq!(a_after.counts.sms, a_before.counts.sms + 2);
    assert_eq!(b_after.counts.sms, b_before.counts.sms);
    assert_eq!(
        b_after.counts.email, 1,
        "the later email follows B's address"
    );
    assert_consistent(&store).await;
    assert!(matches!(
        crm.undo_merge(merge_id, "admin-1").await,
        Err(CrmError::Refused(_))
    ));
    let history = crm.history(b.id).await.unwrap();
    assert_eq!(
        history.iter().map(|h| h.action).collect::<Vec<_>>(),
        vec!["merge", "undo"]
    );

    // The pair is protected: the same identifiers no longer merge them, and
    // the refusal is suggested instead.
    let again = crm
        .record_engagement(new_sms(vec![ann_mail.clone(), bob_mail.clone()], 7))
        .await
        .unwrap();
    assert_eq!(again.customer_id, a.id);
    assert_eq!(
        store.get_customer(b.id).await.unwrap().unwrap().status,
        CustomerStatus::Active
    );
    let suggestions = crm.duplicates(10).await.unwrap();
    assert_eq!(suggestions.len(), 1, "{suggestions:?}");
    assert_eq!(suggestions[0].reason, SuggestionReason::UndoneMerge);

    // By hand it still can.
    let (record, survivor) = crm.merge_customers(b.id, &[a.id], "agent-1").await.unwrap();
    assert_eq!(survivor.id, b.id, "by hand, the chosen customer survives");
    assert_eq!(record.merged_ids, vec![a.id]);
    assert!(
        crm.duplicates(10).await.unwrap().is_empty(),
        "a merged pair is no longer suggested"
    );
    assert_consistent(&store).await;
}

pub async fn service_web_visitor_logs_in_then_calls(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    let mail = Identifier::Email(email("ann@acme.com"));
    let ph = Identifier::Phone(phone("+6581226418"));
    let (ann, _) = crm
        .create_customer(CustomerInput {
            name: Some("Ann".into()),
            identifiers: vec![mail.clone(), ph.clone()],
            status: None,
        })
        .await
        .unwrap();
    let visitor = Identifier::Anonymous("v-123".into());
    let first = crm
        .record_engagement(page_view(
            EngagementTarget::Identify {
                name: None,
                identifiers: vec![visitor.clone()],
            },
            1,
        ))
        .await
        .unwrap();
    assert!(
        first.customer_created,
        "an anonymous visitor gets a customer"
    );
    assert_ne!(first.customer_id, ann.id);
    crm.record_engagement(page_view(
        EngagementTarget::Identify {
            name: None,
            identifiers: vec![visitor.clone()],
        },
        2,
    ))
    .await
    .unwrap();

    // Login: the same visitor with an email.
    let login = crm
        .record_engagement(page_view(
            EngagementTarget::Identify {
                name: None,
                identifiers: vec![visitor.clone(), mail.clone()],
            },
            3,
        ))
        .await
        .unwrap();
    assert_eq!(login.customer_id, ann.id);
    let call = crm
        .record_engagement(with_detail(
            new_sms(vec![ph.clone()], 4),
            EngagementDetail::Call {
                direction: Direction::Inbound,
                duration_s: 12,
                status: CallStatus::Answered,
            },
        ))
        .await
        .unwrap();
    assert_eq!(call.customer_id, ann.id);
    let c = store.get_customer(ann.id).await.unwrap().unwrap();
    assert_eq!(
        (c.counts.web, c.counts.call),
        (3, 1),
        "all history on one customer"
    );
    assert_eq!(timeline(&store, ann.id).await.len(), 4);
    assert_eq!(
        store.identity_owner(&visitor.key()).await.unwrap(),
        Some(ann.id)
    );
    let active: Vec<_> = store
        .list_customers(None, None, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.status != CustomerStatus::Merged)
        .collect();
    assert_eq!(ids_of(&active), vec![ann.id]);

    // A page view naming the customer by id with a new visitor id links it.
    let other_visitor = Identifier::Anonymous("v-999".into());
    crm.record_engagement(page_view(
        EngagementTarget::Identify {
            name: None,
            identifiers: vec![other_visitor.clone()],
        },
        5,
    ))
    .await
    .unwrap();
    let by_id = crm
        .record_engagement(page_view(
            EngagementTarget::CustomerWith {
                id: ann.id,
                identifiers: vec![other_visitor.clone()],
            },
            6,
        ))
        .await
        .unwrap();
    assert_eq!(by_id.customer_id, ann.id);
    assert_eq!(
        store
            .get_customer(ann.id)
            .await
            .unwrap()
            .unwrap()
            .counts
            .web,
        5
    );
    assert_consistent(&store).await;
}

pub async fn service_blocked_and_shared_identifiers_never_link(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    // A switchboard number, shared by the hotel's guests.
    let board = Identifier::Phone(phone("+6563388888"));
    let (guest_a, _) = crm
        .create_customer(CustomerInput {
            name: Some("Guest A".into()),
            identifiers: vec![Identifier::Email(email("a@guest.co")), board.clone()],
            status: None,
        })
        .await
        .unwrap();
    crm.set_shared(&board, true).await.unwrap();
    let b = crm
        .record_engagement(new_sms(
            vec![Identifier::Email(email("b@guest.co")), board.clone()],
            1,
        ))
        .await
        .unwrap();
    assert_ne!(b.customer_id, guest_a.id, "a shared number links nobody");
    let guest_b = store.get_customer(b.customer_id).await.unwrap().unwrap();
    assert!(
        guest_b.phones.contains(&phone("+6563388888")),
        "but it is on the profile"
    );
    let alone = crm
        .record_engagement(new_sms(vec![board.clone()], 2))
        .await
        .unwrap();
    assert!(alone.customer_created);
    assert!(![guest_a.id, guest_b.id].contains(&alone.customer_id));
    assert_eq!(
        store.identity_owner(&board.key()).await.unwrap(),
        Some(guest_a.id),
        "the first owner keeps the record"
    );

    // Blocked values: all-same digits and role addresses.
    let same = Identifier::Phone(PhoneNumber::from_e164_unchecked("+6588888888".into()));
    let x = crm
        .record_engagement(new_sms(vec![same.clone()], 3))
        .await
        .unwrap();
    let y = crm
        .record_engagement(new_sms(vec![same.clone()], 4))
        .await
        .unwrap();
    assert_ne!(x.customer_id, y.customer_id);
    assert_eq!(store.identity_owner(&same.key()).await.unwrap(), None);
    let test = Identifier::Email(email("test@example.com"));
    let (p, _) = crm
        .create_customer(CustomerInput {
            identifiers: vec![test.clone(), Identifier::Email(email("p@x.co"))],
            ..Default::default()
        })
        .await
        .unwrap();
    let (q, created) = crm
        .create_customer(CustomerInput {
            identifiers: vec![test.clone(), Identifier::Email(email("q@x.co"))],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(created);
    assert_ne!(p.id, q.id);

    // A value listed in configuration.
    let mut policy = LinkPolicy::default();
    policy.blocked.insert("phone:+6581226418".into());
    let strict = crm.clone().with_policy(policy);
    let listed = Identifier::Phone(phone("+6581226418"));
    let m = strict
        .record_engagement(new_sms(vec![listed.clone()], 5))
        .await
        .unwrap();
    let n = strict
        .record_engagement(new_sms(vec![listed.clone()], 6))
        .await
        .unwrap();
    assert_ne!(m.customer_id, n.customer_id);
    let merged = store
        .list_customers(None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.status == CustomerStatus::Merged)
        .count();
    assert_eq!(merged, 0, "nothing was merged");
    assert_consistent(&store).await;
}

pub async fn service_cap_turns_a_merge_into_a_suggestion(store: Arc<dyn Store>) {
    let policy = LinkPolicy {
        max_phones: 2,
        ..LinkPolicy::default()
    };
    let crm = crm(Arc::clone(&store)).with_policy(policy);
    let mail = Identifier::Email(email("a@x.co"));
    let (a, _) = crm
        .create_customer(CustomerInput {
            identifiers: vec![
                mail.clone(),
                Identifier::Phone(phone("+6581226418")),
                Identifier::Phone(phone("+6591234567")),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let other = Identifier::Phone(phone("+6590001234"));
    let (b, _) = crm
        .create_customer(CustomerInput {
            identifiers: vec![other.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let r = crm
        .record_engagement(new_sms(vec![mail, other], 1))
        .await
        .unwrap();
    assert_eq!(r.customer_id, a.id, "the oldest takes the engagement");
    assert_eq!(
        store.get_customer(b.id).await.unwrap().unwrap().status,
        CustomerStatus::Active
    );
    let suggestions = crm.duplicates(10).await.unwrap();
    assert_eq!(suggestions.len(), 1);
    assert_eq!(suggestions[0].reason, SuggestionReason::IdentifierCap);
    let mut pair = vec![a.id, b.id];
    pair.sort();
    assert_eq!(suggestions[0].customer_ids.to_vec(), pair);
}

pub async fn service_patch_with_a_taken_identifier_merges(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    let (a, _) = crm
        .create_customer(CustomerInput {
            name: Some("Ann".into()),
            identifiers: vec![Identifier::Email(email("ann@example.com"))],
            status: None,
        })
        .await
        .unwrap();
    let (b, _) = crm
        .create_customer(CustomerInput {
            name: Some("Bob".into()),
            identifiers: vec![Identifier::Email(email("bob@example.com"))],
            status: None,
        })
        .await
        .unwrap();
    let patch = CustomerPatch {
        emails: Some(vec![email("ann@example.com"), email("bob@example.com")]),
        phones: Some(vec![phone("+6591234567")]),
        ..Default::default()
    };
    // Patching B with A's email: they are one person; A is older.
    let patched = crm
        .patch_customer(b.id, patch, LinkMode::Auto)
        .await
        .unwrap();
    assert_eq!(patched.id, a.id);
    assert_eq!(
        patched.name.as_deref(),
        Some("Ann"),
        "the survivor's own values win"
    );
    let mut emails = patched.emails.clone();
    emails.sort();
    assert_eq!(
        emails,
        vec![email("ann@example.com"), email("bob@example.com")]
    );
    assert_eq!(patched.phones, vec![phone("+6591234567")]);
    assert_eq!(
        store.identities_of(a.id).await.unwrap(),
        vec![
            "email:ann@example.com",
            "email:bob@example.com",
            "phone:+6591234567"
        ]
    );
    assert_eq!(
        store.get_customer(b.id).await.unwrap().unwrap().merged_into,
        Some(a.id)
    );
    assert_consistent(&store).await;
}

pub async fn service_concurrent_overlapping_links_make_one_customer(store: Arc<dyn Store>) {
    const N: usize = 8;
    let crm = crm(Arc::clone(&store));
    let mails: Vec<Identifier> = (0..N)
        .map(|i| Identifier::Email(email(&format!("p{i}@x.co"))))
        .collect();
    let mut ids = Vec::new();
    for (i, m) in mails.iter().enumerate() {
        let r = crm
            .record_engagement(new_sms(vec![m.clone()], i as i64))
            .await
            .unwrap();
        ids.push(r.customer_id);
    }
    // Chains that overlap (i, i+1), raced, with more engagements on each side.
    let mut tasks = Vec::new();
    for round in 0..3 {
        for i in 0..N - 1 {
            let crm = crm.clone();
            let pair = vec![mails[i].clone(), mails[i + 1].clone()];
            let single = vec![mails[(i + round) % N].clone()];
            tasks.push(tokio::spawn(async move {
                let a = crm
                    .record_engagement(new_sms(pair, 100 + (round * N + i) as i64))
                    .await;
                let b = crm
                    .record_engagement(new_sms(single, 200 + (round * N + i) as i64))
                    .await;
                (a, b)
            }));
        }
    }
    let mut recorded = 0u64;
    for t in tasks {
        let (a, b) = t.await.unwrap();
        a.unwrap();
        b.unwrap();
        recorded += 2;
    }
    let all = store.list_customers(None, None, 100).await.unwrap();
    let active: Vec<&Customer> = all
        .iter()
        .filter(|c| c.status != CustomerStatus::Merged)
        .collect();
    assert_eq!(active.len(), 1, "one survivor: {:?}", ids_of(&all));
    let survivor = active[0];
    assert_eq!(survivor.id, ids[0], "the oldest survives");
    assert_eq!(
        survivor.counts.total(),
        N as u64 + recorded,
        "no engagement lost"
    );
    assert_eq!(
        timeline(&store, survivor.id).await.len() as u64,
        N as u64 + recorded
    );
    let keys = store.identities_of(survivor.id).await.unwrap();
    assert_eq!(keys.len(), N, "{keys:?}");
    let mut emails = survivor.emails.clone();
    emails.sort();
    assert_eq!(emails.len(), N, "the profile lists every email");
    for m in &mails {
        assert_eq!(
            crm.get_customer(store.identity_owner(&m.key()).await.unwrap().unwrap())
                .await
                .unwrap()
                .id,
            survivor.id
        );
    }
    assert_consistent(&store).await;
}

// --- bulk resolution ---

pub async fn identities_are_read_in_bulk(store: Arc<dyn Store>) {
    let a = CustomerId::new();
    let b = CustomerId::new();
    store.claim_identity("phone:+6581226418", a).await.unwrap();
    store.claim_identity("email:bob@acme.com", b).await.unwrap();
    store
        .set_identity_shared("phone:+6562220000", true)
        .await
        .unwrap();
    store
        .set_identity_shared("email:bob@acme.com", true)
        .await
        .unwrap();
    let keys: Vec<String> = [
        "email:bob@acme.com",
        "phone:+6599999999",
        "phone:+6581226418",
        "phone:+6562220000",
        "phone:+6581226418",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let infos = store.identities(&keys).await.unwrap();
    let expected = vec![
        Some(IdentityInfo {
            owner: Some(b),
            shared: true,
        }),
        None,
        Some(IdentityInfo {
            owner: Some(a),
            shared: false,
        }),
        Some(IdentityInfo {
            owner: None,
            shared: true,
        }),
        Some(IdentityInfo {
            owner: Some(a),
            shared: false,
        }),
    ];
    assert_eq!(infos, expected);
    // Each answer is what the single read says.
    for (key, info) in keys.iter().zip(&infos) {
        assert_eq!(&store.identity(key).await.unwrap(), info, "{key}");
    }
    assert!(store.identities(&[]).await.unwrap().is_empty());
}

pub async fn customers_owning_their_keys_are_created_all_or_nothing(store: Arc<dyn Store>) {
    let taken_by = customer_at(at(0));
    store.insert_customer(&taken_by).await.unwrap();
    store
        .claim_identity("phone:+6591110004", taken_by.id)
        .await
        .unwrap();
    let a = customer_at(at(1));
    let b = customer_at(at(2));
    let c = customer_at(at(3));
    let d = customer_at(at(4));
    let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    let created = store
        .insert_customers_owning(&[
            (a.clone(), keys(&["phone:+6591110001", "email:a@acme.com"])),
            // Shares a key with `a`, which took it first.
            (b.clone(), keys(&["phone:+6591110003", "email:a@acme.com"])),
            // Owned before the call.
            (c.clone(), keys(&["phone:+6591110004"])),
            (d.clone(), keys(&["phone:+6591110005"])),
        ])
        .await
        .unwrap();
    assert_eq!(created, vec![true, false, false, true]);
    assert_eq!(store.get_customer(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_customer(d.id).await.unwrap(), Some(d.clone()));
    assert_eq!(store.get_customer(b.id).await.unwrap(), None);
    assert_eq!(store.get_customer(c.id).await.unwrap(), None);
    assert_eq!(
        store.identities_of(a.id).await.unwrap(),
        vec!["email:a@acme.com", "phone:+6591110001"]
    );
    assert_eq!(
        store.identities_of(d.id).await.unwrap(),
        vec!["phone:+6591110005"]
    );
    // A refused customer claims nothing, not even its free keys.
    assert!(store.identities_of(b.id).await.unwrap().is_empty());
    assert_eq!(
        store.identity_owner("phone:+6591110003").await.unwrap(),
        None
    );
    assert_eq!(
        store.identity_owner("phone:+6591110004").await.unwrap(),
        Some(taken_by.id)
    );
    // An id that exists is refused too.
    let again = store
        .insert_customers_owning(&[(a.clone(), keys(&["phone:+6591110009"]))])
        .await
        .unwrap();
    assert_eq!(again, vec![false]);
    assert_eq!(
        store.identity_owner("phone:+6591110009").await.unwrap(),
        None
    );
    assert!(store.insert_customers_owning(&[]).await.unwrap().is_empty());
}

/// A batch mixing new, known and linking identifier sets resolves each as
/// one item at a time would: one customer per number, the first item naming
/// a new customer reports it created, a name fills a nameless customer, and
/// a set joining a new number to an email attaches the email.
pub async fn service_batch_resolves_new_known_and_linking_sets(store: Arc<dyn Store>) {
    let crm = crm(Arc::clone(&store));
    let known_phone = Identifier::Phone(phone("+6581226418"));
    let nameless_phone = Identifier::Phone(phone("+6591234567"));
    let (known, _) = crm
        .create_customer(CustomerInput {
            name: Some("Ann Tan".into()),
            identifiers: vec![known_phone.clone()],
            status: None,
        })
        .await
        .unwrap();
    let (nameless, _) = crm
        .create_customer(CustomerInput {
            name: None,
            identifiers: vec![nameless_phone.clone()],
            status: None,
        })
        .await
        .unwrap();
    let new_phone = Identifier::Phone(phone("+6590001111"));
    let other_new = Identifier::Phone(phone("+6590002222"));
    let new_mail = Identifier::Email(email("new.person@acme.com"));
    let named = |mut e: NewEngagement, n: &str| {
        if let EngagementTarget::Identify { name, .. } = &mut e.target {
            *name = Some(n.to_string());
        }
        e
    };
    let items = vec![
        new_sms(vec![new_phone.clone()], 1),
        new_sms(vec![known_phone.clone()], 2),
        named(new_sms(vec![new_phone.clone()], 3), "Wei Ming"),
        named(new_sms(vec![nameless_phone.clone()], 4), "Bob Lee"),
        new_sms(vec![other_new.clone()], 5),
        new_sms(vec![new_phone.clone(), new_mail.clone()], 6),
        new_sms(vec![known_phone.clone()], 7),
        new_sms(vec![other_new.clone()], 8),
    ];
    let out: Vec<_> = crm
        .record_engagements(items)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let new_id = out[0].customer_id;
    let other_id = out[4].customer_id;
    let ids: Vec<CustomerId> = out.iter().map(|r| r.customer_id).collect();
    assert_eq!(
        ids,
        vec![
            new_id,
            known.id,
            new_id,
            nameless.id,
            other_id,
            new_id,
            known.id,
            other_id
        ]
    );
    let created: Vec<bool> = out.iter().map(|r| r.customer_created).collect();
    assert_eq!(
        created,
        vec![true, false, false, false, true, false, false, false]
    );
    assert!(new_id != other_id && new_id != known.id && other_id != nameless.id);

    let new_customer = store.get_customer(new_id).await.unwrap().unwrap();
    assert_eq!(new_customer.name.as_deref(), Some("Wei Ming"));
    assert_eq!(new_customer.counts.sms, 3);
    assert_eq!(
        store.identity_owner(&new_mail.key()).await.unwrap(),
        Some(new_id)
    );
    assert_eq!(new_customer.emails, vec![email("new.person@acme.com")]);
    let nameless_now = store.get_customer(nameless.id).await.unwrap().unwrap();
    assert_eq!(nameless_now.name.as_deref(), Some("Bob Lee"));
    let other = store.get_customer(other_id).await.unwrap().unwrap();
    assert_eq!((other.name.clone(), other.counts.sms), (None, 2));
    assert_eq!(
        store
            .get_customer(known.id)
            .await
            .unwrap()
            .unwrap()
            .counts
            .sms,
        2
    );
    assert_eq!(store.list_customers(None, None, 10).await.unwrap().len(), 4);
    assert_consistent(&store).await;
}
