//! Time for the state machine. Most rules work in milliseconds or seconds (T, idle, the
//! 20 ms fast-retransmission window) and read the coarse clock, which costs nothing in
//! the kernel; the initial RTT and the out-of-order window need sub-tick precision and
//! ask for the precise clock, which costs a helper call, only on the segments whose rule
//! needs it (SYNs, the ACK completing a handshake, data that falls behind the sender's
//! next sequence number, and data that advances it while the flow's out-of-order window
//! is too short for the coarse clock: `analysis::stamp`). Pure ACKs never read it.

pub trait Clock {
    /// Nanoseconds at tick precision.
    fn coarse(&mut self) -> u64;
    /// Nanoseconds at full precision, on the same time base.
    fn precise(&mut self) -> u64;
    /// How far apart the coarse clock's readings step (0: it is the precise clock).
    /// Read after `coarse`.
    fn tick(&mut self) -> u64;
}

/// One time for both: a capture's timestamps, the tests' map clock.
#[derive(Clone, Copy, Debug)]
pub struct Fixed(pub u64);

impl Clock for Fixed {
    #[inline(always)]
    fn coarse(&mut self) -> u64 {
        self.0
    }
    #[inline(always)]
    fn precise(&mut self) -> u64 {
        self.0
    }
    #[inline(always)]
    fn tick(&mut self) -> u64 {
        0
    }
}
