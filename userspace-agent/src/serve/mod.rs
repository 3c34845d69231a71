//! What the agent gives out: HTTP (/metrics, /healthz, /flows, with TLS and auth), the
//! metrics, JSON events, alerts to Alertmanager, and the client of `ackwatch flows`.

pub mod alerting;
pub mod client;
pub mod events;
pub mod http;
pub mod metrics;
pub mod tls;
pub mod web_config;
