"""Hostile and unexpected SQL against akidb_hnsw and the settings (issue 10): every path
that could reach a scan callback with arguments it does not expect, iterative scans that
must return the right rows, who may run the index inspection functions, and settings that
must be refused at SET. Each test also checks that no backend died."""
import re

import psycopg
import pytest

from conftest import connect, server_log


def crashes():
    return len(re.findall(r"terminated by signal|was terminated by exception", server_log()))


@pytest.fixture
def c():
    before = crashes()
    with connect() as conn:
        yield conn
    assert crashes() == before, "a backend died"


def plan(conn, sql):
    return "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql))


@pytest.fixture
def c3(c):
    c.execute("DROP TABLE IF EXISTS c3")
    c.execute("CREATE TABLE c3 (id int, n int, v vector(3))")
    c.execute("INSERT INTO c3 SELECT g, g % 10, ARRAY[g, g % 7, g % 13]::real[]::vector FROM generate_series(1, 1000) g")
    c.execute("CREATE INDEX c3_idx ON c3 USING akidb_hnsw (v vector_l2_ops)")
    c.execute("CREATE INDEX c3_part ON c3 USING akidb_hnsw (v vector_l2_ops) WHERE n = 3")
    c.execute("ANALYZE c3")
    yield c
    c.execute("DROP TABLE c3")


# Queries an index without an order: the planner must not choose akidb_hnsw for any of
# them, not even with every other scan disabled, and each gives the right answer.
NO_ORDER = [
    ("SELECT count(*) FROM c3", 1000),
    ("SELECT 1 FROM c3 LIMIT 1", 1),
    ("SELECT EXISTS (SELECT 1 FROM c3 WHERE n = 3)", True),
    ("SELECT count(*) FROM c3 WHERE n = 3", 100),
    ("SELECT count(*) FROM c3 WHERE v = '[5,5,5]'", 1),
    ("SELECT count(*) FROM c3 WHERE v IS NOT NULL", 1000),
]


@pytest.mark.parametrize("sql,want", NO_ORDER)
@pytest.mark.parametrize("disable", ["", "enable_seqscan", "enable_seqscan,enable_bitmapscan,enable_indexonlyscan"])
def test_no_order_never_scans_the_index(c3, sql, want, disable):
    for s in filter(None, disable.split(",")):
        c3.execute(f"SET {s} = off")
    p = plan(c3, sql)
    assert "c3_idx" not in p and "c3_part" not in p, p
    assert c3.execute(sql).fetchone()[0] == want


def test_two_order_by_keys_are_sorted_on_both(c3):
    # The graph orders by one distance only: with a second key the planner sorts, and
    # ties on the first key are broken by the second.
    c3.execute("SET enable_seqscan = off")
    q = "SELECT id FROM c3 ORDER BY v <-> '[0,0,0]', v <-> '[1000,0,0]' LIMIT 20"
    p = plan(c3, q)
    assert "Sort" in p, p
    c3.execute("RESET enable_seqscan")
    c3.execute("SET enable_indexscan = off")
    exact = [r[0] for r in c3.execute(q)]
    c3.execute("RESET enable_indexscan")
    assert [r[0] for r in c3.execute(q)] == exact


def test_rescans_with_different_keys(c3):
    # A nested loop rescans the index once per outer row with a new query vector.
    c3.execute("SET enable_seqscan = off")
    q = ("SELECT q.id, x.id FROM (SELECT id, v FROM c3 WHERE id IN (5, 500, 999)) q "
         "CROSS JOIN LATERAL (SELECT id FROM c3 ORDER BY v <-> q.v LIMIT 1) x ORDER BY 1")
    assert "c3_idx" in plan(c3, q)
    assert c3.execute(q).fetchall() == [(5, 5), (500, 500), (999, 999)]
    # and a prepared statement run again with another parameter
    c3.execute("PREPARE nn(vector) AS SELECT id FROM c3 ORDER BY v <-> $1 LIMIT 1")
    assert [c3.execute(f"EXECUTE nn('{v}')").fetchone()[0] for v in ("[7,0,7]", "[8,1,8]", "[7,0,7]")] == [7, 8, 7]
    c3.execute("DEALLOCATE nn")


def test_null_and_wrong_dimension_order_values(c3):
    c3.execute("SET enable_seqscan = off")
    # NULL: every distance is NULL; the rows still come back, as from a seq scan.
    assert c3.execute("SELECT count(*) FROM (SELECT id FROM c3 ORDER BY v <-> NULL LIMIT 5) s").fetchone()[0] == 5
    with pytest.raises(psycopg.errors.DataException):
        c3.execute("SELECT id FROM c3 ORDER BY v <-> '[1,2]' LIMIT 5")
    assert c3.execute("SELECT 1").fetchone()[0] == 1


def test_the_partial_index_answers_its_own_queries(c3):
    c3.execute("SET enable_seqscan = off")
    q = "SELECT id FROM c3 WHERE n = 3 ORDER BY v <-> '[500,0,0]' LIMIT 5"
    assert "c3_part" in plan(c3, q)
    got = [r[0] for r in c3.execute(q)]
    c3.execute("SET enable_indexscan = off")
    assert got == [r[0] for r in c3.execute(q)]


@pytest.mark.parametrize("ef", [10, 40, 100])
def test_strict_order_returns_what_relaxed_order_returns_in_order(c, ef):
    """1,000 random 16-d vectors, a filter that keeps a tenth: strict_order must return the
    rows relaxed_order returns (and a seq scan), nearest first."""
    c.execute("DROP TABLE IF EXISTS it16")
    c.execute("SELECT setseed(0.42)")
    c.execute("CREATE TABLE it16 (id int, n int, v vector(16))")
    c.execute("INSERT INTO it16 SELECT g, g % 10, (SELECT array_agg(random()) FROM generate_series(1, 16) WHERE g > 0)::real[]::vector "
              "FROM generate_series(1, 1000) g")
    c.execute("CREATE INDEX it16_idx ON it16 USING akidb_hnsw (v vector_l2_ops)")
    queries = [r[0] for r in c.execute("SELECT v::text FROM it16 WHERE n <> 3 ORDER BY id LIMIT 60")]
    sql = "SELECT id, v <-> %s AS d FROM it16 WHERE n = 3 ORDER BY v <-> %s LIMIT 10"
    c.execute("SET enable_indexscan = off")
    exact = [c.execute(sql, (q, q)).fetchall() for q in queries]
    c.execute("RESET enable_indexscan")
    c.execute("SET enable_seqscan = off")
    c.execute(f"SET akidb.hnsw_ef_search = {ef}")
    got = {}
    for mode in ("relaxed_order", "strict_order"):
        c.execute(f"SET akidb.hnsw_iterative_scan = {mode}")
        assert "it16_idx" in plan(c, sql.replace("%s", "'" + queries[0] + "'"))
        got[mode] = [c.execute(sql, (q, q)).fetchall() for q in queries]
    hits = {m: sum(len({i for i, _ in g} & {i for i, _ in e}) for g, e in zip(rows, exact)) for m, rows in got.items()}
    assert hits["strict_order"] == hits["relaxed_order"] >= 0.99 * 600, hits
    for s, r in zip(got["strict_order"], got["relaxed_order"]):
        assert {i for i, _ in s} == {i for i, _ in r}
        assert [d for _, d in s] == sorted(d for _, d in s)
    c.execute("DROP TABLE it16")


def test_inspection_functions_are_not_for_public(c):
    c.execute("DROP TABLE IF EXISTS secret_vecs")
    c.execute("CREATE TABLE secret_vecs (v vector(2))")
    c.execute("INSERT INTO secret_vecs SELECT ARRAY[g, g]::real[]::vector FROM generate_series(1, 50) g")
    c.execute("CREATE INDEX secret_idx ON secret_vecs USING akidb_hnsw (v vector_l2_ops)")
    c.execute("CREATE INDEX secret_btree ON secret_vecs (v)")
    c.execute("DROP ROLE IF EXISTS akidb_nosy")
    c.execute("CREATE ROLE akidb_nosy LOGIN")
    try:
        with connect(user="akidb_nosy") as nosy:
            # What models exist is public (akidb.models and akidb_models() alike).
            assert nosy.execute("SELECT count(*) FROM akidb.models").fetchone()[0] == \
                nosy.execute("SELECT count(*) FROM akidb_models()").fetchone()[0] > 0
            for f in ("akidb_hnsw_check", "akidb_hnsw_info"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    nosy.execute(f"SELECT * FROM {f}('secret_idx'::regclass)")
        # The owner of the table granted nothing; a superuser can inspect; on an index of
        # another access method both functions are an ERROR.
        assert c.execute("SELECT count(*) FROM akidb_hnsw_check('secret_idx'::regclass)").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM akidb_hnsw_info('secret_idx'::regclass)").fetchone()[0] > 0
        for f in ("akidb_hnsw_check", "akidb_hnsw_info"):
            for rel in ("secret_btree", "secret_vecs"):
                with pytest.raises(psycopg.errors.WrongObjectType):
                    c.execute(f"SELECT * FROM {f}('{rel}'::regclass)")
    finally:
        c.execute("DROP ROLE akidb_nosy")
        c.execute("DROP TABLE secret_vecs")


@pytest.mark.parametrize("value", ["tensorrt,tensorrt", "gpu", "cpu,,cuda", "cuda, cpu, cuda", "", "cpu;drop"])
def test_execution_providers_are_checked_at_set(c, value):
    # Set before the library is loaded, the value is a placeholder; loading checks it,
    # warns, and keeps the default.
    notices = []
    c.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
    c.execute(f"SET akidb.execution_providers = '{value}'")
    c.execute("SELECT akidb_simd()")
    assert c.execute("SHOW akidb.execution_providers").fetchone()[0] == "tensorrt,cuda,cpu"
    assert any(sev == "WARNING" and "akidb.execution_providers" in m for sev, m in notices), notices
    # Once loaded, SET itself refuses it.
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        c.execute(f"SET akidb.execution_providers = '{value}'")
    assert "akidb.execution_providers" in str(e.value)
    for ok in ("cpu", "cuda,cpu", "TensorRT, CUDA, CPU", "tensorrt,cuda,cpu"):
        c.execute(f"SET akidb.execution_providers = '{ok}'")
    c.execute("RESET akidb.execution_providers")


@pytest.mark.parametrize("name", ["x" * 300, "x" * 5000, "../all-MiniLM-L6-v2", "a/b", "", " ", "nul\\x01"])
def test_odd_model_names_are_unknown_models(c, name):
    if not name:
        # empty means the default model, which exists
        c.execute("SELECT embed('x', %s)", (name,))
        return
    with pytest.raises(psycopg.errors.UndefinedObject):
        c.execute("SELECT embed('x', %s)", (name,))
