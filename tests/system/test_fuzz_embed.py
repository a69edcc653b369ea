"""A bounded property test of the embedding functions' SQL surface: random model names
(long, path-like, control characters, NULL), dims (negative, zero, huge, NULL), texts
(empty, long, odd Unicode) and arrays (empty, NULL elements, NULL itself, 2-D). Each call
either returns what the function promises (a vector of the right dimensions, an array of
the input's length with NULL where the input was NULL) or raises an ERROR whose SQLSTATE
is not an internal error and whose DETAIL carries no Rust backtrace (the server runs with
RUST_BACKTRACE=1, see scripts/system.sh); the backend survives every call.

AKIDB_FUZZ_SEED picks another seed, AKIDB_FUZZ_CASES the number of cases."""
import os
import random
import re

import psycopg
import pytest

from conftest import add_model, parse_vector, server_log

SEED = int(os.environ.get("AKIDB_FUZZ_SEED", "20261201"))
CASES = int(os.environ.get("AKIDB_FUZZ_CASES", "400"))


def deaths():
    return len(re.findall(r"terminated by signal|was terminated by exception", server_log()))


@pytest.fixture
def fuzz_models(model_dir):
    add_model(model_dir, "fz-mock", {"provider": "mock", "dimensions": 16, "matryoshka_dims": [4, 8]})
    return ["fz-mock", "", "all-MiniLM-L6-v2"]


def model_name(rng, real):
    return rng.choice(real * 3 + [None, "x" * rng.choice([1, 200, 255, 256, 300, 5000]), "../fz-mock", "fz-mock/",
                                  "fz-mock\x01", "FZ-MOCK", " fz-mock", ".hidden", "a\\b", "ü" * 100, "%s%n", "'; --"])


def dims(rng):
    return rng.choice([None, None, None, 0, 0, 4, 8, 16, 384, -1, -2147483648, 2147483647, 17, 3])


def text(rng):
    return rng.choice([None, "", " ", "hello", "how do I change a tire", "ü€😀" * 5, "a" * 20000, "\t\n",
                       "x" * rng.randint(1, 3000), "\\x00", "NULL", rng.choice("abc") * 3])


def expected_dims(model, d):
    full = {"fz-mock": 16, "": 384, "all-MiniLM-L6-v2": 384}[model]
    return full if d in (None, 0) else d


def test_random_embedding_calls_answer_or_raise_cleanly(conn, fuzz_models):
    rng = random.Random(SEED)
    before = deaths()
    outcomes = {"ok": 0, "error": 0}
    for case in range(CASES):
        model, d = model_name(rng, fuzz_models), dims(rng)
        kind = rng.choice(["embed", "embed_query", "array", "array"])
        if kind == "array":
            arr = rng.choice([None, [], [text(rng) for _ in range(rng.randint(1, 6))], [None, None]])
            sql, args = "SELECT embed(%s::text[], %s, %s)::text[]", (arr, model, d)
        else:
            arr = None
            sql, args = f"SELECT {kind}(%s, %s, %s)::text", (text(rng), model, d)
        if rng.random() < 0.2:
            # the short forms, with defaults
            sql = sql.replace(", %s, %s)", ")").replace(", %s)", ")")
            args = args[:1]
            model, d = "", None
        try:
            (got,) = conn.execute(sql, args).fetchone()
        except psycopg.Error as e:
            outcomes["error"] += 1
            detail = e.diag.message_detail or ""
            assert e.sqlstate and e.sqlstate[:2] != "XX", (sql, args, e.sqlstate, str(e))
            assert "backtrace" not in detail and ".rs:" not in detail, (sql, args, detail)
            conn.execute("SELECT 1")  # the backend is alive and usable
            continue
        outcomes["ok"] += 1
        if got is None:
            # strict functions: a NULL argument gives NULL
            assert None in args or (kind == "array" and arr is None), (sql, args)
            continue
        if kind == "array" and not arr:
            assert got == [] and model in fuzz_models, (sql, args)
            continue
        want = expected_dims(model, d)
        if kind == "array":
            assert len(got) == len(arr), (sql, args)
            for t, v in zip(arr, got):
                assert (v is None) == (t is None), (sql, args)
                if v is not None:
                    assert len(parse_vector(v)) == want, (sql, args)
        else:
            assert len(parse_vector(got)) == want, (sql, args, got[:50])
    assert deaths() == before, server_log()[-3000:]
    # the generator reaches both sides of the surface
    assert outcomes["ok"] > CASES // 5 and outcomes["error"] > CASES // 10, outcomes
