//! The `predicate` of InfluxDB's delete API (`/api/v2/delete`), matched against the sensor ids
//! line protocol gives ([`super::line`]): a series' measurement and tags, encoded as in an id.

use super::excerpt;
use super::line::escaped;

/// The `predicate` of InfluxDB's delete API as sensorhub takes it: `_measurement="m"` and tags
/// `key="value"`, joined by `AND` (what InfluxDB 2 accepts, less the rest of its grammar). A
/// series matches when its measurement is the one named (if one is) and it has every tag named
/// with that value; all its fields match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Predicate {
    /// The measurement, encoded as in a sensor id.
    measurement: Option<String>,
    /// `key=value` of each tag, encoded as in a sensor id.
    tags: Vec<String>,
}

impl Predicate {
    /// Parses `text`; an empty predicate names every series.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut predicate = Predicate::default();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let (key, after) = predicate_key(rest)?;
            let after = after.trim_start();
            let Some(after) = after.strip_prefix('=') else {
                return Err(format!(
                    "in the predicate {}: after {} comes {}, where sensorhub expects = (it \
                     deletes by _measurement and tags, joined by AND)",
                    excerpt(text),
                    excerpt(&key),
                    excerpt(after)
                ));
            };
            let (value, after) = predicate_string(after.trim_start(), text)?;
            match key.as_str() {
                "_measurement" => {
                    let mut encoded = String::new();
                    escaped(&mut encoded, &value, b",");
                    if predicate.measurement.replace(encoded).is_some() {
                        return Err(format!(
                            "the predicate {} names _measurement twice",
                            excerpt(text)
                        ));
                    }
                }
                "_field" | "_value" | "_time" | "_start" | "_stop" => {
                    return Err(format!(
                        "the predicate {} names {key}: deletions go by _measurement and tags, as \
                         in InfluxDB",
                        excerpt(text)
                    ));
                }
                _ => {
                    let mut tag = String::new();
                    escaped(&mut tag, &key, b",=");
                    tag.push('=');
                    escaped(&mut tag, &value, b",");
                    predicate.tags.push(tag);
                }
            }
            rest = after.trim_start();
            if rest.is_empty() {
                break;
            }
            match rest.get(..4) {
                Some(and) if and.eq_ignore_ascii_case("and ") => rest = rest[4..].trim_start(),
                _ => {
                    return Err(format!(
                        "in the predicate {}: {} where AND belongs (OR, parentheses and != are not \
                         taken, as in InfluxDB)",
                        excerpt(text),
                        excerpt(rest)
                    ));
                }
            }
        }
        Ok(predicate)
    }

    /// Whether the predicate names anything at all.
    pub fn is_empty(&self) -> bool {
        self.measurement.is_none() && self.tags.is_empty()
    }

    /// What every matching sensor id starts with (for a `LIKE` over the sensors), escaped for
    /// `LIKE` with `\`.
    pub fn like_prefix(&self) -> String {
        let mut like = String::new();
        for c in self.measurement.as_deref().unwrap_or("").chars() {
            if matches!(c, '%' | '_' | '\\') {
                like.push('\\');
            }
            like.push(c);
        }
        like.push('%');
        like
    }

    /// Whether `sensor_id`, an id line protocol gives (`series.field`), is of a matching series.
    pub fn matches(&self, sensor_id: &str) -> bool {
        let Some((series, _field)) = sensor_id.rsplit_once('.') else {
            return false;
        };
        let mut parts = series.split(',');
        let measurement = parts.next().unwrap_or("");
        if self
            .measurement
            .as_deref()
            .is_some_and(|m| m != measurement)
        {
            return false;
        }
        let tags: Vec<&str> = parts.collect();
        self.tags.iter().all(|tag| tags.contains(&tag.as_str()))
    }
}

/// A key of the predicate, bare or in double quotes, and what follows it.
fn predicate_key(text: &str) -> Result<(String, &str), String> {
    if text.starts_with('"') {
        return predicate_string(text, text);
    }
    let end = text
        .find(|c: char| c == '=' || c == '!' || c.is_whitespace())
        .unwrap_or(text.len());
    if end == 0 {
        return Err(format!(
            "the predicate {} has no key where one belongs",
            excerpt(text)
        ));
    }
    Ok((text[..end].to_owned(), &text[end..]))
}

/// A double-quoted string (`\"` and `\\` escaped) at the start of `text`, and what follows it.
fn predicate_string<'t>(text: &'t str, whole: &str) -> Result<(String, &'t str), String> {
    let Some(inner) = text.strip_prefix('"') else {
        return Err(format!(
            "in the predicate {}: values are double-quoted strings, as in key=\"value\"",
            excerpt(whole)
        ));
    };
    let mut value = String::new();
    let mut chars = inner.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &inner[at + 1..])),
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => break,
            },
            _ => value.push(c),
        }
    }
    Err(format!(
        "the predicate {} has a string without its closing quote",
        excerpt(whole)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_predicates_match_the_series_line_protocol_names() {
        let ids = [
            "weather,station=roof.temp",
            "weather,area=n,station=roof.hum",
            "weather,station=cellar.temp",
            "cpu.usage",
            "weather.temp",
            "a%2Cb,t=x.f",
        ];
        let matching = |predicate: &str| -> Vec<&str> {
            let p = Predicate::parse(predicate).unwrap();
            ids.iter().copied().filter(|id| p.matches(id)).collect()
        };
        assert_eq!(
            matching(r#"_measurement="weather" AND station="roof""#),
            [
                "weather,station=roof.temp",
                "weather,area=n,station=roof.hum"
            ]
        );
        assert_eq!(matching(r#"_measurement = "cpu""#), ["cpu.usage"]);
        assert_eq!(
            matching(r#"station="cellar" and _measurement="weather""#),
            ["weather,station=cellar.temp"]
        );
        assert_eq!(matching(r#"_measurement="a,b""#), ["a%2Cb,t=x.f"]);
        assert_eq!(matching("").len(), ids.len());
        assert_eq!(
            Predicate::parse(r#"_measurement="we_a%""#)
                .unwrap()
                .like_prefix(),
            r"we\_a\%25%"
        );
        for bad in [
            r#"_measurement="a" OR host="b""#,
            r#"host!="b""#,
            r#"_field="temp""#,
            "host=b",
            r#"host="b"#,
            r#"(host="b")"#,
        ] {
            assert!(Predicate::parse(bad).is_err(), "{bad}");
        }
    }
}
