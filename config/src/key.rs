//! Object keys (file paths) of chunks, with fluent-plugin-s3's placeholders.
//!
//! A key is rendered once, when the chunk is opened, and stored in the chunk's metadata, so a
//! retried or recovered chunk is always written to the same key (invariant 3). `%{index}` counts
//! chunks per key prefix (the key with its index left out); the counters are persisted with the
//! buffer state, so a restart never hands out an index twice.

use std::fmt;

/// Why a key format was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// A `%{...}` placeholder that is not known.
    #[error(
        "unknown placeholder %{{{0}}} (known: tag, path, time_slice, index, file_extension, hex_random, uuid_flush, hostname)"
    )]
    Unknown(String),
    /// A `%{` without its `}`.
    #[error("unclosed placeholder at byte {0}")]
    Unclosed(usize),
    /// An empty format.
    #[error("must not be empty")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Tag,
    Path,
    TimeSlice,
    Index,
    FileExtension,
    HexRandom,
    UuidFlush,
    Hostname,
}

/// A parsed key format such as `%{path}/events_%{index}_spark-123`.
///
/// ```
/// use logship_config::key::{KeyTemplate, KeyValues};
/// let t = KeyTemplate::parse("%{path}/events_%{index}_spark-1").unwrap();
/// let v = KeyValues { path: "logs/eventlog_v2_spark-1", ..Default::default() };
/// assert_eq!(t.render(&v, 1), "logs/eventlog_v2_spark-1/events_1_spark-1");
/// assert_eq!(t.prefix(&v), "logs/eventlog_v2_spark-1/events_%{index}_spark-1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

/// The values a key is rendered from, for one chunk.
#[derive(Debug, Clone, Default)]
pub struct KeyValues<'a> {
    /// The chunk's tag (usually the source file's relative path).
    pub tag: &'a str,
    /// The output's `path` setting.
    pub path: &'a str,
    /// The chunk's time key, formatted.
    pub time_slice: &'a str,
    /// The extension for the output's `store_as`.
    pub file_extension: &'a str,
    /// A random number fixed for this chunk.
    pub random: u64,
    /// This host's name.
    pub hostname: &'a str,
}

impl KeyTemplate {
    /// Parses a key format.
    pub fn parse(format: &str) -> Result<KeyTemplate, KeyError> {
        if format.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut offset = 0;
        let format = format.replace("${tag}", "%{tag}");
        let mut rest = format.as_str();
        while let Some(i) = rest.find("%{") {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = after.find('}').ok_or(KeyError::Unclosed(offset + i))?;
            let name = &after[..end];
            let part = match name {
                "tag" => Part::Tag,
                "path" => Part::Path,
                "time_slice" => Part::TimeSlice,
                "index" => Part::Index,
                "file_extension" => Part::FileExtension,
                "hex_random" => Part::HexRandom,
                "uuid_flush" => Part::UuidFlush,
                "hostname" => Part::Hostname,
                other => return Err(KeyError::Unknown(other.to_string())),
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(part);
            offset += i + 2 + end + 1;
            rest = &after[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(KeyTemplate { parts })
    }

    /// Whether the format numbers its chunks.
    pub fn has_index(&self) -> bool {
        self.parts.contains(&Part::Index)
    }

    /// The key with `%{index}` (and the per-chunk random parts) left out: chunks with the same
    /// prefix share one index counter.
    pub fn prefix(&self, v: &KeyValues<'_>) -> String {
        self.render_with(v, None)
    }

    /// The full key for a chunk with the given index.
    pub fn render(&self, v: &KeyValues<'_>, index: u64) -> String {
        self.render_with(v, Some(index))
    }

    /// The key of a chunk as the text before and after its `%{index}` (when it has exactly
    /// one), so that an output that finds the key taken by someone else's object can move the
    /// index on, as fluent-plugin-s3's `check_object` does.
    pub fn render_around_index(&self, v: &KeyValues<'_>) -> Option<(String, String)> {
        if self.parts.iter().filter(|p| **p == Part::Index).count() != 1 {
            return None;
        }
        let at = self.parts.iter().position(|p| *p == Part::Index)?;
        let part = |parts: &[Part]| KeyTemplate { parts: parts.to_vec() }.render_with(v, Some(0));
        Some((part(&self.parts[..at]), part(&self.parts[at + 1..])))
    }

    /// Whether it holds `%{tag}`: without it, records of every tag may share a chunk.
    pub fn has_tag(&self) -> bool {
        self.parts.contains(&Part::Tag)
    }

    /// Whether it contains `%{path}`.
    pub fn has_path(&self) -> bool {
        self.parts.contains(&Part::Path)
    }

    /// Whether two chunks can never get the same key from it: it holds `%{index}` (counted) or
    /// a per-chunk random part. Without one, every chunk of a tag in a time slice would land on
    /// one key, each replacing the last.
    pub fn is_unique_per_chunk(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Index | Part::HexRandom | Part::UuidFlush))
    }

    /// Whether chunks of different runs can never get the same key from it: it holds a random
    /// part (drawn per chunk). What a destination that cannot be asked needs (a presigned POST).
    pub fn is_unique_per_run(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::HexRandom | Part::UuidFlush))
    }

    fn render_with(&self, v: &KeyValues<'_>, index: Option<u64>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Tag => out.push_str(v.tag),
                Part::Path => out.push_str(v.path),
                Part::TimeSlice => out.push_str(v.time_slice),
                Part::FileExtension => out.push_str(v.file_extension),
                Part::Hostname => out.push_str(v.hostname),
                Part::Index => match index {
                    Some(i) => out.push_str(&i.to_string()),
                    None => out.push_str("%{index}"),
                },
                Part::HexRandom => match index {
                    // fluent-plugin-s3's default hex_random_length is 4.
                    Some(_) => out.push_str(&format!("{:04x}", v.random & 0xffff)),
                    None => out.push_str("%{hex_random}"),
                },
                Part::UuidFlush => match index {
                    Some(_) => out.push_str(&uuid_from(v.random)),
                    None => out.push_str("%{uuid_flush}"),
                },
            }
        }
        out
    }
}

impl KeyTemplate {
    /// A format built into logship (a default, or what the injector writes); a mistake in one
    /// is a bug, caught by the unit tests that use it.
    pub fn builtin(format: &str) -> KeyTemplate {
        match KeyTemplate::parse(format) {
            Ok(t) => t,
            Err(e) => panic!("built-in key format {format:?}: {e}"),
        }
    }

    /// This format below `%{path}/` (what an output with a `path` uses by default).
    pub fn under_path(&self) -> KeyTemplate {
        let mut parts = vec![Part::Path, Part::Lit("/".into())];
        parts.extend(self.parts.iter().cloned());
        KeyTemplate {
            parts: merge_literals(parts),
        }
    }

    /// This format with `_%{hex_random}` after its first `%{index}` (or at its end without
    /// one): keys that differ between runs, for a destination that cannot be asked.
    pub fn with_random_part(&self) -> KeyTemplate {
        let mut parts = self.parts.clone();
        let at = parts
            .iter()
            .position(|p| *p == Part::Index)
            .map_or(parts.len(), |i| i + 1);
        parts.splice(at..at, [Part::Lit("_".into()), Part::HexRandom]);
        KeyTemplate {
            parts: merge_literals(parts),
        }
    }
}

/// Joins neighbouring literals, so equal formats compare equal however they were built.
fn merge_literals(parts: Vec<Part>) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::with_capacity(parts.len());
    for p in parts {
        match (out.last_mut(), p) {
            (Some(Part::Lit(a)), Part::Lit(b)) => a.push_str(&b),
            (_, p) => out.push(p),
        }
    }
    out
}

impl serde::Serialize for KeyTemplate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parsed when the configuration is read, so an unknown placeholder is an error at its line
/// and column, and nothing parses it again.
impl<'de> serde::Deserialize<'de> for KeyTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        KeyTemplate::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.parts {
            let s = match p {
                Part::Lit(s) => s.as_str(),
                Part::Tag => "%{tag}",
                Part::Path => "%{path}",
                Part::TimeSlice => "%{time_slice}",
                Part::Index => "%{index}",
                Part::FileExtension => "%{file_extension}",
                Part::HexRandom => "%{hex_random}",
                Part::UuidFlush => "%{uuid_flush}",
                Part::Hostname => "%{hostname}",
            };
            f.write_str(s)?;
        }
        Ok(())
    }
}

/// A version-4-shaped UUID spread from one 64-bit random value (enough to tell chunks apart).
fn uuid_from(r: u64) -> String {
    let a = r;
    let b = r.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        (a as u16) & 0x0fff,
        ((b >> 48) as u16 & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// fluent-plugin-s3's default `%{time_slice}` format for a time key width.
pub fn default_time_slice_format(timekey_secs: u64) -> &'static str {
    match timekey_secs {
        0..60 => "%Y%m%d%H%M%S",
        60..3600 => "%Y%m%d%H%M",
        3600..86400 => "%Y%m%d%H",
        _ => "%Y%m%d",
    }
}

/// Formats a time key (seconds since the epoch) in UTC.
pub fn format_time_slice(format: &str, unix_secs: i64) -> String {
    match chrono::DateTime::from_timestamp(unix_secs, 0) {
        Some(t) => t.format(format).to_string(),
        None => unix_secs.to_string(),
    }
}

/// This host's name (the pod name in Kubernetes), read once.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_formats_equal_parsed_ones_and_round_trip_through_serde() {
        let d = KeyTemplate::builtin("%{tag}/%{time_slice}_%{index}.%{file_extension}");
        assert_eq!(
            d.under_path(),
            KeyTemplate::parse("%{path}/%{tag}/%{time_slice}_%{index}.%{file_extension}").unwrap()
        );
        assert_eq!(
            d.with_random_part(),
            KeyTemplate::parse("%{tag}/%{time_slice}_%{index}_%{hex_random}.%{file_extension}").unwrap()
        );
        assert_eq!(
            KeyTemplate::builtin("x/%{tag}").with_random_part().to_string(),
            "x/%{tag}_%{hex_random}"
        );
        #[derive(serde::Serialize, serde::Deserialize)]
        struct T {
            k: KeyTemplate,
        }
        let t: T = toml::from_str("k = \"%{path}/a_%{index}\"").unwrap();
        assert_eq!(toml::to_string(&t).unwrap(), "k = \"%{path}/a_%{index}\"\n");
        let e = toml::from_str::<T>("\n\nk = \"%{nope}\"").err().unwrap().to_string();
        assert!(e.contains("line 3") && e.contains("unknown placeholder %{nope}"), "{e}");
    }

    fn values() -> KeyValues<'static> {
        KeyValues {
            tag: "pod-1/stdout",
            path: "logs/app",
            time_slice: "20261124112000",
            file_extension: "txt",
            random: 0xdead_beef_1234_5678,
            hostname: "host",
        }
    }

    #[test]
    fn renders_fluent_plugin_s3_placeholders() {
        let t = KeyTemplate::parse("%{path}/%{tag}/%{time_slice}_%{index}.%{file_extension}").unwrap();
        assert_eq!(t.render(&values(), 3), "logs/app/pod-1/stdout/20261124112000_3.txt");
        assert_eq!(t.prefix(&values()), "logs/app/pod-1/stdout/20261124112000_%{index}.txt");
        assert!(t.has_index());
    }

    #[test]
    fn random_parts_are_stable_for_a_chunk_and_left_out_of_the_prefix() {
        let t = KeyTemplate::parse("x/%{hex_random}/%{uuid_flush}-%{index}").unwrap();
        let k1 = t.render(&values(), 0);
        assert_eq!(k1, t.render(&values(), 0));
        assert!(k1.starts_with("x/5678/"), "{k1}");
        assert_eq!(t.prefix(&values()), "x/%{hex_random}/%{uuid_flush}-%{index}");
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_errors() {
        assert_eq!(KeyTemplate::parse("%{nope}"), Err(KeyError::Unknown("nope".into())));
        assert_eq!(KeyTemplate::parse("ab%{index"), Err(KeyError::Unclosed(2)));
        assert_eq!(KeyTemplate::parse(""), Err(KeyError::Empty));
    }

    #[test]
    fn the_fluentd_tag_placeholder_is_the_same_as_ours() {
        let t = KeyTemplate::parse("${tag}/%{index}").unwrap();
        assert_eq!(t.to_string(), "%{tag}/%{index}");
    }

    #[test]
    fn time_slice_defaults_follow_the_timekey_width() {
        assert_eq!(default_time_slice_format(30), "%Y%m%d%H%M%S");
        assert_eq!(default_time_slice_format(300), "%Y%m%d%H%M");
        assert_eq!(format_time_slice("%Y%m%d%H%M%S", 0), "19700101000000");
    }
}
