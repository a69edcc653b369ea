#!/usr/bin/env python3
"""Calibrates akidb_hnsw's cost estimate against measured times (bench/planner.sh
starts the server). For each shape (dimensions x rows) a table of clustered random
vectors (100 Gaussian clusters, unit-variance centres, spread 0.5) gets an akidb_hnsw
index (cosine, m 16, ef_construction 64); then, at each ef_search, for the query
`SELECT id FROM t ORDER BY v <=> $q LIMIT 10` with query vectors drawn like the data:
  * the plan PostgreSQL picks at default settings (parallel workers allowed) and its cost;
  * the best plan without the index (enable_indexscan = off: a parallel or plain seq scan
    + top-N sort) and its cost, and its measured time;
  * the index plan (enable_seqscan = off) and its cost, and its measured time.
Times are EXPLAIN ANALYZE's execution time (server side, TIMING OFF), median over the
queries, after a warm-up pass. The planner picked right when it picked the faster one.
Writes JSON and a PNG; asserts nothing."""
import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import psycopg


def make_table(conn, name, dims, rows, rng):
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} (id int, v vector({dims}))")
    centres = rng.standard_normal((100, dims)).astype(np.float32)
    # Binary COPY built with numpy: per row, 2 fields; int4 id; vector (int16 dims,
    # int16 0, big-endian float4s).
    row_t = np.dtype([("nf", ">i2"), ("l1", ">i4"), ("id", ">i4"), ("l2", ">i4"), ("d", ">i2"), ("u", ">i2"),
                      ("v", ">f4", (dims,))])
    with conn.cursor().copy(f"COPY {name} (id, v) FROM STDIN WITH (FORMAT binary)") as cp:
        cp.write(b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8)
        done = 0
        while done < rows:
            n = min(20000, rows - done)
            pts = centres[rng.integers(0, 100, n)] + 0.5 * rng.standard_normal((n, dims)).astype(np.float32)
            buf = np.zeros(n, dtype=row_t)
            buf["nf"], buf["l1"], buf["l2"], buf["d"] = 2, 4, 4 + 4 * dims, dims
            buf["id"] = np.arange(done, done + n)
            buf["v"] = pts
            cp.write(buf.tobytes())
            done += n
        cp.write(b"\xff\xff")
    conn.execute("SET maintenance_work_mem = '8GB'")
    t0 = time.time()
    conn.execute(f"CREATE INDEX {name}_idx ON {name} USING akidb_hnsw (v vector_cosine_ops)")
    build_s = time.time() - t0
    conn.execute(f"VACUUM ANALYZE {name}")
    queries = centres[rng.integers(0, 100, 200)] + 0.5 * rng.standard_normal((200, dims)).astype(np.float32)
    return queries, build_s


def explain(conn, sql, params, analyze):
    opts = "ANALYZE, TIMING OFF, " if analyze else ""
    plan = conn.execute(f"EXPLAIN ({opts}FORMAT JSON) {sql}", params).fetchone()[0][0]
    top = plan["Plan"]
    node = top
    workers = 0
    while node.get("Plans") and node["Node Type"] in ("Limit", "Gather Merge", "Sort", "Gather"):
        workers = max(workers, node.get("Workers Planned", 0))
        node = node["Plans"][0]
    kind = "index" if "Index" in node["Node Type"] else "seq"
    name = ("Parallel " if node.get("Parallel Aware") else "") + node["Node Type"]
    if workers:
        name += f" ({workers} workers)"
    return {"kind": kind, "node": name, "cost": top["Total Cost"],
            "ms": plan.get("Execution Time")}


def measure(conn, table, queries, n_queries, ef):
    sql = f"SELECT id FROM {table} ORDER BY v <=> %s::vector LIMIT 10"
    texts = ["[" + ",".join(f"{x:.4f}" for x in q) + "]" for q in queries[:n_queries]]
    out = {}
    for mode, settings in (("default", []), ("seq", ["enable_indexscan = off"]), ("index", ["enable_seqscan = off"])):
        conn.execute("RESET ALL")
        for s in settings:
            conn.execute(f"SET {s}")
        conn.execute(f"SET akidb.hnsw_ef_search = {ef}")
        if mode == "default":
            out[mode] = explain(conn, sql, (texts[0],), False)
            continue
        for t in texts[:3]:
            explain(conn, sql, (t,), True)  # warm-up
        runs = [explain(conn, sql, (t,), True) for t in texts]
        out[mode] = {"kind": runs[0]["kind"], "node": runs[0]["node"], "cost": runs[0]["cost"],
                     "ms": statistics.median(r["ms"] for r in runs)}
    conn.execute("RESET ALL")
    return out



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="50,384,784,2560")
    ap.add_argument("--rows", default="1000,10000,100000")
    ap.add_argument("--extra", default="", help="more shapes, DIMSxROWS,... (e.g. 50x1000000)")
    ap.add_argument("--ef", default="40,200")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--out", required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("--merge", action="store_true",
                    help="keep the shapes of an earlier run's JSON that this run does not measure again")
    a = ap.parse_args()
    conn = psycopg.connect(autocommit=True)
    rng = np.random.default_rng(42)
    results = []
    if a.merge and os.path.exists(a.out + ".json"):
        earlier = json.load(open(a.out + ".json"))["results"]
    else:
        earlier = []
    shapes = [(d, n) for d in map(int, a.dims.split(",")) for n in map(int, a.rows.split(","))]
    shapes += [tuple(map(int, x.split("x"))) for x in a.extra.split(",") if x]
    for dims, rows in shapes:
        name = f"cal_{dims}_{rows}"
        t0 = time.time()
        queries, build_s = make_table(conn, name, dims, rows, rng)
        size = conn.execute(f"SELECT pg_relation_size('{name}_idx'), pg_table_size('{name}')").fetchone()
        for ef in map(int, a.ef.split(",")):
            m = measure(conn, name, queries, a.queries, ef)
            faster = "index" if m["index"]["ms"] < m["seq"]["ms"] else "seq"
            r = {"dims": dims, "rows": rows, "ef_search": ef, "build_s": round(build_s, 2),
                 "index_bytes": size[0], "table_bytes": size[1],
                 "picked": m["default"]["kind"], "picked_node": m["default"]["node"],
                 "default_cost": m["default"]["cost"],
                 "seq_node": m["seq"]["node"], "seq_cost": m["seq"]["cost"], "seq_ms": m["seq"]["ms"],
                 "index_cost": m["index"]["cost"], "index_ms": m["index"]["ms"],
                 "faster": faster, "right": m["default"]["kind"] == faster}
            results.append(r)
            print(json.dumps(r), flush=True)
        conn.execute(f"DROP TABLE {name}")
        print(f"# {name} done in {time.time() - t0:.0f} s", flush=True)
        write(conn, a, results, earlier)
    write(conn, a, results, earlier)


def write(conn, a, results, earlier=()):
    """Writes the JSON and the PNG (after every shape, so a long run that is stopped
    keeps what it measured)."""
    done = {(r["dims"], r["rows"], r["ef_search"]) for r in results}
    results = [r for r in earlier if (r["dims"], r["rows"], r["ef_search"]) not in done] + results
    results.sort(key=lambda r: (r["dims"], r["rows"], r["ef_search"]))
    doc = {"bench": "planner", "machine": a.label or platform.node(), "cpu": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "server": conn.execute("SELECT version()").fetchone()[0],
           "query": "SELECT id FROM t ORDER BY v <=> $q LIMIT 10 (cosine, m 16, ef_construction 64)",
           "results": results,
           "right": sum(r["right"] for r in results), "shapes": len(results)}
    with open(a.out + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    plot(doc, a.out + ".png")


def plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    res = doc["results"]
    efs = sorted({r["ef_search"] for r in res})
    fig, axes = plt.subplots(1, len(efs), figsize=(6 * len(efs), 5), squeeze=False)
    for ax, ef in zip(axes[0], efs):
        rs = [r for r in res if r["ef_search"] == ef]
        for r in rs:
            ratio = r["seq_ms"] / r["index_ms"]
            ax.scatter(r["rows"], ratio, marker="o" if r["picked"] == "index" else "x",
                       color="tab:green" if r["right"] else "tab:red", s=60)
            ax.annotate(f'{r["dims"]}d', (r["rows"], ratio), textcoords="offset points", xytext=(5, 3), fontsize=8)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log"); ax.set_yscale("log")
        ax.set_xlabel("rows"); ax.set_ylabel("seq scan time / index scan time")
        ax.set_title(f"ef_search {ef}: o = planner picked index, x = seq scan\ngreen = the faster plan, red = the slower")
    fig.suptitle(f'akidb_hnsw cost estimate: {doc["right"]} of {doc["shapes"]} right ({doc["machine"]})')
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
