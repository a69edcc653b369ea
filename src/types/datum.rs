//! How a `vector` value is laid out in memory, on disk and in the buffer cache —
//! byte-for-byte the same as pgvector's, so `pg_upgrade`-free migrations, binary COPY
//! and client adapters work across the two:
//!
//! ```text
//! | varlena header (4 bytes) | dim: int16 | unused: int16 (= 0) | dim × float4 |
//! ```
//!
//! [`VectorRef`] borrows an argument (detoasted), [`VectorOut`] owns a palloc'd result.

use akidb_core::vector::VectorError;
use core::marker::PhantomData;
use core::ptr::NonNull;
use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::nullable::Nullable;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::{pg_sys, FromDatum, IntoDatum};

use crate::error::OrRaise;

#[repr(C)]
struct Header {
    vl_len: u32,
    dim: i16,
    unused: i16,
}

const HEADER_SIZE: usize = core::mem::size_of::<Header>();

/// The first element of the vector whose header is at `header`.
/// SAFETY: `header` must point at a vector varlena (header followed by `dim` floats).
unsafe fn elements(header: NonNull<Header>) -> *mut f32 {
    // SAFETY: the elements start right after the 8-byte header, inside the same allocation.
    unsafe { header.as_ptr().cast::<u8>().add(HEADER_SIZE).cast::<f32>() }
}

/// Marker for the SQL type `vector` in pgrx's schema graph.
pub struct Vector;

// The shell type, so that the I/O functions can name `vector` before it is complete.
pgrx::extension_sql!(
    "CREATE TYPE vector;",
    name = "vector_shell",
    creates = [Type(Vector)]
);

macro_rules! maps_to_vector {
    ($($t:ty),*) => {$(
        // SAFETY: the value is a `vector` datum with the layout above in both directions.
        unsafe impl SqlTranslatable for $t {
            const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(Vector);
            const TYPE_ORIGIN: TypeOrigin = TypeOrigin::ThisExtension;
            const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::As("vector"));
            const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
                Ok(ReturnsRef::One(SqlMappingRef::As("vector")));
        }
    )*};
}
maps_to_vector!(Vector, VectorRef<'_>, VectorOut);

/// A `vector` argument, detoasted, valid for the duration of the call.
pub struct VectorRef<'a> {
    header: NonNull<Header>,
    /// The datum as passed in; differs from `header` when detoasting made a copy.
    original: *mut pg_sys::varlena,
    _lifetime: PhantomData<&'a [f32]>,
}

impl<'a> VectorRef<'a> {
    pub fn dims(&self) -> usize {
        // SAFETY: `header` points at a detoasted vector varlena (see `from_polymorphic_datum`).
        unsafe { self.header.as_ref().dim as usize }
    }

    pub fn as_slice(&self) -> &'a [f32] {
        // SAFETY: the varlena holds `dim` float4s right after the 8-byte header, and is
        // 4-byte aligned (palloc'd, or in a tuple with typalign 'i').
        unsafe { core::slice::from_raw_parts(elements(self.header), self.dims()) }
    }

    /// Frees the detoasted copy, if one was made. For functions called many times in
    /// one memory context (btree comparisons during a sort), like `PG_FREE_IF_COPY`.
    pub fn free_if_copy(self) {
        let ptr = self.header.as_ptr().cast::<pg_sys::varlena>();
        if ptr != self.original {
            // SAFETY: `ptr` was palloc'd by pg_detoast_datum and nothing else refers to it
            // once `self` is consumed.
            unsafe { pg_sys::pfree(ptr.cast()) };
        }
    }
}

impl FromDatum for VectorRef<'_> {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _typoid: pg_sys::Oid) -> Option<Self> {
        if is_null {
            return None;
        }
        let original = datum.cast_mut_ptr::<pg_sys::varlena>();
        // SAFETY: the caller passes a non-null `vector` datum; detoasting yields a
        // 4-byte-header varlena (a copy when it was compressed, external or short).
        let detoasted = unsafe { pg_sys::pg_detoast_datum(original) };
        Some(VectorRef { header: NonNull::new(detoasted.cast())?, original, _lifetime: PhantomData })
    }
}

// SAFETY: unboxes through FromDatum, which handles NULL and detoasting.
unsafe impl<'fcx> ArgAbi<'fcx> for VectorRef<'fcx> {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: forwarded contract of `unbox_arg_unchecked`.
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: forwarded contract of `unbox_nullable_arg`.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

// SAFETY: returns the detoasted datum unchanged; it lives in the call's memory context.
unsafe impl BoxRet for VectorRef<'_> {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: a valid vector datum for the function's declared return type.
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.header.as_ptr())) }
    }
}

/// A `vector` result: a palloc'd varlena in the current memory context.
pub struct VectorOut {
    header: NonNull<Header>,
}

impl VectorOut {
    /// A zero vector of `dims` dimensions (`dims` must already be validated).
    pub fn zeroed(dims: usize) -> Self {
        debug_assert!(dims <= akidb_core::vector::MAX_DIM);
        let size = HEADER_SIZE + dims * core::mem::size_of::<f32>();
        // SAFETY: palloc0 returns `size` zeroed bytes, maximally aligned, or raises ERROR.
        unsafe {
            let ptr = pg_sys::palloc0(size).cast::<Header>();
            pgrx::set_varsize_4b(ptr.cast(), size as i32);
            (*ptr).dim = dims as i16;
            VectorOut { header: NonNull::new_unchecked(ptr) }
        }
    }

    pub fn from_slice(values: &[f32]) -> Self {
        let mut out = Self::zeroed(values.len());
        out.as_mut_slice().copy_from_slice(values);
        out
    }

    /// A vector of `dims` dimensions filled in by `fill`; its error is raised.
    pub fn build(dims: usize, fill: impl FnOnce(&mut [f32]) -> Result<(), VectorError>) -> Self {
        let mut out = Self::zeroed(dims);
        fill(out.as_mut_slice()).or_raise();
        out
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: we allocated HEADER_SIZE + dim floats (see `zeroed`).
        unsafe { core::slice::from_raw_parts(elements(self.header), self.header.as_ref().dim as usize) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { core::slice::from_raw_parts_mut(elements(self.header), self.header.as_ref().dim as usize) }
    }
}

impl IntoDatum for VectorOut {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.header.as_ptr()))
    }

    /// The extension's own `vector` type, whatever search_path says (arrays of vectors
    /// are built with it).
    fn type_oid() -> pg_sys::Oid {
        let oid = pgrx::spi::Spi::get_one::<pg_sys::Oid>(
            "SELECT t.oid FROM pg_catalog.pg_type t \
             JOIN pg_catalog.pg_extension e ON e.extnamespace = t.typnamespace \
             WHERE e.extname = 'akidb' AND t.typname = 'vector'",
        );
        match oid {
            Ok(Some(oid)) => oid,
            _ => pgrx::error!("akidb: the extension's vector type is not in the catalog"),
        }
    }
}

// SAFETY: returns a palloc'd vector varlena for a function declared to return `vector`.
unsafe impl BoxRet for VectorOut {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: see above.
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.header.as_ptr())) }
    }
}
