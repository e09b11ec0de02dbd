//! What an operator does with dead letters, for the API and `sensorhub dead-letters` alike:
//! list and count them, replay them into the stream after fixing the cause, purge them.

use crate::domain::Limits;
use crate::domain::fields;
use crate::domain::reading::sparkplug::Topic;
use crate::domain::shard::StreamShard;
use crate::redis::entry::{EntryId, StreamEntry};
use crate::stream::dead_letter::browse::{self, Filter, Letter, Summary};
use crate::stream::dead_letter::replay;
use crate::stream::mqtt_session::SessionKeys;
use crate::stream::parse::parse_batch;
use crate::stream::shards::Streams;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::RedisResult;
use redis::aio::ConnectionLike;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A dead letter's id as operators see it: its entry id in its dead-letter stream, and with
/// sharded streams the shard before it, `3/1733054400000-0` (entry ids of different shards'
/// dead-letter streams can be equal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LetterId {
    /// First, so that letters order by time across shards.
    pub id: EntryId,
    pub shard: Option<usize>,
}

impl LetterId {
    pub fn of(letter: &Letter) -> Self {
        LetterId {
            id: letter.id,
            shard: letter.shard,
        }
    }
}

impl fmt::Display for LetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shard {
            Some(shard) => write!(f, "{shard}/{}", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

impl FromStr for LetterId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let not_an_id = || {
            format!(
                "{} is not a dead letter id such as 1733054400000-0 (or 3/1733054400000-0 with \
                 sharded streams)",
                crate::domain::reading::excerpt(text)
            )
        };
        let (shard, id) = match text.split_once('/') {
            Some((shard, id)) => (Some(shard.parse().map_err(|_| not_an_id())?), id),
            None => (None, text),
        };
        let id = id.parse().map_err(|_| not_an_id())?;
        Ok(LetterId { id, shard })
    }
}

/// The dead letters of a stream, or of every shard of it.
pub struct DeadLetterStore<C> {
    pub conn: C,
    /// Per stream (one, or each shard): the stream letters are replayed into, and
    /// `<stream>:dead`.
    streams: Vec<(String, String)>,
}

/// Which letters an operation applies to.
#[derive(Clone, Debug)]
pub enum Selection {
    Ids(Vec<LetterId>),
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

/// A page of letters, newest first (across shards: by id, then shard), and the cursor of the
/// next (older) page if there may be one.
#[derive(Debug, Default)]
pub struct Page {
    pub letters: Vec<Letter>,
    pub next: Option<LetterId>,
}

impl<C: ConnectionLike + Clone> DeadLetterStore<C> {
    pub fn new(conn: C, streams: &Streams) -> Self {
        Self {
            conn,
            streams: streams
                .all()
                .iter()
                .map(|stream| (stream.clone(), format!("{stream}:dead")))
                .collect(),
        }
    }

    fn sharded(&self) -> bool {
        self.streams.len() > 1
    }

    /// Whether `id` names a letter of these streams: with shards, a shard below their count;
    /// without, no shard. The error says which form is expected.
    pub fn check(&self, id: &LetterId) -> Result<(), String> {
        match (id.shard, self.sharded()) {
            (Some(shard), true) if shard < self.streams.len() => Ok(()),
            (None, false) => Ok(()),
            (_, true) => Err(format!(
                "{id} names no shard: with {} shards a dead letter id is <shard>/<entry id>, \
                 the shard from 0 to {}",
                self.streams.len(),
                self.streams.len() - 1
            )),
            (Some(_), false) => Err(format!(
                "{id} names a shard, but the stream is not sharded: give the entry id alone"
            )),
        }
    }

    /// The index of the stream `id` is in.
    fn index(&self, id: &LetterId) -> usize {
        id.shard.unwrap_or(0).min(self.streams.len() - 1)
    }

    /// The letters read from stream `index`, marked with their shard.
    fn marked(&self, index: usize, mut letters: Vec<Letter>) -> Vec<Letter> {
        if self.sharded() {
            for letter in &mut letters {
                letter.shard = Some(index);
            }
        }
        letters
    }

    pub async fn list(
        &mut self,
        filter: &Filter,
        after: Option<LetterId>,
        limit: usize,
    ) -> RedisResult<Page> {
        let mut letters = Vec::new();
        let mut more = false;
        for index in 0..self.streams.len() {
            // Older than the cursor: an earlier id, or the same id in a lower shard.
            let before = after.map(|a| match a.shard {
                Some(shard) if index < shard => a.id.successor(),
                _ => a.id,
            });
            let dead = &self.streams[index].1;
            let page = browse::list(&mut self.conn, dead, filter, before, limit).await?;
            more |= page.next.is_some();
            letters.extend(self.marked(index, page.letters));
        }
        letters.sort_by_key(|letter| std::cmp::Reverse(LetterId::of(letter)));
        more |= letters.len() > limit;
        letters.truncate(limit);
        let next = if more {
            letters.last().map(LetterId::of)
        } else {
            None
        };
        Ok(Page { letters, next })
    }

    /// Counts by reason, over every stream and the last hour.
    pub async fn summary(&mut self, now: DateTime<Utc>) -> RedisResult<Summary> {
        let since = now - chrono::TimeDelta::hours(1);
        let mut total = Summary::default();
        for (_, dead) in &self.streams {
            let summary = browse::summary(&mut self.conn, dead, since).await?;
            total.total += summary.total;
            for (reason, count) in summary.by_reason {
                *total.by_reason.entry(reason).or_default() += count;
            }
            for (reason, count) in summary.recent {
                *total.recent.entry(reason).or_default() += count;
            }
        }
        Ok(total)
    }

    /// The letters `ids` name that still exist, in the order given.
    async fn by_ids(&mut self, ids: &[LetterId]) -> RedisResult<Vec<Letter>> {
        let mut letters = Vec::new();
        for id in ids {
            let index = self.index(id);
            let dead = &self.streams[index].1;
            let found = browse::by_ids(&mut self.conn, dead, &[id.id]).await?;
            letters.extend(self.marked(index, found));
        }
        Ok(letters)
    }

    /// The next page of letters a selection names, from `cursor` on: ids all at once, matching
    /// ones [`PAGE`] at a time, oldest first, stream by stream, up to the newest letter each
    /// stream held when the cursor began (letters that fail again after a replay come after it,
    /// and are not selected again). Empty once every page was given.
    async fn next_page(
        &mut self,
        selection: &Selection,
        cursor: &mut Cursor,
    ) -> RedisResult<Vec<Letter>> {
        let filter = match selection {
            Selection::Ids(ids) if !cursor.done => {
                cursor.done = true;
                return self.by_ids(ids).await;
            }
            Selection::Ids(_) => return Ok(Vec::new()),
            Selection::Matching(filter) => filter,
        };
        while cursor.stream < self.streams.len() {
            let index = cursor.stream;
            let dead = self.streams[index].1.clone();
            if cursor.until.is_none() {
                match browse::newest(&mut self.conn, &dead).await? {
                    Some(newest) => cursor.until = Some(newest),
                    None => {
                        cursor.next_stream();
                        continue;
                    }
                }
            }
            let range = (cursor.after, cursor.until);
            let page = browse::select(&mut self.conn, &dead, filter, range, PAGE).await?;
            match page.last() {
                Some(last) if page.len() == PAGE => cursor.after = Some(last.id),
                _ => cursor.next_stream(),
            }
            if !page.is_empty() {
                return Ok(self.marked(index, page));
            }
        }
        Ok(Vec::new())
    }

    /// Every letter a selection names: ids in the order given; matching ones oldest first, stream
    /// by stream.
    pub async fn select(&mut self, selection: &Selection) -> RedisResult<Vec<Letter>> {
        let mut cursor = Cursor::default();
        let mut letters = Vec::new();
        loop {
            let page = self.next_page(selection, &mut cursor).await?;
            if page.is_empty() {
                return Ok(letters);
            }
            letters.extend(page);
        }
    }

    /// Replays the selected letters, each into the stream whose dead letter it is (or, with
    /// `dry_run`, only checks them against `limits`), a page at a time: a replay of every letter
    /// holds one page in memory, not the whole dead-letter stream. `progress` hears how many
    /// were moved so far.
    pub async fn replay(
        &mut self,
        selection: &Selection,
        limits: &Limits,
        dry_run: bool,
        mut progress: impl FnMut(usize),
    ) -> RedisResult<ReplayReport> {
        let mut report = ReplayReport::default();
        let mut cursor = Cursor::default();
        loop {
            let mut page = self.next_page(selection, &mut cursor).await?;
            if page.is_empty() {
                return Ok(report);
            }
            self.name_sparkplug_aliases(&mut page).await?;
            report.add(check(&page, limits));
            if dry_run {
                continue;
            }
            let letters = by_stream(page.into_iter().map(|l| (l.shard.unwrap_or(0), l)));
            for (index, letters) in letters {
                let (stream, dead) = &self.streams[index];
                let before = report.replayed;
                report.replayed +=
                    replay::replay(&mut self.conn, dead, stream, &letters, |moved| {
                        progress(before + moved)
                    })
                    .await?;
            }
        }
    }

    /// A Sparkplug B letter the source could not read (an alias no BIRTH had given, a `seq`
    /// gap) is replayed with the names of its node's last BIRTH, recorded since; without them it
    /// is refused again, saying so.
    async fn name_sparkplug_aliases(&mut self, letters: &mut [Letter]) -> RedisResult<()> {
        let keys = SessionKeys::beside(self.streams[0].0.as_str());
        for letter in letters {
            let field = |name: &str| letter.fields.iter().position(|(n, _)| n == name);
            let (Some(unread), Some(topic)) = (field(fields::UNREAD), field(fields::TOPIC)) else {
                continue;
            };
            let topic = String::from_utf8_lossy(&letter.fields[topic].1).into_owned();
            let Some(node) = Topic::parse(&topic).map(|t| format!("{}/{}", t.group, t.node)) else {
                continue;
            };
            let Some(names) = keys.sparkplug_names(&mut self.conn, &node).await? else {
                continue;
            };
            letter.fields.remove(unread);
            letter.fields.retain(|(name, _)| name != fields::NAMES);
            letter
                .fields
                .push((fields::NAMES.to_owned(), names.into_bytes()));
        }
        Ok(())
    }

    /// Deletes the selected letters, a page at a time; returns how many there were.
    pub async fn purge(&mut self, selection: &Selection) -> RedisResult<usize> {
        let mut deleted = 0;
        let mut cursor = Cursor::default();
        loop {
            let ids: Vec<(usize, EntryId)> = match selection {
                Selection::Ids(ids) if !cursor.done => {
                    cursor.done = true;
                    ids.iter().map(|id| (self.index(id), id.id)).collect()
                }
                Selection::Ids(_) => Vec::new(),
                Selection::Matching(_) => self
                    .next_page(selection, &mut cursor)
                    .await?
                    .iter()
                    .map(|letter| (letter.shard.unwrap_or(0), letter.id))
                    .collect(),
            };
            if ids.is_empty() {
                return Ok(deleted);
            }
            for (index, ids) in by_stream(ids) {
                deleted += replay::purge(&mut self.conn, &self.streams[index].1, &ids).await?;
            }
        }
    }
}

/// Letters a page of a replay or purge holds.
const PAGE: usize = replay::BATCH * 5;

/// Where paging through a selection stands.
#[derive(Debug, Default)]
struct Cursor {
    /// The stream being paged through, by index.
    stream: usize,
    /// The last letter given of that stream.
    after: Option<EntryId>,
    /// The newest letter that stream held when its paging began.
    until: Option<EntryId>,
    /// A selection of ids is given in one page.
    done: bool,
}

impl ReplayReport {
    /// Adds a page's report to this one.
    fn add(&mut self, page: ReplayReport) {
        self.selected += page.selected;
        self.replayed += page.replayed;
        self.valid += page.valid;
        for (reason, count) in page.rejected {
            *self.rejected.entry(reason).or_default() += count;
        }
    }
}

impl Cursor {
    fn next_stream(&mut self) {
        self.stream += 1;
        self.after = None;
        self.until = None;
    }
}

/// Items grouped by the index of the stream they belong to, in their order within each.
fn by_stream<T>(items: impl IntoIterator<Item = (usize, T)>) -> BTreeMap<usize, Vec<T>> {
    let mut grouped: BTreeMap<usize, Vec<T>> = BTreeMap::new();
    for (index, item) in items {
        grouped.entry(index).or_default().push(item);
    }
    grouped
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
    let (readings, _, rejected) = parse_batch(&entries, limits, StreamShard::WHOLE);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letter_ids_name_their_shard_and_order_by_time_then_shard() {
        let id: LetterId = "3/1733054400000-2".parse().unwrap();
        assert_eq!(id.shard, Some(3));
        assert_eq!(id.id.to_string(), "1733054400000-2");
        assert_eq!(id.to_string(), "3/1733054400000-2");
        let plain: LetterId = "1733054400000-2".parse().unwrap();
        assert_eq!(
            (plain.shard, plain.to_string()),
            (None, "1733054400000-2".into())
        );
        for bad in ["x/1-0", "3/", "/1-0", "3/x", ""] {
            let error = bad.parse::<LetterId>().unwrap_err();
            assert!(error.contains("not a dead letter id"), "{bad}: {error}");
        }
        let at = |text: &str| text.parse::<LetterId>().unwrap();
        assert!(at("2/5-1") > at("1/5-1"));
        assert!(at("0/5-2") > at("3/5-1"));
    }
}
