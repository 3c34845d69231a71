//! Pieces of the live tests: where the probe sits, the headend's listener, waiting for
//! stall records.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ackwatch::probe::{Probe, Settings};
use aya::programs::xdp::XdpMode;
use ebpf_probe::abi::StallRecord;

use crate::lab::{Lab, enter, in_ns};

/// Where the probe is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// XDP ingress and TC egress on the headend's interface.
    Headend,
    /// XDP on both interfaces of the transit gateway.
    Gateway,
}

pub fn attach(lab: &Lab, settings: &Settings, placement: Placement) -> Probe {
    let mut probe = Probe::load(settings).expect("load the probe");
    match placement {
        Placement::Headend => in_ns(&lab.headend, || {
            probe
                .attach_ingress("h0", XdpMode::Default)
                .expect("attach XDP to h0");
            probe.attach_egress("h0").expect("attach TC to h0");
        }),
        Placement::Gateway => in_ns(&lab.gateway, || {
            probe
                .attach_ingress("g0", XdpMode::Default)
                .expect("attach XDP to g0");
            probe
                .attach_ingress("g1", XdpMode::Default)
                .expect("attach XDP to g1");
        }),
    }
    probe
}

/// The headend's listeners: accept on every port given, read each connection to its
/// end, count the bytes. Stops when dropped.
pub struct Headend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl Headend {
    pub fn start(lab: &Lab, ports: &[u16]) -> Headend {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = ports
            .iter()
            .map(|&port| {
                let (ns, stop) = (lab.headend.clone(), stop.clone());
                let (tx, rx) = std::sync::mpsc::channel();
                let t = std::thread::spawn(move || {
                    enter(&ns);
                    let l = TcpListener::bind(("::", port)).expect("listen");
                    l.set_nonblocking(true).unwrap();
                    tx.send(()).unwrap();
                    serve(l, &stop)
                });
                rx.recv().expect("listener up");
                t
            })
            .collect();
        Headend { stop, threads }
    }

    /// Stops accepting; returns the bytes received.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).map(|t| t.join().unwrap_or(0)).sum()
    }
}

impl Drop for Headend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(l: TcpListener, stop: &AtomicBool) -> u64 {
    let mut readers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                readers.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    let mut total = 0u64;
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    total
                }));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    readers
        .into_iter()
        .filter(|r| r.is_finished())
        .map(|r| r.join().unwrap_or(0))
        .sum()
}

/// Collects stall records from the probe for `d`.
pub fn records_for(probe: &mut Probe, d: Duration) -> Vec<StallRecord> {
    let (deadline, mut out) = (Instant::now() + d, Vec::new());
    while Instant::now() < deadline {
        out.extend(probe.drain_events().expect("ring buffer"));
        std::thread::sleep(Duration::from_millis(20));
    }
    out.extend(probe.drain_events().expect("ring buffer"));
    out
}
