//! In-process ONNX Runtime: the library (loaded once per process, at run time), the
//! sessions (one per model, with the execution-provider fallback chain) and one inference
//! run that the caller can interrupt.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::ep;
use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session};
use ort::value::{DynValue, Tensor, ValueType};

use crate::error::{says_out_of_memory, EmbedError, Result};
use crate::threads::{run_watched, with_signals_blocked, Interrupt};
use crate::tokenize::Batch;

/// An execution provider akidb can ask ONNX Runtime for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    TensorRt,
    Cuda,
    Cpu,
}

impl ExecutionProvider {
    pub fn parse(name: &str) -> Option<ExecutionProvider> {
        match name.trim().to_ascii_lowercase().as_str() {
            "tensorrt" | "trt" => Some(ExecutionProvider::TensorRt),
            "cuda" => Some(ExecutionProvider::Cuda),
            "cpu" => Some(ExecutionProvider::Cpu),
            _ => None,
        }
    }

    /// A list such as "tensorrt, cuda, cpu": each name known, none twice, at least one.
    pub fn parse_list(list: &str) -> Result<Vec<ExecutionProvider>, String> {
        let mut out = Vec::new();
        for name in list.split(',') {
            let name = name.trim();
            if name.is_empty() {
                return Err("an empty entry in the list".into());
            }
            let p = ExecutionProvider::parse(name).ok_or_else(|| format!("unknown execution provider \"{}\"", name.escape_default()))?;
            if out.contains(&p) {
                return Err(format!("execution provider \"{}\" is named twice", p.name()));
            }
            out.push(p);
        }
        Ok(out)
    }

    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::TensorRt => "tensorrt",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Cpu => "cpu",
        }
    }
}

/// TensorRT options; engine and timing caches live in `cache_dir` so the long engine
/// build happens once per model and machine, not once per backend.
#[derive(Debug, Clone)]
pub struct TensorRtOptions {
    pub fp16: bool,
    pub cache_dir: Option<PathBuf>,
    pub workspace_bytes: usize,
}

/// How to create sessions.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub providers: Vec<ExecutionProvider>,
    /// Threads of one inference (ONNX Runtime intra-op threads).
    pub threads: usize,
    pub cuda_device: i32,
    /// Limit of the CUDA provider's memory arena (0: none).
    pub cuda_memory_limit_bytes: usize,
    pub tensorrt: TensorRtOptions,
    /// Largest batch (for TensorRT optimisation profiles).
    pub max_batch: usize,
    /// Longest sequence (the model's max_tokens; TensorRT profiles).
    pub max_tokens: usize,
}

static ENVIRONMENT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime from `library` the first time (per process) and returns the
/// environment. A later call with another path gets the library loaded first.
pub fn environment(library: &Path) -> Result<&'static Environment> {
    let loaded = ENVIRONMENT.get_or_init(|| {
        if !library.exists() {
            return Err(format!("no such file (install it with `make install`, or set akidb.onnxruntime_library)"));
        }
        // dlopen may start threads, and the environment owns thread pools: signals blocked.
        with_signals_blocked(|| {
            let builder = ort::init_from(library).map_err(|e| e.to_string())?;
            builder.with_name("akidb").build().map_err(|e| e.to_string())
        })
    });
    match loaded {
        Ok(env) => Ok(env),
        Err(detail) => Err(EmbedError::Runtime { library: library.display().to_string(), detail: detail.clone() }),
    }
}

/// One model's ONNX Runtime session and what it needs to feed it.
pub struct OnnxSession {
    session: Session,
    model: String,
    file: String,
    inputs: Vec<InputKind>,
    output: String,
    /// True when the output is already pooled (`[batch, dim]`).
    pub pre_pooled: bool,
    pub provider: ExecutionProvider,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputKind {
    InputIds,
    AttentionMask,
    TokenTypeIds,
    PositionIds,
}

impl InputKind {
    fn of(name: &str) -> Option<InputKind> {
        match name {
            "input_ids" => Some(InputKind::InputIds),
            "attention_mask" => Some(InputKind::AttentionMask),
            "token_type_ids" => Some(InputKind::TokenTypeIds),
            "position_ids" => Some(InputKind::PositionIds),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            InputKind::InputIds => "input_ids",
            InputKind::AttentionMask => "attention_mask",
            InputKind::TokenTypeIds => "token_type_ids",
            InputKind::PositionIds => "position_ids",
        }
    }
}

/// What loading got: the session, plus why each provider before it was passed over.
pub struct Loaded {
    pub session: OnnxSession,
    pub passed_over: Vec<(ExecutionProvider, String)>,
}

impl OnnxSession {
    /// Creates a session for `file`, trying `opts.providers` in order.
    pub fn load(
        env: &Environment,
        model: &str,
        file: &Path,
        output: Option<&str>,
        pre_pooled_output: Option<&str>,
        opts: &SessionOptions,
    ) -> Result<Loaded> {
        let file_name = file.display().to_string();
        if let Err(e) = std::fs::metadata(file) {
            return Err(EmbedError::MissingFile { model: model.into(), file: file_name, detail: e.to_string() });
        }
        let invalid = |detail: String| EmbedError::InvalidModel { model: model.into(), file: file_name.clone(), detail };

        let mut passed_over = Vec::new();
        // TensorRT profiles need the input names; a CPU session tells them (and is the
        // fallback if no GPU provider works).
        let mut cpu: Option<Session> = None;
        if opts.providers.contains(&ExecutionProvider::TensorRt) {
            cpu = Some(build(env, opts, None, file).map_err(&invalid)?);
        }
        let mut chosen: Option<(Session, ExecutionProvider)> = None;
        for &p in &opts.providers {
            let attempt = match p {
                ExecutionProvider::Cpu => match cpu.take() {
                    Some(s) => Ok(s),
                    None => build(env, opts, None, file),
                },
                ExecutionProvider::Cuda => {
                    let mut cuda = ep::CUDA::default().with_device_id(opts.cuda_device);
                    if opts.cuda_memory_limit_bytes > 0 {
                        cuda = cuda.with_memory_limit(opts.cuda_memory_limit_bytes);
                    }
                    let cuda = cuda.build().error_on_failure();
                    build(env, opts, Some(cuda), file)
                }
                ExecutionProvider::TensorRt => {
                    let names: Vec<String> =
                        cpu.as_ref().map(|s| s.inputs().iter().map(|i| i.name().to_string()).collect()).unwrap_or_default();
                    build(env, opts, Some(tensorrt(model, opts, &names)), file)
                }
            };
            match attempt {
                Ok(s) => {
                    chosen = Some((s, p));
                    break;
                }
                Err(e) if says_out_of_memory(&e) && p == ExecutionProvider::Cpu => {
                    return Err(EmbedError::OutOfMemory { model: model.into(), provider: p.name().into(), detail: e })
                }
                // Any other CPU failure is the model's fault (corrupt file), not the provider's.
                Err(e) if p == ExecutionProvider::Cpu => return Err(invalid(e)),
                Err(e) => passed_over.push((p, e)),
            }
        }
        let Some((session, provider)) = chosen else {
            if let Some((p, e)) = passed_over.iter().find(|(_, e)| says_out_of_memory(e)) {
                return Err(EmbedError::OutOfMemory { model: model.into(), provider: p.name().into(), detail: e.clone() });
            }
            let why: Vec<String> = passed_over.iter().map(|(p, e)| format!("{}: {}", p.name(), e.trim_end_matches('.'))).collect();
            return Err(EmbedError::Inference {
                model: model.into(),
                detail: format!("no execution provider could run it ({})", why.join("; ")),
            });
        };

        // Inputs akidb can feed; anything else is a model we cannot run.
        let mut inputs = Vec::new();
        for i in session.inputs() {
            match InputKind::of(i.name()) {
                Some(k) => inputs.push(k),
                None => return Err(invalid(format!("the model needs input \"{}\", which akidb cannot supply (it supplies input_ids, attention_mask, token_type_ids, position_ids)", i.name()))),
            }
        }
        if !inputs.contains(&InputKind::InputIds) {
            return Err(invalid("the model has no \"input_ids\" input".into()));
        }
        let outputs: Vec<(String, Option<usize>)> = session
            .outputs()
            .iter()
            .map(|o| (o.name().to_string(), match o.dtype() {
                ValueType::Tensor { shape, .. } => Some(shape.len()),
                _ => None,
            }))
            .collect();
        let wanted = pre_pooled_output.or(output);
        let (name, rank) = match wanted {
            Some(w) => outputs.iter().find(|(n, _)| n == w).cloned().ok_or_else(|| {
                invalid(format!("the model has no output \"{w}\" (it has {})", outputs.iter().map(|o| o.0.as_str()).collect::<Vec<_>>().join(", ")))
            })?,
            None => outputs
                .iter()
                .find(|(n, _)| n == "last_hidden_state")
                .or(outputs.first())
                .cloned()
                .ok_or_else(|| invalid("the model has no outputs".into()))?,
        };
        let pre_pooled = pre_pooled_output.is_some();
        let want_rank = if pre_pooled { 2 } else { 3 };
        if rank != Some(want_rank) {
            return Err(invalid(format!(
                "output \"{name}\" has rank {}, expected {want_rank} ({})",
                rank.map(|r| r.to_string()).unwrap_or_else(|| "?".into()),
                if pre_pooled { "[batch, dimensions]" } else { "[batch, tokens, dimensions]" }
            )));
        }
        Ok(Loaded {
            session: OnnxSession { session, model: model.into(), file: file_name, inputs, output: name, pre_pooled, provider },
            passed_over,
        })
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// Runs one padded batch and hands the output (values, shape) to `consume`, in place in
    /// ONNX Runtime's buffer (a wide GPU batch's token states are tens of megabytes: no
    /// copy). Stops early (with [`EmbedError::Cancelled`]) when `interrupt` says so.
    pub fn run<T>(
        &mut self,
        batch: &Batch,
        interrupt: &dyn Interrupt,
        consume: impl FnOnce(&[f32], &[usize]) -> Result<T>,
    ) -> Result<T> {
        let shape = [batch.rows, batch.seq];
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(self.inputs.len());
        for &k in &self.inputs {
            let data: Vec<i64> = match k {
                InputKind::InputIds => batch.ids.clone(),
                InputKind::AttentionMask => batch.mask.clone(),
                InputKind::TokenTypeIds => vec![0; batch.ids.len()],
                InputKind::PositionIds => (0..batch.rows).flat_map(|_| 0..batch.seq as i64).collect(),
            };
            let t = Tensor::from_array((shape, data)).map_err(|e| self.failed(e.to_string()))?;
            values.push((k.name().to_string(), t.into_dyn()));
        }
        let options = RunOptions::new().map_err(|e| self.failed(e.to_string()))?;
        let (model, provider) = (self.model.as_str(), self.provider);
        let fail = |detail: String| failed(model, provider, detail);
        let (session, output) = (&mut self.session, self.output.as_str());
        // Inference stays on this thread (a hand-off to a worker thread cost 0.9 ms per
        // short query on a 2-core VM); the watchdog terminates it on a cancel. The threads
        // providers start lazily were started by the first run, at load, with signals
        // blocked (model::probe).
        let result = run_watched(
            interrupt,
            || -> std::result::Result<_, String> { session.run_with_options(values, &options).map_err(|e| e.to_string()) },
            &|| {
                let _ = options.terminate();
            },
        )?;
        let outputs = result.map_err(fail)?;
        let value = outputs.get(output).ok_or_else(|| fail(format!("no output \"{output}\"")))?;
        let (dims, data) = value.try_extract_tensor::<f32>().map_err(|e| fail(e.to_string()))?;
        let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        consume(data, &dims)
    }

    fn failed(&self, detail: String) -> EmbedError {
        failed(&self.model, self.provider, detail)
    }
}

/// A failed run: out of memory when the message says an allocation failed.
fn failed(model: &str, provider: ExecutionProvider, detail: String) -> EmbedError {
    if says_out_of_memory(&detail) {
        return EmbedError::OutOfMemory { model: model.into(), provider: provider.name().into(), detail };
    }
    EmbedError::Inference { model: model.into(), detail }
}

fn tensorrt(model: &str, opts: &SessionOptions, inputs: &[String]) -> ep::ExecutionProviderDispatch {
    let profile = |batch: usize, seq: usize| {
        inputs.iter().map(|n| format!("{n}:{batch}x{seq}")).collect::<Vec<_>>().join(",")
    };
    let mut trt = ep::TensorRT::default()
        .with_device_id(opts.cuda_device)
        .with_fp16(opts.tensorrt.fp16)
        .with_max_workspace_size(opts.tensorrt.workspace_bytes)
        .with_profile_min_shapes(profile(1, 1))
        .with_profile_opt_shapes(profile(opts.max_batch.min(32).max(1), opts.max_tokens.min(128)))
        .with_profile_max_shapes(profile(opts.max_batch.max(1), opts.max_tokens));
    if let Some(dir) = &opts.tensorrt.cache_dir {
        let dir = dir.display().to_string();
        trt = trt
            .with_engine_cache(true)
            .with_engine_cache_path(&dir)
            .with_engine_cache_prefix(model)
            .with_timing_cache(true)
            .with_timing_cache_path(&dir);
    }
    trt.build().error_on_failure()
}

fn build(env: &Environment, opts: &SessionOptions, provider: Option<ep::ExecutionProviderDispatch>, file: &Path) -> std::result::Result<Session, String> {
    // Session creation starts the intra-op thread pool: signals blocked.
    with_signals_blocked(|| {
        let err = |e: ort::Error<SessionBuilder>| e.to_string();
        let mut b: SessionBuilder = Session::builder(env)
            .map_err(|e| e.to_string())?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(err)?
            .with_intra_threads(opts.threads.max(1))
            .map_err(err)?
            .with_inter_threads(1)
            .map_err(err)?
            // A backend runs one inference at a time and sleeps between them: idle
            // workers that spin steal the cores the backend (and its neighbours) need.
            .with_intra_op_spinning(false)
            .map_err(err)?;
        if let Some(p) = provider {
            b = b.with_execution_providers([p]).map_err(err)?;
        }
        b.commit_from_file(file).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::ExecutionProvider::{self, *};

    #[test]
    fn provider_lists() {
        assert_eq!(ExecutionProvider::parse_list("tensorrt,cuda,cpu"), Ok(vec![TensorRt, Cuda, Cpu]));
        assert_eq!(ExecutionProvider::parse_list(" CUDA , cpu"), Ok(vec![Cuda, Cpu]));
        for bad in ["", " ", "cpu,", "cpu,,cuda", "gpu", "tensorrt,tensorrt", "trt,tensorrt", "cpu;cuda"] {
            assert!(ExecutionProvider::parse_list(bad).is_err(), "{bad:?}");
        }
    }
}
