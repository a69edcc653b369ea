"""The shared embedding worker (akidb in shared_preload_libraries, akidb.embed_mode =
worker), on a cluster of its own: one model for all connections, results identical to
the per-backend mode, cancels, a killed worker, batches across connections."""
import os
import threading
import time

import psycopg
import pytest

from cluster import Cluster, threads_blocking_signals
from conftest import add_model

MINILM = "all-MiniLM-L6-v2"
TEXTS = ["how do I change a tire", "a library for parsing JSON", "Real-time strategy game of ancient warfare", "x"]


@pytest.fixture(scope="module")
def wcl(model_dir):
    # Few slots, so that concurrent clients also wait for a free one (backpressure).
    cl = Cluster("embed-worker", 55394).init(shared_preload_libraries="akidb", **{"akidb.model_path": model_dir,
                                                                                   "akidb.worker_slots": "4"})
    cl.start()
    with cl.connect() as c:
        c.execute("CREATE EXTENSION akidb")
    yield cl
    cl.stop(check=False)


def worker_pid(c, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        pid = c.execute("SELECT akidb_worker_pid()").fetchone()[0]
        if pid:
            return pid
        time.sleep(0.1)
    raise AssertionError("no embedding worker")


def test_the_worker_runs_under_its_name_and_owns_the_model(wcl):
    with wcl.connect() as c:
        pid = worker_pid(c)
        assert c.execute("SELECT backend_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0] == "akidb embedding worker"
        assert c.execute("SHOW akidb.embed_mode").fetchone()[0] == "worker"
        c.execute("SELECT embed('hello')")
        row = c.execute("SELECT runs_in, loaded, texts_embedded >= 1, batches >= 1 FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()
        assert row == ("worker", True, True, True)
        me = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        # The model (and ONNX Runtime) lives in the worker, not in this backend.
        assert "libonnxruntime" not in open(f"/proc/{me}/maps").read()
        assert "libonnxruntime" in open(f"/proc/{pid}/maps").read()
        # Its helper threads block the signals PostgreSQL handles; its main thread takes them.
        seen = threads_blocking_signals(pid)
        assert all(v for k, v in seen.items() if k[0] != pid), seen
        assert not seen[next(k for k in seen if k[0] == pid)]


def test_results_are_identical_to_the_backend_mode(wcl, model_dir):
    add_model(model_dir, "mock-32", {"provider": "mock", "dimensions": 32, "matryoshka_dims": [16], "query_prefix": "q: "})
    with wcl.connect() as c:
        for model in (MINILM, "mock-32"):
            got = {}
            for mode in ("worker", "backend"):
                c.execute(f"SET akidb.embed_mode = {mode}")
                got[mode] = (
                    [c.execute("SELECT embed(%s, %s)::text", (t, model)).fetchone()[0] for t in TEXTS],
                    [c.execute("SELECT embed_query(%s, %s)::text", (t, model)).fetchone()[0] for t in TEXTS],
                    c.execute("SELECT embed(%s::text[], %s)::text[]", (TEXTS + [None], model)).fetchone()[0],
                    c.execute("SELECT embed('matryoshka', %s, 16)::text", (model,)).fetchone()[0] if model == "mock-32" else None,
                )
            assert got["worker"] == got["backend"], model
        c.execute("RESET akidb.embed_mode")


def test_errors_come_back_with_their_sqlstate_and_other_models_keep_working(wcl, model_dir):
    add_model(model_dir, "broken", {"provider": "onnx", "dimensions": 8})  # no model file
    with wcl.connect() as c:
        for mode in ("backend", "worker"):
            c.execute(f"SET akidb.embed_mode = {mode}")
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT embed('x', 'broken')")
            codes = (e.value.sqlstate, str(e.value).splitlines()[0])
            if mode == "backend":
                expected = codes
            else:
                assert codes == expected
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT embed('x', %s, 7)", (MINILM,))
            assert e.value.sqlstate == "22023"
        c.execute("SET akidb.embed_mode = worker")
        assert c.execute("SELECT vector_dims(embed('still works'))").fetchone()[0] == 384


def test_a_cancelled_call_leaves_nothing_queued(wcl):
    with wcl.connect() as c:
        worker_pid(c)
        c.execute("SET statement_timeout = '300ms'")
        t0 = time.time()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT embed(array_agg(repeat('word ', 200))) FROM generate_series(1, 400)")
        assert time.time() - t0 < 5
        c.execute("RESET statement_timeout")
        assert c.execute("SELECT vector_dims(embed('after the cancel'))").fetchone()[0] == 384
        end = time.time() + 60
        while c.execute("SELECT queue_depth FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()[0] and time.time() < end:
            time.sleep(0.1)
        assert c.execute("SELECT queue_depth FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()[0] == 0


def test_concurrent_clients_share_batches_and_get_the_same_vectors(wcl):
    with wcl.connect() as c:
        c.execute("SET akidb.embed_mode = backend")
        alone = {t: c.execute("SELECT embed_query(%s)::text", (t,)).fetchone()[0] for t in TEXTS}
        before = c.execute("SELECT texts_embedded, batches FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()
    errors, got = [], []

    def client(k):
        try:
            with wcl.connect() as cc:
                for i in range(15):
                    t = TEXTS[(k + i) % len(TEXTS)]
                    got.append((t, cc.execute("SELECT embed_query(%s || '')::text", (t,)).fetchone()[0]))
        except Exception as e:  # noqa: BLE001 - counted below
            errors.append(repr(e))
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 120
    with wcl.connect() as c:
        after = c.execute("SELECT texts_embedded, batches FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()
    texts, batches = after[0] - (before[0] or 0), after[1] - (before[1] or 0)
    assert texts >= 120 - 8 * len(TEXTS)  # each backend's recent-embedding cache may answer repeats
    assert batches < texts, (texts, batches)
    # A text's vector does not depend on its batch companions (to float rounding: padding
    # changes the shapes the kernels run on).
    for t, v in got:
        a = [float(x) for x in v.strip("[]").split(",")]
        b = [float(x) for x in alone[t].strip("[]").split(",")]
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, t


def test_a_killed_worker_fails_its_requests_and_comes_back(wcl):
    with wcl.connect() as c:
        pid = worker_pid(c)
    result = {}

    def long_call():
        with wcl.connect() as cc:
            try:
                cc.execute("SELECT embed(array_agg(repeat('word ', 200) || i)) FROM generate_series(1, 600) i")
                result["ok"] = True
            except psycopg.Error as e:
                result["error"] = (e.sqlstate, str(e))
    t = threading.Thread(target=long_call)
    t.start()
    time.sleep(1.0)
    with wcl.connect() as c:
        c.execute("SELECT pg_terminate_backend(%s)", (pid,))
    t.join(60)
    assert not t.is_alive(), "the waiting call hangs"
    assert "error" in result, result
    assert "embedding worker" in result["error"][1], result
    with wcl.connect() as c:
        new = worker_pid(c)
        assert new != pid
        assert c.execute("SELECT vector_dims(embed('after the restart'))").fetchone()[0] == 384


def test_a_backend_that_exits_while_waiting_leaves_nothing_behind(wcl):
    with wcl.connect() as c:
        worker_pid(c)
    victim = wcl.connect()
    vpid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
    t = threading.Thread(target=lambda: pytest.raises(psycopg.Error, victim.execute,
                                                      "SELECT embed(array_agg(repeat('word ', 200) || i)) FROM generate_series(1, 400) i"))
    t.start()
    time.sleep(0.5)
    with wcl.connect() as c:
        c.execute("SELECT pg_terminate_backend(%s)", (vpid,))
        t.join(30)
        end = time.time() + 60
        while c.execute("SELECT queue_depth FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()[0] and time.time() < end:
            time.sleep(0.1)
        assert c.execute("SELECT queue_depth FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()[0] == 0
        # Every slot is free again: as many concurrent requests as slots still get through.
        assert c.execute("SELECT vector_dims(embed('next'))").fetchone()[0] == 384
    victim.close()


def test_without_preloading_calls_run_in_the_backend(conn):
    assert conn.execute("SELECT akidb_worker_pid()").fetchone()[0] is None  # loads akidb
    assert conn.execute("SHOW akidb.embed_mode").fetchone()[0] == "backend"
    conn.execute("SELECT embed('x')")
    runs_in = conn.execute("SELECT runs_in FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()[0]
    assert runs_in.startswith("backend (akidb is not in shared_preload_libraries")
