//! Qwen3-Embedding's recipe (Qwen3 tokenizer with <|endoftext|> appended, left padding,
//! last-token pooling, query instruction, Matryoshka) on a tiny random Qwen3, against
//! the PyTorch reference made by models/tools/make_qwen3_tiny.py.

mod common;

use akidb_embed::{EmbedError, NoInterrupt, Purpose};
use common::*;

fn fixture() -> (std::path::PathBuf, serde_json::Value) {
    let dir = repo().join("tests/embed/fixtures");
    assert!(
        dir.join("qwen3-tiny/tokenizer.json").exists(),
        "tests/embed/fixtures/qwen3-tiny/tokenizer.json missing: run `make test` (it unpacks tokenizer.json.gz)"
    );
    let r = serde_json::from_str(&std::fs::read_to_string(dir.join("qwen3-tiny/reference.json")).unwrap()).unwrap();
    (dir, r)
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn matches_pytorch_alone_and_in_a_left_padded_batch() {
    let (dir, r) = fixture();
    let mut model = load(&dir, "qwen3-tiny").unwrap();
    let texts: Vec<&str> = r["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let kinds: Vec<&str> = r["kinds"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let refs: Vec<Vec<f32>> = r["embeddings"].as_array().unwrap().iter().map(floats).collect();
    let purpose = |k: &str| if k == "query" { Purpose::Query } else { Purpose::Document };
    let docs: Vec<usize> = (0..texts.len()).filter(|&i| kinds[i] == "document").collect();
    let doc_texts: Vec<&str> = docs.iter().map(|&i| texts[i]).collect();
    let batch = model.embed(&doc_texts, Purpose::Document, None, &NoInterrupt).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let v = model.embed(&[t], purpose(kinds[i]), None, &NoInterrupt).unwrap().pop().unwrap();
        let d = max_abs_diff(&v, &refs[i]);
        assert!(d < 1e-5, "text {i} ({}): differs from PyTorch by {d}", kinds[i]);
        if let Some(pos) = docs.iter().position(|&j| j == i) {
            assert!(max_abs_diff(&batch[pos], &refs[i]) < 1e-5, "text {i} in a batch");
        }
    }
    // The instruction matters: a query is not its bare text.
    let bare = model.embed(&[texts[0]], Purpose::Document, None, &NoInterrupt).unwrap().pop().unwrap();
    assert!(max_abs_diff(&bare, &refs[0]) > 1e-2);
}

#[test]
fn matryoshka_truncates_and_renormalises() {
    let (dir, r) = fixture();
    let mut model = load(&dir, "qwen3-tiny").unwrap();
    let full = floats(&r["embeddings"][2]);
    let text = r["texts"][2].as_str().unwrap();
    let v = model.embed(&[text], Purpose::Document, Some(4), &NoInterrupt).unwrap().pop().unwrap();
    let norm: f32 = full[..4].iter().map(|x| x * x).sum::<f32>().sqrt();
    let want: Vec<f32> = full[..4].iter().map(|x| x / norm).collect();
    assert!(max_abs_diff(&v, &want) < 1e-5);
    let e = model.embed(&[text], Purpose::Document, Some(5), &NoInterrupt).unwrap_err();
    assert!(matches!(e, EmbedError::InvalidArgument(ref m) if m.contains("4, 6, 8")), "{e}");
}
