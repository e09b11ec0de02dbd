//! What an operator does with dead letters, for the API and `sensorhub dead-letters` alike:
//! list and count them, replay them into the stream after fixing the cause, purge them.

use crate::domain::Limits;
use crate::pipeline::validate::parse_batch;
use crate::redis::dead_letter::browse::{self, Filter, Letter, Page, Summary};
use crate::redis::dead_letter::replay;
use crate::redis::entry::{EntryId, StreamEntry};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::RedisResult;
use redis::aio::ConnectionLike;
use std::collections::BTreeMap;

/// The dead letters of one stream.
pub struct DeadLetterStore<C> {
    pub conn: C,
    /// The stream letters are replayed into.
    pub stream: String,
    /// `<stream>:dead`.
    pub dead: String,
}

/// Which letters an operation applies to.
#[derive(Clone, Debug)]
pub enum Selection {
    Ids(Vec<EntryId>),
    Matching(Filter),
}

/// What a replay did, or with `dry_run` would do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Letters selected.
    pub selected: usize,
    /// Letters moved into the stream (0 in a dry run).
    pub replayed: usize,
    /// Readings in them that pass validation with the current settings (stored, unless already
    /// stored: a repeat is skipped as a duplicate).
    pub valid: usize,
    /// Readings that fail again, by their reason now.
    pub rejected: BTreeMap<String, usize>,
}

impl<C: ConnectionLike> DeadLetterStore<C> {
    pub fn new(conn: C, stream: &str) -> Self {
        Self {
            conn,
            stream: stream.to_owned(),
            dead: format!("{stream}:dead"),
        }
    }

    pub async fn list(
        &mut self,
        filter: &Filter,
        after: Option<EntryId>,
        limit: usize,
    ) -> RedisResult<Page> {
        browse::list(&mut self.conn, &self.dead, filter, after, limit).await
    }

    /// Counts by reason, over the stream and the last hour.
    pub async fn summary(&mut self, now: DateTime<Utc>) -> RedisResult<Summary> {
        browse::summary(
            &mut self.conn,
            &self.dead,
            now - chrono::TimeDelta::hours(1),
        )
        .await
    }

    /// The letters a selection names, oldest first (ids in the order given).
    pub async fn select(&mut self, selection: &Selection) -> RedisResult<Vec<Letter>> {
        match selection {
            Selection::Ids(ids) => browse::by_ids(&mut self.conn, &self.dead, ids).await,
            Selection::Matching(filter) => {
                browse::select(&mut self.conn, &self.dead, filter, usize::MAX).await
            }
        }
    }

    /// Replays the selected letters (or, with `dry_run`, only checks them against `limits`).
    /// `progress` hears how many were moved so far.
    pub async fn replay(
        &mut self,
        selection: &Selection,
        limits: &Limits,
        dry_run: bool,
        progress: impl FnMut(usize),
    ) -> RedisResult<ReplayReport> {
        let letters = self.select(selection).await?;
        let mut report = check(&letters, limits);
        if !dry_run {
            report.replayed =
                replay::replay(&mut self.conn, &self.dead, &self.stream, &letters, progress)
                    .await?;
        }
        Ok(report)
    }

    /// Deletes the selected letters; returns how many there were.
    pub async fn purge(&mut self, selection: &Selection) -> RedisResult<usize> {
        let ids: Vec<EntryId> = match selection {
            Selection::Ids(ids) => ids.clone(),
            Selection::Matching(_) => self
                .select(selection)
                .await?
                .into_iter()
                .map(|l| l.id)
                .collect(),
        };
        replay::purge(&mut self.conn, &self.dead, &ids).await
    }
}

/// How the letters fare against `limits` now: read as their replayed entries will be.
pub fn check(letters: &[Letter], limits: &Limits) -> ReplayReport {
    let entries: Vec<StreamEntry> = letters
        .iter()
        .filter_map(|letter| {
            let fields = replay::entry_fields(letter)?;
            Some(StreamEntry {
                id: letter.id,
                fields: Some(
                    fields
                        .into_iter()
                        .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                        .collect(),
                ),
            })
        })
        .collect();
    let (readings, _, rejected) = parse_batch(&entries, limits);
    let mut report = ReplayReport {
        selected: letters.len(),
        valid: readings.len(),
        ..ReplayReport::default()
    };
    for letter in rejected {
        *report
            .rejected
            .entry(letter.rejection.reason.to_string())
            .or_default() += 1;
    }
    report
}

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
        after: Option<EntryId>,
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
    /// A letter's id (repeat for several).
    #[arg(long = "id")]
    ids: Vec<EntryId>,
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
    let target = crate::redis::target::parse(config.redis_url.expose(), &config.redis_tls)
        .map_err(|why| anyhow::anyhow!("SENSORHUB_REDIS_URL: {why}"))?;
    let conn = crate::redis::connection::Connection::open(
        &target,
        crate::redis::connection::TOOL_RESPONSE_TIMEOUT,
    )
    .await?;
    let mut store = DeadLetterStore::new(conn, &config.stream);
    let mut out = std::io::stdout().lock();
    use std::io::Write as _;
    match command {
        Command::List {
            filter,
            limit,
            after,
        } => {
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
                    letter.id,
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
            let deleted = store.purge(&select.selection()?).await?;
            writeln!(out, "deleted {deleted}")?;
        }
    }
    Ok(())
}
