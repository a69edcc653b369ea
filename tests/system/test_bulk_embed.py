"""CALL akidb_embed_column(...): fills a vector column from a text column in committed
batches, restartable, watchable from another session, stopped cleanly by a cancel; bad
input is an ERROR before any work. And a prepared `ORDER BY v <=> embed_query($1)` never
runs the model once per row, whatever plan it gets."""
import threading
import time

import numpy as np
import psycopg
import psycopg.sql
import pytest

from conftest import add_model, connect, parse_vector, set_model_path

MINILM = "all-MiniLM-L6-v2"


def error_of(conn, sql, params=()):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, params)
    return e.value.sqlstate, e.value.diag.message_primary


def make_docs(conn, name, n, dims=384):
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, body text, emb vector({dims}))")
    conn.execute(f"INSERT INTO {name} SELECT g, 'document ' || g || ' about ' || md5(g::text) FROM generate_series(1, %s) g", (n,))


def test_fills_every_row_like_embed_and_keeps_what_is_there(conn, model_dir):
    make_docs(conn, "bulk_a", 150)
    conn.execute("INSERT INTO bulk_a VALUES (1000, NULL, NULL)")               # NULL source: stays NULL
    conn.execute("UPDATE bulk_a SET emb = embed('kept') WHERE id = 7")          # already filled: kept
    conn.execute("CALL akidb_embed_column('bulk_a', 'body', 'emb', batch_size => 40)")
    assert conn.execute("SELECT count(*) FROM bulk_a WHERE emb IS NULL").fetchone()[0] == 1
    assert conn.execute("SELECT emb IS NULL FROM bulk_a WHERE id = 1000").fetchone()[0]
    assert conn.execute("SELECT emb = embed('kept') FROM bulk_a WHERE id = 7").fetchone()[0]
    rows = conn.execute("SELECT emb::text, embed(body)::text FROM bulk_a WHERE id <> 7 AND body IS NOT NULL").fetchall()
    assert len(rows) == 150 - 1
    worst = max(np.abs(np.array(parse_vector(a)) - np.array(parse_vector(b))).max() for a, b in rows)
    assert worst < 1e-5
    p = conn.execute("SELECT state, rows_done, rows_total, percent, source, model FROM akidb.embedding_progress "
                     "WHERE relation = 'bulk_a'::regclass").fetchone()
    assert p == ("done", 149, 149, 100, "body", MINILM)
    # A second call finds nothing left to do and changes nothing.
    conn.execute("CALL akidb_embed_column('bulk_a', 'body', 'emb')")
    assert conn.execute("SELECT rows_done FROM akidb.embedding_progress WHERE relation = 'bulk_a'::regclass").fetchone()[0] == 0


def test_commits_per_batch_progress_is_visible_and_cancel_keeps_committed_batches(conn, model_dir):
    make_docs(conn, "bulk_b", 1500)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    err = {}

    def run():
        try:
            conn.execute("CALL akidb_embed_column('bulk_b', 'body', 'emb', batch_size => 50)")
        except psycopg.Error as e:
            err["e"] = e

    t = threading.Thread(target=run)
    t.start()
    seen = []
    with connect() as watcher:
        deadline = time.time() + 60
        while time.time() < deadline:
            done = watcher.execute("SELECT count(emb) FROM bulk_b").fetchone()[0]
            prog = watcher.execute("SELECT state, rows_done, rows_total FROM akidb.embedding_progress "
                                   "WHERE relation = 'bulk_b'::regclass").fetchone()
            seen.append((done, prog))
            if done >= 300:
                break
            time.sleep(0.05)
        # Committed rows are visible to another session while the call runs.
        assert any(0 < d < 1500 and p and p[0] == "running" and 0 < p[1] < p[2] == 1500 for d, p in seen), seen[-5:]
        watcher.execute("SELECT pg_cancel_backend(%s)", (pid,))
        t.join(30)
        assert not t.is_alive()
        assert err["e"].sqlstate == "57014"
        kept = watcher.execute("SELECT count(emb) FROM bulk_b").fetchone()[0]
        assert 300 <= kept < 1500 and kept % 50 == 0, kept  # whole batches only
        assert watcher.execute("SELECT state FROM akidb.embedding_progress "
                               "WHERE relation = 'bulk_b'::regclass").fetchone()[0] == "stopped"
    # Restart: only the rows still NULL, then all are there.
    conn.execute("CALL akidb_embed_column('bulk_b', 'body', 'emb', batch_size => 500)")
    assert conn.execute("SELECT count(emb) FROM bulk_b").fetchone()[0] == 1500
    assert conn.execute("SELECT rows_done FROM akidb.embedding_progress "
                        "WHERE relation = 'bulk_b'::regclass").fetchone()[0] == 1500 - kept


def test_bad_input_is_an_error_before_any_work(conn, model_dir):
    make_docs(conn, "bulk_c", 20)
    conn.execute("ALTER TABLE bulk_c ADD COLUMN n int, ADD COLUMN small vector(3), ADD COLUMN free vector, ADD COLUMN r real[]")
    add_model(model_dir, "mock-8", {"provider": "mock", "dimensions": 8, "matryoshka_dims": [4]})
    cases = [
        ("CALL akidb_embed_column('no_such_table', 'body', 'emb')", "42P01"),
        ("CALL akidb_embed_column('bulk_c', 'nope', 'emb')", "42703"),
        ("CALL akidb_embed_column('bulk_c', 'body', 'nope')", "42703"),
        ("CALL akidb_embed_column('bulk_c', 'n', 'emb')", "42804"),
        ("CALL akidb_embed_column('bulk_c', 'body', 'r')", "42804"),
        ("CALL akidb_embed_column('bulk_c', 'body', 'small')", "22000"),
        ("CALL akidb_embed_column('bulk_c', 'body', 'free')", "22000"),
        ("CALL akidb_embed_column('bulk_c', 'body', 'emb', 'mock-8')", "22000"),
        ("CALL akidb_embed_column('bulk_c', 'body', 'emb', 'no-such-model')", "42704"),
        ("CALL akidb_embed_column('bulk_c', 'body', 'emb', batch_size => 0)", "22023"),
        ("CALL akidb_embed_column('bulk_c', 'body', 'emb', dims => -1)", "22023"),
    ]
    for sql, state in cases:
        got = error_of(conn, sql)
        assert got[0] == state, (sql, got)
    sqlstate, msg = error_of(conn, "CALL akidb_embed_column('bulk_c', 'body', 'small')")
    assert "vector(3)" in msg and "384" in msg and MINILM in msg
    # Inside a transaction block it cannot commit.
    with connect() as c:
        set_model_path(c, model_dir)
        c.autocommit = False
        with pytest.raises(psycopg.Error) as e:
            c.execute("CALL akidb_embed_column('bulk_c', 'body', 'emb')")
        assert e.value.sqlstate == "2D000"
    assert conn.execute("SELECT count(emb) FROM bulk_c").fetchone()[0] == 0
    # Matryoshka dims and another model work where the column fits.
    conn.execute("ALTER TABLE bulk_c ADD COLUMN m4 vector(4)")
    conn.execute("CALL akidb_embed_column('bulk_c', 'body', 'm4', 'mock-8', dims => 4)")
    assert conn.execute("SELECT count(*) FROM bulk_c WHERE m4 = embed(body, 'mock-8', 4)").fetchone()[0] == 20


def test_needs_the_callers_rights(conn, model_dir):
    make_docs(conn, "bulk_d", 10)
    conn.execute("DROP ROLE IF EXISTS akidb_bulk_reader")
    conn.execute("CREATE ROLE akidb_bulk_reader LOGIN")
    conn.execute("GRANT SELECT ON bulk_d TO akidb_bulk_reader")
    with connect(user="akidb_bulk_reader") as c:
        sqlstate, _ = error_of(c, "CALL akidb_embed_column('bulk_d', 'body', 'emb')")
        assert sqlstate == "42501"
        # The progress view is readable by any role, its job table and writer are not.
        c.execute("SELECT * FROM akidb.embedding_progress").fetchall()
        assert error_of(c, "SELECT * FROM akidb.embedding_jobs")[0] == "42501"
        assert error_of(c, "SELECT akidb.report_embedding_job('bulk_d', 'emb', 'body', 'm', 'done', 1, 1, now())")[0] == "42501"
    assert conn.execute("SELECT count(emb) FROM bulk_d").fetchone()[0] == 0
    conn.execute("DROP TABLE bulk_d")
    conn.execute("DROP ROLE akidb_bulk_reader")


def texts_embedded(conn):
    r = conn.execute("SELECT texts_embedded FROM akidb.models WHERE name = %s", (MINILM,)).fetchone()
    return r[0] or 0


def test_a_generic_plan_never_runs_the_model_once_per_row(conn, model_dir):
    make_docs(conn, "bulk_e", 400)
    conn.execute("CALL akidb_embed_column('bulk_e', 'body', 'emb')")
    conn.execute("ANALYZE bulk_e")
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("PREPARE ask(text) AS SELECT id FROM bulk_e ORDER BY emb <=> embed_query($1) LIMIT 5")
    # No index: a seq scan that evaluates embed_query($1) for each of the 400 rows, which
    # the backend's recent-embedding cache answers after the first.
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN EXECUTE ask('how do I change a tire')"))
    assert "Seq Scan" in plan and "$1" in plan
    before = texts_embedded(conn)
    ids = [r[0] for r in conn.execute("EXECUTE ask('how do I change a tire')")]
    assert texts_embedded(conn) - before == 1
    # Same answer as the custom plan.
    conn.execute("SET plan_cache_mode = force_custom_plan")
    assert ids == [r[0] for r in conn.execute("EXECUTE ask('how do I change a tire')")]
    # With an index, the generic plan is an index scan (embed_query costs COST 10000).
    conn.execute("CREATE INDEX ON bulk_e USING akidb_hnsw (emb vector_cosine_ops)")
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("DEALLOCATE ask")
    conn.execute("PREPARE ask(text) AS SELECT id FROM bulk_e ORDER BY emb <=> embed_query($1) LIMIT 5")
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN EXECUTE ask('how do I change a tire')"))
    assert "Index Scan using bulk_e_emb_idx" in plan, plan
    before = texts_embedded(conn)
    for q in ("fix a flat tyre", "play chess", "fix a flat tyre"):
        conn.execute(psycopg.sql.SQL("EXECUTE ask({})").format(psycopg.sql.Literal(q))).fetchall()
    assert texts_embedded(conn) - before == 2
    assert conn.execute("SELECT DISTINCT procost FROM pg_proc WHERE proname IN ('embed', 'embed_query')").fetchall() == [(10000,)]
    conn.execute("RESET plan_cache_mode")
    conn.execute("DROP TABLE bulk_e")


def test_partitioned_table_is_filled_partition_by_partition(conn, model_dir):
    # Partitions have rows at the same ctids: each row must get its own text's vector.
    conn.execute("DROP TABLE IF EXISTS bulk_p")
    conn.execute("CREATE TABLE bulk_p (id int, body text, emb vector(384)) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE bulk_p1 PARTITION OF bulk_p FOR VALUES FROM (0) TO (100)")
    conn.execute("CREATE TABLE bulk_p2 PARTITION OF bulk_p FOR VALUES FROM (100) TO (200)")
    conn.execute("INSERT INTO bulk_p SELECT g, 'partitioned text ' || g FROM generate_series(0, 199) g")
    assert conn.execute("SELECT count(DISTINCT ctid) FROM bulk_p").fetchone()[0] == 100
    conn.execute("CALL akidb_embed_column('bulk_p', 'body', 'emb', batch_size => 30)")
    assert conn.execute("SELECT count(*) FROM bulk_p WHERE emb = embed(body)").fetchone()[0] == 200
    assert conn.execute("SELECT rows_done, rows_total FROM akidb.embedding_progress "
                        "WHERE relation = 'bulk_p'::regclass").fetchone() == (200, 200)
    conn.execute("DROP TABLE bulk_p")
