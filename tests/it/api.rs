//! The read API, HTTP ingest and the OpenAPI document: every route's happy path, bad parameters,
//! unknown sensors, and the bearer token (missing and wrong).

use crate::helpers::*;
use chrono::{DateTime, Duration, Utc};
use sensorhub::config::Secret;
use serde_json::Value;

const TOKEN: &str = "test-token-123";

fn auth() -> [(&'static str, &'static str); 1] {
    [("Authorization", "Bearer test-token-123")]
}

async fn get_json(t: &TestApp, path: &str) -> (u16, Value) {
    let (status, body) = http_request(t.app().port(), "GET", path, &auth(), b"").await;
    (
        status,
        serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{path} did not answer JSON: {body}")),
    )
}

/// The read API and ingest behind the same token, as with only `SENSORHUB_API_TOKEN` set.
fn with_tokens(c: &mut sensorhub::config::Config) {
    c.api_token = Some(Secret::new(TOKEN));
    c.ingest_token = Some(Secret::new(TOKEN));
}

/// A running app with a token, and data: a meter with a late reading, a stale sensor.
async fn app_with_data() -> TestApp {
    let mut t = spawn_app_with(with_tokens, Default::default()).await;
    let now = Utc::now();
    let base = now - Duration::minutes(90);
    let mut payloads: Vec<Vec<u8>> = (0..120)
        .map(|i| {
            format!(
                r#"{{"sensor":"meter-1","value":{},"unit":"kWh","timestamp":"{}"}}"#,
                1000 + i * 2,
                (base + Duration::seconds(i * 30)).to_rfc3339()
            )
            .into_bytes()
        })
        .collect();
    // A late reading older than the newest must not become the current value.
    payloads.push(reading_json("meter-1", 1.0, base + Duration::seconds(15)).into_bytes());
    payloads.push(reading_json("stale", 5.0, now - Duration::days(60)).into_bytes());
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    t
}

#[actix_web::test]
async fn sensors_list_current_value_and_hides_inactive() {
    let t = app_with_data().await;
    let (status, body) = get_json(&t, "/api/v1/sensors").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["meter-1"], "the stale sensor is hidden");
    assert_eq!(body["resolutions"], serde_json::json!(["1m", "1h"]));
    let (_, all) = get_json(&t, "/api/v1/sensors?all=true").await;
    assert_eq!(all["sensors"].as_array().unwrap().len(), 2);

    let (status, meter) = get_json(&t, "/api/v1/sensors/meter-1").await;
    assert_eq!(status, 200);
    assert_eq!(
        meter["last_value"], 1238.0,
        "the newest reading, not the late one"
    );
    assert_eq!(meter["unit"], "kWh");

    let (status, body) = get_json(&t, "/api/v1/sensors/nope").await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "unknown sensor \"nope\"")
    );
    let (status, body) = get_json(&t, "/api/v1/sensors?all=maybe").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("all"));
    let (status, body) = get_json(&t, "/api/v1/sensors?colour=blue").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("colour"));
}

#[actix_web::test]
async fn readings_newest_first_with_range_and_limit() {
    let t = app_with_data().await;
    let (status, body) = get_json(&t, "/api/v1/sensors/meter-1/readings").await;
    assert_eq!(status, 200);
    let readings = body["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 121);
    let times: Vec<DateTime<Utc>> = readings
        .iter()
        .map(|r| r["ts"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] > w[1]), "newest first");

    let (_, limited) = get_json(&t, "/api/v1/sensors/meter-1/readings?limit=5").await;
    assert_eq!(limited["readings"].as_array().unwrap().len(), 5);
    assert_eq!(limited["readings"][0]["value"], 1238.0);

    let from = times[10].to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let to = times[3].to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let path = format!(
        "/api/v1/sensors/meter-1/readings?from={}&to={}",
        from.replace('+', "%2B"),
        to.replace('+', "%2B")
    );
    let (status, ranged) = get_json(&t, &path).await;
    assert_eq!(status, 200, "{ranged}");
    assert_eq!(
        ranged["readings"].as_array().unwrap().len(),
        8,
        "from and to are inclusive"
    );

    for (query, names) in [
        ("from=yesterday", "from"),
        ("to=2024-13-01T00:00:00Z", "to"),
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("from=2025-01-02T00:00:00Z&to=2025-01-01T00:00:00Z", "after"),
    ] {
        let (status, body) =
            get_json(&t, &format!("/api/v1/sensors/meter-1/readings?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            body["error"].as_str().unwrap().contains(names),
            "{query}: {body}"
        );
    }
    let (status, _) = get_json(&t, "/api/v1/sensors/nope/readings").await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn aggregates_with_mean_and_diff() {
    let t = app_with_data().await;
    let (status, body) = get_json(&t, "/api/v1/sensors/meter-1/aggregates?resolution=1h").await;
    assert_eq!(status, 200);
    assert_eq!(body["resolution"], "1h");
    let windows = body["aggregates"].as_array().unwrap();
    let count: i64 = windows.iter().map(|w| w["count"].as_i64().unwrap()).sum();
    assert_eq!(count, 121);
    for w in windows {
        let (sum, n) = (w["sum"].as_f64().unwrap(), w["count"].as_f64().unwrap());
        assert!((w["mean"].as_f64().unwrap() - sum / n).abs() < 1e-9);
        assert_eq!(
            w["diff"].as_f64().unwrap(),
            w["last_value"].as_f64().unwrap() - w["first_value"].as_f64().unwrap()
        );
    }
    let (_, minute) = get_json(&t, "/api/v1/sensors/meter-1/aggregates").await;
    assert_eq!(
        minute["resolution"], "1m",
        "the finest resolution by default"
    );
    let buckets: Vec<&str> = minute["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["bucket"].as_str().unwrap())
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] > w[1]),
        "newest window first"
    );

    let (status, body) = get_json(&t, "/api/v1/sensors/meter-1/aggregates?resolution=5m").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("1m, 1h"), "{body}");
    let (status, _) = get_json(&t, "/api/v1/sensors/meter-1/aggregates?resolution=soon").await;
    assert_eq!(status, 400);
    let (status, _) = get_json(&t, "/api/v1/sensors/nope/aggregates").await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn token_is_required_and_checked_but_health_and_metrics_stay_open() {
    let t = spawn_app_with(with_tokens, Default::default()).await;
    let port = t.app().port();
    for path in [
        "/api/v1/sensors",
        "/api/v1/sensors/x",
        "/api/v1/sensors/x/readings",
        "/api/v1/sensors/x/aggregates",
    ] {
        let (status, body) = http_request(port, "GET", path, &[], b"").await;
        assert_eq!(status, 401, "{path}");
        assert!(body.contains("Bearer"), "{path}: {body}");
        let (status, body) =
            http_request(port, "GET", path, &[("Authorization", "Bearer wrong")], b"").await;
        assert_eq!(status, 401, "{path}");
        assert!(body.contains("wrong bearer token"));
    }
    let (status, _) = http_request(
        port,
        "POST",
        "/api/v1/readings",
        &[],
        br#"{"sensor":"a","value":1}"#,
    )
    .await;
    assert_eq!(status, 401);
    for path in [
        "/healthz",
        "/readyz",
        "/healthcheck",
        "/metrics",
        "/api/v1/openapi.json",
        "/",
    ] {
        let (status, _) = http_get(port, path).await;
        assert_eq!(status, 200, "{path} stays open");
    }
}

#[actix_web::test]
async fn http_ingest_accepts_rejects_and_limits() {
    let mut t = spawn_app_with(
        |c| {
            with_tokens(c);
            c.limits.max_message_bytes = 4096;
        },
        Default::default(),
    )
    .await;
    let port = t.app().port();
    let post = |body: Vec<u8>| async move {
        http_request(port, "POST", "/api/v1/readings", &auth(), &body).await
    };

    let (status, body) = post(br#"[{"sensor":"http-1","value":"12.5","timestamp":"2025-01-01T00:00:00Z"},{"sensor":"http-2","value":3},{"sensor":"","value":1}]"#.to_vec()).await;
    assert_eq!(status, 202, "{body}");
    let accepted: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(accepted["readings"], 2);
    assert_eq!(accepted["rejected"][0]["index"], 2);
    assert_eq!(accepted["rejected"][0]["reason"], "bad_sensor_id");
    let entry = accepted["entry"].as_str().unwrap().to_owned();
    // 202 means Redis has the entry: it is in the stream right away.
    let len: i64 = redis::cmd("XLEN")
        .arg(t.stream())
        .query_async(&mut t.redis)
        .await
        .unwrap();
    assert!(len >= 1);
    t.wait_drained(&entry).await;
    assert_eq!(
        t.count("SELECT count(*) FROM readings WHERE sensor_id LIKE 'http-%'")
            .await,
        2
    );
    assert_eq!(
        t.metrics()
            .messages_received
            .with_label_values(&["http"])
            .get(),
        1
    );
    let dead: i64 = redis::cmd("XLEN")
        .arg(t.dead_stream())
        .query_async(&mut t.redis)
        .await
        .unwrap();
    assert_eq!(
        dead, 1,
        "the invalid element is dead-lettered by the pipeline"
    );

    for (body, names) in [
        (b"not json".to_vec(), "malformed_json"),
        (b"42".to_vec(), "wrong_shape"),
        (br#"{"sensor":"a"}"#.to_vec(), "missing_field"),
        (br#"[{"sensor":"a","value":"x"}]"#.to_vec(), "not_a_number"),
        (b"\xff".to_vec(), "invalid_utf8"),
    ] {
        let (status, answer) = post(body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(names), "{answer}");
    }
    let (status, answer) = post(
        format!(
            r#"{{"sensor":"big","value":1,"pad":"{}"}}"#,
            "x".repeat(5000)
        )
        .into_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("4096"));
    let len_after: i64 = redis::cmd("XLEN")
        .arg(t.stream())
        .query_async(&mut t.redis)
        .await
        .unwrap();
    assert_eq!(len_after, len, "rejected bodies never reach the stream");
}

#[actix_web::test]
async fn openapi_document_lists_every_route() {
    let t = spawn_app().await;
    let (status, body) = http_get(t.app().port(), "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Every route of the API and of ingest the application serves (health, metrics, the status
    // page and the document itself aside), and nothing else.
    let served = [
        "/api/v1/sensors",
        "/api/v1/sensors/{id}",
        "/api/v1/sensors/{id}/readings",
        "/api/v1/sensors/{id}/aggregates",
        "/api/v1/readings",
        "/api/v2/write",
        "/write",
        "/api/v1/dead-letters",
        "/api/v1/dead-letters/summary",
        "/api/v1/dead-letters/replay",
        "/api/v1/delete",
        "/api/v1/pipeline",
    ];
    let documented: std::collections::BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        documented,
        served.into_iter().collect(),
        "the OpenAPI document's paths are the routes served"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["Window"]["properties"]["diff"].is_object());
}

/// Ids built from topics and node names (`/`, spaces, letters beyond ASCII) are stored and the
/// read API finds them under their URL-encoded path.
#[actix_web::test]
async fn ids_with_slashes_spaces_and_accents_are_served_url_encoded() {
    let mut t = spawn_app_with(with_tokens, Default::default()).await;
    let ids = ["température/Küche", "sensor 1", "hv/cmd/setv/3"];
    let now = Utc::now();
    let payloads: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| reading_json(id, 21.5, now).into_bytes())
        .collect();
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 3);
    for (id, encoded) in [
        ("température/Küche", "temp%C3%A9rature%2FK%C3%BCche"),
        ("sensor 1", "sensor%201"),
        ("hv/cmd/setv/3", "hv%2Fcmd%2Fsetv%2F3"),
    ] {
        let (status, body) = get_json(&t, &format!("/api/v1/sensors/{encoded}")).await;
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["id"], id);
        let (status, body) = get_json(&t, &format!("/api/v1/sensors/{encoded}/readings")).await;
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["sensor"], id);
        assert_eq!(body["readings"][0]["value"], 21.5);
    }
    let (_, list) = get_json(&t, "/api/v1/sensors").await;
    let listed: Vec<&str> = list["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    for id in ids {
        assert!(listed.contains(&id), "{id} listed: {listed:?}");
    }
    t.stop().await;
}

/// A database of the test's own, dropped when the test ends however it ends.
struct ExtraDatabase(String);

impl Drop for ExtraDatabase {
    fn drop(&mut self) {
        drop_database(&self.0);
    }
}

/// With `SENSORHUB_DATABASE_READ_URL`, the read API answers from that database (a replica),
/// while the pipeline writes to the primary; `/readyz` checks both.
#[actix_web::test]
async fn the_read_api_reads_from_the_read_url_when_one_is_set() {
    let res = Resources::new();
    let replica = ExtraDatabase(format!("{}_replica", res.name));
    let replica_url = format!("postgres://postgres@127.0.0.1:5432/{}", replica.0);
    let pool = sensorhub::store::connect(&replica_url, 1).await.unwrap();
    sensorhub::store::migrate(&pool).await.unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute("INSERT INTO sensors VALUES ('only-on-replica', NULL, now(), now(), 42)")
        .await
        .unwrap();
    drop(pool);
    let url = replica_url.clone();
    let mut t = spawn_app_on(
        res,
        move |c| c.database_read_url = Some(Secret::new(url.as_str())),
        Default::default(),
    )
    .await;
    let last = t
        .xadd_data(reading_json("on-primary", 1.0, Utc::now()).as_bytes())
        .await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 1, "written to the primary");
    let (status, body) = t.get("/api/v1/sensors?all=true").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("only-on-replica") && !body.contains("on-primary"),
        "{body}"
    );
    let (status, body) = t.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""postgres_read":"ok""#), "{body}");
    t.stop().await;
}

/// Replaying and purging dead letters change what is stored: they need the admin token, never
/// the read token (the status page keeps it in the browser) nor the ingest token (every device
/// holds it); with another token set and no admin token they are refused, and with only an
/// ingest token set a purge without any header no longer passes.
#[actix_web::test]
async fn dead_letter_replay_and_purge_need_the_admin_token() {
    let mut t = spawn_app_with(
        |c| {
            c.api_token = Some(Secret::new("read-token"));
            c.ingest_token = Some(Secret::new("ingest-token"));
        },
        Default::default(),
    )
    .await;
    let port = t.app().port();
    let bad = t.xadd_data(b"not json").await;
    t.wait_drained(&bad).await;
    let letters = |t: &TestApp| {
        let stream = t.dead_stream();
        let mut redis = t.redis.clone();
        async move {
            let n: i64 = redis::cmd("XLEN")
                .arg(stream)
                .query_async(&mut redis)
                .await
                .unwrap();
            n
        }
    };
    wait_for(
        "the dead letter",
        std::time::Duration::from_secs(10),
        || async { (letters(&t).await == 1).then_some(()) },
    )
    .await;
    let purge = |auth: Option<&'static str>| purge_all(port, auth);
    let replay = |auth: &'static str| async move {
        let headers = [
            ("Authorization", auth),
            ("Content-Type", "application/json"),
        ];
        let body = br#"{"all": true}"#;
        http_request(port, "POST", "/api/v1/dead-letters/replay", &headers, body).await
    };
    for auth in [None, Some("Bearer read-token"), Some("Bearer ingest-token")] {
        let (status, body) = purge(auth).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(body.contains("SENSORHUB_ADMIN_TOKEN"), "{body}");
    }
    for auth in ["Bearer read-token", "Bearer ingest-token"] {
        let (status, body) = replay(auth).await;
        assert_eq!(status, 401, "{auth}: {body}");
    }
    // Listing stays with the read token.
    let (status, body) = http_request(
        port,
        "GET",
        "/api/v1/dead-letters",
        &[("Authorization", "Bearer read-token")],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(letters(&t).await, 1, "nothing was purged");
    t.stop().await;

    // With an admin token: only it opens them.
    let mut config = t.config.clone();
    config.admin_token = Some(Secret::new("admin-token"));
    t.config = config;
    t.restart(Default::default()).await;
    let port = t.app().port();
    let purge = |auth: &'static str| purge_all(port, Some(auth));
    let (status, body) = purge("Bearer read-token").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("wrong admin token"), "{body}");
    let (status, body) = purge("Bearer admin-token").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(letters(&t).await, 0);
    assert_eq!(
        t.metrics()
            .unauthorized_requests
            .with_label_values(&["admin"])
            .get(),
        1
    );
}

/// `DELETE /api/v1/dead-letters?all=true`, with `auth` as the `Authorization` header if any.
async fn purge_all(port: u16, auth: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    http_request(
        port,
        "DELETE",
        "/api/v1/dead-letters?all=true",
        &headers,
        b"",
    )
    .await
}
