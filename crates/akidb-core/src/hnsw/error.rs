//! What can go wrong in an `akidb_hnsw` index, as one type: the extension maps each to
//! its SQLSTATE (src/error.rs) and raises it; nothing here knows PostgreSQL.

use super::format::{FormatError, Tid};

#[derive(Debug, Clone, PartialEq)]
pub enum IndexError {
    /// The index's pages do not hold what the format says they must (REINDEX).
    Corrupted(String),
    /// A vector of other dimensions than the index's.
    DimMismatch { expected: usize, got: usize },
    /// A query vector of other dimensions than the index's (pgvector's message).
    QueryDims { query: usize, index: usize },
    /// The indexed column is `vector` without dimensions.
    NoDimensions,
    /// `WITH (ef_construction = ...)` below 2 * m.
    EfConstructionTooSmall { m: usize, ef_construction: usize },
    /// An operator class whose distance function the index does not know.
    UnsupportedDistance(String),
    /// A scan that is not ORDER BY column <operator> value (or asks for index columns).
    UnsupportedScan,
    /// The server's page size is not the format's.
    BlockSize { server: usize, format: usize },
    /// A large allocation failed (building, checking).
    OutOfMemory { what: &'static str, rows: usize },
    /// ambuild on an index that already has pages.
    NotEmpty(String),
    /// A tuple that does not fit the page it was planned for (a bug, never user data).
    TupleDoesNotFit(usize),
    /// The index given to the checker is not an akidb_hnsw index.
    NotAnAkidbIndex(String),
}

impl IndexError {
    /// The element at `at` is not what it should be.
    pub fn at(at: Tid, what: impl std::fmt::Display) -> IndexError {
        IndexError::Corrupted(format!("({}, {}): {what}", at.block, at.offset))
    }

    /// Why, where the message alone does not say.
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            IndexError::UnsupportedScan => {
                Some("It answers nearest-neighbour queries with one ORDER BY distance and returns no columns.")
            }
            _ => None,
        }
    }

    /// What to do about it, if the message alone does not say.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            IndexError::Corrupted(_) => Some("REINDEX the index."),
            IndexError::NoDimensions => Some("Declare the column as vector(n) to index it with akidb_hnsw."),
            IndexError::OutOfMemory { .. } => {
                Some("Lower maintenance_work_mem: rows beyond it are inserted one by one instead of held in memory.")
            }
            _ => None,
        }
    }
}

impl From<FormatError> for IndexError {
    fn from(e: FormatError) -> Self {
        IndexError::Corrupted(e.to_string())
    }
}

impl std::fmt::Display for IndexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexError::Corrupted(what) => write!(f, "akidb_hnsw index is corrupted: {what}"),
            IndexError::DimMismatch { expected, got } => write!(f, "expected {expected} dimensions, not {got}"),
            IndexError::QueryDims { query, index } => write!(f, "different vector dimensions {query} and {index}"),
            IndexError::NoDimensions => write!(f, "column does not have dimensions"),
            IndexError::EfConstructionTooSmall { .. } => write!(f, "ef_construction must be greater than or equal to 2 * m"),
            IndexError::UnsupportedDistance(name) => write!(f, "akidb_hnsw: unsupported distance function {name}"),
            IndexError::UnsupportedScan => write!(f, "an akidb_hnsw index can only be scanned by ORDER BY column <operator> value"),
            IndexError::BlockSize { server, format } => {
                write!(f, "akidb needs a server with {format}-byte pages; this one has {server}")
            }
            IndexError::OutOfMemory { what, rows } => write!(f, "out of memory {what} an akidb_hnsw index after {rows} rows"),
            IndexError::NotEmpty(name) => write!(f, "akidb_hnsw: index \"{name}\" already contains data"),
            IndexError::TupleDoesNotFit(len) => write!(f, "akidb_hnsw: failed to add a {len}-byte tuple to an index page"),
            IndexError::NotAnAkidbIndex(name) => write!(f, "\"{name}\" is not an akidb_hnsw index"),
        }
    }
}

impl std::error::Error for IndexError {}
