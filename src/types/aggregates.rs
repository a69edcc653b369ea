//! Support functions of `avg(vector)` and `sum(vector)`.
//!
//! `avg` keeps a `double precision[]` state `[count, sum_0, ..., sum_{d-1}]` (the same
//! state pgvector uses), which PostgreSQL can serialise for parallel aggregation;
//! `sum` folds with `vector_add`. The functions can also be called directly with any
//! array, so each checks its state first, and answers a malformed one as pgvector does.

use akidb_core::vector::{self, VectorError};
use pgrx::prelude::*;
use pgrx::array::RawArray;
use pgrx::Array;

use super::{VectorOut, VectorRef};
use crate::error::{raise, OrRaise};

/// The values of a state array: one dimension, at least the count, no NULLs.
fn state_values(state: Array<'_, f64>, caller: &str) -> Vec<f64> {
    // SAFETY: a detoasted float8[] argument; its data is read only within this call.
    let values = unsafe { RawArray::from_array(state) }.and_then(|mut raw| {
        // SAFETY: as above.
        let ok = raw.dims().len() == 1 && raw.len() >= 1 && !unsafe { raw.any_nulls() };
        // SAFETY: a float8 array without NULLs is len contiguous f64 values.
        ok.then(|| unsafe { raw.data::<f64>().as_ref().to_vec() })
    });
    values.unwrap_or_else(|| {
        ereport!(ERROR, PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{caller}: expected state array"));
    })
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
fn vector_accum(state: Array<'_, f64>, v: VectorRef<'_>) -> Vec<f64> {
    let mut state = state_values(state, "vector_accum");
    vector::accumulate(&mut state, v.as_slice()).or_raise();
    state
}

#[pg_extern(immutable, parallel_safe)]
fn vector_combine(a: Array<'_, f64>, b: Array<'_, f64>) -> Vec<f64> {
    let a = state_values(a, "vector_combine");
    let b = state_values(b, "vector_combine");
    // A side that counted nothing contributes nothing; the other is taken as it is.
    if a[0] == 0.0 || b[0] == 0.0 {
        let (mut other, count) = if a[0] == 0.0 { (b, a[0]) } else { (a, b[0]) };
        vector::check_dims(other.len() - 1).or_raise();
        other[0] += count;
        return other;
    }
    vector::check_dims(a.len() - 1).or_raise();
    vector::check_fits_typmod(b.len() - 1, (a.len() - 1) as i32).or_raise();
    let mut sum = a;
    sum[0] += b[0];
    for (s, x) in sum[1..].iter_mut().zip(&b[1..]) {
        *s += x;
        if s.is_infinite() {
            raise(VectorError::Overflow);
        }
    }
    sum
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
fn vector_avg(state: Array<'_, f64>) -> Option<VectorOut> {
    let state = state_values(state, "vector_avg");
    let (&count, sums) = state.split_first()?;
    if count == 0.0 {
        return None;
    }
    vector::check_dims(sums.len()).or_raise();
    Some(VectorOut::build(sums.len(), |out| {
        for (o, s) in out.iter_mut().zip(sums) {
            *o = (s / count) as f32;
            vector::check_element(*o)?;
        }
        Ok(())
    }))
}
