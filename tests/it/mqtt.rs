//! MQTT in, against the Mosquitto on 127.0.0.1:1883 (`scripts/services.sh`): every payload form,
//! several instances, and messages that wait with the broker while Redis is down. Each test has
//! its own topics and client ids.

use crate::helpers::PrivateRedis;
use crate::helpers::*;
use chrono::Utc;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sensorhub::config::{MqttSettings, TopicRule};
use std::time::Duration;

const BROKER_PORT: u16 = 1883;

/// The MQTT settings of a test: its own client id, the given rules.
pub fn mqtt_settings(rules: &[(String, &str)]) -> MqttSettings {
    MqttSettings {
        host: "127.0.0.1".into(),
        port: BROKER_PORT,
        credentials: None,
        tls: None,
        // The deployment's own, made from the test's stream (its name is unique).
        client_id: None,
        qos: 1,
        rules: rules
            .iter()
            .map(|(filter, form)| TopicRule::read(filter, form.parse().unwrap()))
            .collect(),
        shared: false,
        connections: 1,
        ready_grace: Duration::from_secs(30),
    }
}

/// Publishes `messages` (topic, payload) at QoS 1 and returns once the broker acknowledged all.
pub async fn publish(messages: &[(String, Vec<u8>)]) {
    publish_to(BROKER_PORT, messages).await;
}

/// As [`publish`], to the broker on `port`.
pub async fn publish_to(port: u16, messages: &[(String, Vec<u8>)]) {
    publish_at("127.0.0.1", port, messages).await;
}

/// Publishes `messages` at QoS 1 to the broker at `host:port`, waiting for every PUBACK.
pub async fn publish_at(host: &str, port: u16, messages: &[(String, Vec<u8>)]) {
    let id = unique_name("pub");
    let (client, mut events) = AsyncClient::new(MqttOptions::new(id, host, port), 64);
    let sender = client.clone();
    let messages = messages.to_vec();
    let count = messages.len();
    let sending = tokio::spawn(async move {
        for (topic, payload) in messages {
            sender
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked < count {
        let event = tokio::time::timeout_at(deadline, events.poll())
            .await
            .expect("the broker acknowledges the publishes")
            .expect("the test publisher's connection");
        if let Event::Incoming(Packet::PubAck(_)) = event {
            acked += 1;
        }
    }
    sending.await.unwrap();
    let _ = client.disconnect().await;
}

pub async fn wait_subscribed(t: &TestApp) {
    let metrics = t.metrics();
    wait_for("the mqtt subscription", Duration::from_secs(15), || {
        let connected = metrics.mqtt_connected.get() == 1;
        async move { connected.then_some(()) }
    })
    .await;
}

/// Each payload form from a real broker to rows, through the stream; a bad node log line goes to
/// the dead letters with its topic, and the other line of its payload is stored.
#[actix_web::test]
async fn every_payload_form_arrives_through_the_broker() {
    let base = unique_name("mq");
    let rules = [
        (format!("{base}/json/#"), "json"),
        (format!("/{base}/hv/status"), "channels:number"),
        (format!("/{base}/+/status"), "fields"),
        (format!("/{base}/sensor/#"), "named"),
        (format!("/{base}/hv/cmd/#"), "number"),
        (format!("/{base}/isems/+/csvlog"), "nodelog"),
        (format!("{base}/telegraf/#"), "line"),
    ];
    let mut t = spawn_app_with(
        move |c| c.mqtt = Some(mqtt_settings(&rules)),
        Default::default(),
    )
    .await;
    wait_subscribed(&t).await;

    let good = "Elektra-Dach;1;1530364575;ATmega8_A_1;711;0;18.614;18.614;14.073;100;100;28;11.67;14.086;7;20;52.507309;13.458635";
    let bad = "Elektra-Dach;1;1530364576;only-four-fields";
    // Telegraf's MQTT output: line protocol with nanosecond timestamps.
    let line_ns = (Utc::now() - chrono::TimeDelta::hours(1))
        .timestamp_nanos_opt()
        .unwrap();
    let messages: Vec<(String, Vec<u8>)> = [
        (
            format!("{base}/json/x"),
            r#"{"sensor": "own.json", "value": 1}"#.to_owned(),
        ),
        (
            format!("/{base}/sensor_1/status"),
            r#"{"meas1": 0.84, "meas2": 0.5}"#.to_owned(),
        ),
        (
            format!("/{base}/hv/status"),
            r#"[{"number": 0, "on": 0, "vreq": 0.0}, {"number": 1, "on": 1, "vreq": 12.5}]"#
                .to_owned(),
        ),
        (
            format!("/{base}/sensor/room/temperature"),
            r#"{"topic": "/sensor/room/temperature", "sensor": "room", "measurement": "temperature", "value": 23.4}"#.to_owned(),
        ),
        (format!("/{base}/hv/cmd/setv/3"), "100".to_owned()),
        (
            format!("/{base}/isems/node/csvlog"),
            format!("{good}\n{bad}\n"),
        ),
        (
            format!("{base}/telegraf/host1/cpu"),
            format!("cpu,host=h1 usage_idle=93.5,usage_user=4i {line_ns}\nnot a line\n"),
        ),
    ]
    .into_iter()
    .map(|(topic, payload)| (topic, payload.into_bytes()))
    .collect();
    publish(&messages).await;

    wait_for_count(
        &t.pg,
        "SELECT count(*) FROM readings",
        1 + 2 + 4 + 1 + 1 + 14 + 2,
        Duration::from_secs(30),
    )
    .await;
    let value = |id: String| {
        let pg = &t.pg;
        async move {
            pg.query_one("SELECT value FROM readings WHERE sensor_id = $1", &[&id])
                .await
                .unwrap_or_else(|e| panic!("reading {id}: {e}"))
                .get::<_, f64>(0)
        }
    };
    assert_eq!(value("own.json".into()).await, 1.0);
    assert_eq!(value(format!("{base}.sensor_1.meas1")).await, 0.84);
    assert_eq!(value(format!("{base}.hv.1.vreq")).await, 12.5);
    assert_eq!(value("room.temperature".into()).await, 23.4);
    assert_eq!(value(format!("{base}.hv.cmd.setv.3")).await, 100.0);
    assert_eq!(value("Elektra-Dach.battery_voltage".into()).await, 14.073);
    assert_eq!(value("cpu,host=h1.usage_idle".into()).await, 93.5);
    assert_eq!(value("cpu,host=h1.usage_user".into()).await, 4.0);
    assert_eq!(
        t.metrics()
            .messages_received
            .with_label_values(&["mqtt"])
            .get(),
        7
    );

    let letters = t.dead_letters().await;
    let letters: Vec<[String; 4]> = letters
        .ids
        .iter()
        .map(|letter| ["reason", "field.topic", "data", "index"].map(|f| letter.get(f).unwrap()))
        .collect();
    // The bad lines alone, each with its line number: the other lines are stored.
    assert_eq!(
        letters,
        [
            [
                "wrong_shape".to_owned(),
                format!("/{base}/isems/node/csvlog"),
                bad.to_owned(),
                "1".to_owned()
            ],
            [
                "malformed_line".to_owned(),
                format!("{base}/telegraf/host1/cpu"),
                "not a line".to_owned(),
                "1".to_owned()
            ],
        ]
    );
    t.assert_aggregates_exact().await;
    t.stop().await;
}

/// Two instances subscribed to the same topics: only the lease holder holds the session, so each
/// message enters the stream once.
#[actix_web::test]
async fn two_instances_store_each_message_once() {
    let base = unique_name("mq");
    let rules = [(format!("{base}/#"), "json")];
    let settings = mqtt_settings(&rules);
    let first_settings = settings.clone();
    let t = spawn_app_with(move |c| c.mqtt = Some(first_settings), Default::default()).await;
    let second = sensorhub::Application::build({
        let mut config = t.config.clone();
        config.mqtt = Some(settings);
        config
    })
    .await
    .unwrap();
    let (first_metrics, second_metrics) = (t.metrics(), second.metrics());
    wait_for("one instance subscribed", Duration::from_secs(15), || {
        let connected = first_metrics.mqtt_connected.get() + second_metrics.mqtt_connected.get();
        async move { (connected == 1).then_some(()) }
    })
    .await;

    let now = chrono::Utc::now();
    let messages: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| {
            let payload = reading_json(
                &format!("twice-{i}"),
                f64::from(i),
                now - chrono::Duration::seconds(i64::from(i)),
            );
            (format!("{base}/d{i}"), payload.into_bytes())
        })
        .collect();
    publish(&messages).await;
    wait_for_count(
        &t.pg,
        "SELECT count(*) FROM readings",
        50,
        Duration::from_secs(30),
    )
    .await;
    let received =
        |m: &sensorhub::telemetry::Metrics| m.messages_received.with_label_values(&["mqtt"]).get();
    assert_eq!(
        received(&first_metrics) + received(&second_metrics),
        50,
        "each message appended once"
    );
    second.shutdown().await;
}

/// Redis down while messages arrive: they are not acknowledged, stay with the broker in the
/// persistent session, and are stored once Redis is back.
#[actix_web::test]
async fn messages_wait_with_the_broker_while_redis_is_down() {
    messages_wait_while_redis_is_down(1).await;
}

/// The same through a shared subscription of two connections: each member's session keeps what
/// it could not append.
#[actix_web::test]
async fn messages_wait_with_the_broker_while_redis_is_down_in_a_shared_subscription() {
    messages_wait_while_redis_is_down(2).await;
}

/// Redis down while messages arrive, with `connections` connections (more than one: a shared
/// subscription).
async fn messages_wait_while_redis_is_down(connections: usize) {
    let mut server = PrivateRedis::start(false);
    let url = server.url();
    let base = unique_name("mq");
    let rules = [(format!("{base}/#"), "json")];
    let mut settings = mqtt_settings(&rules);
    settings.shared = connections > 1;
    settings.connections = connections;
    let t = spawn_app_with(
        move |c| {
            c.redis_url = sensorhub::config::Secret::new(url);
            c.mqtt = Some(settings);
            // The lease outlives the outage: the session stays up and receives the messages,
            // which the source then fails to append.
            c.bridge_lease = Duration::from_secs(60);
        },
        Default::default(),
    )
    .await;
    let metrics = t.metrics();
    wait_for(
        "every connection subscribed",
        Duration::from_secs(15),
        || {
            let connected = metrics.mqtt_connected.get() == connections as i64;
            async move { connected.then_some(()) }
        },
    )
    .await;

    server.stop_server();
    let base_ts: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let messages: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            let payload = reading_json(
                "waited",
                f64::from(i),
                base_ts + chrono::Duration::seconds(i64::from(i)),
            );
            (format!("{base}/x"), payload.into_bytes())
        })
        .collect();
    publish(&messages).await;
    // The source received them, could not append them and dropped its session unacknowledged.
    wait_for(
        "the source to fail an append",
        Duration::from_secs(30),
        || {
            let failed = metrics.redis_errors.with_label_values(&["mqtt"]).get();
            async move { (failed >= 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        metrics.messages_received.with_label_values(&["mqtt"]).get(),
        0
    );
    server.start_server();

    wait_for_count(
        &t.pg,
        "SELECT count(*) FROM readings WHERE sensor_id = 'waited'",
        20,
        Duration::from_secs(60),
    )
    .await;
    t.assert_aggregates_exact().await;
}

/// `kill -9` of sensorhub while a QoS 1 publisher runs, then a restart: every reading (each with
/// its own timestamp) is stored exactly once. What the killed process had appended and not
/// acknowledged comes again from the broker and is skipped as a duplicate; what it had not
/// appended waited in the session.
#[actix_web::test]
async fn kill_9_while_a_qos1_publisher_runs_loses_and_doubles_nothing() {
    // A broker of its own that queues whatever arrives while no instance is subscribed (the
    // shared one keeps Mosquitto's default cap of 1,000 queued messages, beyond which the broker
    // itself drops them).
    let broker = crate::helpers::PrivateMosquitto::start();
    let broker_port = broker.port;
    let res = Resources::new();
    let base = unique_name("mq");
    let env: Vec<(&str, String)> = vec![
        ("SENSORHUB_REDIS_URL", REDIS_URL.to_owned()),
        ("SENSORHUB_DATABASE_URL", res.database_url.clone()),
        ("SENSORHUB_STREAM", res.stream.clone()),
        ("SENSORHUB_CHANNEL", String::new()),
        ("SENSORHUB_CONSUMER", "killed".to_owned()),
        ("SENSORHUB_BATCH_SIZE", "500".to_owned()),
        ("SENSORHUB_BRIDGE_LEASE", "1s".to_owned()),
        ("SENSORHUB_CLAIM_IDLE", "2s".to_owned()),
        (
            "SENSORHUB_MQTT_URL",
            format!("mqtt://127.0.0.1:{broker_port}"),
        ),
        ("SENSORHUB_MQTT_TOPICS", format!("{base}/#=json")),
        ("SENSORHUB_MQTT_CLIENT_ID", format!("sensorhub-{base}")),
    ];
    let connected = |hub: &crate::helpers::Sensorhub| {
        let port = hub.port;
        async move {
            let (_, body) = http_get(port, "/metrics").await;
            crate::helpers::metric_value(&body, "sensorhub_mqtt_connected") == Some(1.0)
        }
    };
    let mut hub = crate::helpers::Sensorhub::spawn(&env).await;
    wait_for("the subscription", Duration::from_secs(15), || async {
        connected(&hub).await.then_some(())
    })
    .await;

    let base_ts: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let messages: Vec<(String, Vec<u8>)> = (0..3000)
        .map(|i| {
            let payload = reading_json(
                &format!("k{}", i % 30),
                f64::from(i),
                base_ts + chrono::Duration::seconds(i64::from(i)),
            );
            (format!("{base}/d"), payload.into_bytes())
        })
        .collect();
    let publisher = tokio::spawn(async move {
        for chunk in messages.chunks(100) {
            publish_to(broker_port, chunk).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.kill9();
    let hub = crate::helpers::Sensorhub::spawn(&env).await;
    publisher.await.unwrap();

    let pg = pg_client(&res.database_url).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        3000,
        Duration::from_secs(60),
    )
    .await;
    assert_aggregates_exact(&pg, &default_resolutions()).await;
    assert!(
        connected(&hub).await,
        "the restarted instance took the session over"
    );
}

/// Mosquitto restarted (with persistence): sensorhub reconnects by itself, its session survives,
/// and what was published while it was reconnecting is stored.
#[actix_web::test]
async fn a_broker_restart_loses_nothing() {
    let mut broker = crate::helpers::PrivateMosquitto::start();
    let port = broker.port;
    let base = unique_name("mq");
    let mut settings = mqtt_settings(&[(format!("{base}/#"), "json")]);
    settings.port = port;
    let t = spawn_app_with(move |c| c.mqtt = Some(settings), Default::default()).await;
    wait_subscribed(&t).await;
    let base_ts: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let batch = |from: i32, to: i32| -> Vec<(String, Vec<u8>)> {
        (from..to)
            .map(|i| {
                let ts = base_ts + chrono::Duration::seconds(i64::from(i));
                let payload = reading_json("restart", f64::from(i), ts);
                (format!("{base}/r"), payload.into_bytes())
            })
            .collect()
    };
    publish_to(port, &batch(0, 100)).await;
    let count = "SELECT count(*) FROM readings WHERE sensor_id = 'restart'";
    wait_for_count(&t.pg, count, 100, Duration::from_secs(30)).await;

    broker.stop_server();
    let metrics = t.metrics();
    wait_for("the source to notice", Duration::from_secs(15), || {
        let connected = metrics.mqtt_connected.get();
        async move { (connected == 0).then_some(()) }
    })
    .await;
    broker.start_server();
    // Published as soon as the broker is back, possibly before sensorhub has reconnected: the
    // persistent session queues it.
    publish_to(port, &batch(100, 200)).await;
    wait_for_count(&t.pg, count, 200, Duration::from_secs(30)).await;
    wait_subscribed(&t).await;
    t.assert_aggregates_exact().await;
}

/// `sensorhub simulate --via mqtt` publishes to `sensors/<sensor>`, which sensorhub's default
/// rule reads.
#[actix_web::test]
async fn simulated_sensors_arrive_over_mqtt() {
    let base = unique_name("mq");
    let settings = mqtt_settings(&[("sensors/#".to_owned(), "json")]);
    let publisher = settings.clone();
    let t = spawn_app_with(move |c| c.mqtt = Some(settings), Default::default()).await;
    wait_subscribed(&t).await;
    let mut config = t.config.clone();
    config.mqtt = Some(publisher);
    let simulation = sensorhub::cli::simulate::Simulation {
        sensors: 6,
        rate: 2000.0,
        count: Some(300),
        via: sensorhub::cli::simulate::Via::Mqtt,
        prefix: base.clone(),
    };
    let sent = sensorhub::cli::simulate::run(&config, &simulation)
        .await
        .unwrap();
    assert_eq!(sent, 300);
    wait_for_count(
        &t.pg,
        &format!("SELECT count(*) FROM readings WHERE sensor_id LIKE '{base}-%'"),
        300,
        Duration::from_secs(30),
    )
    .await;
}
