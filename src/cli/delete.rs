//! `sensorhub delete`: what `POST /api/v1/delete` does, from the command line — the readings of
//! one or more sensors in `[from, to)`, in one transaction, recorded so that a re-read of the
//! stream does not bring them back ([`crate::stream::deletion`]).

use crate::config::Config;
use crate::liveness::Liveness;
use crate::stream::shards::Streams;
use chrono::{DateTime, Utc};

/// The arguments of `sensorhub delete`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A sensor whose readings go (repeat for several).
    #[arg(long = "sensor", required = true)]
    pub sensors: Vec<String>,
    /// RFC 3339, inclusive (default: from the first reading).
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// RFC 3339, exclusive (default: through the last reading).
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
}

/// Deletes, and prints a line per sensor: its id and the readings removed.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    if let (Some(from), Some(to)) = (args.from, args.to)
        && to <= from
    {
        anyhow::bail!(
            "--to {} is not after --from {}: the range [from, to) is empty",
            to.to_rfc3339(),
            from.to_rfc3339()
        );
    }
    let target = crate::redis::target::parse_live(
        config.redis_url.expose(),
        &config.redis_tls,
        Liveness::new(config.network_timeout),
    )
    .map_err(|why| anyhow::anyhow!("SENSORHUB_REDIS_URL: {why}"))?;
    let mut conn = crate::redis::connection::Connection::open(
        &target,
        crate::redis::connection::TOOL_RESPONSE_TIMEOUT,
    )
    .await?;
    let pool = crate::store::connect(config.database_url.expose(), 1).await?;
    let sensors: Vec<&str> = args.sensors.iter().map(String::as_str).collect();
    let done = crate::stream::deletion::delete(
        &mut conn,
        &pool,
        &Streams::of(config),
        &config.resolutions,
        None,
        &sensors,
        (args.from, args.to),
    )
    .await?;
    for deleted in done {
        let left = if deleted.emptied {
            "\tno reading left"
        } else {
            ""
        };
        println!("{}\t{} deleted{left}", deleted.sensor_id, deleted.readings);
    }
    Ok(())
}
