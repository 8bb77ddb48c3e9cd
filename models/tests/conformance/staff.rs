//! Staff and their sessions: users, refresh tokens and API keys.

use super::*;

fn user(mail: &str) -> User {
    User {
        id: UserId(Uuid::new_v4()),
        email: email(mail),
        name: "Staff".into(),
        role: Role::Agent,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        active: true,
        team: None,
        created_at: at(0),
        updated_at: at(0),
    }
}

fn refresh(hash: &str, user: UserId, family: &str) -> RefreshToken {
    RefreshToken {
        token_hash: hash.into(),
        user_id: user,
        family_id: family.into(),
        used: false,
        revoked: false,
        created_at: at(0),
        expires_at: at(86_400),
    }
}

fn api_key(name: &str, hash: &str, created: Timestamp) -> ApiKey {
    ApiKey {
        id: ApiKeyId(Uuid::new_v4()),
        name: name.into(),
        key_hash: hash.into(),
        prefix: "crm_abcd".into(),
        role: Role::Service,
        scopes: vec![KeyScope::Track],
        created_by: UserId::new(),
        created_at: created,
        revoked_at: None,
    }
}

// --- users ---

pub async fn users_insert_get_update_conflicts(store: Arc<dyn Store>) {
    let ann = user("ann@corp.example");
    let bob = user("bob@corp.example");
    store.insert_user(&ann, &[]).await.unwrap();
    store.insert_user(&bob, &[]).await.unwrap();

    assert_eq!(store.get_user(ann.id).await.unwrap(), Some(ann.clone()));
    assert_eq!(store.get_user(UserId::new()).await.unwrap(), None);
    assert_eq!(
        store
            .get_user_by_email(&email("bob@corp.example"))
            .await
            .unwrap(),
        Some(bob.clone())
    );
    assert_eq!(
        store
            .get_user_by_email(&email("nobody@corp.example"))
            .await
            .unwrap(),
        None
    );

    // Email taken by another user; id taken.
    let dup_email = User {
        id: UserId::new(),
        ..user("ann@corp.example")
    };
    assert!(matches!(
        store.insert_user(&dup_email, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    let dup_id = User {
        id: ann.id,
        ..user("carol@corp.example")
    };
    assert!(matches!(
        store.insert_user(&dup_id, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .get_user_by_email(&email("carol@corp.example"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.count_users().await.unwrap(), 2);

    // Update: other fields, then a new email (the old one is freed).
    let mut changed = ann.clone();
    changed.name = "Ann T.".into();
    changed.role = Role::Admin;
    changed.active = false;
    changed.updated_at = at(60);
    store.update_user(&changed, &[]).await.unwrap();
    assert_eq!(store.get_user(ann.id).await.unwrap(), Some(changed.clone()));
    changed.email = email("ann.tan@corp.example");
    store.update_user(&changed, &[]).await.unwrap();
    assert_eq!(
        store
            .get_user_by_email(&email("ann.tan@corp.example"))
            .await
            .unwrap(),
        Some(changed.clone())
    );
    assert_eq!(
        store
            .get_user_by_email(&email("ann@corp.example"))
            .await
            .unwrap(),
        None
    );
    let carol = User {
        id: UserId::new(),
        ..user("ann@corp.example")
    };
    store.insert_user(&carol, &[]).await.unwrap();

    // Update to a taken email: Conflict and nothing changes.
    let mut stolen = changed.clone();
    stolen.email = email("bob@corp.example");
    stolen.name = "Thief".into();
    assert!(matches!(
        store.update_user(&stolen, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_user(ann.id).await.unwrap(), Some(changed.clone()));
    assert_eq!(
        store
            .get_user_by_email(&email("bob@corp.example"))
            .await
            .unwrap(),
        Some(bob)
    );

    let ghost = user("ghost@corp.example");
    assert_eq!(
        store.update_user(&ghost, &[]).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store
            .get_user_by_email(&email("ghost@corp.example"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.count_users().await.unwrap(), 3);
}

pub async fn users_list_pages_and_count(store: Arc<dyn Store>) {
    assert_eq!(store.count_users().await.unwrap(), 0);
    assert!(store.list_users(None, 10).await.unwrap().is_empty());
    let mut users: Vec<User> = (0..11)
        .map(|i| user(&format!("user{i}@corp.example")))
        .collect();
    for u in &users {
        store.insert_user(u, &[]).await.unwrap();
    }
    users.sort_by_key(|u| u.id);
    assert_eq!(store.count_users().await.unwrap(), 11);
    assert_eq!(store.list_users(None, 100).await.unwrap(), users);

    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let page = store.list_users(after, 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.into_iter().map(|u| u.id));
    }
    assert_eq!(seen, users.iter().map(|u| u.id).collect::<Vec<_>>());
    assert_eq!(
        store.list_users(Some(users[10].id), 4).await.unwrap(),
        vec![]
    );
}

// --- refresh tokens ---

pub async fn refresh_token_is_used_once(store: Arc<dyn Store>) {
    let u = UserId::new();
    let token = refresh("hash-1", u, "family-1");
    store.insert_refresh_token(&token).await.unwrap();
    assert_eq!(
        store.get_refresh_token("hash-1").await.unwrap(),
        Some(token.clone())
    );
    assert_eq!(store.get_refresh_token("hash-x").await.unwrap(), None);

    assert!(store.use_refresh_token("hash-1").await.unwrap());
    assert!(!store.use_refresh_token("hash-1").await.unwrap());
    assert!(!store.use_refresh_token("hash-x").await.unwrap());
    let stored = store.get_refresh_token("hash-1").await.unwrap().unwrap();
    assert!(stored.used);
    assert!(!stored.revoked);
    assert_eq!(
        stored,
        RefreshToken {
            used: true,
            ..token
        }
    );
}

pub async fn refresh_token_concurrent_use_has_one_winner(store: Arc<dyn Store>) {
    store
        .insert_refresh_token(&refresh("hash-race", UserId::new(), "f"))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.use_refresh_token("hash-race").await.unwrap() })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        if task.await.unwrap() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
}

pub async fn refresh_tokens_revoked_by_family_and_user(store: Arc<dyn Store>) {
    let ann = UserId::new();
    let bob = UserId::new();
    for (hash, user, family) in [
        ("a1", ann, "fam-a"),
        ("a2", ann, "fam-a"),
        ("a3", ann, "fam-a2"),
        ("b1", bob, "fam-b"),
        ("b2", bob, "fam-b2"),
    ] {
        store
            .insert_refresh_token(&refresh(hash, user, family))
            .await
            .unwrap();
    }
    // A family whose name is a prefix of another's is its own family.
    store
        .insert_refresh_token(&refresh("x1", bob, "fam"))
        .await
        .unwrap();

    store.revoke_refresh_family("fam-a").await.unwrap();
    let revoked = |h: &'static str| {
        let store = Arc::clone(&store);
        async move { store.get_refresh_token(h).await.unwrap().unwrap().revoked }
    };
    assert!(revoked("a1").await);
    assert!(revoked("a2").await);
    assert!(!revoked("a3").await);
    assert!(!revoked("b1").await);
    assert!(!revoked("x1").await);
    assert!(
        !store.use_refresh_token("a1").await.unwrap(),
        "a revoked token cannot be used"
    );
    assert!(!store.get_refresh_token("a1").await.unwrap().unwrap().used);

    store.revoke_user_refresh_tokens(bob).await.unwrap();
    assert!(revoked("b1").await);
    assert!(revoked("b2").await);
    assert!(revoked("x1").await);
    assert!(!revoked("a3").await);
    assert!(!store.use_refresh_token("b2").await.unwrap());
    assert!(store.use_refresh_token("a3").await.unwrap());

    // Revoking is idempotent and unknown names are fine.
    store.revoke_refresh_family("fam-a").await.unwrap();
    store.revoke_refresh_family("no-such-family").await.unwrap();
    store
        .revoke_user_refresh_tokens(UserId::new())
        .await
        .unwrap();
    assert!(revoked("a1").await);
}

/// Revoking a family or a user's tokens records the sessions (families)
/// that ended, for every instance to refuse their access tokens; a family
/// revoked already is not recorded again by a user-wide revocation.
pub async fn revoked_sessions_are_recorded_and_pruned(store: Arc<dyn Store>) {
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let long_ago = time::now() - Duration::hours(1);
    assert!(store.revoked_sessions(long_ago).await.unwrap().is_empty());
    let ann = UserId::new();
    let bob = UserId::new();
    for (hash, user, family) in [
        ("s1", ann, "sess-a1"),
        ("s2", ann, "sess-a1"),
        ("s3", ann, "sess-a2"),
        ("s4", ann, "sess-a3"),
        ("s5", bob, "sess-b1"),
    ] {
        store
            .insert_refresh_token(&refresh(hash, user, family))
            .await
            .unwrap();
    }
    // A used token is not a revoked one: its family is still a live session.
    assert!(store.use_refresh_token("s1").await.unwrap());

    store.revoke_refresh_family("sess-a3").await.unwrap();
    let before_user_wide = time::now();
    assert_eq!(
        store.revoked_sessions(long_ago).await.unwrap(),
        vec!["sess-a3".to_string()]
    );
    store.revoke_user_refresh_tokens(ann).await.unwrap();
    assert_eq!(
        sorted(store.revoked_sessions(long_ago).await.unwrap()),
        ["sess-a1", "sess-a2", "sess-a3"]
    );
    // Bob's session is untouched.
    assert!(
        !store
            .get_refresh_token("s5")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    // Only what was revoked since the time asked for.
    let since = sorted(store.revoked_sessions(before_user_wide).await.unwrap());
    assert_eq!(since, ["sess-a1", "sess-a2"]);
    let later = time::now() + Duration::seconds(1);
    assert!(store.revoked_sessions(later).await.unwrap().is_empty());

    // Pruning forgets what is older than the bound, and only that.
    assert_eq!(store.prune_revoked_sessions(long_ago).await.unwrap(), 0);
    assert_eq!(
        store.revoked_sessions(long_ago).await.unwrap().len(),
        3,
        "nothing was older"
    );
    assert_eq!(store.prune_revoked_sessions(later).await.unwrap(), 3);
    assert!(store.revoked_sessions(long_ago).await.unwrap().is_empty());
}

// --- API keys ---

pub async fn api_keys_insert_get_list_revoke(store: Arc<dyn Store>) {
    assert!(store.list_api_keys().await.unwrap().is_empty());
    let late = api_key("website", "hash-late", at(20));
    let early = api_key("importer", "hash-early", at(10));
    store.insert_api_key(&late).await.unwrap();
    store.insert_api_key(&early).await.unwrap();

    assert_eq!(
        store.get_api_key_by_hash("hash-late").await.unwrap(),
        Some(late.clone())
    );
    assert_eq!(store.get_api_key_by_hash("hash-none").await.unwrap(), None);
    assert_eq!(
        store.list_api_keys().await.unwrap(),
        vec![early.clone(), late.clone()]
    );

    assert!(store.revoke_api_key(late.id, at(30)).await.unwrap());
    assert!(!store.revoke_api_key(late.id, at(40)).await.unwrap());
    assert!(!store.revoke_api_key(ApiKeyId::new(), at(40)).await.unwrap());
    let revoked = store
        .get_api_key_by_hash("hash-late")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(at(30)));
    assert_eq!(
        store.list_api_keys().await.unwrap(),
        vec![
            early,
            ApiKey {
                revoked_at: Some(at(30)),
                ..late
            }
        ],
        "revoked keys are listed too"
    );
}
