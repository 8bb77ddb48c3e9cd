//! One suite, run against every `SearchIndex` adapter (one line each at the
//! bottom). The Redis adapter uses `CRM_TEST_REDIS_URL` or a `redis-server`
//! this process starts, with a fresh key prefix per test.

// A panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support {
    pub mod redis_cluster;
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

/// The customers whose name matches every word of `q` (partial matches,
/// which follow them, left out).
async fn full(index: &dyn SearchIndex, q: &str) -> Vec<CustomerId> {
    let hits = find(index, Query::Any(q.into())).await;
    let full: Vec<CustomerId> = hits
        .iter()
        .take_while(|h| !h.partial)
        .map(|h| h.id)
        .collect();
    assert!(
        hits[full.len()..].iter().all(|h| h.partial),
        "partial matches come last: {hits:?}"
    );
    full
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
    assert_eq!(full(index, "jhon tan").await, vec![john.id]);
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
    assert_eq!(full(index, "JOSÉ garcia").await, vec![jose.id]);
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
    assert_eq!(full(index, "tan ann").await, vec![ann_tan.id]);
    assert_eq!(full(index, "Tan, Ann").await, vec![ann_tan.id]);
    assert_eq!(full(index, "ann t").await, vec![ann_tan.id]);
    // Nobody has both: names with one of them, as partial matches.
    assert!(full(index, "ann ng").await.is_empty());
    assert_eq!(any(index, "ann ng").await.len(), 4);
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

    assert_eq!(full(index, "tan ann").await, vec![ann_tan.id]);
    assert_eq!(full(index, "ta an").await, vec![ann_tan.id]);
    assert_eq!(full(index, "tan 599").await.len(), 1);
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
    assert_eq!(
        full(index, "tan wei mnig").await,
        vec![ming_jun.id, ming.id]
    );
    // Two tokens that each have 700 customers, and one customer with both.
    assert_eq!(full(index, "lim kumar").await, vec![lim_kumar.id]);
    assert_eq!(full(index, "kumar li").await, vec![lim_kumar.id]);
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
    assert_eq!(full(index, "tan 小明").await, vec![mixed.id]);
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
    // Another number with the same last five digits (a neighbour in the
    // Redis bucket the owners are read from).
    let neighbour = engaged(
        customer("Cal Lim", &["+6591223333"], &[]),
        "2026-03-01T00:00:00Z",
    );
    put(index, &[&older, &newer, &neighbour]).await;

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
    let next_door = PhoneNumber::parse("+6591223333", None).unwrap();
    let callers = index.lookup_phone(&next_door).await.unwrap();
    assert_eq!(
        callers.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![neighbour.id]
    );
    assert_eq!(any(index, "+65 9122 3333").await, vec![neighbour.id]);
    assert_eq!(any(index, "+65 6222 3333").await, vec![newer.id, older.id]);
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

/// A search twice with the same words answers from the vocabulary as it is
/// now: tokens new since the first search (by prefix and by one typo),
/// tokens gone, and a rebuild's new generation.
async fn searches_follow_vocabulary_changes(index: &dyn SearchIndex) {
    let narendra = engaged(customer("Narendra Kumar", &[], &[]), "2026-01-01T00:00:00Z");
    put(index, &[&narendra]).await;
    assert_eq!(any(index, "nar").await, vec![narendra.id]);
    assert!(any(index, "narayn").await.is_empty());
    assert_eq!(full(index, "kumar nar").await, vec![narendra.id]);

    let narayan = engaged(customer("Narayan Kumar", &[], &[]), "2026-02-01T00:00:00Z");
    put(index, &[&narayan]).await;
    assert_eq!(any(index, "nar").await, vec![narayan.id, narendra.id]);
    assert_eq!(
        any(index, "narayn").await,
        vec![narayan.id],
        "one typo reaches a new token"
    );
    assert_eq!(
        full(index, "kumar nar").await,
        vec![narayan.id, narendra.id]
    );

    index.remove(narendra.id, &[]).await.unwrap();
    assert_eq!(any(index, "nar").await, vec![narayan.id]);
    assert!(any(index, "narendra").await.is_empty());

    let nadia = customer("Nadia Kumar", &[], &[]);
    index
        .rebuild(stream::iter(vec![Ok(doc(&nadia))]).boxed())
        .await
        .unwrap();
    assert!(any(index, "nar").await.is_empty());
    assert_eq!(any(index, "kumar").await, vec![nadia.id]);
    assert_eq!(any(index, "na").await, vec![nadia.id]);
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

async fn short_names_with_one_typo(index: &dyn SearchIndex) {
    let tan = engaged(customer("Tan", &[], &[]), "2026-02-01T00:00:00Z");
    let ann = engaged(customer("Ann Lee", &[], &[]), "2026-01-01T00:00:00Z");
    let other = customer("Tam Wong", &[], &[]);
    put(index, &[&tan, &ann, &other]).await;

    // `tann` is one letter more than `tan`, and than `ann`.
    let hits = find(index, Query::Any("Tann".into())).await;
    assert_eq!(
        ids(&hits),
        vec![tan.id, ann.id],
        "a four-letter query reaches `tan`"
    );
    assert!(hits[0].score < 0.5 && !hits[0].partial);
    assert_eq!(any(index, "Anne").await, vec![ann.id]);
    assert_eq!(any(index, "anne lee").await, vec![ann.id]);
    // A three-letter query is not corrected: `tam` finds only Tam.
    assert_eq!(any(index, "tam").await, vec![other.id]);
}

async fn partial_names_follow_full_ones(index: &dyn SearchIndex) {
    let soni = engaged(
        customer("Narendra Kumar Soni", &[], &[]),
        "2026-03-01T00:00:00Z",
    );
    let singh = engaged(
        customer("Narendra Kumar Singh", &[], &[]),
        "2026-01-01T00:00:00Z",
    );
    let raj = engaged(customer("Raj Kumar", &[], &[]), "2026-04-01T00:00:00Z");
    let lim = customer("Peter Lim", &[], &[]);
    put(index, &[&soni, &singh, &raj, &lim]).await;

    let hits = find(index, Query::Any("Narendra Kumar Singh".into())).await;
    assert_eq!(ids(&hits), vec![singh.id, soni.id]);
    assert!(!hits[0].partial && hits[0].score == 1.0);
    assert!(hits[1].partial, "Soni matches all but one word");
    assert!(hits[1].score <= 0.3);
    // Two words: the one customer with both, then those with one of them.
    let hits = find(index, Query::Any("raj kumar".into())).await;
    assert_eq!(hits[0].id, raj.id);
    assert!(!hits[0].partial);
    assert_eq!(
        ids(&hits[1..]),
        vec![soni.id, singh.id],
        "partials by recency"
    );
    assert!(hits[1..].iter().all(|h| h.partial));
    // A word nobody has: what the others find, as partial matches.
    let hits = find(index, Query::Any("Peter Lm".into())).await;
    assert_eq!(ids(&hits), vec![lim.id]);
    assert!(hits[0].partial);
    // Two words that match nothing: nothing.
    assert!(any(index, "Peter Xq Zz").await.is_empty());
    // One word is never a partial match of itself.
    assert!(any(index, "Zzzz").await.is_empty());
}

async fn exact_word_order_first(index: &dyn SearchIndex) {
    let typed = engaged(customer("Xin Priya Nair", &[], &[]), "2026-01-01T00:00:00Z");
    let reordered = engaged(customer("Priya Xin Nair", &[], &[]), "2026-05-01T00:00:00Z");
    let longer = engaged(
        customer("Xin Priya Nair Tan", &[], &[]),
        "2026-06-01T00:00:00Z",
    );
    put(index, &[&typed, &reordered, &longer]).await;

    let hits = find(index, Query::Any("Xin Priya Nair".into())).await;
    assert_eq!(ids(&hits), vec![typed.id, reordered.id, longer.id]);
    assert_eq!(hits[0].score, 1.0);
    assert!(hits[1].score < 1.0 && hits[1].score > hits[2].score);
    let hits = find(index, Query::Any("priya xin nair".into())).await;
    assert_eq!(ids(&hits), vec![reordered.id, typed.id, longer.id]);
}

async fn ties_by_recency_then_newest(index: &dyn SearchIndex) {
    let when = "2026-02-01T00:00:00Z";
    // Same name, same time: the newest customer (highest id) first, always.
    let mut tans: Vec<Customer> = (0..6)
        .map(|_| engaged(customer("Tan", &[], &[]), when))
        .collect();
    let recent = engaged(customer("Tan", &[], &[]), "2026-03-01T00:00:00Z");
    for c in &tans {
        put(index, &[c]).await;
    }
    put(index, &[&recent]).await;
    tans.sort_by_key(|c| std::cmp::Reverse(c.id));
    let mut expected = vec![recent.id];
    expected.extend(tans.iter().map(|c| c.id));
    for _ in 0..3 {
        assert_eq!(any(index, "tan").await, expected);
    }
}

async fn pages_follow_one_another(index: &dyn SearchIndex) {
    let when = |i: usize| format!("2026-03-01T{:02}:{:02}:00Z", i / 60, i % 60);
    let tans: Vec<Customer> = (0..250)
        .map(|i| engaged(customer(&format!("Tan {}", i % 7), &[], &[]), &when(i)))
        .collect();
    let ann = customer("Ann Tan", &[], &[]);
    let all = tans
        .iter()
        .chain([&ann])
        .map(|c| Ok(doc(c)))
        .collect::<Vec<_>>();
    index.rebuild(stream::iter(all).boxed()).await.unwrap();

    let query = Query::Any("tan".into());
    let first = index.search_page(&query, 100, None).await.unwrap();
    assert!(
        first.total_estimate >= 251,
        "estimate {}",
        first.total_estimate
    );
    let mut seen: Vec<CustomerId> = ids(&first.hits);
    let mut after = first.next;
    let mut pages = 1;
    while let Some(cursor) = after {
        // A new customer between pages ranks first: with an offset, the
        // next page would repeat one; a cursor keeps its place.
        if pages == 1 {
            let newcomer = engaged(customer("Tan 9", &[], &[]), "2027-01-01T00:00:00Z");
            put(index, &[&newcomer]).await;
        }
        let page = index.search_page(&query, 100, Some(cursor)).await.unwrap();
        assert!(page.hits.len() <= 100);
        seen.extend(ids(&page.hits));
        after = page.next;
        pages += 1;
        assert!(pages <= 4, "three pages hold 251 hits");
    }
    assert_eq!(pages, 3);
    let distinct: std::collections::HashSet<_> = seen.iter().copied().collect();
    assert_eq!(seen.len(), distinct.len(), "no customer twice");
    assert_eq!(distinct.len(), 251);
    // The order is the ranking: the whole name `Tan N` of each, by recency.
    let expected: Vec<CustomerId> = {
        let mut v: Vec<&Customer> = tans.iter().collect();
        v.sort_by_key(|c| std::cmp::Reverse((c.last_engagement_at, c.id)));
        v.iter().map(|c| c.id).collect()
    };
    assert_eq!(seen[..100], expected[..100]);
    // Emails page the same way.
    let mut people = Vec::new();
    for i in 0..5 {
        people.push(customer("", &[], &[&format!("p{i}@example.com")]));
    }
    for p in &people {
        put(index, &[p]).await;
    }
    let q = Query::Email("p".into());
    let one = index.search_page(&q, 2, None).await.unwrap();
    assert_eq!((one.hits.len(), one.total_estimate), (2, 5));
    let two = index.search_page(&q, 2, one.next).await.unwrap();
    let three = index.search_page(&q, 2, two.next).await.unwrap();
    assert_eq!(three.hits.len(), 1);
    assert!(three.next.is_none());
    let mut all: Vec<CustomerId> = [one.hits, two.hits, three.hits]
        .concat()
        .iter()
        .map(|h| h.id)
        .collect();
    all.sort();
    let mut want: Vec<CustomerId> = people.iter().map(|c| c.id).collect();
    want.sort();
    assert_eq!(all, want);
}

async fn hits_carry_the_last_engagement(index: &dyn SearchIndex) {
    let c = customer("Mei Ling", &["+6581226418"], &[]);
    let d = IndexedCustomer::new(
        c.clone(),
        vec![
            call(&c, "2026-01-01T00:00:00Z"),
            sms(&c, "2026-02-01T00:00:00Z", "Is the flat still available?"),
        ],
    );
    index.upsert(&d).await.unwrap();
    for q in ["mei", "+6581226418"] {
        let hits = find(index, Query::Any(q.into())).await;
        let last = hits[0].last_engagement.as_ref().expect("a last engagement");
        assert_eq!(last.channel, crm_models::Channel::Sms, "{q}");
        assert_eq!(last.direction, Some(Direction::Inbound));
        assert_eq!(last.occurred_at, at("2026-02-01T00:00:00Z"));
        assert_eq!(last.preview, "Is the flat still available?");
    }
}

/// The hits of a digits query, with their scores.
async fn digits(index: &dyn SearchIndex, q: &str) -> Vec<(CustomerId, f64)> {
    let hits = find(index, Query::Any(q.into())).await;
    assert!(hits.iter().all(|h| h.matched_on == MatchedOn::Phone), "{q}");
    hits.iter().map(|h| (h.id, h.score)).collect()
}

/// The customers found by the last digits `q` (score below a national match).
async fn ending(index: &dyn SearchIndex, q: &str) -> Vec<CustomerId> {
    let hits = digits(index, q).await;
    assert!(hits.iter().all(|(_, s)| *s < 0.9), "{q}: {hits:?}");
    hits.iter().map(|(id, _)| *id).collect()
}

async fn trailing_digits_find_numbers_by_recency(index: &dyn SearchIndex) {
    let jan = engaged(
        customer("Ann Tan", &["+6581226418"], &[]),
        "2026-01-01T00:00:00Z",
    );
    let mar = engaged(
        customer("Ben Ong", &["+6591116418"], &[]),
        "2026-03-01T00:00:00Z",
    );
    let feb = engaged(
        customer("Chen Wei", &["+60123456418"], &[]),
        "2026-02-01T00:00:00Z",
    );
    // Two numbers ending alike: found once.
    let twice = engaged(
        customer("Dev Nair", &["+6561236418", "+6598766418"], &[]),
        "2025-12-01T00:00:00Z",
    );
    let never = customer("Eve Lim", &["+6587776418"], &[]);
    let other = engaged(
        customer("Fay Goh", &["+6581226419"], &[]),
        "2026-04-01T00:00:00Z",
    );
    let zero = engaged(
        customer("Gan Hui", &["+6581230418"], &[]),
        "2026-01-15T00:00:00Z",
    );
    put(index, &[&jan, &mar, &feb, &twice, &never, &other, &zero]).await;

    let hits = find(index, Query::Any("6418".into())).await;
    assert_eq!(
        ids(&hits),
        vec![mar.id, feb.id, jan.id, twice.id, never.id],
        "most recent engagement first, never engaged last"
    );
    assert!(hits.iter().all(|h| h.score == 0.6), "{hits:?}");
    assert_eq!(hits[0].phones[0].as_str(), "+6591116418");
    // More digits narrow it; spaces and dashes are ignored.
    assert_eq!(ending(index, "26418").await, vec![jan.id]);
    assert_eq!(ending(index, "1-6418").await, vec![mar.id]);
    assert_eq!(ending(index, "6 6418").await, vec![twice.id]);
    assert_eq!(ending(index, "5-6418").await, vec![feb.id]);
    assert_eq!(ending(index, "36418").await, vec![twice.id]);
    // A leading zero is one of the last digits.
    assert_eq!(ending(index, "0418").await, vec![zero.id]);
    assert_eq!(
        ending(index, "6419").await,
        vec![other.id],
        "and not the others"
    );
    assert!(any(index, "7777").await.is_empty());
    // Typed as a number to look up, the same.
    let hits = find(
        index,
        Query::Phone {
            raw: "6418".into(),
            region: None,
        },
    )
    .await;
    assert_eq!(ids(&hits), vec![mar.id, feb.id, jan.id, twice.id, never.id]);
    // Fewer than four digits are no number: nothing by suffix.
    for q in ["418", "18", "8"] {
        assert!(any(index, q).await.is_empty(), "{q}");
        let hits = find(
            index,
            Query::Phone {
                raw: q.into(),
                region: None,
            },
        )
        .await;
        assert!(hits.is_empty(), "{q}");
    }
    // With `+` the digits are a whole number, not an ending.
    assert!(any(index, "+6418").await.is_empty());
}

async fn trailing_digits_after_exact_and_national_matches(index: &dyn SearchIndex) {
    let ann = engaged(
        customer("Ann Tan", &["+6581226418"], &[]),
        "2026-01-01T00:00:00Z",
    );
    // Ends with Ann's whole national number, and engaged more recently.
    let my = engaged(
        customer("Mei Wong", &["+60181226418"], &[]),
        "2026-04-01T00:00:00Z",
    );
    let near = engaged(
        customer("Raj Kumar", &["+6591226418"], &[]),
        "2026-05-01T00:00:00Z",
    );
    put(index, &[&ann, &my, &near]).await;

    // The national number first, then numbers ending with it.
    assert_eq!(
        digits(index, "81226418").await,
        vec![(ann.id, 0.9), (my.id, 0.6)]
    );
    // With a region it is the whole number: exact first.
    let hits = find(
        index,
        Query::Phone {
            raw: "8122 6418".into(),
            region: sg(),
        },
    )
    .await;
    assert_eq!(
        hits.iter().map(|h| (h.id, h.score)).collect::<Vec<_>>(),
        vec![(ann.id, 1.0), (my.id, 0.6)]
    );
    // Four digits: every ending, by recency alone.
    assert_eq!(ending(index, "6418").await, vec![near.id, my.id, ann.id]);
    assert_eq!(ending(index, "226418").await, vec![near.id, my.id, ann.id]);
    assert_eq!(ending(index, "1226418").await, vec![near.id, my.id, ann.id]);
    assert_eq!(ending(index, "21226418").await, Vec::<CustomerId>::new());
}

async fn trailing_digits_follow_changes_and_removals(index: &dyn SearchIndex) {
    let ann = engaged(
        customer("Ann Tan", &["+6581226418"], &[]),
        "2026-01-01T00:00:00Z",
    );
    let ben = engaged(
        customer("Ben Ong", &["+6591116418"], &[]),
        "2026-02-01T00:00:00Z",
    );
    let cai = engaged(
        customer("Cai Lin", &["+6561236418"], &[]),
        "2026-03-01T00:00:00Z",
    );
    put(index, &[&ann, &ben, &cai]).await;
    assert_eq!(ending(index, "6418").await, vec![cai.id, ben.id, ann.id]);

    // A new engagement moves Ann to the front.
    let ann = engaged(ann, "2026-06-01T00:00:00Z");
    put(index, &[&ann]).await;
    assert_eq!(ending(index, "6418").await, vec![ann.id, cai.id, ben.id]);

    // A changed number stops matching the old ending and matches the new.
    let mut ben_moved = ben.clone();
    ben_moved.phones = vec![PhoneNumber::parse("+6591110000", None).unwrap()];
    put(index, &[&ben_moved]).await;
    assert_eq!(ending(index, "6418").await, vec![ann.id, cai.id]);
    assert_eq!(ending(index, "0000").await, vec![ben.id]);

    // A removed customer, and a merged one, are gone.
    index.remove(cai.id, &[]).await.unwrap();
    assert_eq!(ending(index, "6418").await, vec![ann.id]);
    let mut merged = ann.clone();
    merged.status = CustomerStatus::Merged;
    put(index, &[&merged]).await;
    assert!(any(index, "6418").await.is_empty());
    // Removed by the identifiers the caller names, too.
    let dan = customer("Dan Koh", &["+6581117777"], &[]);
    put(index, &[&dan]).await;
    assert_eq!(ending(index, "7777").await, vec![dan.id]);
    index
        .remove(dan.id, &["phone:+6581117777".to_string()])
        .await
        .unwrap();
    assert!(any(index, "7777").await.is_empty());
}

async fn trailing_digits_after_a_rebuild_and_in_pages(index: &dyn SearchIndex) {
    let when = |i: usize| format!("2026-03-01T00:{i:02}:00Z");
    let people: Vec<Customer> = (0..7)
        .map(|i| {
            engaged(
                customer(&format!("Ravi {i}"), &[&format!("+659{i}116418")], &[]),
                &when(i),
            )
        })
        .collect();
    let docs = people.iter().map(|c| Ok(doc(c))).collect::<Vec<_>>();
    index.rebuild(stream::iter(docs).boxed()).await.unwrap();

    let newest_first: Vec<CustomerId> = people.iter().rev().map(|c| c.id).collect();
    assert_eq!(ending(index, "6418").await, newest_first);
    let query = Query::Any("6418".into());
    let mut seen = Vec::new();
    let mut after = None;
    for page in 0.. {
        let results = index.search_page(&query, 3, after).await.unwrap();
        assert_eq!(results.total_estimate, 7);
        seen.extend(ids(&results.hits));
        after = results.next;
        if after.is_none() {
            assert_eq!(page, 2, "three pages of three hold seven");
            break;
        }
    }
    assert_eq!(seen, newest_first);
    // One at a time: the first page reads only the start of the bucket.
    let first = index.search_page(&query, 1, None).await.unwrap();
    assert_eq!(ids(&first.hits), vec![newest_first[0]]);
    assert_eq!(first.total_estimate, 7);
    let mut seen = ids(&first.hits);
    let mut after = first.next;
    while let Some(cursor) = after {
        let page = index.search_page(&query, 1, Some(cursor)).await.unwrap();
        assert_eq!(page.hits.len(), 1);
        seen.extend(ids(&page.hits));
        after = page.next;
    }
    assert_eq!(seen, newest_first);
}

async fn three_words_among_many_partials(index: &dyn SearchIndex) {
    let when = |i: usize| {
        format!(
            "2026-04-{:02}T{:02}:{:02}:00Z",
            1 + i / 1440,
            (i / 60) % 24,
            i % 60
        )
    };
    // 1,200 customers with two of the three words, all engaged after the
    // three with all of them.
    let firsts = ["Xin", "Priya", "Wei"];
    let mut many = Vec::new();
    for i in 0..1200 {
        let name = match i % 3 {
            0 => format!("Xin Priya {}", i),
            1 => format!("Priya Nair {}", i),
            _ => format!("{} Xin Nair", firsts[i % 3]),
        };
        many.push(engaged(customer(&name, &[], &[]), &when(i)));
    }
    let whole = engaged(customer("Xin Priya Nair", &[], &[]), "2025-01-01T00:00:00Z");
    let longer = engaged(
        customer("Xin Priya Nair Tan", &[], &[]),
        "2025-01-02T00:00:00Z",
    );
    // Seven words: too many for token sets, still found.
    let long = engaged(
        customer("Nair Anand Xin Bala Priya Chandra Devi", &[], &[]),
        "2025-01-03T00:00:00Z",
    );
    let all = many
        .iter()
        .chain([&whole, &longer, &long])
        .map(|c| Ok(doc(c)))
        .collect::<Vec<_>>();
    index.rebuild(stream::iter(all).boxed()).await.unwrap();

    let hits = find(index, Query::Any("Xin Priya Nair".into())).await;
    assert_eq!(ids(&hits[..3]), vec![whole.id, long.id, longer.id]);
    assert!(hits[..3].iter().all(|h| !h.partial));
    // Then partial matches, most recent first.
    assert!(hits[3..].iter().all(|h| h.partial));
    assert_eq!(hits[3].id, many[1199].id);
    let page = index
        .search_page(&Query::Any("xin nair".into()), 10, None)
        .await
        .unwrap();
    assert!(
        page.hits.iter().all(|h| !h.partial),
        "403 customers have both"
    );
    assert_eq!(page.hits[0].id, many[1199].id);
    assert!(
        (380..=430).contains(&page.total_estimate),
        "the 400 Wei Xin Nairs and 3 others: {}",
        page.total_estimate
    );
}

/// Five to seven digits typed also find the numbers with them inside, one
/// or two digits before the end (the start or the middle of a number as
/// remembered), after the numbers ending with them, most recent first.
async fn digits_inside_numbers(index: &dyn SearchIndex) {
    let ann = engaged(
        customer("Ann Tan", &["+6581226418"], &[]),
        "2026-01-01T00:00:00Z",
    );
    let bob = engaged(
        customer("Bob Lee", &["+6591226418"], &[]),
        "2026-02-01T00:00:00Z",
    );
    let cat = engaged(
        customer("Cat Ng", &["+6581226400"], &[]),
        "2026-03-01T00:00:00Z",
    );
    let dan = engaged(
        customer("Dan Wu", &["+6561112264"], &[]),
        "2025-01-01T00:00:00Z",
    );
    put(index, &[&ann, &bob, &cat, &dan]).await;

    // The first six digits of a Singapore number.
    let hits = find(index, Query::Any("8122 64".into())).await;
    assert_eq!(ids(&hits), vec![cat.id, ann.id]);
    assert_eq!(hits[0].matched_on, MatchedOn::Phone);
    assert_eq!(hits[0].score, 0.5);
    assert_eq!(any(index, "8122641").await, vec![ann.id]);
    // Dan's number ends with them: first, though the least recent.
    let hits = find(index, Query::Any("12264".into())).await;
    assert_eq!(ids(&hits), vec![dan.id, cat.id, bob.id, ann.id]);
    assert!(hits[0].score > hits[1].score);
    // An ending is a suffix match, not an inner one.
    assert_eq!(any(index, "226418").await, vec![bob.id, ann.id]);
    // Further from the end than two digits, or eight digits (a national
    // number, looked up as such): not searched inside numbers.
    assert!(any(index, "65812").await.is_empty());
    assert!(any(index, "58122641").await.is_empty());
    // Removed and renumbered customers leave.
    index.remove(cat.id, &[]).await.unwrap();
    let mut ann2 = ann.clone();
    ann2.phones = vec![PhoneNumber::parse("+6569990001", None).unwrap()];
    index.upsert(&doc(&ann2)).await.unwrap();
    assert!(any(index, "812264").await.is_empty());
    // Pages follow one another.
    let page = index
        .search_page(&Query::Any("12264".into()), 1, None)
        .await
        .unwrap();
    assert_eq!(ids(&page.hits), vec![dan.id]);
    assert_eq!(page.total_estimate, 2);
    let rest = index
        .search_page(&Query::Any("12264".into()), 1, page.next)
        .await
        .unwrap();
    assert_eq!(ids(&rest.hits), vec![bob.id]);
    assert!(rest.next.is_none());
}

// --- adapters ---

/// An adapter, and whatever must happen when the test is done with it.
type Adapter = (Box<dyn SearchIndex>, Option<Box<dyn std::any::Any>>);

async fn memory_adapter() -> Adapter {
    (Box::new(MemoryIndex::new()), None)
}

async fn redis_adapter() -> Adapter {
    let (index, cleanup) = redis_index().await;
    (Box::new(index), Some(Box::new(cleanup)))
}

/// The Redis adapter on a Redis Cluster of three masters with a replica
/// each (`support::redis_cluster`).
async fn redis_cluster_adapter() -> Adapter {
    let url = support::redis_cluster::url();
    let prefix = support::redis_cluster::unique_prefix();
    let index = RedisIndex::connect(&url, &prefix).await.unwrap();
    let cleanup = support::redis_cluster::DeleteOnDrop { url, prefix };
    (Box::new(index), Some(Box::new(cleanup)))
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
            digits_inside_numbers,
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
            short_names_with_one_typo,
            partial_names_follow_full_ones,
            exact_word_order_first,
            ties_by_recency_then_newest,
            pages_follow_one_another,
            hits_carry_the_last_engagement,
            three_words_among_many_partials,
            trailing_digits_find_numbers_by_recency,
            trailing_digits_after_exact_and_national_matches,
            trailing_digits_follow_changes_and_removals,
            trailing_digits_after_a_rebuild_and_in_pages,
            searches_follow_vocabulary_changes,
        );
    };
}

suite!(memory_adapter);
suite!(redis_adapter);
suite!(redis_cluster_adapter);

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

/// A reader that kept the vocabulary of its query tokens (crm-api) sees
/// the tokens another process (the indexer) adds or removes afterwards.
#[tokio::test]
async fn redis_reader_follows_another_writers_vocabulary() {
    let (writer, cleanup) = redis_index().await;
    let reader = RedisIndex::connect(&cleanup.url, &cleanup.prefix)
        .await
        .unwrap();
    let ann = engaged(customer("Ann Tan", &[], &[]), "2026-01-01T00:00:00Z");
    writer.upsert(&doc(&ann)).await.unwrap();
    // Round trips of one search: the vocabulary (with the whole-name
    // lists), the posting lists, the hits' summaries; two once the
    // vocabulary is kept; four when it changed meanwhile (the round sent
    // with the kept vocabulary does not count).
    let trips = |q: &'static str| {
        let reader = &reader;
        async move {
            let before = reader.round_trips();
            let found = any(reader, q).await;
            (found, reader.round_trips() - before)
        }
    };
    assert_eq!(trips("an").await, (vec![ann.id], 3));
    assert_eq!(trips("an").await, (vec![ann.id], 2));
    assert!(any(&reader, "annabel").await.is_empty());
    let annabel = engaged(customer("Annabel Lee", &[], &[]), "2026-02-01T00:00:00Z");
    writer.upsert(&doc(&annabel)).await.unwrap();
    assert_eq!(trips("an").await, (vec![annabel.id, ann.id], 4));
    assert_eq!(trips("an").await, (vec![annabel.id, ann.id], 2));
    assert_eq!(any(&reader, "annabel").await, vec![annabel.id]);
    writer.remove(annabel.id, &[]).await.unwrap();
    assert_eq!(any(&reader, "an").await, vec![ann.id]);
    assert!(any(&reader, "annabel").await.is_empty());
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
    let id = ann.id.0.as_bytes().to_vec();

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    let p = |k: &str| format!("{prefix}g0:{k}");
    let cust = [p("cust:").into_bytes(), id.clone()].concat();
    let mut expected: Vec<Vec<u8>> = vec![
        cust.clone(),
        p("ex").into_bytes(),
        p("used").into_bytes(),
        p("nm:ann").into_bytes(),
        p("nm:tanaka").into_bytes(),
        p("sx:6418").into_bytes(),
        p("sx:26418").into_bytes(),
        p("tk").into_bytes(),
        p("vv").into_bytes(),
        p("wn:ann tanaka").into_bytes(),
        // A three-letter token is its own typo key (`anne` reaches it).
        p("ty:ann").into_bytes(),
        p("ns:ann tanaka").into_bytes(),
    ];
    for v in [
        "tanaka", "anaka", "tnaka", "taaka", "tanka", "tanaa", "tanak",
    ] {
        expected.push(p(&format!("ty:{v}")).into_bytes());
    }
    expected.sort();
    assert_eq!(keys, expected);

    let zconn = conn.clone();
    let zrange = |key: String| {
        let mut conn = zconn.clone();
        async move {
            let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap();
            members
        }
    };
    let text = |members: Vec<Vec<u8>>| -> Vec<String> {
        members
            .into_iter()
            .map(|m| String::from_utf8(m).unwrap())
            .collect()
    };
    assert_eq!(text(zrange(p("tk")).await), vec!["ann", "tanaka"]);
    // Members carry the id's 16 bytes.
    let entry = [id.clone(), b"ann tanaka".to_vec()].concat();
    assert_eq!(zrange(p("nm:ann")).await, vec![entry.clone()]);
    assert_eq!(zrange(p("nm:tanaka")).await, vec![entry.clone()]);
    assert_eq!(zrange(p("wn:ann tanaka")).await, vec![entry.clone()]);
    assert_eq!(zrange(p("ns:ann tanaka")).await, vec![entry]);
    assert_eq!(
        zrange(p("ex")).await,
        vec![[b"ann@example.com\0".to_vec(), id.clone()].concat()]
    );
    // A number is in the buckets of its last four and five digits, and
    // has no key of its own: its owners are the members of its five-digit
    // bucket with it.
    for key in [p("sx:6418"), p("sx:26418")] {
        assert_eq!(
            zrange(key).await,
            vec![[id.clone(), b"+6581226418".to_vec()].concat()]
        );
    }
    // The summary is kept once, under the customer: a flags byte, then the
    // packed summary, about a third of its JSON.
    let value: Vec<u8> = redis::cmd("GET")
        .arg(&cust)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value[0], 0, "not marked live");
    let json = serde_json::to_vec(&doc(&ann).summary()).unwrap();
    assert!(value.len() * 2 < json.len(), "{} bytes", value.len());
    assert_eq!(
        index.summary(ann.id).await.unwrap(),
        Some(doc(&ann).summary())
    );
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
    assert_eq!(
        typo_left,
        vec![p("ty:ann")],
        "only the token left has typo keys"
    );
    assert_eq!(text(zrange(p("tk")).await), vec!["ann"]);
    let entry = [id.clone(), b"ann".to_vec()].concat();
    assert_eq!(zrange(p("nm:ann")).await, vec![entry.clone()]);
    assert_eq!(zrange(p("wn:ann")).await, vec![entry]);
}

/// On a cluster too, a rebuild deletes every key of the generation it
/// replaced, on every master.
#[tokio::test]
async fn redis_cluster_rebuild_deletes_the_replaced_generation() {
    let url = support::redis_cluster::url();
    let prefix = support::redis_cluster::unique_prefix();
    let _cleanup = support::redis_cluster::DeleteOnDrop {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let index = RedisIndex::connect(&url, &prefix).await.unwrap();
    let many: Vec<Customer> = (0..300)
        .map(|i| {
            customer(
                &format!("Spread {i} Tan"),
                &[&format!("+6581{i:06}")],
                &[&format!("spread{i}@example.com")],
            )
        })
        .collect();
    put(&index, &many.iter().collect::<Vec<_>>()).await;
    let in_generation = |g: u64| {
        let (url, prefix) = (url.clone(), prefix.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                support::redis_cluster::keys_with_prefix(&url, &format!("{prefix}g{g}:"))
            })
            .await
            .unwrap()
        }
    };
    let before = in_generation(0).await;
    assert!(before.len() > 1000, "{} keys", before.len());
    let masters_holding = tokio::task::spawn_blocking({
        let (url, prefix) = (url.clone(), prefix.clone());
        move || {
            support::redis_cluster::masters(&url)
                .into_iter()
                .filter(|m| !support::redis_cluster::keys_on_node(&url, m, &prefix).is_empty())
                .count()
        }
    })
    .await
    .unwrap();
    assert_eq!(masters_holding, 3, "the keys are spread over the masters");

    let report = index
        .rebuild(stream::iter(many[..10].iter().map(|c| Ok(doc(c))).collect::<Vec<_>>()).boxed())
        .await
        .unwrap();
    assert_eq!((report.generation, report.customers), (1, 10));
    assert!(in_generation(0).await.is_empty());
    assert!(!in_generation(1).await.is_empty());
    let fingerprints = all_fingerprints(&index).await;
    assert_eq!(fingerprints.len(), 10);
}

/// Every fingerprint of the live generation, walked a page at a time.
async fn all_fingerprints(
    index: &dyn SearchIndex,
) -> std::collections::HashMap<CustomerId, String> {
    let mut all = std::collections::HashMap::new();
    let mut cursor = None;
    loop {
        let page = index.fingerprints(cursor, 50).await.unwrap();
        for item in page.items {
            all.insert(item.id, item.fingerprint);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

/// A master of the cluster fails over (`CLUSTER FAILOVER` on its replica)
/// while customers are renamed and renumbered round after round. A write
/// that fails is sent again, as the index worker retries an event it could
/// not apply. Afterwards the index holds exactly the last version of every
/// customer: fingerprints as written, no old name or number found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_failover_during_writes_leaves_no_divergence() {
    const CUSTOMERS: usize = 150;
    const MAX_ROUNDS: usize = 40;
    let cluster = support::redis_cluster::start_private();
    let prefix = support::redis_cluster::unique_prefix();
    let index = std::sync::Arc::new(RedisIndex::connect(&cluster.url, &prefix).await.unwrap());
    let version = |i: usize, round: usize| {
        let mut c = customer(
            &format!("Failover {i} Round{round}"),
            &[&format!("+65{}{:06}", 81 + round % 9, i)],
            &[],
        );
        c.id = CustomerId(uuid::Uuid::from_u128(0xfa11_0000 + i as u128));
        c
    };
    let failed_over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first_round_done = std::sync::Arc::new(tokio::sync::Notify::new());
    let writer = tokio::spawn({
        let (index, failed_over, first_round_done) =
            (index.clone(), failed_over.clone(), first_round_done.clone());
        async move {
            let mut retried = 0usize;
            let mut rounds_after = 0usize;
            for round in 0..MAX_ROUNDS {
                for i in 0..CUSTOMERS {
                    let c = version(i, round);
                    let mut attempts = 0;
                    while let Err(e) = index.upsert(&doc(&c)).await {
                        attempts += 1;
                        retried += 1;
                        assert!(attempts < 400, "a write kept failing for 10 s: {e}");
                        // A pause before retrying, as the worker's backoff.
                        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                    }
                }
                if round == 0 {
                    first_round_done.notify_one();
                }
                if failed_over.load(std::sync::atomic::Ordering::Acquire) {
                    rounds_after += 1;
                    if rounds_after == 2 {
                        return (round, retried);
                    }
                }
            }
            panic!("the failover did not finish within {MAX_ROUNDS} rounds of writes");
        }
    });
    first_round_done.notified().await;
    let key = format!("{prefix}g0:tk");
    let url = cluster.url.clone();
    let (old, new) = tokio::task::spawn_blocking(move || {
        support::redis_cluster::failover_master_of(&url, key.as_bytes())
    })
    .await
    .unwrap();
    assert_ne!(old, new);
    failed_over.store(true, std::sync::atomic::Ordering::Release);
    let (last, retried) = writer.await.unwrap();
    eprintln!("failover {old} -> {new}; {last} rounds after the first; {retried} writes retried");

    let expected: std::collections::HashMap<CustomerId, String> = (0..CUSTOMERS)
        .map(|i| {
            let c = version(i, last);
            (c.id, doc(&c).fingerprint())
        })
        .collect();
    assert_eq!(all_fingerprints(index.as_ref()).await, expected);
    for i in [0, CUSTOMERS / 2, CUSTOMERS - 1] {
        let now = version(i, last);
        assert_eq!(
            index.summary(now.id).await.unwrap(),
            Some(doc(&now).summary())
        );
        assert_eq!(
            ids(&index
                .search(&Query::Any(format!("Failover {i} Round{last}")), 5)
                .await
                .unwrap())[0],
            now.id
        );
        assert_eq!(index.lookup_phone(&now.phones[0]).await.unwrap().len(), 1);
    }
    for round in (last.saturating_sub(3)..last).filter(|r| r % 9 != last % 9) {
        // A name is one typo from the next round's: hits may come, but
        // each with the name written last.
        let hits = find(index.as_ref(), Query::Any(format!("Round{round}"))).await;
        assert!(
            hits.iter().all(|h| h
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with(&format!("Round{last}")))),
            "round {round}'s names are gone: {hits:?}"
        );
        let old_number = version(0, round).phones[0].clone();
        assert!(index.lookup_phone(&old_number).await.unwrap().is_empty());
    }
}

/// A master of the cluster is killed (its replica is promoted): writes
/// fail for a moment, then go on through the same index, and everything
/// written after the promotion reads back. (What the dead master took but
/// had not passed on may be lost: replication is asynchronous. `verify`
/// names such drift and a rebuild mends it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_killed_master_writes_resume() {
    let cluster = support::redis_cluster::start_private();
    let prefix = support::redis_cluster::unique_prefix();
    let index = RedisIndex::connect(&cluster.url, &prefix).await.unwrap();
    let before: Vec<Customer> = (0..50)
        .map(|i| customer(&format!("Before {i}"), &[&format!("+6581{i:06}")], &[]))
        .collect();
    put(&index, &before.iter().collect::<Vec<_>>()).await;

    let key = format!("{prefix}g0:tk");
    let cluster = std::sync::Arc::new(cluster);
    let (killed, promoted) = tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || support::redis_cluster::kill_master_of(&cluster, key.as_bytes())
    })
    .await
    .unwrap();
    assert_ne!(killed, promoted);

    // Each write is retried until it succeeds, as the worker retries an
    // event, within a bound.
    let after: Vec<Customer> = (0..50)
        .map(|i| customer(&format!("After {i}"), &[&format!("+6591{i:06}")], &[]))
        .collect();
    let started = std::time::Instant::now();
    let mut retried = 0;
    for c in &after {
        while let Err(e) = index.upsert(&doc(c)).await {
            retried += 1;
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "writes did not resume within 30 s of the promotion: {e}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    eprintln!("killed {killed}, promoted {promoted}; {retried} writes retried");
    for c in &after {
        assert_eq!(index.summary(c.id).await.unwrap(), Some(doc(c).summary()));
        assert_eq!(index.lookup_phone(&c.phones[0]).await.unwrap()[0].id, c.id);
    }
    assert_eq!(any(&index, "After 7").await[0], after[7].id);
}
