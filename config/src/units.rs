//! Human-friendly sizes (`32MB`, `512k`) and durations (`30s`, `1h`, `500ms`) for configuration
//! values, parsed the way fluentd parses them so that translated EMR configs mean the same thing.
//!
//! Sizes use binary multipliers, as fluentd's `size_value` does: `k` = 1024, `m` = 1024², `g`, `t`;
//! a trailing `b`/`ib` is accepted (`32MB` = `32MiB` = 33,554,432 bytes). Durations accept `ms`,
//! `s`, `m`, `h`, `d`, and a bare number means seconds (fluentd's `time_value`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a size or duration string was refused; the message quotes the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    /// The value is not a number followed by a known unit.
    #[error("invalid size {0:?}: expected a number with an optional unit k, m, g or t (e.g. 32MB)")]
    Size(String),
    /// The value is not a number followed by a known time unit.
    #[error("invalid duration {0:?}: expected a number with an optional unit ms, s, m, h or d (e.g. 30s)")]
    Duration(String),
}

/// A byte count written with a unit in configs and on the command line.
///
/// ```
/// use logship_config::units::ByteSize;
/// assert_eq!("32MB".parse::<ByteSize>().unwrap().bytes(), 32 * 1024 * 1024);
/// assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Size(s.to_string());
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        if num.is_empty() {
            return Err(err());
        }
        let unit = unit.trim().to_ascii_lowercase();
        let unit = unit
            .strip_suffix("ib")
            .or_else(|| unit.strip_suffix('b'))
            .unwrap_or(&unit);
        let mult: u64 = match unit {
            "" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            "t" => 1 << 40,
            _ => return Err(err()),
        };
        if let Ok(n) = num.parse::<u64>() {
            return n.checked_mul(mult).map(ByteSize).ok_or_else(err);
        }
        let f: f64 = num.parse().map_err(|_| err())?;
        let v = f * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
            return Err(err());
        }
        Ok(ByteSize(v as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if b >= 1 << shift && b.is_multiple_of(1 << shift) {
                return write!(f, "{}{}", b >> shift, unit);
            }
        }
        write!(f, "{b}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written with a unit in configs and on the command line.
///
/// ```
/// use logship_config::units::HumanDuration;
/// use std::time::Duration;
/// assert_eq!("2m".parse::<HumanDuration>().unwrap().get(), Duration::from_secs(120));
/// assert_eq!("30".parse::<HumanDuration>().unwrap().get(), Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// A duration of whole seconds.
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Duration(s.to_string());
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let f: f64 = num.parse().map_err(|_| err())?;
        let secs = match unit.trim().to_ascii_lowercase().as_str() {
            "ms" => f / 1000.0,
            "" | "s" => f,
            "m" => f * 60.0,
            "h" => f * 3600.0,
            "d" => f * 86400.0,
            _ => return Err(err()),
        };
        Duration::try_from_secs_f64(secs).map(HumanDuration).map_err(|_| err())
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let s = self.0.as_secs();
        for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60)] {
            if s >= n && s.is_multiple_of(n) {
                return write!(f, "{}{}", s / n, unit);
            }
        }
        write!(f, "{s}s")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(HumanDuration::secs(n)),
            Raw::Float(f) => Duration::try_from_secs_f64(f)
                .map(HumanDuration)
                .map_err(serde::de::Error::custom),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A fixed offset from UTC (`UTC`, `Z`, `+08:00`, `-0530`): the zone a log's wall-clock dates
/// were written in. Fixed offsets only: zone names need a time-zone database, which a static
/// sidecar image does not carry, and a Spark pod's clock is UTC unless it was set otherwise.
///
/// ```
/// use logship_config::units::UtcOffset;
/// assert_eq!("+08:00".parse::<UtcOffset>().unwrap().seconds(), 8 * 3600);
/// assert_eq!("-0530".parse::<UtcOffset>().unwrap().to_string(), "-05:30");
/// assert!("Europe/Paris".parse::<UtcOffset>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UtcOffset(i32);

impl UtcOffset {
    /// Seconds east of UTC.
    pub fn seconds(self) -> i32 {
        self.0
    }
}

impl std::str::FromStr for UtcOffset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid time zone {s:?}: expected UTC or an offset like +08:00 or -05:30");
        let t = s.trim();
        if t.eq_ignore_ascii_case("utc") || t == "Z" {
            return Ok(UtcOffset(0));
        }
        let (sign, rest) = match t.as_bytes().first() {
            Some(b'+') => (1, &t[1..]),
            Some(b'-') => (-1, &t[1..]),
            _ => return Err(bad()),
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 5 {
            return Err(bad());
        }
        let (h, m): (i32, i32) = (
            digits[..2].parse().map_err(|_| bad())?,
            digits[2..].parse().map_err(|_| bad())?,
        );
        if h > 14 || m > 59 {
            return Err(bad());
        }
        Ok(UtcOffset(sign * (h * 3600 + m * 60)))
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("UTC");
        }
        let a = self.0.abs();
        write!(
            f,
            "{}{:02}:{:02}",
            if self.0 < 0 { '-' } else { '+' },
            a / 3600,
            a % 3600 / 60
        )
    }
}

impl Serialize for UtcOffset {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for UtcOffset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_multipliers_like_fluentd() {
        assert_eq!("32MB".parse::<ByteSize>().unwrap().bytes(), 32 << 20);
        assert_eq!("32m".parse::<ByteSize>().unwrap().bytes(), 32 << 20);
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().bytes(), 1 << 20);
        assert_eq!("512k".parse::<ByteSize>().unwrap().bytes(), 512 << 10);
        assert_eq!("1.5k".parse::<ByteSize>().unwrap().bytes(), 1536);
        assert_eq!("100".parse::<ByteSize>().unwrap().bytes(), 100);
        assert!("32XB".parse::<ByteSize>().is_err());
        assert!("MB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(32 << 20).to_string(), "32MiB");
    }

    #[test]
    fn durations_parse_units_and_bare_seconds() {
        assert_eq!("30".parse::<HumanDuration>().unwrap().get(), Duration::from_secs(30));
        assert_eq!("30s".parse::<HumanDuration>().unwrap().get(), Duration::from_secs(30));
        assert_eq!("2m".parse::<HumanDuration>().unwrap().get(), Duration::from_secs(120));
        assert_eq!("1h".parse::<HumanDuration>().unwrap().get(), Duration::from_secs(3600));
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().get(),
            Duration::from_millis(250)
        );
        assert!("10x".parse::<HumanDuration>().is_err());
        assert_eq!(HumanDuration::secs(120).to_string(), "2m");
        assert_eq!(HumanDuration(Duration::from_millis(1500)).to_string(), "1500ms");
    }
}
