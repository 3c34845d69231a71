//! The ackwatch agent as a library: loading the probe and reading its maps, reading
//! captures and analysing them offline, and the flow reports both produce. The
//! `ackwatch` binary, the integration tests and the xtasks build on it.

pub mod alerting;
pub mod analyze;
pub mod attach;
pub mod batch;
pub mod caps;
pub mod capture;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod events;
pub mod flow_table;
pub mod flows;
pub mod http;
pub mod metrics;
pub mod pins;
pub mod probe;
pub mod report;
pub mod sweep;
pub mod tls;
pub mod web_config;
