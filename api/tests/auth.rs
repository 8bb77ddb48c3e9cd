//! Authentication over HTTP: logins, tokens, refresh rotation, staff accounts,
//! API keys, role checks and login throttling, against the real application.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is how a test fails

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{
    expect_json, expect_problem, spawn_app, Tokens, ADMIN_EMAIL, ADMIN_PASSWORD, USER_PASSWORD,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The claims of a JWT, read without checking the signature.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
        .expect("JSON claims")
}

fn sign(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn login_returns_an_hs256_token_with_the_expected_claims() {
    let app = spawn_app().await;
    let tokens = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 900);
    assert_eq!(tokens.refresh_token.len(), 43);

    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(tokens.access_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "HS256");
    let c = claims(&tokens.access_token);
    assert_eq!(c["iss"], "crm-api");
    assert_eq!(c["aud"], "crm");
    assert_eq!(c["role"], "admin");
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert!(exp > iat);
    assert_eq!(exp - iat, 900);
    assert!(!c["jti"].as_str().unwrap().is_empty());

    let me: Value = expect_json(
        app.get("/v1/me", &tokens.access_token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["id"], c["sub"]);
    assert_eq!(me["email"], ADMIN_EMAIL);
    assert_eq!(me["name"], "Administrator");
    assert_eq!(me["role"], "admin");
}

#[tokio::test]
async fn wrong_password_and_unknown_email_get_the_same_401() {
    let app = spawn_app().await;
    let wrong = app.try_login(ADMIN_EMAIL, "not the admin password").await;
    assert_eq!(
        wrong.headers()["www-authenticate"].to_str().unwrap(),
        "Bearer realm=\"crm\""
    );
    let wrong = expect_problem(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let unknown = expect_problem(
        app.try_login("nobody@example.com", ADMIN_PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong["detail"], "invalid email or password");
}

#[tokio::test]
async fn forged_expired_and_misaddressed_tokens_get_401() {
    let app = spawn_app().await;
    let real = app.admin_token().await;
    let secret = app.jwt_secret();
    let now = chrono::Utc::now().timestamp();
    let good = json!({
        "sub": claims(&real)["sub"], "role": "admin", "iss": "crm-api", "aud": "crm",
        "iat": now, "nbf": now, "exp": now + 300, "jti": "test", "sid": claims(&real)["sid"],
    });
    // The rig is right: a token made here with the real secret works.
    expect_json::<Value>(
        app.get("/v1/me", &sign(&good, &secret)).await,
        StatusCode::OK,
    )
    .await;

    let other_secret = sign(&good, b"another secret of at least 32 bytes!");
    let mut expired = good.clone();
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("another-service");
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    for (what, token) in [
        ("another secret", other_secret),
        ("expired", sign(&expired, &secret)),
        ("wrong audience", sign(&wrong_aud, &secret)),
        ("alg none", alg_none),
        ("garbage", "not-a-token".to_string()),
    ] {
        let response = app.get("/v1/me", &token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        expect_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let anonymous = app.request(Method::GET, "/v1/me", None, None).await;
    expect_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let app = spawn_app().await;
    let first = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let refresh = |token: &str| {
        let body = json!({ "refresh_token": token });
        let app = &app;
        async move { app.post_anonymous("/v1/auth/refresh", &body).await }
    };

    let second: Tokens = expect_json(refresh(&first.refresh_token).await, StatusCode::OK).await;
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(
        claims(&second.access_token)["sub"],
        claims(&first.access_token)["sub"]
    );
    expect_json::<Value>(
        app.get("/v1/me", &second.access_token).await,
        StatusCode::OK,
    )
    .await;

    // The first token again: somebody replays it. Refused, and the newest
    // token of the family stops working too.
    expect_problem(
        refresh(&first.refresh_token).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    expect_problem(
        refresh(&second.refresh_token).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    expect_problem(
        refresh("never-issued").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = spawn_app().await;
    let tokens = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let body = json!({ "refresh_token": tokens.refresh_token });
    expect_problem(
        app.post_anonymous("/v1/auth/logout", &body).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let response = app
        .post("/v1/auth/logout", &tokens.access_token, &body)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    expect_problem(
        app.post_anonymous("/v1/auth/refresh", &body).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn admins_manage_users_and_agents_may_not() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;

    let created: Value = expect_json(
        app.post(
            "/v1/users",
            &admin,
            &json!({ "email": " Ann@Example.com", "name": "Ann Tan", "password": USER_PASSWORD, "role": "agent" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["email"], "ann@example.com");
    assert_eq!(created["name"], "Ann Tan");
    assert_eq!(created["role"], "agent");
    assert_eq!(created["active"], true);
    assert!(created.get("password_hash").is_none(), "{created}");
    assert!(!created.to_string().contains("argon2"));
    let id = created["id"].as_str().unwrap().to_string();

    let fetched: Value = expect_json(
        app.get(&format!("/v1/users/{id}"), &admin).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(fetched, created);

    let patched: Value = expect_json(
        app.patch(
            &format!("/v1/users/{id}"),
            &admin,
            &json!({ "name": "Ann T." }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["name"], "Ann T.");
    assert_eq!(patched["role"], "agent");

    // Two users, one per page.
    let page: Value = expect_json(app.get("/v1/users?limit=1", &admin).await, StatusCode::OK).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let next: Value = expect_json(
        app.get(&format!("/v1/users?limit=1&cursor={cursor}"), &admin)
            .await,
        StatusCode::OK,
    )
    .await;
    let mut emails: Vec<&str> = [&page, &next]
        .iter()
        .map(|p| p["items"][0]["email"].as_str().unwrap())
        .collect();
    emails.sort_unstable();
    assert_eq!(emails, ["admin@example.com", "ann@example.com"]);
    assert!(next.get("next_cursor").is_none(), "{next}");

    expect_problem(
        app.get(&format!("/v1/users/{}", uuid::Uuid::now_v7()), &admin)
            .await,
        StatusCode::NOT_FOUND,
        "user_not_found",
    )
    .await;

    let agent = app
        .login("ann@example.com", USER_PASSWORD)
        .await
        .access_token;
    let me: Value = expect_json(app.get("/v1/me", &agent).await, StatusCode::OK).await;
    assert_eq!(
        (me["id"].as_str(), &me["role"]),
        (Some(id.as_str()), &json!("agent"))
    );
    expect_problem(
        app.get("/v1/users", &agent).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.post(
            "/v1/users",
            &agent,
            &json!({ "email": "eve@example.com", "password": USER_PASSWORD, "role": "admin" }),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.patch(
            &format!("/v1/users/{id}"),
            &agent,
            &json!({ "role": "admin" }),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.get("/v1/api-keys", &agent).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // Promoted: the same token now carries the new role.
    app.patch(
        &format!("/v1/users/{id}"),
        &admin,
        &json!({ "role": "admin" }),
    )
    .await;
    expect_json::<Value>(app.get("/v1/users", &agent).await, StatusCode::OK).await;
}

#[tokio::test]
async fn a_taken_email_is_a_409_email_taken() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let problem = expect_problem(
        app.post(
            "/v1/users",
            &admin,
            &json!({ "email": "ADMIN@example.com", "name": "Again", "password": USER_PASSWORD, "role": "agent" }),
        )
        .await,
        StatusCode::CONFLICT,
        "email_taken",
    )
    .await;
    assert_eq!(problem["type"], "urn:crm:problem:email_taken");
}

#[tokio::test]
async fn invalid_users_are_422_with_the_fields() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let problem = expect_problem(
        app.post(
            "/v1/users",
            &admin,
            &json!({ "email": "bob@example.com", "name": "Bob", "password": "too short", "role": "agent" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "password");
    assert_eq!(
        problem["errors"][0]["message"],
        "must be at least 12 characters long"
    );
    assert_eq!(problem["errors"].as_array().unwrap().len(), 1);

    let problem = expect_problem(
        app.post(
            "/v1/users",
            &admin,
            &json!({ "email": "bob", "name": "Bob", "password": "x", "role": "agent" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password"]);

    // Users are admins or agents, nothing else.
    expect_problem(
        app.post(
            "/v1/users",
            &admin,
            &json!({ "email": "bob@example.com", "name": "Bob", "password": USER_PASSWORD, "role": "service" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn a_deactivated_user_is_locked_out_at_once() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = app.create_user("carl@example.com", "agent").await;
    let session = app.login("carl@example.com", USER_PASSWORD).await;
    expect_json::<Value>(
        app.get("/v1/me", &session.access_token).await,
        StatusCode::OK,
    )
    .await;

    let id = user["id"].as_str().unwrap();
    let patched: Value = expect_json(
        app.patch(
            &format!("/v1/users/{id}"),
            &admin,
            &json!({ "active": false }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["active"], false);

    expect_problem(
        app.get("/v1/me", &session.access_token).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let refused = expect_problem(
        app.try_login("carl@example.com", USER_PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(refused["detail"], "invalid email or password");
    expect_problem(
        app.post_anonymous(
            "/v1/auth/refresh",
            &json!({ "refresh_token": session.refresh_token }),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    // Reactivated: may log in again.
    app.patch(
        &format!("/v1/users/{id}"),
        &admin,
        &json!({ "active": true }),
    )
    .await;
    app.login("carl@example.com", USER_PASSWORD).await;

    // An admin cannot lock themselves out.
    let me: Value = expect_json(app.get("/v1/me", &admin).await, StatusCode::OK).await;
    let own = me["id"].as_str().unwrap();
    let problem = expect_problem(
        app.patch(
            &format!("/v1/users/{own}"),
            &admin,
            &json!({ "active": false }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "active");
}

#[tokio::test]
async fn api_keys_are_shown_once_work_for_ingest_only_and_can_be_revoked() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;

    let created: Value = expect_json(
        app.post(
            "/v1/api-keys",
            &admin,
            &json!({ "name": "website", "role": "service" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("crm_key_"), "{key}");
    assert_eq!(key.len(), "crm_key_".len() + 43);
    assert_eq!(created["role"], "service");
    assert_eq!(created["name"], "website");
    let prefix = created["prefix"].as_str().unwrap();
    assert!(
        key.starts_with(prefix) && prefix.len() < key.len() / 2,
        "{prefix}"
    );

    let list = app.get("/v1/api-keys", &admin).await;
    let text = list.text().await.unwrap();
    assert!(!text.contains(&key), "the list shows the secret: {text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let item = &list["items"][0];
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(item["id"], id.as_str());
    assert_eq!(item["prefix"], prefix);
    assert!(
        item.get("key").is_none() && item.get("key_hash").is_none(),
        "{item}"
    );
    assert!(item.get("revoked_at").is_none(), "{item}");

    let me: Value = expect_json(app.get("/v1/me", &key).await, StatusCode::OK).await;
    assert_eq!(
        me,
        json!({ "id": id, "name": "website", "role": "service" })
    );
    let via_header = app
        .client
        .get(app.url("/v1/me"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(via_header.status(), StatusCode::OK);

    // A service key may ingest, nothing staff-only.
    expect_problem(
        app.get("/v1/users", &key).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.get("/v1/customers", &key).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.post("/v1/api-keys", &key, &json!({ "name": "escalate" }))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let revoked = app.delete(&format!("/v1/api-keys/{id}"), &admin).await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    expect_problem(
        app.get("/v1/me", &key).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    expect_problem(
        app.delete(&format!("/v1/api-keys/{id}"), &admin).await,
        StatusCode::NOT_FOUND,
        "api_key_not_found",
    )
    .await;
    let list: Value = expect_json(app.get("/v1/api-keys", &admin).await, StatusCode::OK).await;
    assert!(list["items"][0]["revoked_at"].is_string(), "{list}");

    // Keys are for services only.
    let problem = expect_problem(
        app.post(
            "/v1/api-keys",
            &admin,
            &json!({ "name": "root", "role": "admin" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "role");
}

#[tokio::test]
async fn the_sixth_login_for_one_account_in_a_minute_is_429_with_retry_after() {
    let app = spawn_app().await;
    for _ in 0..5 {
        expect_problem(
            app.try_login(ADMIN_EMAIL, "a wrong password").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    let limited = app.try_login(ADMIN_EMAIL, "a wrong password").await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    expect_problem(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Limited before the password is checked: the right one waits too.
    expect_problem(
        app.try_login(ADMIN_EMAIL, ADMIN_PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    // Other accounts are not.
    expect_problem(
        app.try_login("someone@example.com", "a wrong password")
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn bodies_with_unknown_fields_are_422_and_malformed_json_is_400() {
    let app = spawn_app().await;
    let problem = expect_problem(
        app.post_anonymous(
            "/v1/auth/login",
            &json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "remember_me": true }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "remember_me", "{problem}");
    let admin = app.admin_token().await;
    expect_problem(
        app.post("/v1/users", &admin, &json!({ "email": "x@example.com", "password": USER_PASSWORD, "role": "agent", "is_admin": true }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    let malformed = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("content-type", "application/json")
        .body(r#"{"email": "admin@example.com", "password": "#)
        .send()
        .await
        .unwrap();
    expect_problem(malformed, StatusCode::BAD_REQUEST, "malformed_json").await;
}

#[test]
fn the_contract_documents_the_auth_routes_and_their_problem_codes() {
    let doc = crm_api::openapi::document();
    for path in [
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/auth/logout",
        "/v1/me",
        "/v1/users",
        "/v1/users/{id}",
        "/v1/api-keys",
        "/v1/api-keys/{id}",
    ] {
        assert!(
            doc.paths.paths.contains_key(path),
            "{path} is not documented"
        );
    }
    let yaml = crm_api::openapi::yaml().unwrap();
    for code in [
        "email_taken",
        "user_not_found",
        "api_key_not_found",
        "rate_limited",
    ] {
        assert!(yaml.contains(code), "problem code {code} is not documented");
    }
}
