//! all-MiniLM-L6-v2 through akidb-embed against the sentence-transformers reference, and
//! the ways a model directory can be broken. Needs `make test`'s setup (ONNX Runtime and
//! the model files); no PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use akidb_embed::{EmbedError, Interrupt, NoInterrupt, Purpose};
use common::*;

fn reference() -> (Vec<String>, Vec<Vec<f32>>) {
    let path = repo().join("tests/embed/fixtures/minilm_reference.json");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let texts = r["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let vecs = r["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    (texts, vecs)
}

#[test]
fn matches_sentence_transformers_one_at_a_time_and_in_batches() {
    let mut model = load(&models_dir(), "all-MiniLM-L6-v2").unwrap();
    assert_eq!(model.execution_provider, "cpu");
    let (texts, reference) = reference();
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let batch = model.embed(&refs, Purpose::Document, None, &NoInterrupt).unwrap();
    let mut worst = 1.0f64;
    for (i, t) in refs.iter().enumerate() {
        let single = model.embed(&[t], Purpose::Document, None, &NoInterrupt).unwrap().pop().unwrap();
        assert_eq!(single.len(), 384);
        let c = cosine(&single, &reference[i]);
        worst = worst.min(c);
        assert!(c >= 0.999, "text {i} ({t:?}): cosine {c} against sentence-transformers");
        // A text's vector does not depend on its batch companions.
        let d = max_abs_diff(&single, &batch[i]);
        assert!(d < 1e-5, "text {i}: batch and single differ by {d}");
        // Symmetric model: the query form is the same.
        let q = model.embed(&[t], Purpose::Query, None, &NoInterrupt).unwrap().pop().unwrap();
        assert_eq!(q, single);
    }
    eprintln!("worst cosine against sentence-transformers: {worst:.7}");
}

#[test]
fn long_texts_are_truncated_not_rejected() {
    let mut model = load(&models_dir(), "all-MiniLM-L6-v2").unwrap();
    let long = "word ".repeat(5000);
    let longer = format!("{long} and then something else entirely at the end");
    let v = model.embed(&[&long, &longer], Purpose::Document, None, &NoInterrupt).unwrap();
    // Both are cut at 256 tokens, before where they differ.
    assert!(max_abs_diff(&v[0], &v[1]) < 1e-6);
}

#[test]
fn dims_on_a_model_that_is_not_matryoshka_is_an_argument_error() {
    let mut model = load(&models_dir(), "all-MiniLM-L6-v2").unwrap();
    let e = model.embed(&["x"], Purpose::Document, Some(128), &NoInterrupt).unwrap_err();
    assert!(matches!(e, EmbedError::InvalidArgument(_)), "{e}");
    assert_eq!(model.embed(&["x"], Purpose::Document, Some(384), &NoInterrupt).unwrap()[0].len(), 384);
}

struct After(Instant, Duration);
impl Interrupt for After {
    fn pending(&self) -> bool {
        self.0.elapsed() >= self.1
    }
}

#[test]
fn a_long_call_stops_soon_after_cancel() {
    let mut model = load(&models_dir(), "all-MiniLM-L6-v2").unwrap();
    let text = "a fairly long sentence about changing tyres on a rainy day ".repeat(20);
    let texts: Vec<&str> = (0..2000).map(|_| text.as_str()).collect();
    let t0 = Instant::now();
    let r = model.embed(&texts, Purpose::Document, None, &After(t0, Duration::from_millis(200)));
    assert_eq!(r.unwrap_err(), EmbedError::Cancelled);
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(200 + 300), "cancel took {took:?}");
    // The session still works after a terminated run.
    assert_eq!(model.embed(&["ok"], Purpose::Document, None, &NoInterrupt).unwrap()[0].len(), 384);
}

/// Makes a broken copy of the default model in a temp dir: `edit` gets the directory.
fn broken(name: &str, edit: impl FnOnce(&std::path::Path)) -> tempdir::Dir {
    let root = tempdir::Dir::new(name);
    let dir = root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let src = models_dir().join("all-MiniLM-L6-v2");
    for f in ["akidb.json", "model.onnx", "tokenizer.json"] {
        std::os::unix::fs::symlink(src.join(f), dir.join(f)).unwrap();
    }
    edit(&dir);
    root
}

fn replace(dir: &std::path::Path, file: &str, content: &[u8]) {
    std::fs::remove_file(dir.join(file)).unwrap();
    std::fs::write(dir.join(file), content).unwrap();
}

#[test]
fn each_broken_model_is_an_error_naming_model_and_file() {
    let manifest = std::fs::read_to_string(models_dir().join("all-MiniLM-L6-v2/akidb.json")).unwrap();
    let tokenizer = std::fs::read_to_string(models_dir().join("all-MiniLM-L6-v2/tokenizer.json")).unwrap();
    let cases: Vec<(&str, Box<dyn FnOnce(&std::path::Path)>, &str, &str)> = vec![
        ("no_onnx", Box::new(|d| std::fs::remove_file(d.join("model.onnx")).unwrap()), "model.onnx", "missing"),
        ("corrupt_onnx", Box::new(|d| replace(d, "model.onnx", b"this is not a protobuf")), "model.onnx", "invalid"),
        ("no_tokenizer", Box::new(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap()), "tokenizer.json", "missing"),
        ("bad_tokenizer", Box::new(|d| replace(d, "tokenizer.json", b"{\"version\": ")), "tokenizer.json", "invalid"),
        (
            "wrong_dims",
            Box::new(move |d| replace(d, "akidb.json", manifest.replace("\"dimensions\": 384", "\"dimensions\": 768").as_bytes())),
            "model.onnx",
            "invalid",
        ),
        (
            "big_vocab",
            Box::new(move |d| {
                // A tokenizer that can produce id 40000, beyond the model's 30,522-row table.
                let mut t: serde_json::Value = serde_json::from_str(&tokenizer).unwrap();
                t["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({
                    "id": 40000, "content": "[AKIDB_BEYOND]", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true
                }));
                replace(d, "tokenizer.json", t.to_string().as_bytes())
            }),
            "tokenizer.json",
            "invalid",
        ),
    ];
    let mut good = load(&models_dir(), "all-MiniLM-L6-v2").unwrap();
    for (name, edit, file, kind) in cases {
        let root = broken(name, edit);
        let e = load(root.path(), name).err().unwrap_or_else(|| panic!("{name}: loaded a broken model"));
        let msg = e.to_string();
        let kind_ok = match kind {
            "missing" => matches!(e, EmbedError::MissingFile { .. }),
            _ => matches!(e, EmbedError::InvalidModel { .. }),
        };
        assert!(kind_ok, "{name}: wrong kind of error: {e:?}");
        assert!(msg.contains(&format!("\"{name}\"")) && msg.contains(file), "{name}: {msg}");
        // Other models keep working.
        assert_eq!(good.embed(&["still fine"], Purpose::Document, None, &NoInterrupt).unwrap()[0].len(), 384);
    }
}

/// A temporary directory removed on drop (no extra crate).
mod tempdir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("akidb-embed-test-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn tokenising_on_several_threads_gives_each_text_its_own_ids_in_order() {
    use akidb_embed::tokenize::TextEncoder;
    let file = models_dir().join("all-MiniLM-L6-v2/tokenizer.json");
    let enc = TextEncoder::load("m", &file, 256, None).unwrap();
    let texts: Vec<String> = (0..1000).map(|i| format!("text number {i} {}", "word ".repeat(i % 50))).collect();
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let alone: Vec<Vec<u32>> = refs.iter().map(|t| enc.encode("m", &format!("q: {t}")).unwrap()).collect();
    for threads in [1, 2, 4, 7] {
        assert_eq!(enc.encode_all("m", &refs, "q: ", threads, &NoInterrupt).unwrap(), alone, "{threads} threads");
    }
    assert!(enc.encode_all("m", &[], "", 4, &NoInterrupt).unwrap().is_empty());
    struct Now;
    impl Interrupt for Now {
        fn pending(&self) -> bool {
            true
        }
    }
    assert_eq!(enc.encode_all("m", &refs, "", 4, &Now).unwrap_err(), EmbedError::Cancelled);
}
