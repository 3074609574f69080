//! The integration tests: one binary (one link of the AWS SDKs instead of one per area), one
//! module per area, and the shared harness in `common`. Each test runs the real `logship` binary
//! against real files and real servers.

mod common;

mod backpressure;
mod cli;
mod cloudwatch;
mod crash;
mod crash_matrix;
mod disk;
mod eventlog;
mod fail_fast;
mod fluentd;
mod lifecycle;
mod metrics;
mod model;
mod pod;
mod podman;
mod records;
mod s3;
mod spark_events;
mod tail;
mod wrap;
