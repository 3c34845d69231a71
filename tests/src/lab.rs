//! The namespace lab: a client, a gateway and a headend joined by veths, IPv4 and IPv6,
//! offloads off by default, so that every segment crosses the probe as it is sent (or
//! at the kernel's defaults, as on a real headend: `Offloads`). Addresses exist only
//! inside these namespaces. Everything is removed on drop, pass or fail.
//!
//! ```text
//!   [client] c0 ───── g0 [gateway] g1 ───── h0 [headend]
//!   10.77.1.2        10.77.1.1  10.77.2.1       10.77.2.2
//!   fd77:1::2        fd77:1::1  fd77:2::1       fd77:2::2
//! ```

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub const CLIENT4: &str = "10.77.1.2";
pub const CLIENT6: &str = "fd77:1::2";
pub const HEADEND4: &str = "10.77.2.2";
pub const HEADEND6: &str = "fd77:2::2";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub client: String,
    pub gateway: String,
    pub headend: String,
}

/// Runs `cmd` (split on spaces), panicking with its stderr on failure.
pub fn sh(cmd: &str) {
    let parts: Vec<&str> = cmd.split_whitespace().collect();
    let out = Command::new(parts[0])
        .args(&parts[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// The veths' segmentation and receive offloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offloads {
    /// GRO, GSO, TSO and checksum offload off on every veth: the probe sees wire
    /// segments.
    Off,
    /// The kernel's defaults for veth (TSO, GSO and checksum offload on, GRO off):
    /// TC egress sees the sender's super-packets.
    KernelDefaults,
    /// The kernel's defaults, and GRO turned on at both of the gateway's veths: the
    /// gateway merges what it receives and forwards the merged packets.
    GroAtGateway,
    /// GRO at the gateway and BIG TCP on every veth (GSO and GRO up to `BIG_TCP`
    /// bytes, IPv4 and IPv6): super-packets longer than 64 KB, whose IPv4 total
    /// length is 0 and whose IPv6 payload length is 0 behind a jumbo option.
    BigTcp,
}

/// The BIG TCP packet size of `Offloads::BigTcp` (the kernel documentation's example).
pub const BIG_TCP: u32 = 185_000;

impl Lab {
    /// A lab with every offload off.
    pub fn new() -> Lab {
        Lab::with_offloads(Offloads::Off)
    }

    pub fn with_offloads(offloads: Offloads) -> Lab {
        let id = format!(
            "aw{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            client: format!("{id}-c"),
            gateway: format!("{id}-g"),
            headend: format!("{id}-h"),
        };
        for ns in [&lab.client, &lab.gateway, &lab.headend] {
            sh(&format!("ip netns add {ns}"));
            sh(&format!("ip -n {ns} link set lo up"));
        }
        let (c, g, h) = (&lab.client, &lab.gateway, &lab.headend);
        sh(&format!(
            "ip link add c0 netns {c} type veth peer name g0 netns {g}"
        ));
        sh(&format!(
            "ip link add g1 netns {g} type veth peer name h0 netns {h}"
        ));
        for (ns, dev, v4, v6) in [
            (c, "c0", "10.77.1.2/24", "fd77:1::2/64"),
            (g, "g0", "10.77.1.1/24", "fd77:1::1/64"),
            (g, "g1", "10.77.2.1/24", "fd77:2::1/64"),
            (h, "h0", "10.77.2.2/24", "fd77:2::2/64"),
        ] {
            sh(&format!("ip -n {ns} addr add {v4} dev {dev}"));
            sh(&format!("ip -n {ns} addr add {v6} dev {dev} nodad"));
            sh(&format!("ip -n {ns} link set {dev} up"));
            let features = match (offloads, ns == g) {
                (Offloads::Off, _) => Some("gro off gso off tso off tx off"),
                (Offloads::GroAtGateway | Offloads::BigTcp, true) => Some("gro on"),
                _ => None,
            };
            if let Some(features) = features {
                sh(&format!("ip netns exec {ns} ethtool -K {dev} {features}"));
            }
            if offloads == Offloads::BigTcp {
                in_ns(ns, || set_big_tcp(dev, BIG_TCP));
            }
        }
        sh(&format!("ip -n {c} route add default via 10.77.1.1"));
        sh(&format!("ip -n {c} -6 route add default via fd77:1::1"));
        sh(&format!("ip -n {h} route add default via 10.77.2.1"));
        sh(&format!("ip -n {h} -6 route add default via fd77:2::1"));
        sh(&format!(
            "ip netns exec {g} sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"
        ));
        // Keep the client kernel's own ports clear of the emulator's (ctcp::PORTS).
        let range = Command::new("ip")
            .args([
                "netns",
                "exec",
                c,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_local_port_range=20000 40000",
            ])
            .status()
            .expect("sysctl");
        assert!(range.success(), "setting the client's port range");
        lab
    }

    /// Adds table `table` with one base chain on `hook` holding `rule`, in namespace `ns`.
    pub fn nft_rule(&self, ns: &str, table: &str, hook: &str, rule: &str) {
        let rules = format!(
            "table inet {table} {{\n chain c {{\n  type filter hook {hook} priority 0; policy accept;\n  {rule}\n }}\n}}\n"
        );
        self.nft(ns, &rules);
    }

    /// Runs `nft -f -` with `rules` in namespace `ns`.
    pub fn nft(&self, ns: &str, rules: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft in {ns}: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Lab {
    /// The client kernel would answer the emulator's SYN-ACK with a RST (it never made
    /// that connection): drop those.
    pub fn quiet_client_kernel(&self) {
        let (lo, hi) = (crate::ctcp::PORTS.start, crate::ctcp::PORTS.end - 1);
        self.nft_rule(
            &self.client,
            "ackwatch_emulator",
            "output",
            &format!("tcp sport {lo}-{hi} tcp flags rst drop"),
        );
    }

    /// Drops every TCP packet the client and the headend send from now on, at their
    /// output hooks, before any probe or capture on the path: a capture then ends with
    /// what the probe saw. Under loss a kernel goes on retransmitting after the traffic
    /// ended, with growing gaps: in 1 of 3 runs of the loss test, a FIN and two ACKs
    /// came while tcpdump was being stopped, where one can be counted by the probe and
    /// not written by tcpdump (one CI run: 74 of 75 packets).
    pub fn seal(&self) {
        for ns in [&self.client, &self.headend] {
            self.nft_rule(ns, "ackwatch_seal", "output", "meta l4proto tcp drop");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("ACKWATCH_LAB_STATS").is_some() {
            for (ns, dev) in [
                (&self.gateway, "g1"),
                (&self.headend, "h0"),
                (&self.client, "c0"),
                (&self.gateway, "g0"),
            ] {
                let out = Command::new("ip")
                    .args(["-s", "-n", ns, "link", "show", dev])
                    .output()
                    .unwrap();
                eprintln!("{ns} {dev}: {}", String::from_utf8_lossy(&out.stdout));
            }
            for ns in [&self.client, &self.headend, &self.gateway] {
                let out = Command::new("ip")
                    .args(["netns", "exec", ns, "nft", "list", "ruleset"])
                    .output()
                    .unwrap();
                eprintln!(
                    "{ns} nft: {}",
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter(|l| l.contains("counter") || l.contains("drop"))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
                let out = Command::new("ip")
                    .args(["netns", "exec", ns, "nstat", "-az"])
                    .output()
                    .unwrap();
                let s = String::from_utf8_lossy(&out.stdout);
                for l in s.lines().filter(|l| !l.contains(" 0 ")) {
                    eprintln!("{ns}: {l}");
                }
            }
        }
        for ns in [&self.client, &self.gateway, &self.headend] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Lets `dev` (in this thread's namespace) build and take super-packets of up to
/// `size` bytes, IPv6 and IPv4: GSO and GRO maximum sizes by rtnetlink, as the
/// iproute2 of Debian 12 cannot set the IPv4 ones.
fn set_big_tcp(dev: &str, size: u32) {
    const IFLA_GSO_MAX_SIZE: u16 = 41;
    const IFLA_GRO_MAX_SIZE: u16 = 58;
    const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
    const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: a name lookup with a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no interface {dev}");
    let attrs = [
        IFLA_GSO_MAX_SIZE,
        IFLA_GRO_MAX_SIZE,
        IFLA_GSO_IPV4_MAX_SIZE,
        IFLA_GRO_IPV4_MAX_SIZE,
    ];
    let len = 16 + 16 + 8 * attrs.len();
    let mut msg = Vec::with_capacity(len);
    // nlmsghdr: length, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, sequence 1, port 0.
    msg.extend((len as u32).to_ne_bytes());
    msg.extend((libc::RTM_NEWLINK).to_ne_bytes());
    msg.extend(((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend(1u32.to_ne_bytes());
    msg.extend(0u32.to_ne_bytes());
    // ifinfomsg: any family, the interface, no flag changes.
    msg.extend([0u8; 4]);
    msg.extend((ifindex as i32).to_ne_bytes());
    msg.extend([0u8; 8]);
    for a in attrs {
        msg.extend(8u16.to_ne_bytes());
        msg.extend(a.to_ne_bytes());
        msg.extend(size.to_ne_bytes());
    }
    let mut ack = [0u8; 256];
    // SAFETY: a netlink socket used for one request and its acknowledgement, then
    // closed; the buffers outlive the calls.
    let error = unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        assert!(
            fd >= 0,
            "netlink socket: {}",
            std::io::Error::last_os_error()
        );
        let sent = libc::send(fd, msg.as_ptr().cast(), msg.len(), 0);
        let got = libc::recv(fd, ack.as_mut_ptr().cast(), ack.len(), 0);
        libc::close(fd);
        assert!(
            sent == len as isize && got >= 20,
            "rtnetlink exchange failed"
        );
        // nlmsgerr after the 16-byte header: 0 or a negative errno.
        i32::from_ne_bytes(ack[16..20].try_into().unwrap())
    };
    assert_eq!(
        error,
        0,
        "BIG TCP sizes on {dev}: {}",
        std::io::Error::from_raw_os_error(-error)
    );
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter(ns: &str) {
    let f =
        File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    // SAFETY: setns on an open namespace file; affects this thread only.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread inside namespace `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

/// Sends raw frames out of `ifname` in namespace `ns` (AF_PACKET), each at its offset
/// from now: crafted traffic, VLAN tags included, for the probe on the peer interface.
pub fn inject(ns: &str, ifname: &str, frames: &[(std::time::Duration, Vec<u8>)]) {
    in_ns(ns, || {
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: plain socket calls; the sockaddr_ll is zeroed then filled.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert!(ifindex != 0, "no interface {ifname} in {ns}");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            let start = std::time::Instant::now();
            for (at, f) in frames {
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                let send = || {
                    libc::sendto(
                        fd,
                        f.as_ptr() as *const _,
                        f.len(),
                        0,
                        &sll as *const _ as *const _,
                        size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                let mut n = send();
                // The device's queue is full (frames sent back to back): wait for room,
                // a second at most (then the assert below reports ENOBUFS).
                let patience = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while n < 0
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS)
                    && std::time::Instant::now() < patience
                {
                    std::thread::yield_now();
                    n = send();
                }
                assert!(
                    n == f.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    })
}
