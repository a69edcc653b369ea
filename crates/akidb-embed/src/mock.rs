//! The `mock` provider: a deterministic vector from a hash of the text. For tests of
//! everything around the model (SQL, batching, NULLs, indexes) without model files.

/// FNV-1a over the bytes, then SplitMix64 for the values: stable across platforms and
/// releases, so a test can hard-code nothing and still compare runs.
pub fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in text.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..dims)
        .map(|_| {
            h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = h;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // Top 24 bits -> [-1, 1): exact in f32.
            ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn deterministic_distinct_and_bounded() {
        let a = super::embed("hello", 64);
        assert_eq!(a, super::embed("hello", 64));
        assert_ne!(a, super::embed("hello!", 64));
        assert_eq!(&super::embed("hello", 128)[..64], &a[..]);
        assert!(a.iter().all(|x| (-1.0..1.0).contains(x)));
        assert!(a.iter().any(|&x| x != 0.0));
    }
}
