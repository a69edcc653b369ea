"""The planner picks akidb_hnsw at default settings (parallel workers allowed) for
`ORDER BY v <op> constant LIMIT k` on shapes where the index scan is the faster plan
(bench/results/planner-vm.json measured each: the index was 5-90x faster), also in a
prepared statement's generic plan; and the distance functions' planner support costs
a call by its dimensions and TOAST fetch."""
import numpy as np
import psycopg
import pytest

from conftest import connect


def fill(conn, name, dims, rows, storage=None, seed=0):
    rng = np.random.default_rng(seed)
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} (id int, v vector({dims}))")
    if storage:
        conn.execute(f"ALTER TABLE {name} ALTER COLUMN v SET STORAGE {storage}")
    centres = rng.standard_normal((20, dims)).astype(np.float32)
    with conn.cursor().copy(f"COPY {name} (id, v) FROM STDIN") as cp:
        for i in range(rows):
            p = centres[i % 20] + 0.5 * rng.standard_normal(dims).astype(np.float32)
            cp.write_row((i, "[" + ",".join(f"{x:.3f}" for x in p) + "]"))
    conn.execute(f"VACUUM ANALYZE {name}")
    return "[" + ",".join(f"{x:.3f}" for x in centres[3] + 0.1) + "]"


def plan(conn, sql, params=()):
    return "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params))


@pytest.fixture
def c():
    with connect() as conn:
        conn.execute("RESET ALL")
        assert conn.execute("SHOW max_parallel_workers_per_gather").fetchone()[0] != "0"
        yield conn


# (dims, rows, opclass, operator, ef_search): index scans measured faster than seq scans.
SHAPES = [
    (50, 20000, "vector_l2_ops", "<->", 40),
    (50, 20000, "vector_cosine_ops", "<=>", 200),
    (384, 5000, "vector_cosine_ops", "<=>", 40),
    (384, 5000, "vector_ip_ops", "<#>", 200),
    (784, 3000, "vector_l2_ops", "<->", 40),     # TOASTed vectors
    (2560, 1000, "vector_cosine_ops", "<=>", 40),
]


@pytest.mark.parametrize("dims,rows,opclass,op,ef", SHAPES)
def test_default_settings_pick_the_index(c, dims, rows, opclass, op, ef):
    name = f"plan_{dims}_{rows}"
    q = fill(c, name, dims, rows)
    c.execute(f"CREATE INDEX {name}_idx ON {name} USING akidb_hnsw (v {opclass})")
    c.execute(f"SET akidb.hnsw_ef_search = {ef}")
    sql = f"SELECT id FROM {name} ORDER BY v {op} '{q}' LIMIT 10"
    p = plan(c, sql)
    assert f"Index Scan using {name}_idx" in p, p
    # Without the index, the same query is a scan of the table (so the index was chosen
    # over a real alternative), and the index's answer is that scan's top 10, nearly.
    c.execute("SET enable_indexscan = off")
    p = plan(c, sql)
    assert "Seq Scan" in p and "Index" not in p, p
    exact = [r[0] for r in c.execute(sql)]
    c.execute("RESET enable_indexscan")
    approx = [r[0] for r in c.execute(sql)]
    assert len(set(exact) & set(approx)) >= 8
    # A prepared statement's generic plan (the vector a parameter) takes the index too.
    c.execute("SET plan_cache_mode = force_generic_plan")
    c.execute(f"PREPARE near(vector) AS SELECT id FROM {name} ORDER BY v {op} $1 LIMIT 10")
    p = "\n".join(r[0] for r in c.execute(f"EXPLAIN EXECUTE near('{q}')"))
    assert f"Index Scan using {name}_idx" in p, p
    c.execute("DEALLOCATE near")
    c.execute(f"DROP TABLE {name}")


def seq_cost(conn, sql):
    return conn.execute("EXPLAIN (FORMAT JSON) " + sql).fetchone()[0][0]["Plan"]["Total Cost"]


def test_distance_cost_grows_with_dimensions_and_toast(c):
    q50 = fill(c, "cost_50", 50, 2000)
    q784 = fill(c, "cost_784", 784, 2000)
    fill(c, "cost_784_plain", 784, 2000, storage="PLAIN")
    c.execute("SET max_parallel_workers_per_gather = 0")
    # Per row: the distance on 784 values costs more than on 50, and a TOAST fetch more still.
    base50 = seq_cost(c, "SELECT id FROM cost_50")
    with50 = seq_cost(c, f"SELECT v <-> '{q50}' FROM cost_50")
    plain = seq_cost(c, f"SELECT v <-> '{q784}' FROM cost_784_plain") - seq_cost(c, "SELECT id FROM cost_784_plain")
    toasted = seq_cost(c, f"SELECT v <-> '{q784}' FROM cost_784") - seq_cost(c, "SELECT id FROM cost_784")
    per50, per_plain, per_toasted = (with50 - base50) / 2000, plain / 2000, toasted / 2000
    assert per50 > 0.0025  # more than one cpu_operator_cost
    assert per_plain > 5 * per50
    assert per_toasted > 2 * per_plain
    # The function form and the operator cost the same; cpu_operator_cost scales both.
    assert seq_cost(c, f"SELECT l2_distance(v, '{q784}') FROM cost_784") == seq_cost(c, f"SELECT v <-> '{q784}' FROM cost_784")
    c.execute("SET cpu_operator_cost = 0.005")
    doubled = seq_cost(c, f"SELECT v <-> '{q784}' FROM cost_784") - seq_cost(c, "SELECT id FROM cost_784")
    assert doubled > 1.8 * toasted
    for t in ("cost_50", "cost_784", "cost_784_plain"):
        c.execute(f"DROP TABLE {t}")


def test_tiny_table_without_limit_is_not_an_index_scan(c):
    q = fill(c, "plan_tiny", 8, 50)
    c.execute("CREATE INDEX ON plan_tiny USING akidb_hnsw (v vector_l2_ops)")
    # Not an ORDER BY ... LIMIT: a filter, a count: never the index.
    assert "akidb" not in plan(c, "SELECT count(*) FROM plan_tiny").lower()
    assert "plan_tiny_v_idx" not in plan(c, f"SELECT id FROM plan_tiny WHERE v <-> '{q}' < 1")
    c.execute("DROP TABLE plan_tiny")
