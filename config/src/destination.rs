//! The `--to` grammar, shared by `logship ship` and `logship-inject`: where one stream of logs
//! goes, written as a URL.

use std::path::PathBuf;

/// Where logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Files in a directory (`file:///DIR`, or `file://relative/dir`).
    File(PathBuf),
    /// logship's standard output (`stdout`, `-`).
    Stdout,
    /// S3 objects under `prefix` (`s3://BUCKET/PREFIX`).
    S3 {
        /// The bucket (the S3 output's `s3.bucket`).
        bucket: String,
        /// The key prefix, without leading or trailing `/` (empty for the bucket's root).
        prefix: String,
    },
    /// CloudWatch Logs (`cloudwatch://GROUP/STREAM`; `%2F` in the group stands for `/`).
    CloudWatch {
        /// The log group.
        group: String,
        /// The stream name (or, for the injector, the prefix of the stream names), without
        /// leading or trailing `/`; empty when not given.
        stream: String,
    },
}

/// Why a destination was refused; the text says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// A scheme that is not one of logship's.
    #[error(
        "unsupported destination {to:?} (scheme {scheme:?}); supported: file:///DIR, s3://BUCKET/PREFIX, cloudwatch://GROUP/STREAM, stdout"
    )]
    Unsupported {
        /// What was given.
        to: String,
        /// Its scheme, so the message can say which part was not understood.
        scheme: String,
    },
    /// `file://` without a directory.
    #[error("file:// needs a directory, e.g. file:///tmp/out or file://./out")]
    NoDirectory,
    /// `s3://` without a bucket.
    #[error("s3:// needs a bucket, e.g. s3://my-bucket/spark-logs")]
    NoBucket,
    /// `cloudwatch://` without a group.
    #[error(
        "cloudwatch:// needs a log group, e.g. cloudwatch://spark-logs/%{{tag}} (write '/' in a group name as %2F)"
    )]
    NoGroup,
}

impl Destination {
    /// Parses a destination URL.
    pub fn parse(to: &str) -> Result<Destination, DestinationError> {
        if to == "-" || to == "stdout" || to == "stdout://" {
            return Ok(Destination::Stdout);
        }
        if let Some(rest) = to.strip_prefix("file://") {
            if rest.is_empty() {
                return Err(DestinationError::NoDirectory);
            }
            let dir = rest.trim_end_matches('/');
            return Ok(Destination::File(PathBuf::from(if dir.is_empty() { "/" } else { dir })));
        }
        if let Some(rest) = to.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(DestinationError::NoBucket);
            }
            return Ok(Destination::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if let Some(rest) = to.strip_prefix("cloudwatch://") {
            let (group, stream) = rest.split_once('/').unwrap_or((rest, ""));
            let group = group.replace("%2F", "/").replace("%2f", "/");
            if group.is_empty() {
                return Err(DestinationError::NoGroup);
            }
            return Ok(Destination::CloudWatch {
                group,
                stream: stream.trim_matches('/').to_string(),
            });
        }
        let scheme = to.split("://").next().unwrap_or(to);
        Err(DestinationError::Unsupported {
            to: to.to_string(),
            scheme: scheme.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_with_one_rule_for_slashes() {
        let s3 = |b: &str, p: &str| Destination::S3 {
            bucket: b.into(),
            prefix: p.into(),
        };
        assert_eq!(Destination::parse("s3://b/x/y/").unwrap(), s3("b", "x/y"));
        assert_eq!(Destination::parse("s3://b//x/").unwrap(), s3("b", "x"));
        assert_eq!(Destination::parse("s3://b").unwrap(), s3("b", ""));
        assert_eq!(
            Destination::parse("cloudwatch://%2Femr%2Fspark/jobs/").unwrap(),
            Destination::CloudWatch {
                group: "/emr/spark".into(),
                stream: "jobs".into()
            }
        );
        assert_eq!(
            Destination::parse("file:///tmp/out/").unwrap(),
            Destination::File("/tmp/out".into())
        );
        assert_eq!(Destination::parse("file:///").unwrap(), Destination::File("/".into()));
        assert_eq!(Destination::parse("-").unwrap(), Destination::Stdout);
        for bad in ["s3://", "cloudwatch:///x", "file://", "ftp://h/x", "x"] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Destination::parse("ftp://h/x")
                .unwrap_err()
                .to_string()
                .contains("\"ftp\"")
        );
    }
}
