//! Operations on a deployment from the command line: the container healthcheck, renaming the
//! stream and compacting now.

use crate::config::Config;
use crate::liveness::Liveness;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// Renames the configured stream and the keys beside it, printing each rename.
pub async fn rename_stream(config: &Config, to: &str) -> anyhow::Result<()> {
    let client = crate::redis::target::parse_live(
        config.redis_url.expose(),
        &config.redis_tls,
        Liveness::new(config.network_timeout),
    )
    .map_err(|why| anyhow::anyhow!("SENSORHUB_REDIS_URL: {why}"))?
    .client;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let renamed = crate::stream::rename::rename_stream(&mut conn, &config.stream, to).await?;
    for (from, to) in renamed {
        println!("{from} -> {to}");
    }
    Ok(())
}

/// Asks `GET /readyz` of the local instance; exit 0 on 200.
pub fn healthcheck(mut addr: SocketAddr) -> ExitCode {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let answer = (|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })();
    match answer {
        Ok(response)
            if response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200") =>
        {
            ExitCode::SUCCESS
        }
        Ok(response) => {
            let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
            eprintln!("sensorhub: not ready: {body}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("sensorhub: no answer from {addr}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `sensorhub compact`: compacts now, once, what the service's own runs would
/// (`SENSORHUB_COMPACT_AFTER`), printing a line per partition: its name, the readings moved and
/// the compacted rows written.
pub async fn compact(config: &Config) -> anyhow::Result<()> {
    let Some(after) = config.compact_after else {
        anyhow::bail!(
            "SENSORHUB_COMPACT_AFTER is off: set it to how old a partition must be (e.g. 7d)"
        );
    };
    let pool = crate::store::connect(config.database_url.expose(), 1).await?;
    crate::store::migrate(&pool).await?;
    let mut client = pool.get().await?;
    match crate::store::compaction::run_once(&mut client, after, chrono::Utc::now()).await? {
        None => anyhow::bail!("another instance is compacting; nothing done"),
        Some(done) => {
            for compacted in done {
                println!(
                    "{}\t{}\t{}\t{:.3}",
                    compacted.partition,
                    compacted.readings,
                    compacted.rows,
                    compacted.took.as_secs_f64()
                );
            }
        }
    }
    Ok(())
}
