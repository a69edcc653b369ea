//! Element-wise arithmetic, ordering and the other value-level operations, with the
//! same overflow and dimension rules as pgvector.

use super::{check_dims, check_same_dims, VectorError};
use std::cmp::Ordering;

/// Rejects the element values a vector may not hold.
pub fn check_element(v: f32) -> Result<(), VectorError> {
    if v.is_nan() {
        Err(VectorError::NaN)
    } else if v.is_infinite() {
        Err(VectorError::Infinite)
    } else {
        Ok(())
    }
}

pub fn check_elements(values: &[f32]) -> Result<(), VectorError> {
    values.iter().try_for_each(|v| check_element(*v))
}

fn zip_into(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(f32, f32) -> Result<f32, VectorError>,
) -> Result<(), VectorError> {
    check_same_dims(a.len(), b.len())?;
    debug_assert_eq!(out.len(), a.len());
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = f(*x, *y)?;
    }
    Ok(())
}

fn no_overflow(r: f32) -> Result<f32, VectorError> {
    if r.is_infinite() {
        Err(VectorError::Overflow)
    } else {
        Ok(r)
    }
}

/// `out = a + b`.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), VectorError> {
    zip_into(a, b, out, |x, y| no_overflow(x + y))
}

/// `out = a - b`.
pub fn sub(a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), VectorError> {
    zip_into(a, b, out, |x, y| no_overflow(x - y))
}

/// `out = a * b` element-wise; a non-zero product that rounds to zero is an underflow.
pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), VectorError> {
    zip_into(a, b, out, |x, y| {
        let r = no_overflow(x * y)?;
        if r == 0.0 && x != 0.0 && y != 0.0 {
            Err(VectorError::Underflow)
        } else {
            Ok(r)
        }
    })
}

/// Dimension count of `a || b`, checked against the type's limit.
pub fn concat_dims(a: usize, b: usize) -> Result<usize, VectorError> {
    let dims = a + b;
    check_dims(dims)?;
    Ok(dims)
}

/// Total order used by the btree operator class: element by element, then the shorter
/// vector first.
pub fn compare(a: &[f32], b: &[f32]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        if x < y {
            return Ordering::Less;
        }
        if x > y {
            return Ordering::Greater;
        }
    }
    a.len().cmp(&b.len())
}

/// Euclidean norm, accumulated in double precision.
pub fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt()
}

/// `out = a / |a|`; a zero vector stays zero.
pub fn normalize_into(a: &[f32], out: &mut [f32]) -> Result<(), VectorError> {
    let n = norm(a);
    for (o, x) in out.iter_mut().zip(a) {
        *o = if n > 0.0 { (f64::from(*x) / n) as f32 } else { 0.0 };
        if o.is_infinite() {
            return Err(VectorError::Overflow);
        }
    }
    Ok(())
}

/// `subvector(v, start, count)` with SQL's 1-based `start`: the range of `v` to take.
/// Like `substring`, the window is clipped to the vector; an empty result is an error.
pub fn subvector_range(dims: usize, start: i32, count: i32) -> Result<std::ops::Range<usize>, VectorError> {
    let start = i64::from(start);
    let end = start + i64::from(count);
    let first = start.max(1);
    let last = end.min(dims as i64 + 1);
    if count < 1 || last <= first {
        return Err(VectorError::Empty);
    }
    Ok((first - 1) as usize..(last - 1) as usize)
}

/// Adds `v` into an aggregate state laid out as `[count, sum_0, sum_1, ...]`
/// (the `avg(vector)` transition state). A state without sums (`[n]`) takes `v`'s
/// dimensions and keeps its count.
pub fn accumulate(state: &mut Vec<f64>, v: &[f32]) -> Result<(), VectorError> {
    if state.len() <= 1 {
        // The first vector's values become the sums as they are (-0 stays -0).
        let count = state.first().copied().unwrap_or(0.0);
        state.clear();
        state.push(count + 1.0);
        state.extend(v.iter().map(|&x| f64::from(x)));
        return Ok(());
    }
    let dims = state.len() - 1;
    if dims != v.len() {
        return Err(VectorError::TypmodMismatch { expected: dims, actual: v.len() });
    }
    state[0] += 1.0;
    for (s, x) in state[1..].iter_mut().zip(v) {
        *s += f64::from(*x);
        if s.is_infinite() {
            return Err(VectorError::Overflow);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_checks_overflow_and_underflow() {
        let mut out = [0.0; 1];
        assert_eq!(add(&[3e38], &[3e38], &mut out), Err(VectorError::Overflow));
        assert_eq!(sub(&[-3e38], &[3e38], &mut out), Err(VectorError::Overflow));
        assert_eq!(mul(&[3e38], &[10.0], &mut out), Err(VectorError::Overflow));
        assert_eq!(mul(&[1e-30], &[1e-30], &mut out), Err(VectorError::Underflow));
        assert!(mul(&[0.0], &[1e-30], &mut out).is_ok());
        let mut out2 = [0.0; 2];
        assert_eq!(add(&[1.0, 2.0], &[1.0], &mut out2), Err(VectorError::DimMismatch { left: 2, right: 1 }));
        mul(&[1.5, -2.0], &[2.0, 3.0], &mut out2).unwrap();
        assert_eq!(out2, [3.0, -6.0]);
    }

    #[test]
    fn ordering_is_elementwise_then_length() {
        assert_eq!(compare(&[1.0, 2.0], &[1.0, 2.0, 3.0]), Ordering::Less);
        assert_eq!(compare(&[2.0], &[1.0, 5.0]), Ordering::Greater);
        assert_eq!(compare(&[1.0, 2.0], &[1.0, 2.0]), Ordering::Equal);
        assert_eq!(compare(&[-0.0], &[0.0]), Ordering::Equal);
    }

    #[test]
    fn subvector_clips_like_substring() {
        assert_eq!(subvector_range(5, 2, 3), Ok(1..4));
        assert_eq!(subvector_range(5, 0, 3), Ok(0..2));
        assert_eq!(subvector_range(5, 4, 10), Ok(3..5));
        assert_eq!(subvector_range(5, 6, 1), Err(VectorError::Empty));
        assert_eq!(subvector_range(5, 1, 0), Err(VectorError::Empty));
        assert_eq!(subvector_range(5, i32::MAX, i32::MAX), Err(VectorError::Empty));
        assert_eq!(subvector_range(5, i32::MIN, i32::MAX), Err(VectorError::Empty));
    }

    #[test]
    fn normalize_and_norm() {
        let mut out = [0.0; 2];
        normalize_into(&[3.0, 4.0], &mut out).unwrap();
        assert_eq!(out, [0.6, 0.8]);
        normalize_into(&[0.0, 0.0], &mut out).unwrap();
        assert_eq!(out, [0.0, 0.0]);
        assert_eq!(norm(&[3.0, 4.0]), 5.0);
    }

    #[test]
    fn accumulate_builds_avg_state() {
        let mut state = vec![0.0];
        accumulate(&mut state, &[1.0, 2.0]).unwrap();
        accumulate(&mut state, &[3.0, 5.0]).unwrap();
        assert_eq!(state, vec![2.0, 4.0, 7.0]);
        assert_eq!(accumulate(&mut state, &[1.0]), Err(VectorError::TypmodMismatch { expected: 2, actual: 1 }));
    }
}
