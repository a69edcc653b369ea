"""embed() on the CUDA execution provider inside PostgreSQL 16 (tests/gpu/run.sh runs this
on the GPU machine): the provider chosen and reported, vectors equal to the CPU's, cancel
and statement_timeout during a long GPU call, signal masks of the provider's threads,
many short-lived backends, fallbacks with their NOTICE (TensorRT missing, no GPU, a CUDA
library missing), and GPU memory exhaustion while loading and while running."""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import psycopg
import pytest

from cluster import threads_blocking_signals
from conftest import MINILM, error_of, notices_of

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MINILM_512 = "all-MiniLM-L6-v2-512"  # the same model file, max_tokens 512 (run.sh makes it)


def vec(conn, sql, params=()):
    return np.array([float(x) for x in conn.execute(sql, params).fetchone()[0].strip("[]").split(",")])


def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def reference():
    r = json.load(open(os.path.join(REPO, "tests/embed/fixtures/minilm_reference.json"), encoding="utf-8"))
    return r["texts"], np.array(r["embeddings"])


def on_cuda(conn, model=MINILM):
    conn.execute("SET akidb.execution_providers = 'cuda,cpu'")
    assert conn.execute("SELECT akidb_load_model(%s)", (model,)).fetchone()[0] == "cuda"


def log_since(cluster, offset):
    return cluster.log_text()[offset:]


def bad_lines(text):
    return [l for l in text.splitlines() if any(w in l for w in ("WARNING", "PANIC", "FATAL", "terminated by signal", "server process"))]


def test_loads_on_cuda_and_equals_the_cpu_vectors(cluster):
    texts, ref = reference()
    with cluster.connect() as gpu, cluster.connect() as cpu:
        on_cuda(gpu)
        row = gpu.execute("SELECT loaded, execution_provider, load_ms FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()
        assert row[:2] == (True, "cuda") and row[2] > 0
        cpu.execute("SET akidb.execution_providers = 'cpu'")
        assert cpu.execute("SELECT akidb_load_model(%s)", (MINILM,)).fetchone()[0] == "cpu"
        worst = 1.0
        for i, t in enumerate(texts):
            g = vec(gpu, "SELECT embed(%s)::text", (t,))
            c = vec(cpu, "SELECT embed(%s)::text", (t,))
            worst = min(worst, cos(g, c))
            assert cos(g, c) >= 0.9999, f"text {i}: GPU vs CPU cosine {cos(g, c)}"
            assert cos(g, ref[i]) >= 0.999, f"text {i}: GPU vs sentence-transformers cosine {cos(g, ref[i])}"
        print(f"worst GPU/CPU cosine over {len(texts)} reference texts: {worst:.7f}")
        # One batch on the GPU gives each text the vector it gets alone.
        batch = [np.array([float(x) for x in v.strip("[]").split(",")])
                 for (v,) in gpu.execute("SELECT unnest(embed(%s::text[]))::text", (texts,))]
        for i, t in enumerate(texts):
            assert cos(batch[i], vec(gpu, "SELECT embed(%s)::text", (t,))) >= 0.9999, i


def test_tensorrt_missing_falls_back_to_cuda_with_a_notice(conn):
    seen = notices_of(conn)
    conn.execute("RESET akidb.execution_providers")  # tensorrt,cuda,cpu
    conn.execute("SELECT akidb_unload_model(%s)", (MINILM,))
    assert conn.execute("SELECT akidb_load_model(%s)", (MINILM,)).fetchone()[0] == "cuda"
    print("NOTICE:", seen)
    assert any("runs on cuda" in m and "tensorrt" in d for m, d in seen), seen
    assert conn.execute("SELECT execution_provider FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()[0] == "cuda"


def long_texts(n):
    words = "the engine turns a shaft that drives the wheels through a gearbox and a clutch".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(230)) + f" {i}" for i in range(n)]


# 60,000 texts of about 230 tokens, made in the server (sending them would take part of
# the time a statement_timeout allows before the statement even starts).
LONG_CALL = """SELECT cardinality(embed(array_agg(t))) FROM
    (SELECT repeat(md5(g::text) || ' turns the wheels through a gearbox ', 12) AS t FROM generate_series(1, %s) g) s"""


def test_cancel_and_statement_timeout_stop_a_long_gpu_embed(cluster):
    n = 60_000
    with cluster.connect() as c:
        on_cuda(c)
        t0 = time.perf_counter()
        assert c.execute(LONG_CALL, (n,)).fetchone()[0] == n
        full = time.perf_counter() - t0
        print(f"{n} texts of ~230 tokens: {full:.2f} s uncancelled")
        assert full > 1.0, "the call must be long enough to cancel inside it"
        overshoot = {}
        for frac in (0.3, 0.6, 0.9):
            ms = int(full * frac * 1000)
            c.execute(f"SET statement_timeout = {ms}")
            t0 = time.perf_counter()
            with pytest.raises(psycopg.errors.QueryCanceled):
                c.execute(LONG_CALL, (n,))
            overshoot[f"timeout_at_{frac}"] = time.perf_counter() - t0 - ms / 1000
            c.execute("RESET statement_timeout")
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        with cluster.connect() as other:
            at = full * 0.9
            timer = threading.Timer(at, lambda: other.execute("SELECT pg_cancel_backend(%s)", (pid,)))
            t0 = time.perf_counter()
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                c.execute(LONG_CALL, (n,))
            overshoot["cancel_at_0.9"] = time.perf_counter() - t0 - at
            timer.join()
        print("seconds from the deadline to the ERROR:", overshoot)
        assert all(v < 0.3 for v in overshoot.values()), overshoot
        # The backend and its GPU session go on.
        assert c.execute("SELECT vector_dims(embed('still here'))").fetchone()[0] == 384
        assert c.execute("SELECT execution_provider FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()[0] == "cuda"


def test_every_thread_but_the_backends_own_blocks_postgres_signals_on_the_gpu(cluster):
    with cluster.connect() as c:
        on_cuda(c)
        c.execute("SELECT embed(%s::text[])", (long_texts(600),))
        c.execute("SET statement_timeout = '300ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute(LONG_CALL, (60_000,))
        c.execute("RESET statement_timeout")
        c.execute("SELECT embed('after the cancel')")
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        seen = threads_blocking_signals(pid)
        print("threads (tid, name) -> signals blocked:", seen)
        others = {k: v for k, v in seen.items() if k[0] != pid}
        assert len(others) >= 3, seen  # the CUDA runtime's and ONNX Runtime's threads, the watchdog
        assert all(others.values()), seen
        assert not seen[next(k for k in seen if k[0] == pid)], "the main thread must take signals"


def test_twenty_backends_load_embed_and_leave(cluster):
    offset = len(cluster.log_text())
    errors = []

    def one(i):
        try:
            with cluster.connect() as c:
                on_cuda(c)
                n = c.execute("SELECT cardinality(embed(%s::text[]))", ([f"backend {i} text {j}" for j in range(16)],)).fetchone()[0]
                assert n == 16
        except Exception as e:  # collected and asserted below
            errors.append(f"backend {i}: {e!r}")

    for wave in range(5):
        ts = [threading.Thread(target=one, args=(wave * 4 + k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert errors == []
    time.sleep(1)
    with cluster.connect() as c:
        assert c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()[0] == 1
    assert bad_lines(log_since(cluster, offset)) == []


def fallback_detail(cluster, **env):
    cluster.start_with(**env)
    try:
        with cluster.connect() as c:
            seen = notices_of(c)
            c.execute("SET akidb.execution_providers = 'cuda,cpu'")
            provider = c.execute("SELECT akidb_load_model(%s)", (MINILM,)).fetchone()[0]
            assert c.execute("SELECT vector_dims(embed('works on the cpu'))").fetchone()[0] == 384
            return provider, seen
    finally:
        cluster.start_with()


def test_no_gpu_falls_back_to_cpu_with_a_notice(cluster):
    provider, seen = fallback_detail(cluster, CUDA_VISIBLE_DEVICES="")
    print("no GPU:", seen)
    assert provider == "cpu"
    assert any("runs on cpu" in m and "cuda:" in d for m, d in seen), seen


def test_a_missing_cuda_library_falls_back_to_cpu_with_a_notice(cluster):
    # The machine has CUDA installed system-wide too, so "missing" is staged: broken copies
    # of cuBLAS and cuDNN come first on the library path (what a half-installed or
    # mismatched CUDA looks like to the loader).
    broken = os.path.join(os.environ.get("AKIDB_RUN", "/tmp/akidb-run"), "broken-cuda")
    os.makedirs(broken, exist_ok=True)
    os.chmod(broken, 0o755)
    for lib in ("libcublas.so.13", "libcublasLt.so.13", "libcudnn.so.9"):
        open(os.path.join(broken, lib), "wb").close()
    provider, seen = fallback_detail(cluster, LD_LIBRARY_PATH=f"{broken}:{os.environ.get('AKIDB_CUDA_LIBS', '')}")
    print("broken CUDA libraries:", seen)
    assert provider == "cpu"
    assert any("runs on cpu" in m and "cuda:" in d and ".so" in d for m, d in seen), seen


def test_gpu_out_of_memory_while_running_is_an_error_and_the_backend_goes_on(cluster):
    with cluster.connect() as c:
        c.execute("SET akidb.cuda_memory_limit = '300MB'")
        c.execute("SELECT akidb_unload_model(%s)", (MINILM_512,))
        on_cuda(c, MINILM_512)
        assert c.execute("SELECT vector_dims(embed('fits', %s))", (MINILM_512,)).fetchone()[0] == 384
        words = " ".join(["wheel"] * 600)
        code, msg, hint = error_of(c, "SELECT embed(array_agg(%s || g), %s) FROM generate_series(1, 256) g", (words, MINILM_512))
        print("run OOM:", code, msg, "| HINT:", hint)
        assert code == "53200" and "out of memory on cuda" in msg and MINILM_512 in msg, (code, msg)
        assert "batch_size" in hint
        # The session is still on the GPU and usable.
        assert c.execute("SELECT vector_dims(embed('still fits', %s))", (MINILM_512,)).fetchone()[0] == 384
        assert c.execute("SELECT execution_provider FROM akidb.models WHERE name = %s", (MINILM_512,)).fetchone()[0] == "cuda"


HOG = """
import sys, torch
free, total = torch.cuda.mem_get_info()
x = torch.empty(free - (48 << 20), dtype=torch.uint8, device="cuda")
print(torch.cuda.mem_get_info()[0] >> 20, flush=True)
sys.stdin.read()
"""


def test_gpu_out_of_memory_while_loading_is_an_error_or_a_fallback_as_the_setting_says(cluster):
    hog = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        left = hog.stdout.readline().strip()
        print("GPU memory left by the hog (MiB):", left)
        with cluster.connect() as c:
            c.execute("SET akidb.execution_providers = 'cuda'")
            code, msg, hint = error_of(c, "SELECT akidb_load_model(%s)", (MINILM,))
            print("load OOM, cuda alone:", code, msg, "| HINT:", hint)
            assert code == "53200" and "out of memory" in msg, (code, msg)
            assert c.execute("SELECT 1").fetchone()[0] == 1
        with cluster.connect() as c:
            seen = notices_of(c)
            c.execute("SET akidb.execution_providers = 'cuda,cpu'")
            assert c.execute("SELECT akidb_load_model(%s)", (MINILM,)).fetchone()[0] == "cpu"
            print("load OOM, cuda,cpu:", seen)
            assert any("runs on cpu" in m and "memory" in d for m, d in seen), seen
    finally:
        hog.stdin.close()
        hog.wait(30)
    with cluster.connect() as c:
        on_cuda(c)
