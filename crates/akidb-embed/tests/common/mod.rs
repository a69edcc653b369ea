//! Where the tests find ONNX Runtime and the models that `make test` sets up.
#![allow(dead_code)]

use std::path::PathBuf;

use akidb_embed::{ExecutionProvider, LoadOptions, Model, ModelSpec, SessionOptions, TensorRtOptions};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn load_options() -> LoadOptions {
    let lib = std::env::var("AKIDB_ORT_LIBRARY")
        .unwrap_or_else(|_| "/opt/akidb/onnxruntime-1.31.1/libonnxruntime.so.1.31.1".into());
    assert!(
        std::path::Path::new(&lib).exists(),
        "ONNX Runtime not found at {lib}: run `make test` (it installs it) or set AKIDB_ORT_LIBRARY"
    );
    LoadOptions {
        onnxruntime_library: lib.into(),
        session: SessionOptions {
            providers: vec![ExecutionProvider::Cpu],
            threads: 1,
            cuda_device: 0,
            cuda_memory_limit_bytes: 0,
            tensorrt: TensorRtOptions { fp16: true, cache_dir: None, workspace_bytes: 1 << 30 },
            max_batch: 32,
            max_tokens: 512,
        },
        http_api_key: None,
        batch_rows: None,
        batch_tokens: None,
    }
}

pub fn models_dir() -> PathBuf {
    repo().join("models")
}

pub fn load(dir: &std::path::Path, name: &str) -> akidb_embed::Result<Model> {
    Model::load(ModelSpec::read(dir, name)?, &load_options())
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
