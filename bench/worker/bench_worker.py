#!/usr/bin/env python3
"""The shared embedding worker against the per-backend mode, both in the same run on one
cluster with akidb preloaded (akidb.embed_mode switches per session):

* memory: the server's proportional set size (PSS, /proc/<pid>/smaps_rollup, summed over
  the postmaster's children) with 1, 4 and 16 connections that have each called embed();
* a new connection's first embed() (worker: model already loaded; backend: loads it);
* throughput: 1, 4 and 16 clients each sending single-text embed(text) for --seconds;
* one client's short-query latency, the two modes in turns.

Writes JSON and a PNG; asserts nothing."""
import argparse
import json
import os
import platform
import statistics
import threading
import time

import psycopg

TEXT = "how do I change a tire on a bicycle"


def pss_kb(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def server_pss_mb(postmaster):
    kids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) == postmaster:
                    kids.append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    return (pss_kb(postmaster) + sum(pss_kb(k) for k in kids)) / 1024


def connect(mode):
    c = psycopg.connect(autocommit=True)
    c.execute(f"SET akidb.embed_mode = {mode}")
    return c


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--postmaster", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default=platform.node())
    a = ap.parse_args()
    clients = [int(x) for x in a.clients.split(",")]
    r = {"bench": "worker", "machine": a.machine, "cores": os.cpu_count(), "memory_mb": {}, "first_embed_ms": {},
         "texts_per_s": {}, "latency_ms": {}}
    with psycopg.connect(autocommit=True) as c:
        c.execute("SET akidb.embed_mode = worker")
        c.execute("SELECT akidb_load_model('')")  # the worker's model is loaded before the figures
    for mode in ("backend", "worker"):
        # Memory with n connections that have each embedded once.
        r["memory_mb"][mode] = {}
        conns = []
        for n in clients:
            while len(conns) < n:
                cc = connect(mode)
                cc.execute("SELECT embed(%s)", (TEXT + str(len(conns)),))
                conns.append(cc)
            time.sleep(1)
            r["memory_mb"][mode][n] = server_pss_mb(a.postmaster)
        for cc in conns:
            cc.close()
        time.sleep(1)
        # First embed() of a new connection.
        firsts = []
        for i in range(5):
            with connect(mode) as cc:
                t0 = time.perf_counter()
                cc.execute("SELECT embed(%s)", (f"first {i}",))
                firsts.append((time.perf_counter() - t0) * 1e3)
        r["first_embed_ms"][mode] = statistics.median(firsts)
        # Throughput: n clients, single texts, distinct (no cache hits).
        r["texts_per_s"][mode] = {}
        for n in clients:
            counts, stop = [0] * n, threading.Event()

            def client(k):
                with connect(mode) as cc:
                    cc.execute("SELECT embed('warm')")
                    i = 0
                    while not stop.is_set():
                        cc.execute("SELECT embed(%s)", (f"{TEXT} {k} {i}",), prepare=True)
                        counts[k] += 1
                        i += 1
            ts = [threading.Thread(target=client, args=(k,)) for k in range(n)]
            for t in ts:
                t.start()
            time.sleep(2)
            before = sum(counts)
            time.sleep(a.seconds)
            done = sum(counts) - before
            stop.set()
            for t in ts:
                t.join()
            r["texts_per_s"][mode][n] = done / a.seconds
            print(mode, n, "clients", round(done / a.seconds, 1), "texts/s", flush=True)
    # One client's latency, the modes in turns.
    sess = {m: connect(m) for m in ("backend", "worker")}
    samples = {m: [] for m in sess}
    for m, cc in sess.items():
        for i in range(20):
            cc.execute("SELECT embed_query(%s)", (f"warm {i}",), prepare=True)
    for i in range(400):
        for m in (("backend", "worker") if i % 2 == 0 else ("worker", "backend")):
            t0 = time.perf_counter()
            sess[m].execute("SELECT embed_query(%s)", (f"{TEXT} {m} {i}",), prepare=True)
            samples[m].append((time.perf_counter() - t0) * 1e3)
    for m in samples:
        r["latency_ms"][m] = {"p50": statistics.median(samples[m]), "p95": pct(samples[m], 0.95), "n": len(samples[m])}
    r["latency_added_p50_ms"] = r["latency_ms"]["worker"]["p50"] - r["latency_ms"]["backend"]["p50"]
    with open(a.out + ".json", "w") as f:
        json.dump(r, f, indent=1)
    print(json.dumps(r, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in ("backend", "worker"):
        ax[0].plot(clients, [r["memory_mb"][m][n] for n in clients], "o-", label=m)
        ax[1].plot(clients, [r["texts_per_s"][m][n] for n in clients], "o-", label=m)
    ax[0].set_xlabel("connections that called embed()"); ax[0].set_ylabel("server PSS, MB"); ax[0].legend()
    ax[1].set_xlabel("concurrent clients, single-text embed()"); ax[1].set_ylabel("texts / s"); ax[1].legend()
    fig.suptitle(f"akidb embedding worker vs per-backend models ({a.machine}, {r['cores']} cores); first embed(): "
                 f"backend {r['first_embed_ms']['backend']:.0f} ms, worker {r['first_embed_ms']['worker']:.1f} ms; "
                 f"latency added p50 {r['latency_added_p50_ms']:.2f} ms", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out + ".png", dpi=110)


if __name__ == "__main__":
    main()
