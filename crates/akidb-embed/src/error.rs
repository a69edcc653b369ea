//! The embedding subsystem's one error type. The extension maps each variant to a
//! SQLSTATE in `src/error.rs`; messages name the model and the file and say what to do.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum EmbedError {
    /// No directory with an `akidb.json` for this name under the model path.
    UnknownModel { model: String, model_path: String },
    /// A file the model needs is not there (or cannot be read).
    MissingFile { model: String, file: String, detail: String },
    /// A model file is there but wrong: bad manifest, corrupt ONNX, an output of the wrong
    /// shape, a tokenizer that does not fit the model.
    InvalidModel { model: String, file: String, detail: String },
    /// The ONNX Runtime library could not be loaded.
    Runtime { library: String, detail: String },
    /// An argument the model cannot honour (e.g. `dims` it does not allow).
    InvalidArgument(String),
    /// Inference failed while running.
    Inference { model: String, detail: String },
    /// The execution provider could not allocate memory (GPU memory, mostly) to load or
    /// run the model.
    OutOfMemory { model: String, provider: String, detail: String },
    /// The remote embedding server could not be reached.
    HttpUnreachable { model: String, url: String, detail: String },
    /// The remote embedding server did not answer within the timeout.
    HttpTimeout { model: String, url: String, timeout_ms: u64 },
    /// The remote embedding server answered, but not with what the protocol says.
    HttpBadResponse { model: String, url: String, detail: String },
    /// The caller asked us to stop (statement_timeout, pg_cancel_backend).
    Cancelled,
}

impl fmt::Display for EmbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use EmbedError::*;
        match self {
            UnknownModel { model, model_path } => write!(
                f,
                "embedding model \"{model}\" does not exist: no directory \"{model}\" with an akidb.json under \"{model_path}\""
            ),
            MissingFile { model, file, detail } => {
                write!(f, "embedding model \"{model}\": cannot read file \"{file}\": {detail}")
            }
            InvalidModel { model, file, detail } => {
                write!(f, "embedding model \"{model}\": invalid file \"{file}\": {detail}")
            }
            Runtime { library, detail } => {
                write!(f, "cannot load ONNX Runtime from \"{library}\": {detail}")
            }
            InvalidArgument(msg) => f.write_str(msg),
            Inference { model, detail } => {
                write!(f, "embedding model \"{model}\": inference failed: {detail}")
            }
            OutOfMemory { model, provider, detail } => {
                write!(f, "embedding model \"{model}\": out of memory on {provider}: {detail}")
            }
            HttpUnreachable { model, url, detail } => write!(
                f,
                "embedding model \"{model}\": cannot reach embedding server at {url}: {detail}"
            ),
            HttpTimeout { model, url, timeout_ms } => write!(
                f,
                "embedding model \"{model}\": embedding server at {url} did not answer within {timeout_ms} ms"
            ),
            HttpBadResponse { model, url, detail } => write!(
                f,
                "embedding model \"{model}\": bad response from embedding server at {url}: {detail}"
            ),
            Cancelled => f.write_str("embedding canceled"),
        }
    }
}

impl std::error::Error for EmbedError {}

/// Whether an ONNX Runtime error message says an allocation failed (the CUDA provider's
/// "out of memory", its arena's "Failed to allocate memory", cuBLAS's or cuDNN's
/// ALLOC_FAILED, a C++ bad_alloc on the CPU).
pub fn says_out_of_memory(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    ["out of memory", "failed to allocate memory", "smaller than requested bytes", "alloc_failed", "bad_alloc", "bad allocation", "cudaerrormemoryallocation"]
        .iter()
        .any(|p| d.contains(p))
}

pub type Result<T, E = EmbedError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::says_out_of_memory;

    #[test]
    fn allocation_failures_are_recognised() {
        for m in [
            "CUDA failure 2: out of memory ; GPU=0 ; hostname=x ; file=cuda_allocator.cc",
            "Failed to allocate memory for requested buffer of size 805306368",
            "CUBLAS failure 3: CUBLAS_STATUS_ALLOC_FAILED",
            "std::bad_alloc",
        ] {
            assert!(says_out_of_memory(m), "{m}");
        }
        for m in ["Got invalid dimensions for input: input_ids", "no output \"x\"", "LoadLibrary failed with error 126"] {
            assert!(!says_out_of_memory(m), "{m}");
        }
    }
}
