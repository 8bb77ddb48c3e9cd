//! Sales analytics over HTTP: leaderboards, series and the overview from
//! the rollups the in-process consumer keeps, who may read what, and the
//! problems a bad query gets. (The counting itself, on both stores, is in
//! the store conformance suite.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{expect_json, expect_problem, spawn_app, TestApp, USER_PASSWORD};
use crm_models::event::EventFilter;
use reqwest::StatusCode;
use serde_json::{json, Value};

const DAY: &str = "2026-11-21";

/// Waits until the analytics consumer has counted every event the log
/// holds now (its cursor reaches the log's last event).
async fn counted(app: &TestApp) {
    let store = app.state.crm.store().clone();
    let mut head = None;
    loop {
        let page = store
            .read_feed(head, &EventFilter::default(), 1000)
            .await
            .unwrap()
            .expect("the log holds its own events");
        if page.last == head {
            break;
        }
        head = page.last;
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        while store.analytics_cursor().await.unwrap() != head {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the analytics consumer counts the log within 20 s");
}

/// Creates a user with a team and logs it in: `(token, "user:<id>")`.
async fn staff(app: &TestApp, email: &str, name: &str, team: Option<&str>) -> (String, String) {
    let admin = app.admin_token().await;
    let mut body =
        json!({"email": email, "name": name, "password": USER_PASSWORD, "role": "agent"});
    if let Some(team) = team {
        body["team"] = json!(team);
    }
    let user: Value = expect_json(
        app.post("/v1/users", &admin, &body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(user["team"], json!(team));
    let token = app.login(email, USER_PASSWORD).await.access_token;
    (token, format!("user:{}", user["id"].as_str().unwrap()))
}

async fn record(app: &TestApp, token: &str, item: Value) {
    let _: Value = expect_json(
        app.post("/v1/engagements", token, &item).await,
        StatusCode::CREATED,
    )
    .await;
}

fn sms(phone: &str, direction: &str, at: &str) -> Value {
    json!({"customer": {"phone": phone}, "channel": "sms", "direction": direction,
           "occurred_at": at, "body": "never counted as text"})
}

fn call(phone: &str, direction: &str, status: &str, secs: u32, at: &str) -> Value {
    json!({"customer": {"phone": phone}, "channel": "call", "direction": direction,
           "occurred_at": at, "duration_s": secs, "status": status})
}

/// Ann (North) sends three SMS to two customers and answers a call; Bob
/// (South) makes one call; the website's key records an SMS. All on [`DAY`].
async fn scripted_day(app: &TestApp) -> (String, String, String, String) {
    let (ann, ann_id) = staff(app, "ann@example.com", "Ann", Some("North")).await;
    let (bob, bob_id) = staff(app, "bob@example.com", "Bob", Some("South")).await;
    let at = |hms: &str| format!("{DAY}T{hms}Z");
    record(app, &ann, sms("+65 8122 6401", "outbound", &at("09:00:00"))).await;
    record(app, &ann, sms("+65 8122 6401", "outbound", &at("09:10:00"))).await;
    record(app, &ann, sms("+65 8122 6402", "outbound", &at("10:00:00"))).await;
    record(
        app,
        &ann,
        call("+65 8122 6402", "inbound", "answered", 90, &at("11:00:00")),
    )
    .await;
    record(
        app,
        &bob,
        call(
            "+65 8122 6403",
            "outbound",
            "answered",
            300,
            &at("12:00:00"),
        ),
    )
    .await;
    let key = app.service_key("website").await;
    record(app, &key, sms("+65 8122 6404", "outbound", &at("13:00:00"))).await;
    // The day before, for the change.
    record(
        app,
        &bob,
        call(
            "+65 8122 6403",
            "outbound",
            "missed",
            0,
            "2026-11-20T12:00:00Z",
        ),
    )
    .await;
    record(
        app,
        &bob,
        call(
            "+65 8122 6403",
            "outbound",
            "answered",
            60,
            "2026-11-20T12:30:00Z",
        ),
    )
    .await;
    counted(app).await;
    (ann, ann_id, bob, bob_id)
}

fn board(v: &Value) -> Vec<(String, u64, u64, i64)> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["agent"]["name"].as_str().unwrap_or("").to_string(),
                i["rank"].as_u64().unwrap(),
                i["value"].as_u64().unwrap(),
                i["change"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn leaderboards_rank_agents_per_team_with_the_change_since_the_day_before() {
    let app = spawn_app().await;
    let (ann, ann_id, _bob, bob_id) = scripted_day(&app).await;
    let period = format!("{DAY}..{DAY}");

    let all: Value = expect_json(
        app.get(
            &format!("/v1/analytics/leaderboard?metric=engagements&period={period}"),
            &ann,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(all["metric"], "engagements");
    assert_eq!(all["period"], json!({"from": DAY, "to": DAY}));
    assert_eq!(
        all["previous_period"],
        json!({"from": "2026-11-20", "to": "2026-11-20"})
    );
    assert_eq!(
        board(&all),
        vec![
            ("Ann".into(), 1, 4, 4),
            // Bob and the key tie on one; Bob made two calls the day before.
            ("Bob".into(), 2, 1, -1),
            ("website".into(), 2, 1, 1),
        ]
    );
    assert_eq!(
        all["items"][0]["agent"],
        json!({"id": ann_id, "name": "Ann", "team": "North"})
    );

    let talk: Value = expect_json(
        app.get(
            &format!("/v1/analytics/leaderboard?metric=talk_seconds&period={period}&team=South"),
            &ann,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(talk["team"], "South");
    assert_eq!(board(&talk), vec![("Bob".into(), 1, 300, 240)]);
    assert_eq!(talk["items"][0]["agent"]["id"], bob_id);

    // Bob leaves his team: the team's board is the team's members now.
    let admin = app.admin_token().await;
    let bob_path = format!("/v1/users/{}", bob_id.trim_start_matches("user:"));
    let left: Value = expect_json(
        app.patch(&bob_path, &admin, &json!({"team": ""})).await,
        StatusCode::OK,
    )
    .await;
    assert!(left.get("team").is_none(), "{left}");
    let empty: Value = expect_json(
        app.get(
            &format!("/v1/analytics/leaderboard?metric=talk_seconds&period={period}&team=South"),
            &ann,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(empty["items"], json!([]));

    let customers: Value = expect_json(
        app.get(
            &format!("/v1/analytics/leaderboard?metric=customers_engaged&period={period}&limit=1"),
            &ann,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(board(&customers), vec![("Ann".into(), 1, 2, 2)]);
}

#[tokio::test]
async fn agents_read_their_own_series_and_admins_everyones() {
    let app = spawn_app().await;
    let (ann, ann_id, _bob, bob_id) = scripted_day(&app).await;
    let admin = app.admin_token().await;
    let range = "from=2026-11-20&to=2026-11-21";

    let own: Value = expect_json(
        app.get(
            &format!("/v1/analytics/series?metric=sms_outbound&{range}"),
            &ann,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        own["items"],
        json!([{"key": "2026-11-20", "value": 0}, {"key": DAY, "value": 3}])
    );
    expect_problem(
        app.get(
            &format!("/v1/analytics/series?agent={bob_id}&{range}"),
            &ann,
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.get(&format!("/v1/analytics/series?team=South&{range}"), &ann)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let by_agent: Value = expect_json(
        app.get(
            &format!("/v1/analytics/series?metric=calls_answered&group_by=agent&{range}"),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        by_agent["items"],
        json!([
            {"key": bob_id, "name": "Bob", "value": 2},
            {"key": ann_id, "name": "Ann", "value": 1},
        ])
    );
    let by_team: Value = expect_json(
        app.get(
            &format!("/v1/analytics/series?metric=engagements&group_by=team&{range}"),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        by_team["items"],
        json!([
            {"key": "North", "value": 4},
            {"key": "South", "value": 3},
            {"key": null, "value": 1},
        ])
    );
    let by_channel: Value = expect_json(
        app.get(
            &format!("/v1/analytics/series?group_by=channel&team=North&{range}"),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        by_channel["items"],
        json!([{"key": "sms", "value": 3}, {"key": "call", "value": 1}])
    );
    // Page views and new customers belong to nobody: admins only.
    let created: Value = expect_json(
        app.get(
            "/v1/analytics/series?metric=new_customers&group_by=channel",
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(created["items"], json!([{"key": null, "value": 4}]));
    expect_problem(
        app.get("/v1/analytics/series?metric=new_customers", &ann)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn the_overview_puts_today_beside_yesterday_until_the_same_hour() {
    use chrono::Timelike;
    let app = spawn_app().await;
    let (ann, _) = staff(&app, "ann@example.com", "Ann", None).await;
    let now = crm_models::time::now();
    let yesterday = now - chrono::Duration::days(1);
    let at = |t: chrono::DateTime<chrono::Utc>| crm_models::time::format(&t);
    record(&app, &ann, sms("+65 8122 6401", "outbound", &at(now))).await;
    record(&app, &ann, sms("+65 8122 6401", "inbound", &at(now))).await;
    record(&app, &ann, sms("+65 8122 6401", "outbound", &at(yesterday))).await;
    record(
        &app,
        &ann,
        call("+65 8122 6401", "inbound", "missed", 0, &at(yesterday)),
    )
    .await;
    // Two hours later yesterday: past the hour it is now, so not counted
    // (two, so that the hour turning during the test changes nothing).
    if now.hour() < 22 {
        let later = yesterday + chrono::Duration::hours(2);
        record(&app, &ann, sms("+65 8122 6401", "outbound", &at(later))).await;
    }
    counted(&app).await;
    let overview: Value = expect_json(
        app.get("/v1/analytics/overview", &ann).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(overview["today"], json!(now.format("%Y-%m-%d").to_string()));
    let sms_row = overview["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "sms")
        .unwrap()
        .clone();
    assert_eq!(
        sms_row["today"],
        json!({"sms_inbound": 1, "sms_outbound": 1})
    );
    assert_eq!(sms_row["yesterday_same_hour"], json!({"sms_outbound": 1}));
    assert_eq!(
        overview["total"]["yesterday_same_hour"],
        json!({"calls_inbound": 1, "calls_missed": 1, "sms_outbound": 1})
    );
    // The one customer was created today.
    assert_eq!(
        overview["total"]["today"],
        json!({"sms_inbound": 1, "sms_outbound": 1, "new_customers": 1})
    );
}

#[tokio::test]
async fn keys_read_no_figures_and_bad_queries_are_named() {
    let app = spawn_app().await;
    let key = app.service_key("website").await;
    for path in [
        "/v1/analytics/leaderboard",
        "/v1/analytics/series",
        "/v1/analytics/overview",
    ] {
        expect_problem(
            app.get(path, &key).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    let admin = app.admin_token().await;
    for (query, field) in [
        ("/v1/analytics/leaderboard?metric=revenue", "metric"),
        ("/v1/analytics/leaderboard?metric=web_views", "metric"),
        ("/v1/analytics/leaderboard?period=fortnight", "period"),
        (
            "/v1/analytics/leaderboard?period=2026-11-10..2026-11-01",
            "period",
        ),
        (
            "/v1/analytics/leaderboard?period=2025-01-01..2026-12-31",
            "period",
        ),
        ("/v1/analytics/leaderboard?limit=0", "limit"),
        ("/v1/analytics/series?group_by=week", "group_by"),
        (
            "/v1/analytics/series?metric=web_views&group_by=agent",
            "group_by",
        ),
        ("/v1/analytics/series?from=2026-13-01", "from"),
        ("/v1/analytics/series?from=2026-11-02&to=2026-11-01", "from"),
        ("/v1/analytics/series?channel=fax", "channel"),
    ] {
        let problem = expect_problem(
            app.get(query, &admin).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], field, "{query}: {problem}");
    }
}

#[tokio::test]
async fn exports_stream_the_daily_rows_as_csv_or_ndjson() {
    let app = spawn_app().await;
    let (ann, ann_id, _bob, bob_id) = scripted_day(&app).await;
    let admin = app.admin_token().await;
    // Three weeks: read from the store a week at a time.
    let response = app
        .get(
            "/v1/analytics/export?from=2026-11-01&to=2026-11-21&format=csv",
            &admin,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"analytics-2026-11-01-2026-11-21.csv\""
    );
    let text = response.text().await.unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[..4], ["day", "agent", "team", "channel"]);
    let rows: Vec<std::collections::HashMap<&str, &str>> = lines
        .map(|l| header.iter().copied().zip(l.split(',')).collect())
        .collect();
    let find = |day: &str, agent: &str, channel: &str| {
        rows.iter()
            .find(|r| r["day"] == day && r["agent"] == agent && r["channel"] == channel)
            .unwrap_or_else(|| panic!("no row {day} {agent} {channel} in {text}"))
    };
    let bob_before = find("2026-11-20", &bob_id, "call");
    assert_eq!(
        (
            bob_before["team"],
            bob_before["calls_outbound"],
            bob_before["calls_answered"],
            bob_before["talk_seconds"],
            bob_before["sms_outbound"],
        ),
        ("South", "2", "1", "60", "0")
    );
    let ann_sms = find(DAY, &ann_id, "sms");
    assert_eq!((ann_sms["team"], ann_sms["sms_outbound"]), ("North", "3"));
    assert_eq!(find(DAY, &ann_id, "")["customers_engaged"], "2");
    // Rows of both days only, in day order: 20th (Bob's call, his customers),
    // then the 21st.
    let days: Vec<&str> = rows.iter().map(|r| r["day"]).collect();
    let mut sorted = days.clone();
    sorted.sort();
    assert_eq!(days, sorted);
    assert!(days.iter().all(|d| *d == "2026-11-20" || *d == DAY));

    let ndjson = app
        .get(
            "/v1/analytics/export?from=2026-11-21&to=2026-11-21&format=ndjson",
            &admin,
        )
        .await;
    assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
    let objects: Vec<Value> = ndjson
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ann_call = objects
        .iter()
        .find(|o| o["agent"] == json!(ann_id) && o["channel"] == "call")
        .unwrap();
    assert_eq!(ann_call["calls_inbound"], 1);
    assert_eq!(ann_call["talk_seconds"], 90);
    assert_eq!(ann_call["team"], "North");
    assert_eq!(
        objects.len(),
        rows.iter().filter(|r| r["day"] == DAY).count()
    );

    expect_problem(
        app.get("/v1/analytics/export", &ann).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let problem = expect_problem(
        app.get("/v1/analytics/export?format=xlsx", &admin).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "format");
}

/// The data of the next `leaderboard.updated` on `response` that `done`
/// accepts (the ones before it are skipped); checks it carries no `id:`.
async fn board_update(response: &mut reqwest::Response, done: impl Fn(&Value) -> bool) -> Value {
    let mut buffer = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if !block.lines().any(|l| l == "event: leaderboard.updated") {
                    continue;
                }
                assert!(!block.lines().any(|l| l.starts_with("id:")), "{block}");
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("an update has data");
                let data: Value = serde_json::from_str(data).unwrap();
                if done(&data) {
                    return data;
                }
            }
            let chunk = response.chunk().await.unwrap().expect("the stream goes on");
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .expect("a leaderboard update within 20 s")
}

#[tokio::test]
async fn a_live_board_is_pushed_after_an_engagement_changes_it() {
    let app = spawn_app().await;
    let (ann, ann_id) = staff(&app, "ann@example.com", "Ann", Some("North")).await;
    let (bob, _) = staff(&app, "bob@example.com", "Bob", Some("South")).await;
    let problem = expect_problem(
        app.get("/v1/stream?leaderboard=web_views", &ann).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "leaderboard");
    let mut stream = app
        .get("/v1/stream?leaderboard=sms_outbound&team=North", &bob)
        .await;
    assert_eq!(stream.status(), StatusCode::OK);

    let now = crm_models::time::format(&crm_models::time::now());
    record(&app, &ann, sms("+65 8122 6401", "outbound", &now)).await;
    let update = board_update(&mut stream, |d| d["items"][0]["value"] == 1).await;
    assert_eq!(update["metric"], "sms_outbound");
    assert_eq!(update["team"], "North");
    let today = app
        .state
        .config
        .analytics
        .timezone
        .day_of(&crm_models::time::now())
        .to_string();
    assert_eq!(update["period"], json!({"from": today, "to": today}));
    assert_eq!(
        update["items"],
        json!([{"rank": 1, "agent": {"id": ann_id, "name": "Ann", "team": "North"},
                "value": 1, "previous": 0, "change": 1}])
    );

    // Two more: the board follows (within the second after the last update).
    record(&app, &ann, sms("+65 8122 6402", "outbound", &now)).await;
    record(&app, &ann, sms("+65 8122 6403", "outbound", &now)).await;
    let update = board_update(&mut stream, |d| d["items"][0]["value"] == 3).await;
    assert_eq!(update["items"][0]["agent"]["id"], ann_id);
}

#[tokio::test]
async fn rebuild_and_verify_recount_the_store() {
    let app = spawn_app().await;
    scripted_day(&app).await;
    let store = app.state.crm.store().clone();
    let zone = app.state.config.analytics.timezone;
    assert!(crm_api::analytics::verify(store.clone(), zone)
        .await
        .unwrap());

    // A figure no event gave: verify finds it, a rebuild removes it.
    let cursor = store.analytics_cursor().await.unwrap();
    let day = chrono::NaiveDate::parse_from_str(DAY, "%Y-%m-%d").unwrap();
    let counts = crm_models::analytics::Counts {
        sms_outbound: 5,
        ..Default::default()
    };
    let drift = crm_models::analytics::AnalyticsBatch {
        rows: vec![crm_models::analytics::DailyRow {
            key: crm_models::analytics::RowKey {
                day,
                agent: Some("user:nobody".into()),
                channel: Some(crm_models::Channel::Sms),
            },
            counts,
        }],
        ..Default::default()
    };
    assert!(store
        .apply_analytics(cursor, uuid::Uuid::now_v7(), &drift)
        .await
        .unwrap());
    assert!(!crm_api::analytics::verify(store.clone(), zone)
        .await
        .unwrap());
    crm_api::analytics::rebuild(store.clone(), zone)
        .await
        .unwrap();
    assert!(crm_api::analytics::verify(store.clone(), zone)
        .await
        .unwrap());
    let admin = app.admin_token().await;
    let board: Value = expect_json(
        app.get(
            &format!("/v1/analytics/leaderboard?period={DAY}..{DAY}&metric=sms_outbound"),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(board["items"][0]["value"], 3, "{board}");
    assert!(board["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["agent"]["id"] != "user:nobody"));
}

#[tokio::test]
async fn response_time_boards_rank_the_fastest_first() {
    let app = spawn_app().await;
    let (ann, _) = staff(&app, "ann@example.com", "Ann", None).await;
    let (bob, _) = staff(&app, "bob@example.com", "Bob", None).await;
    // Cid answers nobody: not on a response-time board.
    let _ = staff(&app, "cid@example.com", "Cid", None).await;
    let at = |hms: &str| format!("{DAY}T{hms}Z");
    record(&app, &ann, sms("+65 8122 6410", "inbound", &at("09:00:00"))).await;
    record(
        &app,
        &ann,
        sms("+65 8122 6410", "outbound", &at("09:00:20")),
    )
    .await;
    record(
        &app,
        &bob,
        call("+65 8122 6411", "inbound", "missed", 0, &at("09:00:00")),
    )
    .await;
    record(
        &app,
        &bob,
        sms("+65 8122 6411", "outbound", &at("09:08:00")),
    )
    .await;
    counted(&app).await;
    let fastest: Value = expect_json(
        app.get(
            &format!("/v1/analytics/leaderboard?metric=first_response_median&period={DAY}..{DAY}"),
            &ann,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    // The upper bounds of their buckets: 20 s is within 30 s, 8 min within 10.
    assert_eq!(
        board(&fastest),
        vec![("Ann".into(), 1, 30, 30), ("Bob".into(), 2, 600, 600)]
    );
    let count: Value = expect_json(
        app.get(
            &format!(
                "/v1/analytics/series?metric=first_responses&group_by=channel&from={DAY}&to={DAY}"
            ),
            &app.admin_token().await,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(count["items"], json!([{"key": "sms", "value": 2}]));
}
