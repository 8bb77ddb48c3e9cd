//! The public event feed on every adapter ([`EventLogStore::read_feed`]):
//! feed order, paging after `last`, filters, `None` for a cursor the log does
//! not hold, and an event committed late (with a smaller id than one a
//! reader has seen) still reaching that reader after its cursor.

use super::*;

use crm_models::event::{DomainEvent, EventEnvelope, EventFilter};

fn feed_user(n: usize) -> User {
    User {
        id: UserId::new(),
        email: email(&format!("feed{n}.{}@example.com", Uuid::new_v4().simple())),
        name: format!("Feed {n}"),
        role: Role::Agent,
        password_hash: "$argon2id$not-a-real-hash".into(),
        active: true,
        team: None,
        created_at: t0(),
        updated_at: t0(),
    }
}

/// Writes one user with `events`, as a write appends its events.
async fn write(store: &dyn Store, n: usize, events: Vec<EventEnvelope>) -> UserId {
    let user = feed_user(n);
    store.insert_user(&user, &events).await.unwrap();
    user.id
}

fn created(user: UserId) -> EventEnvelope {
    EventEnvelope::new(None, DomainEvent::UserCreated { user_id: user })
}

/// What the relay does before publishing: takes the unrelayed events (in
/// MongoDB this places them in the feed), then marks them relayed.
async fn relay_all(store: &dyn Store) {
    loop {
        let batch = store.unrelayed_events(1000).await.unwrap();
        if batch.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
        store.mark_events_relayed(&ids).await.unwrap();
    }
}

/// The user an event names (every event of these checks names one).
fn user_of(e: &EventEnvelope) -> UserId {
    match &e.event {
        DomainEvent::UserCreated { user_id } | DomainEvent::UserUpdated { user_id, .. } => *user_id,
        other => panic!("unexpected event {other:?}"),
    }
}

/// Every event after `after`, `limit` per read.
async fn read_all(
    store: &dyn Store,
    after: Option<Uuid>,
    filter: &EventFilter,
    limit: usize,
) -> Vec<EventEnvelope> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let page = store
            .read_feed(cursor, filter, limit)
            .await
            .unwrap()
            .expect("the cursor is in the log");
        assert!(page.events.len() <= limit);
        if page.events.is_empty() && page.last == cursor {
            return out;
        }
        out.extend(page.events);
        cursor = page.last;
    }
}

pub async fn feed_reads_in_commit_order_pages_after_last_and_filters(store: Arc<dyn Store>) {
    let customer = CustomerId::new();
    let mut written = Vec::new();
    for n in 0..7 {
        let user = UserId::new();
        let mut events = vec![created(user)];
        if n % 3 == 0 {
            events.push(EventEnvelope::about(
                customer,
                DomainEvent::UserUpdated {
                    user_id: user,
                    fields: vec!["name".into()],
                },
            ));
        }
        written.extend(events.iter().map(user_of));
        write(&*store, n, events).await;
    }
    relay_all(&*store).await;

    let everything = EventFilter::default();
    let all = read_all(&*store, None, &everything, 1000).await;
    assert_eq!(all.iter().map(user_of).collect::<Vec<_>>(), written);
    for limit in [1, 2, 3] {
        let paged = read_all(&*store, None, &everything, limit).await;
        assert_eq!(
            paged.iter().map(|e| e.id).collect::<Vec<_>>(),
            all.iter().map(|e| e.id).collect::<Vec<_>>(),
            "pages of {limit}"
        );
    }
    // A full page ends at its last event.
    let first = store
        .read_feed(None, &everything, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.events.len(), 2);
    assert_eq!(first.last, Some(first.events[1].id));
    // From a cursor in the middle.
    let rest = read_all(&*store, Some(all[3].id), &everything, 1000).await;
    assert_eq!(rest, all[4..].to_vec());

    let updates = EventFilter {
        types: vec!["user.updated".into()],
        customer_id: None,
    };
    let only = read_all(&*store, None, &updates, 1).await;
    assert_eq!(only.len(), 3);
    assert!(only.iter().all(|e| e.name() == "user.updated"));
    let about = EventFilter {
        types: Vec::new(),
        customer_id: Some(customer),
    };
    assert_eq!(read_all(&*store, None, &about, 2).await, only);
    let nothing = EventFilter {
        types: vec!["customer.erased".into()],
        customer_id: None,
    };
    assert!(read_all(&*store, None, &nothing, 10).await.is_empty());

    // At the head: an empty page that keeps the cursor.
    let last = all.last().unwrap().id;
    let head = store
        .read_feed(Some(last), &everything, 10)
        .await
        .unwrap()
        .unwrap();
    assert!(head.events.is_empty());
    assert_eq!(head.last, Some(last));
}

pub async fn feed_has_no_page_after_a_cursor_it_does_not_hold(store: Arc<dyn Store>) {
    let everything = EventFilter::default();
    let empty = store
        .read_feed(None, &everything, 10)
        .await
        .unwrap()
        .unwrap();
    assert!(empty.events.is_empty());
    assert_eq!(empty.last, None);
    assert_eq!(
        store
            .read_feed(Some(Uuid::now_v7()), &everything, 10)
            .await
            .unwrap(),
        None,
        "never an event"
    );

    for n in 0..3 {
        write(&*store, n, vec![created(UserId::new())]).await;
    }
    relay_all(&*store).await;
    let all = read_all(&*store, None, &everything, 10).await;
    assert_eq!(all.len(), 3);
    let pruned = store
        .prune_events(time::now() + Duration::days(1))
        .await
        .unwrap();
    assert_eq!(pruned, 3);
    assert_eq!(
        store
            .read_feed(Some(all[1].id), &everything, 10)
            .await
            .unwrap(),
        None,
        "pruned away"
    );
}

pub async fn feed_puts_an_event_committed_late_after_the_cursor(store: Arc<dyn Store>) {
    let everything = EventFilter::default();
    let (late_user, early_user) = (UserId::new(), UserId::new());
    // Made first (the smaller id), committed last.
    let late = created(late_user);
    let early = created(early_user);
    assert!(late.id < early.id);
    write(&*store, 0, vec![early]).await;
    relay_all(&*store).await;
    let seen = read_all(&*store, None, &everything, 10).await;
    assert_eq!(seen.iter().map(user_of).collect::<Vec<_>>(), [early_user]);
    let cursor = seen[0].id;

    write(&*store, 1, vec![late]).await;
    relay_all(&*store).await;
    let after = read_all(&*store, Some(cursor), &everything, 10).await;
    assert_eq!(
        after.iter().map(user_of).collect::<Vec<_>>(),
        [late_user],
        "the late event is after the cursor"
    );
    let whole = read_all(&*store, None, &everything, 10).await;
    assert_eq!(
        whole.iter().map(user_of).collect::<Vec<_>>(),
        [early_user, late_user],
        "in the order they became visible"
    );
}
