//! Typed reads of the variables: numbers, durations, retentions, tokens, TLS files and shard
//! lists, each refusal naming the variable, the value and what is expected.

use super::{ConfigError, Secret, VARIABLES};
use super::{MIN_NETWORK_TIMEOUT, TlsFiles};
use crate::domain::Resolution;
use std::path::PathBuf;
use std::time::Duration;

/// A token variable: `None` when unset. Set but empty (or only white space), it is refused: an
/// empty value would compare equal to an empty header and leave its routes open, which is never
/// what setting a token means.
pub(super) fn token(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<Secret>, ConfigError> {
    match lookup(name) {
        None => Ok(None),
        Some(value) if value.trim().is_empty() => Err(ConfigError {
            var: name,
            value,
            expected:
                "a token of at least one visible character (leave the variable unset for none)"
                    .into(),
        }),
        Some(value) => Ok(Some(Secret::new(value))),
    }
}

/// A duration as written in the variables: whole days as `90d`, anything else as humantime
/// writes it.
pub(super) fn in_days(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds.is_multiple_of(86_400) && duration.subsec_nanos() == 0 {
        format!("{}d", seconds / 86_400)
    } else {
        humantime::format_duration(duration).to_string()
    }
}

/// The variables naming a connection's TLS files.
pub(super) struct TlsVariables {
    pub ca: &'static str,
    pub cert: &'static str,
    pub key: &'static str,
}

/// A connection's TLS files: a CA file, and a client certificate with its key (both or neither).
pub(super) fn tls_files(
    lookup: &impl Fn(&str) -> Option<String>,
    vars: TlsVariables,
) -> Result<TlsFiles, ConfigError> {
    let path = |name: &str| lookup(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let client = match (path(vars.cert), path(vars.key)) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(cert), None) => {
            return Err(ConfigError {
                var: vars.key,
                value: String::new(),
                expected: format!("the key of the client certificate {}", cert.display()),
            });
        }
        (None, Some(key)) => {
            return Err(ConfigError {
                var: vars.cert,
                value: String::new(),
                expected: format!("the client certificate of the key {}", key.display()),
            });
        }
    };
    Ok(TlsFiles {
        ca: path(vars.ca),
        client,
    })
}

/// `SENSORHUB_READ_SHARDS`: shard numbers and ranges (`0-7,12`) below `shards`, or all of them
/// when unset or empty.
pub(super) fn shard_list(value: Option<&str>, shards: usize) -> Result<Vec<usize>, ConfigError> {
    let value = value.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Ok((0..shards).collect());
    }
    let bad = |expected: String| ConfigError {
        var: "SENSORHUB_READ_SHARDS",
        value: value.to_owned(),
        expected,
    };
    let number = |text: &str| -> Result<usize, ConfigError> {
        match text.trim().parse::<usize>() {
            Ok(n) if n < shards => Ok(n),
            _ => Err(bad(format!(
                "shard numbers from 0 to {} (SENSORHUB_STREAM_SHARDS={shards}), as `0-7` or `0,3,5`",
                shards - 1
            ))),
        }
    };
    let mut list = Vec::new();
    for part in value.split(',') {
        let (low, high) = match part.split_once('-') {
            Some((low, high)) => (number(low)?, number(high)?),
            None => (number(part)?, number(part)?),
        };
        if low > high {
            return Err(bad(format!(
                "a range from low to high, not `{}`",
                part.trim()
            )));
        }
        list.extend(low..=high);
    }
    list.sort_unstable();
    list.dedup();
    Ok(list)
}

/// Typed reads of variables with their documented defaults.
pub(super) struct Env<'a> {
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    pub(super) fn default_of(name: &str) -> &'static str {
        VARIABLES
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.default)
            .unwrap_or_else(|| unreachable!("{name} is not declared in VARIABLES"))
    }

    pub(super) fn text(&self, name: &'static str) -> String {
        (self.lookup)(name).unwrap_or_else(|| Self::default_of(name).to_owned())
    }

    pub(super) fn text_or_fallback(&self, name: &'static str, fallback: &str) -> String {
        (self.lookup)(name)
            .filter(|v| !v.is_empty())
            .or_else(|| (self.lookup)(fallback).filter(|v| !v.is_empty()))
            .unwrap_or_else(|| Self::default_of(name).to_owned())
    }

    pub(super) fn error(
        name: &'static str,
        value: &str,
        expected: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            var: name,
            value: value.to_owned(),
            expected: expected.into(),
        }
    }

    pub(super) fn non_empty(&self, name: &'static str) -> Result<String, ConfigError> {
        let value = self.text(name);
        if value.trim().is_empty() {
            return Err(Self::error(name, &value, "a non-empty name"));
        }
        Ok(value)
    }

    pub(super) fn parsed<T: std::str::FromStr>(
        &self,
        name: &'static str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        let value = self.text(name);
        value
            .trim()
            .parse()
            .map_err(|_| Self::error(name, &value, expected))
    }

    pub(super) fn number(
        &self,
        name: &'static str,
        min: usize,
        max: usize,
    ) -> Result<usize, ConfigError> {
        let expected = format!("a whole number from {min} to {max}");
        let number: usize = self.parsed(name, &expected)?;
        if !(min..=max).contains(&number) {
            return Err(Self::error(name, &number.to_string(), expected));
        }
        Ok(number)
    }

    /// `true` or `false`.
    pub(super) fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        let value = self.text(name);
        match value.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(Self::error(name, &value, "true or false")),
        }
    }

    pub(super) fn duration(&self, name: &'static str) -> Result<Duration, ConfigError> {
        let value = self.text(name);
        humantime::parse_duration(value.trim())
            .map_err(|_| Self::error(name, &value, "a duration such as 500ms, 30s, 5m, 1h or 30d"))
    }

    /// The network timeout every connection's dead-peer detection derives from: a duration of
    /// at least [`MIN_NETWORK_TIMEOUT`] (keepalive probes are whole seconds apart).
    pub(super) fn network_timeout(&self, name: &'static str) -> Result<Duration, ConfigError> {
        let timeout = self.duration(name)?;
        if timeout < MIN_NETWORK_TIMEOUT {
            let expected = format!(
                "at least {} (keepalive probes are whole seconds apart)",
                humantime::format_duration(MIN_NETWORK_TIMEOUT)
            );
            return Err(Self::error(name, &self.text(name), &expected));
        }
        Ok(timeout)
    }

    /// When closed partitions are compacted: a duration of at least an hour, or `off` (also
    /// empty).
    pub(super) fn compact_after(
        &self,
        name: &'static str,
    ) -> Result<Option<Duration>, ConfigError> {
        let value = self.text(name);
        match value.trim() {
            "" | "off" => Ok(None),
            text => match humantime::parse_duration(text) {
                Ok(after) if after >= Duration::from_secs(3600) => Ok(Some(after)),
                _ => Err(Self::error(
                    name,
                    &value,
                    "a duration of at least 1h such as 7d, or off",
                )),
            },
        }
    }

    /// A retention: a duration, or `forever` (also empty).
    pub(super) fn retention(&self, name: &'static str) -> Result<Option<Duration>, ConfigError> {
        let value = self.text(name);
        Self::keep(name, &value, value.trim())
    }

    pub(super) fn keep(
        name: &'static str,
        value: &str,
        text: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        if text.is_empty() || text == "forever" {
            return Ok(None);
        }
        match humantime::parse_duration(text) {
            Ok(keep) if keep >= Duration::from_secs(3600) => Ok(Some(keep)),
            _ => Err(Self::error(
                name,
                value,
                "a duration of at least 1h such as 90d, or forever",
            )),
        }
    }

    /// Retention per resolution: `1m:400d,1h:forever`.
    pub(super) fn aggregate_retention(
        &self,
        name: &'static str,
    ) -> Result<Vec<(Resolution, Duration)>, ConfigError> {
        let value = self.text(name);
        let text = value.trim();
        if text.is_empty() || text == "forever" {
            return Ok(Vec::new());
        }
        let mut kept = Vec::new();
        for part in text.split(',') {
            let bad = || {
                Self::error(
                    name,
                    &value,
                    "resolution:duration pairs such as 1m:400d,1h:forever",
                )
            };
            let (resolution, keep) = part.trim().split_once(':').ok_or_else(bad)?;
            let resolution: Resolution = resolution.trim().parse().map_err(|_| bad())?;
            if let Some(keep) = Self::keep(name, &value, keep.trim())? {
                kept.push((resolution, keep));
            }
        }
        Ok(kept)
    }

    pub(super) fn resolutions(&self, name: &'static str) -> Result<Vec<Resolution>, ConfigError> {
        let value = self.text(name);
        let mut resolutions = value
            .split(',')
            .map(|part| part.parse::<Resolution>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| Self::error(name, &value, format!("durations like 1m,1h ({why})")))?;
        resolutions.sort_unstable();
        resolutions.dedup();
        Ok(resolutions)
    }
}
