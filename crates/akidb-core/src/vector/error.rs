use std::fmt;

/// Everything that can be wrong with a vector value. The extension maps each variant to
/// a SQLSTATE in one place (`akidb::error`); the messages match pgvector's so that
/// clients and habits carry over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VectorError {
    /// Text that is not `[x,y,...]`. `detail` says what was expected where known.
    InvalidSyntax { input: String, detail: Option<&'static str> },
    /// An element literal too large for float4.
    OutOfRange { literal: String },
    /// A numeric array element too large for float4 (PostgreSQL's numeric -> real error).
    RealOutOfRange { literal: String },
    NaN,
    Infinite,
    Empty,
    TooManyDims,
    TypmodTooSmall,
    TypmodTooLarge,
    TypmodInvalid,
    TypmodMismatch { expected: usize, actual: usize },
    DimMismatch { left: usize, right: usize },
    Overflow,
    Underflow,
    /// Binary input whose header is not the pgvector layout.
    BadUnusedField(i16),
    ArrayHasNulls,
    ArrayNotOneDim,
}

impl fmt::Display for VectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VectorError::*;
        match self {
            InvalidSyntax { input, .. } => write!(f, "invalid input syntax for type vector: \"{input}\""),
            OutOfRange { literal } => write!(f, "\"{literal}\" is out of range for type vector"),
            RealOutOfRange { literal } => write!(f, "\"{literal}\" is out of range for type real"),
            NaN => f.write_str("NaN not allowed in vector"),
            Infinite => f.write_str("infinite value not allowed in vector"),
            Empty => f.write_str("vector must have at least 1 dimension"),
            TooManyDims => write!(f, "vector cannot have more than {} dimensions", super::MAX_DIM),
            TypmodTooSmall => f.write_str("dimensions for type vector must be at least 1"),
            TypmodTooLarge => write!(f, "dimensions for type vector cannot exceed {}", super::MAX_DIM),
            TypmodInvalid => f.write_str("invalid type modifier"),
            TypmodMismatch { expected, actual } => write!(f, "expected {expected} dimensions, not {actual}"),
            DimMismatch { left, right } => write!(f, "different vector dimensions {left} and {right}"),
            Overflow => f.write_str("value out of range: overflow"),
            Underflow => f.write_str("value out of range: underflow"),
            BadUnusedField(v) => write!(f, "expected unused to be 0, not {v}"),
            ArrayHasNulls => f.write_str("array must not contain nulls"),
            ArrayNotOneDim => f.write_str("array must be 1-D"),
        }
    }
}

impl VectorError {
    /// The DETAIL line, where there is one.
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            VectorError::InvalidSyntax { detail, .. } => *detail,
            _ => None,
        }
    }
}

impl std::error::Error for VectorError {}
