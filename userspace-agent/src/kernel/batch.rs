//! Reading a hash map with BPF_MAP_LOOKUP_BATCH, whole or a slice at a time (the walk
//! resumes where the last one stopped): a syscall for a thousand entries, where aya's
//! iterator makes two per entry (about 1 µs each). aya 0.14 has no batched lookup, so
//! this is the raw `bpf(2)` call.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use aya::Pod;
use aya::maps::MapData;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's internal "not supported", which bpf(2) can return.
const ENOTSUPP: i32 = 524;
/// Entries per call.
const CHUNK: usize = 1024;

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

/// Where a walk stands between calls: the kernel's resume token.
#[derive(Default)]
pub struct Cursor {
    token: Option<Vec<u8>>,
}

/// Continues the walk at `cursor` for at least `max` entries (whole chunks), or until
/// `each` returns false. `Some(true)` when it reached the end (the cursor starts over),
/// `Some(false)` when there is more, `None` when the kernel has no batched lookup.
pub fn walk<K: Pod + Default, V: Pod + Default>(
    map: &MapData,
    cursor: &mut Cursor,
    max: usize,
    mut each: impl FnMut(&K, &V) -> bool,
) -> io::Result<Option<bool>> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let (mut keys, mut values) = (vec![K::default(); CHUNK], vec![V::default(); CHUNK]);
    // The resume token: opaque, at most a key's size for hash maps.
    let size = 64.max(size_of::<K>());
    let mut token_out = vec![0u8; size];
    let mut seen = 0;
    loop {
        let first = cursor.token.is_none();
        let mut attr = BatchAttr {
            in_batch: cursor.token.as_mut().map_or(0, |t| t.as_mut_ptr() as u64),
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd,
            ..Default::default()
        };
        // SAFETY: the buffers hold CHUNK keys and values and tokens of at least a
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
                *cursor = Cursor::default();
                return Ok(Some(true));
            }
        }
        seen += n;
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                *cursor = Cursor::default();
                return Ok(Some(true));
            }
            Some(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL) | Some(ENOTSUPP) | Some(libc::EOPNOTSUPP)
                    ) =>
            {
                return Ok(None);
            }
            Some(e) => {
                *cursor = Cursor::default();
                return Err(e);
            }
        }
        let next = cursor.token.get_or_insert_with(|| vec![0u8; size]);
        std::mem::swap(next, &mut token_out);
        if seen >= max {
            return Ok(Some(false));
        }
    }
}
