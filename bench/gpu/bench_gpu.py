#!/usr/bin/env python3
"""embed() on the CUDA provider inside PostgreSQL against raw Python onnxruntime-gpu,
side by side in one run on the GPU machine (tests/gpu/run.sh starts it).

Baseline: Python onnxruntime-gpu, the same model.onnx and tokenizer.json, the same
provider options (CUDAExecutionProvider on device 0, defaults otherwise), the same graph
optimisation level and intra-op threads; mean pooling + L2 norm in numpy, tokenising with
tokenizers' encode_batch (what an application does). `raw_run_only` leaves tokenising
and pooling out (ids prepared beforehand): the GPU's own time, for reference.
akidb: the model in a PostgreSQL 16 backend, akidb.execution_providers = 'cuda'.

Measures, per point, akidb and raw:
* batch 1 latency (median over the rounds of each round's p50) at 16, 128 and 512 tokens (every text a distinct one of exactly that
  many tokens, [CLS]/[SEP] included): in the server, clock_timestamp() around each
  embed(text) in PL/pgSQL; and from a client, one prepared SELECT embed($1) round trip;
* throughput at batch 32 and 256 (texts of 128 tokens): embed(text[]) per call, in the server.
* GPU memory per backend (nvidia-smi's per-process figure) with 1, 4 and 16 backends that
  have loaded the model, after one short text and after a batch of 256.
Writes JSON and a PNG; asserts nothing.
"""
import argparse
import json
import os
import subprocess
import time

import numpy as np
import onnxruntime as ort
import psycopg
from tokenizers import Tokenizer

MODEL = "all-MiniLM-L6-v2-512"  # the default model's files, max_tokens 512
ROUNDS = 3


def pct(ms):
    a = np.array(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": len(ms)}


def texts_of(tok, tokens, n, seed):
    """n distinct texts of exactly `tokens` tokens (special tokens included)."""
    rng = np.random.default_rng(seed)
    vocab = [w for w in ("time person year way day thing man world life hand part child eye woman place work week "
                         "case point government company number group problem fact water room mother area money story "
                         "month lot right study book job word business issue side kind head house service friend father "
                         "power hour game line end member law car city community name president team minute idea kid body "
                         "information back parent face others level office door health art war history party result change "
                         "morning reason research girl guy moment air teacher force education").split()
             if len(tok.encode(w, add_special_tokens=False).ids) == 1]
    out = []
    while len(out) < n:
        words = list(rng.choice(vocab, size=tokens - 2))
        t = " ".join(words)
        assert len(tok.encode(t).ids) == tokens, t
        out.append(t)
    return out


class Raw:
    def __init__(self, model_dir, threads):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), opts,
                                         providers=[("CUDAExecutionProvider", {"device_id": 0})])
        assert self.sess.get_providers()[0] == "CUDAExecutionProvider", self.sess.get_providers()
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(512)

    def ids(self, texts):
        seqs = [e.ids for e in self.tok.encode_batch(texts)] if len(texts) > 1 else [self.tok.encode(texts[0]).ids]
        width = max(len(s) for s in seqs)
        ids = np.zeros((len(seqs), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = s
            mask[i, :len(s)] = 1
        return ids, mask

    def run(self, ids, mask):
        return self.sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask,
                                                      "token_type_ids": np.zeros_like(ids)})[0]

    def embed(self, texts):
        ids, mask = self.ids(texts)
        h = self.run(ids, mask)
        m = mask[:, :, None].astype(np.float32)
        v = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def gpu_memory_by_pid():
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return {int(p): int(m) for p, m in (l.split(",") for l in out.strip().splitlines() if l.strip())}


def gpu_used_mib():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[0])


def memory_per_backend(counts, batch):
    r = {}
    for n in counts:
        base = gpu_used_mib()
        conns = [psycopg.connect(autocommit=True) for _ in range(n)]
        pids = []
        for c in conns:
            c.execute("SET akidb.execution_providers = 'cuda'")
            c.execute("SELECT embed('one short text')")
            pids.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
        time.sleep(0.5)
        after_one = gpu_memory_by_pid(), gpu_used_mib()
        for c in conns:
            c.execute("SELECT embed(%s::text[])", (batch,))
        time.sleep(0.5)
        after_batch = gpu_memory_by_pid(), gpu_used_mib()
        per = lambda snap: [snap[0].get(p) for p in pids]
        r[str(n)] = {
            "per_backend_mib_after_one_text": per(after_one),
            "per_backend_mib_after_batch_256": per(after_batch),
            "device_used_mib_delta_after_one_text": after_one[1] - base,
            "device_used_mib_delta_after_batch_256": after_batch[1] - base,
        }
        for c in conns:
            c.close()
        time.sleep(1.0)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--n", type=int, default=300, help="timed calls per latency point")
    ap.add_argument("--calls", type=int, default=40, help="timed calls per throughput point")
    a = ap.parse_args()
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    r = {"bench": "gpu", "machine": os.environ.get("AKIDB_MACHINE", "gpu"), "gpu": smi,
         "cpu_cores": os.cpu_count(), "onnxruntime": ort.__version__, "provider": "cuda",
         "model": "all-MiniLM-L6-v2 (fp32 ONNX)", "threads": a.threads,
         "raw": "Python onnxruntime-gpu, CUDAExecutionProvider(device_id=0), ORT_ENABLE_ALL, tokenizers encode_batch, numpy mean pooling"}
    raw = Raw(a.model_dir, a.threads)
    tok = raw.tok
    lat_lengths, thr_batches, thr_tokens = [16, 128, 512], [32, 256], 128
    sets = {L: texts_of(tok, L, a.n + 20, L) for L in lat_lengths}
    rt_sets = {L: texts_of(tok, L, a.n, L + 1000) for L in lat_lengths}  # others for the round trips
    thr_texts = texts_of(tok, thr_tokens, max(thr_batches) * (a.calls + 2), 7)

    # Raw and akidb are measured in turns, point by point, ROUNDS times, and each point's
    # median p50 kept (the GPU's clocks and the host are noisy; turns share the noise).
    conn = psycopg.connect(autocommit=True)
    conn.execute(f"SET akidb.onnx_threads = {a.threads}")
    conn.execute("SET akidb.execution_providers = 'cuda'")
    r["akidb_execution_provider"] = conn.execute("SELECT akidb_load_model(%s)", (MODEL,)).fetchone()[0]
    conn.execute("""CREATE FUNCTION pg_temp.lat(texts text[], m text) RETURNS SETOF float8 LANGUAGE plpgsql AS $$
        DECLARE t0 timestamptz; v vector; t text;
        BEGIN FOREACH t IN ARRAY texts LOOP
            t0 := clock_timestamp(); v := embed(t, m);
            RETURN NEXT extract(epoch FROM clock_timestamp() - t0) * 1000;
        END LOOP; END $$""")
    # One row per call: each embed(text[]) gets its batch without slicing a large array.
    conn.execute("CREATE TEMP TABLE batches(b int, i int, texts text[])")
    conn.execute("""CREATE FUNCTION pg_temp.thr(bs int, m text) RETURNS float8 LANGUAGE plpgsql AS $$
        DECLARE t0 timestamptz; total float8 := 0; v vector[]; row record;
        BEGIN FOR row IN SELECT i, texts FROM batches WHERE b = bs ORDER BY i LOOP
            t0 := clock_timestamp(); v := embed(row.texts, m);
            IF row.i >= 2 THEN total := total + extract(epoch FROM clock_timestamp() - t0); END IF;
        END LOOP; RETURN total; END $$""")
    for B in thr_batches:
        with conn.cursor().copy("COPY batches FROM STDIN") as cp:
            for i in range(a.calls + 2):
                cp.write_row((B, i, thr_texts[i * B:(i + 1) * B]))
    # Warm-up: a few hundred calls each, so the GPU is at its clocks before the first point.
    for t in sets[128][:200]:
        raw.embed([t])
    conn.execute("SELECT count(*) FROM pg_temp.lat(%s, %s)", ([t + " warm" for t in sets[128][:200]], MODEL))
    got = np.array([[float(x) for x in v.strip("[]").split(",")]
                    for (v,) in conn.execute("SELECT unnest(embed(%s::text[], %s))::text", (sets[128][:8], MODEL))])
    r["min_cosine_akidb_vs_raw"] = float(min((got * raw.embed(sets[128][:8])).sum(1)))

    rounds = {k: {} for k in ("raw_latency_ms", "raw_run_only_latency_ms", "akidb_latency_ms_in_server",
                              "akidb_latency_ms_client_roundtrip", "raw_texts_per_s", "raw_run_only_texts_per_s",
                              "akidb_texts_per_s")}
    put = lambda k, point, v: rounds[k].setdefault(str(point), []).append(v)
    for rnd in range(ROUNDS):
        for L in lat_lengths:
            texts = sets[L][20:]
            put("raw_latency_ms", L, pct([timed(lambda: raw.embed([t])) * 1e3 for t in texts]))
            prepared = [raw.ids([t]) for t in texts]
            put("raw_run_only_latency_ms", L, pct([timed(lambda: raw.run(*p)) * 1e3 for p in prepared]))
            # Each round its own texts: akidb's cache of recent embeddings never answers.
            mine = [f"{t}" if rnd == 0 else " ".join(t.split()[rnd:] + t.split()[:rnd]) for t in texts]
            put("akidb_latency_ms_in_server", L, pct([x for (x,) in conn.execute("SELECT * FROM pg_temp.lat(%s, %s)", (mine, MODEL))]))
            rt = [" ".join(t.split()[rnd:] + t.split()[:rnd]) for t in rt_sets[L]]
            put("akidb_latency_ms_client_roundtrip", L,
                pct([timed(lambda: conn.execute("SELECT embed(%s, %s)::text", (t, MODEL), prepare=True).fetchone()) * 1e3 for t in rt][10:]))
        for B in thr_batches:
            calls = [thr_texts[i * B:(i + 1) * B] for i in range(a.calls + 2)]
            raw.embed(calls[0])
            put("raw_texts_per_s", B, B * a.calls / sum(timed(lambda: raw.embed(c)) for c in calls[2:]))
            prepared = [raw.ids(c) for c in calls[2:]]
            put("raw_run_only_texts_per_s", B, B * a.calls / sum(timed(lambda: raw.run(*p)) for p in prepared))
            put("akidb_texts_per_s", B, B * a.calls / conn.execute("SELECT pg_temp.thr(%s, %s)", (B, MODEL)).fetchone()[0])
    r["rounds"] = ROUNDS
    for k, points in rounds.items():
        r[k] = {p: (float(np.median([x["p50"] for x in v])) if isinstance(v[0], dict) else float(np.median(v))) for p, v in points.items()}
        r[k + "_runs"] = points
    # Where akidb's time goes (its DEBUG1 message), one call per point.
    phases = []
    conn.add_notice_handler(lambda d: phases.append(d.message_primary))
    conn.execute("SET client_min_messages = debug1")
    for L in lat_lengths:
        conn.execute("SELECT embed(%s, %s)", (sets[L][0] + " phase", MODEL))
    for B in thr_batches:
        conn.execute("SELECT embed(texts, %s) FROM batches WHERE b = %s AND i = 3", (MODEL, B))
    conn.execute("RESET client_min_messages")
    r["akidb_phases"] = [p for p in phases if p and "akidb: embedding model" in p]
    conn.close()
    del raw  # frees the raw session's GPU memory before the backends take theirs
    import gc
    gc.collect()
    time.sleep(1.0)
    r["ratio_akidb_over_raw"] = {
        **{f"latency_{L}": r["akidb_latency_ms_in_server"][str(L)] / r["raw_latency_ms"][str(L)] for L in lat_lengths},
        **{f"throughput_{B}": r["akidb_texts_per_s"][str(B)] / r["raw_texts_per_s"][str(B)] for B in thr_batches},
    }
    r["gpu_memory_mib"] = memory_per_backend([1, 4, 16], thr_texts[:256])
    with open(a.out + ".json", "w") as f:
        json.dump(r, f, indent=1)
    print(json.dumps(r, indent=1))
    plot(r, a.out + ".png")


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    Ls = ["16", "128", "512"]
    x = np.arange(len(Ls))
    ax[0].bar(x - 0.2, [r["raw_latency_ms"][L] for L in Ls], 0.4, label="raw onnxruntime-gpu (Python)")
    ax[0].bar(x + 0.2, [r["akidb_latency_ms_in_server"][L] for L in Ls], 0.4, label="akidb embed(text), in server")
    ax[0].set_xticks(x, [f"{L} tokens" for L in Ls]); ax[0].set_ylabel("ms per call, p50"); ax[0].set_title("batch 1 latency")
    ax[0].legend(fontsize=8)
    Bs = ["32", "256"]
    x = np.arange(len(Bs))
    ax[1].bar(x - 0.2, [r["raw_texts_per_s"][B] for B in Bs], 0.4, label="raw (tokenise + run + pool)")
    ax[1].bar(x + 0.2, [r["akidb_texts_per_s"][B] for B in Bs], 0.4, label="akidb embed(text[])")
    ax[1].set_xticks(x, [f"batch {B}" for B in Bs]); ax[1].set_ylabel("texts/s (128 tokens)"); ax[1].set_title("throughput")
    ax[1].legend(fontsize=8)
    mem = r["gpu_memory_mib"]
    ns = list(mem)
    per1 = [np.mean([v for v in mem[n]["per_backend_mib_after_one_text"] if v]) if any(mem[n]["per_backend_mib_after_one_text"]) else mem[n]["device_used_mib_delta_after_one_text"] / int(n) for n in ns]
    perb = [np.mean([v for v in mem[n]["per_backend_mib_after_batch_256"] if v]) if any(mem[n]["per_backend_mib_after_batch_256"]) else mem[n]["device_used_mib_delta_after_batch_256"] / int(n) for n in ns]
    x = np.arange(len(ns))
    ax[2].bar(x - 0.2, per1, 0.4, label="after one text")
    ax[2].bar(x + 0.2, perb, 0.4, label="after a batch of 256")
    ax[2].set_xticks(x, [f"{n} backends" for n in ns]); ax[2].set_ylabel("GPU MiB per backend"); ax[2].set_title("GPU memory")
    ax[2].legend(fontsize=8)
    fig.suptitle(f'all-MiniLM-L6-v2 fp32 on {r["gpu"]} ({r["machine"]}), onnxruntime {r["onnxruntime"]}, CUDA provider', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
