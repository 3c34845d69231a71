//! Serial-number arithmetic on 32-bit TCP sequence numbers (RFC 1982): `a < b` iff
//! `(a - b) as i32 < 0`, so comparisons stay right across the 2^32 wrap.

#[inline(always)]
pub fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline(always)]
pub fn le(a: u32, b: u32) -> bool {
    a == b || lt(a, b)
}

#[inline(always)]
pub fn gt(a: u32, b: u32) -> bool {
    lt(b, a)
}

/// `lo <= x < hi` on the sequence circle.
#[inline(always)]
pub fn within(x: u32, lo: u32, hi: u32) -> bool {
    le(lo, x) && lt(x, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_2_pow_32() {
        assert!(lt(u32::MAX - 10, 5));
        assert!(gt(5, u32::MAX - 10));
        assert!(!lt(5, u32::MAX - 10));
        assert!(le(7, 7) && !lt(7, 7));
        assert!(within(2, u32::MAX - 1, 10));
        assert!(!within(10, u32::MAX - 1, 10));
    }
}
