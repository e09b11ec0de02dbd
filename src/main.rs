//! The `sensorhub` binary: `serve` (the default) runs the service; `healthcheck` exits 0 when the
//! local instance is ready (for a container `HEALTHCHECK`, no curl needed); `simulate` publishes
//! demo sensor readings; `dead-letters` lists, counts, replays and purges the dead letters; `export` streams readings or windows as CSV or NDJSON; `delete` deletes readings in a range; `compact` compacts closed partitions now. Configuration comes from `SENSORHUB_*` variables (see the README).

use clap::{Parser, Subcommand};
use sensorhub::cli::ops::{compact, healthcheck, rename_stream};
use sensorhub::cli::simulate::{self, Simulation, Via};
use sensorhub::{Application, Config, telemetry};

use std::process::ExitCode;

/// jemalloc instead of glibc's malloc: the pipeline makes many small short-lived allocations
/// (reply values, strings, batch vectors freed on other threads), the pattern where glibc's
/// malloc and free are slowest (`docs/performance.md`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "sensorhub",
    version,
    about = "Sensor readings from Redis into PostgreSQL, exactly once",
    after_help = "Configuration: SENSORHUB_* environment variables (see the README)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Exit 0 when the local instance answers /readyz with 200.
    Healthcheck,
    /// Publish demo sensor readings (thermometers, hygrometers, energy meters).
    Simulate {
        /// Number of simulated sensors.
        #[arg(long, default_value_t = 10)]
        sensors: u32,
        /// Readings per second, over all sensors.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Stop after this many readings (default: run until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
        /// XADD to SENSORHUB_STREAM, PUBLISH to SENSORHUB_CHANNEL, MQTT to sensors/<sensor> on
        /// SENSORHUB_MQTT_URL, or line protocol to /api/v2/write on SENSORHUB_HTTP_ADDR (ids
        /// <sensor>.value).
        #[arg(long, value_enum, default_value_t = Via::Xadd)]
        via: Via,
        /// Sensor ids are <prefix>-<kind>-<n>.
        #[arg(long, default_value = "sim")]
        prefix: String,
    },
    /// List, count, replay or purge the dead letters of SENSORHUB_STREAM.
    #[command(subcommand)]
    DeadLetters(sensorhub::cli::dead_letters::Command),
    /// Stream raw readings or windows as CSV or NDJSON, as GET /api/v1/export does.
    Export(sensorhub::cli::export::Args),
    /// Delete readings in [from, to), as POST /api/v1/delete does.
    Delete(sensorhub::cli::delete::Args),
    /// Compact now the partitions older than SENSORHUB_COMPACT_AFTER, as the service does every
    /// ten minutes; prints each partition, its readings, the rows written and the seconds.
    Compact,
    /// Rename SENSORHUB_STREAM and every key beside it (dead letters, ledger, leases), e.g. to
    /// give them a hash tag before moving to a Redis Cluster. Stop every instance first.
    RenameStream {
        /// The new name, e.g. {sensor_stream}.
        #[arg(long)]
        to: String,
    },
}

/// Runs a tool subcommand to its end on a runtime of its own; an error is one line.
fn run_tool(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sensorhub: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sensorhub: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::RenameStream { to } => run_tool(rename_stream(&config, &to)),
        Command::DeadLetters(command) => {
            run_tool(sensorhub::cli::dead_letters::run(&config, command))
        }
        Command::Export(args) => {
            run_tool(async { sensorhub::cli::export::run(&config, args).await.map(drop) })
        }
        Command::Delete(args) => run_tool(sensorhub::cli::delete::run(&config, args)),
        Command::Compact => run_tool(compact(&config)),
        Command::Healthcheck => healthcheck(config.http_addr),
        Command::Simulate {
            sensors,
            rate,
            count,
            via,
            prefix,
        } => {
            let sim = Simulation {
                sensors,
                rate,
                count,
                via,
                prefix,
            };
            // actix's system: the HTTP client (awc) of `--via line-protocol` runs on it.
            match actix_web::rt::System::new().block_on(simulate::run(&config, &sim)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("sensorhub: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(config: Config) -> ExitCode {
    telemetry::init_logging(&config.log_filter);
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config).await?;
        app.run_until_stopped().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sensorhub: {error:#}");
            ExitCode::FAILURE
        }
    }
}
