//! akidb's embedding engine, with no PostgreSQL in it: model manifests, tokenisation and
//! batching, pooling, ONNX Runtime sessions with the execution-provider fallback chain,
//! and the HTTP and mock providers. The extension (`src/embed/`) adds settings, the
//! per-backend session cache and the SQL functions around it.

pub mod error;
pub mod http;
pub mod manifest;
pub mod mock;
pub mod model;
pub mod onnx;
pub mod pooling;
pub mod threads;
pub mod tokenize;

pub use error::{EmbedError, Result};
pub use manifest::{Manifest, Purpose};
pub use model::{EmbedTiming, LoadOptions, Model, ModelSpec};
pub use onnx::{ExecutionProvider, SessionOptions, TensorRtOptions};
pub use threads::{Interrupt, NoInterrupt};

/// Most dimensions a vector may have (the `vector` type's limit).
pub const MAX_DIMENSIONS: usize = 16_000;
