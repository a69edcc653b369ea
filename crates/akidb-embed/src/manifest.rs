//! `akidb.json`: what a model directory holds and how to run it.
//!
//! ```json
//! { "provider": "onnx", "dimensions": 384, "pooling": "mean", "normalize": true,
//!   "max_tokens": 256, "padding_side": "right",
//!   "query_prefix": "", "document_prefix": "", "matryoshka_dims": [],
//!   "onnx": { "model_file": "model.onnx", "tokenizer_file": "tokenizer.json" } }
//! ```
//!
//! Unknown keys are an error (a typo must not silently change how a model embeds).

use serde::{Deserialize, Deserializer};

use crate::error::{EmbedError, Result};

pub const MANIFEST_FILE: &str = "akidb.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Onnx,
    Http,
    Mock,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Onnx => "onnx",
            ProviderKind::Http => "http",
            ProviderKind::Mock => "mock",
        }
    }
}

/// How token states become one vector.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Average of the token states under the attention mask (sentence-transformers' mean).
    #[default]
    Mean,
    /// The first token's state ([CLS]).
    Cls,
    /// The last real token's state (decoder models such as Qwen3-Embedding).
    LastToken,
    /// The model already pools: take this output as it is.
    Output(String),
}

impl Pooling {
    pub fn name(&self) -> String {
        match self {
            Pooling::Mean => "mean".into(),
            Pooling::Cls => "cls".into(),
            Pooling::LastToken => "last_token".into(),
            Pooling::Output(name) => name.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Pooling {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            "last_token" => Pooling::LastToken,
            "" => return Err(serde::de::Error::custom("pooling must not be empty")),
            _ => Pooling::Output(s),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PaddingSide {
    #[default]
    Right,
    Left,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxSection {
    #[serde(default = "default_model_file")]
    pub model_file: String,
    #[serde(default = "default_tokenizer_file")]
    pub tokenizer_file: String,
    /// The output holding token states; default `last_hidden_state`, else the first output.
    #[serde(default)]
    pub output: Option<String>,
    /// Token id used for padding when tokenizer.json names none.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl Default for OnnxSection {
    fn default() -> Self {
        OnnxSection {
            model_file: default_model_file(),
            tokenizer_file: default_tokenizer_file(),
            output: None,
            pad_token_id: None,
        }
    }
}

fn default_model_file() -> String {
    "model.onnx".into()
}
fn default_tokenizer_file() -> String {
    "tokenizer.json".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpApi {
    /// `POST {url}` with `{"model", "input": [...]}` -> `{"data": [{"embedding", "index"}]}`
    /// (OpenAI, trtllm-serve, vLLM, Ollama).
    Openai,
    /// `POST {url}` with `{"inputs": [...]}` -> `[[...], ...]` (text-embeddings-inference).
    Tei,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// The full endpoint, e.g. `http://127.0.0.1:8000/v1/embeddings` or `http://host:8080/embed`.
    pub url: String,
    pub api: HttpApi,
    /// The model name the server expects (OpenAI API `model` field).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_http_batch")]
    pub batch_size: usize,
    /// Environment variable of the server process holding the API key, when the
    /// superuser-only setting `akidb.http_api_key_file` names no file.
    #[serde(default)]
    pub api_key_env: Option<String>,
}

fn default_timeout_ms() -> u64 {
    30_000
}
fn default_http_batch() -> usize {
    64
}
fn default_true() -> bool {
    true
}
fn default_max_tokens() -> usize {
    512
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub license: Option<String>,
    #[serde(default)]
    pub provider: ProviderKind,
    pub dimensions: usize,
    #[serde(default)]
    pub pooling: Pooling,
    #[serde(default = "default_true")]
    pub normalize: bool,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default)]
    pub padding_side: PaddingSide,
    #[serde(default)]
    pub query_prefix: String,
    #[serde(default)]
    pub document_prefix: String,
    /// Output sizes the model was trained to be truncated to (Matryoshka); empty: none.
    #[serde(default)]
    pub matryoshka_dims: Vec<usize>,
    /// Most texts per inference batch in `embed(text[])`.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Most tokens (texts x padded length) per inference batch.
    #[serde(default)]
    pub batch_tokens: Option<usize>,
    #[serde(default)]
    pub onnx: OnnxSection,
    #[serde(default)]
    pub http: Option<HttpSection>,
}

impl Manifest {
    /// Parses and checks a manifest; `model` and `file` only name things in errors.
    pub fn parse(model: &str, file: &str, text: &str) -> Result<Manifest> {
        let invalid = |detail: String| EmbedError::InvalidModel {
            model: model.into(),
            file: file.into(),
            detail,
        };
        let m: Manifest = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if m.dimensions == 0 || m.dimensions > crate::MAX_DIMENSIONS {
            return Err(invalid(format!(
                "\"dimensions\" must be between 1 and {}, not {}",
                crate::MAX_DIMENSIONS,
                m.dimensions
            )));
        }
        if m.max_tokens < 2 {
            return Err(invalid(format!("\"max_tokens\" must be at least 2, not {}", m.max_tokens)));
        }
        if let Some(bad) = m.matryoshka_dims.iter().find(|&&d| d == 0 || d > m.dimensions) {
            return Err(invalid(format!(
                "\"matryoshka_dims\" entry {bad} is not between 1 and dimensions ({})",
                m.dimensions
            )));
        }
        if m.batch_size == Some(0) || m.batch_tokens == Some(0) {
            return Err(invalid("\"batch_size\" and \"batch_tokens\" must be positive".into()));
        }
        match (m.provider, &m.http) {
            (ProviderKind::Http, None) => {
                return Err(invalid("provider \"http\" needs an \"http\" section with \"url\" and \"api\"".into()))
            }
            (ProviderKind::Http, Some(h)) => {
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    return Err(invalid(format!("\"http.url\" must start with http:// or https://, not \"{}\"", h.url)));
                }
                if h.batch_size == 0 || h.timeout_ms == 0 {
                    return Err(invalid("\"http.batch_size\" and \"http.timeout_ms\" must be positive".into()));
                }
            }
            (_, Some(_)) => {
                return Err(invalid(format!(
                    "an \"http\" section only belongs to provider \"http\", not \"{}\"",
                    m.provider.as_str()
                )))
            }
            _ => {}
        }
        Ok(m)
    }

    /// The prefix for a query (`embed_query`) or a document (`embed`).
    pub fn prefix(&self, purpose: Purpose) -> &str {
        match purpose {
            Purpose::Query => &self.query_prefix,
            Purpose::Document => &self.document_prefix,
        }
    }

    /// Checks a `dims` request; returns the output size to produce.
    pub fn output_dims(&self, model: &str, dims: Option<usize>) -> Result<usize> {
        match dims {
            None => Ok(self.dimensions),
            Some(d) if d == self.dimensions => Ok(d),
            Some(d) if self.matryoshka_dims.contains(&d) => Ok(d),
            Some(d) if self.matryoshka_dims.is_empty() => Err(EmbedError::InvalidArgument(format!(
                "embedding model \"{model}\" is not a Matryoshka model: dims must be omitted or {}, not {d}",
                self.dimensions
            ))),
            Some(d) => Err(EmbedError::InvalidArgument(format!(
                "embedding model \"{model}\" does not allow dims {d}; it allows {}",
                self.allowed_dims()
            ))),
        }
    }

    fn allowed_dims(&self) -> String {
        let mut all: Vec<usize> = self.matryoshka_dims.clone();
        all.push(self.dimensions);
        all.sort_unstable();
        all.dedup();
        all.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// What a text is embedded for; picks the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Query,
    Document,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_pooling_names() {
        let m = Manifest::parse("m", "akidb.json", r#"{"dimensions": 8, "pooling": "sentence_embedding"}"#).unwrap();
        assert_eq!(m.provider, ProviderKind::Onnx);
        assert_eq!(m.pooling, Pooling::Output("sentence_embedding".into()));
        assert!(m.normalize);
        assert_eq!(m.padding_side, PaddingSide::Right);
        assert_eq!(m.onnx.model_file, "model.onnx");
        let m = Manifest::parse("m", "f", r#"{"dimensions": 8, "pooling": "last_token", "padding_side": "left"}"#).unwrap();
        assert_eq!((m.pooling, m.padding_side), (Pooling::LastToken, PaddingSide::Left));
    }

    #[test]
    fn rejects_what_would_embed_wrongly() {
        for (text, needle) in [
            (r#"{"dimensions": 8, "pooling": "mean", "normalise": true}"#, "unknown field `normalise`"),
            (r#"{"dimensions": 0}"#, "\"dimensions\" must be between"),
            (r#"{"dimensions": 8, "matryoshka_dims": [16]}"#, "entry 16"),
            (r#"{"dimensions": 8, "provider": "http"}"#, "needs an \"http\" section"),
            (r#"{"dimensions": 8, "provider": "http", "http": {"url": "ftp://x", "api": "tei"}}"#, "must start with http"),
            (r#"{"dimensions": 8, "http": {"url": "http://x", "api": "tei"}}"#, "only belongs to provider"),
            (r#"{"dimensions": 8, "provider": "grpc"}"#, "unknown variant `grpc`"),
            ("not json", "expected"),
        ] {
            let e = Manifest::parse("m", "/models/m/akidb.json", text).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, EmbedError::InvalidModel { .. }), "{text}");
            assert!(msg.contains(needle) && msg.contains("/models/m/akidb.json"), "{text}: {msg}");
        }
    }

    #[test]
    fn matryoshka_dims() {
        let m = Manifest::parse("q", "f", r#"{"dimensions": 64, "matryoshka_dims": [16, 32]}"#).unwrap();
        assert_eq!(m.output_dims("q", None).unwrap(), 64);
        assert_eq!(m.output_dims("q", Some(32)).unwrap(), 32);
        assert_eq!(m.output_dims("q", Some(64)).unwrap(), 64);
        let e = m.output_dims("q", Some(20)).unwrap_err().to_string();
        assert!(e.contains("allows 16, 32, 64"), "{e}");
        let plain = Manifest::parse("p", "f", r#"{"dimensions": 64}"#).unwrap();
        assert!(plain.output_dims("p", Some(32)).unwrap_err().to_string().contains("not a Matryoshka model"));
    }
}
