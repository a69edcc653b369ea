//! x86_64 kernels: AVX-512F and AVX2+FMA, chosen at run time.
//!
//! Each `unsafe fn` carries `#[target_feature]`; the safe wrappers that call them are
//! only ever placed in a [`Kernels`] table by [`available`] after the CPU was checked
//! for those features, which is what makes the calls sound.
//!
//! A kernel's body is intrinsics and raw loads from start to end, all covered by the one
//! contract above (and the slice lengths its wrapper checks), so these kernels are the
//! one place that allows unsafe operations directly in their unsafe fns.
#![allow(unsafe_op_in_unsafe_fn)]

use super::Kernels;
use std::arch::x86_64::*;

pub fn available() -> Vec<Kernels> {
    let mut v = Vec::new();
    if is_x86_feature_detected!("avx512f") {
        v.push(AVX512);
    }
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        v.push(AVX2);
    }
    v
}

const AVX512: Kernels = Kernels {
    name: "avx512",
    // SAFETY (all seven): installed only when avx512f was detected (see `available`).
    dot: |a, b| unsafe { avx512::dot(a, b) },
    l2_squared: |a, b| unsafe { avx512::l2_squared(a, b) },
    l1: |a, b| unsafe { avx512::l1(a, b) },
    cosine_parts: |a, b| unsafe { avx512::cosine_parts(a, b) },
    dot_u8: |a, c, min, scale| unsafe { avx512::dot_u8(a, c, min, scale) },
    l2_squared_u8: |a, c, min, scale| unsafe { avx512::l2_squared_u8(a, c, min, scale) },
    l1_u8: |a, c, min, scale| unsafe { avx512::l1_u8(a, c, min, scale) },
};

const AVX2: Kernels = Kernels {
    name: "avx2",
    // SAFETY (all seven): installed only when avx2 and fma were detected (see `available`).
    dot: |a, b| unsafe { avx2::dot(a, b) },
    l2_squared: |a, b| unsafe { avx2::l2_squared(a, b) },
    l1: |a, b| unsafe { avx2::l1(a, b) },
    cosine_parts: |a, b| unsafe { avx2::cosine_parts(a, b) },
    dot_u8: |a, c, min, scale| unsafe { avx2::dot_u8(a, c, min, scale) },
    l2_squared_u8: |a, c, min, scale| unsafe { avx2::l2_squared_u8(a, c, min, scale) },
    l1_u8: |a, c, min, scale| unsafe { avx2::l1_u8(a, c, min, scale) },
};

mod avx512 {
    use super::*;

    /// Loads `a[i..i+count]` and `b[i..i+count]` (count <= 16), zero-filling missing lanes.
    /// SAFETY: caller guarantees `i + count <= a.len().min(b.len())` and avx512f.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_pair(a: &[f32], b: &[f32], i: usize, count: usize) -> (__m512, __m512) {
        let mask: __mmask16 = if count >= 16 { 0xffff } else { (1u16 << count) - 1 };
        (
            _mm512_maskz_loadu_ps(mask, a.as_ptr().add(i)),
            _mm512_maskz_loadu_ps(mask, b.as_ptr().add(i)),
        )
    }

    /// Walks both slices 16 lanes at a time (the tail masked), feeding `step`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn fold<const N: usize>(
        a: &[f32],
        b: &[f32],
        mut acc: [__m512; N],
        step: impl Fn(&mut [__m512; N], __m512, __m512),
    ) -> [__m512; N] {
        let n = a.len().min(b.len());
        let mut i = 0;
        while i < n {
            let (x, y) = load_pair(a, b, i, n - i);
            step(&mut acc, x, y);
            i += 16;
        }
        acc
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let [s] = fold(a, b, [_mm512_setzero_ps()], |acc, x, y| acc[0] = _mm512_fmadd_ps(x, y, acc[0]));
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
        let [s] = fold(a, b, [_mm512_setzero_ps()], |acc, x, y| {
            let d = _mm512_sub_ps(x, y);
            acc[0] = _mm512_fmadd_ps(d, d, acc[0]);
        });
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn l1(a: &[f32], b: &[f32]) -> f32 {
        let [s] = fold(a, b, [_mm512_setzero_ps()], |acc, x, y| {
            acc[0] = _mm512_add_ps(acc[0], _mm512_abs_ps(_mm512_sub_ps(x, y)));
        });
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn cosine_parts(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
        let z = _mm512_setzero_ps();
        let [d, na, nb] = fold(a, b, [z, z, z], |acc, x, y| {
            acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, x, acc[1]);
            acc[2] = _mm512_fmadd_ps(y, y, acc[2]);
        });
        (_mm512_reduce_add_ps(d), _mm512_reduce_add_ps(na), _mm512_reduce_add_ps(nb))
    }

    /// Walks `a` and an 8-bit code 16 lanes at a time, each code lane decoded to
    /// `min + scale * c`, feeding `step`; returns the accumulators and the tail start.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn fold_u8<const N: usize>(
        a: &[f32],
        c: &[u8],
        min: f32,
        scale: f32,
        mut acc: [__m512; N],
        step: impl Fn(&mut [__m512; N], __m512, __m512),
    ) -> ([__m512; N], usize) {
        let n = a.len().min(c.len());
        let (vmin, vscale) = (_mm512_set1_ps(min), _mm512_set1_ps(scale));
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n: 16 floats and 16 bytes are in bounds.
            let x = _mm512_loadu_ps(a.as_ptr().add(i));
            let bytes = _mm_loadu_si128(c.as_ptr().add(i) as *const __m128i);
            let y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)), vscale, vmin);
            step(&mut acc, x, y);
            i += 16;
        }
        (acc, i)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
        let ([s], i) = fold_u8(a, c, min, scale, [_mm512_setzero_ps()], |acc, x, y| acc[0] = _mm512_fmadd_ps(x, y, acc[0]));
        _mm512_reduce_add_ps(s) + super::super::scalar::dot_u8(&a[i..], &c[i..], min, scale)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn l2_squared_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
        let z = _mm512_setzero_ps();
        // Two accumulators: the codes come from cache, so the add chain is the limit.
        let ([s, t], i) = fold_u8(a, c, min, scale, [z, z], |acc, x, y| {
            let d = _mm512_sub_ps(x, y);
            acc[0] = _mm512_fmadd_ps(d, d, acc[0]);
            acc.swap(0, 1);
        });
        _mm512_reduce_add_ps(_mm512_add_ps(s, t)) + super::super::scalar::l2_squared_u8(&a[i..], &c[i..], min, scale)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn l1_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
        let ([s], i) = fold_u8(a, c, min, scale, [_mm512_setzero_ps()], |acc, x, y| {
            acc[0] = _mm512_add_ps(acc[0], _mm512_abs_ps(_mm512_sub_ps(x, y)));
        });
        _mm512_reduce_add_ps(s) + super::super::scalar::l1_u8(&a[i..], &c[i..], min, scale)
    }
}

mod avx2 {
    use super::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
        _mm_cvtss_f32(s)
    }

    /// Walks both slices 8 lanes at a time, feeding `step`; returns the accumulators and
    /// the index where the scalar tail starts.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fold<const N: usize>(
        a: &[f32],
        b: &[f32],
        mut acc: [__m256; N],
        step: impl Fn(&mut [__m256; N], __m256, __m256),
    ) -> ([__m256; N], usize) {
        let n = a.len().min(b.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, so both 8-float loads are in bounds.
            let x = _mm256_loadu_ps(a.as_ptr().add(i));
            let y = _mm256_loadu_ps(b.as_ptr().add(i));
            step(&mut acc, x, y);
            i += 8;
        }
        (acc, i)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let ([s], i) = fold(a, b, [_mm256_setzero_ps()], |acc, x, y| acc[0] = _mm256_fmadd_ps(x, y, acc[0]));
        hsum(s) + super::super::scalar::dot(&a[i..], &b[i..])
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
        let ([s], i) = fold(a, b, [_mm256_setzero_ps()], |acc, x, y| {
            let d = _mm256_sub_ps(x, y);
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
        });
        hsum(s) + super::super::scalar::l2_squared(&a[i..], &b[i..])
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l1(a: &[f32], b: &[f32]) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let ([s], i) = fold(a, b, [_mm256_setzero_ps()], |acc, x, y| {
            acc[0] = _mm256_add_ps(acc[0], _mm256_andnot_ps(sign, _mm256_sub_ps(x, y)));
        });
        hsum(s) + super::super::scalar::l1(&a[i..], &b[i..])
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn cosine_parts(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
        let z = _mm256_setzero_ps();
        let ([d, na, nb], i) = fold(a, b, [z, z, z], |acc, x, y| {
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            acc[1] = _mm256_fmadd_ps(x, x, acc[1]);
            acc[2] = _mm256_fmadd_ps(y, y, acc[2]);
        });
        let (td, ta, tb) = super::super::scalar::cosine_parts(&a[i..], &b[i..]);
        (hsum(d) + td, hsum(na) + ta, hsum(nb) + tb)
    }

    /// As the AVX-512 `fold_u8`, 8 lanes at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fold_u8<const N: usize>(
        a: &[f32],
        c: &[u8],
        min: f32,
        scale: f32,
        mut acc: [__m256; N],
        step: impl Fn(&mut [__m256; N], __m256, __m256),
    ) -> ([__m256; N], usize) {
        let n = a.len().min(c.len());
        let (vmin, vscale) = (_mm256_set1_ps(min), _mm256_set1_ps(scale));
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n: 8 floats and 8 bytes are in bounds.
            let x = _mm256_loadu_ps(a.as_ptr().add(i));
            let bytes = _mm_loadl_epi64(c.as_ptr().add(i) as *const __m128i);
            let y = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)), vscale, vmin);
            step(&mut acc, x, y);
            i += 8;
        }
        (acc, i)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
        let ([s], i) = fold_u8(a, c, min, scale, [_mm256_setzero_ps()], |acc, x, y| acc[0] = _mm256_fmadd_ps(x, y, acc[0]));
        hsum(s) + super::super::scalar::dot_u8(&a[i..], &c[i..], min, scale)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l2_squared_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
        let ([s], i) = fold_u8(a, c, min, scale, [_mm256_setzero_ps()], |acc, x, y| {
            let d = _mm256_sub_ps(x, y);
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
        });
        hsum(s) + super::super::scalar::l2_squared_u8(&a[i..], &c[i..], min, scale)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l1_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let ([s], i) = fold_u8(a, c, min, scale, [_mm256_setzero_ps()], |acc, x, y| {
            acc[0] = _mm256_add_ps(acc[0], _mm256_andnot_ps(sign, _mm256_sub_ps(x, y)));
        });
        hsum(s) + super::super::scalar::l1_u8(&a[i..], &c[i..], min, scale)
    }
}
