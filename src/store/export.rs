//! Export: raw readings or windows of some sensors as CSV or NDJSON, long (a row per reading or
//! window) or wide (a `ts` column and a column per sensor), streamed from a PostgreSQL cursor a
//! few thousand rows at a time, so memory stays flat however many rows there are. The read API's
//! `GET /api/v1/export` and `sensorhub export` both stream [`Export::stream`].

use bytes::Bytes;
use chrono::{DateTime, FixedOffset, Offset as _, SecondsFormat, Utc};
use futures_util::Stream;

/// Rows fetched from the cursor per chunk of output.
const FETCH: i64 = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Long,
    Wide,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "csv" => Ok(Format::Csv),
            "ndjson" => Ok(Format::Ndjson),
            _ => Err("is not csv or ndjson".to_owned()),
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "long" => Ok(Layout::Long),
            "wide" => Ok(Layout::Wide),
            _ => Err("is not long or wide".to_owned()),
        }
    }
}

/// The window field named `text`, for the wide layout's cells.
pub fn field(text: &str) -> Result<String, String> {
    if WINDOW_FIELDS[..10].contains(&text) {
        Ok(text.to_owned())
    } else {
        Err(format!("is not one of {}", WINDOW_FIELDS[..10].join(", ")))
    }
}

/// Window fields, in the order of the long layout's columns.
pub const WINDOW_FIELDS: [&str; 11] = [
    "count",
    "sum",
    "min",
    "max",
    "mean",
    "first_value",
    "last_value",
    "diff",
    "increase",
    "rate",
    "bucket_end",
];

/// Windows instead of raw readings.
#[derive(Clone, Debug)]
pub struct WindowSpec {
    /// A stored resolution, or `1d`, `1w`, `1mo`, `1y`.
    pub resolution: String,
    /// IANA zone of calendar windows and of the offsets written.
    pub tz: String,
    /// The field of the wide layout's cells (one of [`WINDOW_FIELDS`] but `bucket_end`).
    pub field: String,
}

/// What to export.
#[derive(Clone, Debug)]
pub struct Export {
    pub sensors: Vec<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub windows: Option<WindowSpec>,
    pub format: Format,
    pub layout: Layout,
}

/// One row from the cursor: the sensor, the time (with the zone's offset for windows) and the
/// values in column order (`value` for readings, [`WINDOW_FIELDS`] but `bucket_end` for windows).
struct Row {
    sensor: String,
    at: String,
    values: Vec<Option<f64>>,
    bucket_end: Option<String>,
}

impl Export {
    /// The cursor's query and whether its rows are windows.
    fn query(&self) -> String {
        match &self.windows {
            // Each sensor's span read from both stores, unpacking only the compacted days in
            // the range.
            None => format!(
                "SELECT s.id, r.ts, r.value
                 FROM (SELECT DISTINCT id COLLATE \"C\" AS id FROM unnest($1::text[]) AS u(id)) s
                 CROSS JOIN LATERAL sensorhub_span(
                     s.id, coalesce($2::timestamptz, '-infinity'),
                     coalesce($3::timestamptz, 'infinity') + interval '1 microsecond') r
                 ORDER BY {}",
                match self.layout {
                    Layout::Long => "s.id, r.ts",
                    Layout::Wide => "r.ts, s.id",
                }
            ),
            Some(_) => format!(
                "SELECT s.sensor, w.bucket,
                        sensorhub_utc_offset(w.bucket, $5),
                        w.count::float8, w.sum, w.min, w.max, w.mean, w.first_value, w.last_value,
                        w.diff, w.increase, w.rate, w.bucket_end,
                        sensorhub_utc_offset(w.bucket_end, $5),
                        s.n
                 FROM unnest($1::text[]) WITH ORDINALITY AS s(sensor, n),
                      LATERAL sensorhub_windows(s.sensor, $2, $3, $4, $5, 'none') w
                 ORDER BY {}",
                match self.layout {
                    Layout::Long => "s.n, w.bucket",
                    Layout::Wide => "w.bucket, s.n",
                }
            ),
        }
    }

    /// The export as chunks of bytes, the header first. `client` is used for nothing else
    /// meanwhile; a stream dropped before its end takes the connection out of its pool (it is
    /// in the middle of a transaction).
    pub fn stream(
        self,
        client: deadpool_postgres::Object,
    ) -> impl Stream<Item = Result<Bytes, tokio_postgres::Error>> + 'static {
        let state = State {
            client: Some(client),
            csv: Some(csv_writer()),
            json: Vec::new(),
            export: self,
            started: false,
            finished: false,
            wide: None,
        };
        futures_util::stream::try_unfold(state, |mut state| async move {
            let chunk = state.next_chunk().await?;
            Ok(chunk.map(|chunk| (chunk, state)))
        })
    }

    /// The CSV header's fields (NDJSON has none).
    fn header(&self) -> Vec<&str> {
        match (self.layout, &self.windows) {
            (Layout::Long, None) => vec!["sensor_id", "ts", "value"],
            (Layout::Long, Some(_)) => ["sensor_id", "bucket", "bucket_end"]
                .into_iter()
                .chain(WINDOW_FIELDS[..10].iter().copied())
                .collect(),
            (Layout::Wide, _) => std::iter::once("ts")
                .chain(self.sensors.iter().map(String::as_str))
                .collect(),
        }
    }
}

struct State {
    client: Option<deadpool_postgres::Object>,
    /// CSV output of the chunk being made (RFC 4180 quoting of any sensor id).
    csv: Option<csv::Writer<Vec<u8>>>,
    /// NDJSON output of the chunk being made.
    json: Vec<u8>,
    export: Export,
    started: bool,
    finished: bool,
    /// The wide layout's row being gathered: its time and a cell per sensor.
    wide: Option<(String, Vec<Option<f64>>)>,
}

impl Drop for State {
    fn drop(&mut self) {
        if !self.finished
            && let Some(client) = self.client.take()
        {
            // Mid-transaction: closed rather than handed to the next caller.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl State {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, tokio_postgres::Error> {
        if self.finished {
            return Ok(None);
        }
        let Some(client) = self.client.take() else {
            return Ok(None);
        };
        match self.step(&client).await {
            Ok(chunk) => {
                self.client = Some(client);
                Ok(chunk)
            }
            Err(error) => {
                // Mid-transaction: closed rather than handed to the next caller.
                drop(deadpool_postgres::Object::take(client));
                Err(error)
            }
        }
    }

    async fn step(
        &mut self,
        client: &deadpool_postgres::Object,
    ) -> Result<Option<Bytes>, tokio_postgres::Error> {
        if !self.started {
            self.started = true;
            client.batch_execute("BEGIN READ ONLY").await?;
            let query = format!(
                "DECLARE export NO SCROLL CURSOR FOR {}",
                self.export.query()
            );
            let (sensors, from, to) = (&self.export.sensors, &self.export.from, &self.export.to);
            match &self.export.windows {
                None => client.execute(&query, &[sensors, from, to]).await?,
                Some(w) => {
                    client
                        .execute(&query, &[sensors, from, to, &w.resolution, &w.tz])
                        .await?
                }
            };
            if self.export.format == Format::Csv {
                let header: Vec<String> = self
                    .export
                    .header()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                self.record(header.iter().map(String::as_str));
            }
        }
        let rows = client
            .query(&format!("FETCH {FETCH} FROM export"), &[])
            .await?;
        if rows.is_empty() {
            client.batch_execute("COMMIT").await?;
            self.finished = true;
            if let Some((at, cells)) = self.wide.take() {
                self.write_wide(&at, &cells);
            }
            let out = self.take();
            return Ok((!out.is_empty()).then(|| Bytes::from(out)));
        }
        let windows = self.export.windows.is_some();
        for row in &rows {
            let row = if windows {
                Row {
                    sensor: row.get(0),
                    at: at_offset(row.get(1), row.get(2)),
                    values: (3..13).map(|i| row.get(i)).collect(),
                    bucket_end: Some(at_offset(row.get(13), row.get(14))),
                }
            } else {
                Row {
                    sensor: row.get(0),
                    // Always six digits: the times of one sensor sort as text too.
                    at: row
                        .get::<_, DateTime<Utc>>(1)
                        .to_rfc3339_opts(SecondsFormat::Micros, true),
                    values: vec![Some(row.get(2))],
                    bucket_end: None,
                }
            };
            self.write(row);
        }
        Ok(Some(Bytes::from(self.take())))
    }

    /// The chunk made so far.
    fn take(&mut self) -> Vec<u8> {
        // Writing to memory cannot fail.
        let mut out = self
            .csv
            .replace(csv_writer())
            .and_then(|csv| csv.into_inner().ok())
            .unwrap_or_default();
        out.append(&mut self.json);
        out
    }

    fn record<'a>(&mut self, fields: impl Iterator<Item = &'a str>) {
        if let Some(csv) = self.csv.as_mut() {
            let _ = csv.write_record(fields);
        }
    }

    fn json_line(&mut self, object: serde_json::Map<String, serde_json::Value>) {
        let _ = serde_json::to_writer(&mut self.json, &serde_json::Value::Object(object));
        self.json.push(b'\n');
    }

    fn write(&mut self, row: Row) {
        match self.export.layout {
            Layout::Long => match self.export.format {
                Format::Csv => {
                    let numbers: Vec<String> = row.values.iter().map(|v| number(*v)).collect();
                    let mut fields: Vec<&str> = vec![&row.sensor, &row.at];
                    if let Some(end) = &row.bucket_end {
                        fields.push(end);
                    }
                    fields.extend(numbers.iter().map(String::as_str));
                    self.record(fields.into_iter());
                }
                Format::Ndjson => {
                    let mut object = serde_json::Map::new();
                    object.insert("sensor_id".into(), row.sensor.into());
                    match &row.bucket_end {
                        None => {
                            object.insert("ts".into(), row.at.into());
                            object.insert("value".into(), json_number(row.values[0]));
                        }
                        Some(end) => {
                            object.insert("bucket".into(), row.at.into());
                            object.insert("bucket_end".into(), end.clone().into());
                            for (name, value) in WINDOW_FIELDS.iter().zip(&row.values) {
                                object.insert((*name).into(), json_number(*value));
                            }
                        }
                    }
                    self.json_line(object);
                }
            },
            Layout::Wide => {
                let export = &self.export;
                let columns = export.sensors.len();
                let column = export.sensors.iter().position(|s| *s == row.sensor);
                let field = export
                    .windows
                    .as_ref()
                    .and_then(|w| WINDOW_FIELDS.iter().position(|f| *f == w.field))
                    .unwrap_or(0);
                let value = row.values.get(field).copied().flatten();
                if self.wide.as_ref().is_some_and(|(at, _)| *at != row.at)
                    && let Some((at, cells)) = self.wide.take()
                {
                    self.write_wide(&at, &cells);
                }
                let (_, cells) = self
                    .wide
                    .get_or_insert_with(|| (row.at.clone(), vec![None; columns]));
                if let Some(column) = column {
                    cells[column] = value;
                }
            }
        }
    }

    fn write_wide(&mut self, at: &str, cells: &[Option<f64>]) {
        match self.export.format {
            Format::Csv => {
                let numbers: Vec<String> = cells.iter().map(|v| number(*v)).collect();
                self.record(std::iter::once(at).chain(numbers.iter().map(String::as_str)));
            }
            Format::Ndjson => {
                let mut object = serde_json::Map::new();
                object.insert("ts".into(), at.into());
                for (sensor, value) in self.export.sensors.iter().zip(cells) {
                    object.insert(sensor.clone(), json_number(*value));
                }
                self.json_line(object);
            }
        }
    }
}

fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new())
}

/// `at` in RFC 3339 at a UTC offset of `seconds` (from `sensorhub_utc_offset`; `Z` for UTC),
/// microseconds only when there are any.
pub fn at_offset(at: DateTime<Utc>, seconds: i32) -> String {
    let offset = FixedOffset::east_opt(seconds).unwrap_or(Utc.fix());
    at.with_timezone(&offset)
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A number as the shortest text that reads back as the same `f64`; empty for none.
fn number(value: Option<f64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn json_number(value: Option<f64>) -> serde_json::Value {
    value
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_back_as_the_same_value() {
        assert_eq!(number(Some(0.1)), "0.1");
        assert_eq!(number(Some(1e-7)).parse::<f64>().unwrap(), 1e-7);
        assert_eq!(number(None), "");
    }
}
