"""embed() in a real server: the default model against sentence-transformers, batches,
NULLs, errors and their SQLSTATEs, broken models, cancel and statement_timeout, the
mock provider, model management, and many short-lived backends."""
import json
import os
import threading
import time

import numpy as np
import psycopg
import pytest

from cluster import threads_blocking_signals
from conftest import REPO, add_model, connect, parse_vector, server_log, set_model_path

MINILM = "all-MiniLM-L6-v2"


def reference():
    r = json.load(open(os.path.join(REPO, "tests/embed/fixtures/minilm_reference.json"), encoding="utf-8"))
    return r["texts"], np.array(r["embeddings"])


def vec(conn, sql, params=()):
    return np.array(parse_vector(conn.execute(sql, params).fetchone()[0]))


def error_of(conn, sql, params=()):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, params)
    return e.value.sqlstate, e.value.diag.message_primary


def test_default_model_matches_sentence_transformers(conn):
    texts, ref = reference()
    for i, t in enumerate(texts):
        v = vec(conn, "SELECT embed(%s)::text", (t,))
        cos = float(v @ ref[i] / np.linalg.norm(v) / np.linalg.norm(ref[i]))
        assert cos >= 0.999, f"text {i} {t[:40]!r}: cosine {cos}"


def test_the_8_bit_model_stays_close_to_sentence_transformers_and_ranks_alike(conn):
    # all-MiniLM-L6-v2-q8 (models/README.md): installed beside the default model, its
    # vectors near the fp32 ones (dynamic quantisation with the full 8-bit range gave
    # cosine 0.90 on some of these texts) and every text's nearest other text the same.
    texts, ref = reference()
    q8 = np.array([vec(conn, "SELECT embed(%s, %s)::text", (t, MINILM + "-q8")) for t in texts])
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (q8 * ref).sum(1)
    assert cos.min() >= 0.97, f"text {int(cos.argmin())}: cosine {cos.min()}"
    assert np.abs(np.linalg.norm(q8, axis=1) - 1).max() < 1e-5
    a, b = q8 @ q8.T, ref @ ref.T
    np.fill_diagonal(a, -2)
    np.fill_diagonal(b, -2)
    # A text's nearest in the reference may be a tie (texts 15 and 16 agree in their first
    # 256 tokens, all the model reads, so they embed alike): any of the tied ones is the
    # same answer, whichever of them a model's rounding puts first.
    same = (b[np.arange(len(b)), a.argmax(1)] >= b.max(1) - 1e-6).mean()
    assert same >= 0.9, f"nearest neighbours agree for {same:.0%} of the texts"
    # Activations are quantised with one scale per batch, padding included: its manifest
    # embeds one text per inference, so a text's vector does not depend on its companions.
    batch = conn.execute("SELECT v::text FROM unnest(embed(%s::text[], %s)) WITH ORDINALITY AS u(v, i) ORDER BY i",
                         (texts, MINILM + "-q8")).fetchall()
    assert np.abs(np.array([parse_vector(v) for (v,) in batch]) - q8).max() < 1e-6
    row = conn.execute("SELECT loaded, execution_provider FROM akidb.models WHERE name = %s", (MINILM + "-q8",)).fetchone()
    assert row == (True, "cpu")


def test_batch_equals_single_and_nulls_stay_in_place(conn):
    texts, _ = reference()
    with_nulls = texts[:5] + [None] + texts[5:]
    rows = conn.execute("SELECT v::text FROM unnest(embed(%s::text[])) WITH ORDINALITY AS u(v, i) ORDER BY i",
                        (with_nulls,)).fetchall()
    assert len(rows) == len(with_nulls)
    assert rows[5][0] is None
    for t, (v,) in zip(with_nulls, rows):
        if t is None:
            continue
        single = vec(conn, "SELECT embed(%s)::text", (t,))
        assert np.abs(np.array(parse_vector(v)) - single).max() < 1e-5


def test_null_in_null_out_and_the_function_properties(conn):
    assert conn.execute("SELECT embed(NULL::text), embed_query(NULL::text), embed(NULL::text[])").fetchone() == (None, None, None)
    assert conn.execute("SELECT embed(ARRAY[NULL]::text[])::text").fetchone()[0] == '{NULL}'
    assert conn.execute("SELECT cardinality(embed('{}'::text[]))").fetchone()[0] == 0
    assert conn.execute("SELECT vector_dims(embed(''))").fetchone()[0] == 384
    props = conn.execute("""SELECT DISTINCT provolatile, proisstrict, proparallel FROM pg_proc
                            WHERE proname IN ('embed', 'embed_query')""").fetchall()
    assert props == [("i", True, "s")]
    # Symmetric model: query and document forms agree.
    q = vec(conn, "SELECT embed_query('brake pads')::text")
    d = vec(conn, "SELECT embed('brake pads')::text")
    assert np.abs(q - d).max() < 1e-6


def test_embed_feeds_a_generated_column_and_an_expression_index(conn):
    conn.execute("DROP TABLE IF EXISTS gen")
    conn.execute(f"""CREATE TABLE gen (body text, v vector(384)
                     GENERATED ALWAYS AS (embed(body, '{MINILM}')) STORED)""")
    conn.execute("INSERT INTO gen(body) VALUES ('how to bleed brakes'), ('engine oil capacity'), (NULL)")
    conn.execute(f"CREATE INDEX ON gen ((embed(body, '{MINILM}') <-> '[{','.join(['0'] * 384)}]'))")
    best = conn.execute("SELECT body FROM gen WHERE v IS NOT NULL ORDER BY v <=> embed_query('brake fluid') LIMIT 1").fetchone()[0]
    assert best == "how to bleed brakes"
    assert conn.execute("SELECT count(*) FROM gen WHERE v IS NULL").fetchone()[0] == 1
    conn.execute("DROP TABLE gen")


def test_errors_have_the_right_sqlstate_and_the_backend_survives(conn):
    code, msg = error_of(conn, "SELECT embed('x', 'no-such-model')")
    assert code == "42704" and "no-such-model" in msg
    code, msg = error_of(conn, f"SELECT embed('x', '{MINILM}', 128)")
    assert code == "22023" and "not a Matryoshka model" in msg
    code, msg = error_of(conn, "SELECT embed('x', dims => -3)")
    assert code == "22023"
    code, msg = error_of(conn, "SELECT embed('x', '../etc')")
    assert code == "42704"
    conn.execute("SET akidb.default_model = ''")
    code, msg = error_of(conn, "SELECT embed('x')")
    assert code == "22023" and "akidb.default_model" in msg
    conn.execute("RESET akidb.default_model")
    assert conn.execute("SELECT vector_dims(embed('still here'))").fetchone()[0] == 384


def test_models_view_load_and_unload(conn):
    notices = []
    # A notice's fields are only readable inside the handler: copy them.
    conn.add_notice_handler(lambda d: notices.append((d.message_primary or "", d.message_detail or "")))
    conn.execute("SELECT akidb_unload_model(%s)", (MINILM,))
    row = conn.execute("SELECT loaded, execution_provider FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()
    assert row == (False, None)
    assert conn.execute("SELECT akidb_load_model(%s)", (MINILM,)).fetchone()[0] == "cpu"
    # Fell back from tensorrt and cuda, and said why.
    assert any("runs on cpu" in msg and "tensorrt" in detail and "cuda" in detail for msg, detail in notices), notices
    row = conn.execute("""SELECT provider, dimensions, pooling, max_tokens, loaded, execution_provider,
                                 load_ms, memory_bytes FROM akidb.models WHERE name = %s""", (MINILM,)).fetchone()
    assert row[:6] == ("onnx", 384, "mean", 256, True, "cpu")
    assert row[6] > 0 and row[7] > 10_000_000
    assert conn.execute("SELECT akidb_unload_model(%s), akidb_unload_model(%s)", (MINILM, MINILM)).fetchone() == (True, False)
    conn.execute("SET akidb.execution_providers = 'cpu'")
    notices.clear()
    assert conn.execute("SELECT akidb_load_model(%s)", (MINILM,)).fetchone()[0] == "cpu"
    assert not any("runs on" in msg for msg, _ in notices)
    conn.execute("SELECT akidb_unload_model(%s)", (MINILM,))
    # An unknown provider is refused when it is set (the library is loaded by now).
    before = conn.execute("SHOW akidb.execution_providers").fetchone()[0]
    code, msg = error_of(conn, "SET akidb.execution_providers = 'cuda,gpu'")
    assert code == "22023" and "akidb.execution_providers" in msg
    assert conn.execute("SHOW akidb.execution_providers").fetchone()[0] == before


def test_mock_provider_prefixes_and_matryoshka(conn, model_dir):
    add_model(model_dir, "mock-64", {"provider": "mock", "dimensions": 64, "matryoshka_dims": [16, 32],
                                      "query_prefix": "query: "})
    a = vec(conn, "SELECT embed('hello', 'mock-64')::text")
    assert len(a) == 64 and abs(np.linalg.norm(a) - 1) < 1e-6
    assert np.array_equal(a, vec(conn, "SELECT embed('hello', 'mock-64')::text"))
    assert not np.array_equal(a, vec(conn, "SELECT embed('hello!', 'mock-64')::text"))
    q = vec(conn, "SELECT embed_query('hello', 'mock-64')::text")
    assert not np.array_equal(a, q)
    assert np.array_equal(q, vec(conn, "SELECT embed('query: hello', 'mock-64')::text"))
    t = vec(conn, "SELECT embed('hello', 'mock-64', 16)::text")
    assert len(t) == 16 and abs(np.linalg.norm(t) - 1) < 1e-6
    # Truncation is the first dims values, renormalised.
    assert np.abs(t - a[:16] / np.linalg.norm(a[:16])).max() < 1e-6
    code, msg = error_of(conn, "SELECT embed('hello', 'mock-64', 20)")
    assert code == "22023" and "16, 32, 64" in msg
    rows = conn.execute("SELECT array_length(embed(ARRAY['a','b',NULL], 'mock-64', 32), 1)").fetchone()
    assert rows == (3,)


def broken_models(model_dir):
    src = os.path.join(REPO, "models", MINILM)
    manifest = json.load(open(os.path.join(src, "akidb.json")))
    tok = json.load(open(os.path.join(src, "tokenizer.json")))
    tok["added_tokens"].append({"id": 40000, "content": "[BEYOND]", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    onnx, tj = os.path.join(src, "model.onnx"), os.path.join(src, "tokenizer.json")
    add_model(model_dir, "bad-missing", manifest, {"tokenizer.json": tj})
    add_model(model_dir, "bad-corrupt", manifest, {"model.onnx": b"\x08\x07garbage" * 100, "tokenizer.json": tj})
    add_model(model_dir, "bad-shape", dict(manifest, dimensions=768), {"model.onnx": onnx, "tokenizer.json": tj})
    add_model(model_dir, "bad-vocab", manifest, {"model.onnx": onnx, "tokenizer.json": json.dumps(tok).encode()})
    add_model(model_dir, "bad-manifest", '{"dimensions": 384, "poolin": "mean"}')
    return {
        "bad-missing": ("58P01", "model.onnx"),
        "bad-corrupt": ("F0000", "model.onnx"),
        "bad-shape": ("F0000", "model.onnx"),
        "bad-vocab": ("F0000", "tokenizer.json"),
        "bad-manifest": ("F0000", "akidb.json"),
    }


def test_each_bad_model_is_an_error_naming_model_and_file(conn, model_dir):
    cases = broken_models(model_dir)
    for name, (sqlstate, file) in cases.items():
        code, msg = error_of(conn, "SELECT embed('x', %s)", (name,))
        assert code == sqlstate and f'"{name}"' in msg and file in msg, (name, code, msg)
        # Same backend: other models keep working.
        assert conn.execute(f"SELECT vector_dims(embed('x', '{MINILM}'))").fetchone()[0] == 384
    listed = dict(conn.execute("SELECT name, error FROM akidb.models").fetchall())
    assert "unknown field `poolin`" in listed["bad-manifest"]
    assert listed[MINILM] is None


LONG = "The service manual says to torque the wheel nuts in a star pattern, twice. " * 12


def test_statement_timeout_stops_a_long_embed(conn):
    conn.execute(f"SELECT akidb_load_model('{MINILM}')")
    conn.execute("SET statement_timeout = '300ms'")
    t0 = time.monotonic()
    code, msg = error_of(conn, "SELECT embed(array_fill(%s::text, ARRAY[4000]))", (LONG,))
    took = time.monotonic() - t0
    conn.execute("RESET statement_timeout")
    assert code == "57014" and "statement timeout" in msg
    assert took < 0.3 + 0.7, f"stopped after {took:.2f} s"
    assert conn.execute("SELECT vector_dims(embed('after the timeout'))").fetchone()[0] == 384


def test_pg_cancel_backend_stops_a_long_embed(conn):
    conn.execute(f"SELECT akidb_load_model('{MINILM}')")
    pid = conn.info.backend_pid
    stamps = {}

    def cancel():
        time.sleep(0.5)
        with connect() as other:
            stamps["sent"] = time.monotonic()
            other.execute("SELECT pg_cancel_backend(%s)", (pid,))

    th = threading.Thread(target=cancel)
    th.start()
    code, msg = error_of(conn, "SELECT embed(array_fill(%s::text, ARRAY[4000]))", (LONG,))
    stopped = time.monotonic()
    th.join()
    assert code == "57014" and "canceling statement due to user request" in msg
    assert stopped - stamps["sent"] < 0.7, f"{stopped - stamps['sent']:.2f} s after the cancel"
    assert conn.execute("SELECT vector_dims(embed('after the cancel'))").fetchone()[0] == 384


def test_twenty_backends_embed_and_disconnect_without_a_crash(model_dir):
    before = len(server_log())
    errors = []

    def backend(i):
        try:
            with connect() as c:
                set_model_path(c, model_dir)
                c.execute("SET akidb.execution_providers = 'cpu'")
                v = c.execute("SELECT vector_dims(embed(%s)), vector_dims((embed(%s::text[]))[1])",
                              (f"backend {i}", [f"text {i}", "x"])).fetchone()
                assert v == (384, 384)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    for wave in range(4):
        threads = [threading.Thread(target=backend, args=(wave * 5 + i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    time.sleep(0.5)
    log = server_log()[before:]
    for bad in ("terminated by signal", "was terminated", "PANIC", "server process", "core dumped", "TRAP"):
        assert bad not in log, log[-3000:]
    with connect() as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_qwen3_recipe_matches_pytorch_through_sql(conn, model_dir):
    """Left padding, last-token pooling, query instruction and Matryoshka dims, in SQL."""
    fx = os.path.join(REPO, "tests/embed/fixtures/qwen3-tiny")
    add_model(model_dir, "qwen3-tiny", open(os.path.join(fx, "akidb.json")).read(),
              {"model.onnx": os.path.join(fx, "model.onnx"), "tokenizer.json": os.path.join(fx, "tokenizer.json")})
    r = json.load(open(os.path.join(fx, "reference.json"), encoding="utf-8"))
    for text, kind, ref in zip(r["texts"], r["kinds"], r["embeddings"]):
        fn = "embed_query" if kind == "query" else "embed"
        v = vec(conn, f"SELECT {fn}(%s, 'qwen3-tiny')::text", (text,))
        assert np.abs(v - np.array(ref)).max() < 1e-5, (kind, text[:30])
    docs = [t for t, k in zip(r["texts"], r["kinds"]) if k == "document"]
    refs = [e for e, k in zip(r["embeddings"], r["kinds"]) if k == "document"]
    rows = conn.execute("SELECT v::text FROM unnest(embed(%s::text[], 'qwen3-tiny', 6)) WITH ORDINALITY u(v, i) ORDER BY i",
                        (docs,)).fetchall()
    for (v,), ref in zip(rows, refs):
        want = np.array(ref[:6]) / np.linalg.norm(ref[:6])
        assert np.abs(np.array(parse_vector(v)) - want).max() < 1e-5


def non_finite_model():
    """An 8-d "model" whose token states are finite unless the text has a token with an id
    above 5,000 (sqrt of a negative: NaN, in dims 0-3) or the token 1996, "the" (1/0: an
    infinity, in dims 4-7): what an fp16 overflow or a broken export looks like."""
    import onnx
    from onnx import TensorProto, helper
    c = lambda name, v: helper.make_tensor(name, TensorProto.FLOAT, [], [v])  # noqa: E731
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", "axis2"], ["f3"]),
        helper.make_node("Sub", ["c5000", "f3"], ["a"]),
        helper.make_node("Sqrt", ["a"], ["nan_if_big"]),
        helper.make_node("Sub", ["f3", "c1996"], ["d"]),
        helper.make_node("Reciprocal", ["d"], ["inf_if_the"]),
        helper.make_node("Concat", ["nan_if_big"] * 4 + ["inf_if_the"] * 4, ["last_hidden_state"], axis=2),
    ]
    graph = helper.make_graph(
        nodes, "non_finite",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", 8])],
        initializer=[c("c5000", 5000.0), c("c1996", 1996.0),
                     helper.make_tensor("axis2", TensorProto.INT64, [1], [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_non_finite_output_is_an_error_never_a_vector(conn, model_dir):
    tok = os.path.join(REPO, "models", "all-MiniLM-L6-v2", "tokenizer.json")
    add_model(model_dir, "non-finite", {"provider": "onnx", "dimensions": 8, "pooling": "mean", "normalize": False,
                                        "max_tokens": 32, "onnx": {"model_file": "model.onnx", "tokenizer_file": "tokenizer.json"}},
              {"model.onnx": non_finite_model(), "tokenizer.json": tok})
    # "a" and "of" are ids 1037 and 1997: a finite vector.
    v = vec(conn, "SELECT embed('a of', 'non-finite')::text")
    assert len(v) == 8 and all(np.isfinite(v))
    for text, what in [("hello", "NaN"), ("the", "inf")]:
        code, msg = error_of(conn, "SELECT embed(%s, 'non-finite')", (text,))
        assert code == "38000" and '"non-finite"' in msg and what in msg, (code, msg)
    # in a batch the error names the text; nothing is stored
    conn.execute("CREATE TEMP TABLE nf (t text, v vector(8))")
    code, msg = error_of(conn, "INSERT INTO nf SELECT t, embed(t, 'non-finite') FROM unnest(ARRAY['a', 'of', 'hello']) t")
    assert code == "38000"
    code, msg = error_of(conn, "SELECT embed(ARRAY['a', 'of', 'hello'], 'non-finite')")
    assert code == "38000" and "text 3 of 3" in msg, msg
    assert conn.execute("SELECT count(*) FROM nf").fetchone()[0] == 0
    assert len(vec(conn, "SELECT embed('of', 'non-finite')::text")) == 8  # the backend and the model go on


def test_every_thread_but_the_backends_own_blocks_postgres_signals(conn):
    """After a load, an embed(text[]) and a cancelled call, each thread of the backend other
    than its main one (ONNX Runtime's pool, the watchdog, providers' threads) has every
    signal PostgreSQL handles blocked, so the handlers only ever run on the main thread."""
    conn.execute("SET akidb.onnx_threads = 2")
    conn.execute("SELECT akidb_unload_model(%s)", (MINILM,))
    conn.execute("SELECT embed(ARRAY['one', 'two', 'three'], %s)", (MINILM,))
    conn.execute("SET statement_timeout = '50ms'")
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT embed(array_agg(repeat('word ', 200))) FROM generate_series(1, 400)")
    conn.execute("RESET statement_timeout")
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    seen = threads_blocking_signals(pid)
    others = {k: v for k, v in seen.items() if k[0] != pid}
    assert len(others) >= 2, seen  # at least the intra-op pool thread and the watchdog
    assert all(others.values()), seen
    assert not seen[next(k for k in seen if k[0] == pid)], "the main thread must take signals"


def test_debug1_says_where_an_embedding_calls_time_went(conn):
    seen = []
    conn.add_notice_handler(lambda d: seen.append(d.message_primary or ""))
    conn.execute("SELECT akidb_load_model(%s)", (MINILM,))
    conn.execute("SELECT embed(ARRAY['one text', 'and a second, longer text'], %s)", (MINILM,))
    assert not any("tokenising" in m for m in seen), "silent at the default client_min_messages"
    conn.execute("SET client_min_messages = debug1")
    conn.execute("SELECT embed(ARRAY['one text', 'and a second, longer text'], %s)", (MINILM,))
    conn.execute("RESET client_min_messages")
    msg = next(m for m in seen if "tokenising" in m)
    assert f'"{MINILM}" on cpu: 2 texts' in msg and "1 batches" in msg and "inference" in msg and "pooling" in msg, msg
    tokens = int(msg.split(" tokens")[0].rsplit(" ", 1)[1])
    assert tokens == 4 + 8, msg  # [CLS] one text [SEP]; [CLS] and a second , longer text [SEP]
