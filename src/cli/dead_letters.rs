//! `sensorhub dead-letters ...`: what an operator does with dead letters, from the command line
//! ([`crate::stream::dead_letter::operate`] holds the operations, shared with the API).

use crate::liveness::Liveness;
use crate::stream::dead_letter::browse::Filter;
use crate::stream::dead_letter::operate::{DeadLetterStore, LetterId, Selection};
use crate::stream::shards::Streams;
use chrono::{DateTime, Utc};

/// `sensorhub dead-letters ...`: the same operations from the command line.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Letters, newest first, one per line: id, time, reason, detail, original bytes.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Letters older than this id (the last id of the previous page).
        #[arg(long)]
        after: Option<LetterId>,
    },
    /// Counts by reason, over the stream and the last hour.
    Summary,
    /// Replays letters into the stream, to be validated again with the current settings.
    Replay {
        #[command(flatten)]
        select: SelectArgs,
        /// Only check the letters against the current settings; move nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Deletes letters.
    Purge {
        #[command(flatten)]
        select: SelectArgs,
    },
}

/// Filters of the dead-letter commands.
#[derive(Clone, Debug, clap::Args)]
pub struct FilterArgs {
    /// The reason code, exactly.
    #[arg(long)]
    reason: Option<String>,
    /// Text the original bytes contain (a sensor id, a topic).
    #[arg(long)]
    sensor: Option<String>,
    /// Rejected at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<DateTime<Utc>>,
    /// Rejected at or before this time (RFC 3339).
    #[arg(long)]
    to: Option<DateTime<Utc>>,
}

impl From<FilterArgs> for Filter {
    fn from(args: FilterArgs) -> Self {
        Filter {
            reason: args.reason,
            sensor: args.sensor,
            from: args.from,
            to: args.to,
        }
    }
}

/// Which letters a replay or purge takes: ids, filters, or `--all`.
#[derive(Clone, Debug, clap::Args)]
pub struct SelectArgs {
    /// A letter's id (repeat for several); with sharded streams `<shard>/<entry id>`.
    #[arg(long = "id")]
    ids: Vec<LetterId>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Every letter (without ids or filters).
    #[arg(long)]
    all: bool,
}

impl SelectArgs {
    fn selection(self) -> anyhow::Result<Selection> {
        let filter = Filter::from(self.filter);
        match (self.ids.is_empty(), filter.is_empty(), self.all) {
            (false, true, false) => Ok(Selection::Ids(self.ids)),
            (true, false, false) | (true, true, true) => Ok(Selection::Matching(filter)),
            (true, true, false) => anyhow::bail!("name the letters: --id, a filter, or --all"),
            _ => anyhow::bail!("give --id, filters or --all, one of them"),
        }
    }
}

/// Runs a dead-letter command against the configured Redis and stream, printing to stdout and
/// progress to stderr.
pub async fn run(config: &crate::config::Config, command: Command) -> anyhow::Result<()> {
    let target = crate::redis::target::parse_live(
        config.redis_url.expose(),
        &config.redis_tls,
        Liveness::new(config.network_timeout),
    )
    .map_err(|why| anyhow::anyhow!("SENSORHUB_REDIS_URL: {why}"))?;
    let conn = crate::redis::connection::Connection::open(
        &target,
        crate::redis::connection::TOOL_RESPONSE_TIMEOUT,
    )
    .await?;
    let mut store = DeadLetterStore::new(conn, &Streams::of(config));
    let check = |store: &DeadLetterStore<_>, ids: &[LetterId]| {
        ids.iter()
            .try_for_each(|id| store.check(id))
            .map_err(|why| anyhow::anyhow!(why))
    };
    let mut out = std::io::stdout().lock();
    use std::io::Write as _;
    match command {
        Command::List {
            filter,
            limit,
            after,
        } => {
            check(&store, after.as_slice())?;
            let page = store.list(&filter.into(), after, limit).await?;
            for letter in &page.letters {
                let data = letter
                    .data
                    .as_deref()
                    .map(|d| crate::domain::reading::excerpt(&String::from_utf8_lossy(d)))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{data}",
                    LetterId::of(letter),
                    letter.id.time().to_rfc3339(),
                    letter.reason,
                    letter.detail
                )?;
            }
            if let Some(next) = page.next {
                eprintln!("more: --after {next}");
            }
        }
        Command::Summary => {
            let summary = store.summary(Utc::now()).await?;
            writeln!(out, "reason\tall\tlast hour")?;
            for (reason, count) in &summary.by_reason {
                let recent = summary.recent.get(reason).copied().unwrap_or(0);
                writeln!(out, "{reason}\t{count}\t{recent}")?;
            }
            writeln!(out, "total\t{}", summary.total)?;
        }
        Command::Replay { select, dry_run } => {
            check(&store, &select.ids)?;
            let selection = select.selection()?;
            let started = std::time::Instant::now();
            let mut last_line = std::time::Instant::now();
            let report = store
                .replay(&selection, &config.limits, dry_run, |moved| {
                    if last_line.elapsed() >= std::time::Duration::from_secs(1) {
                        eprintln!(
                            "replay: {moved} letters moved ({:.0}/s)",
                            moved as f64 / started.elapsed().as_secs_f64()
                        );
                        last_line = std::time::Instant::now();
                    }
                })
                .await?;
            writeln!(
                out,
                "selected {}, replayed {}{}; readings valid now {}, rejected again {}",
                report.selected,
                report.replayed,
                if dry_run { " (dry run)" } else { "" },
                report.valid,
                report.rejected.values().sum::<usize>()
            )?;
            for (reason, count) in &report.rejected {
                writeln!(out, "  {reason}\t{count}")?;
            }
        }
        Command::Purge { select } => {
            check(&store, &select.ids)?;
            let deleted = store.purge(&select.selection()?).await?;
            writeln!(out, "deleted {deleted}")?;
        }
    }
    Ok(())
}
