//! The probe's own log records (aya-log): one per stall transition, read back by the
//! agent's logger.

use std::sync::Mutex;

use ackwatch::kernel::probe::Settings;
use ackwatch_tests::harness::Kernel;
use ackwatch_tests::scenario::ctcp_flow;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Collect;

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        LINES
            .lock()
            .unwrap()
            .push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

#[test]
fn the_probe_logs_each_stall_transition() {
    log::set_logger(&Collect).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let mut k = Kernel::load(Settings::default());
    for s in ctcp_flow(
        "192.0.2.20:40002".parse().unwrap(),
        "198.51.100.1:10000".parse().unwrap(),
        20,
        Some(8),
        1500,
    ) {
        k.feed(s.hook, &s.frame, s.at_ns);
    }
    let mut logger = k.probe.take_logger().expect("the probe's logger");
    logger.flush();
    let lines: Vec<String> = LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("stall"))
        .cloned()
        .collect();
    assert_eq!(
        lines,
        ["INFO stall transition 0 (0 started, 1 recovered, 2 ended), hole 4201"]
    );
}
