//! Every akidb setting (GUC), declared in one place: name, unit, range and who may set
//! it. Settings that name files, libraries, URLs or keys are superuser-only (SUSET).

use std::ffi::{CStr, CString};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

pub static MODEL_PATH: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static DEFAULT_MODEL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"all-MiniLM-L6-v2"));
pub static ONNXRUNTIME_LIBRARY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static EXECUTION_PROVIDERS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"tensorrt,cuda,cpu"));
pub static ONNX_THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static CUDA_DEVICE: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static CUDA_MEMORY_LIMIT_MB: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static TENSORRT_FP16: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static TENSORRT_CACHE: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static TENSORRT_CACHE_PATH: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static TENSORRT_WORKSPACE_MB: GucSetting<i32> = GucSetting::<i32>::new(2048);

/// The API key of remote embedding servers is no setting: a setting's value is readable
/// by every role in a session that has not loaded akidb yet (PostgreSQL keeps it as a
/// placeholder until the library defines it). The key lives in a file only the server
/// can read, named by this superuser-only setting.
pub static HTTP_API_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

fn text(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().map(|c| c.to_string_lossy().into_owned()).filter(|s| !s.is_empty())
}

pub fn model_path() -> Option<String> {
    text(&MODEL_PATH)
}
pub fn default_model() -> Option<String> {
    text(&DEFAULT_MODEL)
}
pub fn onnxruntime_library() -> Option<String> {
    text(&ONNXRUNTIME_LIBRARY)
}
pub fn execution_providers() -> String {
    text(&EXECUTION_PROVIDERS).unwrap_or_else(|| "cpu".into())
}
pub fn tensorrt_cache_path() -> Option<String> {
    text(&TENSORRT_CACHE_PATH)
}

/// The key in akidb.http_api_key_file (relative paths are relative to the data
/// directory), its surrounding white space trimmed; None when the setting is empty.
/// Errors name the file, never its contents.
pub fn http_api_key() -> Option<String> {
    use pgrx::{ereport, PgSqlErrorCode};
    use std::os::unix::fs::PermissionsExt;
    let path = text(&HTTP_API_KEY_FILE)?;
    #[allow(unreachable_code)]
    let fail = |code, what: String| -> ! {
        ereport!(ERROR, code, format!("akidb.http_api_key_file \"{path}\": {what}"));
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(PgSqlErrorCode::ERRCODE_UNDEFINED_FILE, "no such file".into()),
        Err(e) => fail(PgSqlErrorCode::ERRCODE_IO_ERROR, e.to_string()),
    };
    // Like ssl_key_file: a key others on the machine can read is refused.
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        fail(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            "must be a regular file with no access for group or others (chmod 600)".into(),
        );
    }
    let key = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => fail(PgSqlErrorCode::ERRCODE_IO_ERROR, e.to_string()),
    };
    let key = String::from_utf8(key)
        .unwrap_or_else(|_| fail(PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR, "the key is not UTF-8 text".into()));
    let key = key.trim();
    if key.is_empty() || key.contains(|c: char| c.is_control()) {
        fail(PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR, "holds no key on one line".into());
    }
    Some(key.to_string())
}

/// Refuses a list of execution providers that is not a comma-separated list of distinct
/// tensorrt, cuda and cpu: SET fails with 22023, the reason in the DETAIL.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_execution_providers(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes the proposed value, a valid string or NULL.
    let value = unsafe { (*newval).as_ref().map(|p| CStr::from_ptr(p).to_string_lossy().into_owned()) };
    let Err(why) = akidb_embed::onnx::ExecutionProvider::parse_list(value.as_deref().unwrap_or("")) else {
        return true;
    };
    let detail = CString::new(format!("{why}: use a comma-separated list of tensorrt, cuda and cpu, each at most once."))
        .unwrap_or_default();
    // SAFETY: the check-hook protocol: a palloc'd detail string, read by the caller's ereport.
    unsafe { pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr()) };
    false
}

/// Registers the settings; called from `_PG_init` (no threads, no files touched).
pub fn init() {
    GucRegistry::define_string_guc(
        c"akidb.model_path",
        c"Directory holding one subdirectory (with an akidb.json) per embedding model.",
        c"Empty means SHAREDIR/akidb/models, where `make install` puts the default model.",
        &MODEL_PATH,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"akidb.default_model",
        c"Embedding model used when embed() is given no model.",
        c"",
        &DEFAULT_MODEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"akidb.onnxruntime_library",
        c"Path of the ONNX Runtime shared library (libonnxruntime.so).",
        c"Empty means the ORT_DYLIB_PATH environment variable, else PKGLIBDIR/akidb/libonnxruntime.so. Read once per backend, at the first ONNX model load.",
        &ONNXRUNTIME_LIBRARY,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: the check hook is guarded and only reads the proposed value.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"akidb.execution_providers",
            c"ONNX Runtime execution providers to try, in order (tensorrt, cuda, cpu).",
            c"Applies to models loaded afterwards; akidb.models shows the one each model got.",
            &EXECUTION_PROVIDERS,
            GucContext::Userset,
            GucFlags::default(),
            Some(check_execution_providers),
            None,
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"akidb.onnx_threads",
        c"Threads per ONNX Runtime session (one inference); 0 picks a share of the CPUs.",
        c"0 means max(1, CPUs / 4) capped at 4, so many backends do not oversubscribe the machine.",
        &ONNX_THREADS,
        0,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"akidb.cuda_device",
        c"CUDA device id for the cuda and tensorrt execution providers.",
        c"",
        &CUDA_DEVICE,
        0,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"akidb.cuda_memory_limit",
        c"Most GPU memory one backend's CUDA memory arena may take per model; 0 means no limit.",
        c"An inference that needs more fails with out_of_memory (53200); the backend and its model stay usable. Applies to models loaded afterwards.",
        &CUDA_MEMORY_LIMIT_MB,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_bool_guc(
        c"akidb.tensorrt_fp16",
        c"Let TensorRT build FP16 engines.",
        c"",
        &TENSORRT_FP16,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"akidb.tensorrt_cache",
        c"Keep TensorRT engine and timing caches on disk, so an engine is built once per model, not per backend.",
        c"",
        &TENSORRT_CACHE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"akidb.tensorrt_cache_path",
        c"Directory of the TensorRT engine and timing caches.",
        c"Empty means DATADIR/akidb_tensorrt_cache.",
        &TENSORRT_CACHE_PATH,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"akidb.tensorrt_workspace",
        c"TensorRT builder workspace.",
        c"",
        &TENSORRT_WORKSPACE_MB,
        64,
        1 << 20,
        GucContext::Suset,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_string_guc(
        c"akidb.http_api_key_file",
        c"File holding the API key sent to remote embedding servers (http provider).",
        c"Relative to the data directory; readable by the server only (chmod 600). Read when an http model is loaded.",
        &HTTP_API_KEY_FILE,
        GucContext::Suset,
        GucFlags::default(),
    );
    init_hnsw();
    init_worker();
    // SAFETY: after every akidb.* setting is defined.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"akidb".as_ptr()) };
}

/// `akidb.hnsw_iterative_scan`: what a scan does when its candidate list runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, pgrx::PostgresGucEnum)]
pub enum IterativeScan {
    #[name = c"off"]
    Off,
    #[name = c"relaxed_order"]
    RelaxedOrder,
    #[name = c"strict_order"]
    StrictOrder,
}

pub static HNSW_EF_SEARCH: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static HNSW_MAX_SCAN_TUPLES: GucSetting<i32> = GucSetting::<i32>::new(20_000);
pub static HNSW_ITERATIVE_SCAN: GucSetting<IterativeScan> = GucSetting::<IterativeScan>::new(IterativeScan::Off);

pub fn hnsw_iterative_scan() -> IterativeScan {
    HNSW_ITERATIVE_SCAN.get()
}

/// The index settings; called from `init`.
fn init_hnsw() {
    GucRegistry::define_int_guc(
        c"akidb.hnsw_ef_search",
        c"Candidate list size of an akidb_hnsw scan (more: better recall, slower).",
        c"",
        &HNSW_EF_SEARCH,
        1,
        1000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"akidb.hnsw_iterative_scan",
        c"Keep searching when a filtered akidb_hnsw scan runs out of candidates: off, relaxed_order or strict_order.",
        c"",
        &HNSW_ITERATIVE_SCAN,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"akidb.hnsw_max_scan_tuples",
        c"Most rows an iterative akidb_hnsw scan looks at.",
        c"",
        &HNSW_MAX_SCAN_TUPLES,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// `akidb.embed_mode`: where `embed()` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, pgrx::PostgresGucEnum)]
pub enum EmbedMode {
    #[name = c"backend"]
    Backend,
    #[name = c"worker"]
    Worker,
}

// Two settings, one registered: the default is `worker` where akidb is preloaded (the
// worker runs), `backend` elsewhere.
static EMBED_MODE_PRELOADED: GucSetting<EmbedMode> = GucSetting::<EmbedMode>::new(EmbedMode::Worker);
static EMBED_MODE_PLAIN: GucSetting<EmbedMode> = GucSetting::<EmbedMode>::new(EmbedMode::Backend);
static PRELOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn embed_mode() -> EmbedMode {
    if PRELOADED.load(std::sync::atomic::Ordering::Relaxed) {
        EMBED_MODE_PRELOADED.get()
    } else {
        EMBED_MODE_PLAIN.get()
    }
}

pub static WORKER_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(64);
pub static WORKER_SLOT_KB: GucSetting<i32> = GucSetting::<i32>::new(256);
pub static WORKER_MAX_BATCH: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static WORKER_BATCH_TOKENS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// The shared embedding worker's settings; called from `init`.
fn init_worker() {
    // SAFETY: a plain read of a flag the postmaster sets around preloading.
    let preloaded = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    PRELOADED.store(preloaded, std::sync::atomic::Ordering::Relaxed);
    GucRegistry::define_enum_guc(
        c"akidb.embed_mode",
        c"Where embed() runs: worker (the shared embedding worker, one model for the whole server) or backend (each connection loads its own).",
        c"worker needs akidb in shared_preload_libraries (the default there); elsewhere calls run in the backend.",
        if preloaded { &EMBED_MODE_PRELOADED } else { &EMBED_MODE_PLAIN },
        GucContext::Userset,
        GucFlags::default(),
    );
    // PostgreSQL takes postmaster-only settings from preloaded libraries only; elsewhere
    // there is no worker for them to size.
    if !preloaded {
        return;
    }
    GucRegistry::define_int_guc(
        c"akidb.worker_slots",
        c"Requests the shared embedding worker's queue holds at once (more wait).",
        c"",
        &WORKER_SLOTS,
        1,
        4096,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"akidb.worker_slot_size",
        c"Shared memory of one request to the embedding worker: its texts, then its vectors.",
        c"A call with more texts is sent in several requests; a text longer than this is embedded in the backend.",
        &WORKER_SLOT_KB,
        16,
        1 << 20,
        GucContext::Postmaster,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"akidb.worker_max_batch",
        c"Most texts in one batch of the embedding worker; 0 keeps the model's own (batch_size in akidb.json, else 8 on a CPU, 256 on a GPU).",
        c"Applies to models the worker loads afterwards.",
        &WORKER_MAX_BATCH,
        0,
        65536,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"akidb.worker_batch_tokens",
        c"Most padded tokens in one batch of the embedding worker; 0 keeps the model's own (batch_tokens in akidb.json, else 2048 on a CPU, 65536 on a GPU).",
        c"Applies to models the worker loads afterwards.",
        &WORKER_BATCH_TOKENS,
        0,
        1 << 24,
        GucContext::Sighup,
        GucFlags::default(),
    );
}
