//! Collectors for the mirror-port lab: the gateway's g0 traffic, both directions,
//! copied by the kernel itself (tc `mirred` in mirror mode, a `u32` match-all filter
//! on g0's ingress and egress) to a collector namespace, as a switch's SPAN port sends
//! it, or through a real Linux VXLAN device to the collector's underlay interface,
//! which has no VXLAN device (the probe decapsulates). Removed on drop.
//!
//! ```text
//!   [client] c0 ── g0 [gateway] g1 ── h0 [headend]
//!                   ╎ mirred
//!                   ├╌► s<n> ──────────────────── m0 [SPAN collector]
//!                   └╌► vx<n> (VXLAN 42) ─ u<n> ── m0 [VXLAN collector]
//!                                       fd78:n::1   fd78:n::2
//!                                       (MTU 3000: whole copies)
//! ```

use std::process::Command;

use crate::lab::{Lab, sh};

/// How a collector receives its copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copies {
    Span,
    Vxlan,
}

/// A collector namespace whose `m0` receives copies of g0's traffic.
pub struct Collector {
    pub ns: String,
    /// The gateway's device the copies are mirrored to.
    target: String,
}

/// The collector's mirror port.
pub const PORT: &str = "m0";

impl Collector {
    /// Collector `n` (0-9) of `lab`, fed as `copies` says, once `mirror_g0` starts the
    /// copies.
    pub fn new(lab: &Lab, copies: Copies, n: u8) -> Collector {
        let ns = format!("{}-m{n}", lab.gateway);
        let g = &lab.gateway;
        sh(&format!("ip netns add {ns}"));
        sh(&format!("ip -n {ns} link set lo up"));
        let mut c = Collector {
            ns,
            target: String::new(),
        };
        let link = format!("{}{n}", if copies == Copies::Span { "s" } else { "u" });
        // The underlay carries whole frames plus 50 bytes of VXLAN, unfragmented (a
        // fragmented copy is not read), and stays within what XDP on a veth takes.
        let mtu = if copies == Copies::Span { 1500 } else { 3000 };
        sh(&format!(
            "ip link add {link} netns {g} mtu {mtu} type veth peer name {PORT} netns {} mtu {mtu}",
            c.ns
        ));
        sh(&format!("ip -n {} link set {PORT} up", c.ns));
        sh(&format!("ip -n {g} link set {link} up"));
        for (ns, dev) in [(g.as_str(), link.as_str()), (c.ns.as_str(), PORT)] {
            sh(&format!(
                "ip netns exec {ns} ethtool -K {dev} gro off gso off tso off tx off"
            ));
        }
        c.target = match copies {
            Copies::Span => link,
            Copies::Vxlan => {
                let vx = format!("vx{n}");
                // An IPv6 underlay: neighbour discovery must pass --mirror-drop.
                sh(&format!(
                    "ip -n {g} addr add fd78:{n}::1/64 dev {link} nodad"
                ));
                let collector = format!("fd78:{n}::2/64 dev {PORT} nodad");
                sh(&format!("ip -n {} addr add {collector}", c.ns));
                sh(&format!(
                    "ip -n {g} link add {vx} type vxlan id 42 local fd78:{n}::1 remote fd78:{n}::2 dstport 4789 dev {link}"
                ));
                sh(&format!("ip -n {g} link set {vx} up"));
                vx
            }
        };
        c
    }

    /// `Udp6NoPorts` of the collector (/proc/net/snmp6): VXLAN copies that reached its
    /// stack (no socket on 4789).
    pub fn udp_no_ports(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "cat", "/proc/net/snmp6"])
            .output()
            .expect("read /proc/net/snmp6");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Udp6NoPorts")?.trim().parse().ok())
            .expect("Udp6NoPorts")
    }
}

/// Copies every frame of g0's ingress and egress to each collector: one match-all
/// `u32` filter per direction, one `mirred` mirror action per collector.
pub fn mirror_g0(lab: &Lab, collectors: &[&Collector]) {
    let g = &lab.gateway;
    sh(&format!("ip netns exec {g} tc qdisc add dev g0 clsact"));
    let actions: Vec<String> = collectors
        .iter()
        .map(|c| format!("action mirred egress mirror dev {}", c.target))
        .collect();
    for dir in ["ingress", "egress"] {
        sh(&format!(
            "ip netns exec {g} tc filter add dev g0 {dir} protocol all prio 1 u32 match u32 0 0 {}",
            actions.join(" ")
        ));
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
