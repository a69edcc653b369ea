#!/usr/bin/env python3
"""An index under months of writes, compressed: akidb_hnsw and pgvector 0.8.6 HNSW side by
side on one PostgreSQL 18 server (bench/churn.sh starts it). Per data set, both indexes
are built (same m / ef_construction / maintenance_work_mem), then ROUNDS rounds of:
UPDATE 20 % of the rows to new vectors (one statement), VACUUM. After the build and after
every round: the index's size, recall@10 against brute force over the table as it is now
(ef_search 40 and 200; a returned row counts when it is no farther than the 10th
nearest, so that rows with equal vectors are interchangeable), the round's UPDATE and VACUUM times, and for akidb
akidb_hnsw_check's problem count and akidb_hnsw_info's free slots and unreachable
elements. Data sets: 50,000 random normal 64-d vectors (the issue's), and fashion-mnist
784-d (30,000 rows, updates drawn with replacement from the other 30,000, so rows come to
share vectors). Each data set's JSON names the commit it ran on. Writes JSON and a PNG;
asserts nothing."""
import argparse
import gzip
import json
import os
import platform
import subprocess
import time

import numpy as np
import psycopg

MNIST = "/usr/share/datasets/fashion-mnist"


def vec_text(v):
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


def load_mnist(n):
    with gzip.open(os.path.join(MNIST, "train-images-idx3-ubyte.gz")) as f:
        f.read(16)
        return np.frombuffer(f.read(n * 784), dtype=np.uint8).reshape(n, 784).astype(np.float32)


def copy_rows(conn, table, ids, vectors):
    with conn.cursor().copy(f"COPY {table} (id, v) FROM STDIN") as cp:
        for i, v in zip(ids, vectors):
            cp.write_row((int(i), vec_text(v)))


def recall(conn, schema, table, ids, vectors, queries, ef):
    conn.execute(f"SET {'akidb.hnsw_ef_search' if schema == 'aki' else 'hnsw.ef_search'} = {ef}")
    hits = 0
    for q in queries:
        d = ((vectors - q) ** 2).sum(1)
        # Ties count: the rounds copy vectors from a pool with replacement, so rows repeat,
        # and any of the rows at the 10th distance is a right answer (ids are row numbers).
        tenth = np.partition(d, 9)[9]
        got = [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY v <-> %s::vector LIMIT 10", (vec_text(q),))]
        hits += int((d[got] <= tenth * (1 + 1e-6)).sum()) if got else 0
    return hits / (10 * len(queries))


def measure(conn, schema, table, index, ids, vectors, queries):
    m = {"size_mb": conn.execute("SELECT pg_relation_size(%s::regclass)", (index,)).fetchone()[0] / 2**20,
         "recall_ef40": recall(conn, schema, table, ids, vectors, queries, 40),
         "recall_ef200": recall(conn, schema, table, ids, vectors, queries, 200)}
    if schema == "aki":
        m["check_problems"] = conn.execute("SELECT count(*) FROM akidb_hnsw_check(%s::regclass)", (index,)).fetchone()[0]
        m["free_slots"], m["unreachable"], m["live"] = conn.execute(
            "SELECT free, unreachable, live FROM akidb_hnsw_info(%s::regclass)", (index,)).fetchone()
    return m


def run_set(conn, name, base, pool, rounds, queries, rng, m, efc):
    n, dims = base.shape
    out = {"rows": n, "dims": dims, "rounds": rounds, "m": m, "ef_construction": efc, "systems": {}}
    for schema, am, ops in (("aki", "akidb_hnsw", "vector_l2_ops"), ("pgv", "hnsw", "vector_l2_ops")):
        table, index = f"churn_{schema}", f"churn_{schema}_idx"
        conn.execute(f"SET search_path = {schema}, public")
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v vector({dims}))")
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN v SET STORAGE PLAIN")
        ids = np.arange(n)
        vectors = base.copy()
        copy_rows(conn, table, ids, vectors)
        t = time.perf_counter()
        conn.execute(f"CREATE INDEX {index} ON {table} USING {am} (v {ops}) WITH (m = {m}, ef_construction = {efc})")
        build_s = time.perf_counter() - t
        conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute("SET enable_seqscan = off")
        steps = [dict(round=0, build_s=build_s, **measure(conn, schema, table, index, ids, vectors, queries))]
        print(f"{name} {schema} round 0: {json.dumps(steps[-1])}", flush=True)
        r = np.random.default_rng(rng)
        for k in range(1, rounds + 1):
            chosen = r.choice(n, n // 5, replace=False)
            new = pool[r.integers(0, len(pool), len(chosen))] if pool is not None else r.standard_normal((len(chosen), dims)).astype(np.float32)
            vectors[chosen] = new
            conn.execute("DROP TABLE IF EXISTS churn_new")
            conn.execute(f"CREATE TEMP TABLE churn_new (id int, v vector({dims}))")
            copy_rows(conn, "churn_new", chosen, new)
            t = time.perf_counter()
            conn.execute(f"UPDATE {table} t SET v = c.v FROM churn_new c WHERE t.id = c.id")
            update_s = time.perf_counter() - t
            t = time.perf_counter()
            conn.execute(f"VACUUM {table}")
            vacuum_s = time.perf_counter() - t
            steps.append(dict(round=k, update_s=update_s, vacuum_s=vacuum_s, **measure(conn, schema, table, index, ids, vectors, queries)))
            print(f"{name} {schema} round {k}: {json.dumps(steps[-1])}", flush=True)
        conn.execute(f"DROP TABLE {table}")
        out["systems"][schema] = steps
    return out


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sets = list(res["data_sets"])
    fig, ax = plt.subplots(len(sets), 2, figsize=(11, 4 * len(sets)), squeeze=False)
    for row, name in enumerate(sets):
        d = res["data_sets"][name]
        for schema, label in (("aki", "akidb_hnsw"), ("pgv", "pgvector 0.8.6")):
            steps = d["systems"][schema]
            x = [s["round"] for s in steps]
            ax[row][0].plot(x, [s["size_mb"] for s in steps], marker="o", label=label)
            ax[row][1].plot(x, [s["recall_ef200"] for s in steps], marker="o", label=f"{label}, ef_search 200")
            ax[row][1].plot(x, [s["recall_ef40"] for s in steps], marker=".", linestyle="--", label=f"{label}, ef_search 40")
        ax[row][0].set_title(f"{name}: index size (MB) after build and each round")
        ax[row][1].set_title(f"{name}: recall@10")
        for a in ax[row]:
            a.set_xlabel("round (UPDATE 20 % of rows, VACUUM)")
            a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--random-rows", type=int, default=50000)
    ap.add_argument("--mnist-rows", type=int, default=30000)
    ap.add_argument("--sets", default="random,mnist", help="data sets to run; the others are kept from an existing --out JSON")
    a = ap.parse_args()
    sets = set(a.sets.split(","))
    conn = psycopg.connect(autocommit=True)
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute("SET max_parallel_maintenance_workers = 1")
    commit = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    res = {"bench": "churn", "machine": platform.node(), "cores": os.cpu_count(), "data_sets": {}}
    if os.path.exists(a.out + ".json"):
        res["data_sets"] = json.load(open(a.out + ".json")).get("data_sets", {})
    rng = np.random.default_rng(42)
    base = rng.standard_normal((a.random_rows, 64)).astype(np.float32)
    queries = rng.standard_normal((a.queries, 64)).astype(np.float32)
    if "random" in sets:
        res["data_sets"]["random-64"] = run_set(conn, "random-64", base, None, a.rounds, queries, 7, 16, 64)
        res["data_sets"]["random-64"]["commit"] = commit
    # Written after each data set too: a run cut short keeps what it measured.
    with open(a.out + ".json", "w") as f:
        json.dump(res, f, indent=1)
    if os.path.isdir(MNIST) and a.mnist_rows and "mnist" in sets:
        allv = load_mnist(2 * a.mnist_rows + a.queries)
        base, pool, queries = allv[:a.mnist_rows], allv[a.mnist_rows:2 * a.mnist_rows], allv[2 * a.mnist_rows:]
        res["data_sets"]["fashion-mnist-784"] = run_set(conn, "fashion-mnist-784", base, pool, a.rounds, queries, 8, 16, 64)
        res["data_sets"]["fashion-mnist-784"]["commit"] = commit
    with open(a.out + ".json", "w") as f:
        json.dump(res, f, indent=1)
    plot(res, a.out + ".png")
    print("wrote", a.out + ".json")


if __name__ == "__main__":
    main()
