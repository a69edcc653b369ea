#!/usr/bin/env python3
"""akidb_hnsw against pgvector 0.8.6 HNSW, side by side on one PostgreSQL 18 server
(bench/hnsw.sh starts it): fashion-mnist-784-euclidean (Debian dataset-fashion-mnist:
60,000 base vectors, queries from the test set), same m / ef_construction, same
max_parallel_maintenance_workers and maintenance_work_mem, vectors stored in the rows
(SET STORAGE PLAIN, as ann-benchmarks' pgvector setup does), one client at a time,
prepared statements. Two clients, each measured for both systems:
- pgbench (C, libpq, -M prepared, one client): the query vector comes from a table of the
  test vectors (`ORDER BY v <-> (SELECT v FROM fq WHERE id = :q)`), a random one each time;
- psycopg from Python, the query vector sent in the binary format (as pgvector-python
  sends numpy arrays); this client also measures recall@10 against brute force.
The Python client spends about 0.13 ms per query of its own on this machine, most of an
akidb query: pgbench shows more of what the server does. QPS for ef_search 10..320,
build time and index size. Writes JSON and a PNG; asserts nothing."""
import argparse
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time

import numpy as np
import psycopg

MNIST = "/usr/share/datasets/fashion-mnist"


def load_idx(path, n):
    with gzip.open(path) as f:
        f.read(16)
        return np.frombuffer(f.read(n * 784), dtype=np.uint8).reshape(n, 784).astype(np.float32)


def binary_dumper(conn):
    """A psycopg dumper sending float4 numpy arrays in the vector type's binary format
    (dims int16, unused int16, big-endian float4s) with the oid of `vector` as the
    connection's search_path resolves it (pgvector's type or akidb's)."""
    from psycopg.adapt import Dumper
    from psycopg.pq import Format
    oid = conn.execute("SELECT 'vector'::regtype::oid").fetchone()[0]

    class VectorBinaryDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj):
            return len(obj).to_bytes(2, "big") + b"\0\0" + obj.astype(">f4").tobytes()

    VectorBinaryDumper.oid = oid
    conn.adapters.register_dumper(np.ndarray, VectorBinaryDumper)


def vec_text(v):
    return "[" + ",".join(str(int(x)) if float(x).is_integer() else repr(float(x)) for x in v) + "]"


QUERY = "SELECT id FROM fm ORDER BY v <-> %b LIMIT 10"
PGBENCH_QUERY = "SELECT id FROM fm ORDER BY v <-> (SELECT v FROM fq WHERE id = :q) LIMIT 10"


def pgbench_qps(schema, ef_setting, ef, n_queries, seconds):
    """Transactions per second of one pgbench client running PGBENCH_QUERY prepared."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(f"\\set q random(0, {n_queries - 1})\n{PGBENCH_QUERY};\n")
    env = dict(os.environ, PGOPTIONS=f"-c search_path={schema},public -c enable_seqscan=off -c {ef_setting}={ef}")
    try:
        out = subprocess.run([os.path.join(os.environ["PGBIN"], "pgbench"), "-n", "-M", "prepared", "-c", "1",
                              "-T", str(seconds), "-f", f.name], env=env, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    return float(re.search(r"tps = ([0-9.]+)", out).group(1))

SYSTEMS = {
    "pgvector": {"schema": "pgv", "am": "hnsw", "ef": "hnsw.ef_search"},
    "akidb": {"schema": "aki", "am": "akidb_hnsw", "ef": "akidb.hnsw_ef_search"},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--efs", default="10,20,40,80,160,320")
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default=platform.node())
    ap.add_argument("--pgbench-seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = load_idx(f"{MNIST}/train-images-idx3-ubyte.gz", args.n)
    queries = load_idx(f"{MNIST}/t10k-images-idx3-ubyte.gz", args.queries)
    print("ground truth (brute force)...", flush=True)
    truth = []
    bn = (base ** 2).sum(1)
    for q in queries:
        d = bn - 2 * base @ q
        truth.append(set(np.argpartition(d, 10)[:10].tolist()))
    result = {"dataset": f"fashion-mnist-784-euclidean ({args.n} base, {args.queries} queries)",
              "m": args.m, "ef_construction": args.ef_construction,
              "max_parallel_maintenance_workers": args.workers, "machine": args.machine,
              "storage": "ALTER TABLE ... ALTER COLUMN v SET STORAGE PLAIN (both systems)",
              "clients": {"qps_pgbench": f"pgbench -M prepared -c 1, {PGBENCH_QUERY}",
                          "qps": "psycopg, one connection, prepared statement, query vector as a binary parameter"},
              "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t"),
              "systems": {}}
    for name, s in SYSTEMS.items():
        with psycopg.connect(autocommit=True, options=f"-c search_path={s['schema']},public") as c:
            result["postgres"] = c.execute("SHOW server_version").fetchone()[0]
            if name == "pgvector":
                result["pgvector"] = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
            c.execute("DROP TABLE IF EXISTS fm")
            c.execute("CREATE TABLE fm (id int PRIMARY KEY, v vector(784))")
            # As ann-benchmarks' pgvector setup does: vectors stay in the row (no TOAST
            # lookups when a query reads the rows it returns). Same for both systems.
            c.execute("ALTER TABLE fm ALTER COLUMN v SET STORAGE PLAIN")
            print(f"{name}: loading {args.n} vectors", flush=True)
            with c.cursor().copy("COPY fm (id, v) FROM STDIN") as cp:
                for i, v in enumerate(base):
                    cp.write_row((i, vec_text(v)))
            c.execute("DROP TABLE IF EXISTS fq")
            c.execute("CREATE TABLE fq (id int PRIMARY KEY, v vector(784))")
            c.execute("ALTER TABLE fq ALTER COLUMN v SET STORAGE PLAIN")
            with c.cursor().copy("COPY fq (id, v) FROM STDIN") as cp:
                for i, v in enumerate(queries):
                    cp.write_row((i, vec_text(v)))
            c.execute("VACUUM ANALYZE fm")
            c.execute("VACUUM ANALYZE fq")
            c.execute(f"SET max_parallel_maintenance_workers = {args.workers}")
            c.execute("SET maintenance_work_mem = '2GB'")
            print(f"{name}: CREATE INDEX", flush=True)
            t0 = time.perf_counter()
            c.execute(f"CREATE INDEX fm_idx ON fm USING {s['am']} (v vector_l2_ops) "
                      f"WITH (m = {args.m}, ef_construction = {args.ef_construction})")
            build = time.perf_counter() - t0
            size = c.execute("SELECT pg_relation_size('fm_idx')").fetchone()[0]
            c.execute("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in c.execute("EXPLAIN " + PGBENCH_QUERY.replace(":q", "1")))
            assert "Index Scan using fm_idx" in plan, plan
            result["systems"][name] = {"build_s": build, "index_bytes": size, "points": []}
    # The builds left their pages dirty: write them now, not while queries are timed.
    conns = {}
    for name, s in SYSTEMS.items():
        c = psycopg.connect(autocommit=True, options=f"-c search_path={s['schema']},public")
        c.execute("CHECKPOINT")
        # Every relation the queries read, into shared buffers (COPY and VACUUM go through
        # small rings, so the table would be read from the OS cache meanwhile).
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm SCHEMA public")
        c.execute("""SELECT sum(pg_prewarm(r)) FROM (
            SELECT unnest(ARRAY['fm'::regclass, 'fq'::regclass]) UNION ALL
            SELECT reltoastrelid::regclass FROM pg_class WHERE oid IN ('fm'::regclass, 'fq'::regclass) UNION ALL
            SELECT indexrelid::regclass FROM pg_index WHERE indrelid IN ('fm'::regclass, 'fq'::regclass) OR indrelid IN
                (SELECT reltoastrelid FROM pg_class WHERE oid IN ('fm'::regclass, 'fq'::regclass))) x(r)""")
        c.execute("SET enable_seqscan = off")
        binary_dumper(c)
        # One pass over every query first: this backend's caches (buffer mapping, akidb's
        # buffer hints, the prepared plan) warm before anything is timed.
        for q in queries:
            c.execute(QUERY, (q,), prepare=True).fetchall()
        conns[name] = c
    # Both systems measured in turns, point by point, each `rounds` times (the median
    # kept): slow drifts of a shared VM then hit both alike.
    for ef in [int(x) for x in args.efs.split(",")]:
        runs = {name: {"qps": [], "qps_pgbench": []} for name in SYSTEMS}
        recall = {}
        for r in range(args.rounds):
            for name in (list(SYSTEMS) if r % 2 == 0 else list(reversed(SYSTEMS))):
                s, c = SYSTEMS[name], conns[name]
                c.execute(f"SET {s['ef']} = {ef}")
                hits = 0
                t0 = time.perf_counter()
                for q, want in zip(queries, truth):
                    got = c.execute(QUERY, (q,), prepare=True).fetchall()
                    hits += len(want & {row[0] for row in got})
                runs[name]["qps"].append(len(queries) / (time.perf_counter() - t0))
                recall[name] = hits / (10 * len(queries))
                runs[name]["qps_pgbench"].append(pgbench_qps(s["schema"], s["ef"], ef, len(queries), args.pgbench_seconds))
        for name in SYSTEMS:
            point = {"ef_search": ef, "recall": recall[name],
                     "qps": statistics.median(runs[name]["qps"]), "qps_pgbench": statistics.median(runs[name]["qps_pgbench"]),
                     "runs": runs[name]}
            result["systems"][name]["points"].append(point)
            print(f"{name}: ef {ef}: recall {point['recall']:.3f}, {point['qps_pgbench']:.0f} QPS (pgbench), "
                  f"{point['qps']:.0f} QPS (Python)", flush=True)
    for name, s in SYSTEMS.items():
        conns[name].execute("DROP TABLE fm, fq")
        conns[name].close()
    a, p = result["systems"]["akidb"], result["systems"]["pgvector"]

    def qps_at(points, recall, key):
        ok = [x[key] for x in points if x["recall"] >= recall]
        return max(ok) if ok else None

    for key, label in [("qps_pgbench", "pgbench"), ("qps", "python")]:
        qa, qp = qps_at(a["points"], 0.95, key), qps_at(p["points"], 0.95, key)
        result[f"qps_ratio_at_recall_0.95_{label}"] = qa / qp if qa and qp else None
    result["build_ratio_pgvector_over_akidb"] = p["build_s"] / a["build_s"]
    json.dump(result, open(args.out + ".json", "w"), indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "systems"}, indent=2))
    plot(result, args.out + ".png")


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for name, color in [("pgvector", "grey"), ("akidb", "tab:blue")]:
        pts = r["systems"][name]["points"]
        a.plot([p["recall"] for p in pts], [p["qps_pgbench"] for p in pts], "o-", color=color, label=f"{name} (pgbench)")
        a.plot([p["recall"] for p in pts], [p["qps"] for p in pts], "s--", color=color, alpha=0.6, label=f"{name} (Python client)")
        for p in pts:
            a.annotate(str(p["ef_search"]), (p["recall"], p["qps_pgbench"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    a.set_xlabel("recall@10")
    a.set_ylabel("queries / s (one client)")
    a.set_yscale("log")
    a.set_title(f"{r['dataset']}, m={r['m']}, ef_construction={r['ef_construction']} (labels: ef_search)", fontsize=9)
    a.axvline(0.95, color="red", lw=0.5, ls="--")
    a.legend()
    names = ["pgvector", "akidb"]
    builds = [r["systems"][n]["build_s"] for n in names]
    sizes = [r["systems"][n]["index_bytes"] / 2**20 for n in names]
    x = np.arange(2)
    b.bar(x - 0.2, builds, 0.4, label="build s", color="tab:orange")
    b2 = b.twinx()
    b2.bar(x + 0.2, sizes, 0.4, label="index MB", color="tab:green")
    b.set_xticks(x, names)
    b.set_ylabel("CREATE INDEX seconds")
    b2.set_ylabel("index MB")
    b.set_title(f"build ({r['max_parallel_maintenance_workers']} parallel maintenance worker) and size", fontsize=9)
    fig.suptitle(f"PostgreSQL {r['postgres']}, pgvector {r.get('pgvector')}, {r['cpu']} ({r['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
