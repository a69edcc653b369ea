#!/usr/bin/env python3
"""The time of one short query's embed_query() in the server, by model and
akidb.onnx_threads: each configuration in its own fresh session (its own model load and
thread pool), measured in turns, a block of queries per configuration per round, so
that drift of the machine spreads over all of them. Times are taken in the server
(clock_timestamp around embed_query in PL/pgSQL), and a client's round trip of the
same call beside it. The queries are the retrieval bench's, made distinct (no cache
hits). Writes JSON and a PNG; asserts nothing."""
import argparse
import gzip
import json
import os
import platform
import sys
import time

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "embed"))
from bench_embed import percentiles  # noqa: E402

SPLIT = """CREATE OR REPLACE FUNCTION pg_temp.embed_ms(q text, m text) RETURNS float8 LANGUAGE plpgsql AS $$
    DECLARE t0 timestamptz := clock_timestamp(); v vector;
    BEGIN v := embed_query(q, m); RETURN extract(epoch FROM clock_timestamp() - t0) * 1000; END $$"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", required=True, help="jsonl(.gz) with a 'query' field per line")
    ap.add_argument("--models", default="", help="comma-separated model names ('' = the default model)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    opener = gzip.open if a.queries.endswith(".gz") else open
    with opener(a.queries, "rt") as f:
        texts = [json.loads(line)["query"] for line in f]
    configs = [(m, int(t)) for m in a.models.split(",") for t in a.threads.split(",")]
    sessions = {}
    for m, t in configs:
        c = psycopg.connect(autocommit=True)
        c.execute(f"SET akidb.onnx_threads = {t}")
        c.execute(SPLIT)
        for i in range(20):  # the model's load and first runs, outside the timing
            c.execute("SELECT embed_query(%s, %s)", (f"{texts[i % len(texts)]} warm {i}", m), prepare=True)
        sessions[(m, t)] = c
    server = {k: [] for k in configs}
    client = {k: [] for k in configs}
    n = 0
    for r in range(a.rounds):
        for k in (configs if r % 2 == 0 else configs[::-1]):
            c = sessions[k]
            for _ in range(a.block):
                q = f"{texts[n % len(texts)]} ({n})"
                n += 1
                server[k].append(c.execute("SELECT pg_temp.embed_ms(%s, %s)", (q, k[0]), prepare=True).fetchone()[0])
                q = f"{texts[n % len(texts)]} ({n})"
                n += 1
                t0 = time.perf_counter()
                c.execute("SELECT embed_query(%s, %s)", (q, k[0]), prepare=True).fetchone()
                client[k].append((time.perf_counter() - t0) * 1e3)
    name = lambda k: f"{k[0] or 'default'} threads={k[1]}"  # noqa: E731
    r = {"bench": "embed_latency", "machine": os.environ.get("AKIDB_MACHINE", platform.node()), "cores": os.cpu_count(),
         "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t"),
         "queries_per_config": len(server[configs[0]]),
         "configs": {name(k): {"model": k[0] or "default", "threads": k[1], "in_server_ms": percentiles(server[k]),
                              "client_round_trip_ms": percentiles(client[k])} for k in configs},
         "samples": {name(k): server[k] for k in configs}}
    with open(a.out + ".json", "w") as f:
        json.dump(r, f, indent=1)
    for k in configs:
        s, cl = r["configs"][name(k)]["in_server_ms"], r["configs"][name(k)]["client_round_trip_ms"]
        print(f"{name(k):36s} in server p50 {s['p50']:.2f} p95 {s['p95']:.2f} p99 {s['p99']:.2f}   client p50 {cl['p50']:.2f} p95 {cl['p95']:.2f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.boxplot([server[k] for k in configs], tick_labels=[name(k).replace(" ", "\n") for k in configs], showfliers=False,
               whis=(5, 95))
    ax.set_ylabel("embed_query() in the server, ms (whiskers p5-p95)")
    ax.set_title(f"one short query's embedding, {r['queries_per_config']} queries per configuration, {r['machine']}")
    fig.tight_layout()
    fig.savefig(a.out + ".png", dpi=110)


if __name__ == "__main__":
    main()
