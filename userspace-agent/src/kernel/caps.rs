//! Start-up checks that give one clear line instead of a failure deep in a syscall.

/// Capabilities the agent needs, by name and number.
const NEEDED: [(&str, u32); 3] = [("CAP_BPF", 39), ("CAP_NET_ADMIN", 12), ("CAP_PERFMON", 38)];

/// Names of the needed capabilities missing from this process's effective set.
pub fn missing_capabilities() -> Vec<&'static str> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget with a v3 header and room for two data words.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
    if rc != 0 {
        return NEEDED.iter().map(|(n, _)| *n).collect();
    }
    NEEDED
        .iter()
        .filter(|(_, bit)| d[(*bit / 32) as usize].effective & (1 << (bit % 32)) == 0)
        .map(|(n, _)| *n)
        .collect()
}

/// Whether `ifname` exists in this network namespace.
pub fn interface_exists(ifname: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(ifname) else {
        return false;
    };
    // SAFETY: a valid C string.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

pub fn ifindex(ifname: &str) -> u32 {
    let name = std::ffi::CString::new(ifname).unwrap_or_default();
    // SAFETY: a valid C string.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}
