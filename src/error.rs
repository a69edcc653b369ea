//! Core errors become PostgreSQL errors here, and only here, so each condition has one
//! SQLSTATE wherever it is raised.

use akidb_core::hnsw::error::IndexError;
use akidb_core::vector::VectorError;
use akidb_embed::EmbedError;
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
        BadUnusedField(_) => ERRCODE_DATA_EXCEPTION,
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

/// The SQLSTATE for each embedding error.
pub fn embed_sqlstate(e: &EmbedError) -> PgSqlErrorCode {
    use EmbedError::*;
    use PgSqlErrorCode::*;
    match e {
        UnknownModel { .. } => ERRCODE_UNDEFINED_OBJECT,
        MissingFile { .. } => ERRCODE_UNDEFINED_FILE,
        InvalidModel { .. } => ERRCODE_CONFIG_FILE_ERROR,
        Runtime { .. } => ERRCODE_UNDEFINED_FILE,
        InvalidArgument(_) => ERRCODE_INVALID_PARAMETER_VALUE,
        Inference { .. } => ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
        OutOfMemory { .. } => ERRCODE_OUT_OF_MEMORY,
        HttpUnreachable { .. } => ERRCODE_CONNECTION_EXCEPTION,
        HttpTimeout { .. } => ERRCODE_CONNECTION_FAILURE,
        HttpBadResponse { .. } => ERRCODE_PROTOCOL_VIOLATION,
        Cancelled => ERRCODE_QUERY_CANCELED,
    }
}

/// Raises an embedding error as a PostgreSQL ERROR (does not return).
pub fn raise_embed(e: EmbedError) -> ! {
    let code = embed_sqlstate(&e);
    let message = e.to_string();
    if matches!(e, EmbedError::OutOfMemory { .. }) {
        pgrx::pg_sys::panic::ErrorReport::new(code, message, "raise_embed")
            .set_hint("Lower the model's batch_size or batch_tokens (akidb.json), raise akidb.cuda_memory_limit, or put \"cpu\" last in akidb.execution_providers to fall back when loading.")
            .report(pgrx::PgLogLevel::ERROR);
        unreachable!("an ERROR does not return");
    }
    ereport!(ERROR, code, message);
}

impl<T> OrRaise<T> for Result<T, EmbedError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise_embed(e))
    }
}

/// The SQLSTATE for each index error.
pub fn index_sqlstate(e: &IndexError) -> PgSqlErrorCode {
    use IndexError::*;
    use PgSqlErrorCode::*;
    match e {
        Corrupted(_) => ERRCODE_INDEX_CORRUPTED,
        DimMismatch { .. } | QueryDims { .. } => ERRCODE_DATA_EXCEPTION,
        NoDimensions | EfConstructionTooSmall { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
        UnsupportedDistance(_) | UnsupportedScan | BlockSize { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
        OutOfMemory { .. } => ERRCODE_OUT_OF_MEMORY,
        NotEmpty(_) | TupleDoesNotFit(_) => ERRCODE_INTERNAL_ERROR,
        NotAnAkidbIndex(_) => ERRCODE_WRONG_OBJECT_TYPE,
    }
}

/// Raises an index error as a PostgreSQL ERROR (does not return).
pub fn raise_index(e: IndexError) -> ! {
    let mut report = pgrx::pg_sys::panic::ErrorReport::new(index_sqlstate(&e), e.to_string(), "akidb_hnsw");
    if let Some(detail) = e.detail() {
        report = report.set_detail(detail);
    }
    if let Some(hint) = e.hint() {
        report = report.set_hint(hint);
    }
    report.report(pgrx::PgLogLevel::ERROR);
    unreachable!("an ERROR does not return");
}

impl<T> OrRaise<T> for Result<T, IndexError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise_index(e))
    }
}
