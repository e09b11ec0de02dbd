//! Sparkplug B, with an edge node of pysparkplug (a third-party library) publishing through the
//! real Mosquitto to the sensorhub binary: BIRTH with aliases, DATA naming metrics by alias
//! only, a `seq` gap (a rebirth requested and answered), a DEATH and a rebirth; every metric
//! stored once with its own timestamp, and the message after the gap kept as a dead letter that
//! is stored once replayed.

use crate::helpers::*;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::time::Duration;

/// `(value, time)` of each stored reading of `sensor`, in time order.
async fn series(pg: &tokio_postgres::Client, sensor: &str) -> Vec<(f64, DateTime<Utc>)> {
    pg.query(
        "SELECT value, ts FROM readings WHERE sensor_id = $1 ORDER BY ts",
        &[&sensor],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

fn at(ms: &Value) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms.as_i64().unwrap()).unwrap()
}

#[actix_web::test]
async fn an_edge_node_through_birth_aliases_a_gap_a_rebirth_and_death_is_stored_once() {
    let res = Resources::new();
    let group = unique_name("plant");
    let mut env = res.hub_env();
    env.extend([
        ("SENSORHUB_MQTT_URL", "mqtt://127.0.0.1:1883".to_owned()),
        (
            "SENSORHUB_MQTT_TOPICS",
            format!("spBv1.0/{group}/#=sparkplug"),
        ),
    ]);
    let hub = Sensorhub::spawn(&env).await;
    hub.wait_for_metric("sensorhub_mqtt_connected", 1.0, Duration::from_secs(20))
        .await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/clients/sparkplug_node.py");
    let run = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(tools_python())
            .arg(&script)
            .args(["127.0.0.1", "1883", &group, "edge1"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the edge node finishes")
    .expect("python runs (scripts/services.sh --tools installs pysparkplug)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "edge node: {stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let times: Value = serde_json::from_str(stdout.trim()).expect("the node's summary");
    assert!(times["rebirth_commands"].as_u64().unwrap() >= 1, "{times}");
    let (t0, t1, t2, t3) = (
        at(&times["t0"]),
        at(&times["t1"]),
        at(&times["t2"]),
        at(&times["t3"]),
    );

    let pg = pg_client(&res.database_url).await;
    let node = format!("{group}.edge1");
    let temp = format!("{node}.Temp");
    wait_for_count(
        &pg,
        &format!(
            "SELECT count(*) FROM readings WHERE sensor_id = '{temp}' AND ts = '{}'",
            t3.to_rfc3339()
        ),
        1,
        Duration::from_secs(30),
    )
    .await;
    // The BIRTH's value (sent again at the rebirth: once), the DATA by alias, and after the
    // rebirth; the message after the gap is not stored yet.
    assert_eq!(
        series(&pg, &temp).await,
        [(20.5, t0), (21.5, t1), (23.5, t3)]
    );
    // Int8 by alias, its datatype from the BIRTH: two's complement.
    assert_eq!(
        series(&pg, &format!("{node}.Offset")).await,
        [(-3.0, t0), (-4.0, t1)]
    );
    assert_eq!(
        series(&pg, &format!("{node}.pump.Flow")).await,
        [(1.25, t0), (1.5, t1)]
    );
    assert!(
        series(&pg, &format!("{node}.Label")).await.is_empty(),
        "a string is not a reading"
    );
    // Birth, death, rebirth, death.
    wait_for_count(
        &pg,
        &format!("SELECT count(*) FROM readings WHERE sensor_id = '{node}.online'"),
        4,
        Duration::from_secs(30),
    )
    .await;
    let online: Vec<f64> = series(&pg, &format!("{node}.online"))
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(online, [1.0, 0.0, 1.0, 0.0]);

    // The message after the gap: a dead letter with its bytes, stored once replayed.
    let (status, letters) =
        json_request(hub.port, "GET", "/api/v1/dead-letters", &[], &Value::Null).await;
    assert_eq!(status, 200, "{letters}");
    let items = letters["letters"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{letters}");
    assert!(
        items[0]["detail"].as_str().unwrap().contains("seq"),
        "{letters}"
    );
    let (status, replayed) = json_request(
        hub.port,
        "POST",
        "/api/v1/dead-letters/replay",
        &[],
        &json!({"all": true}),
    )
    .await;
    assert_eq!(
        (status, replayed["replayed"].as_u64()),
        (200, Some(1)),
        "{replayed}"
    );
    wait_for_count(
        &pg,
        &format!("SELECT count(*) FROM readings WHERE sensor_id = '{temp}'"),
        4,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        series(&pg, &temp).await,
        [(20.5, t0), (21.5, t1), (22.5, t2), (23.5, t3)]
    );
}

/// An NBIRTH or NDATA of `group`/edge1 with one double, `Temp` (alias 1), named in a BIRTH and by
/// alias alone in DATA.
fn temp_message(group: &str, kind: &str, seq: u64, ms: i64, value: f64) -> (String, Vec<u8>) {
    use sensorhub::domain::reading::sparkplug::{Metric, Payload, Value};
    let birth = kind == "NBIRTH";
    let payload = Payload {
        timestamp: Some(ms as u64),
        metrics: vec![Metric {
            name: birth.then(|| "Temp".to_owned()),
            alias: Some(1),
            timestamp: Some(ms as u64),
            datatype: birth.then_some(10),
            is_null: None,
            value: Some(Value::Double(value)),
        }],
        seq: Some(seq),
    };
    (
        format!("spBv1.0/{group}/{kind}/edge1"),
        prost::Message::encode_to_vec(&payload),
    )
}

/// An instance taking over the MQTT session reads a node's DATA by the names of the BIRTH the
/// one before it recorded, without asking for a rebirth (it knew no names, dead-lettered the DATA
/// and asked the node for a rebirth).
#[actix_web::test]
async fn an_instance_taking_over_the_session_knows_the_nodes_names() {
    let res = Resources::new();
    let group = unique_name("plant");
    let mut env = res.hub_env();
    env.extend([
        ("SENSORHUB_BRIDGE_LEASE", "1s".to_owned()),
        ("SENSORHUB_MQTT_URL", "mqtt://127.0.0.1:1883".to_owned()),
        (
            "SENSORHUB_MQTT_TOPICS",
            format!("spBv1.0/{group}/#=sparkplug"),
        ),
    ]);
    let mut first = Sensorhub::spawn(&env).await;
    first
        .wait_for_metric("sensorhub_mqtt_connected", 1.0, Duration::from_secs(20))
        .await;
    // Rebirth requests, as the node would receive them.
    let mut options = rumqttc::MqttOptions::new(unique_name("node"), "127.0.0.1", 1883);
    options.set_keep_alive(Duration::from_secs(5));
    let (watcher, mut events) = rumqttc::AsyncClient::new(options, 16);
    watcher
        .subscribe(format!("spBv1.0/{group}/NCMD/#"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let commands = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&commands);
    let watching = tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)) = event {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let t0 = Utc::now().timestamp_millis() - 3_600_000;
    let pg = pg_client(&res.database_url).await;
    let temp = format!("{group}.edge1.Temp");
    crate::mqtt::publish(&[temp_message(&group, "NBIRTH", 0, t0, 20.5)]).await;
    wait_for_count(
        &pg,
        &format!("SELECT count(*) FROM readings WHERE sensor_id = '{temp}'"),
        1,
        Duration::from_secs(20),
    )
    .await;
    first.kill9();
    let mut second_env = env.clone();
    second_env.push(("SENSORHUB_CONSUMER", "second".to_owned()));
    let second = Sensorhub::spawn(&second_env).await;
    second
        .wait_for_metric("sensorhub_mqtt_connected", 1.0, Duration::from_secs(20))
        .await;
    crate::mqtt::publish(&[temp_message(&group, "NDATA", 1, t0 + 1000, 21.5)]).await;
    wait_for_count(
        &pg,
        &format!("SELECT count(*) FROM readings WHERE sensor_id = '{temp}'"),
        2,
        Duration::from_secs(20),
    )
    .await;
    let (_, letters) = json_request(
        second.port,
        "GET",
        "/api/v1/dead-letters",
        &[],
        &Value::Null,
    )
    .await;
    assert_eq!(letters["letters"], json!([]), "nothing dead-lettered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        commands.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no rebirth asked for"
    );
    watching.abort();
}
