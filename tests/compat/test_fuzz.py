"""A bounded property test of the vector type's SQL surface against pgvector 0.8.6:
random and mutated inputs to every function and operator both extensions have, to casts,
typmods and the index options. Each call must give what pgvector gives (the same rows, or
an ERROR with the same SQLSTATE and message), no error may carry a Rust backtrace (the
server runs with RUST_BACKTRACE=1, see scripts/compat.sh), and no backend may die.

AKIDB_FUZZ_SEED picks another seed, AKIDB_FUZZ_CASES the number of cases per test."""
import os
import random
import re

import psycopg
import pytest

from test_pgvector_compat import both  # noqa: F401  (fixture)
from test_pgvector_statements import for_ext, norm, run, same

SEED = int(os.environ.get("AKIDB_FUZZ_SEED", "20261201"))
CASES = int(os.environ.get("AKIDB_FUZZ_CASES", "1500"))


def server_log():
    p = os.environ.get("AKIDB_SERVER_LOG")
    return open(p, encoding="utf-8", errors="replace").read() if p else ""


def deaths():
    return len(re.findall(r"terminated by signal|was terminated by exception|server process .* exited", server_log()))


@pytest.fixture
def watched(both):  # noqa: F811
    assert os.environ.get("AKIDB_SERVER_LOG"), "scripts/compat.sh passes the server log"
    before = deaths()
    yield both
    assert deaths() == before, "a backend died:\n" + server_log()[-3000:]


NUMBERS = ["0", "-0", "1", "-1", "1.5", ".5", "5.", "1e5", "1e-5", "3.4e38", "3.5e38", "-3.5e38", "1e-45", "1e-46",
           "1e39", "nan", "NaN", "inf", "-Infinity", "0x10", "0x1p-3", "-0X1.8p1", "0x1p200", "123456789", "0.1",
           "2147483648", "1e308", "1e-400", "+7"]
JUNK = list("[],.-+eExXpP0123456789 \t\n") + ["nan", "inf", "{", "}", "'", '"', "\\", "\x01", "é", "1,2", "]["]


def vector_text(rng):
    n = rng.choice([1, 1, 2, 3, 3, 5, 16, 100])
    parts = [rng.choice(NUMBERS) if rng.random() < 0.3 else repr(round(rng.uniform(-100, 100), rng.randint(0, 6)))
             for _ in range(n)]
    seps = [rng.choice([",", ", ", " ,", ",\t"]) for _ in parts]
    text = "[" + "".join(p + s for p, s in zip(parts, seps))[:-len(seps[-1])] + "]"
    if rng.random() < 0.35:  # mutate: insert, delete or replace a few characters
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(chars) + 1)
            op = rng.random()
            if op < 0.4:
                chars.insert(k, rng.choice(JUNK))
            elif op < 0.7 and chars:
                del chars[min(k, len(chars) - 1)]
            elif chars:
                chars[min(k, len(chars) - 1)] = rng.choice(JUNK)
        text = "".join(chars)
    return text


def array_literal(rng):
    kind = rng.random()
    if kind < 0.1:
        return "{}"
    if kind < 0.2:
        return "{{" + ",".join(rng.choice(NUMBERS[:6]) for _ in range(2)) + "},{1,2}}"
    items = [rng.choice(["NULL"] + NUMBERS) if rng.random() < 0.25 else str(rng.randint(-1000, 1000))
             for _ in range(rng.choice([1, 2, 3, 8]))]
    return "{" + ",".join(items) + "}"


def typmod(rng):
    return rng.choice(["1", "2", "3", "16000", "16001", "0", "-1", "99999999999", "'a'", "1.5", "3, 3", "'3'"])


# (template, argument kinds): v = vector text, a = array literal, i = small integer, t = typmod
SURFACE = [
    ("SELECT %s::vector::text", "v"),
    ("SELECT %s::vector({t})::text", "vt"),
    ("SELECT (%s::vector + %s::vector)::text", "vv"),
    ("SELECT (%s::vector - %s::vector)::text", "vv"),
    ("SELECT (%s::vector * %s::vector)::text", "vv"),
    ("SELECT (%s::vector || %s::vector)::text", "vv"),
    ("SELECT %s::vector < %s::vector, %s::vector = %s::vector", "vvvv"),
    ("SELECT vector_cmp(%s::vector, %s::vector)", "vv"),
    ("SELECT l2_distance(%s::vector, %s::vector), %s::vector <-> %s::vector", "vvvv"),
    ("SELECT inner_product(%s::vector, %s::vector), %s::vector <#> %s::vector", "vvvv"),
    ("SELECT cosine_distance(%s::vector, %s::vector), %s::vector <=> %s::vector", "vvvv"),
    ("SELECT l1_distance(%s::vector, %s::vector), %s::vector <+> %s::vector", "vvvv"),
    ("SELECT vector_dims(%s::vector), vector_norm(%s::vector)", "vv"),
    ("SELECT l2_normalize(%s::vector)::text", "v"),
    ("SELECT subvector(%s::vector, %s::int, %s::int)::text", "vii"),
    ("SELECT %s::real[]::vector::text", "a"),
    ("SELECT %s::int[]::vector::text", "a"),
    ("SELECT %s::float8[]::vector::text", "a"),
    ("SELECT %s::numeric[]::vector::text", "a"),
    ("SELECT %s::real[]::vector({t})::text", "at"),
    ("SELECT %s::vector::real[]::text", "v"),
    ("SELECT vector_accum(%s::float8[], %s::vector)::text", "av"),
    ("SELECT vector_combine(%s::float8[], %s::float8[])::text", "aa"),
    ("SELECT vector_avg(%s::float8[])::text", "a"),
    ("SELECT avg(v)::text, sum(v)::text FROM unnest(ARRAY[%s::vector, %s::vector, NULL]) v", "vv"),
]


def arguments(rng, kinds):
    args, mods = [], []
    for k in kinds:
        if k == "v":
            args.append(vector_text(rng))
        elif k == "a":
            args.append(array_literal(rng))
        elif k == "i":
            args.append(rng.choice([0, 1, 2, 3, -1, -2147483648, 2147483647, 16000, rng.randint(-5, 20)]))
        elif k == "t":
            mods.append(typmod(rng))
    return args, mods


def outcome(conn, sql, args):
    try:
        return ("ok", norm(conn.execute(sql, args).fetchall()))
    except psycopg.Error as e:
        return ("error", e.sqlstate, norm(e.diag.message_primary), e.diag.message_detail)


def test_random_and_mutated_calls_answer_as_pgvector(watched):
    rng = random.Random(SEED)
    diffs, errors = [], 0
    for _ in range(CASES):
        template, kinds = rng.choice(SURFACE)
        args, mods = arguments(rng, kinds)
        sql = template.replace("{t}", mods[0]) if mods else template
        a, b = outcome(watched["pgv"], sql, args), outcome(watched["aki"], sql, args)
        if b[0] == "error":
            errors += 1
            assert "backtrace" not in (b[3] or "") and ".rs:" not in (b[3] or ""), (sql, args, b)
        # pgvector's DETAIL is not compared (it has none where akidb adds one)
        if not same(a[:3], b[:3]):
            diffs.append((sql, args, a, b))
    assert not diffs, "\n".join(map(str, diffs[:20]))
    # the generator reaches both sides of the surface
    assert 0.1 * CASES < errors < 0.9 * CASES, errors


def test_random_index_options_and_scans(watched):
    rng = random.Random(SEED + 1)
    for ext in ("pgv", "aki"):
        watched[ext].execute("DROP TABLE IF EXISTS fz")
        watched[ext].execute("CREATE TABLE fz (id int, v vector(4))")
        watched[ext].execute("INSERT INTO fz SELECT g, ARRAY[g % 7, g % 5, g % 3, g]::real[]::vector FROM generate_series(1, 60) g")
        watched[ext].execute("INSERT INTO fz VALUES (0, NULL), (-1, '[0,0,0,0]')")
    ops = [("vector_l2_ops", "<->"), ("vector_ip_ops", "<#>"), ("vector_cosine_ops", "<=>"), ("vector_l1_ops", "<+>")]
    for case in range(60):
        opclass, op = rng.choice(ops)
        opts = []
        if rng.random() < 0.8:
            opts.append(f"m = {rng.choice([0, 1, 2, 3, 4, 8, 16, 50, 100, 101, rng.randint(-5, 120)])}")
        if rng.random() < 0.8:
            opts.append(f"ef_construction = {rng.choice([3, 4, 5, 8, 16, 31, 32, 64, 200, 1000, 1001, rng.randint(0, 1100)])}")
        if rng.random() < 0.1:
            opts.append(rng.choice(["lists = 5", "m = 'x'", "ef_construction = 1.5", "m = NULL"]))
        with_ = f" WITH ({', '.join(opts)})" if opts else ""
        create = f"CREATE INDEX fz_idx ON fz USING hnsw (v {opclass}){with_}"
        got = {ext: run(watched[ext], for_ext(create, ext)) for ext in ("pgv", "aki")}
        assert got["pgv"] == got["aki"], (create, got)
        if got["aki"][0] == "ok":
            c = watched["aki"]
            c.execute("SET enable_seqscan = off")
            c.execute(f"SET akidb.hnsw_ef_search = {rng.choice([1, 2, 10, 40, 1000])}")
            c.execute(f"SET akidb.hnsw_iterative_scan = {rng.choice(['off', 'relaxed_order', 'strict_order'])}")
            q = vector_text(random.Random(case)) if rng.random() < 0.3 else f"[{case % 7},{case % 5},1,{case}]"
            for sql in (f"SELECT id FROM fz ORDER BY v {op} %s LIMIT 5", f"SELECT id FROM fz WHERE id %% 3 = 0 ORDER BY v {op} %s LIMIT 3",
                        "SELECT count(*) FROM fz", f"SELECT id FROM fz ORDER BY v {op} %s, id LIMIT 2"):
                try:
                    rows = c.execute(sql, (q,) if "%s" in sql else None).fetchall()
                    assert rows or "count" not in sql
                except psycopg.Error as e:
                    assert e.sqlstate[:2] in ("22", "42", "0A"), (sql, q, e.sqlstate, str(e))
            c.execute("RESET ALL")
            for ext in ("pgv", "aki"):
                watched[ext].execute("DROP INDEX fz_idx")
    for ext in ("pgv", "aki"):
        watched[ext].execute("DROP TABLE fz")
