//! The agent's lab: a headend whose input drops one cTCP segment, and an emulated
//! cTCP client that loses it and never retransmits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ctcp::CtcpClient;
use crate::lab::{CLIENT4, HEADEND4, Lab, in_ns};
use crate::live::Headend;

pub const ISN: u32 = 1000;
pub const LEN: usize = 400;
pub const HOLE: u32 = ISN + 1 + 8 * LEN as u32; // hole(ISN)

/// The ninth segment's sequence number, lost in this lab, for a client starting at `isn`.
pub fn hole(isn: u32) -> u32 {
    isn.wrapping_add(1 + 8 * LEN as u32)
}

/// A lab whose headend drops the cTCP segment at HOLE after the probe saw it; a resend
/// one byte longer passes (a client that answers late).
pub fn lab_with_loss() -> (Lab, Headend) {
    lab_with_loss_of(&[ISN])
}

/// As `lab_with_loss`, for clients starting at each of `isns`.
pub fn lab_with_loss_of(isns: &[u32]) -> (Lab, Headend) {
    let lab = Lab::new();
    lab.quiet_client_kernel();
    drop_holes_at_headend(&lab, isns);
    let headend = Headend::start(&lab, &[10_000]);
    (lab, headend)
}

/// Makes the headend's input drop the cTCP segment at `hole(isn)` for each of `isns`
/// (after a probe on the headend or the gateway saw it); a resend one byte longer
/// passes.
pub fn drop_holes_at_headend(lab: &Lab, isns: &[u32]) {
    for isn in isns {
        lab.nft_rule(
            &lab.headend,
            "ackwatch_loss",
            "input",
            &format!(
                "tcp dport 10000 tcp sequence {} meta length != {} drop",
                hole(*isn),
                LEN + 41
            ),
        );
    }
}

/// 20 cTCP segments, the ninth lost; then `more` segments every 100 ms.
pub fn ctcp(lab: &Lab, port: u16, more: usize) {
    ctcp_from(lab, port, ISN, more);
}

/// What the emulated cTCP client saw: when it sent the segment after the hole (the
/// headend's first duplicate ACK answers it), and the headend's last acknowledgment
/// (its real hole: the planned one, unless the lab itself lost an earlier segment).
pub struct CtcpRun {
    pub after_hole: Instant,
    pub acked: Option<u32>,
}

/// `ctcp` with the client's initial sequence number `isn`.
pub fn ctcp_from(lab: &Lab, port: u16, isn: u32, more: usize) -> CtcpRun {
    ctcp_session(lab, port, isn, more, false)
}

/// `ctcp` whose client, after its `more` segments, answers the hole at last (a resend
/// one byte longer, which the lab lets through): the stall recovers.
pub fn ctcp_answered_after(lab: &Lab, port: u16, more: usize) -> CtcpRun {
    ctcp_session(lab, port, ISN, more, true)
}

fn ctcp_session(lab: &Lab, port: u16, isn: u32, more: usize, answer: bool) -> CtcpRun {
    let (client, server): (SocketAddr, SocketAddr) = (
        format!("{CLIENT4}:{port}").parse().unwrap(),
        format!("{HEADEND4}:10000").parse().unwrap(),
    );
    in_ns(&lab.client, || {
        let mut c = CtcpClient::connect(client, server, isn).expect("handshake");
        let mut after_hole = Instant::now();
        for i in 0..20 {
            c.send_data(LEN).unwrap();
            if i == 9 {
                after_hole = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut acked = None;
        for _ in 0..more {
            c.send_data(LEN).unwrap();
            acked = c.ignore_for(Duration::from_millis(100)).unwrap().or(acked);
        }
        if answer {
            c.resend(hole(isn), LEN + 1).unwrap();
            c.ignore_for(Duration::from_millis(500)).unwrap();
        }
        CtcpRun { after_hole, acked }
    })
}
