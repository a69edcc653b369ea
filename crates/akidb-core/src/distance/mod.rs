//! Distance kernels.
//!
//! Every kernel returns the raw float4 reduction; the SQL-level functions (square root,
//! cosine from its parts, negation) are in [`l2_distance`] and friends so that every
//! ISA produces results through the same final arithmetic.
//!
//! The ISA is picked once per process at first use: AVX-512F, else AVX2+FMA on x86_64
//! (runtime detection), NEON on aarch64, else the scalar reference. SIMD paths sum in a
//! different order than the scalar one, so they agree to rounding, not bit for bit; the
//! tests bound the difference.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "aarch64")]
mod neon;

use std::sync::OnceLock;

/// One implementation of every kernel, for one instruction set.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// Name shown by `akidb_simd()`: `avx512`, `avx2`, `neon` or `scalar`.
    pub name: &'static str,
    /// Σ a·b
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// Σ (a-b)²
    pub l2_squared: fn(&[f32], &[f32]) -> f32,
    /// Σ |a-b|
    pub l1: fn(&[f32], &[f32]) -> f32,
    /// (Σ a·b, Σ a², Σ b²) in one pass
    pub cosine_parts: fn(&[f32], &[f32]) -> (f32, f32, f32),
    /// Σ a·x̂ against an 8-bit code: x̂ᵢ = min + scale·codeᵢ (see [`Code`])
    pub dot_u8: fn(&[f32], &[u8], f32, f32) -> f32,
    /// Σ (a-x̂)² against an 8-bit code
    pub l2_squared_u8: fn(&[f32], &[u8], f32, f32) -> f32,
    /// Σ |a-x̂| against an 8-bit code
    pub l1_u8: fn(&[f32], &[u8], f32, f32) -> f32,
}

/// The scalar reference kernels.
pub const SCALAR: Kernels = Kernels {
    name: "scalar",
    dot: scalar::dot,
    l2_squared: scalar::l2_squared,
    l1: scalar::l1,
    cosine_parts: scalar::cosine_parts,
    dot_u8: scalar::dot_u8,
    l2_squared_u8: scalar::l2_squared_u8,
    l1_u8: scalar::l1_u8,
};

/// An 8-bit scalar code of a vector: value i is about `min + scale * bytes[i]`, within
/// `scale / 2`. Per vector (its own min and max), so coding needs no training and an
/// insert codes its vector alone. The HNSW index walks its graph on these (a quarter of
/// the bytes of the float4 values) and re-ranks the best candidates exactly.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Code {
    pub min: f32,
    pub scale: f32,
    /// ‖v - decoded‖ (rounded up): bounds how far a distance on the code can be from
    /// the exact one (see `Metric::lower_bound`).
    pub err: f32,
    pub bytes: Vec<u8>,
}

impl Code {
    pub fn of(v: &[f32]) -> Code {
        let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
        let mut code = if v.is_empty() || !(hi - lo).is_finite() {
            Code { min: if lo.is_finite() { lo } else { 0.0 }, scale: 0.0, err: 0.0, bytes: vec![0; v.len()] }
        } else {
            let scale = (hi - lo) / 255.0;
            let bytes = if scale > 0.0 {
                v.iter().map(|&x| ((x - lo) / scale).round().clamp(0.0, 255.0) as u8).collect()
            } else {
                vec![0; v.len()]
            };
            Code { min: lo, scale, err: 0.0, bytes }
        };
        let sq: f64 = v.iter().zip(code.decode()).map(|(&x, y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
        code.err = (sq.sqrt() * (1.0 + 1e-6)) as f32;
        if code.err.is_nan() {
            code.err = f32::INFINITY;
        }
        code
    }

    /// The values the code stands for.
    pub fn decode(&self) -> Vec<f32> {
        self.bytes.iter().map(|&c| self.scale.mul_add(c as f32, self.min)).collect()
    }
}

/// Every kernel set this CPU can run, best first; the last is always [`SCALAR`].
pub fn available() -> Vec<Kernels> {
    let mut all = Vec::new();
    #[cfg(target_arch = "x86_64")]
    all.extend(x86::available());
    #[cfg(target_arch = "aarch64")]
    all.push(neon::KERNELS);
    all.push(SCALAR);
    all
}

/// The kernel set in use for this process.
pub fn kernels() -> &'static Kernels {
    static ACTIVE: OnceLock<Kernels> = OnceLock::new();
    ACTIVE.get_or_init(|| available()[0])
}

/// Euclidean distance `<->`.
pub fn l2_distance(a: &[f32], b: &[f32]) -> f64 {
    f64::from((kernels().l2_squared)(a, b)).sqrt()
}

/// Squared Euclidean distance (what an index orders by for `<->`).
pub fn l2_squared_distance(a: &[f32], b: &[f32]) -> f64 {
    f64::from((kernels().l2_squared)(a, b))
}

/// Inner product.
pub fn inner_product(a: &[f32], b: &[f32]) -> f64 {
    f64::from((kernels().dot)(a, b))
}

/// Negative inner product `<#>`.
pub fn negative_inner_product(a: &[f32], b: &[f32]) -> f64 {
    -inner_product(a, b)
}

/// Cosine distance `<=>`: `1 - cos(a, b)`, NaN when either vector is zero.
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    let (dot, na, nb) = (kernels().cosine_parts)(a, b);
    let similarity = f64::from(dot) / (f64::from(na) * f64::from(nb)).sqrt();
    if similarity.is_nan() {
        return f64::NAN;
    }
    1.0 - similarity.clamp(-1.0, 1.0)
}

/// Taxicab distance `<+>`.
pub fn l1_distance(a: &[f32], b: &[f32]) -> f64 {
    f64::from((kernels().l1)(a, b))
}

/// Asks the CPU to start loading the cache lines of `bytes` bytes at `ptr`. A hint only: any address is allowed, nothing is read.
#[inline]
pub fn prefetch(ptr: *const u8, bytes: usize) {
    let mut off = 0;
    while off < bytes {
        let p = ptr.wrapping_add(off);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: prefetch never faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above (PRFM never faults).
        unsafe {
            std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags))
        };
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = p;
        off += 64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, Rng, SeedableRng};

    /// Reference in f64, plus the sum of term magnitudes that bounds float4 rounding error.
    fn reference(a: &[f32], b: &[f32], term: impl Fn(f64, f64) -> f64) -> (f64, f64) {
        let terms: Vec<f64> = a.iter().zip(b).map(|(x, y)| term(f64::from(*x), f64::from(*y))).collect();
        (terms.iter().sum(), terms.iter().map(|t| t.abs()).sum())
    }

    fn assert_close(got: f32, (want, magnitude): (f64, f64), what: &str) {
        // float4 summation of n terms: error grows with n·ε·Σ|t|; 1e-5·Σ|t| is ample for
        // 16,000 terms and still catches a wrong lane, a dropped tail or a wrong sign.
        let tol = 1e-5 * magnitude + 1e-30;
        assert!((f64::from(got) - want).abs() <= tol, "{what}: got {got}, want {want} (tol {tol})");
    }

    #[test]
    fn every_isa_matches_the_reference_on_many_sizes() {
        let mut rng = SmallRng::seed_from_u64(42);
        let sizes: Vec<usize> = (1..=70).chain([127, 128, 129, 255, 384, 768, 1000, 1536, 4096, 16000]).collect();
        let isas = available();
        assert!(isas.iter().any(|k| k.name == "scalar"));
        for &n in &sizes {
            for _ in 0..3 {
                let a: Vec<f32> = (0..n).map(|_| rng.random_range(-10.0..10.0)).collect();
                let b: Vec<f32> = (0..n).map(|_| rng.random_range(-10.0..10.0)).collect();
                for k in &isas {
                    let ctx = format!("{} n={n}", k.name);
                    assert_close((k.dot)(&a, &b), reference(&a, &b, |x, y| x * y), &format!("dot {ctx}"));
                    assert_close((k.l2_squared)(&a, &b), reference(&a, &b, |x, y| (x - y) * (x - y)), &format!("l2 {ctx}"));
                    assert_close((k.l1)(&a, &b), reference(&a, &b, |x, y| (x - y).abs()), &format!("l1 {ctx}"));
                    let (d, na, nb) = (k.cosine_parts)(&a, &b);
                    assert_close(d, reference(&a, &b, |x, y| x * y), &format!("cos.dot {ctx}"));
                    assert_close(na, reference(&a, &a, |x, y| x * y), &format!("cos.na {ctx}"));
                    assert_close(nb, reference(&b, &b, |x, y| x * y), &format!("cos.nb {ctx}"));
                    // And against the scalar path directly, which is what users compare.
                    let s = (SCALAR.l2_squared)(&a, &b);
                    let v = (k.l2_squared)(&a, &b);
                    assert!((s - v).abs() <= 1e-5 * s.abs().max(1.0), "{ctx}: scalar {s} vs {v}");
                }
            }
        }
    }

    #[test]
    fn codes_are_within_half_a_step_and_every_isa_agrees_on_them() {
        let mut rng = SmallRng::seed_from_u64(7);
        for &n in &[1usize, 7, 8, 15, 16, 17, 33, 784, 1000, 4096] {
            let a: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0..3.0)).collect();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.2..0.5)).collect();
            let code = Code::of(&v);
            let x = code.decode();
            for (orig, back) in v.iter().zip(&x) {
                assert!((orig - back).abs() <= code.scale * 0.5001 + 1e-7, "n={n}: {orig} coded as {back}");
            }
            let residual = v.iter().zip(&x).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
            assert!(code.err >= residual && code.err <= residual * 1.001 + 1e-6, "n={n}: err {} for {residual}", code.err);
            for k in &available() {
                let ctx = format!("{} n={n}", k.name);
                let (min, scale, c) = (code.min, code.scale, code.bytes.as_slice());
                assert_close((k.dot_u8)(&a, c, min, scale), reference(&a, &x, |p, q| p * q), &format!("dot_u8 {ctx}"));
                assert_close((k.l2_squared_u8)(&a, c, min, scale), reference(&a, &x, |p, q| (p - q) * (p - q)), &format!("l2_u8 {ctx}"));
                assert_close((k.l1_u8)(&a, c, min, scale), reference(&a, &x, |p, q| (p - q).abs()), &format!("l1_u8 {ctx}"));
            }
        }
        // Integer data in 0..=255 (fashion-mnist pixels) with both ends present codes exactly.
        let pixels: Vec<f32> = (0..784).map(|i| ((i * 37) % 256) as f32).collect();
        assert_eq!(Code::of(&pixels).decode(), pixels);
        // A constant vector, and values that are not finite, code without NaNs.
        assert_eq!(Code::of(&[2.5; 9]).decode(), vec![2.5; 9]);
        assert!(Code::of(&[0.0, f32::INFINITY]).decode().iter().all(|x| x.is_finite()));
    }

    #[test]
    fn sql_level_distances() {
        assert_eq!(l2_distance(&[0.0, 0.0], &[3.0, 4.0]), 5.0);
        assert_eq!(inner_product(&[1.0, 2.0], &[3.0, 4.0]), 11.0);
        assert_eq!(negative_inner_product(&[1.0, 2.0], &[3.0, 4.0]), -11.0);
        assert_eq!(l1_distance(&[1.0, 2.0], &[3.0, 5.0]), 5.0);
        assert!(cosine_distance(&[1.0, 2.0], &[2.0, 4.0]).abs() < 1e-7);
        assert!((cosine_distance(&[1.0, 0.0], &[-1.0, 0.0]) - 2.0).abs() < 1e-12);
        assert!(cosine_distance(&[0.0, 0.0], &[1.0, 1.0]).is_nan());
    }

    #[test]
    fn simd_is_used_where_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            assert_ne!(kernels().name, "scalar");
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(kernels().name, "neon");
    }
}
