//! SQL functions on `vector`: distances, arithmetic, comparisons, and the rest of
//! pgvector's function set. All immutable, strict and parallel safe.

use akidb_core::distance;
use akidb_core::vector;
use pgrx::prelude::*;

use super::{VectorOut, VectorRef};
use crate::error::OrRaise;

/// The two operands' slices, after checking they have the same dimensions.
fn same_dims<'a>(a: &VectorRef<'a>, b: &VectorRef<'a>) -> (&'a [f32], &'a [f32]) {
    vector::check_same_dims(a.dims(), b.dims()).or_raise();
    (a.as_slice(), b.as_slice())
}

macro_rules! distance_fn {
    ($($name:ident => $kernel:path),* $(,)?) => {$(
        #[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
        fn $name(a: VectorRef<'_>, b: VectorRef<'_>) -> f64 {
            let (x, y) = same_dims(&a, &b);
            $kernel(x, y)
        }
    )*};
}

distance_fn! {
    l2_distance => distance::l2_distance,
    vector_l2_squared_distance => distance::l2_squared_distance,
    inner_product => distance::inner_product,
    vector_negative_inner_product => distance::negative_inner_product,
    cosine_distance => distance::cosine_distance,
    l1_distance => distance::l1_distance,
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
fn vector_dims(v: VectorRef<'_>) -> i32 {
    v.dims() as i32
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
fn vector_norm(v: VectorRef<'_>) -> f64 {
    vector::norm(v.as_slice())
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
fn l2_normalize(v: VectorRef<'_>) -> VectorOut {
    VectorOut::build(v.dims(), |out| vector::normalize_into(v.as_slice(), out))
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
fn subvector(v: VectorRef<'_>, start: i32, count: i32) -> VectorOut {
    let range = vector::subvector_range(v.dims(), start, count).or_raise();
    VectorOut::from_slice(&v.as_slice()[range])
}

macro_rules! elementwise_fn {
    ($($name:ident => $op:path),* $(,)?) => {$(
        #[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
        fn $name(a: VectorRef<'_>, b: VectorRef<'_>) -> VectorOut {
            let (x, y) = same_dims(&a, &b);
            VectorOut::build(x.len(), |out| $op(x, y, out))
        }
    )*};
}

elementwise_fn! {
    vector_add => vector::add,
    vector_sub => vector::sub,
    vector_mul => vector::mul,
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
fn vector_concat(a: VectorRef<'_>, b: VectorRef<'_>) -> VectorOut {
    let dims = vector::concat_dims(a.dims(), b.dims()).or_raise();
    let mut out = VectorOut::zeroed(dims);
    let (left, right) = out.as_mut_slice().split_at_mut(a.dims());
    left.copy_from_slice(a.as_slice());
    right.copy_from_slice(b.as_slice());
    out
}

/// Orders two vectors for the btree operator class, freeing detoasted copies: a sort
/// calls this many times in one memory context.
fn compare(a: VectorRef<'_>, b: VectorRef<'_>) -> core::cmp::Ordering {
    let ordering = vector::compare(a.as_slice(), b.as_slice());
    a.free_if_copy();
    b.free_if_copy();
    ordering
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
fn vector_cmp(a: VectorRef<'_>, b: VectorRef<'_>) -> i32 {
    compare(a, b) as i32
}

macro_rules! comparison_fn {
    ($($name:ident => $test:expr),* $(,)?) => {$(
        #[pg_extern(immutable, parallel_safe, requires = ["vector_type"])]
        fn $name(a: VectorRef<'_>, b: VectorRef<'_>) -> bool {
            let test: fn(core::cmp::Ordering) -> bool = $test;
            test(compare(a, b))
        }
    )*};
}

comparison_fn! {
    vector_lt => |o| o.is_lt(),
    vector_le => |o| o.is_le(),
    vector_eq => |o| o.is_eq(),
    vector_ne => |o| o.is_ne(),
    vector_ge => |o| o.is_ge(),
    vector_gt => |o| o.is_gt(),
}
