//! aarch64 NEON kernels. NEON is part of the aarch64 baseline (Jetson Thor, Graviton,
//! Ampere), so no runtime detection is needed.
//!
//! A kernel's body is intrinsics and raw loads from start to end, all covered by the one
//! contract above (and the slice lengths its wrapper checks), so these kernels are the
//! one place that allows unsafe operations directly in their unsafe fns.
#![allow(unsafe_op_in_unsafe_fn)]

use super::Kernels;
use std::arch::aarch64::*;

pub const KERNELS: Kernels = Kernels {
    name: "neon",
    // SAFETY (all seven): NEON is mandatory on aarch64 targets.
    dot: |a, b| unsafe { dot(a, b) },
    l2_squared: |a, b| unsafe { l2_squared(a, b) },
    l1: |a, b| unsafe { l1(a, b) },
    cosine_parts: |a, b| unsafe { cosine_parts(a, b) },
    dot_u8: |a, c, min, scale| unsafe { dot_u8(a, c, min, scale) },
    l2_squared_u8: |a, c, min, scale| unsafe { l2_squared_u8(a, c, min, scale) },
    l1_u8: |a, c, min, scale| unsafe { l1_u8(a, c, min, scale) },
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

/// Walks `a` and an 8-bit code 8 lanes at a time (two float vectors per step), each code
/// lane decoded to `min + scale * c`; returns the accumulators and the tail start.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn fold_u8<const N: usize>(
    a: &[f32],
    c: &[u8],
    min: f32,
    scale: f32,
    mut acc: [float32x4_t; N],
    step: impl Fn(&mut [float32x4_t; N], float32x4_t, float32x4_t),
) -> ([float32x4_t; N], usize) {
    let n = a.len().min(c.len());
    let (vmin, vscale) = (vdupq_n_f32(min), vdupq_n_f32(scale));
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n: 8 floats and 8 bytes are in bounds.
        let wide = vmovl_u8(vld1_u8(c.as_ptr().add(i)));
        let lo = vfmaq_f32(vmin, vcvtq_f32_u32(vmovl_u16(vget_low_u16(wide))), vscale);
        let hi = vfmaq_f32(vmin, vcvtq_f32_u32(vmovl_u16(vget_high_u16(wide))), vscale);
        step(&mut acc, vld1q_f32(a.as_ptr().add(i)), lo);
        step(&mut acc, vld1q_f32(a.as_ptr().add(i + 4)), hi);
        i += 8;
    }
    (acc, i)
}

#[target_feature(enable = "neon")]
unsafe fn dot_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
    let ([s], i) = fold_u8(a, c, min, scale, [vdupq_n_f32(0.0)], |acc, x, y| acc[0] = vfmaq_f32(acc[0], x, y));
    vaddvq_f32(s) + super::scalar::dot_u8(&a[i..], &c[i..], min, scale)
}

#[target_feature(enable = "neon")]
unsafe fn l2_squared_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
    let ([s], i) = fold_u8(a, c, min, scale, [vdupq_n_f32(0.0)], |acc, x, y| {
        let d = vsubq_f32(x, y);
        acc[0] = vfmaq_f32(acc[0], d, d);
    });
    vaddvq_f32(s) + super::scalar::l2_squared_u8(&a[i..], &c[i..], min, scale)
}

#[target_feature(enable = "neon")]
unsafe fn l1_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
    let ([s], i) = fold_u8(a, c, min, scale, [vdupq_n_f32(0.0)], |acc, x, y| acc[0] = vaddq_f32(acc[0], vabdq_f32(x, y)));
    vaddvq_f32(s) + super::scalar::l1_u8(&a[i..], &c[i..], min, scale)
}
