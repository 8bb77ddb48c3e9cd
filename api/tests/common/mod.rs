//! Shared by the HTTP tests: [`spawn_app`] starts the real application on a
//! free port, with an embedded store in its own temporary directory and a
//! first admin, and returns a [`TestApp`] with a client and helpers.
//!
//! Logins are rate limited (waits after 5 failures for an account from one
//! address, 20 attempts a minute per client address, and every test client
//! is 127.0.0.1): use [`TestApp::admin_token`], which logs in once per app,
//! and keep the tokens you get.
//!
//! Set `TEST_LOG=1` (or a filter such as `TEST_LOG=crm_api=debug`) to see the
//! application's logs.

#![allow(dead_code)] // each test binary uses a different part of this module
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic fails the test

use crm_api::config::{Config, LogFormat};
use crm_api::state::AppState;
use crm_api::Application;
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::OnceCell;

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";
/// A password that passes the rules, for users the tests create.
pub const USER_PASSWORD: &str = "a long enough password";

/// A running application and what a test needs to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// `http://127.0.0.1:<port>` of the metrics listener, when it runs.
    pub metrics_address: Option<String>,
    pub client: reqwest::Client,
    /// The application's state (its store, auth and config), for set-up and checks.
    pub state: AppState,
    /// The embedded store's directory; removed when the `TestApp` drops.
    pub data_dir: TempDir,
    admin_token: OnceCell<String>,
}

/// What `POST /v1/auth/login` and `/v1/auth/refresh` answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    pub expires_in: i64,
}

/// Starts the application on port 0 with a fresh embedded store.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], after `configure` has changed the configuration.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let filter = if filter == "1" || filter.is_empty() {
            "debug".to_string()
        } else {
            filter
        };
        crm_api::telemetry::init_tracing(&filter, LogFormat::Text);
    }
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = Config::for_data_dir(data_dir.path().to_path_buf());
    config.admin_email = Some(ADMIN_EMAIL.into());
    config.admin_password = Some(ADMIN_PASSWORD.into());
    config.jwt_secret = None;
    configure(&mut config);
    let app = Application::build(config)
        .await
        .expect("the application builds");
    let address = format!("http://{}", app.local_addr());
    let metrics_address = app.metrics_addr().map(|a| format!("http://{a}"));
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    // Tests search right away: wait for the index's load from the store.
    state.projector.warmup().wait_ready().await;
    TestApp {
        address,
        metrics_address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client"),
        state,
        data_dir,
        admin_token: OnceCell::new(),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// `GET /readyz`, which must answer 200, as JSON.
    pub async fn readyz(&self) -> Value {
        let response = self
            .client
            .get(self.url("/readyz"))
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .expect("/readyz answers");
        expect_json(response, StatusCode::OK).await
    }

    /// Any request; `token` goes in `Authorization: Bearer`.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().await.expect("the request is sent")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Response {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Response {
        self.request(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// `POST` without credentials.
    pub async fn post_anonymous(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path, None, Some(body)).await
    }

    /// The raw answer to a login attempt.
    pub async fn try_login(&self, email: &str, password: &str) -> Response {
        self.post_anonymous(
            "/v1/auth/login",
            &serde_json::json!({ "email": email, "password": password }),
        )
        .await
    }

    /// Logs in; panics with the problem document unless it succeeds.
    pub async fn login(&self, email: &str, password: &str) -> Tokens {
        let response = self.try_login(email, password).await;
        expect_json(response, StatusCode::OK).await
    }

    /// An access token of the first admin (logged in once per app).
    pub async fn admin_token(&self) -> String {
        self.admin_token
            .get_or_init(|| async { self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.access_token })
            .await
            .clone()
    }

    /// Creates a staff user as the admin and returns it (`{id, email, ...}`).
    pub async fn create_user(&self, email: &str, role: &str) -> Value {
        let admin = self.admin_token().await;
        let body = serde_json::json!({
            "email": email, "name": email, "password": USER_PASSWORD, "role": role,
        });
        expect_json(
            self.post("/v1/users", &admin, &body).await,
            StatusCode::CREATED,
        )
        .await
    }

    /// Creates an agent and logs it in.
    pub async fn agent_token(&self, email: &str) -> String {
        self.create_user(email, "agent").await;
        self.login(email, USER_PASSWORD).await.access_token
    }

    /// Creates a `service` API key as the admin; returns the key itself.
    pub async fn service_key(&self, name: &str) -> String {
        let admin = self.admin_token().await;
        let created: Value = expect_json(
            self.post("/v1/api-keys", &admin, &serde_json::json!({ "name": name }))
                .await,
            StatusCode::CREATED,
        )
        .await;
        created["key"].as_str().expect("a key").to_string()
    }

    /// The HS256 secret the app signs with (kept in the data directory).
    pub fn jwt_secret(&self) -> Vec<u8> {
        std::fs::read_to_string(self.data_dir.path().join("jwt-secret"))
            .expect("the embedded store keeps a JWT secret")
            .trim()
            .as_bytes()
            .to_vec()
    }
}

/// The body as JSON after checking the status; on a mismatch, panics with the body.
pub async fn expect_json<T: serde::de::DeserializeOwned>(
    response: Response,
    status: StatusCode,
) -> T {
    let actual = response.status();
    let text = response.text().await.expect("a body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the body is not the expected JSON ({e}): {text}"))
}

/// Checks that the response is a problem document with this status and
/// `code`; returns the document.
pub async fn expect_problem(response: Response, status: StatusCode, code: &str) -> Value {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let problem: Value = expect_json(response, status).await;
    assert_eq!(content_type, "application/problem+json", "{problem}");
    assert_eq!(problem["code"], code, "{problem}");
    assert_eq!(problem["status"], status.as_u16(), "{problem}");
    problem
}

/// The Python of the test virtualenv, with Playwright (`CRM_TEST_VENV`;
/// `./scripts/test.sh` makes it).
pub fn playwright_python() -> std::path::PathBuf {
    let venv = std::env::var("CRM_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let python = venv.join("bin").join("python");
    assert!(
        python.exists(),
        "no Python virtualenv with Playwright at {}: run the tests with ./scripts/test.sh, which installs it",
        venv.display()
    );
    python
}

/// Debian's chromium (`CRM_TEST_CHROMIUM` to use another).
pub fn chromium() -> std::path::PathBuf {
    let path = std::env::var("CRM_TEST_CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "no chromium at {}: run the tests with ./scripts/test.sh, which installs it",
        path.display()
    );
    path
}

/// The fields a validation problem names (its `errors[].field`).
pub fn problem_fields(problem: &Value) -> std::collections::BTreeSet<&str> {
    problem["errors"]
        .as_array()
        .expect("a validation problem lists its errors")
        .iter()
        .map(|e| e["field"].as_str().expect("each error names its field"))
        .collect()
}
