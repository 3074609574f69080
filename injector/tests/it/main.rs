//! The injector's integration tests, one binary: templates, the webhook, pods run as processes,
//! and real Spark asking for executor pods.

mod common;

mod deploy;
mod links;
mod operator;
mod pod;
mod running;
mod spark;
mod template;
mod webhook;
