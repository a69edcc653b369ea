//! Core errors become PostgreSQL errors here, and only here, so each condition has one
//! SQLSTATE wherever it is raised.

use akidb_core::vector::VectorError;
use pgrx::{ereport, PgSqlErrorCode};

/// The SQLSTATE for each vector error. The codes follow pgvector, so applications that
/// match on them behave the same with either extension.
pub fn vector_sqlstate(e: &VectorError) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    use VectorError::*;
    match e {
        InvalidSyntax { .. } => ERRCODE_INVALID_TEXT_REPRESENTATION,
        OutOfRange { .. } | RealOutOfRange { .. } | Overflow | Underflow => ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
        TooManyDims => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        TypmodTooSmall | TypmodTooLarge | TypmodInvalid => ERRCODE_INVALID_PARAMETER_VALUE,
        BadUnusedField(_) => ERRCODE_INVALID_BINARY_REPRESENTATION,
        ArrayHasNulls => ERRCODE_NULL_VALUE_NOT_ALLOWED,
        NaN | Infinite | Empty | TypmodMismatch { .. } | DimMismatch { .. } | ArrayNotOneDim => {
            ERRCODE_DATA_EXCEPTION
        }
    }
}

/// Raises `e` as a PostgreSQL ERROR (does not return).
pub fn raise(e: VectorError) -> ! {
    let code = vector_sqlstate(&e);
    let message = e.to_string();
    match e.detail() {
        Some(detail) => {
            ereport!(ERROR, code, message, detail);
        }
        None => {
            ereport!(ERROR, code, message);
        }
    }
}

/// `result.or_raise()`: the value, or the error raised as a PostgreSQL ERROR.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, VectorError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}
