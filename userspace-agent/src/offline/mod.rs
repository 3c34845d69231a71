//! Offline analysis: reading pcap and pcapng captures (`capture`), running them through
//! the probe's parser and state machine (`analyze`), and the printed report.

pub mod analyze;
pub mod capture;
pub mod report;
