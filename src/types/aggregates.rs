//! Support functions of `avg(vector)` and `sum(vector)`.
//!
//! `avg` keeps a `double precision[]` state `[count, sum_0, ..., sum_{d-1}]` (the same
//! state pgvector uses), which PostgreSQL can serialise for parallel aggregation;
//! `sum` folds with `vector_add`.

use akidb_core::vector::{self, VectorError};
use pgrx::prelude::*;

use super::{VectorOut, VectorRef};
use crate::error::{raise, OrRaise};

#[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
fn vector_accum(state: Vec<f64>, v: VectorRef<'_>) -> Vec<f64> {
    let mut state = state;
    vector::accumulate(&mut state, v.as_slice()).or_raise();
    state
}

#[pg_extern(immutable, parallel_safe)]
fn vector_combine(a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    let count = |s: &[f64]| s.first().copied().unwrap_or(0.0);
    if count(&b) == 0.0 {
        return a;
    }
    if count(&a) == 0.0 {
        return b;
    }
    vector::check_fits_typmod(b.len() - 1, (a.len() - 1) as i32).or_raise();
    let mut sum = a;
    for (s, x) in sum.iter_mut().zip(&b) {
        *s += x;
        if s.is_infinite() {
            raise(VectorError::Overflow);
        }
    }
    sum
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
fn vector_avg(state: Vec<f64>) -> Option<VectorOut> {
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
