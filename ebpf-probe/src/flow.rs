//! One packet through a flow: Wireshark's analysis, then the verdict, then the stall
//! check for both sides. The kernel program, the host tests and the offline analyser
//! all call `update`.

use crate::abi::{Flow, FlowState, half_flag, opaque};
use crate::analysis::analyze;
use crate::clock::Clock;
use crate::parse::{Segment, TH_ACK, TH_FIN, TH_RST, TH_SYN};
use crate::seq::lt;
use crate::verdict::{self, Config, StallSink, halves};

impl Flow {
    /// Applies segment `seg`, sent by endpoint `dir`, at coarse time `now` (ns);
    /// `clock` gives the precise time to the rules that need it.
    #[inline(always)]
    pub fn update<K: StallSink, C: Clock>(
        &mut self,
        dir: usize,
        seg: &Segment,
        now: u64,
        clock: &mut C,
        cfg: &Config,
        sink: &mut K,
    ) {
        let irtt = self.irtt;
        let (fwd, rev) = halves(self, dir);
        let dup = verdict::is_verdict_dup(fwd, rev, seg);
        let before_next = fwd.nextseq;
        let retx = seg.seglen > 0 && before_next != 0 && lt(seg.seq, before_next);
        let bits = opaque(&mut fwd.scratch, dup as u32 | (retx as u32) << 1);
        let (dup, retx) = (bits & 1 != 0, bits & 2 != 0);
        fwd.packets = fwd.packets.wrapping_add(1);
        fwd.bytes = fwd.bytes.wrapping_add(seg.seglen as u64);
        let a = analyze(fwd, rev, seg, now, clock, irtt);
        let before = verdict::Before {
            dup,
            retx,
            next: before_next,
        };
        verdict::after_segment(self, dir, seg, a, before, now, cfg, sink);

        // Wireshark's initial RTT: most recent SYN to the first ACK without SYN, on the
        // precise clock.
        if seg.has(TH_SYN) && !seg.has(TH_ACK) {
            self.syn_ts = clock.precise();
        } else if seg.has(TH_ACK) && !seg.has(TH_SYN) && self.syn_ts != 0 && self.irtt == 0 {
            self.irtt = clock.precise().wrapping_sub(self.syn_ts);
        }
        self.last_ts = now;

        if seg.has(TH_RST | TH_FIN) {
            verdict::end_stalls(self, now, sink);
        }
        let both_fin = self.half[0].flags & self.half[1].flags & half_flag::FIN != 0;
        if seg.has(TH_RST) || both_fin {
            self.state = FlowState::Closed as u8;
        }
        self.check_stalls(cfg, now, sink);
        if self.state != FlowState::Closed as u8 && self.stalled_sides() != 0 {
            self.state = FlowState::Stalled as u8;
        } else if self.state == FlowState::Stalled as u8 {
            // Episodes ended by a FIN while the connection stays half open.
            self.state = FlowState::Active as u8;
        }
    }

    /// Rule 3 for both sides; the sweep calls this for flows that went quiet.
    #[inline(always)]
    pub fn check_stalls<K: StallSink>(&mut self, cfg: &Config, now: u64, sink: &mut K) {
        verdict::check_stall(self, 0, cfg, now, sink);
        verdict::check_stall(self, 1, cfg, now, sink);
    }

    /// Bit i set when side i is R of an open episode.
    #[inline(always)]
    pub fn stalled_sides(&self) -> u8 {
        (self.half[0].flags & half_flag::STALLED != 0) as u8
            | (((self.half[1].flags & half_flag::STALLED != 0) as u8) << 1)
    }
}
