//! What operators look at: the status page rendered by a real browser (headless Chromium), and the
//! real Prometheus scraping sensorhub with the scrape configuration shipped in docker/.

use crate::helpers::free_port;
use crate::helpers::*;
use chrono::{Duration, Utc};
use std::path::PathBuf;
use std::process::Stdio;

/// Chromium as the workplace runs it: headless, no sandbox (root), no background networking.
fn chromium(profile: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,800",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stdin(Stdio::null())
    .kill_on_drop(true);
    cmd
}

#[actix_web::test]
async fn status_page_renders_the_table_and_the_chart_in_chromium() {
    let mut t = spawn_app().await;
    let start = Utc::now() - Duration::minutes(59);
    let payloads: Vec<Vec<u8>> = (0..180)
        .map(|i| {
            reading_json(
                &format!("page-{}", i % 3),
                20.0 + f64::from(i % 17),
                start + Duration::seconds(i64::from(i) * 19),
            )
            .into_bytes()
        })
        .collect();
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;

    let url = format!(
        "http://127.0.0.1:{}/?sensor=page-1&resolution=1m",
        t.app().port()
    );
    let profile = TempDir(std::env::temp_dir().join(unique_name("sensorhub-chromium")));
    let profile = profile.0.as_path();
    let out = chromium(profile)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .await
        .expect("chromium is installed (scripts/services.sh --tools)");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(r#"data-state="ready""#),
        "the page finished loading:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for sensor in ["page-0", "page-1", "page-2"] {
        assert!(
            dom.contains(&format!(r#"data-sensor="{sensor}""#)),
            "{sensor} is a row of the table"
        );
    }
    assert!(
        dom.contains(r#"<tr data-sensor="page-1" class="selected""#),
        "the chosen sensor is selected"
    );
    let points: usize = dom
        .split(r#"data-points=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("the chart carries its point count");
    assert!(
        points >= 55,
        "the chart drew the sensor's minute windows ({points})"
    );
    assert!(
        dom.contains(r#"id="mean-line""#) && dom.contains("<polygon"),
        "the mean line and min-max band are drawn"
    );

    let shot: PathBuf = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let out = chromium(profile)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot of the page was taken");
    eprintln!("status page screenshot: {}", shot.display());
}

/// The value of `data-value` on the element of `id` in a DOM dump.
fn figure(dom: &str, id: &str) -> f64 {
    let element = dom
        .split(&format!(r#"id="{id}""#))
        .nth(1)
        .unwrap_or_else(|| panic!("#{id} in the page"));
    let tag = &element[..element.find('>').unwrap()];
    tag.split(r#"data-value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("#{id} carries its value: {tag}"))
}

/// A data attribute of the element of `id`.
fn attribute<'a>(dom: &'a str, id: &str, name: &str) -> &'a str {
    let element = dom.split(&format!(r#"id="{id}""#)).nth(1).unwrap();
    let tag = &element[..element.find('>').unwrap()];
    tag.split(&format!(r#"{name}=""#))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("#{id} has {name}: {tag}"))
}

#[actix_web::test]
async fn the_pipeline_panel_agrees_with_metrics_and_the_table_pages_10000_sensors() {
    let mut t = spawn_app().await;
    let now = Utc::now();
    let payloads: Vec<Vec<u8>> = (0..10_000)
        .map(|i| reading_json(&format!("s-{i:05}"), f64::from(i), now).into_bytes())
        .collect();
    t.xadd_many(&payloads).await;
    // A payload of HTML and script, which the dead-letter list must show as text.
    let hostile = r#"{"sensor":"x","value":"<script>document.title='pwned'</script><img src=x onerror=\"document.body.dataset.pwned=1\">"}"#;
    let last = t.xadd_data(hostile.as_bytes()).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 10_000);

    let profile = TempDir(std::env::temp_dir().join(unique_name("sensorhub-chromium")));
    let dump = |query: &str| {
        let url = format!("http://127.0.0.1:{}/{query}", t.app().port());
        let profile = profile.0.clone();
        async move {
            let out = chromium(&profile)
                .arg("--dump-dom")
                .arg(&url)
                .output()
                .await
                .expect("chromium is installed (scripts/services.sh --tools)");
            let dom = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                dom.contains(r#"data-state="ready""#),
                "{url} loaded:\n{dom}"
            );
            dom
        }
    };

    // The last of 200 pages: 50 rows, the last sensors.
    let dom = dump("?page=200&resolution=1m").await;
    assert_eq!(dom.matches("data-sensor=").count(), 50, "one page of rows");
    assert_eq!(attribute(&dom, "page-label", "data-page"), "200");
    assert_eq!(attribute(&dom, "page-label", "data-matching"), "10000");
    assert!(dom.contains(r#"data-sensor="s-09999""#) && dom.contains(r#"data-sensor="s-09950""#));
    assert!(
        dom.contains(r#"href="?sensor=s-09999""#),
        "each id links to its sensor"
    );

    // The panel, against /metrics read right after.
    let (_, metrics) = t.get("/metrics").await;
    let metric = |name: &str| crate::helpers::metric_value(&metrics, name).unwrap_or(f64::NAN);
    assert_eq!(
        figure(&dom, "p-written"),
        metric("sensorhub_readings_written_total")
    );
    assert_eq!(
        figure(&dom, "p-uncommitted"),
        metric("sensorhub_ledger_uncommitted_entries")
    );
    assert_eq!(
        figure(&dom, "p-lag"),
        metric("sensorhub_consumer_group_lag")
    );
    assert_eq!(
        figure(&dom, "p-inflight"),
        metric("sensorhub_batches_in_flight")
    );
    let restarts: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sensorhub_actor_restarts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(figure(&dom, "p-restarts"), restarts);
    assert!(
        figure(&dom, "p-rate") > 0.0,
        "readings were stored in the last minute"
    );
    for check in ["redis", "postgres", "pipeline"] {
        assert!(
            dom.contains(&format!(r#"data-check="{check}" data-state="ok""#)),
            "{check} shown ready"
        );
    }

    // The hostile dead letter, as text.
    assert_eq!(figure(&dom, "dead-total"), 1.0);
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;img src=x"),
        "shown as text"
    );
    assert!(
        !dom.contains("<img src=\"x\"") && !dom.contains("<img src=x"),
        "never as HTML"
    );
    assert!(
        !dom.contains("data-pwned") && !dom.contains("<title>pwned"),
        "nothing ran"
    );

    // Search narrows the table before it is paged.
    let dom = dump("?search=s-0123").await;
    assert_eq!(attribute(&dom, "page-label", "data-matching"), "10");
    assert_eq!(dom.matches("data-sensor=").count(), 10);

    let shot: PathBuf = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-pipeline.png");
    let out = chromium(&profile.0)
        .arg("--window-size=1400,1000")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("http://127.0.0.1:{}/?page=3", t.app().port()))
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    eprintln!("status page screenshot: {}", shot.display());
    t.stop().await;
}

/// A directory removed when the test ends, however it ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the child process when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[actix_web::test]
async fn prometheus_scrapes_sensorhub_with_the_shipped_config() {
    let t = spawn_app().await;
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/prometheus/prometheus.yml"
    ))
    .unwrap();
    let config = shipped.replace("sensorhub:8080", &format!("127.0.0.1:{}", t.app().port()));
    assert_ne!(config, shipped, "the shipped config targets sensorhub:8080");
    let dir = TempDir(std::env::temp_dir().join(unique_name("sensorhub-prometheus")));
    let dir = dir.0.as_path();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = std::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (scripts/services.sh --tools)");
    let _prometheus = KillOnDrop(child);

    let health = wait_for(
        "prometheus to scrape sensorhub",
        std::time::Duration::from_secs(60),
        || async move {
            let connected = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok();
            if !connected {
                return None;
            }
            let (status, body) = http_get(port, "/api/v1/targets").await;
            let targets: serde_json::Value = serde_json::from_str(&body).ok()?;
            let target = &targets["data"]["activeTargets"][0];
            (status == 200 && target["health"] == "up").then(|| target.clone())
        },
    )
    .await;
    assert_eq!(health["labels"]["job"], "sensorhub");
    // The target turns "up" as the scrape ends, a moment before its samples
    // can be queried: wait for the series rather than read it once.
    let sample = wait_for(
        "prometheus to answer sensorhub_build_info",
        std::time::Duration::from_secs(30),
        || async move {
            let (_, body) = http_get(port, "/api/v1/query?query=sensorhub_build_info").await;
            let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
            let value = answer["data"]["result"][0]["value"][1].clone();
            (!value.is_null()).then_some(value)
        },
    )
    .await;
    assert_eq!(sample, "1");
}

/// The provisioned Grafana dashboard parses and uses only the provisioned datasources.
#[test]
fn grafana_dashboard_uses_the_provisioned_datasources() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/docker/grafana/dashboards/sensorhub.json"))
            .unwrap(),
    )
    .expect("the dashboard is JSON");
    let datasources = std::fs::read_to_string(format!(
        "{root}/docker/grafana/provisioning/datasources/datasources.yaml"
    ))
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    let exported = sensorhub::telemetry::Metrics::new().render();
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    assert!(titles.contains(&"Dead letters / s by reason"), "{titles:?}");
    assert!(titles.iter().any(|t| t.starts_with("Ledger")), "{titles:?}");
    for panel in panels {
        let uid = panel["datasource"]["uid"].as_str().unwrap();
        assert!(
            datasources.contains(&format!("uid: {uid}")),
            "panel {} uses unprovisioned datasource {uid}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            let query = target["rawSql"]
                .as_str()
                .or(target["expr"].as_str())
                .unwrap();
            assert!(
                query.contains("aggregate_windows") || query.contains("sensorhub_"),
                "{query}"
            );
            // Every metric a panel asks for is one sensorhub exports (SQL panels name tables and
            // functions instead).
            for name in target["expr"]
                .as_str()
                .unwrap_or_default()
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("sensorhub_"))
            {
                let family = name.trim_end_matches("_bucket");
                assert!(
                    exported.contains(&format!("# TYPE {family} ")),
                    "panel {} asks for {name}, which sensorhub does not export",
                    panel["title"]
                );
            }
        }
    }
}
