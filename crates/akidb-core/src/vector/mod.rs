//! The `vector` type's rules, independent of how PostgreSQL stores it.

mod error;
mod ops;
mod text;

pub use error::VectorError;
pub use ops::{
    accumulate, add, check_element, check_elements, compare, concat_dims, mul, normalize_into,
    norm, sub, subvector_range,
};
pub use text::{format_f32, format_vector, parse_vector};

/// Largest number of dimensions a `vector` may have (same limit as pgvector).
pub const MAX_DIM: usize = 16_000;

/// Checks a dimension count for a value of the type (not a typmod).
pub fn check_dims(dims: usize) -> Result<(), VectorError> {
    if dims == 0 {
        Err(VectorError::Empty)
    } else if dims > MAX_DIM {
        Err(VectorError::TooManyDims)
    } else {
        Ok(())
    }
}

/// Checks the typmod given in `vector(n)`.
pub fn check_typmod(n: i64) -> Result<usize, VectorError> {
    if n < 1 {
        Err(VectorError::TypmodTooSmall)
    } else if n > MAX_DIM as i64 {
        Err(VectorError::TypmodTooLarge)
    } else {
        Ok(n as usize)
    }
}

/// Checks that a value with `dims` dimensions fits a column declared `vector(typmod)`;
/// a negative typmod means "no dimension declared".
pub fn check_fits_typmod(dims: usize, typmod: i32) -> Result<(), VectorError> {
    if typmod >= 0 && typmod as usize != dims {
        Err(VectorError::TypmodMismatch { expected: typmod as usize, actual: dims })
    } else {
        Ok(())
    }
}

/// Checks that two operands have the same number of dimensions.
pub fn check_same_dims(a: usize, b: usize) -> Result<(), VectorError> {
    if a != b {
        Err(VectorError::DimMismatch { left: a, right: b })
    } else {
        Ok(())
    }
}
