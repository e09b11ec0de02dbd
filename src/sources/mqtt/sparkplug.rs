//! What the MQTT source keeps of Sparkplug B edge nodes, as a host application does: each node's
//! alias names from its BIRTH (NBIRTH replaces them, DBIRTH adds its device's) and the `seq` it
//! expects next. Each message is read in the order it arrived; the entry it is appended as carries
//! the names its aliases need. A DATA message with an alias no BIRTH gave, or after a `seq` gap,
//! carries why instead (refused, kept as a dead letter with its bytes) and makes the source ask the
//! node for a rebirth (`NCMD` with `Node Control/Rebirth`), once until its BIRTH comes.

use crate::domain::reading::sparkplug::{
    Kind, Known, Metric, Payload, Topic, Value, decode_names, encode_names,
};
use prost::Message as _;
use std::collections::HashMap;

/// What a message's entry carries besides its payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Read {
    /// `alias=name` lines for the aliases the payload uses.
    pub names: String,
    /// Why it cannot be read now; `None` when it can.
    pub unread: Option<String>,
    /// A BIRTH's names for the whole node, recorded beside the stream for replays:
    /// (`<group>/<node>`, lines).
    pub birth: Option<(String, String)>,
}

/// A rebirth request to publish: topic and payload.
pub type Rebirth = (String, Vec<u8>);

/// A metric as its BIRTH gave it.
#[derive(Clone, Debug)]
struct Birth {
    name: String,
    alias: Option<u64>,
    datatype: u32,
}

#[derive(Default)]
struct Node {
    /// By name.
    metrics: HashMap<String, Birth>,
    /// Alias to name.
    aliases: HashMap<u64, String>,
    /// `None` until a BIRTH, or after a session with the broker ended (a message may come again).
    next_seq: Option<u64>,
    /// A rebirth was asked for and its NBIRTH has not come.
    rebirth_asked: bool,
}

/// The edge nodes seen, by `<group>/<node>`.
#[derive(Default)]
pub struct Nodes(HashMap<String, Node>);

impl Nodes {
    /// Reads one message of `topic`; the rebirth request to publish, if one is due.
    pub fn read(&mut self, topic: &Topic, payload: &[u8]) -> (Read, Option<Rebirth>) {
        let key = format!("{}/{}", topic.group, topic.node);
        let Ok(decoded) = Payload::decode(payload) else {
            // The validator refuses it, naming the decoding error.
            return (Read::default(), None);
        };
        let node = self.0.entry(key.clone()).or_default();
        let seq = decoded.seq;
        let mut read = Read::default();
        match topic.kind {
            Kind::NBirth => {
                node.metrics.clear();
                node.aliases.clear();
                node.learn(&decoded.metrics);
                node.next_seq = seq.map(|s| (s + 1) % 256);
                node.rebirth_asked = false;
                read.birth = Some((key, node.all_names()));
                return (read, None);
            }
            Kind::NDeath => {
                node.next_seq = None;
                return (read, None);
            }
            Kind::NCmd | Kind::DCmd => return (read, None),
            Kind::DBirth | Kind::DDeath | Kind::NData | Kind::DData => {}
        }
        let gap = match (node.next_seq, seq) {
            (Some(expected), Some(got)) if expected != got => Some(format!(
                "seq {got} where {expected} was next: a message was lost"
            )),
            _ => None,
        };
        node.next_seq = seq.map(|s| (s + 1) % 256).or(node.next_seq);
        if topic.kind == Kind::DBirth {
            node.learn(&decoded.metrics);
            read.birth = Some((key.clone(), node.all_names()));
        }
        let unknown: Vec<u64> = decoded
            .metrics
            .iter()
            .filter(|m| m.name.is_none())
            .filter_map(|m| m.alias)
            .filter(|alias| !node.aliases.contains_key(alias))
            .collect();
        // The metrics this message names by alias or sends without their datatype.
        let needed = decoded.metrics.iter().filter_map(|m| {
            let name = match (&m.name, m.alias) {
                (Some(name), _) if m.datatype.is_none() => name,
                (None, Some(alias)) => node.aliases.get(&alias)?,
                _ => return None,
            };
            node.metrics.get(name).map(Birth::known)
        });
        read.names = encode_names(needed);
        let why = match (gap, unknown.is_empty()) {
            (Some(gap), _) => Some(gap),
            (None, false) => Some(format!(
                "metric aliases {unknown:?} of {key} have no name: its BIRTH was not seen"
            )),
            (None, true) => None,
        };
        let Some(why) = why else {
            return (read, None);
        };
        read.unread = Some(format!(
            "Sparkplug B {why}; a rebirth was requested: replay this dead letter once the \
             node's BIRTH is stored"
        ));
        let rebirth = (!node.rebirth_asked).then(|| {
            node.rebirth_asked = true;
            rebirth(topic.group, topic.node)
        });
        (read, rebirth)
    }

    /// The rebirth request to `topic` could not be handed to the connection: asked again at
    /// the node's next unreadable message.
    pub fn rebirth_not_sent(&mut self, topic: &str) {
        if let Some(key) = topic
            .strip_prefix("spBv1.0/")
            .and_then(|rest| rest.split_once("/NCMD/"))
            .map(|(group, node)| format!("{group}/{node}"))
            && let Some(node) = self.0.get_mut(&key)
        {
            node.rebirth_asked = false;
        }
    }

    /// Whether no node is known (a new instance, or after [`Nodes::clear`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets every node: the broker's session was lost, so a BIRTH may have been missed and
    /// the names known could be stale. The next DATA of each node asks for a rebirth.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Takes the names recorded at the nodes' last BIRTHs (`<group>/<node>`, `names` lines), as
    /// an instance taking over a session the broker kept: what the session still holds for it
    /// came after those BIRTHs. The `seq` is taken from the next message.
    pub fn restore(&mut self, recorded: &[(String, String)]) {
        for (key, names) in recorded {
            let node = self.0.entry(key.clone()).or_default();
            for known in decode_names(names) {
                if let Some(alias) = known.alias {
                    node.aliases.insert(alias, known.name.to_owned());
                }
                let birth = Birth {
                    name: known.name.to_owned(),
                    alias: known.alias,
                    datatype: known.datatype,
                };
                node.metrics.insert(known.name.to_owned(), birth);
            }
        }
    }

    /// A session with the broker ended: what it delivered may come again, so the next message of
    /// each node sets its `seq` rather than being checked against it.
    pub fn session_ended(&mut self) {
        for node in self.0.values_mut() {
            node.next_seq = None;
        }
    }
}

impl Birth {
    fn known(&self) -> Known<'_> {
        Known {
            alias: self.alias,
            datatype: self.datatype,
            name: &self.name,
        }
    }
}

impl Node {
    fn learn(&mut self, metrics: &[Metric]) {
        for metric in metrics {
            let Some(name) = &metric.name else { continue };
            if let Some(alias) = metric.alias {
                self.aliases.insert(alias, name.clone());
            }
            let birth = Birth {
                name: name.clone(),
                alias: metric.alias,
                datatype: metric.datatype.unwrap_or(0),
            };
            self.metrics.insert(name.clone(), birth);
        }
    }

    /// Every metric the node's BIRTHs gave, as the `names` field writes them, in name order.
    fn all_names(&self) -> String {
        let mut births: Vec<&Birth> = self.metrics.values().collect();
        births.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        encode_names(births.into_iter().map(Birth::known))
    }
}

/// `NCMD` to `<group>/<node>` asking for a rebirth.
fn rebirth(group: &str, node: &str) -> Rebirth {
    let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
    let payload = Payload {
        timestamp: Some(now),
        metrics: vec![Metric {
            name: Some("Node Control/Rebirth".into()),
            alias: None,
            timestamp: Some(now),
            datatype: Some(11),
            is_null: None,
            value: Some(Value::Boolean(true)),
        }],
        seq: None,
    };
    (
        format!("spBv1.0/{group}/NCMD/{node}"),
        payload.encode_to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: Option<&str>, alias: u64, value: f64) -> Metric {
        Metric {
            name: name.map(String::from),
            alias: Some(alias),
            timestamp: Some(1_764_590_400_000),
            datatype: Some(10),
            is_null: None,
            value: Some(Value::Double(value)),
        }
    }

    fn payload(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(1_764_590_400_000),
            metrics,
            seq: Some(seq),
        }
        .encode_to_vec()
    }

    #[test]
    fn aliases_come_from_the_birth_and_a_gap_or_an_unknown_alias_asks_for_a_rebirth_once() {
        let mut nodes = Nodes::default();
        let birth = Topic::parse("spBv1.0/plant/NBIRTH/edge1").unwrap();
        let data = Topic::parse("spBv1.0/plant/NDATA/edge1").unwrap();
        // Before any BIRTH: unknown alias, a rebirth asked for, once.
        let (read, rebirth) = nodes.read(&data, &payload(5, vec![metric(None, 1, 2.0)]));
        assert!(read.unread.unwrap().contains("no name"));
        let (topic, _) = rebirth.expect("a rebirth request");
        assert_eq!(topic, "spBv1.0/plant/NCMD/edge1");
        let (_, again) = nodes.read(&data, &payload(6, vec![metric(None, 1, 2.0)]));
        assert!(again.is_none(), "asked once until the BIRTH comes");
        // The BIRTH names alias 1; DATA then carries the name.
        let (read, _) = nodes.read(&birth, &payload(0, vec![metric(Some("Temp"), 1, 20.0)]));
        assert_eq!(
            read.birth,
            Some(("plant/edge1".into(), "1:10=Temp\n".into()))
        );
        let (read, rebirth) = nodes.read(&data, &payload(1, vec![metric(None, 1, 21.0)]));
        assert_eq!(
            (read.names.as_str(), read.unread, rebirth),
            ("1:10=Temp\n", None, None)
        );
        // seq 3 after 1: a gap.
        let (read, rebirth) = nodes.read(&data, &payload(3, vec![metric(None, 1, 22.0)]));
        assert!(read.unread.unwrap().contains("seq 3 where 2 was next"));
        assert!(rebirth.is_some());
        // After a session ended, the next seq is taken as it comes.
        nodes.read(&birth, &payload(0, vec![metric(Some("Temp"), 1, 20.0)]));
        nodes.session_ended();
        let (read, _) = nodes.read(&data, &payload(9, vec![metric(None, 1, 23.0)]));
        assert_eq!(read.unread, None);
    }

    #[test]
    fn recorded_names_are_restored_and_a_lost_session_forgets_them() {
        let mut nodes = Nodes::default();
        let birth = Topic::parse("spBv1.0/plant/NBIRTH/edge1").unwrap();
        let data = Topic::parse("spBv1.0/plant/NDATA/edge1").unwrap();
        let (read, _) = nodes.read(&birth, &payload(0, vec![metric(Some("Temp"), 1, 20.0)]));
        let recorded = vec![read.birth.unwrap()];
        // Another instance, resuming the session: names from the record, seq from the message.
        let mut taker = Nodes::default();
        assert!(taker.is_empty());
        taker.restore(&recorded);
        let (read, rebirth) = taker.read(&data, &payload(17, vec![metric(None, 1, 21.0)]));
        assert_eq!(
            (read.names.as_str(), read.unread, rebirth),
            ("1:10=Temp\n", None, None)
        );
        taker.clear();
        let (read, rebirth) = taker.read(&data, &payload(18, vec![metric(None, 1, 22.0)]));
        assert!(read.unread.is_some() && rebirth.is_some());
    }
}
