//! What ackwatch's kernel and integration tests share: frame builders, a harness
//! around the loaded probe, and generators of TCP conversations.

pub mod conversation;
pub mod frames;
pub mod harness;
pub mod scenario;
pub mod tshark;
