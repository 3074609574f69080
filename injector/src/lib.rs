//! `logship-inject`: adds the logship sidecar to Spark pod templates (and, as an admission
//! webhook, to the pods Spark creates), so Spark's event logs and container logs are shipped by
//! a small sidecar that agrees with the daemon's env and path contract (`docs/injector.md`).
//!
//! One concern per module: `document` reads, validates and prints pods; `patch` adds the
//! sidecar; `sidecar` writes the sidecar's config; `spark_conf` the matching Spark settings;
//! `log_links` the executors' log links to where the sidecar puts their logs;
//! `configmap` bundles all of it as EMR's job runner does; `operator` patches Spark Operator
//! resources; `webhook` serves AdmissionReviews.

pub mod configmap;
pub mod document;
pub mod log_links;
pub mod operator;
pub mod options;
pub mod patch;
pub mod sidecar;
pub mod spark_conf;
pub mod webhook;
