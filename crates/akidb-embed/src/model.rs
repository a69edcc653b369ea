//! A model: its directory and manifest ([`ModelSpec`]), and once loaded, the backend that
//! turns texts into vectors ([`Model`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{EmbedError, Result};
use crate::http::HttpClient;
use crate::manifest::{Manifest, Pooling, ProviderKind, Purpose, MANIFEST_FILE};
use crate::onnx::{self, OnnxSession, SessionOptions};
use crate::pooling::{finish, TokenStates};
use crate::threads::{with_signals_blocked, Interrupt, NoInterrupt};
use crate::tokenize::{plan_batches, Batch, TextEncoder};

/// A model directory and its parsed manifest.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl ModelSpec {
    /// Reads `model_path/name/akidb.json`.
    pub fn read(model_path: &Path, name: &str) -> Result<ModelSpec> {
        let unknown = || EmbedError::UnknownModel { model: name.into(), model_path: model_path.display().to_string() };
        // A name is one directory, never a path out of model_path.
        // Nor longer than a file name may be (NAME_MAX), which the file system would
        // report as an I/O error rather than a missing model.
        if name.is_empty() || name.len() > 255 || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
            return Err(unknown());
        }
        let dir = model_path.join(name);
        let file = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => return Err(unknown()),
            Err(e) => {
                return Err(EmbedError::MissingFile { model: name.into(), file: file.display().to_string(), detail: e.to_string() })
            }
        };
        let manifest = Manifest::parse(name, &file.display().to_string(), &text)?;
        Ok(ModelSpec { name: name.into(), dir, manifest })
    }

    /// Every directory under `model_path` with a manifest, sorted by name; a manifest
    /// that does not parse is listed with its error.
    pub fn list(model_path: &Path) -> Vec<(String, Result<ModelSpec>)> {
        let mut names: Vec<String> = std::fs::read_dir(model_path)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join(MANIFEST_FILE).is_file())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.into_iter().map(|n| {
            let spec = ModelSpec::read(model_path, &n);
            (n, spec)
        }).collect()
    }
}

/// What loading needs besides the model itself.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub onnxruntime_library: PathBuf,
    pub session: SessionOptions,
    pub http_api_key: Option<String>,
    /// Most texts in one batch, in place of the manifest's `batch_size` and the default.
    pub batch_rows: Option<usize>,
    /// Most padded tokens in one batch, in place of the manifest's `batch_tokens` and the default.
    pub batch_tokens: Option<usize>,
}

enum Backend {
    Onnx { session: OnnxSession, encoder: TextEncoder },
    Http(HttpClient),
    Mock,
}

/// A loaded model, ready to embed.
pub struct Model {
    pub spec: ModelSpec,
    backend: Backend,
    /// Where it runs: `cpu`, `cuda`, `tensorrt`, `http`, `mock`.
    pub execution_provider: &'static str,
    /// Providers tried before the one in use, with the reason each was passed over.
    pub passed_over: Vec<(&'static str, String)>,
    pub load_ms: f64,
    /// Resident memory the load added to this process (bytes; 0 where unknown).
    pub memory_bytes: i64,
    max_rows: usize,
    max_cells: usize,
    /// Threads for the CPU side of a long call, tokenising and pooling. On a GPU, three
    /// quarters of the CPUs, at most 12: there the GPU is faster than one CPU thread
    /// preparing its input and reading its output (bench/gpu measured tokenising at about
    /// half of a 32-text call on an H200 machine's CPU). On the CPU provider one: inference
    /// has the CPUs, and helpers only got in its way (bench/retrieval on 2 cores: the bulk
    /// path 6 % slower with them).
    helper_threads: usize,
    /// Where the last call's time went.
    pub last_timing: EmbedTiming,
}

/// Where one `embed` call's time went (DEBUG1 messages show it).
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedTiming {
    pub texts: usize,
    pub tokens: usize,
    pub batches: usize,
    pub tokenize_ms: f64,
    pub inference_ms: f64,
    pub pool_ms: f64,
}

impl Model {
    pub fn load(spec: ModelSpec, opts: &LoadOptions) -> Result<Model> {
        let started = Instant::now();
        let rss_before = resident_bytes();
        let m = &spec.manifest;
        let mut passed_over = Vec::new();
        let (backend, execution_provider) = match m.provider {
            ProviderKind::Mock => (Backend::Mock, "mock"),
            ProviderKind::Http => {
                let section = m.http.as_ref().expect("checked by Manifest::parse");
                let key = opts.http_api_key.clone().filter(|k| !k.is_empty()).or_else(|| {
                    section.api_key_env.as_ref().and_then(|v| std::env::var(v).ok())
                });
                (Backend::Http(HttpClient::new(&spec.name, section, key, m.dimensions)), "http")
            }
            ProviderKind::Onnx => {
                let env = onnx::environment(&opts.onnxruntime_library)?;
                let tokenizer_file = spec.dir.join(&m.onnx.tokenizer_file);
                let encoder = TextEncoder::load(&spec.name, &tokenizer_file, m.max_tokens, m.onnx.pad_token_id)?;
                let mut session_opts = opts.session.clone();
                session_opts.max_tokens = m.max_tokens;
                session_opts.max_batch = opts.batch_rows.or(m.batch_size).unwrap_or(64);
                let pre_pooled = match &m.pooling {
                    Pooling::Output(name) => Some(name.as_str()),
                    _ => None,
                };
                let model_file = spec.dir.join(&m.onnx.model_file);
                let loaded = OnnxSession::load(env, &spec.name, &model_file, m.onnx.output.as_deref(), pre_pooled, &session_opts)?;
                passed_over = loaded.passed_over.into_iter().map(|(p, why)| (p.name(), why)).collect();
                let provider = loaded.session.provider.name();
                let mut backend = Backend::Onnx { session: loaded.session, encoder };
                probe(&spec, &mut backend, &tokenizer_file)?;
                (backend, provider)
            }
        };
        // Batch limits: a CPU gains little from wide batches (padding and cache misses
        // eat the gain; measured in bench/embed: 8 texts beat 1 and 32), a GPU gains a lot
        // (bench/gpu: 256 rows, as many cells as 256 texts of 256 tokens).
        let on_cpu = execution_provider == "cpu";
        let max_rows = opts.batch_rows.or(m.batch_size).unwrap_or(if on_cpu { 8 } else { 256 });
        let max_cells = opts.batch_tokens.or(m.batch_tokens).unwrap_or(if on_cpu { 2048 } else { 65536 });
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let helper_threads = if on_cpu { 1 } else { opts.session.threads.max((cpus * 3 / 4).min(12)) };
        Ok(Model {
            spec,
            backend,
            execution_provider,
            passed_over,
            load_ms: started.elapsed().as_secs_f64() * 1e3,
            memory_bytes: (resident_bytes() - rss_before).max(0),
            max_rows,
            max_cells,
            helper_threads,
            last_timing: EmbedTiming::default(),
        })
    }

    /// Embeds `texts` (prefixed for `purpose`), `dims` values each. The vector of a text
    /// never depends on the other texts of the call.
    /// How many dimensions `embed` returns for a `dims` request (an error if the model
    /// does not offer it).
    pub fn output_dims(&self, dims: Option<usize>) -> Result<usize> {
        self.spec.manifest.output_dims(&self.spec.name, dims)
    }

    pub fn embed(&mut self, texts: &[&str], purpose: Purpose, dims: Option<usize>, interrupt: &dyn Interrupt) -> Result<Vec<Vec<f32>>> {
        self.last_timing = EmbedTiming::default();
        let m = &self.spec.manifest;
        let out_dims = m.output_dims(&self.spec.name, dims)?;
        let normalize = m.normalize;
        let prefix = m.prefix(purpose);
        let prefixed = |t: &str| if prefix.is_empty() { t.to_string() } else { format!("{prefix}{t}") };
        let raw: Vec<Vec<f32>> = match &mut self.backend {
            Backend::Mock => texts.iter().map(|t| crate::mock::embed(&prefixed(t), m.dimensions)).collect(),
            Backend::Http(client) => {
                let all: Vec<String> = texts.iter().map(|t| prefixed(t)).collect();
                client.embed(&all, interrupt)?
            }
            Backend::Onnx { session, encoder } => {
                let started = Instant::now();
                let ids = encoder.encode_all(&self.spec.name, texts, prefix, self.helper_threads, interrupt)?;
                let mut timing = EmbedTiming { texts: texts.len(), tokenize_ms: ms(started), ..Default::default() };
                let lengths: Vec<usize> = ids.iter().map(|s| s.len()).collect();
                timing.tokens = lengths.iter().sum();
                let mut raw = vec![Vec::new(); texts.len()];
                for rows in plan_batches(&lengths, self.max_rows, self.max_cells) {
                    let seqs: Vec<&[u32]> = rows.iter().map(|&i| ids[i].as_slice()).collect();
                    let batch = Batch::pad(&seqs, m.padding_side, encoder.pad_id);
                    let (pooled, run_ms, pool_ms) = run_and_pool(session, &m.pooling, m.dimensions, &batch, self.helper_threads, interrupt)?;
                    timing.batches += 1;
                    timing.inference_ms += run_ms;
                    timing.pool_ms += pool_ms;
                    for (&i, v) in rows.iter().zip(pooled) {
                        raw[i] = v;
                    }
                }
                self.last_timing = timing;
                raw
            }
        };
        // A NaN or an infinity (an fp16 overflow, a broken model or server) must never
        // become a stored vector: it is an error naming the model and the text.
        if let Some((i, bad)) = raw.iter().enumerate().find_map(|(i, v)| v.iter().find(|x| !x.is_finite()).map(|x| (i, *x))) {
            return Err(EmbedError::Inference {
                model: self.spec.name.clone(),
                detail: format!(
                    "the output for text {} of {} holds {bad} (an overflow in the model, or a broken model)",
                    i + 1,
                    texts.len()
                ),
            });
        }
        Ok(raw.into_iter().map(|v| finish(v, out_dims, normalize)).collect())
    }
}

/// Runs a batch and pools each row (a wide batch on several threads); checks the output
/// has the manifest's dimensions. Also says how long the run and the pooling took (ms).
fn run_and_pool(
    session: &mut OnnxSession,
    pooling: &Pooling,
    dims: usize,
    batch: &Batch,
    threads: usize,
    interrupt: &dyn Interrupt,
) -> Result<(Vec<Vec<f32>>, f64, f64)> {
    let file = session.file().to_string();
    let pre_pooled = session.pre_pooled;
    let started = Instant::now();
    let mut run_ms = 0.0;
    let pooled = session.run(batch, interrupt, |values, shape| {
        run_ms = ms(started);
        let bad_shape = |detail: String| EmbedError::InvalidModel { model: String::new(), file: file.clone(), detail };
        if pre_pooled {
            if shape != [batch.rows, dims] {
                return Err(bad_shape(format!("output has shape {shape:?}, expected [{}, {dims}] (dimensions in akidb.json)", batch.rows)));
            }
            return Ok(values.chunks(dims).map(|c| c.to_vec()).collect());
        }
        if shape != [batch.rows, batch.seq, dims] {
            return Err(bad_shape(format!(
                "output has shape {shape:?}, expected [{}, {}, {dims}] (dimensions in akidb.json)",
                batch.rows, batch.seq
            )));
        }
        let states = TokenStates { states: values, mask: &batch.mask, batch: batch.rows, seq: batch.seq, dim: dims };
        Ok(pool_all(&states, pooling, if values.len() >= POOL_SPLIT { threads } else { 1 }))
    })?;
    let pool_ms = ms(started) - run_ms;
    Ok((pooled, run_ms, pool_ms))
}

/// Pools every row of `states`, on up to `threads` threads (this one and helpers started
/// with signals blocked; should one not start, this thread does its rows).
fn pool_all(states: &TokenStates, pooling: &Pooling, threads: usize) -> Vec<Vec<f32>> {
    let (rows, dims) = (states.batch, states.dim);
    let pool = |range: std::ops::Range<usize>| -> Vec<Vec<f32>> {
        range
            .map(|r| {
                let mut v = vec![0.0; dims];
                states.pool_row(pooling, r, &mut v);
                v
            })
            .collect()
    };
    let threads = threads.clamp(1, rows.max(1));
    if threads == 1 {
        return pool(0..rows);
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads)
            .filter(|h| h * per < rows)
            .map(|h| {
                let range = h * per..((h + 1) * per).min(rows);
                let pool = &pool;
                let spawned = with_signals_blocked(|| {
                    let range = range.clone();
                    std::thread::Builder::new().name("akidb-pool".into()).spawn_scoped(scope, move || pool(range))
                });
                spawned.map_err(|_| range)
            })
            .collect();
        let mut out = pool(0..per.min(rows));
        for h in handles {
            match h {
                Ok(h) => out.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
                Err(range) => out.extend(pool(range)),
            }
        }
        out
    })
}

/// Token states above which pooling is shared out between threads.
const POOL_SPLIT: usize = 1 << 19;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// One run at load time: the tokenizer's largest id must be a valid input, and the output
/// must have the manifest's shape. Either failing names the file at fault.
fn probe(spec: &ModelSpec, backend: &mut Backend, tokenizer_file: &Path) -> Result<()> {
    let Backend::Onnx { session, encoder } = backend else { return Ok(()) };
    let m = &spec.manifest;
    let batch = Batch::pad(&[&[encoder.max_id, encoder.max_id]], m.padding_side, encoder.pad_id);
    // The first run: execution providers start some of their threads only now (the CUDA
    // and TensorRT ones do), so it runs with every signal blocked, which they inherit.
    match crate::threads::with_signals_blocked(|| run_and_pool(session, &m.pooling, m.dimensions, &batch, 1, &NoInterrupt)) {
        Ok(_) => Ok(()),
        Err(EmbedError::InvalidModel { file, detail, .. }) => Err(EmbedError::InvalidModel { model: spec.name.clone(), file, detail }),
        Err(EmbedError::Inference { detail, .. }) => Err(EmbedError::InvalidModel {
            model: spec.name.clone(),
            file: tokenizer_file.display().to_string(),
            detail: format!(
                "the tokenizer produces token ids up to {}, which {} does not accept: {detail}",
                encoder.max_id,
                session.file()
            ),
        }),
        Err(e) => Err(e),
    }
}

/// Resident set size of this process, from /proc (Linux); 0 elsewhere.
fn resident_bytes() -> i64 {
    let page = 4096i64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<i64>().ok()))
        .map_or(0, |pages| pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_on_several_threads_equals_pooling_on_one() {
        let (batch, seq, dim) = (37, 11, 5);
        let states: Vec<f32> = (0..batch * seq * dim).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
        let mask: Vec<i64> = (0..batch * seq).map(|i| if i % seq <= (i / seq) % seq { 1 } else { 0 }).collect();
        let t = TokenStates { states: &states, mask: &mask, batch, seq, dim };
        for pooling in [Pooling::Mean, Pooling::Cls, Pooling::LastToken] {
            let one = pool_all(&t, &pooling, 1);
            assert_eq!(one.len(), batch);
            for threads in [2, 3, 8, 64] {
                assert_eq!(pool_all(&t, &pooling, threads), one, "{pooling:?}, {threads} threads");
            }
        }
    }
}
