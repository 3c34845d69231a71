//! The ackwatch agent as a library: loading the probe and reading its maps. The
//! `ackwatch` binary, the integration tests and the xtasks build on it.

pub mod probe;
