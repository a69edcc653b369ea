//! The `http` provider: a remote embedding server, OpenAI `/v1/embeddings` (trtllm-serve,
//! vLLM, Ollama, OpenAI) or TEI `/embed`. The API key goes in a header and nowhere else:
//! no error message, log line or setting display ever contains it.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{EmbedError, Result};
use crate::manifest::{HttpApi, HttpSection};
use crate::threads::{run_detached, Interrupt};

/// Largest response body read (64 MiB: 1,000 vectors of 4,096 floats as JSON fit).
const BODY_LIMIT: u64 = 64 << 20;

pub struct HttpClient {
    agent: ureq::Agent,
    model: String,
    section: HttpSection,
    api_key: Option<String>,
    dims: usize,
}

#[derive(Deserialize)]
struct OpenAiResponse {
    data: Vec<OpenAiItem>,
}

#[derive(Deserialize)]
struct OpenAiItem {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

impl HttpClient {
    pub fn new(model: &str, section: &HttpSection, api_key: Option<String>, dims: usize) -> HttpClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(section.timeout_ms)))
            .http_status_as_error(false)
            .build()
            .into();
        HttpClient { agent, model: model.into(), section: section.clone(), api_key, dims }
    }

    /// Embeds `texts` in requests of at most `batch_size` texts, in order.
    pub fn embed(&self, texts: &[String], interrupt: &dyn Interrupt) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.section.batch_size) {
            out.extend(self.request(chunk, interrupt)?);
        }
        Ok(out)
    }

    fn request(&self, texts: &[String], interrupt: &dyn Interrupt) -> Result<Vec<Vec<f32>>> {
        let body = match self.section.api {
            HttpApi::Openai => serde_json::json!({
                "model": self.section.model.clone().unwrap_or_else(|| self.model.clone()),
                "input": texts,
                "encoding_format": "float",
            }),
            HttpApi::Tei => serde_json::json!({ "inputs": texts, "truncate": true }),
        };
        let (agent, url, key) = (self.agent.clone(), self.section.url.clone(), self.api_key.clone());
        let answer = run_detached(interrupt, move || -> std::result::Result<(u16, String), ureq::Error> {
            let mut req = agent.post(&url).header("Content-Type", "application/json");
            if let Some(k) = key {
                req = req.header("Authorization", format!("Bearer {k}"));
            }
            let mut resp = req.send(serde_json::to_vec(&body).expect("JSON of strings serialises"))?;
            let status = resp.status().as_u16();
            let text = resp.body_mut().with_config().limit(BODY_LIMIT).read_to_string()?;
            Ok((status, text))
        })?;
        let (status, text) = answer.map_err(|e| self.transport_error(e))?;
        if !(200..300).contains(&status) {
            return Err(self.bad(format!("HTTP status {status}: {}", snippet(&text))));
        }
        let vectors = match self.section.api {
            HttpApi::Openai => {
                let r: OpenAiResponse = serde_json::from_str(&text)
                    .map_err(|e| self.bad(format!("not an OpenAI embeddings response ({e}): {}", snippet(&text))))?;
                let mut items = r.data;
                if items.iter().all(|i| i.index.is_some()) {
                    items.sort_by_key(|i| i.index);
                }
                items.into_iter().map(|i| i.embedding).collect::<Vec<_>>()
            }
            HttpApi::Tei => serde_json::from_str::<Vec<Vec<f32>>>(&text)
                .map_err(|e| self.bad(format!("not a TEI /embed response ({e}): {}", snippet(&text))))?,
        };
        if vectors.len() != texts.len() {
            return Err(self.bad(format!("{} embeddings for {} texts", vectors.len(), texts.len())));
        }
        if let Some(v) = vectors.iter().find(|v| v.len() != self.dims) {
            return Err(self.bad(format!(
                "an embedding has {} dimensions, the model's akidb.json says {}",
                v.len(),
                self.dims
            )));
        }
        Ok(vectors)
    }

    fn bad(&self, detail: String) -> EmbedError {
        EmbedError::HttpBadResponse { model: self.model.clone(), url: self.section.url.clone(), detail }
    }

    fn transport_error(&self, e: ureq::Error) -> EmbedError {
        let (model, url) = (self.model.clone(), self.section.url.clone());
        match e {
            ureq::Error::Timeout(_) => EmbedError::HttpTimeout { model, url, timeout_ms: self.section.timeout_ms },
            ureq::Error::Io(ref io) if io.kind() == std::io::ErrorKind::TimedOut => {
                EmbedError::HttpTimeout { model, url, timeout_ms: self.section.timeout_ms }
            }
            ureq::Error::Json(_) | ureq::Error::BodyExceedsLimit(_) | ureq::Error::Protocol(_) => {
                EmbedError::HttpBadResponse { model, url, detail: e.to_string() }
            }
            other => EmbedError::HttpUnreachable { model, url, detail: other.to_string() },
        }
    }
}

/// The start of a response body, for an error message.
fn snippet(text: &str) -> String {
    let t: String = text.chars().take(200).collect();
    if t.len() < text.len() {
        format!("{t}...")
    } else {
        t
    }
}
