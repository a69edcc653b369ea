#!/usr/bin/env python3
"""akidb_hnsw soak and fault suite (bench/soak.sh runs it; by hand or nightly, not in
make test). Each scenario is bounded in time, prints one line of figures and goes into
one JSON file:

* mixed: 8 writers (insert, update, delete) + 8 readers (filtered and unfiltered top-10)
  + VACUUM in a loop, for --minutes: errors (must be 0), then akidb_hnsw_check (must be
  clean) and every row of the table found by an exact-match query through the index.
* kill9: kill -9 of the postmaster at a random moment during concurrent inserts, during
  CREATE INDEX and during VACUUM, --kills times each: corrupt indexes and committed rows
  lost (both must be 0). Each kill is checked to have hit the work while it ran.
* standby: a streaming standby replays --minutes of the write load, then must return the
  primary's top-10 for 1,000 queries.
* reloptions: random and mutated WITH (...) clauses for CREATE INDEX: each must build or
  be a clean ERROR, and the session must go on. (The vector text parser gets its 10
  million inputs from the core's fuzz harness, crates/akidb-core/examples/fuzz_text.rs,
  which soak.sh runs first.)
"""
import argparse
import json
import os
import platform
import random
import sys
import threading
import time

import numpy as np
import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "system"))
from cluster import PGBIN, Cluster, as_postgres  # noqa: E402

DIMS = 32


def vec_text(v):
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


def fill(conn, table, ids, rows):
    with conn.cursor().copy(f"COPY {table} (id, cat, v) FROM STDIN") as cp:
        for i, v in zip(ids, rows):
            cp.write_row((int(i), int(i) % 10, vec_text(v)))


def check(conn, index):
    return [r[0] for r in conn.execute("SELECT problem FROM akidb_hnsw_check(%s::regclass)", (index,))]


def all_rows_found(conn, table, limit=None):
    """Rows whose own vector, queried through the index, does not return them first: at
    ef_search 100, and (of those) still at 1,000, where a row a search merely missed is
    found and one the graph lost is not."""
    conn.execute("SET enable_seqscan = off")
    rows = conn.execute(f"SELECT id, v::text FROM {table}").fetchall()
    if limit:
        rows = random.Random(1).sample(rows, min(limit, len(rows)))

    def misses(rows, ef):
        conn.execute(f"SET akidb.hnsw_ef_search = {ef}")
        out = []
        for rid, v in rows:
            got = conn.execute(f"SELECT id FROM {table} ORDER BY v <-> %s::vector LIMIT 1", (v,)).fetchone()
            if got is None or got[0] != rid:
                # Equal vectors (another row) are a hit too.
                same = conn.execute(f"SELECT count(*) FROM {table} WHERE id = %s AND v = %s::vector",
                                    (got[0] if got else -1, v)).fetchone()[0]
                if same == 0:
                    out.append((rid, v))
        return out

    missed = misses(rows, 100)
    lost = misses(missed, 1000)
    conn.execute("RESET akidb.hnsw_ef_search")
    return len(missed), len(rows), len(lost)


class Load:
    """Writers and readers on their own connections until stopped; counts statements and
    errors (an error is kept unless it is the connection dying after a kill)."""

    def __init__(self, cl, table, writers, readers, vacuum, seed):
        self.cl, self.table = cl, table
        self.stop, self.killed = threading.Event(), threading.Event()
        self.errors, self.counts = [], {"insert": 0, "update": 0, "delete": 0, "read": 0, "vacuum": 0}
        self.lock = threading.Lock()
        self.committed = set()
        # After a kill -9 the table keeps the rows committed before it: new ids go on
        # from there (a restart at 10,000,000 failed on the primary key).
        with cl.connect() as c:
            top = c.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0
        self.next_id = max(10_000_000, top + 1)
        self.threads = [threading.Thread(target=self.run, args=(self.writer, seed + w)) for w in range(writers)]
        self.threads += [threading.Thread(target=self.run, args=(self.reader, seed + 100 + r)) for r in range(readers)]
        if vacuum:
            self.threads.append(threading.Thread(target=self.run, args=(self.vacuum, seed + 200)))

    def run(self, body, seed):
        try:
            with self.cl.connect() as c:
                c.execute("SET enable_seqscan = off")
                rng = np.random.default_rng(seed)
                while not self.stop.is_set():
                    body(c, rng)
        except psycopg.OperationalError as e:
            if not self.killed.is_set():
                self.errors.append(repr(e))
        except Exception as e:  # noqa: BLE001 - counted: the scenario fails on it
            self.errors.append(repr(e))

    def count(self, what):
        with self.lock:
            self.counts[what] += 1

    def writer(self, c, rng):
        op = rng.integers(0, 10)
        if op < 5:
            with self.lock:
                rid = self.next_id
                self.next_id += 1
            c.execute(f"INSERT INTO {self.table} VALUES (%s, %s, %s)", (rid, rid % 10, vec_text(rng.standard_normal(DIMS))))
            with self.lock:
                self.committed.add(rid)
            self.count("insert")
        elif op < 8:
            c.execute(f"UPDATE {self.table} SET v = %s WHERE id = (SELECT id FROM {self.table} TABLESAMPLE SYSTEM (1) LIMIT 1)",
                      (vec_text(rng.standard_normal(DIMS)),))
            self.count("update")
        else:
            c.execute(f"DELETE FROM {self.table} WHERE id = (SELECT id FROM {self.table} TABLESAMPLE SYSTEM (1) LIMIT 1) AND id < 10000000")
            self.count("delete")

    def reader(self, c, rng):
        q = vec_text(rng.standard_normal(DIMS))
        if rng.integers(0, 2):
            c.execute("SET akidb.hnsw_iterative_scan = relaxed_order")
            rows = c.execute(f"SELECT id FROM {self.table} WHERE cat = 3 ORDER BY v <-> %s LIMIT 10", (q,)).fetchall()
        else:
            c.execute("SET akidb.hnsw_iterative_scan = off")
            rows = c.execute(f"SELECT id FROM {self.table} ORDER BY v <-> %s LIMIT 10", (q,)).fetchall()
        if len(rows) != 10:
            self.errors.append(f"a top-10 query returned {len(rows)} rows")
        self.count("read")

    def vacuum(self, c, rng):
        c.execute(f"VACUUM {self.table}")
        self.count("vacuum")
        time.sleep(0.5)

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def finish(self, kill_cluster=None):
        if kill_cluster is not None:
            self.killed.set()
            kill_cluster.kill9()
        self.stop.set()
        for t in self.threads:
            t.join()


def new_table(c, table, n, seed):
    c.execute(f"DROP TABLE IF EXISTS {table}")
    c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, cat int, v vector({DIMS}))")
    fill(c, table, range(n), np.random.default_rng(seed).standard_normal((n, DIMS)).astype(np.float32))
    c.execute(f"CREATE INDEX {table}_idx ON {table} USING akidb_hnsw (v vector_l2_ops)")


def scenario_mixed(cl, minutes):
    with cl.connect() as c:
        new_table(c, "soak", 20000, 1)
    t = time.time()
    load = Load(cl, "soak", 8, 8, True, 10).start()
    time.sleep(minutes * 60)
    load.finish()
    with cl.connect() as c:
        problems = check(c, "soak_idx")
        unreachable = c.execute("SELECT unreachable FROM akidb_hnsw_info('soak_idx'::regclass)").fetchone()[0]
        missing, rows, lost = all_rows_found(c, "soak")
        size = c.execute("SELECT pg_relation_size('soak_idx')").fetchone()[0]
        # Then one more VACUUM (which links unreachable elements back in): what it heals.
        c.execute("VACUUM soak")
        after = all_rows_found(c, "soak")
    return {"seconds": round(time.time() - t), "statements": load.counts, "errors": len(load.errors),
            "error_samples": load.errors[:5], "check_problems": len(problems), "rows": rows,
            "rows_not_found": missing, "rows_not_found_at_ef_1000": lost, "unreachable_elements": unreachable,
            "after_a_last_vacuum": {"rows_not_found": after[0], "rows_not_found_at_ef_1000": after[2]},
            "index_mb": round(size / 2**20, 1)}


def wait_progress(cl, view, like, timeout=120):
    with cl.connect() as c:
        end = time.time() + timeout
        while time.time() < end:
            if c.execute(f"SELECT count(*) FROM pg_stat_progress_{view} WHERE phase LIKE %s", (like,)).fetchone()[0]:
                return True
            time.sleep(0.01)
    return False


def running(cl, view):
    with cl.connect() as c:
        return c.execute(f"SELECT count(*) FROM pg_stat_progress_{view}").fetchone()[0] > 0


def background(cl, sql, killed, errors):
    def body():
        try:
            with cl.connect() as c:
                c.execute(sql)
        except psycopg.OperationalError as e:
            if not killed.is_set():
                errors.append(repr(e))
        except Exception as e:  # noqa: BLE001 - counted
            errors.append(repr(e))
    th = threading.Thread(target=body)
    th.start()
    return th


def scenario_kill9(cl, kills):
    r = random.Random(7)
    out = {"inserts": {"kills": 0, "corrupt": 0, "lost": 0, "errors": 0},
           "create_index": {"kills": 0, "missed": 0, "corrupt": 0, "errors": 0},
           "vacuum": {"kills": 0, "missed": 0, "corrupt": 0, "errors": 0}}
    with cl.connect() as c:
        new_table(c, "crash", 5000, 2)
    for k in range(kills):
        load = Load(cl, "crash", 4, 0, False, 1000 + k).start()
        time.sleep(r.uniform(0.5, 3.0))
        with load.lock:
            committed = set(load.committed)
        load.finish(kill_cluster=cl)
        cl.start()
        with cl.connect() as c:
            present = {x[0] for x in c.execute("SELECT id FROM crash WHERE id >= 10000000")}
            out["inserts"]["lost"] += len(committed - present)
            problems = check(c, "crash_idx")
            out["inserts"]["corrupt"] += bool(problems)
            out["inserts"].setdefault("problem_samples", []).extend(problems[:3])
            missing, _, _ = all_rows_found(c, "crash", limit=200)
            out["inserts"]["rows_not_found"] = out["inserts"].get("rows_not_found", 0) + missing
        out["inserts"]["kills"] += 1
        out["inserts"]["errors"] += len(load.errors)
        out["inserts"].setdefault("error_samples", []).extend(load.errors[:2])
    with cl.connect() as c:
        c.execute("CREATE TABLE IF NOT EXISTS build (id int PRIMARY KEY, cat int, v vector(32))")
        c.execute("TRUNCATE build")
        fill(c, "build", range(30000), np.random.default_rng(3).standard_normal((30000, DIMS)).astype(np.float32))
    for k in range(kills):
        killed, errors = threading.Event(), []
        with cl.connect() as c:
            c.execute("DROP INDEX IF EXISTS build_idx")
        th = background(cl, "CREATE INDEX build_idx ON build USING akidb_hnsw (v vector_l2_ops)", killed, errors)
        hit = wait_progress(cl, "create_index", "building index%")
        time.sleep(r.uniform(0, 1.5))
        hit = hit and running(cl, "create_index")
        killed.set()
        cl.kill9()
        th.join()
        cl.start()
        with cl.connect() as c:
            valid = c.execute("SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'build_idx' AND i.indisvalid").fetchone()[0]
            # A build that finished before the kill left a valid index: it must be sound.
            if valid:
                out["create_index"]["corrupt"] += bool(check(c, "build_idx"))
        out["create_index"]["kills"] += 1
        out["create_index"]["missed"] += not hit
        out["create_index"]["errors"] += len(errors)
    with cl.connect() as c:
        c.execute("DROP INDEX IF EXISTS build_idx")
        c.execute("CREATE INDEX build_idx ON build USING akidb_hnsw (v vector_l2_ops)")
    for k in range(kills):
        killed, errors = threading.Event(), []
        with cl.connect() as c:
            n = c.execute("SELECT count(*) FROM build").fetchone()[0]
            c.execute("DELETE FROM build WHERE id IN (SELECT id FROM build TABLESAMPLE SYSTEM (10))")
            fill(c, "build", range(10_000_000 + k * 100_000, 10_000_000 + k * 100_000 + (30000 - n) + 3000),
                 np.random.default_rng(50 + k).standard_normal(((30000 - n) + 3000, DIMS)).astype(np.float32))
        th = background(cl, "VACUUM build", killed, errors)
        hit = wait_progress(cl, "vacuum", "vacuuming ind%")
        time.sleep(r.uniform(0, 0.5))
        hit = hit and running(cl, "vacuum")
        killed.set()
        cl.kill9()
        th.join()
        cl.start()
        with cl.connect() as c:
            problems = check(c, "build_idx")
            out["vacuum"]["corrupt"] += bool(problems)
            out["vacuum"].setdefault("problem_samples", []).extend(problems[:3])
            missing, _, _ = all_rows_found(c, "build", limit=200)
            out["vacuum"]["rows_not_found"] = out["vacuum"].get("rows_not_found", 0) + missing
        out["vacuum"]["kills"] += 1
        out["vacuum"]["missed"] += not hit
        out["vacuum"]["errors"] += len(errors)
    return out


def scenario_standby(cl, minutes, port):
    standby = Cluster("soak-standby", port)
    standby.stop(check=False)
    with cl.connect() as c:
        new_table(c, "repl", 20000, 4)
    import shutil
    shutil.rmtree(standby.dir, ignore_errors=True)
    os.makedirs(standby.dir)
    os.chmod(standby.dir, 0o755)
    shutil.chown(standby.dir, "postgres", "postgres")
    as_postgres(f"{PGBIN}/pg_basebackup", "-D", standby.data, "-h", cl.dir, "-p", str(cl.port), "-U", "postgres", "-R", "-X", "stream")
    standby.start()
    try:
        load = Load(cl, "repl", 8, 0, True, 300).start()
        time.sleep(minutes * 60)
        load.finish()
        with cl.connect() as c:
            lsn = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        with standby.connect() as s:
            end = time.time() + 300
            while s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0] is not True:
                if time.time() > end:
                    return {"error": "the standby did not catch up in 5 minutes"}
                time.sleep(0.2)
            problems = check(s, "repl_idx")
            same = 0
            rng = np.random.default_rng(9)
            with cl.connect() as c:
                for conn in (c, s):
                    conn.execute("SET enable_seqscan = off")
                for _ in range(1000):
                    q = vec_text(rng.standard_normal(DIMS))
                    sql = "SELECT id FROM repl ORDER BY v <-> %s LIMIT 10"
                    same += [r[0] for r in c.execute(sql, (q,))] == [r[0] for r in s.execute(sql, (q,))]
        return {"seconds_of_load": minutes * 60, "statements": load.counts, "errors": len(load.errors),
                "standby_check_problems": len(problems), "queries": 1000, "same_top10": same}
    finally:
        standby.stop(check=False)


def scenario_reloptions(cl, n):
    rng = random.Random(11)
    keys = ["m", "ef_construction", "M", "ef", "fillfactor", "m ", "", "ef_construction.x"]
    values = ["16", "2", "1", "100", "101", "4", "1000", "1001", "-1", "0", "99999999999999999999", "1e3", "'16'",
              "''", "'x'", "true", "NULL", "16.5", "0x10", "'\u00e9'", "1 1", "$$16$$"]
    clean, built, other = 0, 0, []
    with cl.connect() as c:
        c.execute("DROP TABLE IF EXISTS relopt")
        c.execute("CREATE TABLE relopt (v vector(3))")
        c.execute("INSERT INTO relopt SELECT ARRAY[random(), random(), random()]::real[]::vector FROM generate_series(1, 50)")
        for i in range(n):
            parts = [f"{rng.choice(keys)} = {rng.choice(values)}" for _ in range(rng.randint(1, 3))]
            clause = ", ".join(parts)
            if rng.random() < 0.3:
                s = list(clause)
                for _ in range(rng.randint(1, 3)):
                    s.insert(rng.randint(0, len(s)), rng.choice("=,()' 9-x\\"))
                clause = "".join(s)
            try:
                c.execute(f"CREATE INDEX relopt_idx ON relopt USING akidb_hnsw (v vector_l2_ops) WITH ({clause})")
                built += 1
                c.execute("DROP INDEX relopt_idx")
            except psycopg.errors.Error as e:
                if e.sqlstate and e.sqlstate[:2] in ("22", "42"):
                    clean += 1
                else:
                    other.append(f"{clause}: {e.sqlstate} {e}")
            c.execute("SELECT 1")
    return {"clauses": n, "built": built, "clean_errors": clean, "other": len(other), "other_samples": other[:5]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--reloptions", type=int, default=20000)
    ap.add_argument("--port", type=int, default=55480)
    ap.add_argument("--only", default="mixed,kill9,standby,reloptions")
    ap.add_argument("--fuzz-json", default=None)
    a = ap.parse_args()
    cl = Cluster("soak", a.port).init(wal_level="replica", max_wal_senders=4, shared_buffers="512MB",
                                      max_parallel_maintenance_workers=1, autovacuum="off")
    cl.start()
    res = {"bench": "soak", "machine": platform.node(), "cores": os.cpu_count(), "pgbin": PGBIN, "scenarios": {}}
    if a.fuzz_json and os.path.exists(a.fuzz_json):
        res["scenarios"]["fuzz_text"] = json.load(open(a.fuzz_json))
    try:
        with cl.connect() as c:
            c.execute("CREATE EXTENSION akidb")
        for name in a.only.split(","):
            t = time.time()
            if name == "mixed":
                r = scenario_mixed(cl, a.minutes)
            elif name == "kill9":
                r = scenario_kill9(cl, a.kills)
            elif name == "standby":
                r = scenario_standby(cl, a.minutes, a.port + 1)
            elif name == "reloptions":
                r = scenario_reloptions(cl, a.reloptions)
            else:
                continue
            r["wall_seconds"] = round(time.time() - t)
            res["scenarios"][name] = r
            print(name, json.dumps(r), flush=True)
            with open(a.out + ".json", "w") as f:
                json.dump(res, f, indent=1)
    finally:
        cl.stop(check=False)
    print("wrote", a.out + ".json")


if __name__ == "__main__":
    main()
