//! How objects are stored: a value of the configuration, used by the outputs that compress.

use serde::{Deserialize, Serialize};

/// How objects are stored (fluent-plugin-s3's `store_as`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StoreAs {
    /// The bytes as read.
    #[default]
    #[value(alias = "txt")]
    Text,
    /// gzip (RFC 1952).
    #[value(alias = "gz")]
    Gzip,
    /// zstd.
    #[value(alias = "zst")]
    Zstd,
}

impl StoreAs {
    /// `%{file_extension}`, as fluent-plugin-s3 names them.
    pub fn extension(self) -> &'static str {
        match self {
            StoreAs::Text => "txt",
            StoreAs::Gzip => "gz",
            StoreAs::Zstd => "zst",
        }
    }

    /// The object's Content-Type.
    pub fn content_type(self) -> &'static str {
        match self {
            StoreAs::Text => "text/plain",
            StoreAs::Gzip => "application/x-gzip",
            StoreAs::Zstd => "application/zstd",
        }
    }

    /// Parses `text|gzip|zstd`.
    pub fn parse(s: &str) -> Option<StoreAs> {
        match s {
            "text" | "txt" => Some(StoreAs::Text),
            "gzip" | "gz" => Some(StoreAs::Gzip),
            "zstd" | "zst" => Some(StoreAs::Zstd),
            _ => None,
        }
    }
}
