//! aarch64 NEON kernels. NEON is part of the aarch64 baseline (Jetson Thor, Graviton,
//! Ampere), so no runtime detection is needed.

use super::Kernels;
use std::arch::aarch64::*;

pub const KERNELS: Kernels = Kernels {
    name: "neon",
    // SAFETY (all four): NEON is mandatory on aarch64 targets.
    dot: |a, b| unsafe { dot(a, b) },
    l2_squared: |a, b| unsafe { l2_squared(a, b) },
    l1: |a, b| unsafe { l1(a, b) },
    cosine_parts: |a, b| unsafe { cosine_parts(a, b) },
};

/// Walks both slices 4 lanes at a time; returns the accumulators and the tail start.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn fold<const N: usize>(
    a: &[f32],
    b: &[f32],
    mut acc: [float32x4_t; N],
    step: impl Fn(&mut [float32x4_t; N], float32x4_t, float32x4_t),
) -> ([float32x4_t; N], usize) {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n, so both 4-float loads are in bounds.
        let x = vld1q_f32(a.as_ptr().add(i));
        let y = vld1q_f32(b.as_ptr().add(i));
        step(&mut acc, x, y);
        i += 4;
    }
    (acc, i)
}

#[target_feature(enable = "neon")]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let ([s], i) = fold(a, b, [vdupq_n_f32(0.0)], |acc, x, y| acc[0] = vfmaq_f32(acc[0], x, y));
    vaddvq_f32(s) + super::scalar::dot(&a[i..], &b[i..])
}

#[target_feature(enable = "neon")]
unsafe fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    let ([s], i) = fold(a, b, [vdupq_n_f32(0.0)], |acc, x, y| {
        let d = vsubq_f32(x, y);
        acc[0] = vfmaq_f32(acc[0], d, d);
    });
    vaddvq_f32(s) + super::scalar::l2_squared(&a[i..], &b[i..])
}

#[target_feature(enable = "neon")]
unsafe fn l1(a: &[f32], b: &[f32]) -> f32 {
    let ([s], i) = fold(a, b, [vdupq_n_f32(0.0)], |acc, x, y| acc[0] = vaddq_f32(acc[0], vabdq_f32(x, y)));
    vaddvq_f32(s) + super::scalar::l1(&a[i..], &b[i..])
}

#[target_feature(enable = "neon")]
unsafe fn cosine_parts(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
    let z = vdupq_n_f32(0.0);
    let ([d, na, nb], i) = fold(a, b, [z, z, z], |acc, x, y| {
        acc[0] = vfmaq_f32(acc[0], x, y);
        acc[1] = vfmaq_f32(acc[1], x, x);
        acc[2] = vfmaq_f32(acc[2], y, y);
    });
    let (td, ta, tb) = super::scalar::cosine_parts(&a[i..], &b[i..]);
    (vaddvq_f32(d) + td, vaddvq_f32(na) + ta, vaddvq_f32(nb) + tb)
}
