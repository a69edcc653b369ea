//! Scalar reference kernels: plain sequential loops, the definition the SIMD paths are
//! tested against.

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

pub fn l1(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum()
}

pub fn cosine_parts(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
    let (mut d, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        d += x * y;
        na += x * x;
        nb += y * y;
    }
    (d, na, nb)
}

/// The value an 8-bit code stands for: `min + scale * c`.
#[inline]
fn decoded(c: u8, min: f32, scale: f32) -> f32 {
    scale.mul_add(c as f32, min)
}

pub fn dot_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
    a.iter().zip(c).map(|(x, &y)| x * decoded(y, min, scale)).sum()
}

pub fn l2_squared_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
    a.iter().zip(c).map(|(x, &y)| (x - decoded(y, min, scale)) * (x - decoded(y, min, scale))).sum()
}

pub fn l1_u8(a: &[f32], c: &[u8], min: f32, scale: f32) -> f32 {
    a.iter().zip(c).map(|(x, &y)| (x - decoded(y, min, scale)).abs()).sum()
}
