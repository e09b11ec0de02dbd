//! Replaying dead letters into the stream, and purging them.
//!
//! A replay moves a letter back into the stream in one step: one script deletes the letter and
//! appends its original bytes as a new stream entry, or does neither if the letter is gone (an
//! earlier or concurrent replay moved it). From there the stream's guarantee holds: the entry is
//! read, validated with the current settings, and what passes is stored exactly once, while
//! what fails is dead-lettered again with its new reason. A crash at any moment leaves each
//! letter either still a dead letter or an entry in the stream, never both and never neither.
//!
//! The entry carries what makes a replay store nothing twice: `received`, the entry its payload
//! first came in as, whose time a reading without a timestamp keeps (a repeat is then a
//! duplicate); and `only`, the element of the payload the letter was about (the payload's other
//! elements were stored then, or have letters of their own, so their rejections are not kept
//! again).

use super::browse::Letter;
use super::{REPLAY_ONLY, REPLAY_RECEIVED, SIZE_OF, bytes_key};
use crate::domain::fields;
use crate::redis::entry::EntryId;
use redis::RedisResult;
use redis::aio::ConnectionLike;

/// Per letter: its id, the number of fields, then the fields of its entry. A letter still there
/// is deleted (its bytes taken off the count) and its entry appended; one already gone is
/// skipped. KEYS: the dead-letter stream, the stream, the dead letters' byte count.
const MOVE: &str = r#"
local moved = 0
local i = 1
while i <= #ARGV do
  local fields = tonumber(ARGV[i + 1]) * 2
  local letter = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
  if letter then
    redis.call('XDEL', KEYS[1], ARGV[i])
    redis.call('DECRBY', KEYS[3], size_of(letter[2]))
    redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 2, i + 1 + fields))
    moved = moved + 1
  end
  i = i + 2 + fields
end
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[3]) end
return moved
"#;

/// Deletes the letters of the ids in ARGV, taking their bytes off the count. KEYS: the
/// dead-letter stream, its byte count.
const DELETE: &str = r#"
local deleted = 0
for i = 1, #ARGV do
  local letter = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
  if letter then
    redis.call('XDEL', KEYS[1], ARGV[i])
    redis.call('DECRBY', KEYS[2], size_of(letter[2]))
    deleted = deleted + 1
  end
end
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return deleted
"#;

/// Letters moved per script: large enough for few round trips, small enough that one script
/// does not hold Redis long.
pub const BATCH: usize = 200;

/// The stream entry a letter is replayed as: its original fields, and what the replay needs to
/// store nothing twice. `None` for a letter without original bytes.
pub fn entry_fields(letter: &Letter) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if let Some(data) = &letter.data {
        fields.push((fields::DATA.as_bytes().to_vec(), data.clone()));
    }
    let mut received = None;
    for (name, value) in &letter.fields {
        match name.as_bytes() {
            REPLAY_RECEIVED => received = Some(value.clone()),
            REPLAY_ONLY => {}
            _ => fields.push((name.as_bytes().to_vec(), value.clone())),
        }
    }
    if fields.is_empty() {
        return None;
    }
    // A letter of an earlier replay keeps the time of the first entry.
    let received = received.or_else(|| letter.entry.as_ref().map(|e| e.as_bytes().to_vec()));
    if let Some(received) = received {
        fields.push((REPLAY_RECEIVED.to_vec(), received));
    }
    // `data` holding the rejected line alone is the whole replay; otherwise the letter's element.
    if let (Some(index), false) = (letter.index, letter.part) {
        fields.push((REPLAY_ONLY.to_vec(), index.to_string().into_bytes()));
    }
    Some(fields)
}

/// Moves `letters` from the dead-letter stream `dead` back into `stream`, [`BATCH`] per script.
/// Returns how many were moved (letters already gone are not). `progress` hears the running
/// count after each script.
pub async fn replay(
    conn: &mut impl ConnectionLike,
    dead: &str,
    stream: &str,
    letters: &[Letter],
    mut progress: impl FnMut(usize),
) -> RedisResult<usize> {
    let mut moved = 0;
    for batch in letters.chunks(BATCH) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(format!("{SIZE_OF}{MOVE}"))
            .arg(3)
            .arg(dead)
            .arg(stream)
            .arg(bytes_key(dead));
        let mut any = false;
        for letter in batch {
            let Some(fields) = entry_fields(letter) else {
                continue;
            };
            any = true;
            cmd.arg(letter.id.to_string()).arg(fields.len());
            for (name, value) in fields {
                cmd.arg(name).arg(value);
            }
        }
        if any {
            let n: usize = cmd.query_async(conn).await?;
            moved += n;
        }
        progress(moved);
    }
    Ok(moved)
}

/// Deletes the letters of `ids`; returns how many existed.
pub async fn purge(
    conn: &mut impl ConnectionLike,
    dead: &str,
    ids: &[EntryId],
) -> RedisResult<usize> {
    let mut deleted = 0;
    for batch in ids.chunks(1000) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(format!("{SIZE_OF}{DELETE}"))
            .arg(2)
            .arg(dead)
            .arg(bytes_key(dead));
        for id in batch {
            cmd.arg(id.to_string());
        }
        let n: usize = cmd.query_async(conn).await?;
        deleted += n;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(index: Option<usize>, part: bool, fields: &[(&str, &str)]) -> Letter {
        Letter {
            id: "5-0".parse().unwrap(),
            shard: None,
            reason: "not_a_number".into(),
            detail: String::new(),
            entry: Some("1-2".into()),
            index,
            part,
            data: Some(b"[1,2]".to_vec()),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn names(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_replay_entry_keeps_the_first_time_and_the_letters_element() {
        let fields = entry_fields(&letter(Some(1), false, &[("topic", "t")])).unwrap();
        assert_eq!(
            names(&fields),
            [
                ("data".into(), "[1,2]".into()),
                ("topic".into(), "t".into()),
                ("received".into(), "1-2".into()),
                ("only".into(), "1".into()),
            ]
        );
        // A letter of a replay: the first entry's time stays; a line alone has no element.
        let fields = entry_fields(&letter(
            Some(3),
            true,
            &[("received", "0-9"), ("only", "7"), ("form", "line:s")],
        ))
        .unwrap();
        assert_eq!(
            names(&fields),
            [
                ("data".into(), "[1,2]".into()),
                ("form".into(), "line:s".into()),
                ("received".into(), "0-9".into()),
            ]
        );
    }
}
