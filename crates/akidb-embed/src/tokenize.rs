//! Text to token ids (HuggingFace `tokenizers`), and ids to padded batches.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{EmbedError, Result};
use crate::manifest::PaddingSide;
use crate::threads::{with_signals_blocked, Interrupt};

/// Most texts tokenised between two looks at a pending cancel (and handed to a thread at
/// once); fewer when that leaves threads idle.
const BLOCK: usize = 64;

/// A model's tokenizer with akidb's settings: truncation at the model's `max_tokens`
/// (whatever tokenizer.json says), no padding (batches are padded here, per batch).
pub struct TextEncoder {
    tokenizer: Tokenizer,
    pub pad_id: u32,
    /// Largest id the tokenizer can produce.
    pub max_id: u32,
}

impl TextEncoder {
    pub fn load(model: &str, file: &Path, max_tokens: usize, pad_override: Option<u32>) -> Result<TextEncoder> {
        let name = file.display().to_string();
        if let Err(e) = std::fs::metadata(file) {
            return Err(EmbedError::MissingFile { model: model.into(), file: name, detail: e.to_string() });
        }
        let invalid = |detail: String| EmbedError::InvalidModel { model: model.into(), file: name.clone(), detail };
        // Parallel tokenisation would start rayon's global pool, whose threads would take
        // PostgreSQL's signals: turn it off, and should anything still reach for the global
        // pool, it is built here, once, one thread, with signals blocked.
        tokenizers::utils::parallelism::set_parallelism(false);
        crate::threads::with_signals_blocked(|| {
            let _ = rayon::ThreadPoolBuilder::new().num_threads(1).thread_name(|_| "akidb-rayon".into()).build_global();
        });
        let mut tokenizer = Tokenizer::from_file(file).map_err(|e| invalid(e.to_string()))?;
        let pad_id = pad_override
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_id))
            .or_else(|| ["[PAD]", "<pad>", "<|endoftext|>"].iter().find_map(|t| tokenizer.token_to_id(t)))
            .unwrap_or(0);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| invalid(e.to_string()))?;
        let max_id = tokenizer.get_vocab(true).into_values().max().unwrap_or(0).max(pad_id);
        Ok(TextEncoder { tokenizer, pad_id, max_id })
    }

    /// The ids of `text` with the model's special tokens, at most `max_tokens` of them.
    pub fn encode(&self, model: &str, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode_fast(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EmbedError::Inference { model: model.into(), detail: format!("tokenizer: {e}") })
    }
}

impl TextEncoder {
    /// The ids of each text (after `prefix`). A list longer than one block is spread over
    /// up to `threads` threads (this one and helpers started with signals blocked): a GPU
    /// embeds faster than one CPU thread tokenises. Each thread looks at `interrupt`
    /// between blocks.
    pub fn encode_all(&self, model: &str, texts: &[&str], prefix: &str, threads: usize, interrupt: &dyn Interrupt) -> Result<Vec<Vec<u32>>> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
        // About four blocks per thread, at most 64 texts each.
        let block = texts.len().div_ceil(threads.max(1) * 4).clamp(1, BLOCK);
        let blocks = texts.len().div_ceil(block);
        // Long texts take milliseconds each (more in a debug build): the interrupt is
        // looked at every few texts, not only between blocks.
        let encode_block = |b: usize| -> Result<Vec<Vec<u32>>> {
            texts[b * block..((b + 1) * block).min(texts.len())]
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    if i % 8 == 7 && interrupt.pending() {
                        return Err(EmbedError::Cancelled);
                    }
                    if prefix.is_empty() { self.encode(model, t) } else { self.encode(model, &format!("{prefix}{t}")) }
                })
                .collect()
        };
        let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
        let work = || -> Result<Vec<(usize, Vec<Vec<u32>>)>> {
            let mut done = Vec::new();
            while !stop.load(Relaxed) {
                let b = next.fetch_add(1, Relaxed);
                if b >= blocks {
                    break;
                }
                // Thousands of long texts take a while: stay cancellable.
                let r = if b > 0 && interrupt.pending() { Err(EmbedError::Cancelled) } else { encode_block(b) };
                match r {
                    Ok(ids) => done.push((b, ids)),
                    Err(e) => {
                        stop.store(true, Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(done)
        };
        // A thread costs tens of microseconds to start: not for a handful of texts.
        let helpers = if texts.len() < 16 { 0 } else { threads.min(blocks).saturating_sub(1) };
        let parts: Vec<Result<Vec<(usize, Vec<Vec<u32>>)>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..helpers)
                .filter_map(|i| {
                    with_signals_blocked(|| std::thread::Builder::new().name(format!("akidb-tok-{i}")).spawn_scoped(scope, work)).ok()
                })
                .collect();
            let mut parts = vec![work()];
            for h in handles {
                parts.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            parts
        });
        let mut by_block: Vec<Option<Vec<Vec<u32>>>> = (0..blocks).map(|_| None).collect();
        for part in parts {
            for (b, ids) in part? {
                by_block[b] = Some(ids);
            }
        }
        Ok(by_block.into_iter().flat_map(|b| b.expect("every block was tokenised")).collect())
    }
}

/// Token ids of several texts, padded to the longest: `[rows, seq]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub rows: usize,
    pub seq: usize,
}

impl Batch {
    pub fn pad(seqs: &[&[u32]], side: PaddingSide, pad_id: u32) -> Batch {
        let rows = seqs.len();
        let seq = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id as i64; rows * seq];
        let mut mask = vec![0i64; rows * seq];
        for (r, s) in seqs.iter().enumerate() {
            let start = r * seq + if side == PaddingSide::Left { seq - s.len() } else { 0 };
            for (i, &id) in s.iter().enumerate() {
                ids[start + i] = id as i64;
                mask[start + i] = 1;
            }
        }
        Batch { ids, mask, rows, seq }
    }
}

/// Splits texts (given by token count) into batches: sorted by length so each batch pads
/// little, at most `max_rows` texts and `max_cells` padded tokens per batch. Returns the
/// original indices of each batch.
pub fn plan_batches(lengths: &[usize], max_rows: usize, max_cells: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Longest first, so the batch's padded width is its first text's length.
        let width = current.first().map_or(lengths[i], |&f| lengths[f]).max(1);
        if !current.is_empty() && (current.len() >= max_rows || (current.len() + 1) * width > max_cells) {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_sides() {
        let b = Batch::pad(&[&[5, 6, 7], &[8]], PaddingSide::Right, 0);
        assert_eq!((b.rows, b.seq), (2, 3));
        assert_eq!(b.ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(b.mask, vec![1, 1, 1, 1, 0, 0]);
        let b = Batch::pad(&[&[5, 6, 7], &[8]], PaddingSide::Left, 9);
        assert_eq!(b.ids, vec![5, 6, 7, 9, 9, 8]);
        assert_eq!(b.mask, vec![1, 1, 1, 0, 0, 1]);
    }

    #[test]
    fn batches_cover_every_text_once_and_respect_limits() {
        let lengths = [3, 50, 7, 50, 2, 9, 9, 1, 30];
        for (rows, cells) in [(1, 1000), (2, 1000), (4, 100), (32, 60), (32, 1)] {
            let plan = plan_batches(&lengths, rows, cells);
            let mut seen: Vec<usize> = plan.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            for b in &plan {
                let width = b.iter().map(|&i| lengths[i]).max().unwrap();
                assert!(b.len() <= rows);
                assert!(b.len() == 1 || b.len() * width <= cells, "{b:?} {rows} {cells}");
                // Sorted: no batch mixes lengths that another batch sits between.
                assert!(b.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]));
            }
        }
        assert!(plan_batches(&[], 4, 100).is_empty());
    }
}
