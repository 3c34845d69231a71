//! The ackwatch agent as a library, grouped by job: `kernel` loads the probe, attaches
//! it and reads its maps (and the sweep that applies the stall rule to silent flows);
//! `serve` is what the agent gives out (HTTP, metrics, events, alerts); `offline` reads
//! captures and analyses them with the same logic. `flows` is the flow report both
//! produce. The `ackwatch` binary, the integration tests and the xtasks build on it.

pub mod cli;
pub mod daemon;
pub mod flows;
pub mod kernel;
pub mod offline;
pub mod serve;
