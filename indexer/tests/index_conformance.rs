//! One suite, run against every `SearchIndex` adapter (one line each at the
//! bottom). The Redis adapter uses `CRM_TEST_REDIS_URL` or a `redis-server`
//! this process starts, with a fresh key prefix per test.

// A panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support {
    pub mod redis_server;
}

use futures::stream::{self, StreamExt};
use support::redis_server::DeleteOnDrop;

use crm_indexer::{
    IndexError, IndexedCustomer, MatchedOn, MemoryIndex, Query, RedisIndex, SearchHit, SearchIndex,
};
use crm_models::time::{self, Timestamp};
use crm_models::{
    CallStatus, Customer, CustomerId, CustomerStatus, Direction, Email, Engagement,
    EngagementDetail, EngagementId, PhoneNumber, Region, Source,
};

// --- fixtures ---

fn at(s: &str) -> Timestamp {
    time::parse(s).unwrap()
}

fn customer(name: &str, phones: &[&str], emails: &[&str]) -> Customer {
    let mut c = Customer::new(
        CustomerId::new(),
        (!name.is_empty()).then(|| name.to_string()),
        at("2026-01-01T00:00:00Z"),
    );
    c.phones = phones
        .iter()
        .map(|p| PhoneNumber::parse(p, None).unwrap())
        .collect();
    c.emails = emails.iter().map(|e| Email::parse(e).unwrap()).collect();
    c
}

/// A customer last engaged at `when`, so ties order predictably.
fn engaged(mut c: Customer, when: &str) -> Customer {
    c.last_engagement_at = Some(at(when));
    c
}

fn doc(c: &Customer) -> IndexedCustomer {
    IndexedCustomer::new(c.clone(), vec![])
}

fn sms(c: &Customer, when: &str, body: &str) -> Engagement {
    Engagement {
        id: EngagementId::new(),
        customer_id: c.id,
        occurred_at: at(when),
        recorded_at: at(when),
        source: Source::default(),
        detail: EngagementDetail::Sms {
            direction: Direction::Inbound,
            body: body.into(),
        },
    }
}

fn call(c: &Customer, when: &str) -> Engagement {
    Engagement {
        id: EngagementId::new(),
        customer_id: c.id,
        occurred_at: at(when),
        recorded_at: at(when),
        source: Source::default(),
        detail: EngagementDetail::Call {
            direction: Direction::Outbound,
            duration_s: 42,
            status: CallStatus::Answered,
        },
    }
}

async fn put(index: &dyn SearchIndex, customers: &[&Customer]) {
    for c in customers {
        index.upsert(&doc(c)).await.unwrap();
    }
}

async fn find(index: &dyn SearchIndex, query: Query) -> Vec<SearchHit> {
    index.search(&query, 20).await.unwrap()
}

async fn any(index: &dyn SearchIndex, q: &str) -> Vec<CustomerId> {
    ids(&find(index, Query::Any(q.into())).await)
}

async fn name(index: &dyn SearchIndex, q: &str) -> Vec<CustomerId> {
    ids(&find(index, Query::Name(q.into())).await)
}

fn ids(hits: &[SearchHit]) -> Vec<CustomerId> {
    hits.iter().map(|h| h.id).collect()
}

fn sg() -> Option<Region> {
    Some(Region::parse("SG").unwrap())
}

// --- the suite ---

async fn one_typo_finds_narendra_and_john(index: &dyn SearchIndex) {
    let narendra = customer("Narendra Modi", &[], &[]);
    let john = customer("John Tan", &[], &[]);
    put(index, &[&narendra, &john]).await;

    let hits = find(index, Query::Name("Narendar".into())).await;
    assert_eq!(ids(&hits), vec![narendra.id]);
    assert_eq!(hits[0].matched_on, MatchedOn::Name);
    assert!(hits[0].score < 0.5, "a typo scores low: {}", hits[0].score);
    assert_eq!(any(index, "Jonh").await, vec![john.id]);
    assert_eq!(any(index, "jhon tan").await, vec![john.id]);
    // Short tokens get no typo tolerance.
    assert!(any(index, "Jhn").await.is_empty());
}

async fn exact_then_prefix_then_typo(index: &dyn SearchIndex) {
    // The typo and prefix customers engaged more recently: rank still wins.
    let exact = engaged(customer("John", &[], &[]), "2026-01-01T00:00:00Z");
    let prefix = engaged(customer("Johnson", &[], &[]), "2026-02-01T00:00:00Z");
    let typo = engaged(customer("Jonh", &[], &[]), "2026-03-01T00:00:00Z");
    put(index, &[&typo, &prefix, &exact]).await;

    let hits = find(index, Query::Any("john".into())).await;
    assert_eq!(ids(&hits), vec![exact.id, prefix.id, typo.id]);
    assert!(hits[0].score > hits[1].score && hits[1].score > hits[2].score);
    assert_eq!(hits[0].score, 1.0);
}

async fn accents_fold(index: &dyn SearchIndex) {
    let jose = customer("José García", &[], &[]);
    let plain = engaged(customer("Jose Tan", &[], &[]), "2026-01-01T00:00:00Z");
    put(index, &[&jose, &plain]).await;

    let both = any(index, "jose").await;
    assert_eq!(both.len(), 2);
    assert_eq!(both[0], plain.id, "ties go to the more recent engagement");
    assert_eq!(any(index, "JOSÉ garcia").await, vec![jose.id]);
    assert_eq!(any(index, "García").await, vec![jose.id]);
}

async fn ann_prefix_and_multi_token(index: &dyn SearchIndex) {
    let ann = engaged(customer("Ann", &[], &[]), "2026-01-01T00:00:00Z");
    // More recent, but only part of the name matches.
    let ann_tan = engaged(customer("Ann Tan", &[], &[]), "2026-03-01T00:00:00Z");
    let annabel = engaged(customer("Annabel Lee", &[], &[]), "2026-02-01T00:00:00Z");
    let other = customer("Tanya Ng", &[], &[]);
    put(index, &[&ann, &ann_tan, &annabel, &other]).await;

    assert_eq!(
        any(index, "ann").await,
        vec![ann.id, ann_tan.id, annabel.id],
        "exact whole name, then exact token, then prefix"
    );
    // A prefix of every name: most recent first.
    assert_eq!(any(index, "an").await, vec![ann_tan.id, annabel.id, ann.id]);
    assert_eq!(any(index, "tan ann").await, vec![ann_tan.id]);
    assert_eq!(any(index, "Tan, Ann").await, vec![ann_tan.id]);
    assert_eq!(any(index, "ann t").await, vec![ann_tan.id]);
    // Every token must match.
    assert!(any(index, "ann ng").await.is_empty());
    assert_eq!(any(index, "tan").await, vec![ann_tan.id, other.id]);
}

async fn a_rare_token_narrows_a_common_one(index: &dyn SearchIndex) {
    // More customers share `tan` than one prefix range returns (500).
    let common: Vec<IndexedCustomer> = (0..600)
        .map(|i| doc(&customer(&format!("Tan {i}"), &[], &[])))
        .collect();
    let ann_tan = customer("Ann Tan", &[], &[]);
    let all = common.into_iter().chain([doc(&ann_tan)]).map(Ok);
    index.rebuild(stream::iter(all).boxed()).await.unwrap();

    assert_eq!(any(index, "tan ann").await, vec![ann_tan.id]);
    assert_eq!(any(index, "ta an").await, vec![ann_tan.id]);
    assert_eq!(any(index, "tan 599").await.len(), 1);
    assert_eq!(
        index
            .search(&Query::Any("tan".into()), 100)
            .await
            .unwrap()
            .len(),
        100
    );
}

async fn full_names_among_many_namesakes(index: &dyn SearchIndex) {
    // Minutes after 2026-03-01, so that every customer has its own time.
    let when = |i: usize| {
        format!(
            "2026-03-{:02}T{:02}:{:02}:00Z",
            1 + i / 1440,
            (i / 60) % 24,
            i % 60
        )
    };
    let given = ["Wei", "Mei", "Hui", "Jun", "Kai", "Ling", "Hao", "Xin"];
    let mut tans = Vec::new();
    for i in 0..800 {
        let name = format!("Tan {} {}", given[i % 8], given[(i / 8) % 8]);
        tans.push(engaged(customer(&name, &[], &[]), &when(i)));
    }
    let limkumars: Vec<Customer> = (0..1400)
        .map(|i| {
            let name = if i % 2 == 0 { "Lim" } else { "Kumar" };
            engaged(customer(&format!("{name} {i}"), &[], &[]), &when(i))
        })
        .collect();
    // The customers looked for engaged before everybody else.
    let ming = engaged(customer("Tan Wei Ming", &[], &[]), "2025-01-01T00:00:00Z");
    let lim_kumar = engaged(customer("Lim Kumar Raj", &[], &[]), "2025-01-01T00:00:00Z");
    // Has every word typed, but one more: ranks after the whole name.
    let ming_jun = engaged(customer("Tan Wei Ming Jun", &[], &[]), &when(2000));
    let all = tans
        .iter()
        .chain(&limkumars)
        .chain([&ming, &lim_kumar, &ming_jun])
        .map(|c| Ok(doc(c)))
        .collect::<Vec<_>>();
    index.rebuild(stream::iter(all).boxed()).await.unwrap();

    // `ming` is one typo from `ling`: the `Tan Wei Ling`s follow, lower.
    let hits = find(index, Query::Any("Tan Wei Ming".into())).await;
    assert_eq!(ids(&hits[..2]), vec![ming.id, ming_jun.id]);
    assert_eq!(hits[0].score, 1.0);
    assert!(hits[1].score < 1.0);
    assert!(hits[2..].iter().all(|h| h.score < hits[1].score));
    assert_eq!(
        any(index, "ming tan wei").await[..2],
        [ming.id, ming_jun.id]
    );
    // With a typo, the whole name and the longer one score alike: recency.
    assert_eq!(any(index, "tan wei mnig").await, vec![ming_jun.id, ming.id]);
    // Two tokens that each have 700 customers, and one customer with both.
    assert_eq!(any(index, "lim kumar").await, vec![lim_kumar.id]);
    assert_eq!(any(index, "kumar li").await, vec![lim_kumar.id]);
    // A prefix: every Tan matches equally, the most recent first.
    let mut expected = vec![ming_jun.id];
    expected.extend(tans.iter().rev().take(9).map(|c| c.id));
    let top = index.search(&Query::Any("ta".into()), 10).await.unwrap();
    assert_eq!(ids(&top), expected);
    // Nothing but the exact token `tan`: the Tans are partial names, so
    // they tie, most recent first; `Tan Wei Ming` is a partial name here too.
    let top = index.search(&Query::Any("tan".into()), 3).await.unwrap();
    assert_eq!(ids(&top), expected[..3].to_vec());
    assert_eq!(top[0].score, 0.95);
}

async fn cjk_names(index: &dyn SearchIndex) {
    let chen = customer("陈大文", &[], &[]);
    let kim = customer("김민수", &[], &[]);
    let mixed = customer("Tan 陈小明", &[], &[]);
    put(index, &[&chen, &kim, &mixed]).await;

    let hits = find(index, Query::Any("陈".into())).await;
    assert_eq!(hits.len(), 2);
    assert_eq!(any(index, "大文").await, vec![chen.id]);
    assert_eq!(any(index, "陈大文").await, vec![chen.id]);
    assert!(any(index, "文大").await.is_empty());
    assert_eq!(any(index, "민수").await, vec![kim.id]);
    assert_eq!(any(index, "tan 小明").await, vec![mixed.id]);
}

async fn email_exact_and_prefix(index: &dyn SearchIndex) {
    let ann = customer("Ann Tan", &[], &["ann@example.com"]);
    let anna = customer("Anna Lim", &[], &["anna@example.org"]);
    let ann_work = customer("A. Tan", &[], &["ann@work.example.com"]);
    put(index, &[&ann, &anna, &ann_work]).await;

    let hits = find(index, Query::Any("ANN@example.com".into())).await;
    assert_eq!(ids(&hits), vec![ann.id]);
    assert_eq!(hits[0].matched_on, MatchedOn::Email);
    assert_eq!(hits[0].score, 1.0);
    assert_eq!(hits[0].emails[0].as_str(), "ann@example.com");

    let mut prefix = any(index, "ann@").await;
    prefix.sort();
    let mut expected = vec![ann.id, ann_work.id];
    expected.sort();
    assert_eq!(prefix, expected);
    assert_eq!(any(index, "ann@exa").await, vec![ann.id]);
    assert_eq!(
        ids(&find(index, Query::Email("ann".into())).await).len(),
        3,
        "an email query matches the start of the address"
    );
    assert!(any(index, "bob@").await.is_empty());
}

async fn phone_typed_any_way(index: &dyn SearchIndex) {
    let ann = customer("Ann Tan", &["+6581226418"], &[]);
    let other = customer("Bob", &["+6591234567"], &[]);
    put(index, &[&ann, &other]).await;

    for typed in [
        "+65 8122 6418",
        "81226418",
        "8122-6418",
        "6581226418",
        "0065 8122 6418",
    ] {
        let hits = find(index, Query::Any(typed.into())).await;
        assert_eq!(ids(&hits), vec![ann.id], "{typed}");
        assert_eq!(hits[0].matched_on, MatchedOn::Phone);
        assert_eq!(hits[0].phones[0].as_str(), "+6581226418");
    }
    let hits = find(
        index,
        Query::Phone {
            raw: "8122 6418".into(),
            region: sg(),
        },
    )
    .await;
    assert_eq!(ids(&hits), vec![ann.id]);
    assert_eq!(hits[0].score, 1.0);
    let national = find(index, Query::Any("81226418".into())).await;
    assert!(
        national[0].score < 1.0,
        "without a region it is a national match"
    );
    assert!(any(index, "+44 7911 123456").await.is_empty());
}

async fn shared_number_gives_every_customer(index: &dyn SearchIndex) {
    let older = engaged(
        customer("Ann Tan", &["+6562223333"], &[]),
        "2026-01-01T00:00:00Z",
    );
    let newer = engaged(
        customer("Ben Ong", &["+6562223333", "+6581226418"], &[]),
        "2026-02-01T00:00:00Z",
    );
    put(index, &[&older, &newer]).await;

    let number = PhoneNumber::parse("+6562223333", None).unwrap();
    let callers = index.lookup_phone(&number).await.unwrap();
    assert_eq!(
        callers.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![newer.id, older.id]
    );
    assert_eq!(callers[0].name.as_deref(), Some("Ben Ong"));
    let only = PhoneNumber::parse("+6581226418", None).unwrap();
    assert_eq!(index.lookup_phone(&only).await.unwrap().len(), 1);
    let nobody = PhoneNumber::parse("+6591234567", None).unwrap();
    assert!(index.lookup_phone(&nobody).await.unwrap().is_empty());
    assert_eq!(any(index, "6222 3333").await.len(), 2);
}

/// Many lookups at once (the Redis adapter sends them together in one
/// pipeline): each gets the answer for its own number.
async fn concurrent_lookups_get_their_own_answers(index: &dyn SearchIndex) {
    let customers: Vec<Customer> = (0..60)
        .map(|i| customer(&format!("Caller {i}"), &[&format!("+65812{i:05}")], &[]))
        .collect();
    put(index, &customers.iter().collect::<Vec<_>>()).await;
    let lookups = (0..300).map(|k| async move {
        // Every fifth number is nobody's.
        let i = k % 75;
        let number = PhoneNumber::parse(&format!("+65812{i:05}"), None).unwrap();
        let found = index.lookup_phone_json(&number).await.unwrap();
        (i, found)
    });
    for (i, found) in futures::future::join_all(lookups).await {
        match customers.get(i) {
            Some(c) => {
                assert_eq!(found.len(), 1, "number {i}");
                assert_eq!(found[0].id, c.id);
                assert_eq!(found[0].decode().unwrap().name, c.name);
            }
            None => assert!(found.is_empty(), "number {i} is nobody's"),
        }
    }
}

async fn renaming_removes_the_old_keys(index: &dyn SearchIndex) {
    let mut c = customer("Narendra Kumar", &["+6581226418"], &["nk@example.com"]);
    put(index, &[&c]).await;
    assert_eq!(any(index, "narendra").await, vec![c.id]);

    c.name = Some("Suresh Raina".into());
    c.phones = vec![PhoneNumber::parse("+6591234567", None).unwrap()];
    c.emails = vec![Email::parse("sr@example.com").unwrap()];
    put(index, &[&c]).await;

    for gone in [
        "narendra",
        "kumar",
        "Narendar",
        "narend",
        "nk@example.com",
        "nk@",
        "81226418",
    ] {
        assert!(any(index, gone).await.is_empty(), "{gone}");
    }
    let old = PhoneNumber::parse("+6581226418", None).unwrap();
    assert!(index.lookup_phone(&old).await.unwrap().is_empty());
    for found in ["suresh", "raina", "Suresj", "sr@example.com", "91234567"] {
        assert_eq!(any(index, found).await, vec![c.id], "{found}");
    }
    let new = PhoneNumber::parse("+6591234567", None).unwrap();
    assert_eq!(index.lookup_phone(&new).await.unwrap()[0].id, c.id);
}

async fn removing_a_customer(index: &dyn SearchIndex) {
    let ann = customer("Ann Tan", &["+6581226418"], &["ann@example.com"]);
    let keep = customer("Ann Lee", &[], &[]);
    put(index, &[&ann, &keep]).await;
    let keys: Vec<String> = ann.identifiers().iter().map(|i| i.key()).collect();
    index.remove(ann.id, &keys).await.unwrap();

    assert_eq!(any(index, "ann").await, vec![keep.id]);
    assert!(any(index, "tan").await.is_empty());
    assert!(any(index, "ann@example.com").await.is_empty());
    assert!(any(index, "81226418").await.is_empty());
    assert!(index.summary(ann.id).await.unwrap().is_none());
    let phone = PhoneNumber::parse("+6581226418", None).unwrap();
    assert!(index.lookup_phone(&phone).await.unwrap().is_empty());
    // Removing again, or removing a customer never indexed, is harmless.
    index.remove(ann.id, &keys).await.unwrap();
    index.remove(CustomerId::new(), &[]).await.unwrap();
    assert_eq!(index.all_fingerprints().await.unwrap().len(), 1);
}

async fn merged_customers_leave_the_index(index: &dyn SearchIndex) {
    let mut c = customer("Ann Tan", &["+6581226418"], &["ann@example.com"]);
    put(index, &[&c]).await;
    c.status = CustomerStatus::Merged;
    c.merged_into = Some(CustomerId::new());
    put(index, &[&c]).await;

    assert!(any(index, "ann").await.is_empty());
    assert!(any(index, "ann@example.com").await.is_empty());
    let phone = PhoneNumber::parse("+6581226418", None).unwrap();
    assert!(index.lookup_phone(&phone).await.unwrap().is_empty());
    assert!(index.summary(c.id).await.unwrap().is_none());
    assert!(index.all_fingerprints().await.unwrap().is_empty());
}

async fn upsert_is_idempotent(index: &dyn SearchIndex) {
    let c = customer("Ann Tan", &["+6581226418"], &["ann@example.com"]);
    let d = IndexedCustomer::new(c.clone(), vec![sms(&c, "2026-01-01T00:00:00Z", "hi")]);
    index.upsert(&d).await.unwrap();
    let first = (
        find(index, Query::Any("ann".into())).await,
        index.summary(c.id).await.unwrap(),
        index.all_fingerprints().await.unwrap(),
    );
    index.upsert(&d).await.unwrap();
    index.upsert(&d).await.unwrap();
    let again = (
        find(index, Query::Any("ann".into())).await,
        index.summary(c.id).await.unwrap(),
        index.all_fingerprints().await.unwrap(),
    );
    assert_eq!(first, again);
    assert_eq!(again.0.len(), 1);
    assert_eq!(again.2.len(), 1);
    let phone = PhoneNumber::parse("+6581226418", None).unwrap();
    assert_eq!(index.lookup_phone(&phone).await.unwrap().len(), 1);
    assert_eq!(any(index, "ann@").await.len(), 1);
}

async fn summary_content(index: &dyn SearchIndex) {
    let mut c = customer(
        "Ann Tan",
        &["+6581226418", "+6591234567"],
        &["ann@example.com", "ann@work.example.com"],
    );
    c.counts.sms = 11;
    c.counts.call = 1;
    let mut engagements: Vec<Engagement> = (0..11)
        .map(|i| {
            sms(
                &c,
                &format!("2026-01-01T00:00:{i:02}Z"),
                &format!("message {i}"),
            )
        })
        .collect();
    engagements.push(call(&c, "2026-01-02T00:00:00Z"));
    let long = "x".repeat(200);
    engagements.push(sms(&c, "2025-12-31T00:00:00Z", &long));
    let d = IndexedCustomer::new(c.clone(), engagements);
    index.upsert(&d).await.unwrap();

    let s = index.summary(c.id).await.unwrap().unwrap();
    assert_eq!(s, d.summary(), "the index answers what the document says");
    assert_eq!(s.name.as_deref(), Some("Ann Tan"));
    assert_eq!(s.phone.as_ref().unwrap().as_str(), "+6581226418");
    assert_eq!(s.email.as_ref().unwrap().as_str(), "ann@example.com");
    assert_eq!(s.phones.len(), 2);
    assert_eq!((s.counts.sms, s.counts.call, s.counts.web), (11, 1, 0));
    assert_eq!(s.last_engagements.len(), 10);
    assert_eq!(s.last_engagements[0].preview, "answered call, 42s");
    assert_eq!(s.last_engagements[0].direction, Some(Direction::Outbound));
    assert_eq!(s.last_engagements[1].preview, "message 10");
    assert_eq!(s.last_engagements[9].preview, "message 2");
    assert!(s
        .last_engagements
        .windows(2)
        .all(|w| w[0].occurred_at >= w[1].occurred_at));
    assert_eq!(s.last_engagement_at, Some(at("2026-01-02T00:00:00Z")));

    let phone = PhoneNumber::parse("+6591234567", None).unwrap();
    assert_eq!(index.lookup_phone(&phone).await.unwrap(), vec![s.clone()]);

    // Every event refreshes it.
    let mut newer = d.clone();
    newer.customer.counts.sms = 12;
    newer.last_engagements.push(sms(
        &c,
        "2026-01-03T00:00:00Z",
        "is it available? ".repeat(10).as_str(),
    ));
    index.upsert(&newer).await.unwrap();
    let s = index.summary(c.id).await.unwrap().unwrap();
    assert_eq!(s.counts.sms, 12);
    assert!(s.last_engagements[0]
        .preview
        .starts_with("is it available?"));
    assert_eq!(s.last_engagements[0].preview.chars().count(), 80);
    assert_eq!(index.lookup_phone(&phone).await.unwrap()[0], s);
    assert!(index.summary(CustomerId::new()).await.unwrap().is_none());
}

async fn rebuild_switches_generations(index: &dyn SearchIndex) {
    let mut ann = customer("Ann Tan", &["+6581226418"], &[]);
    let gone = customer("Gone Away", &["+6591234567"], &[]);
    put(index, &[&ann, &gone]).await;

    // The store now says: Ann renamed, "Gone" deleted, Cara new.
    ann.name = Some("Annie Tan".into());
    let cara = customer("Cara Lim", &[], &["cara@example.com"]);
    let during = customer("Dora Ng", &[], &[]);
    let store = vec![doc(&ann), doc(&cara)];

    let (gone_id, ann_id, during_id) = (gone.id, ann.id, during.id);
    let docs = stream::iter(store.into_iter().enumerate()).then(move |(i, d)| {
        let during = during.clone();
        async move {
            if i == 1 {
                // Mid-rebuild: the live generation still answers as before...
                assert_eq!(any(index, "gone").await, vec![gone_id]);
                assert_eq!(any(index, "ann").await, vec![ann_id]);
                assert!(any(index, "cara").await.is_empty());
                let phone = PhoneNumber::parse("+6581226418", None).unwrap();
                assert_eq!(index.lookup_phone(&phone).await.unwrap().len(), 1);
                // ...and an event applied now lands in both generations.
                index.upsert(&doc(&during)).await.unwrap();
                assert_eq!(any(index, "dora").await, vec![during.id]);
            }
            Ok::<_, IndexError>(d)
        }
    });
    let report = index.rebuild(docs.boxed()).await.unwrap();
    assert_eq!(report.customers, 2);
    assert!(report.generation >= 1);

    assert!(any(index, "gone").await.is_empty());
    assert_eq!(any(index, "annie").await, vec![ann.id]);
    assert_eq!(any(index, "cara@example.com").await, vec![cara.id]);
    assert_eq!(any(index, "dora").await, vec![during_id]);
    let phone = PhoneNumber::parse("+6581226418", None).unwrap();
    assert_eq!(index.lookup_phone(&phone).await.unwrap()[0].id, ann.id);
    let old_phone = PhoneNumber::parse("+6591234567", None).unwrap();
    assert!(index.lookup_phone(&old_phone).await.unwrap().is_empty());
    assert_eq!(index.all_fingerprints().await.unwrap().len(), 3);

    // A second rebuild works the same way from the new generation.
    let again = index
        .rebuild(stream::iter(vec![Ok(doc(&ann))]).boxed())
        .await
        .unwrap();
    assert!(again.generation > report.generation);
    assert_eq!(any(index, "tan").await, vec![ann.id]);
    assert!(any(index, "cara").await.is_empty());
}

async fn rebuild_leaves_live_writes_alone(index: &dyn SearchIndex) {
    let ann = customer("Ann Tan", &["+6581226418"], &[]);
    let bob = customer("Bob Lee", &["+6591234567"], &["bob@example.com"]);
    let cara = customer("Cara Lim", &[], &[]);
    put(index, &[&ann, &bob]).await;

    // The rebuild read Ann and Bob (and Cara, twice: she changed while the
    // source was being read), but before it wrote them Ann moved and
    // changed her name and Bob was deleted, and those events were applied.
    let mut moved = ann.clone();
    moved.name = Some("Annie Ng".into());
    moved.phones = vec![PhoneNumber::parse("+6582223333", None).unwrap()];
    let mut cara_later = cara.clone();
    cara_later.name = Some("Cara Ong".into());
    let read = vec![doc(&ann), doc(&cara), doc(&bob), doc(&cara_later)];
    let (live_ann, bob_id) = (doc(&moved), bob.id);
    let docs = stream::iter(read.into_iter().enumerate()).then(move |(i, d)| {
        let live_ann = live_ann.clone();
        async move {
            if i == 0 {
                index.upsert(&live_ann).await.unwrap();
                index
                    .remove(bob_id, &["phone:+6591234567".to_string()])
                    .await
                    .unwrap();
            }
            Ok::<_, IndexError>(d)
        }
    });
    let report = index.rebuild(docs.boxed()).await.unwrap();
    assert_eq!(report.customers, 4);

    // The live writes stand: nothing of Ann's old name or number, no Bob.
    assert!(any(index, "tan").await.is_empty());
    assert_eq!(any(index, "annie ng").await, vec![ann.id]);
    let old_phone = PhoneNumber::parse("+6581226418", None).unwrap();
    assert!(index.lookup_phone(&old_phone).await.unwrap().is_empty());
    let new_phone = PhoneNumber::parse("+6582223333", None).unwrap();
    let callers = index.lookup_phone(&new_phone).await.unwrap();
    assert_eq!(callers.len(), 1);
    assert_eq!(callers[0].name.as_deref(), Some("Annie Ng"));
    assert!(any(index, "bob").await.is_empty());
    assert!(any(index, "bob@example.com").await.is_empty());
    assert!(index.summary(bob.id).await.unwrap().is_none());
    let bob_phone = PhoneNumber::parse("+6591234567", None).unwrap();
    assert!(index.lookup_phone(&bob_phone).await.unwrap().is_empty());
    // Cara as the source gave her last.
    assert!(any(index, "lim").await.is_empty());
    assert_eq!(any(index, "cara ong").await, vec![cara.id]);
    let mut ids: Vec<CustomerId> = index
        .all_fingerprints()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.id)
        .collect();
    ids.sort();
    let mut expected = vec![ann.id, cara.id];
    expected.sort();
    assert_eq!(ids, expected);
    let prints = index.all_fingerprints().await.unwrap();
    for f in prints {
        let want = if f.id == ann.id {
            doc(&moved).fingerprint()
        } else {
            doc(&cara_later).fingerprint()
        };
        assert_eq!(f.fingerprint, want);
    }

    // After the switch, the generation behaves as any other: Bob can be
    // written again, Ann updated.
    put(index, &[&bob, &ann]).await;
    assert_eq!(any(index, "bob").await, vec![bob.id]);
    assert_eq!(any(index, "tan").await, vec![ann.id]);
    assert!(any(index, "annie").await.is_empty());
}

async fn failed_rebuild_keeps_the_live_index(index: &dyn SearchIndex) {
    let ann = customer("Ann Tan", &[], &[]);
    put(index, &[&ann]).await;
    let other = customer("Bob Lee", &[], &[]);
    let docs = stream::iter(vec![
        Ok(doc(&other)),
        Err(IndexError::Unavailable("store went away".into())),
    ]);
    let err = index.rebuild(docs.boxed()).await.unwrap_err();
    assert!(matches!(err, IndexError::RebuildAbandoned(_)), "{err:?}");
    assert_eq!(any(index, "ann").await, vec![ann.id]);
    assert!(any(index, "bob").await.is_empty());
    // Later writes and rebuilds are unaffected.
    put(index, &[&other]).await;
    assert_eq!(any(index, "bob").await, vec![other.id]);
    let report = index
        .rebuild(stream::iter(vec![Ok(doc(&ann)), Ok(doc(&other))]).boxed())
        .await
        .unwrap();
    assert_eq!(report.customers, 2);
    assert_eq!(any(index, "lee").await, vec![other.id]);
}

async fn verify_fingerprints(index: &dyn SearchIndex) {
    let mut customers: Vec<Customer> = (0..5)
        .map(|i| customer(&format!("Customer {i}"), &[], &[]))
        .collect();
    for c in &customers {
        put(index, &[c]).await;
    }
    customers.sort_by_key(|c| c.id);

    let all = index.all_fingerprints().await.unwrap();
    assert_eq!(
        all.iter().map(|f| f.id).collect::<Vec<_>>(),
        customers.iter().map(|c| c.id).collect::<Vec<_>>()
    );
    for (f, c) in all.iter().zip(&customers) {
        assert_eq!(f.fingerprint, doc(c).fingerprint());
    }
    // Paging, two at a time: every customer comes, none twice on a quiet
    // index (Redis may repeat keys only while its table is resized).
    let mut walked = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = index.fingerprints(cursor, 2).await.unwrap();
        walked.extend(page.items);
        pages += 1;
        assert!(pages < 100, "the walk does not end");
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    walked.sort_by_key(|f| f.id);
    assert_eq!(walked, all);
    let bad = index.fingerprints(Some("no cursor".into()), 2).await;
    assert!(matches!(bad, Err(IndexError::Internal(_))), "{bad:?}");
    // A store change the index missed shows up as a different fingerprint.
    let mut changed = customers[0].clone();
    changed.counts.web = 3;
    assert_ne!(all[0].fingerprint, doc(&changed).fingerprint());
    index.upsert(&doc(&changed)).await.unwrap();
    let after = index.all_fingerprints().await.unwrap();
    assert_eq!(after[0].fingerprint, doc(&changed).fingerprint());
}

async fn nothing_to_search_and_limits(index: &dyn SearchIndex) {
    let customers: Vec<Customer> = (0..30)
        .map(|i| customer(&format!("Tan {i}"), &[], &[]))
        .collect();
    for c in &customers {
        put(index, &[c]).await;
    }
    assert_eq!(
        index
            .search(&Query::Any("tan".into()), 7)
            .await
            .unwrap()
            .len(),
        7
    );
    assert_eq!(
        index
            .search(&Query::Any("tan".into()), 1000)
            .await
            .unwrap()
            .len(),
        30
    );
    for q in ["", "   ", "!!", "@", "zzz"] {
        assert!(any(index, q).await.is_empty(), "{q:?}");
    }
    assert!(find(
        index,
        Query::Phone {
            raw: "not a number".into(),
            region: None
        }
    )
    .await
    .is_empty());
    assert!(name(index, "").await.is_empty());
    index.ping().await.unwrap();
}

// --- adapters ---

/// An adapter, and whatever must happen when the test is done with it.
type Adapter = (Box<dyn SearchIndex>, Option<DeleteOnDrop>);

async fn memory_adapter() -> Adapter {
    (Box::new(MemoryIndex::new()), None)
}

async fn redis_adapter() -> Adapter {
    let (index, cleanup) = redis_index().await;
    (Box::new(index), Some(cleanup))
}

macro_rules! conformance {
    ($adapter:ident: $($test:ident),* $(,)?) => {
        mod $adapter {
            $(
                #[tokio::test]
                async fn $test() {
                    let (index, _cleanup) = super::$adapter().await;
                    super::$test(index.as_ref()).await;
                }
            )*
        }
    };
}

macro_rules! suite {
    ($adapter:ident) => {
        conformance!($adapter:
            one_typo_finds_narendra_and_john,
            exact_then_prefix_then_typo,
            accents_fold,
            ann_prefix_and_multi_token,
            a_rare_token_narrows_a_common_one,
            full_names_among_many_namesakes,
            cjk_names,
            email_exact_and_prefix,
            phone_typed_any_way,
            shared_number_gives_every_customer,
            concurrent_lookups_get_their_own_answers,
            renaming_removes_the_old_keys,
            removing_a_customer,
            merged_customers_leave_the_index,
            upsert_is_idempotent,
            summary_content,
            rebuild_switches_generations,
            rebuild_leaves_live_writes_alone,
            failed_rebuild_keeps_the_live_index,
            verify_fingerprints,
            nothing_to_search_and_limits,
        );
    };
}

suite!(memory_adapter);
suite!(redis_adapter);

// --- Redis only ---

/// A Redis index under a prefix of its own, deleted when the guard drops.
async fn redis_index() -> (RedisIndex, DeleteOnDrop) {
    let url = support::redis_server::url();
    let prefix = support::redis_server::unique_prefix();
    let index = RedisIndex::connect(&url, &prefix).await.unwrap();
    (index, DeleteOnDrop { url, prefix })
}

/// Another process (here: another connection) that cached the old
/// generation follows the switch on its next read.
#[tokio::test]
async fn redis_reader_with_a_stale_generation_follows_a_rebuild() {
    let (writer, cleanup) = redis_index().await;
    let (url, prefix) = (cleanup.url.clone(), cleanup.prefix.clone());
    let reader = RedisIndex::connect(&url, &prefix).await.unwrap();
    let ann = customer("Ann Tan", &["+6581226418"], &[]);
    writer.upsert(&doc(&ann)).await.unwrap();
    let phone = PhoneNumber::parse("+6581226418", None).unwrap();
    assert_eq!(reader.lookup_phone(&phone).await.unwrap().len(), 1);

    let mut renamed = ann.clone();
    renamed.name = Some("Annie Tan".into());
    writer
        .rebuild(stream::iter(vec![Ok(doc(&renamed))]).boxed())
        .await
        .unwrap();
    let callers = reader.lookup_phone(&phone).await.unwrap();
    assert_eq!(callers[0].name.as_deref(), Some("Annie Tan"));
    assert_eq!(any(&reader, "annie").await, vec![ann.id]);
}

/// A rebuild deletes every key of the generation it replaced, and reports
/// when the new one went live.
#[tokio::test]
async fn redis_rebuild_deletes_the_replaced_generation() {
    let (index, cleanup) = redis_index().await;
    let (url, prefix) = (cleanup.url.clone(), cleanup.prefix.clone());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ann = customer("Ann Tan", &["+6581226418"], &["ann@example.com"]);
    let bob = customer("Bob Lee", &["+6591234567"], &["bob@example.com"]);
    index.upsert(&doc(&ann)).await.unwrap();
    for (generation, docs) in [(1u64, vec![&bob]), (2, vec![]), (3, vec![&ann, &bob])] {
        let t = std::time::Instant::now();
        let report = index
            .rebuild(stream::iter(docs.iter().map(|c| Ok(doc(c))).collect::<Vec<_>>()).boxed())
            .await
            .unwrap();
        assert_eq!(
            (report.generation, report.customers),
            (generation, docs.len() as u64)
        );
        assert!(report.live_after <= t.elapsed());
        let old: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}g{}:*", generation - 1))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(old.is_empty(), "generation {}: {old:?}", generation - 1);
        let found = index
            .lookup_phone(&PhoneNumber::parse("+6591234567", None).unwrap())
            .await
            .unwrap();
        assert_eq!(found.len(), usize::from(generation != 2));
    }
}

/// The keys are the documented schema.
#[tokio::test]
async fn redis_key_schema() {
    let (index, cleanup) = redis_index().await;
    let (url, prefix) = (cleanup.url.clone(), cleanup.prefix.clone());
    let ann = customer("Ann Tanaka", &["+6581226418"], &["ann@example.com"]);
    index.upsert(&doc(&ann)).await.unwrap();

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    let p = |k: &str| format!("{prefix}g0:{k}");
    let mut expected = vec![
        p(&format!("cust:{}", ann.id)),
        p("em:ann@example.com"),
        p("ex"),
        p("used"),
        p("nm:ann"),
        p("nm:tanaka"),
        p("ph:+6581226418"),
        p("pn:81226418"),
        p("tk"),
        p("wn:ann tanaka"),
    ];
    for v in [
        "tanaka", "anaka", "tnaka", "taaka", "tanka", "tanaa", "tanak",
    ] {
        expected.push(p(&format!("ty:{v}")));
    }
    expected.sort();
    assert_eq!(keys, expected);

    let zconn = conn.clone();
    let zrange = |key: String| {
        let mut conn = zconn.clone();
        async move {
            let members: Vec<String> = redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap();
            members
        }
    };
    assert_eq!(zrange(p("tk")).await, vec!["ann", "tanaka"]);
    let entry = format!("{}\0ann tanaka", ann.id);
    assert_eq!(zrange(p("nm:ann")).await, vec![entry.clone()]);
    assert_eq!(zrange(p("nm:tanaka")).await, vec![entry.clone()]);
    assert_eq!(zrange(p("wn:ann tanaka")).await, vec![entry]);
    let mut fields: Vec<String> = redis::cmd("HKEYS")
        .arg(p(&format!("cust:{}", ann.id)))
        .query_async(&mut conn)
        .await
        .unwrap();
    fields.sort();
    assert_eq!(fields, vec!["fingerprint", "indexed", "summary"]);
    let summary: String = redis::cmd("HGET")
        .arg(p(&format!("cust:{}", ann.id)))
        .arg("summary")
        .query_async(&mut conn)
        .await
        .unwrap();
    let summary: crm_indexer::CustomerSummary = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary, doc(&ann).summary());
    let on_phone: String = redis::cmd("HGET")
        .arg(p("ph:+6581226418"))
        .arg(ann.id.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(on_phone, serde_json::to_string(&summary).unwrap());

    // Renaming drops the old token's keys, typo entries included.
    let mut renamed = ann.clone();
    renamed.name = Some("Ann".into());
    index.upsert(&doc(&renamed)).await.unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*tanaka*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let typo_left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}g0:ty:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(typo_left.is_empty(), "{typo_left:?}");
    assert_eq!(zrange(p("tk")).await, vec!["ann"]);
    assert_eq!(zrange(p("nm:ann")).await, vec![format!("{}\0ann", ann.id)]);
    assert_eq!(zrange(p("wn:ann")).await, vec![format!("{}\0ann", ann.id)]);
}
