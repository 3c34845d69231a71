//! ackwatch's shared core: the kernel/host ABI, packet parsing, Wireshark 4.0's TCP
//! analysis, the stall verdict and the flow-table logic. The same code is compiled into
//! the BPF programs (`src/main.rs`) and used on the host by the agent, the offline
//! analyser and the tests, so the kernel and the host cannot disagree by construction.
#![cfg_attr(not(any(test, feature = "user")), no_std)]
// Compare-and-swap, and a compiler barrier, for the BPF target (see `table::atomic`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics, asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

pub mod abi;
pub mod analysis;
pub mod classify;
pub mod clock;
pub mod decap;
pub mod flow;
pub mod parse;
pub mod seq;
pub mod table;
pub mod tracker;
pub mod verdict;

#[cfg(any(test, feature = "user"))]
pub mod host;

#[cfg(test)]
mod tests;
