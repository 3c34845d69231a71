//! Reading a whole hash map with BPF_MAP_LOOKUP_BATCH: a few syscalls for thousands of
//! entries, where aya's iterator makes two per entry (about 1 µs each). aya 0.14 has no
//! batched lookup, so this is the raw `bpf(2)` call.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use aya::Pod;
use aya::maps::MapData;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's internal "not supported", which bpf(2) can return.
const ENOTSUPP: i32 = 524;
/// Entries per call.
const CHUNK: usize = 4096;

/// The kernel's `bpf_attr.batch`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `each` with every (key, value) of the hash map `map`, one chunk in memory at a
/// time, until it returns false. `Ok(false)` when the kernel has no batched lookup for
/// it (the caller then iterates).
pub fn for_each<K: Pod + Default, V: Pod + Default>(
    map: &MapData,
    mut each: impl FnMut(&K, &V) -> bool,
) -> io::Result<bool> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let (mut keys, mut values) = (vec![K::default(); CHUNK], vec![V::default(); CHUNK]);
    // The resume token: opaque, at most a key's size for hash maps.
    let (mut token_in, mut token_out) = (
        vec![0u8; 64.max(size_of::<K>())],
        vec![0u8; 64.max(size_of::<K>())],
    );
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                token_in.as_mut_ptr() as u64
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd,
            ..Default::default()
        };
        // SAFETY: the buffers hold CHUNK keys and values and a token of at least a
        // key's size; the kernel writes at most `count` of each.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let n = attr.count as usize;
        for (k, v) in keys[..n].iter().zip(&values[..n]) {
            if !each(k, v) {
                return Ok(true);
            }
        }
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(true),
            Some(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL) | Some(ENOTSUPP) | Some(libc::EOPNOTSUPP)
                    ) =>
            {
                return Ok(false);
            }
            Some(e) => return Err(e),
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}
