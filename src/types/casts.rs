//! Casts between arrays and `vector`: `integer[]`, `real[]`, `double precision[]` and
//! `numeric[]` to vector (assignment casts), vector to `real[]` (implicit).

use akidb_core::vector::{self, VectorError};
use pgrx::prelude::*;
use pgrx::AnyNumeric;

use super::{VectorOut, VectorRef};
use crate::error::{raise, OrRaise};

/// Builds a vector from a SQL array: 1-D, no NULLs, within the type's limits, fitting
/// the target typmod, every element finite once converted to float4.
fn array_to_vector<T>(array: Array<'_, T>, typmod: i32, convert: impl Fn(T) -> f32) -> VectorOut
where
    T: pgrx::datum::UnboxDatum + 'static,
    for<'a> T: pgrx::datum::UnboxDatum<As<'a> = T>,
{
    let items: Vec<Option<T>> = array.iter().collect();
    // SAFETY: `into_array_type` returns the detoasted ArrayType this Array was built on.
    let ndim = unsafe { (*array.into_array_type()).ndim };
    if ndim > 1 {
        raise(VectorError::ArrayNotOneDim);
    }
    if items.iter().any(Option::is_none) {
        raise(VectorError::ArrayHasNulls);
    }
    vector::check_dims(items.len()).or_raise();
    vector::check_fits_typmod(items.len(), typmod).or_raise();
    // Every element is converted before any is checked (a conversion error comes first,
    // as in pgvector).
    VectorOut::build(items.len(), |out| {
        for (o, item) in out.iter_mut().zip(items) {
            *o = convert(item.expect("NULLs were rejected above"));
        }
        out.iter().try_for_each(|&x| vector::check_element(x))
    })
}

#[pg_extern(immutable, parallel_safe, name = "array_to_vector", requires = ["vector_type"])]
fn array_to_vector_int4(a: Array<'_, i32>, typmod: i32, _explicit: bool) -> VectorOut {
    array_to_vector(a, typmod, |x| x as f32)
}

#[pg_extern(immutable, parallel_safe, name = "array_to_vector", requires = ["vector_type"])]
fn array_to_vector_float4(a: Array<'_, f32>, typmod: i32, _explicit: bool) -> VectorOut {
    array_to_vector(a, typmod, |x| x)
}

#[pg_extern(immutable, parallel_safe, name = "array_to_vector", requires = ["vector_type"])]
fn array_to_vector_float8(a: Array<'_, f64>, typmod: i32, _explicit: bool) -> VectorOut {
    array_to_vector(a, typmod, |x| x as f32)
}

#[pg_extern(immutable, parallel_safe, name = "array_to_vector", requires = ["vector_type"])]
fn array_to_vector_numeric(a: Array<'_, AnyNumeric>, typmod: i32, _explicit: bool) -> VectorOut {
    // A value beyond float4 gets the error PostgreSQL's numeric -> real cast gives
    // (as pgvector passes it through), without leaving Rust to raise it.
    array_to_vector(a, typmod, |x| {
        f32::try_from(x.clone()).unwrap_or_else(|_| raise(VectorError::RealOutOfRange { literal: x.to_string() }))
    })
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
fn vector_to_float4(v: VectorRef<'_>, _typmod: i32, _explicit: bool) -> Vec<f32> {
    v.as_slice().to_vec()
}
