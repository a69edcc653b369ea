"""pgvector compatibility, against the real thing.

Runs on a PostgreSQL 18 server that has both pgvector 0.8.6 (schema `pgv`) and akidb
(schema `aki`) installed in one database, plus a database with akidb alone for the
client adapter. Started by scripts/compat.sh, which passes the connection in PG* env vars.
"""
import os
import random
import struct

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

BOTH_DB = "compat_both"
AKIDB_DB = "compat_akidb"


def connect(dbname, search_path=None):
    options = f"-c search_path={search_path},public" if search_path else ""
    return psycopg.connect(dbname=dbname, autocommit=True, options=options)


@pytest.fixture(scope="module")
def both():
    """One connection per extension (a session's prepared statements are bound to the
    types its search_path resolved, so the two must not share one)."""
    with connect(BOTH_DB, "pgv") as pgv, connect(BOTH_DB, "aki") as aki:
        yield {"pgv": pgv, "aki": aki}


def random_vector_text(rng, dims):
    """Texts exercising the float formatting corners: tiny, huge, negative zero, ties."""
    parts = []
    for _ in range(dims):
        kind = rng.random()
        if kind < 0.5:
            v = rng.uniform(-1, 1)
        elif kind < 0.7:
            v = rng.uniform(-1e6, 1e6)
        elif kind < 0.8:
            v = struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0]
            if v != v or v in (float("inf"), float("-inf")):
                v = 1.0
        elif kind < 0.9:
            v = rng.choice([0.0, -0.0, 1e-45, 3.4028235e38, 1e-7, 123456789.0, 0.1])
        else:
            v = rng.randint(-1000, 1000)
        parts.append(repr(v))
    sep = rng.choice([",", ", ", " ,"])
    return "[" + sep.join(parts) + "]"


def in_schema(conns, schema, sql, params=()):
    return conns[schema].execute(sql, params).fetchall()


def outcome(conn, schema, sql, params=()):
    """The rows, or the SQLSTATE and message of the error."""
    try:
        return ("ok", in_schema(conn, schema, sql, params))
    except psycopg.Error as e:
        return ("error", e.sqlstate, str(e.diag.message_primary))


def test_text_output_is_identical(both):
    rng = random.Random(1)
    texts = [random_vector_text(rng, rng.choice([1, 3, 17, 384])) for _ in range(300)]
    for t in texts:
        a = in_schema(both, "pgv", "SELECT %s::vector::text", (t,))
        b = in_schema(both, "aki", "SELECT %s::vector::text", (t,))
        assert a == b, t


# (SQL, tolerance): None means the outputs must be identical as text.
FUNCTION_CASES = [
    ("SELECT (%s::vector + %s::vector)::text", None),
    ("SELECT (%s::vector - %s::vector)::text", None),
    ("SELECT (%s::vector * %s::vector)::text", None),
    ("SELECT (%s::vector || %s::vector)::text", None),
    ("SELECT (%s::vector < %s::vector)::text", None),
    ("SELECT (%s::vector = %s::vector)::text", None),
    ("SELECT vector_cmp(%s::vector, %s::vector)::text", None),
    ("SELECT l2_distance(%s::vector, %s::vector)", 1e-6),
    ("SELECT %s::vector <-> %s::vector", 1e-6),
    ("SELECT inner_product(%s::vector, %s::vector)", 1e-6),
    ("SELECT %s::vector <#> %s::vector", 1e-6),
    ("SELECT cosine_distance(%s::vector, %s::vector)", 1e-6),
    ("SELECT %s::vector <=> %s::vector", 1e-6),
    ("SELECT l1_distance(%s::vector, %s::vector)", 1e-6),
    ("SELECT %s::vector <+> %s::vector", 1e-6),
]

UNARY_CASES = [
    "SELECT vector_dims(%s::vector)::text",
    "SELECT l2_normalize(%s::vector)::text",
    "SELECT subvector(%s::vector, 2, 3)::text",
    "SELECT (%s::vector)::real[]::text",
    "SELECT ((%s::vector)::real[]::float8[]::vector)::text",
    "SELECT round(vector_norm(%s::vector)::numeric, 9)::text",
]


def close(a, b, tol):
    if a is None or b is None or a != a or b != b:
        return (a is None and b is None) or (a != a and b != b)
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def test_functions_and_operators_agree(both):
    rng = random.Random(2)
    for _ in range(150):
        dims = rng.choice([1, 2, 3, 8, 17, 100])
        # small magnitudes so that arithmetic stays in range and distances are meaningful
        x = "[" + ",".join(str(round(rng.uniform(-10, 10), 4)) for _ in range(dims)) + "]"
        y = "[" + ",".join(str(round(rng.uniform(-10, 10), 4)) for _ in range(dims)) + "]"
        for sql, tol in FUNCTION_CASES:
            a = outcome(both, "pgv", sql, (x, y))
            b = outcome(both, "aki", sql, (x, y))
            if tol is None or a[0] == "error":
                assert a == b, (sql, x, y)
            else:
                assert b[0] == "ok" and close(a[1][0][0], b[1][0][0], tol), (sql, x, y, a, b)
        for sql in UNARY_CASES:
            assert outcome(both, "pgv", sql, (x,)) == outcome(both, "aki", sql, (x,)), (sql, x)


BAD_INPUTS = [
    "SELECT '[1,2,]'::vector", "SELECT '1,2'::vector", "SELECT '[1,2] x'::vector",
    "SELECT '[]'::vector", "SELECT '[NaN]'::vector", "SELECT '[Infinity]'::vector",
    "SELECT '[1e39]'::vector", "SELECT '[1,2,3]'::vector(2)", "SELECT '[1]'::vector(0)",
    "SELECT '[1]'::vector(16001)", "SELECT '[1,2]'::vector <-> '[1,2,3]'",
    "SELECT '[3e38]'::vector + '[3e38]'", "SELECT '[1e-30]'::vector * '[1e-30]'",
    "SELECT subvector('[1,2]'::vector, 3, 1)", "SELECT '{1,NULL}'::real[]::vector",
    "SELECT '{{1,2},{3,4}}'::real[]::vector", "SELECT '{NaN}'::float8[]::vector",
    "SELECT array_fill(1::real, ARRAY[16001])::vector",
    "SELECT '{1e400}'::numeric[]::vector", "SELECT '{1.5,-2}'::numeric[]::vector::text",
    "SELECT avg(v) FROM (VALUES ('[1,2]'::vector), ('[3]')) t(v)",
    "SELECT avg(v)::text, sum(v)::text FROM (VALUES ('[1,2]'::vector), ('[3,4.5]')) t(v)",
]


@pytest.mark.parametrize("sql", BAD_INPUTS)
def test_errors_and_edge_cases_agree(both, sql):
    assert outcome(both, "pgv", sql) == outcome(both, "aki", sql)


def copy_binary(conn, src, dst):
    with conn.cursor() as cur:
        with cur.copy(f"COPY {src} TO STDOUT (FORMAT binary)") as out:
            data = b"".join(bytes(chunk) for chunk in out)
        with cur.copy(f"COPY {dst} FROM STDIN (FORMAT binary)") as inp:
            inp.write(data)
    return data


def test_copy_binary_moves_data_both_ways(both):
    rng = random.Random(3)
    both = both["pgv"]
    both.execute("DROP TABLE IF EXISTS pgv.t, aki.t, pgv.t2")
    both.execute("CREATE TABLE pgv.t (id int, v pgv.vector)")
    both.execute("CREATE TABLE aki.t (id int, v aki.vector)")
    both.execute("CREATE TABLE pgv.t2 (id int, v pgv.vector)")
    rows = [(i, random_vector_text(rng, rng.choice([1, 3, 384, 2000]))) for i in range(200)]
    rows.append((999, None))
    with both.cursor() as cur:
        cur.executemany("INSERT INTO pgv.t VALUES (%s, %s::pgv.vector)", rows)
    out1 = copy_binary(both, "pgv.t", "aki.t")        # pgvector -> akidb
    out2 = copy_binary(both, "aki.t", "pgv.t2")       # akidb -> pgvector
    assert out1 == out2, "binary COPY bytes differ between the two extensions"
    src = both.execute("SELECT id, v::text FROM pgv.t ORDER BY id").fetchall()
    mid = both.execute("SELECT id, v::text FROM aki.t ORDER BY id").fetchall()
    back = both.execute("SELECT id, v::text FROM pgv.t2 ORDER BY id").fetchall()
    assert src == mid == back
    assert len(src) == 201


@pytest.mark.parametrize("binary", [False, True])
def test_pgvector_python_adapter_round_trips_numpy(binary):
    rng = np.random.default_rng(4)
    with connect(AKIDB_DB) as conn:
        register_vector(conn)
        conn.execute("DROP TABLE IF EXISTS items")
        conn.execute("CREATE TABLE items (id int, embedding vector(384))")
        vecs = rng.standard_normal((50, 384)).astype(np.float32)
        with conn.cursor(binary=binary) as cur:
            for i, v in enumerate(vecs):
                cur.execute("INSERT INTO items VALUES (%s, %s)", (i, v), binary=binary)
            cur.execute("SELECT id, embedding FROM items ORDER BY id", binary=binary)
            got = cur.fetchall()
            assert len(got) == 50
            for (i, e), v in zip(got, vecs):
                e = e.to_numpy() if hasattr(e, "to_numpy") else e
                assert e.dtype == np.float32 and np.array_equal(e, v), i
            # and a nearest-neighbour query with a numpy parameter
            cur.execute("SELECT id FROM items ORDER BY embedding <-> %s LIMIT 1", (vecs[7],), binary=binary)
            assert cur.fetchone()[0] == 7
