#!/usr/bin/env python3
"""embed() against raw ONNX Runtime, side by side in one run (bench/embed.sh starts it).

Baseline: Python onnxruntime on the same model file, same tokenizer.json, same thread
count, mean pooling + L2 norm done in numpy, as an application would do it.
akidb: the same model inside a PostgreSQL backend (akidb.onnx_threads = THREADS).

Measures
* short query latency, p50/p95/p99: raw (tokenise+run+pool); akidb in the server
  (clock_timestamp() around each embed() call in PL/pgSQL: the extension's own cost)
  and from a client (one prepared SELECT embed($1) round trip per query);
* bulk documents/s on a fixed document set: raw one at a time, raw length-sorted
  batches of 8 and 32; akidb embed(text[]) over the whole set.
Writes JSON and a PNG; asserts nothing.
"""
import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import onnxruntime as ort
import psycopg
from tokenizers import Tokenizer

QUERY = "how do I change a tire"


def percentiles(ms):
    a = np.array(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": len(ms)}


class Raw:
    def __init__(self, model_dir, threads):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), opts,
                                         providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(256)

    def embed_ids(self, seqs):
        width = max(len(s) for s in seqs)
        ids = np.zeros((len(seqs), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = s
            mask[i, :len(s)] = 1
        h = self.sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask,
                                                   "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[:, :, None].astype(np.float32)
        v = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed(self, texts):
        return self.embed_ids([e.ids for e in (self.tok.encode(t) for t in texts)])

    def sorted_batches(self, texts, size):
        seqs = [self.tok.encode(t).ids for t in texts]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out = [None] * len(seqs)
        for k in range(0, len(order), size):
            chunk = order[k:k + size]
            for i, v in zip(chunk, self.embed_ids([seqs[i] for i in chunk])):
                out[i] = v
        return out


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--docs", required=True)
    ap.add_argument("--n-docs", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default=platform.node())
    args = ap.parse_args()

    docs = [json.loads(l)["body"] for l in open(args.docs, encoding="utf-8")][:args.n_docs]
    raw = Raw(args.model_dir, args.threads)
    result = {"model": "all-MiniLM-L6-v2 (fp32 ONNX)", "threads": args.threads, "machine": args.machine,
              "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t"),
              "onnxruntime": ort.__version__, "n_docs": len(docs), "query": QUERY}

    # ---- raw ONNX Runtime
    # Each timed query is the same question with its own number appended, so akidb's
    # cache of recent embeddings never answers it (a repeated text costs microseconds).
    for i in range(20):
        raw.embed([f"{QUERY} warm {i}"])
    lat = []
    for i in range(args.queries):
        lat.append(timed(lambda: raw.embed([f"{QUERY} {i}"])) * 1e3)
    result["raw_query_ms"] = percentiles(lat)
    result["raw_docs_per_s"] = {
        "one_at_a_time": len(docs) / timed(lambda: [raw.embed([d]) for d in docs]),
        "sorted_batches_8": len(docs) / timed(lambda: raw.sorted_batches(docs, 8)),
        "sorted_batches_32": len(docs) / timed(lambda: raw.sorted_batches(docs, 32)),
    }
    ref = np.array(raw.embed(docs[:16]))

    # ---- akidb, in a backend
    with psycopg.connect(autocommit=True) as conn:
        conn.execute(f"SET akidb.onnx_threads = {args.threads}")
        conn.execute("SET akidb.execution_providers = 'cpu'")
        conn.execute("SELECT akidb_unload_model('all-MiniLM-L6-v2')")
        provider = conn.execute("SELECT akidb_load_model('all-MiniLM-L6-v2')").fetchone()[0]
        result["akidb_execution_provider"] = provider
        conn.execute("""CREATE OR REPLACE FUNCTION pg_temp.embed_latencies(q text, n int) RETURNS SETOF float8
            LANGUAGE plpgsql AS $$
            DECLARE t0 timestamptz; v vector;
            BEGIN
              FOR i IN 1..n LOOP
                t0 := clock_timestamp();
                v := embed(q || ' ' || i);
                RETURN NEXT extract(epoch FROM clock_timestamp() - t0) * 1000;
              END LOOP;
            END $$""")
        conn.execute("SELECT count(*) FROM pg_temp.embed_latencies(%s, 20)", (QUERY + " warm",))
        lat = [r[0] for r in conn.execute("SELECT * FROM pg_temp.embed_latencies(%s, %s)", (QUERY, args.queries))]
        result["akidb_query_ms_in_server"] = percentiles(lat)
        lat = []
        for i in range(args.queries):
            lat.append(timed(lambda: conn.execute("SELECT embed(%s)::text", (f"{QUERY} {i} rt",), prepare=True).fetchone()) * 1e3)
        result["akidb_query_ms_client_roundtrip"] = percentiles(lat)
        conn.execute("CREATE TEMP TABLE docs(id int, body text)")
        with conn.cursor().copy("COPY docs FROM STDIN") as cp:
            for i, d in enumerate(docs):
                cp.write_row((i, d))
        runs = []
        for _ in range(2):
            t = conn.execute("""SELECT extract(epoch FROM clock_timestamp() - t0) FROM
                (SELECT clock_timestamp() AS t0) s,
                LATERAL (SELECT embed(array_agg(body ORDER BY id)) AS v FROM docs) e
                WHERE array_length(e.v, 1) > 0""").fetchone()[0]
            runs.append(len(docs) / float(t))
        result["akidb_docs_per_s"] = {"embed_array": max(runs), "runs": runs}
        vecs = [r[0] for r in conn.execute("SELECT v::text FROM unnest((SELECT embed(array_agg(body ORDER BY id)) FROM (SELECT * FROM docs ORDER BY id LIMIT 16) d)) v")]
        got = np.array([[float(x) for x in v.strip("[]").split(",")] for v in vecs])
        result["akidb_vs_raw_min_cosine"] = float(min((got * ref).sum(1)))

    rq, aq = result["raw_query_ms"]["p50"], result["akidb_query_ms_in_server"]["p50"]
    result["overhead_ms_p50_in_server"] = aq - rq
    best_raw = max(result["raw_docs_per_s"].values())
    result["bulk_ratio_akidb_over_best_raw"] = result["akidb_docs_per_s"]["embed_array"] / best_raw
    json.dump(result, open(args.out + ".json", "w"), indent=2)
    print(json.dumps(result, indent=2))
    plot(result, args.out + ".png")


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = ["raw ORT", "akidb (in server)", "akidb (client round trip)"]
    keys = ["raw_query_ms", "akidb_query_ms_in_server", "akidb_query_ms_client_roundtrip"]
    x = np.arange(3)
    for i, p in enumerate(["p50", "p95", "p99"]):
        a.bar(x + (i - 1) * 0.27, [r[k][p] for k in keys], 0.27, label=p)
    a.set_xticks(x, names)
    a.set_ylabel("ms per short query")
    a.set_title(f"embed('{r['query']}') latency")
    a.legend()
    labels = ["raw: one at a time", "raw: sorted x8", "raw: sorted x32", "akidb embed(text[])"]
    vals = [r["raw_docs_per_s"]["one_at_a_time"], r["raw_docs_per_s"]["sorted_batches_8"],
            r["raw_docs_per_s"]["sorted_batches_32"], r["akidb_docs_per_s"]["embed_array"]]
    b.bar(labels, vals, color=["grey"] * 3 + ["tab:blue"])
    b.set_ylabel("documents / s")
    b.set_title(f"bulk, {r['n_docs']} Debian package descriptions")
    b.tick_params(axis="x", labelrotation=15)
    fig.suptitle(f"all-MiniLM-L6-v2 fp32, {r['threads']} threads, {r['cpu']} ({r['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
