//! The MQTT session at its edges, each through the real Mosquitto and the sensorhub binary (so
//! `SENSORHUB_TEST_BINARY` can run them against an older build): a message far over the client
//! library's default packet limit, a QoS 2 exchange resumed between PUBREC and PUBREL, retained
//! messages across reconnects and a handover, two deployments on one broker, topics removed from
//! the configuration, and `/readyz` while the broker is out of reach.

use crate::helpers::*;
use crate::helpers::{PrivateMosquitto, Sensorhub, free_port, wait_ready_status};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::time::Duration;

/// The environment of a sensorhub on `res` subscribed to `topics` on the broker at `port`.
fn mqtt_env(res: &Resources, port: u16, topics: &str) -> Vec<(&'static str, String)> {
    let mut env = res.hub_env();
    env.extend([
        ("SENSORHUB_BRIDGE_LEASE", "1s".to_owned()),
        ("SENSORHUB_MQTT_URL", format!("mqtt://127.0.0.1:{port}")),
        ("SENSORHUB_MQTT_TOPICS", topics.to_owned()),
    ]);
    env
}

/// Waits until `hub` holds the MQTT session with its subscriptions in place.
async fn wait_subscribed(hub: &Sensorhub) {
    hub.wait_for_metric("sensorhub_mqtt_connected", 1.0, Duration::from_secs(20))
        .await;
}

/// A publisher on the broker at `port`: sends `messages` at `qos` (retained or not), returns once
/// the broker has them all.
async fn publish(port: u16, messages: &[(String, Vec<u8>)], qos: QoS, retain: bool) {
    let mut options = MqttOptions::new(unique_name("pub"), "127.0.0.1", port);
    options.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut events) = AsyncClient::new(options, 64);
    let sender = client.clone();
    let owned = messages.to_vec();
    let sending = tokio::spawn(async move {
        for (topic, payload) in owned {
            sender.publish(topic, qos, retain, payload).await.unwrap();
        }
    });
    let mut done = 0;
    while done < messages.len() {
        let event = tokio::time::timeout(Duration::from_secs(30), events.poll())
            .await
            .expect("the broker acknowledges the publishes")
            .expect("the publisher's connection");
        if let Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) = event {
            done += 1;
        }
    }
    sending.await.unwrap();
    let _ = client.disconnect().await;
    // Let the disconnect reach the broker before the caller moves on.
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), events.poll()).await {}
}

async fn pg(res: &Resources) -> tokio_postgres::Client {
    pg_client(&res.database_url).await
}

async fn count(pg: &tokio_postgres::Client, sql: &str) -> i64 {
    pg.query_one(sql, &[]).await.expect(sql).get(0)
}

/// A 500 KB message among small ones: stored with them, and ingest goes on (the client's default
/// limit of 10 KiB refused it, and the broker resent it on every connection, forever).
#[actix_web::test]
async fn a_large_message_among_small_ones_is_stored() {
    let broker = PrivateMosquitto::start();
    let res = Resources::new();
    let base = unique_name("big");
    let hub = Sensorhub::spawn(&mqtt_env(&res, broker.port, &format!("{base}/#=json"))).await;
    wait_subscribed(&hub).await;
    let ts0: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let at = |i: i64| ts0 + chrono::Duration::seconds(i);
    let big: Vec<serde_json::Value> = (0..7000)
        .map(|i| serde_json::from_str(&reading_json("big", i as f64, at(i))).unwrap())
        .collect();
    let big = serde_json::to_vec(&big).unwrap();
    assert!(big.len() > 500_000, "{} bytes", big.len());
    let mut messages: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("{base}/s"),
                reading_json("small", i as f64, at(i)).into_bytes(),
            )
        })
        .collect();
    messages.push((format!("{base}/b"), big));
    messages.extend((5..10).map(|i| {
        (
            format!("{base}/s"),
            reading_json("small", i as f64, at(i)).into_bytes(),
        )
    }));
    publish(broker.port, &messages, QoS::AtLeastOnce, false).await;
    let pg = pg(&res).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        7010,
        Duration::from_secs(60),
    )
    .await;
}

/// A QoS 2 session that ended between PUBREC and PUBREL: the broker resends PUBREL on the next
/// connection, which completes the exchange, and what is published after is stored (a fresh
/// client refused the PUBREL as unsolicited and dropped the connection, again and again).
#[actix_web::test]
async fn qos2_resumed_between_pubrec_and_pubrel_goes_on() {
    // Mosquitto before 2.0.13 (Debian's 2.0.11 among them) stops sending QoS 2 messages to a
    // subscriber whose PUBCOMPs overtake PUBRECs still due (its in-flight quota accounting); an
    // unlimited in-flight window avoids that, as docs/delivery.md tells operators.
    let broker = PrivateMosquitto::start_configured("max_inflight_messages 0");
    let res = Resources::new();
    let base = unique_name("q2");
    let client_id = format!("sensorhub-{base}");
    // An earlier holder of the session: takes one QoS 2 message, answers PUBREC, and is gone
    // before the broker's PUBREL is read.
    {
        let mut options = MqttOptions::new(&client_id, "127.0.0.1", broker.port);
        options.set_clean_session(false).set_manual_acks(true);
        let (client, mut events) = AsyncClient::new(options, 16);
        client
            .subscribe(format!("{base}/#"), QoS::ExactlyOnce)
            .await
            .unwrap();
        loop {
            match events.poll().await.unwrap() {
                Event::Incoming(Packet::SubAck(_)) => break,
                _ => continue,
            }
        }
        let ts: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
        let first = vec![(
            format!("{base}/x"),
            reading_json("q2", 0.0, ts).into_bytes(),
        )];
        publish(broker.port, &first, QoS::ExactlyOnce, false).await;
        loop {
            match events.poll().await.unwrap() {
                Event::Incoming(Packet::Publish(publish)) => client.ack(&publish).await.unwrap(),
                Event::Outgoing(Outgoing::PubRec(_)) => break,
                _ => continue,
            }
        }
        // Dropped here: the connection closes with PUBREL unread.
    }
    let mut env = mqtt_env(&res, broker.port, &format!("{base}/#=json"));
    env.push(("SENSORHUB_MQTT_CLIENT_ID", client_id));
    env.push(("SENSORHUB_MQTT_QOS", "2".to_owned()));
    let _hub = Sensorhub::spawn(&env).await;
    let ts: chrono::DateTime<chrono::Utc> = "2025-06-01T01:00:00Z".parse().unwrap();
    let later: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| {
            let at = ts + chrono::Duration::seconds(i);
            (
                format!("{base}/x"),
                reading_json("q2", i as f64, at).into_bytes(),
            )
        })
        .collect();
    publish(broker.port, &later, QoS::ExactlyOnce, false).await;
    wait_for_count(
        &pg(&res).await,
        "SELECT count(*) FROM readings WHERE ts >= '2025-06-01T01:00:00Z'",
        50,
        Duration::from_secs(30),
    )
    .await;
}

/// A retained message without a time of its own is one reading: three reconnects of the same
/// instance and a handover to another leave one row (each subscription made the broker send it
/// again, and each got a new receipt time).
#[actix_web::test]
async fn a_retained_message_is_stored_once_across_reconnects_and_a_handover() {
    let broker = PrivateMosquitto::start();
    let res = Resources::new();
    let base = unique_name("ret");
    let env = mqtt_env(&res, broker.port, &format!("{base}/#=number"));
    publish(
        broker.port,
        &[(format!("{base}/boiler/temp"), b"61.5".to_vec())],
        QoS::AtLeastOnce,
        true,
    )
    .await;
    let rows = "SELECT count(*) FROM readings";
    let mut pg_client = None;
    for _ in 0..3 {
        let mut hub = Sensorhub::spawn(&env).await;
        wait_subscribed(&hub).await;
        // The first start created the database.
        let pg = match &pg_client {
            Some(pg) => pg,
            None => pg_client.insert(pg(&res).await),
        };
        wait_for_count(pg, rows, 1, Duration::from_secs(20)).await;
        // Long enough for a message sent on subscribing to be stored.
        tokio::time::sleep(Duration::from_millis(700)).await;
        hub.terminate(Duration::from_secs(20)).await;
    }
    // A handover: a second instance takes the lease while the first one runs on.
    let mut first = Sensorhub::spawn(&env).await;
    wait_subscribed(&first).await;
    let mut second_env = env.clone();
    second_env.push(("SENSORHUB_CONSUMER", "second".to_owned()));
    let second = Sensorhub::spawn(&second_env).await;
    first.kill9();
    wait_subscribed(&second).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pg = pg_client.expect("started three times");
    assert_eq!(
        count(&pg, rows).await,
        1,
        "one retained message, one reading"
    );
}

/// Two deployments (their own stream and database) with the same group on one broker: each
/// stores only its own topics (they shared the client id `sensorhub-<group>`, so they took the
/// session from each other and stored each other's messages).
#[actix_web::test]
async fn two_deployments_on_one_broker_keep_their_own_readings() {
    let broker = PrivateMosquitto::start();
    let (site_a, site_b) = (Resources::new(), Resources::new());
    let base = unique_name("site");
    let a = Sensorhub::spawn(&mqtt_env(&site_a, broker.port, &format!("{base}/a/#=json"))).await;
    let b = Sensorhub::spawn(&mqtt_env(&site_b, broker.port, &format!("{base}/b/#=json"))).await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;
    let ts: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let messages = |site: &str| -> Vec<(String, Vec<u8>)> {
        (0..300)
            .map(|i| {
                let at = ts + chrono::Duration::seconds(i);
                let payload = reading_json(&format!("{site}.t"), i as f64, at);
                (format!("{base}/{site}/t"), payload.into_bytes())
            })
            .collect()
    };
    publish(broker.port, &messages("a"), QoS::AtLeastOnce, false).await;
    publish(broker.port, &messages("b"), QoS::AtLeastOnce, false).await;
    let (pg_a, pg_b) = (pg(&site_a).await, pg(&site_b).await);
    let all = "SELECT count(*) FROM readings";
    wait_for_count(&pg_a, all, 300, Duration::from_secs(30)).await;
    wait_for_count(&pg_b, all, 300, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let own = |site: &str| format!("SELECT count(*) FROM readings WHERE sensor_id = '{site}.t'");
    assert_eq!(count(&pg_a, &own("a")).await, 300);
    assert_eq!(count(&pg_b, &own("b")).await, 300);
    assert_eq!(count(&pg_a, all).await, 300, "site A stored only its own");
    assert_eq!(count(&pg_b, all).await, 300, "site B stored only its own");
}

/// A filter removed from `SENSORHUB_MQTT_TOPICS` is unsubscribed when the session resumes: its
/// messages are no longer stored (the persistent session kept the subscription).
#[actix_web::test]
async fn a_topic_removed_from_the_configuration_is_unsubscribed() {
    let broker = PrivateMosquitto::start();
    let res = Resources::new();
    let base = unique_name("unsub");
    let both = format!("{base}/keep/#=json; {base}/drop/#=json");
    let mut hub = Sensorhub::spawn(&mqtt_env(&res, broker.port, &both)).await;
    wait_subscribed(&hub).await;
    hub.terminate(Duration::from_secs(20)).await;
    let hub = Sensorhub::spawn(&mqtt_env(&res, broker.port, &format!("{base}/keep/#=json"))).await;
    wait_subscribed(&hub).await;
    let ts: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    // The dropped topic's message first: once the kept one is stored, the other would be too.
    let messages = [
        (format!("{base}/drop/x"), reading_json("dropped", 1.0, ts)),
        (format!("{base}/keep/x"), reading_json("kept", 1.0, ts)),
    ]
    .map(|(topic, payload)| (topic, payload.into_bytes()));
    publish(broker.port, &messages, QoS::AtLeastOnce, false).await;
    let pg = pg(&res).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings WHERE sensor_id = 'kept'",
        1,
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&pg, "SELECT count(*) FROM readings").await, 1);
}

/// A broker out of reach: `/readyz` says MQTT is not consuming once the grace period has passed,
/// and ready again once the broker is back.
#[actix_web::test]
async fn readyz_reports_mqtt_not_consuming() {
    let mut broker = PrivateMosquitto::start();
    let res = Resources::new();
    let base = unique_name("ready");
    let mut env = mqtt_env(&res, broker.port, &format!("{base}/#=json"));
    env.push(("SENSORHUB_MQTT_READY_GRACE", "1s".to_owned()));
    let hub = Sensorhub::spawn(&env).await;
    wait_subscribed(&hub).await;
    assert_eq!(http_get(hub.port, "/readyz").await.0, 200);
    broker.stop_server();
    let body = wait_ready_status(hub.port, 503, Duration::from_secs(20)).await;
    assert!(body.contains("\"mqtt\""), "names the mqtt check: {body}");
    broker.start_server();
    wait_ready_status(hub.port, 200, Duration::from_secs(30)).await;
    // Nothing listens on this port: never subscribed, not ready after the grace period.
    let other = Resources::new();
    let mut env = mqtt_env(&other, free_port(), &format!("{base}/#=json"));
    env.push(("SENSORHUB_MQTT_READY_GRACE", "1s".to_owned()));
    let lonely = Sensorhub::spawn(&env).await;
    let body = wait_ready_status(lonely.port, 503, Duration::from_secs(20)).await;
    assert!(body.contains("not consuming"), "{body}");
}
