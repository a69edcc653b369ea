#!/usr/bin/env python3
"""Retrieval quality, query latency and bulk embedding throughput of akidb in SQL, each
next to a baseline measured in the same run (bench/retrieval.sh starts the server).

Corpus: Debian package descriptions (bench/data/make_debian_docs.py): each document is a
package's long description; each query is a package's one-line synopsis, whose one
relevant document is that package's description. Held query set: every 12th document's
synopsis, the first 500 of them.

* Quality: nDCG@10 and Recall@10 of `ORDER BY emb <=> embed_query(q) LIMIT 10` in SQL,
  exact (no index) and through akidb_hnsw at default settings, next to the same figures
  from Python onnxruntime (same model file and tokenizer, brute-force cosine); and the
  index's figures and search time at other ef_search values (--ef-sweep).
* Bulk: CALL akidb_embed_column against one embed(text[]) call over the same rows and
  against raw onnxruntime's best batch strategy (length-sorted batches of 8 and 32).
* Latency: one client, prepared `SELECT id, package FROM docs ORDER BY emb <=>
  embed_query($1) LIMIT 10`, each query text once (so no cache helps): end-to-end from
  the client, and split in the server into embedding and search. With --latency-docs, the
  latency table is that (larger) corpus.
Writes JSON and a PNG; asserts nothing."""
import argparse
import gzip
import json
import os
import platform
import sys
import time

import numpy as np
import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "embed"))
from bench_embed import Raw, percentiles  # noqa: E402


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def metrics(ranked, relevant):
    """nDCG@10 and Recall@10 with one relevant document per query."""
    ndcg = rec = 0.0
    for got, want in zip(ranked, relevant):
        if want in got[:10]:
            rank = got.index(want)
            ndcg += 1.0 / np.log2(rank + 2)
            rec += 1.0
    return {"ndcg@10": round(ndcg / len(relevant), 4), "recall@10": round(rec / len(relevant), 4)}


def load_table(conn, name, docs):
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, package text, body text, emb vector(384))")
    with conn.cursor().copy(f"COPY {name} (id, package, body) FROM STDIN") as cp:
        for i, d in enumerate(docs):
            cp.write_row((i, d["package"], d["body"]))


def bulk_fill(conn, name):
    t0 = time.perf_counter()
    conn.execute(f"SET client_min_messages = warning")
    conn.execute(f"CALL akidb_embed_column('{name}', 'body', 'emb')")
    conn.execute("RESET client_min_messages")
    took = time.perf_counter() - t0
    # The fill updated every row: vacuum now (before the index exists), so that no
    # autovacuum of the dead row versions runs during the measurements that follow.
    conn.execute(f"VACUUM {name}")
    return took


def search_times(conn, table, n):
    """The index search's time in the server (ms) for the n query vectors in qv, which were
    embedded once, outside the timing."""
    return percentiles([conn.execute(f"""SELECT (extract(epoch FROM clock_timestamp() - t0) * 1000)::float8 FROM
            (SELECT clock_timestamp() AS t0) s,
            LATERAL (SELECT count(*) FROM (SELECT id FROM {table} ORDER BY emb <=> (SELECT v FROM qv WHERE i = %s)
                     LIMIT 10) x) c""", (i + 1,)).fetchone()[0] for i in range(n)])


def latency(a, table, column, lit, lat_q):
    """One prepared query's latency from a fresh session (whose model has only ever run
    single queries, not the bulk fill's large batches), end to end at the client, and in
    the server split into the embedding and the search."""
    with psycopg.connect(autocommit=True) as conn:
        if a.latency_threads:
            conn.execute(f"SET akidb.onnx_threads = {a.latency_threads}")
        q = f"SELECT id, package FROM {table} ORDER BY {column} <=> embed_query(%s, {lit}) LIMIT 10"
        for t in lat_q[:20]:
            conn.execute(q, (t + " warm",), prepare=True).fetchall()
        e2e = []
        for t in lat_q:
            t0 = time.perf_counter()
            conn.execute(q, (t,), prepare=True).fetchall()
            e2e.append((time.perf_counter() - t0) * 1e3)
        conn.execute(f"""CREATE OR REPLACE FUNCTION pg_temp.split(q text) RETURNS float8[] LANGUAGE plpgsql AS $$
            DECLARE t0 timestamptz := clock_timestamp(); t1 timestamptz; v vector; n int;
            BEGIN v := embed_query(q, {lit}); t1 := clock_timestamp();
              SELECT count(*) INTO n FROM (SELECT id FROM {table} ORDER BY {column} <=> v LIMIT 10) s;
              RETURN ARRAY[extract(epoch FROM t1 - t0) * 1000, extract(epoch FROM clock_timestamp() - t1) * 1000];
            END $$""")
        split = np.array([conn.execute("SELECT pg_temp.split(%s)", (t + " split",)).fetchone()[0] for t in lat_q])
    return {"end_to_end": percentiles(e2e), "embed_in_server": percentiles(list(split[:, 0])),
            "search_in_server": percentiles(list(split[:, 1])), "end_to_end_samples": e2e}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--docs", required=True)
    ap.add_argument("--latency-docs", default="")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2, help="akidb.onnx_threads for the bulk fills and the quality runs")
    ap.add_argument("--latency-threads", type=int, default=0,
                    help="akidb.onnx_threads for the latency runs (0: the server's default)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--also-model", default="", help="a second model measured the same way, and its latency in turns with the default's")
    ap.add_argument("--also-model-dir", default="")
    ap.add_argument("--machine", default=platform.node())
    ap.add_argument("--ef-sweep", default="40,64,100,200",
                    help="ef_search values at which the index's nDCG and search time are measured (the default setting is measured too)")
    a = ap.parse_args()
    docs = load(a.docs)
    held = [i for i in range(len(docs)) if i % 12 == 0][:a.queries]
    queries = [docs[i]["query"] for i in held]
    relevant = [docs[i]["package"] for i in held]
    bodies = [d["body"] for d in docs]
    packages = [d["package"] for d in docs]
    r = {"bench": "retrieval", "machine": a.machine, "cores": os.cpu_count(),
         "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t"),
         "model": "all-MiniLM-L6-v2 (fp32 ONNX)", "threads": a.threads,
         "corpus": os.path.basename(a.docs), "documents": len(docs), "queries": len(queries)}

    # ---- outside PostgreSQL: Python onnxruntime, brute-force cosine
    raw = Raw(a.model_dir, a.threads)
    raw.embed(["warm up"])
    t0 = time.perf_counter()
    D = np.array(raw.sorted_batches(bodies, 8))
    raw_s8 = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw.sorted_batches(bodies[:1000], 32)
    raw_s32 = (time.perf_counter() - t0) * len(bodies) / 1000
    Q = np.array([raw.embed([q])[0] for q in queries])
    top = np.argsort(-(Q @ D.T), axis=1)[:, :10]
    r["outside"] = metrics([[packages[j] for j in row] for row in top], relevant)
    r["raw_docs_per_s"] = {"sorted_batches_8": len(bodies) / raw_s8, "sorted_batches_32": len(bodies) / raw_s32}

    with psycopg.connect(autocommit=True) as conn:
        conn.execute(f"SET akidb.onnx_threads = {a.threads}")
        conn.execute("SELECT akidb_load_model('')")
        load_table(conn, "docs", docs)
        # ---- bulk: the procedure, then one embed(text[]) call over the same rows
        proc_s = bulk_fill(conn, "docs")
        t0 = time.perf_counter()
        n = conn.execute("SELECT cardinality(embed(array_agg(body ORDER BY id))) FROM docs").fetchone()[0]
        direct_s = time.perf_counter() - t0
        assert n == len(docs)
        r["bulk"] = {"rows": len(docs), "akidb_embed_column_rows_per_s": len(docs) / proc_s,
                     "embed_array_rows_per_s": len(docs) / direct_s,
                     "raw_best_rows_per_s": max(r["raw_docs_per_s"].values())}
        r["bulk"]["ratio_procedure_over_embed_array"] = r["bulk"]["akidb_embed_column_rows_per_s"] / r["bulk"]["embed_array_rows_per_s"]
        r["bulk"]["ratio_procedure_over_raw_best"] = r["bulk"]["akidb_embed_column_rows_per_s"] / r["bulk"]["raw_best_rows_per_s"]
        sql_d = np.array([json.loads(v) for (v,) in conn.execute("SELECT emb::text FROM docs ORDER BY id")])
        r["min_cosine_sql_vs_outside"] = float(((sql_d * D).sum(1)).min())

        # ---- quality: exact in SQL, then through the index at default settings
        sql = "SELECT package FROM docs ORDER BY emb <=> embed_query(%s) LIMIT 10"
        conn.execute("SET enable_indexscan = off")
        exact = [[p for (p,) in conn.execute(sql, (q,))] for q in queries]
        conn.execute("RESET enable_indexscan")
        conn.execute("CREATE INDEX docs_emb_idx ON docs USING akidb_hnsw (emb vector_cosine_ops)")
        conn.execute("ANALYZE docs")
        plan = "\n".join(p for (p,) in conn.execute("EXPLAIN " + sql, (queries[0],)))
        r["default_plan_uses_index"] = "docs_emb_idx" in plan
        default_ef = int(conn.execute("SHOW akidb.hnsw_ef_search").fetchone()[0])
        r["default_ef_search"] = default_ef
        approx = [[p for (p,) in conn.execute(sql, (q,))] for q in queries]
        r["sql_exact"] = metrics(exact, relevant)
        r["sql_index"] = metrics(approx, relevant)
        r["index_keeps_of_exact_ndcg"] = r["sql_index"]["ndcg@10"] / r["sql_exact"]["ndcg@10"]
        # The same through the index at other ef_search values, with the search's time in
        # the server (query vectors embedded once, outside the timing).
        conn.execute("CREATE TEMP TABLE qv AS SELECT i, embed_query(q) AS v FROM unnest(%s::text[]) WITH ORDINALITY u(q, i)",
                     (queries,))
        efs = sorted({default_ef} | {int(x) for x in a.ef_sweep.split(",") if x})
        sweep = {}
        for ef in efs:
            conn.execute(f"SET akidb.hnsw_ef_search = {ef}")
            got = [[p for (p,) in conn.execute(sql, (q,))] for q in queries]
            m = metrics(got, relevant)
            m["keeps_of_exact_ndcg"] = m["ndcg@10"] / r["sql_exact"]["ndcg@10"]
            m["search_ms"] = search_times(conn, "docs", len(queries))
            sweep[ef] = m
        conn.execute("RESET akidb.hnsw_ef_search")
        r["sql_index_by_ef_search"] = sweep

        # ---- latency over the latency corpus
        table = "docs"
        if a.latency_docs:
            big = load(a.latency_docs)
            load_table(conn, "bigdocs", big)
            fill_s = bulk_fill(conn, "bigdocs")
            r["latency_fill"] = {"rows": len(big), "akidb_embed_column_rows_per_s": len(big) / fill_s}
            conn.execute("CREATE INDEX bigdocs_emb_idx ON bigdocs USING akidb_hnsw (emb vector_cosine_ops)")
            conn.execute("ANALYZE bigdocs")
            table = "bigdocs"
            big_sweep = {}
            for ef in efs:
                conn.execute(f"SET akidb.hnsw_ef_search = {ef}")
                big_sweep[ef] = search_times(conn, table, len(queries))
            conn.execute("RESET akidb.hnsw_ef_search")
            r["latency_search_ms_by_ef_search"] = big_sweep
        r["latency_documents"] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        lat_q = [f"{q} ({i})" for i, q in enumerate(queries)]  # distinct texts: no cache hits
        r["latency_threads"] = a.latency_threads
        r["latency_ms"] = latency(a, table, "emb", "''", lat_q)
        q = f"SELECT id, package FROM {table} ORDER BY emb <=> embed_query(%s) LIMIT 10"
        plan = "\n".join(p for (p,) in conn.execute("EXPLAIN (COSTS OFF) " + q, (queries[0],)))
        r["latency_plan"] = plan
    if a.also_model:
        r["also"] = also_model(a, queries, relevant, packages, bodies, table, lat_q)
    with open(a.out + ".json", "w") as f:
        json.dump(r, f, indent=1)
    print(json.dumps({k: v for k, v in r.items() if k not in ("latency_ms", "also")}, indent=1))
    print(json.dumps({k: {kk: vv for kk, vv in v.items()} for k, v in r["latency_ms"].items() if k != "end_to_end_samples"}))
    plot(r, a.out + ".png")


def also_model(a, queries, relevant, packages, bodies, table, lat_q):
    """The second model: its quality in SQL next to its own outside reference, its bulk
    fill rate, its latency alone in a fresh session (as the default model's), and the
    latency of both models measured in turns in one fresh session (query k runs on one
    model then the other, the first one alternating)."""
    name = a.also_model
    out = {"model": name}
    raw = Raw(a.also_model_dir, a.threads)
    batch = json.load(open(os.path.join(a.also_model_dir, "akidb.json"))).get("batch_size", 8)
    D = np.array(raw.sorted_batches(bodies, batch))
    Q = np.array([raw.embed([q])[0] for q in queries])
    top = np.argsort(-(Q @ D.T), axis=1)[:, :10]
    out["outside"] = metrics([[packages[j] for j in row] for row in top], relevant)
    lit = "'" + name.replace("'", "''") + "'"
    with psycopg.connect(autocommit=True) as conn:
        conn.execute(f"SET akidb.onnx_threads = {a.threads}")
        conn.execute("SET client_min_messages = warning")
        out["fill_rows_per_s"] = {}
        for t in dict.fromkeys(["docs", table]):
            conn.execute(f"ALTER TABLE {t} ADD COLUMN emb2 vector(384)")
            t0 = time.perf_counter()
            conn.execute(f"CALL akidb_embed_column('{t}', 'body', 'emb2', model => {lit})")
            n = conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            out["fill_rows_per_s"][t] = n / (time.perf_counter() - t0)
            conn.execute(f"VACUUM {t}")
            conn.execute(f"CREATE INDEX {t}_emb2_idx ON {t} USING akidb_hnsw (emb2 vector_cosine_ops)")
            conn.execute(f"ANALYZE {t}")
        sql_d = np.array([json.loads(v) for (v,) in conn.execute("SELECT emb2::text FROM docs ORDER BY id")])
        out["min_cosine_sql_vs_outside"] = float(((sql_d * D).sum(1)).min())
        sql = f"SELECT package FROM docs ORDER BY emb2 <=> embed_query(%s, {lit}) LIMIT 10"
        conn.execute("SET enable_indexscan = off")
        out["sql_exact"] = metrics([[p for (p,) in conn.execute(sql, (q,))] for q in queries], relevant)
        conn.execute("RESET enable_indexscan")
        out["sql_index"] = metrics([[p for (p,) in conn.execute(sql, (q,))] for q in queries], relevant)
        out["index_keeps_of_exact_ndcg"] = out["sql_index"]["ndcg@10"] / out["sql_exact"]["ndcg@10"]
    out["latency_alone_ms"] = latency(a, table, "emb2", lit, [f"{t} alone" for t in lat_q])
    with psycopg.connect(autocommit=True) as conn:
        if a.latency_threads:
            conn.execute(f"SET akidb.onnx_threads = {a.latency_threads}")
        sqls = {"default": f"SELECT id, package FROM {table} ORDER BY emb <=> embed_query(%s) LIMIT 10",
                name: f"SELECT id, package FROM {table} ORDER BY emb2 <=> embed_query(%s, {lit}) LIMIT 10"}
        for m, q in sqls.items():
            for t in lat_q[:20]:
                conn.execute(q, (f"{t} warm {m}",), prepare=True).fetchall()
        samples = {m: [] for m in sqls}
        for k, t in enumerate(lat_q):
            for m in (list(sqls) if k % 2 == 0 else list(sqls)[::-1]):
                t0 = time.perf_counter()
                conn.execute(sqls[m], (f"{t} turn {m}",), prepare=True).fetchall()
                samples[m].append((time.perf_counter() - t0) * 1e3)
        out["latency_in_turns_ms"] = {m: percentiles(v) for m, v in samples.items()}
        out["latency_in_turns_samples"] = samples
    shown = {k: v for k, v in out.items() if k != "latency_in_turns_samples"}
    shown["latency_alone_ms"] = {k: v for k, v in shown["latency_alone_ms"].items() if k != "end_to_end_samples"}
    print(json.dumps(shown, indent=1))
    return out


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(17, 4.8))
    names = ["outside\n(onnxruntime, exact)", "SQL exact", "SQL akidb_hnsw\n(defaults)"]
    for k, key in enumerate(["ndcg@10", "recall@10"]):
        vals = [r["outside"][key], r["sql_exact"][key], r["sql_index"][key]]
        ax[0].bar(np.arange(3) + 0.4 * k, vals, 0.4, label=key)
        for i, v in enumerate(vals):
            ax[0].text(i + 0.4 * k, v + 0.005, f"{v:.3f}", ha="center", fontsize=8)
    ax[0].set_xticks(np.arange(3) + 0.2, names, fontsize=8)
    ax[0].set_ylim(0, 1.05); ax[0].legend(); ax[0].set_title(f'{r["queries"]} queries, {r["documents"]} documents')
    e2e = r["latency_ms"]["end_to_end_samples"]
    ax[1].hist(e2e, bins=60, color="tab:blue", alpha=0.7, label=r["model"])
    if "also" in r:
        al = r["also"]
        alone = al["latency_alone_ms"]
        ax[1].hist(alone["end_to_end_samples"], bins=60, color="tab:orange", alpha=0.7,
                   label=f'{al["model"]}: p50 {alone["end_to_end"]["p50"]:.2f} / p95 {alone["end_to_end"]["p95"]:.2f} ms '
                         f'(embed {alone["embed_in_server"]["p50"]:.2f} + search {alone["search_in_server"]["p50"]:.2f} p50)')
    ax[1].legend(fontsize=7)
    lm = r["latency_ms"]
    ax[1].set_title(f'latency, {r["latency_documents"]} docs: p50 {lm["end_to_end"]["p50"]:.2f} / p95 {lm["end_to_end"]["p95"]:.2f} / '
                    f'p99 {lm["end_to_end"]["p99"]:.2f} ms\n(embed {lm["embed_in_server"]["p50"]:.2f} + search '
                    f'{lm["search_in_server"]["p50"]:.2f} ms p50, in the server)', fontsize=9)
    ax[1].set_xlabel("ms, one prepared query, client side")
    b = r["bulk"]
    vals = [b["raw_best_rows_per_s"], b["embed_array_rows_per_s"], b["akidb_embed_column_rows_per_s"]]
    ax[2].bar(range(3), vals, color=["grey", "tab:blue", "tab:green"])
    for i, v in enumerate(vals):
        ax[2].text(i, v, f"{v:.1f}", ha="center", va="bottom")
    ax[2].set_xticks(range(3), ["raw onnxruntime\n(best batches)", "embed(text[])\n(one call)", "CALL akidb_embed_column"], fontsize=8)
    ax[2].set_ylabel("rows / s"); ax[2].set_title(f'bulk embedding, {b["rows"]} rows')
    fig.suptitle(f'akidb retrieval on Debian descriptions ({r["machine"]}, {r["cores"]} cores)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
