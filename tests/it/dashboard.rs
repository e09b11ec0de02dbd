//! What operators look at: the status page rendered by a real browser (headless Chromium), and the
//! real Prometheus scraping sensorhub with the scrape configuration shipped in docker/.

use crate::helpers::*;
use crate::infra::free_port;
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
    let (_, body) = http_get(port, "/api/v1/query?query=sensorhub_build_info").await;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["data"]["result"][0]["value"][1], "1", "{body}");
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
        }
    }
}
