//! `sensorhub export`: what `GET /api/v1/export` streams, straight from PostgreSQL
//! (`SENSORHUB_DATABASE_READ_URL` when set, else `SENSORHUB_DATABASE_URL`) to a file or standard
//! output, with a progress line on standard error.

use crate::config::Config;
use crate::store::export::{Export, Format, Layout, WindowSpec, field};
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The arguments of `sensorhub export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A sensor to export (repeat for several).
    #[arg(long = "sensor", required = true)]
    pub sensors: Vec<String>,
    /// RFC 3339, inclusive (default: from the first reading).
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// RFC 3339, inclusive (default: to the last reading).
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
    /// Windows instead of raw readings: a stored resolution, or 1d, 1w, 1mo, 1y.
    #[arg(long)]
    pub resolution: Option<String>,
    /// IANA time zone of calendar windows.
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// csv or ndjson.
    #[arg(long, default_value = "csv")]
    pub format: String,
    /// long (a row per reading or window) or wide (a ts column and a column per sensor).
    #[arg(long, default_value = "long")]
    pub layout: String,
    /// The windows' field in the wide layout.
    #[arg(long, default_value = "mean")]
    pub field: String,
    /// Write here instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

impl Args {
    fn export(self) -> anyhow::Result<(Export, Option<PathBuf>)> {
        let format: Format = self
            .format
            .parse()
            .map_err(|why| anyhow::anyhow!("--format {:?} {why}", self.format))?;
        let layout: Layout = self
            .layout
            .parse()
            .map_err(|why| anyhow::anyhow!("--layout {:?} {why}", self.layout))?;
        let field =
            field(&self.field).map_err(|why| anyhow::anyhow!("--field {:?} {why}", self.field))?;
        let windows = self.resolution.map(|resolution| WindowSpec {
            resolution,
            tz: self.tz,
            field,
        });
        let export = Export {
            sensors: self.sensors,
            from: self.from,
            to: self.to,
            windows,
            format,
            layout,
        };
        Ok((export, self.output))
    }
}

/// Runs the export; returns the rows written (the header not counted).
pub async fn run(config: &Config, args: Args) -> anyhow::Result<u64> {
    let (export, output) = args.export()?;
    let url = config
        .database_read_url
        .as_ref()
        .unwrap_or(&config.database_url);
    let pool = crate::store::connect(url.expose(), 1).await?;
    let client = pool.get().await?;
    let header = export.format == Format::Csv;
    let mut out: Box<dyn std::io::Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut stream = std::pin::pin!(export.stream(client));
    let (started, mut shown) = (Instant::now(), Instant::now());
    let mut lines: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        lines += bytecount(&chunk);
        out.write_all(&chunk)?;
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            progress(lines, header, started);
        }
    }
    out.flush()?;
    progress(lines, header, started);
    eprintln!();
    Ok(lines.saturating_sub(u64::from(header)))
}

fn bytecount(chunk: &[u8]) -> u64 {
    chunk.iter().filter(|&&b| b == b'\n').count() as u64
}

fn progress(lines: u64, header: bool, started: Instant) {
    let rows = lines.saturating_sub(u64::from(header));
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    eprint!(
        "\rexported {rows} rows in {seconds:.1} s ({:.0} rows/s)",
        rows as f64 / seconds
    );
}
