//! Talking to the kernel: loading and attaching the probe, its pins, the mapped flow
//! table, and the sweep over it.

pub mod attach;
pub mod caps;
pub mod flow_table;
pub mod pins;
pub mod probe;
pub mod sweep;
