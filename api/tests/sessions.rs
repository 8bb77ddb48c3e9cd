//! Sessions and limits over HTTP: ending a session ends its access tokens
//! (here at once, on another instance within a second); `nbf` and `iat`;
//! login limits that slow guessing down without locking the owner out,
//! per client address behind trusted proxies and shared through Redis;
//! `/metrics` off the public port; data files readable by their owner only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is how a test fails

mod common;
#[path = "common/processes.rs"]
mod processes;
#[path = "../../indexer/tests/support/redis_cluster.rs"]
mod redis_cluster;
#[path = "../../indexer/tests/support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{
    expect_json, expect_problem, spawn_app, spawn_app_with, TestApp, Tokens, ADMIN_EMAIL,
    ADMIN_PASSWORD, USER_PASSWORD,
};
use crm_api::auth::Auth;
use crm_api::config::Config;
use crm_api::error::ApiError;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// How long a revocation may take to reach every instance.
const WITHIN: Duration = Duration::from_secs(1);

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn bearer(token: &str) -> Parts {
    axum::http::Request::builder()
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// A second instance: its own `Auth` (its own caches) over the app's store,
/// as another crm-api process behind the same load balancer would be.
fn other_instance(app: &TestApp) -> Auth {
    let secret = app.jwt_secret();
    let config = Config::for_data_dir(app.data_dir.path().to_path_buf());
    Auth::new(app.state.crm.store().clone(), &secret, &config)
}

async fn accepted_by(instance: &Auth, token: &str) -> bool {
    match instance.authenticate(&bearer(token)).await {
        Ok(_) => true,
        Err(ApiError::Unauthorized(_)) => false,
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// Asks `instance` every 20 ms until it refuses `token`; panics unless that
/// happens within [`WITHIN`]. Returns how long it took.
async fn refused_within_a_second(instance: &Auth, token: &str) -> Duration {
    let started = Instant::now();
    loop {
        if !accepted_by(instance, token).await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WITHIN,
            "the token still works {:?} after the session ended",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn me_status(app: &TestApp, token: &str) -> StatusCode {
    app.get("/v1/me", token).await.status()
}

async fn refresh(app: &TestApp, refresh_token: &str) -> reqwest::Response {
    app.post_anonymous(
        "/v1/auth/refresh",
        &json!({ "refresh_token": refresh_token }),
    )
    .await
}

#[tokio::test]
async fn logout_ends_the_access_token_here_at_once_and_everywhere_within_a_second() {
    let app = spawn_app().await;
    let other = other_instance(&app);
    let first = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let second = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_ne!(
        claims(&first.access_token)["sid"],
        claims(&second.access_token)["sid"]
    );
    assert!(accepted_by(&other, &first.access_token).await);
    assert_eq!(me_status(&app, &first.access_token).await, StatusCode::OK);

    let response = app
        .post(
            "/v1/auth/logout",
            &first.access_token,
            &json!({ "refresh_token": first.refresh_token }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // The instance that logged out refuses the token on the next request.
    expect_problem(
        app.get("/v1/me", &first.access_token).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    refused_within_a_second(&other, &first.access_token).await;
    // The other session of the same user goes on.
    assert_eq!(me_status(&app, &second.access_token).await, StatusCode::OK);
    assert!(accepted_by(&other, &second.access_token).await);
}

#[tokio::test]
async fn reuse_of_a_refresh_token_ends_every_access_token_of_its_family() {
    let app = spawn_app().await;
    let other = other_instance(&app);
    let first = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let second: Tokens =
        expect_json(refresh(&app, &first.refresh_token).await, StatusCode::OK).await;
    assert_eq!(
        claims(&first.access_token)["sid"],
        claims(&second.access_token)["sid"],
        "one session, one id"
    );
    assert!(accepted_by(&other, &second.access_token).await);

    // The used refresh token comes back: somebody copied it.
    expect_problem(
        refresh(&app, &first.refresh_token).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    for token in [&first.access_token, &second.access_token] {
        assert_eq!(me_status(&app, token).await, StatusCode::UNAUTHORIZED);
        refused_within_a_second(&other, token).await;
    }
}

#[tokio::test]
async fn a_new_password_ends_the_old_sessions_and_deactivation_ends_all() {
    let app = spawn_app().await;
    let other = other_instance(&app);
    let admin = app.admin_token().await;
    let user = app.create_user("dana@example.com", "agent").await;
    let id = user["id"].as_str().unwrap();
    let before = app.login("dana@example.com", USER_PASSWORD).await;
    assert!(accepted_by(&other, &before.access_token).await);

    let new_password = "another long password";
    expect_json::<Value>(
        app.patch(
            &format!("/v1/users/{id}"),
            &admin,
            &json!({ "password": new_password }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        me_status(&app, &before.access_token).await,
        StatusCode::UNAUTHORIZED
    );
    refused_within_a_second(&other, &before.access_token).await;
    expect_problem(
        refresh(&app, &before.refresh_token).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    // A session started with the new password works, until deactivation.
    let after = app.login("dana@example.com", new_password).await;
    assert_eq!(me_status(&app, &after.access_token).await, StatusCode::OK);
    assert!(accepted_by(&other, &after.access_token).await);
    expect_json::<Value>(
        app.patch(
            &format!("/v1/users/{id}"),
            &admin,
            &json!({ "active": false }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        me_status(&app, &after.access_token).await,
        StatusCode::UNAUTHORIZED
    );
    refused_within_a_second(&other, &after.access_token).await;
    // The admin's own session is untouched.
    assert_eq!(me_status(&app, &admin).await, StatusCode::OK);
}

#[tokio::test]
async fn tokens_not_valid_yet_or_without_a_session_are_refused() {
    let app = spawn_app().await;
    let real = app.admin_token().await;
    let secret = app.jwt_secret();
    let now = chrono::Utc::now().timestamp();
    let good = json!({
        "sub": claims(&real)["sub"], "role": "admin", "iss": "crm-api", "aud": "crm",
        "iat": now, "nbf": now, "exp": now + 300, "jti": "test", "sid": claims(&real)["sid"],
    });
    let sign = |c: &Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            c,
            &EncodingKey::from_secret(&secret),
        )
        .unwrap()
    };
    assert_eq!(me_status(&app, &sign(&good)).await, StatusCode::OK);
    // Clocks may differ by a few seconds: 2 s ahead is fine.
    let mut slightly_ahead = good.clone();
    slightly_ahead["nbf"] = json!(now + 2);
    slightly_ahead["iat"] = json!(now + 2);
    assert_eq!(
        me_status(&app, &sign(&slightly_ahead)).await,
        StatusCode::OK
    );
    for (field, value) in [
        ("nbf", json!(now + 60)),
        ("iat", json!(now + 60)),
        ("sid", json!("")),
    ] {
        let mut bad = good.clone();
        bad[field] = value.clone();
        assert_eq!(
            me_status(&app, &sign(&bad)).await,
            StatusCode::UNAUTHORIZED,
            "{field} = {value}"
        );
    }
    for field in ["nbf", "sid"] {
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove(field);
        assert_eq!(
            me_status(&app, &sign(&missing)).await,
            StatusCode::UNAUTHORIZED,
            "without {field}"
        );
    }
}

/// A login attempt as if from `client`, through the trusted local proxy.
async fn login_from(app: &TestApp, client: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/auth/login"))
        .header("x-forwarded-for", client)
        .json(&json!({ "email": ADMIN_EMAIL, "password": password }))
        .send()
        .await
        .unwrap()
}

fn behind_local_proxy(c: &mut Config) {
    c.trusted_proxies = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn five_bad_passwords_from_one_address_do_not_lock_the_owner_out() {
    let app = spawn_app_with(behind_local_proxy).await;
    let attacker = "198.51.100.66";
    for _ in 0..5 {
        expect_problem(
            login_from(&app, attacker, "not the password").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    // The attacker's address now waits, even with the right password...
    let limited = login_from(&app, attacker, "not the password").await;
    assert_eq!(retry_after(&limited), 2);
    expect_problem(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    expect_problem(
        login_from(&app, attacker, ADMIN_PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    // ...while the owner, from another address, logs in at once.
    let tokens: Tokens = expect_json(
        login_from(&app, "203.0.113.7", ADMIN_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me_status(&app, &tokens.access_token).await, StatusCode::OK);
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    // No trusted proxy: every request comes from 127.0.0.1, whatever the
    // header says, so the "other address" shares the attacker's wait.
    let app = spawn_app().await;
    for _ in 0..5 {
        login_from(&app, "198.51.100.66", "not the password").await;
    }
    expect_problem(
        login_from(&app, "203.0.113.7", ADMIN_PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;

    // The local proxy trusted: the right-most untrusted entry is the client,
    // and what the client wrote left of it is not believed.
    let app = spawn_app_with(behind_local_proxy).await;
    for _ in 0..5 {
        login_from(&app, "192.0.2.1, 198.51.100.66", "not the password").await;
    }
    // A forged left-most entry does not escape the wait.
    expect_problem(
        login_from(&app, "203.0.113.7, 198.51.100.66", ADMIN_PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    expect_json::<Tokens>(
        login_from(&app, "198.51.100.66, 203.0.113.7", ADMIN_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn login_limits_are_shared_by_instances_on_one_redis() {
    let url = redis_server::url();
    let prefix = redis_server::unique_prefix();
    let _keys = redis_server::DeleteOnDrop {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    login_limits_are_shared(url, prefix, redis_server::keys_with_prefix).await;
}

/// The same on a Redis Cluster: an account's two counters share a hash
/// tag, so that one script updates both.
#[tokio::test]
async fn login_limits_are_shared_by_instances_on_a_redis_cluster() {
    let url = redis_cluster::url();
    let prefix = redis_cluster::unique_prefix();
    let _keys = redis_cluster::DeleteOnDrop {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    login_limits_are_shared(url, prefix, redis_cluster::keys_with_prefix).await;
}

async fn login_limits_are_shared(
    url: String,
    prefix: String,
    keys_with_prefix: fn(&str, &str) -> Vec<Vec<u8>>,
) {
    let configure = |c: &mut Config| {
        behind_local_proxy(c);
        c.redis_url = Some(url.clone());
        c.redis_prefix = prefix.clone();
    };
    let one = spawn_app_with(configure).await;
    let two = spawn_app_with(configure).await;
    let attacker = "198.51.100.66";
    for i in 0..5 {
        // Spread over both instances.
        let app = if i % 2 == 0 { &one } else { &two };
        expect_problem(
            login_from(app, attacker, "not the password").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    for app in [&one, &two] {
        let limited = login_from(app, attacker, ADMIN_PASSWORD).await;
        assert!((1..=2).contains(&retry_after(&limited)));
        expect_problem(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    }
    // The owner from elsewhere, on either instance.
    expect_json::<Tokens>(
        login_from(&two, "203.0.113.7", ADMIN_PASSWORD).await,
        StatusCode::OK,
    )
    .await;

    // The counters are in Redis under the prefix, expiring, without the email.
    let mut conn = crm_indexer::redis_link::Target::parse(&url)
        .unwrap()
        .connect(Default::default())
        .await
        .unwrap();
    let keys: Vec<String> = keys_with_prefix(&url, &prefix)
        .into_iter()
        .map(|k| String::from_utf8(k).unwrap())
        .filter(|k| k.contains("login"))
        .collect();
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(!key.contains("example.com"), "{key}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} does not expire");
    }
}

#[tokio::test]
async fn with_redis_down_logins_go_on_under_this_instances_own_limits() {
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = processes::RedisProcess::start(redis_dir.path(), false);
    let url = redis.url();
    let app = spawn_app_with(move |c| {
        behind_local_proxy(c);
        c.redis_url = Some(url);
        c.redis_prefix = redis_server::unique_prefix();
    })
    .await;
    let attacker = "198.51.100.66";
    for _ in 0..3 {
        login_from(&app, attacker, "not the password").await;
    }
    redis.kill();
    // Neither blocked on the dead Redis nor let through: the counts this
    // instance kept go on.
    for _ in 0..2 {
        let started = Instant::now();
        expect_problem(
            login_from(&app, attacker, "not the password").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    expect_problem(
        login_from(&app, attacker, ADMIN_PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    expect_json::<Tokens>(
        login_from(&app, "203.0.113.7", ADMIN_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_or_with_the_token() {
    let app = spawn_app().await;
    expect_problem(
        app.client.get(app.url("/metrics")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "route_not_found",
    )
    .await;
    let own = format!("{}/metrics", app.metrics_address.as_ref().unwrap());
    let text = app
        .client
        .get(&own)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("http_requests_total"), "{text}");

    let token = "a metrics token for the scraper";
    let app = spawn_app_with(|c| {
        c.metrics_token = Some(token.into());
        c.metrics_listen = "off".parse().unwrap();
    })
    .await;
    assert!(app.metrics_address.is_none());
    let metrics = |bearer: Option<&str>| {
        let mut req = app.client.get(app.url("/metrics"));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        req.send()
    };
    let admin = app.admin_token().await;
    for wrong in [None, Some("wrong"), Some(admin.as_str())] {
        expect_problem(
            metrics(wrong).await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    let ok = metrics(Some(token)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.text().await.unwrap().contains("http_requests_total"));
}

#[cfg(unix)]
#[tokio::test]
async fn the_store_and_the_jwt_secret_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    for file in ["crm.redb", "jwt-secret"] {
        let mode = std::fs::metadata(app.data_dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
    // An older store file made with the default mode is narrowed on open.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.redb");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = crm_models::store::embedded::EmbeddedStore::open(dir.path()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(store);
    // A data directory the store creates is its owner's only.
    let created = dir.path().join("new").join("data");
    let store = crm_models::store::embedded::EmbeddedStore::open(&created).unwrap();
    for d in [created.parent().unwrap(), created.as_path()] {
        let mode = std::fs::metadata(d).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}: {mode:o}", d.display());
    }
    drop(store);
}
