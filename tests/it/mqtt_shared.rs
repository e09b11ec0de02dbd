//! MQTT past one connection, through a Mosquitto of each test's own: instances sharing a shared
//! subscription (`SENSORHUB_MQTT_SHARED`), each storing part of the messages and together each
//! once, through a kill -9, a stop for good and a stop of the last member; and the lease's
//! takeover after a kill -9, within the broker's default queue limit.

use crate::helpers::*;
use crate::mqtt::publish_to;
use std::time::Duration;

const RECEIVED: &str = "sensorhub_messages_received_total{source=\"mqtt\"}";
const CONNECTED: &str = "sensorhub_mqtt_connected";

/// One instance of a deployment on the broker at `port`: its consumer name, its topics under
/// `base`, `shared` subscriptions or the lease, `connections` per instance.
fn instance_env(
    res: &Resources,
    port: u16,
    base: &str,
    consumer: &str,
    shared: bool,
    connections: usize,
) -> Vec<(&'static str, String)> {
    vec![
        ("SENSORHUB_REDIS_URL", REDIS_URL.to_owned()),
        ("SENSORHUB_DATABASE_URL", res.database_url.clone()),
        ("SENSORHUB_STREAM", res.stream.clone()),
        ("SENSORHUB_CHANNEL", String::new()),
        ("SENSORHUB_CONSUMER", consumer.to_owned()),
        ("SENSORHUB_BATCH_SIZE", "2000".to_owned()),
        ("SENSORHUB_CLAIM_IDLE", "2s".to_owned()),
        ("SENSORHUB_MQTT_URL", format!("mqtt://127.0.0.1:{port}")),
        ("SENSORHUB_MQTT_TOPICS", format!("{base}/#=json")),
        ("SENSORHUB_MQTT_CLIENT_ID", format!("sensorhub-{base}")),
        ("SENSORHUB_MQTT_SHARED", shared.to_string()),
        ("SENSORHUB_MQTT_CONNECTIONS", connections.to_string()),
    ]
}

/// `n` readings with their own timestamps, from `from` on, spread over 50 sensors.
fn readings(base: &str, from: u32, n: u32) -> Vec<(String, Vec<u8>)> {
    let start: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    (from..from + n)
        .map(|i| {
            let sensor = format!("s{}", i % 50);
            let ts = start + chrono::Duration::milliseconds(i64::from(i) * 100);
            let payload = reading_json(&sensor, f64::from(i % 1000) / 4.0, ts);
            (format!("{base}/{sensor}"), payload.into_bytes())
        })
        .collect()
}

/// Publishes `messages` from four clients at once, in chunks with a pause between them, so that
/// the load lasts while a test kills or stops an instance.
async fn publish_steadily(port: u16, messages: Vec<(String, Vec<u8>)>, pause: Duration) {
    let quarter = messages.len().div_ceil(4);
    let publishers: Vec<_> = messages
        .chunks(quarter)
        .map(|part| {
            let part = part.to_vec();
            tokio::spawn(async move {
                for chunk in part.chunks(500) {
                    publish_to(port, chunk).await;
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
}

/// SIGTERM, and a graceful exit within 30 s.
async fn stop_gracefully(hub: &mut Sensorhub) {
    let status = hub.terminate(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "a graceful stop: {status:?}\n{}",
        hub.logs()
    );
}

/// Waits until the Redis key `key` is gone (what the test waits for: `what`).
async fn wait_gone(redis: &redis::aio::MultiplexedConnection, key: &str, what: &str) {
    wait_for(what, Duration::from_secs(20), || {
        let mut redis = redis.clone();
        async move {
            let found: bool = redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap();
            (!found).then_some(())
        }
    })
    .await;
}

async fn wait_connected(hub: &Sensorhub, connections: f64) {
    hub.wait_for_metric(CONNECTED, connections, Duration::from_secs(20))
        .await;
}

/// Every reading published stored once (they all have timestamps: a message appended twice
/// would be a duplicate the store skips, a lost one is missing), and the aggregates exact.
async fn assert_stored_once(res: &Resources, published: i64) {
    let pg = pg_client(&res.database_url).await;
    assert_settles_at(&pg, published, "every message stored once").await;
    assert_aggregates_exact(&pg, &default_resolutions()).await;
}

/// Waits until `readings` holds `n` rows, and asserts it still holds exactly `n` a while later:
/// nothing missing, no extra copies arriving late.
async fn assert_settles_at(pg: &tokio_postgres::Client, n: i64, what: &str) {
    wait_for_count(
        pg,
        "SELECT count(*) FROM readings",
        n,
        Duration::from_secs(120),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored: i64 = pg
        .query_one("SELECT count(*) FROM readings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, n, "{what}");
}

/// Three instances in one shared subscription, 100,000 QoS 1 messages: each instance stores a
/// part, together every message once; one instance is killed with kill -9 under load and
/// restarted with its consumer name, and its session gives back what it held.
#[actix_web::test]
async fn three_instances_share_the_messages_and_a_kill_9_loses_and_doubles_nothing() {
    let broker = PrivateMosquitto::start();
    let res = Resources::new();
    let base = unique_name("shared");
    let env = |consumer: &str| instance_env(&res, broker.port, &base, consumer, true, 1);
    let first = Sensorhub::spawn(&env("first")).await;
    let mut second = Sensorhub::spawn(&env("second")).await;
    let third = Sensorhub::spawn(&env("third")).await;
    for hub in [&first, &second, &third] {
        wait_connected(hub, 1.0).await;
    }

    const N: u32 = 100_000;
    let publishing = tokio::spawn(publish_steadily(
        broker.port,
        readings(&base, 0, N),
        Duration::from_millis(40),
    ));
    wait_for(
        "the second instance at work",
        Duration::from_secs(60),
        || {
            let second = &second;
            async move { (second.metric(RECEIVED).await >= 2_000.0).then_some(()) }
        },
    )
    .await;
    second.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = Sensorhub::spawn(&env("second")).await;
    publishing.await.unwrap();

    assert_stored_once(&res, i64::from(N)).await;
    for (name, hub) in [("first", &first), ("second", &second), ("third", &third)] {
        assert!(
            hub.metric(RECEIVED).await > 0.0,
            "the {name} instance stored a part"
        );
    }
    wait_connected(&second, 1.0).await;
}

/// An instance stopped for good while others remain: it unsubscribes, appends and acknowledges
/// what its session still held, and leaves the members; everything published before, during and
/// after is stored once by the others, and its session holds nothing.
#[actix_web::test]
async fn an_instance_stopped_for_good_leaves_its_share_to_the_others() {
    let broker = PrivateMosquitto::start();
    let res = Resources::new();
    let base = unique_name("shared");
    let env = |consumer: &str| instance_env(&res, broker.port, &base, consumer, true, 2);
    let first = Sensorhub::spawn(&env("first")).await;
    let mut leaving = Sensorhub::spawn(&env("leaving")).await;
    wait_connected(&first, 2.0).await;
    wait_connected(&leaving, 2.0).await;

    let publishing = tokio::spawn(publish_steadily(
        broker.port,
        readings(&base, 0, 20_000),
        Duration::from_millis(50),
    ));
    wait_for(
        "the leaving instance at work",
        Duration::from_secs(60),
        || {
            let leaving = &leaving;
            async move { (leaving.metric(RECEIVED).await >= 1_000.0).then_some(()) }
        },
    )
    .await;
    stop_gracefully(&mut leaving).await;
    let logs = leaving.logs();
    assert!(
        logs.contains("left the shared subscription; every message received is appended"),
        "{logs}"
    );
    publishing.await.unwrap();
    // After the stop, only the remaining instance receives.
    publish_to(broker.port, &readings(&base, 20_000, 1_000)).await;
    assert_stored_once(&res, 21_000).await;

    let mut redis = redis_conn(REDIS_URL).await;
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{}:mqtt-members", res.stream))
        .query_async(&mut redis)
        .await
        .unwrap();
    members.sort();
    assert_eq!(
        members,
        ["first-1", "first-2"],
        "the stopped instance left the members"
    );
    // Its sessions hold no subscription: with the broker queueing without limit, a session
    // still subscribed would have messages waiting. A client resuming it sees none.
    for n in 1..=2 {
        let waiting = messages_waiting(broker.port, &format!("sensorhub-{base}-leaving-{n}")).await;
        assert_eq!(waiting, 0, "the session of leaving-{n} still receives");
    }
}

/// The last member of the shared subscription keeps it when stopped: the broker queues for its
/// session while no instance runs, and a restart stores what was published meanwhile.
#[actix_web::test]
async fn the_last_member_stopped_keeps_its_subscription_and_misses_nothing() {
    let broker = PrivateMosquitto::start();
    let res = Resources::new();
    let base = unique_name("shared");
    let env = instance_env(&res, broker.port, &base, "only", true, 1);
    let mut hub = Sensorhub::spawn(&env).await;
    wait_connected(&hub, 1.0).await;
    publish_to(broker.port, &readings(&base, 0, 500)).await;
    stop_gracefully(&mut hub).await;
    assert!(
        hub.logs().contains("last member"),
        "the stop says why it stays subscribed:\n{}",
        hub.logs()
    );
    publish_to(broker.port, &readings(&base, 500, 500)).await;
    let _hub = Sensorhub::spawn(&env).await;
    assert_stored_once(&res, 1_000).await;
}

/// Two deployments on one broker, each with a shared subscription of its own: each stores every
/// message (the group is the deployment's client id), not half of them.
#[actix_web::test]
async fn two_deployments_sharing_a_broker_each_get_every_message() {
    let broker = PrivateMosquitto::start();
    let base = unique_name("shared");
    let (one, two) = (Resources::new(), Resources::new());
    let mut first = instance_env(&one, broker.port, &base, "a", true, 2);
    first.push(("SENSORHUB_MQTT_CLIENT_ID", format!("sensorhub-{base}-one")));
    let mut second = instance_env(&two, broker.port, &base, "a", true, 2);
    second.push(("SENSORHUB_MQTT_CLIENT_ID", format!("sensorhub-{base}-two")));
    let first = Sensorhub::spawn(&first).await;
    let second = Sensorhub::spawn(&second).await;
    wait_connected(&first, 2.0).await;
    wait_connected(&second, 2.0).await;
    publish_to(broker.port, &readings(&base, 0, 2_000)).await;
    assert_stored_once(&one, 2_000).await;
    assert_stored_once(&two, 2_000).await;
}

/// Readiness with several connections: ready once every connection is subscribed; a broker
/// that goes away takes the instance out, naming a connection, and its return brings it back.
#[actix_web::test]
async fn readyz_names_the_connection_that_is_not_consuming() {
    let mut broker = PrivateMosquitto::start();
    let res = Resources::new();
    let base = unique_name("shared");
    let mut env = instance_env(&res, broker.port, &base, "ready", true, 2);
    env.push(("SENSORHUB_MQTT_READY_GRACE", "1s".to_owned()));
    let hub = Sensorhub::spawn(&env).await;
    wait_connected(&hub, 2.0).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(20)).await;
    broker.stop_server();
    let body = wait_ready_status(hub.port, 503, Duration::from_secs(20)).await;
    assert!(body.contains("connection 1: not consuming"), "{body}");
    broker.start_server();
    wait_ready_status(hub.port, 200, Duration::from_secs(30)).await;
    wait_connected(&hub, 2.0).await;
}

/// Switching between the lease and shared subscriptions and back: each mode retires the other's
/// sessions at start, so none keeps queueing copies that a switch back would append again —
/// readings without a timestamp would be stored twice.
#[actix_web::test]
async fn switching_modes_back_and_forth_stores_untimed_readings_once() {
    let broker = PrivateMosquitto::start();
    let res = Resources::new();
    let base = unique_name("switch");
    let untimed = |from: u32, n: u32| -> Vec<(String, Vec<u8>)> {
        (from..from + n)
            .map(|i| {
                let payload = format!(r#"{{"sensor":"switch","value":{i}}}"#);
                (format!("{base}/switch"), payload.into_bytes())
            })
            .collect()
    };
    let redis = redis_conn(REDIS_URL).await;
    let lease_record = format!("{}:mqtt-subscriptions", res.stream);
    let members = format!("{}:mqtt-members", res.stream);

    let mut hub = Sensorhub::spawn(&instance_env(&res, broker.port, &base, "sw", false, 1)).await;
    wait_connected(&hub, 1.0).await;
    let pg = pg_client(&res.database_url).await;
    stop_gracefully(&mut hub).await;

    let mut hub = Sensorhub::spawn(&instance_env(&res, broker.port, &base, "sw", true, 1)).await;
    wait_connected(&hub, 1.0).await;
    wait_gone(&redis, &lease_record, "the lease's session retired").await;
    publish_to(broker.port, &untimed(0, 500)).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        500,
        Duration::from_secs(30),
    )
    .await;
    stop_gracefully(&mut hub).await;

    let hub = Sensorhub::spawn(&instance_env(&res, broker.port, &base, "sw", false, 1)).await;
    wait_connected(&hub, 1.0).await;
    wait_gone(&redis, &members, "the shared members retired").await;
    publish_to(broker.port, &untimed(500, 500)).await;
    let what = format!("each untimed reading stored once\n{}", hub.logs());
    assert_settles_at(&pg, 1_000, &what).await;
}

/// Fewer connections after a restart: the members beyond the new count are retired (their
/// sessions unsubscribed, and what they held while the instance was down appended), so that the
/// broker does not keep giving them a turn that nobody takes.
#[actix_web::test]
async fn members_beyond_a_lowered_connection_count_are_retired_with_what_they_held() {
    let broker = PrivateMosquitto::start();
    let res = Resources::new();
    let base = unique_name("shared");
    let mut hub =
        Sensorhub::spawn(&instance_env(&res, broker.port, &base, "shrunk", true, 3)).await;
    wait_connected(&hub, 3.0).await;
    publish_to(broker.port, &readings(&base, 0, 600)).await;
    stop_gracefully(&mut hub).await;
    // While no instance runs, the three sessions queue their turns.
    publish_to(broker.port, &readings(&base, 600, 600)).await;
    let hub = Sensorhub::spawn(&instance_env(&res, broker.port, &base, "shrunk", true, 1)).await;
    wait_connected(&hub, 1.0).await;
    publish_to(broker.port, &readings(&base, 1_200, 1_800)).await;
    assert_stored_once(&res, 3_000).await;

    let mut redis = redis_conn(REDIS_URL).await;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{}:mqtt-members", res.stream))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(members, ["shrunk-1"], "{}", hub.logs());
    for n in 2..=3 {
        let waiting = messages_waiting(broker.port, &format!("sensorhub-{base}-shrunk-{n}")).await;
        assert_eq!(waiting, 0, "the retired session shrunk-{n} still receives");
    }
}

/// The lease after a kill -9, against Mosquitto's default queue limit (1,000 messages for a
/// session that is not connected): the restarted instance takes the lease of its previous
/// process at once instead of waiting for it to expire, so what the broker queued meanwhile
/// fits the limit and every message of a steady publisher is stored.
#[actix_web::test]
async fn a_kill_9_under_the_lease_is_taken_over_within_the_default_queue_limit() {
    let broker = PrivateMosquitto::start_configured("max_queued_messages 1000");
    let res = Resources::new();
    let base = unique_name("leased");
    // The default lease (5 s): at 400 messages a second, waiting for it would queue 2,000.
    let env = instance_env(&res, broker.port, &base, "restarted", false, 1);
    let mut hub = Sensorhub::spawn(&env).await;
    wait_connected(&hub, 1.0).await;

    let publishing = tokio::spawn(async move {
        let port = broker.port;
        for chunk in readings(&base, 0, 4_000).chunks(40) {
            publish_to(port, chunk).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        broker
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    hub.kill9();
    let hub = Sensorhub::spawn(&env).await;
    wait_connected(&hub, 1.0).await;
    let _broker = publishing.await.unwrap();
    assert_stored_once(&res, 4_000).await;
    assert!(
        hub.logs()
            .contains("took over the lease of this instance's previous process"),
        "{}",
        hub.logs()
    );
}

/// How many messages the broker delivers at once to a client resuming the session `client_id`.
async fn messages_waiting(port: u16, client_id: &str) -> usize {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false).set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(options, 16);
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.poll()).await {
        if let Event::Incoming(Packet::Publish(_)) = event {
            received += 1;
        }
    }
    let _ = client.disconnect().await;
    received
}
