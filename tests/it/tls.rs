//! TLS to Redis, PostgreSQL and MQTT, against private servers with certificates made by the
//! test: the full round trip over TLS, untrusted certificates and wrong host names refused at
//! start with the host named, and no password in the log or in `/readyz`.

use crate::helpers::*;
use crate::helpers::{
    PrivateMosquitto, PrivatePostgres, PrivateRedis, Sensorhub, TestCerts, wait_ready_status,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sensorhub::config::Secret;
use sensorhub::tls::{TlsFiles, Verify, client_config};
use std::time::{Duration, Instant};

const REDIS_PASSWORD: &str = "redis-pw-s3cret";
const PG_PASSWORD: &str = "pg-pw-s3cret";
const MQTT_PASSWORD: &str = "mqtt-pw-s3cret";

/// Publishes one message over TLS at QoS 1 and waits for the broker's acknowledgement.
async fn publish_tls(port: u16, certs: &TestCerts, topic: &str, payload: &str) {
    let mut options = MqttOptions::new(unique_name("tls-pub"), "127.0.0.1", port);
    let tls = TlsFiles {
        ca: Some(certs.ca.clone()),
        client: None,
    };
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(client_config(&tls, Verify::Full).unwrap()),
    ));
    let (client, mut events) = AsyncClient::new(options, 8);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, events.poll())
            .await
            .expect("the TLS broker acknowledges")
            .expect("the test publisher's TLS connection");
        if let Event::Incoming(Packet::PubAck(_)) = event {
            break;
        }
    }
    let _ = client.disconnect().await;
}

#[actix_web::test]
async fn the_round_trip_runs_over_tls_everywhere_and_no_password_is_shown() {
    let certs = TestCerts::new();
    let mut redis = PrivateRedis::start_tls(&certs, REDIS_PASSWORD);
    let pg = PrivatePostgres::start_tls(&certs);
    let broker = PrivateMosquitto::start_tls(&certs);
    let name = unique_name("tls");
    let stream = format!("tls:{name}");
    let ca = certs.ca.display().to_string();
    let env: Vec<(&str, String)> = vec![
        ("SENSORHUB_REDIS_URL", redis.url()),
        ("SENSORHUB_REDIS_CA_FILE", ca.clone()),
        (
            "SENSORHUB_DATABASE_URL",
            format!(
                "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/{name}?sslmode=verify-full&sslrootcert={ca}",
                pg.port
            ),
        ),
        (
            "SENSORHUB_MQTT_URL",
            format!(
                "mqtts://sensorhub:{MQTT_PASSWORD}@127.0.0.1:{}",
                broker.port
            ),
        ),
        ("SENSORHUB_MQTT_CA_FILE", ca.clone()),
        ("SENSORHUB_MQTT_CLIENT_ID", format!("sensorhub-{name}")),
        ("SENSORHUB_STREAM", stream.clone()),
        ("SENSORHUB_CHANNEL", stream.clone()),
    ];
    let hub = Sensorhub::spawn(&env).await;
    let status = wait_ready_status(hub.port, 200, Duration::from_secs(30)).await;
    assert!(status.contains("ready"), "{status}");
    wait_for("the MQTT subscription", Duration::from_secs(20), || async {
        let connected = hub.metric("sensorhub_mqtt_connected").await == 1.0;
        let bridging = hub.metric("sensorhub_bridge_leader").await == 1.0;
        (connected && bridging).then_some(())
    })
    .await;

    // One reading by each way in: XADD and PUBLISH over TLS, MQTT over TLS, HTTP ingest.
    let now = chrono::Utc::now();
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("data")
        .arg(reading_json("tls.xadd", 1.0, now))
        .query_async(&mut conn)
        .await
        .unwrap();
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&stream)
        .arg(reading_json("tls.publish", 2.0, now))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(receivers, 1, "the bridge is subscribed over TLS");
    publish_tls(
        broker.port,
        &certs,
        "sensors/x",
        &reading_json("tls.mqtt", 3.0, now),
    )
    .await;
    let json = reading_json("tls.http", 4.0, now);
    let (status, body) =
        http_request(hub.port, "POST", "/api/v1/readings", &[], json.as_bytes()).await;
    assert_eq!(status, 202, "{body}");

    let client = pg_client(&pg.url(&name)).await;
    wait_for_count(
        &client,
        "SELECT count(*) FROM readings WHERE sensor_id LIKE 'tls.%'",
        4,
        Duration::from_secs(30),
    )
    .await;
    // Every connection sensorhub holds to PostgreSQL is encrypted.
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name LIKE 'sensorhub %'",
            &[],
        )
        .await
        .unwrap();
    let (encrypted, plain): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        encrypted >= 2 && plain == 0,
        "{encrypted} over TLS, {plain} plain"
    );

    // Redis gone: /readyz names it by its URL, the password masked.
    redis.stop_server();
    let body = wait_ready_status(hub.port, 503, Duration::from_secs(30)).await;
    assert!(
        body.contains(&format!("rediss://:***@127.0.0.1:{}", redis.port)),
        "{body}"
    );
    let log = hub.logs();
    assert!(
        log.contains("rediss://:***@127.0.0.1"),
        "start-up line: {log}"
    );
    assert!(log.contains("postgres://postgres:***@127.0.0.1"), "{log}");
    for secret in [REDIS_PASSWORD, PG_PASSWORD, MQTT_PASSWORD] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        assert!(!body.contains(secret), "{secret} in /readyz: {body}");
    }
    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await;
}

/// Starts an application on `config` and expects it to stop at once with an error naming
/// `host` and the certificate.
async fn refused(config: sensorhub::Config, host: &str) {
    let started = Instant::now();
    let error = match sensorhub::Application::build(config).await {
        Ok(app) => {
            app.shutdown().await;
            panic!("started although the certificate should have been refused");
        }
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains(host), "names {host}: {error}");
    assert!(error.contains("certificate"), "says why: {error}");
    assert!(!error.contains(REDIS_PASSWORD), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused at once, not after the start-up wait: {error}"
    );
}

#[actix_web::test]
async fn untrusted_certificates_and_wrong_host_names_stop_the_start_naming_the_host() {
    let certs = TestCerts::new();
    let redis = PrivateRedis::start_tls(&certs, REDIS_PASSWORD);
    let pg = PrivatePostgres::start_tls(&certs);
    let res = Resources::new();
    let name = res.name.clone();
    let ca = certs.ca.display().to_string();
    let other = certs.other_ca.display().to_string();

    // Redis signed by a CA the configuration does not trust.
    let mut config = test_config(&name);
    config.redis_url = Secret::new(redis.url());
    config.redis_tls = TlsFiles {
        ca: Some(certs.other_ca.clone()),
        client: None,
    };
    refused(config, &format!("Redis at 127.0.0.1:{}", redis.port)).await;

    // PostgreSQL: another CA with verify-full, and the right CA with a host name the
    // certificate does not hold.
    let pg_url = |host: &str, mode: &str, root: &str| {
        format!(
            "postgres://postgres@{host}:{}/{name}?sslmode={mode}&sslrootcert={root}",
            pg.port
        )
    };
    for (url, host) in [
        (pg_url("127.0.0.1", "verify-full", &other), "127.0.0.1"),
        (pg_url("127.0.0.1", "verify-ca", &other), "127.0.0.1"),
        (pg_url("localhost", "verify-full", &ca), "localhost"),
    ] {
        let mut config = test_config(&name);
        config.database_url = Secret::new(url.as_str());
        refused(config, &format!("{host}:{}", pg.port)).await;
    }

    // verify-ca checks the chain only: the same host name passes; so does the right CA by IP.
    for url in [
        pg_url("localhost", "verify-ca", &ca),
        pg_url("127.0.0.1", "verify-full", &ca),
    ] {
        let mut config = test_config(&name);
        config.database_url = Secret::new(url.as_str());
        let app = sensorhub::Application::build(config)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:#}"));
        app.shutdown().await;
    }

    // A URL that cannot be used as written stops the start with one line naming the variable.
    let mut config = test_config(&name);
    config.database_url = Secret::new(pg_url("127.0.0.1", "verify-all", &ca).as_str());
    let started = Instant::now();
    let error = match sensorhub::Application::build(config).await {
        Ok(_) => panic!("an unknown sslmode was accepted"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "at once: {error}"
    );
    assert!(
        error.contains("SENSORHUB_DATABASE_URL") && error.contains("sslmode=verify-all"),
        "{error}"
    );
}

#[actix_web::test]
async fn a_redis_that_asks_for_a_client_certificate_gets_the_configured_one() {
    let certs = TestCerts::new();
    let redis = PrivateRedis::start_mutual_tls(&certs, REDIS_PASSWORD);
    let res = Resources::new();
    let name = res.name.clone();

    // Without a client certificate the server ends the handshake: refused at once.
    let mut config = test_config(&name);
    config.redis_url = Secret::new(redis.url());
    config.redis_tls = TlsFiles {
        ca: Some(certs.ca.clone()),
        client: None,
    };
    refused(
        config.clone(),
        &format!("Redis at 127.0.0.1:{}", redis.port),
    )
    .await;

    // With it, the pipeline runs over the mutual TLS connection, the reader's own included.
    config.redis_tls.client = Some((certs.client_cert.clone(), certs.client_key.clone()));
    let app = sensorhub::Application::build(config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&config.stream)
        .arg("*")
        .arg("data")
        .arg(reading_json("mtls", 1.0, chrono::Utc::now()))
        .query_async(&mut conn)
        .await
        .unwrap();
    let pg = pg_client(config.database_url.expose()).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings WHERE sensor_id = 'mtls'",
        1,
        Duration::from_secs(20),
    )
    .await;
    app.shutdown().await;
}
