//! Text and binary input/output of `vector`, and its typmod `vector(n)`.
//!
//! Binary format (send/recv, `COPY ... (FORMAT binary)`), same as pgvector:
//! `dim int16, unused int16 (= 0), dim × float4`, all in network byte order.

use akidb_core::vector::{self, VectorError};
use core::ffi::CStr;
use pgrx::prelude::*;
use pgrx::Internal;

use super::{VectorOut, VectorRef};
use crate::error::{raise, OrRaise};

#[pg_extern(immutable, parallel_safe, requires = ["vector_shell"])]
fn vector_in(input: &CStr, _typioparam: pg_sys::Oid, typmod: i32) -> VectorOut {
    let text = input.to_string_lossy();
    let values = vector::parse_vector(&text).or_raise();
    vector::check_fits_typmod(values.len(), typmod).or_raise();
    VectorOut::from_slice(&values)
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_shell"])]
fn vector_out(v: VectorRef<'_>) -> &'static CStr {
    palloc_cstr(&vector::format_vector(v.as_slice()))
}

/// Copies `s` into a palloc'd, NUL-terminated string owned by the current memory context.
fn palloc_cstr(s: &str) -> &'static CStr {
    // SAFETY: palloc gives len+1 writable bytes; we copy `s` (no interior NUL: vector text
    // is ASCII digits and punctuation) and terminate it. The memory lives until the
    // current memory context is reset, which is what PostgreSQL expects of an output
    // function's result.
    unsafe {
        let buf = pg_sys::palloc(s.len() + 1).cast::<u8>();
        core::ptr::copy_nonoverlapping(s.as_ptr(), buf, s.len());
        *buf.add(s.len()) = 0;
        CStr::from_ptr(buf.cast())
    }
}

#[pg_extern(immutable, parallel_safe)]
fn vector_typmod_in(list: Array<'_, &CStr>) -> i32 {
    // PostgreSQL's own parser of integer typmods raises what a built-in type would: 22P02
    // for "a", 22003 out of the int4 range, 2202E for a 2-D array, 22004 for a NULL.
    let mut n = 0;
    // SAFETY: a cstring[] argument; the result has n elements, palloc'd.
    let mods = unsafe {
        let p = pg_sys::ArrayGetIntegerTypmods(list.into_array_type() as *mut pg_sys::ArrayType, &mut n);
        std::slice::from_raw_parts(p, n.max(0) as usize)
    };
    let [only] = mods else {
        raise(VectorError::TypmodInvalid);
    };
    vector::check_typmod(i64::from(*only)).or_raise() as i32
}

#[pg_extern(immutable, strict, parallel_safe, requires = ["vector_shell"])]
fn vector_recv(mut buf: Internal, _typioparam: pg_sys::Oid, typmod: i32) -> VectorOut {
    // SAFETY: PostgreSQL passes a StringInfo as the first argument of a receive function.
    let buf: *mut pg_sys::StringInfoData = unsafe { buf.get_mut::<pg_sys::StringInfoData>() }
        .expect("receive function called without a buffer");
    // pq_getmsg* raise "insufficient data left in message" (08P01) on short input.
    // SAFETY: `buf` is the live message buffer for this call.
    let (dim, unused) = unsafe { (pg_sys::pq_getmsgint(buf, 2) as i16, pg_sys::pq_getmsgint(buf, 2) as i16) };
    let dims = usize::try_from(dim).unwrap_or(0);
    vector::check_dims(dims).or_raise();
    vector::check_fits_typmod(dims, typmod).or_raise();
    if unused != 0 {
        raise(VectorError::BadUnusedField(unused));
    }
    VectorOut::build(dims, |out| {
        for x in out.iter_mut() {
            // SAFETY: as above.
            *x = unsafe { pg_sys::pq_getmsgfloat4(buf) };
            vector::check_element(*x)?;
        }
        Ok(())
    })
}

#[pg_extern(immutable, parallel_safe, requires = ["vector_shell"])]
fn vector_send(v: VectorRef<'_>) -> Vec<u8> {
    let values = v.as_slice();
    let mut out = Vec::with_capacity(4 + 4 * values.len());
    out.extend_from_slice(&(values.len() as i16).to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
    for x in values {
        out.extend_from_slice(&x.to_bits().to_be_bytes());
    }
    out
}

/// The length-coercion cast `vector -> vector(n)`.
#[pg_extern(immutable, parallel_safe, name = "vector", requires = ["vector_type"])]
fn vector_typmod_cast(v: VectorRef<'_>, typmod: i32, _explicit: bool) -> VectorRef<'_> {
    vector::check_fits_typmod(v.dims(), typmod).or_raise();
    v
}

pgrx::extension_sql!(
    r#"
CREATE TYPE vector (
    INPUT     = vector_in,
    OUTPUT    = vector_out,
    TYPMOD_IN = vector_typmod_in,
    RECEIVE   = vector_recv,
    SEND      = vector_send,
    STORAGE   = external
);
"#,
    name = "vector_type",
    requires = ["vector_shell", vector_in, vector_out, vector_typmod_in, vector_recv, vector_send]
);
