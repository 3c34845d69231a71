//! Attaching the probe to interfaces: XDP for ingress, TC (TCX) for egress, with the
//! program variant that matches the interface's link layer.

use std::io;

use aya::programs::tc::{self, TcAttachType};
use aya::programs::xdp::XdpMode;
use ebpf_probe::parse::LinkKind;

use crate::probe::{Probe, ProbeError};

/// The link layer of `ifname` in this thread's network namespace: Ethernet, or none
/// (tun, WireGuard, PPP and the like start at the IP header).
pub fn link_kind(ifname: &str) -> io::Result<LinkKind> {
    const ARPHRD_ETHER: u16 = 1;
    // SAFETY: plain socket and ioctl calls on a zeroed ifreq whose name is bounded.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req
            .ifr_name
            .iter_mut()
            .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
        {
            *d = s as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            return Err(err);
        }
        Ok(if req.ifr_ifru.ifru_hwaddr.sa_family == ARPHRD_ETHER {
            LinkKind::Ethernet
        } else {
            LinkKind::RawIp
        })
    }
}

impl Probe {
    /// Attaches the ingress (XDP) program to `ifname` in this thread's namespace.
    pub fn attach_ingress(&mut self, ifname: &str, mode: XdpMode) -> Result<LinkKind, ProbeError> {
        let kind = link_kind(ifname).map_err(|e| ProbeError::Interface(ifname.into(), e))?;
        self.xdp(kind)?
            .attach(ifname, mode)
            .map_err(|e| ProbeError::Program("xdp attach", e))?;
        Ok(kind)
    }

    /// Attaches the egress (TC) program to `ifname` in this thread's namespace.
    pub fn attach_egress(&mut self, ifname: &str) -> Result<LinkKind, ProbeError> {
        let kind = link_kind(ifname).map_err(|e| ProbeError::Interface(ifname.into(), e))?;
        // TCX needs no qdisc; older kernels need clsact (already there is fine).
        let _ = tc::qdisc_add_clsact(ifname);
        self.tc(kind)?
            .attach(ifname, TcAttachType::Egress)
            .map_err(|e| ProbeError::Program("tc attach", e))?;
        Ok(kind)
    }
}
