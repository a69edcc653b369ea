//! One loaded model per name per backend, created on first use and kept for the
//! backend's life (or until `akidb_unload_model`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use akidb_embed::{
    EmbedError, ExecutionProvider, LoadOptions, Model, ModelSpec, Purpose, SessionOptions, TensorRtOptions,
};
use parking_lot::Mutex;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::error::{raise_embed, OrRaise};
use crate::interrupt::PgInterrupt;
use crate::settings;

use super::worker;

/// The models this backend has loaded. Backends are single-threaded; the lock keeps the
/// cache sound should a helper thread ever look at it.
static MODELS: Mutex<BTreeMap<String, Model>> = Mutex::new(BTreeMap::new());

fn install_dir(get: unsafe fn(*const std::ffi::c_char, *mut std::ffi::c_char)) -> PathBuf {
    let mut buf = [0 as std::ffi::c_char; pg_sys::MAXPGPATH as usize];
    // SAFETY: my_exec_path is set at backend start; buf has MAXPGPATH bytes as required.
    unsafe { get((&raw const pg_sys::my_exec_path).cast(), buf.as_mut_ptr()) };
    // SAFETY: get_*_path writes a NUL-terminated path into buf.
    PathBuf::from(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

pub fn model_path() -> PathBuf {
    settings::model_path()
        .map(PathBuf::from)
        .unwrap_or_else(|| install_dir(pg_sys::get_share_path).join("akidb").join("models"))
}

fn onnxruntime_library() -> PathBuf {
    settings::onnxruntime_library()
        .or_else(|| std::env::var("ORT_DYLIB_PATH").ok().filter(|s| !s.is_empty()))
        .map(PathBuf::from)
        .unwrap_or_else(|| install_dir(pg_sys::get_pkglib_path).join("akidb").join("libonnxruntime.so"))
}

fn data_dir() -> PathBuf {
    // SAFETY: DataDir is set for the life of a backend.
    PathBuf::from(unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) }.to_string_lossy().into_owned())
}

/// The model a call names, or `akidb.default_model` for ''.
pub fn resolve_model(name: &str) -> String {
    if !name.is_empty() {
        return name.to_string();
    }
    settings::default_model().unwrap_or_else(|| {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "no embedding model given and akidb.default_model is empty",
            "Name a model, or SET akidb.default_model."
        );
    })
}

/// Load options from the current settings.
pub fn load_options() -> LoadOptions {
    // The check hook of akidb.execution_providers refuses a bad list at SET.
    let providers = ExecutionProvider::parse_list(&settings::execution_providers()).unwrap_or_else(|_| vec![ExecutionProvider::Cpu]);
    let threads = match settings::ONNX_THREADS.get() {
        0 => (std::thread::available_parallelism().map_or(1, |n| n.get()) / 4).clamp(1, 4),
        n => n as usize,
    };
    let cache_dir = settings::TENSORRT_CACHE.get().then(|| {
        settings::tensorrt_cache_path().map(PathBuf::from).unwrap_or_else(|| data_dir().join("akidb_tensorrt_cache"))
    });
    LoadOptions {
        onnxruntime_library: onnxruntime_library(),
        session: SessionOptions {
            providers,
            threads,
            cuda_device: settings::CUDA_DEVICE.get(),
            cuda_memory_limit_bytes: settings::CUDA_MEMORY_LIMIT_MB.get() as usize * (1 << 20),
            tensorrt: TensorRtOptions {
                fp16: settings::TENSORRT_FP16.get(),
                cache_dir,
                workspace_bytes: settings::TENSORRT_WORKSPACE_MB.get() as usize * (1 << 20),
            },
            max_batch: 32,
            max_tokens: 512,
        },
        http_api_key: None,
        batch_rows: None,
        batch_tokens: None,
    }
}

/// Texts each model has embedded in this backend since it was loaded (akidb.models'
/// texts_embedded): what shows whether a plan runs the model once or once per row.
static EMBEDDED: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());

/// Embeds `texts` with the named model: in the shared worker when akidb.embed_mode says
/// so (and it runs), else in this backend (loading the model first if it has not).
pub fn embed_texts(name: &str, texts: &[&str], purpose: Purpose, dims: Option<usize>) -> Vec<Vec<f32>> {
    if worker::in_use() {
        let path = path_text();
        if let Some(v) = worker::embed(&path, name, texts, purpose, dims, full_dims(name)) {
            return v;
        }
        // A text too long for one request slot: embedded here.
    }
    let (vectors, provider, timing) = with_model(name, |m| {
        m.embed(texts, purpose, dims, &PgInterrupt).map(|v| (v, m.execution_provider, m.last_timing))
    });
    // After the model's lock is released: a message may take time to reach the client.
    report_timing(name, provider, &timing);
    *EMBEDDED.lock().entry(name.to_string()).or_default() += texts.len() as i64;
    vectors
}

/// The full output dimensions of a model (from its manifest, read once per backend and
/// model): what sizes the worker's answers. A model that cannot be read raises the same
/// error it would in this backend.
fn full_dims(name: &str) -> usize {
    static DIMS: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
    if let Some(&d) = DIMS.lock().get(name) {
        return d;
    }
    let d = ModelSpec::read(&model_path(), name).or_raise().manifest.dimensions;
    DIMS.lock().insert(name.to_string(), d);
    d
}

/// akidb.model_path as the worker's requests carry it.
fn path_text() -> String {
    model_path().to_string_lossy().into_owned()
}

/// The worker's side of a request: the models it holds are keyed by the requesting
/// backend's model path and the name (backends may SET different model paths).
fn worker_key(path: &str, name: &str) -> String {
    format!("{path}\0{name}")
}

/// In the worker: embeds with the model `name` under `path`; also says how many batches
/// it ran.
pub fn embed_here(path: &str, name: &str, texts: &[&str], purpose: Purpose, dims: Option<usize>) -> (Vec<Vec<f32>>, usize) {
    let key = worker_key(path, name);
    let (vectors, provider, timing) = with_model_at(&key, Path::new(path), name, |m| {
        m.embed(texts, purpose, dims, &PgInterrupt).map(|v| (v, m.execution_provider, m.last_timing))
    });
    report_timing(name, provider, &timing);
    (vectors, timing.batches)
}

/// In the worker: loads `name` under `path` (and checks `dims`); its execution provider.
pub fn load_here(path: &str, name: &str, dims: Option<usize>) -> String {
    let key = worker_key(path, name);
    with_model_at(&key, Path::new(path), name, |m| m.output_dims(dims).map(|_| m.execution_provider.to_string()))
}

/// In the worker: a loaded model's execution provider, memory and load time.
pub fn loaded_info(path: &str, name: &str) -> Option<(String, i64, f64)> {
    MODELS.lock().get(&worker_key(path, name)).map(|m| (m.execution_provider.to_string(), m.memory_bytes, m.load_ms))
}

/// Runs `f` on the named model, loading it first if this backend has not.
pub fn with_model<T>(name: &str, f: impl FnOnce(&mut Model) -> Result<T, EmbedError>) -> T {
    with_model_at(name, &model_path(), name, f)
}

fn with_model_at<T>(key: &str, path: &Path, name: &str, f: impl FnOnce(&mut Model) -> Result<T, EmbedError>) -> T {
    let mut models = MODELS.lock();
    if !models.contains_key(key) {
        RECENT.lock().retain(|r| r.model != name);
        let model = load(path, name);
        models.insert(key.to_string(), model);
    }
    let model = models.get_mut(key).expect("inserted above");
    let result = f(model);
    drop(models);
    match result {
        Err(EmbedError::Cancelled) => {
            // PostgreSQL raises the right error (statement timeout or cancel) itself.
            pgrx::check_for_interrupts!();
            raise_embed(EmbedError::Cancelled)
        }
        other => other.or_raise(),
    }
}

fn load(path: &Path, name: &str) -> Model {
    let spec = ModelSpec::read(path, name).or_raise();
    let mut opts = load_options();
    if worker::is_worker() {
        // The worker's batches come from many connections: its own limits, if set.
        opts.batch_rows = (settings::WORKER_MAX_BATCH.get() > 0).then(|| settings::WORKER_MAX_BATCH.get() as usize);
        opts.batch_tokens = (settings::WORKER_BATCH_TOKENS.get() > 0).then(|| settings::WORKER_BATCH_TOKENS.get() as usize);
    }
    if spec.manifest.provider == akidb_embed::manifest::ProviderKind::Http {
        opts.http_api_key = settings::http_api_key();
    }
    if let Some(dir) = &opts.session.tensorrt.cache_dir {
        if opts.session.providers.contains(&ExecutionProvider::TensorRt) {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    let model = Model::load(spec, &opts).or_raise();
    if !model.passed_over.is_empty() {
        let why: Vec<String> = model.passed_over.iter().map(|(p, e)| format!("{p}: {}", e.trim_end_matches('.'))).collect();
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("embedding model \"{name}\" runs on {}", model.execution_provider),
            format!("Passed over {}.", why.join("; "))
        );
    }
    model
}

/// Loads `name` (if needed; in the worker in worker mode) and returns its execution
/// provider.
pub fn load_model(name: &str) -> String {
    if worker::in_use() {
        let path = path_text();
        if let Some(p) = worker::load(&path, name, None) {
            return p;
        }
    }
    with_model(name, |m| Ok(m.execution_provider)).to_string()
}

/// Checks that `name` offers `dims` (where the call would run).
pub fn check_dims(name: &str, dims: Option<usize>) {
    if worker::in_use() {
        let path = path_text();
        if worker::load(&path, name, dims).is_some() {
            return;
        }
    }
    with_model(name, |m| m.output_dims(dims));
}

/// Where an ONNX call's time went, as a DEBUG1 message (`SET client_min_messages = debug1`).
fn report_timing(name: &str, provider: &str, t: &akidb_embed::EmbedTiming) {
    // SAFETY: a plain query of the logging settings.
    if t.texts == 0 || !unsafe { pg_sys::message_level_is_interesting(pg_sys::DEBUG1 as i32) } {
        return;
    }
    pgrx::debug1!(
        "akidb: embedding model \"{name}\" on {provider}: {} texts, {} tokens, {} batches; tokenising {:.3} ms, inference {:.3} ms, pooling {:.3} ms",
        t.texts,
        t.tokens,
        t.batches,
        t.tokenize_ms,
        t.inference_ms,
        t.pool_ms
    );
}

/// Frees `name`; false if it was not loaded.
pub fn unload_model(name: &str) -> bool {
    RECENT.lock().retain(|r| r.model != name);
    EMBEDDED.lock().remove(name);
    MODELS.lock().remove(name).is_some()
}

/// The last few single-text embeddings of this backend. `embed` is IMMUTABLE, so a
/// repeated call may be answered from here; that is what keeps a generic plan's
/// `ORDER BY v <=> embed_query($1)` from running the model once per row when the
/// planner cannot fold the call into a constant. Entries of a model go with it when it
/// is unloaded.
struct Recent {
    model: String,
    purpose: Purpose,
    dims: Option<usize>,
    text: String,
    vector: Vec<f32>,
}

static RECENT: Mutex<Vec<Recent>> = Mutex::new(Vec::new());
const RECENT_ENTRIES: usize = 16;
/// Longer texts are documents, not queries repeated row after row: not kept.
const RECENT_MAX_TEXT: usize = 16 * 1024;

/// The embedding of one text, from the recent ones or from the model.
pub fn embed_single(name: &str, text: &str, purpose: Purpose, dims: Option<usize>) -> Vec<f32> {
    {
        let mut recent = RECENT.lock();
        if let Some(i) = recent.iter().position(|r| r.purpose == purpose && r.dims == dims && r.model == name && r.text == text) {
            let hit = recent.remove(i);
            let vector = hit.vector.clone();
            recent.insert(0, hit);
            return vector;
        }
    }
    let vector = embed_texts(name, &[text], purpose, dims)
        .pop()
        .expect("one text in, one vector out");
    if text.len() <= RECENT_MAX_TEXT {
        let mut recent = RECENT.lock();
        recent.truncate(RECENT_ENTRIES - 1);
        recent.insert(0, Recent { model: name.to_string(), purpose, dims, text: text.to_string(), vector: vector.clone() });
    }
    vector
}

/// A row of akidb.models.
pub struct ModelRow {
    pub name: String,
    pub provider: Option<String>,
    pub dimensions: Option<i32>,
    pub pooling: Option<String>,
    pub max_tokens: Option<i32>,
    pub loaded: bool,
    pub execution_provider: Option<String>,
    pub load_ms: Option<f64>,
    pub memory_bytes: Option<i64>,
    pub texts_embedded: Option<i64>,
    pub error: Option<String>,
    /// Where this session's calls run: `worker`, or `backend` (and why, when akidb is
    /// not preloaded).
    pub runs_in: String,
    /// Worker mode: requests of this model waiting for or running in the worker.
    pub queue_depth: Option<i64>,
    /// Worker mode: batches the worker has run for this model.
    pub batches: Option<i64>,
}

pub fn model_rows() -> Vec<ModelRow> {
    let in_worker = worker::in_use();
    let path = path_text();
    let runs_in = if in_worker {
        "worker".to_string()
    } else if worker::present() {
        "backend".to_string()
    } else {
        "backend (akidb is not in shared_preload_libraries: no worker)".to_string()
    };
    let models = MODELS.lock();
    let embedded = EMBEDDED.lock();
    ModelSpec::list(&model_path())
        .into_iter()
        .map(|(name, spec)| {
            let (provider, dimensions, pooling, max_tokens, error) = match &spec {
                Ok(s) => (
                    Some(s.manifest.provider.as_str().to_string()),
                    Some(s.manifest.dimensions as i32),
                    Some(s.manifest.pooling.name()),
                    Some(s.manifest.max_tokens as i32),
                    None,
                ),
                Err(e) => (None, None, None, None, Some(e.to_string())),
            };
            let mut row = ModelRow {
                name: name.clone(),
                provider,
                dimensions,
                pooling,
                max_tokens,
                loaded: false,
                execution_provider: None,
                load_ms: None,
                memory_bytes: None,
                texts_embedded: None,
                error,
                runs_in: runs_in.clone(),
                queue_depth: None,
                batches: None,
            };
            if in_worker {
                let stats = worker::model_stats(&path, &name).filter(|w| w.loaded);
                row.loaded = stats.is_some();
                row.execution_provider = stats.as_ref().map(|w| w.provider.clone());
                row.load_ms = stats.as_ref().map(|w| w.load_ms);
                row.memory_bytes = stats.as_ref().map(|w| w.memory_bytes);
                row.texts_embedded = stats.as_ref().map(|w| w.texts);
                row.batches = stats.as_ref().map(|w| w.batches);
                row.queue_depth = Some(worker::queue_depth(&name));
            } else if let Some(m) = models.get(&name) {
                row.loaded = true;
                row.execution_provider = Some(m.execution_provider.to_string());
                row.load_ms = Some(m.load_ms);
                row.memory_bytes = Some(m.memory_bytes);
                row.texts_embedded = Some(embedded.get(&name).copied().unwrap_or(0));
            }
            row
        })
        .collect()
}
