//! The `vector` type, pgvector-compatible.
//!
//! * [`datum`] — the varlena layout (shared with pgvector) and the Rust handles for it.
//! * [`io`] — text and binary input/output, typmod.
//! * [`functions`] — distances, arithmetic, comparisons and the other SQL functions.
//! * [`casts`] — array ⇄ vector.
//! * [`aggregates`] — `avg` and `sum` support.
//!
//! Operators, the btree operator class, casts and aggregates are declared in
//! `sql/vector_operators.sql`.

pub mod aggregates;
pub mod casts;
pub mod datum;
pub mod functions;
pub mod io;
pub mod planner;

pub use datum::{Vector, VectorOut, VectorRef};

pgrx::extension_sql_file!(
    "../../sql/vector_operators.sql",
    name = "vector_operators",
    finalize
);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use akidb_core::vector::format_f32;
    use core::ffi::CStr;
    use pgrx::prelude::*;

    /// Our float formatting must equal PostgreSQL's own float4out (shortest round-trip,
    /// the layout of extra_float_digits = 1), bit pattern by bit pattern, or text dumps
    /// would differ from pgvector's.
    #[pg_test]
    fn element_text_equals_float4out() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut checked = 0;
        while checked < 1_000_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let v = f32::from_bits(state as u32);
            if !v.is_finite() {
                continue;
            }
            // SAFETY: float4out takes a float4 datum and returns a palloc'd C string.
            let theirs = unsafe {
                let datum = pgrx::direct_function_call_as_datum(pg_sys::float4out, &[v.into_datum()]).unwrap();
                CStr::from_ptr(datum.cast_mut_ptr()).to_str().unwrap().to_owned()
            };
            let mut ours = String::new();
            format_f32(v, &mut ours);
            assert_eq!(ours, theirs, "bits {:#010x}", v.to_bits());
            checked += 1;
        }
    }

    /// The in-memory layout is pgvector's: 4-byte varlena header, int16 dim, int16 0,
    /// then the floats.
    #[pg_test]
    fn datum_layout_matches_pgvector() {
        let v = VectorOut::from_slice(&[1.0, -2.0]);
        let datum = v.into_datum().unwrap();
        // SAFETY: a 16-byte varlena we just built.
        let bytes = unsafe { core::slice::from_raw_parts(datum.cast_mut_ptr::<u8>(), 16) };
        // SAFETY: `datum` points at a valid 4-byte-header varlena.
        assert_eq!(unsafe { pgrx::varsize(datum.cast_mut_ptr()) }, 16);
        assert_eq!(&bytes[4..8], &[2, 0, 0, 0]);
        assert_eq!(&bytes[8..12], &1.0f32.to_ne_bytes());
        assert_eq!(&bytes[12..16], &(-2.0f32).to_ne_bytes());
    }

    /// A value read back through SQL is the value stored, including -0 and subnormals.
    #[pg_test]
    fn values_survive_a_table_round_trip() {
        Spi::run("CREATE TABLE rt (v vector(4))").unwrap();
        Spi::run("INSERT INTO rt VALUES ('[-0,1e-45,3.4028235e38,-1.1754944e-38]')").unwrap();
        let text = Spi::get_one::<String>("SELECT v::text FROM rt").unwrap().unwrap();
        assert_eq!(text, "[-0,1e-45,3.4028235e+38,-1.1754944e-38]");
        let ok = Spi::get_one::<bool>("SELECT v = '[0,1e-45,3.4028235e38,-1.1754944e-38]' FROM rt").unwrap();
        assert_eq!(ok, Some(true));
    }
}
