//! logship: ships Spark's logs (event logs, stdout, stderr) from Kubernetes pods to S3, CloudWatch
//! Logs or a directory, crash-safe and in a few MiB of memory.
//!
//! Data flows `source → buffer → sink`: [`source::tail`] follows files, [`buffer`] keeps chunks by
//! time key in files committed atomically with the read positions, [`sink`] delivers sealed
//! chunks, [`pipeline`] runs the loop and [`lifecycle`] decides when to drain and stop.

pub mod buffer;
/// The configuration model, its own crate (no AWS dependency) so the injector shares it.
pub use logship_config as config;
pub mod clock;
pub mod crashpoint;
pub mod engine;
pub mod fluentd;
pub mod fsutil;
pub mod lifecycle;
pub mod log_writer;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod presign;
pub mod record;
pub mod resend;
pub mod sink;
pub mod source;
pub mod summary;
pub use logship_config::units;
pub mod watch;
pub mod wrap;
