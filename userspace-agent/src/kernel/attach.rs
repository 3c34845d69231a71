//! Attaching the probe to interfaces: XDP for ingress, TC (TCX) for egress, with the
//! program variant that matches the interface's link layer; XDP only on mirror ports.

use std::io;

use std::path::Path;

use aya::programs::links::FdLink;
use aya::programs::tc::{self, TcAttachType};
use aya::programs::xdp::XdpMode;
use ebpf_probe::parse::LinkKind;

use crate::kernel::probe::{Probe, ProbeError};

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
    /// Attaches the ingress (XDP) program to `ifname` in this thread's namespace. With
    /// `pin`, the link is pinned there, and a link already pinned there is kept: a
    /// restarted agent then finds its probe still attached. Returns whether it attached.
    pub fn attach_ingress(
        &mut self,
        ifname: &str,
        mode: XdpMode,
        pin: Option<&Path>,
    ) -> Result<bool, ProbeError> {
        self.attach_xdp(ifname, mode, pin, false)
    }

    /// Attaches the mirror program to `ifname`, a mirror port (Ethernet); `pin` as for
    /// `attach_ingress`.
    pub fn attach_mirror(
        &mut self,
        ifname: &str,
        mode: XdpMode,
        pin: Option<&Path>,
    ) -> Result<bool, ProbeError> {
        self.attach_xdp(ifname, mode, pin, true)
    }

    fn attach_xdp(
        &mut self,
        ifname: &str,
        mode: XdpMode,
        pin: Option<&Path>,
        mirror: bool,
    ) -> Result<bool, ProbeError> {
        if pin.is_some_and(Path::exists) {
            return Ok(false);
        }
        let kind = link_kind(ifname).map_err(|e| ProbeError::Interface(ifname.into(), e))?;
        let prog = match (mirror, kind) {
            (false, _) => self.xdp(kind)?,
            (true, LinkKind::Ethernet) => self.xdp_mirror()?,
            (true, LinkKind::RawIp) => {
                let e = io::Error::other("a mirror port must be an Ethernet interface");
                return Err(ProbeError::Interface(ifname.into(), e));
            }
        };
        let id = prog
            .attach(ifname, mode)
            .map_err(|e| ProbeError::Program("xdp attach", e))?;
        if let Some(path) = pin {
            let link = prog
                .take_link(id)
                .map_err(|e| ProbeError::Program("xdp link", e))?;
            pin_link(link, path)?;
        }
        Ok(true)
    }

    /// Attaches the egress (TC) program to `ifname`; `pin` as for `attach_ingress`.
    pub fn attach_egress(&mut self, ifname: &str, pin: Option<&Path>) -> Result<bool, ProbeError> {
        if pin.is_some_and(Path::exists) {
            return Ok(false);
        }
        let kind = link_kind(ifname).map_err(|e| ProbeError::Interface(ifname.into(), e))?;
        // TCX needs no qdisc; older kernels need clsact (already there is fine).
        let _ = tc::qdisc_add_clsact(ifname);
        let prog = self.tc(kind)?;
        let id = prog
            .attach(ifname, TcAttachType::Egress)
            .map_err(|e| ProbeError::Program("tc attach", e))?;
        if let Some(path) = pin {
            let link = prog
                .take_link(id)
                .map_err(|e| ProbeError::Program("tc link", e))?;
            pin_link(link, path)?;
        }
        Ok(true)
    }
}

/// Pins an attachment's link at `path`: it then outlives the agent.
fn pin_link<L>(link: L, path: &Path) -> Result<(), ProbeError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let pin_error = |e: String| ProbeError::Pin(path.into(), e);
    let link = FdLink::try_from(link).map_err(|e| pin_error(e.to_string()))?;
    link.pin(path)
        .map(drop)
        .map_err(|e| pin_error(e.to_string()))
}
