//! The names of a stream entry's fields: written by every way in (producers' own `XADD`, the
//! sources, HTTP ingest, a dead-letter replay) and read by the validator. Producers write `data`
//! alone; the others add what the payload needs to be read as it was sent.

/// The payload: a JSON reading or array, a form named by [`FORM`], lines of line protocol.
pub const DATA: &str = "data";
/// The payload's form, when it is not sensorhub's JSON (`line:<precision>`, an MQTT rule's form).
pub const FORM: &str = "form";
/// The sensor-id prefix of an MQTT rule, put before the ids its form reads.
pub const PREFIX: &str = "prefix";
/// The MQTT topic the payload came on.
pub const TOPIC: &str = "topic";
/// Of a replayed entry: the entry its payload first came in as, whose time an untimed reading
/// keeps, so that a replay stores it once.
pub const RECEIVED: &str = "received";
/// Of a replayed entry: the one element of its payload it replays.
pub const ONLY: &str = "only";
/// A Sparkplug B entry's alias names, `alias=name` lines (the node's BIRTH gave them).
pub const NAMES: &str = "names";
/// Why the source could not read a Sparkplug B message (an alias no BIRTH gave, a `seq` gap): the
/// entry is refused with it, and kept as a dead letter to replay.
pub const UNREAD: &str = "unread";
