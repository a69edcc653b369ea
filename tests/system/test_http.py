"""The http provider against a real server on 127.0.0.1 that the test starts: the
OpenAI and TEI shapes, and each way a server fails. The API key reaches the server and
nothing else: not pg_settings, not error messages, not the server log. The key lives in a
file only the server can read (akidb.http_api_key_file), never in a setting."""
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import psycopg
import pytest

from conftest import RUN, add_model, connect, parse_vector, server_log, set_model_path

KEY = "sk-akidb-test-7f3a9c0e5b1d"
DIMS = 8


def fake_vector(text):
    rng = np.random.default_rng(abs(hash(text)) % (2**32))
    return rng.standard_normal(DIMS).round(6).tolist()


class Server:
    """mode: ok | slow | garbage | wrong_dims | status500 | short | nonfinite"""

    def __init__(self):
        self.mode = "ok"
        self.seen = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                texts = body.get("input") or body.get("inputs")
                if outer.mode == "slow":
                    time.sleep(2.0)
                if outer.mode == "status500":
                    return self.reply(500, b'{"error": "model crashed"}')
                if outer.mode == "garbage":
                    return self.reply(200, b"<html>this is not json</html>")
                dims = DIMS + 1 if outer.mode == "wrong_dims" else DIMS
                vecs = [fake_vector(t)[:DIMS] + [0.5] * (dims - DIMS) for t in texts]
                if outer.mode == "short":
                    vecs = vecs[:-1]
                if outer.mode == "nonfinite":
                    vecs[-1][0] = 1e39  # beyond float4: an infinity once read

                if self.path == "/v1/embeddings":
                    # Out of order on purpose: clients must use "index".
                    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)][::-1]
                    payload = {"object": "list", "data": data, "model": body["model"]}
                else:
                    payload = vecs
                self.reply(200, json.dumps(payload).encode())

            def reply(self, code, raw):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def write_key_file(name, content, mode=0o600):
    p = os.path.join(RUN, name)
    with open(p, "w") as f:
        f.write(content)
    os.chmod(p, mode)
    if os.geteuid() == 0:
        import pwd
        pw = pwd.getpwnam("postgres")
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return p


@pytest.fixture(scope="module")
def key_file():
    p = write_key_file("http-api-key", KEY + "\n")
    yield p
    os.unlink(p)


def use_key(conn, path):
    conn.execute("SET akidb.http_api_key_file = %s" % ("'" + path + "'"))


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


@pytest.fixture
def http_models(model_dir, server):
    base = f"http://127.0.0.1:{server.port}"
    add_model(model_dir, "remote-openai", {"provider": "http", "dimensions": DIMS, "normalize": False,
                                            "http": {"url": f"{base}/v1/embeddings", "api": "openai",
                                                     "model": "served-name", "timeout_ms": 800, "batch_size": 3}})
    add_model(model_dir, "remote-tei", {"provider": "http", "dimensions": DIMS, "normalize": False,
                                         "query_prefix": "query: ",
                                         "http": {"url": f"{base}/embed", "api": "tei", "timeout_ms": 800}})
    # A port nothing listens on: bind, read the number, close.
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    add_model(model_dir, "remote-down", {"provider": "http", "dimensions": DIMS,
                                          "http": {"url": f"http://127.0.0.1:{dead}/embed", "api": "tei",
                                                   "timeout_ms": 800}})
    server.mode = "ok"
    server.seen.clear()
    return server


def error_of(conn, sql, params=()):
    t0 = time.monotonic()
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, params)
    return e.value.sqlstate, e.value.diag.message_primary, time.monotonic() - t0


def test_openai_and_tei_shapes(conn, http_models, key_file):
    server = http_models
    use_key(conn, key_file)
    texts = ["first", "second", "third", "fourth", "fifth"]
    rows = conn.execute("SELECT v::text FROM unnest(embed(%s::text[], 'remote-openai')) WITH ORDINALITY u(v, i) ORDER BY i",
                        (texts,)).fetchall()
    got = [parse_vector(r[0]) for r in rows]
    assert np.allclose(got, [fake_vector(t) for t in texts], atol=1e-6)
    # Batches of 3, the served model name, the key as a bearer token.
    assert [len(s["body"]["input"]) for s in server.seen] == [3, 2]
    assert all(s["body"]["model"] == "served-name" and s["auth"] == f"Bearer {KEY}" for s in server.seen)
    server.seen.clear()
    v = parse_vector(conn.execute("SELECT embed_query('brakes', 'remote-tei')::text").fetchone()[0])
    assert np.allclose(v, fake_vector("query: brakes"), atol=1e-6)
    assert server.seen[0]["path"] == "/embed" and server.seen[0]["body"]["inputs"] == ["query: brakes"]


@pytest.mark.parametrize("mode,sqlstate,needle", [
    ("slow", "08006", "did not answer within 800 ms"),
    ("garbage", "08P01", "not a TEI /embed response"),
    ("wrong_dims", "08P01", "has 9 dimensions"),
    ("status500", "08P01", "HTTP status 500"),
    ("short", "08P01", "embeddings for"),
    ("nonfinite", "38000", "holds inf"),
])
def test_each_server_failure_is_a_clear_error_within_the_timeout(conn, http_models, key_file, mode, sqlstate, needle):
    http_models.mode = mode
    use_key(conn, key_file)
    code, msg, took = error_of(conn, "SELECT embed(ARRAY['a', 'b'], 'remote-tei')")
    assert code == sqlstate and needle in msg, (code, msg)
    assert KEY not in msg
    assert took < 0.8 + 0.7
    http_models.mode = "ok"
    assert conn.execute("SELECT vector_dims(embed('fine again', 'remote-tei'))").fetchone()[0] == DIMS


def test_server_down(conn, http_models):
    code, msg, took = error_of(conn, "SELECT embed('a', 'remote-down')")
    assert code == "08000" and "cannot reach embedding server" in msg, (code, msg)
    assert took < 1.5


def test_the_key_is_superuser_only_and_never_shown(conn, http_models, model_dir, key_file):
    use_key(conn, key_file)
    conn.execute("SELECT embed('x', 'remote-openai')")
    assert http_models.seen[-1]["auth"] == f"Bearer {KEY}"
    everything = conn.execute("SELECT string_agg(name || '=' || coalesce(setting, '') || coalesce(reset_val, '') "
                              "|| coalesce(boot_val, ''), ',') FROM pg_settings").fetchone()[0]
    assert KEY not in everything and "akidb.http_api_key_file" in everything
    # The key is in no setting at all: the old name is unknown.
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SHOW akidb.http_api_key")
    conn.execute("DROP ROLE IF EXISTS akidb_plain")
    conn.execute("CREATE ROLE akidb_plain LOGIN")
    conn.execute("GRANT pg_read_all_settings TO akidb_plain")
    # Set for every session, the way an administrator would.
    conn.execute("ALTER SYSTEM SET akidb.http_api_key_file = %s" % ("'" + key_file + "'"))
    conn.execute("ALTER SYSTEM SET akidb.model_path = %s" % ("'" + model_dir + "'"))
    conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)
    try:
        # A fresh session of an ordinary role, before and after it loads the library.
        with connect(user="akidb_plain") as plain:
            def visible():
                rows = plain.execute("SELECT name, setting FROM pg_settings WHERE name LIKE 'akidb.%'").fetchall()
                shown = [plain.execute(f"SELECT current_setting('{n}', true)").fetchone()[0] for n, _ in rows]
                return str(rows) + str(shown)
            before = visible()
            assert KEY not in before
            assert plain.execute("SHOW akidb.http_api_key_file").fetchone()[0] == key_file
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                plain.execute("SELECT pg_read_file(%s)", (key_file,))
            # The role can use the key without seeing it.
            http_models.seen.clear()
            plain.execute("SELECT embed('x', 'remote-openai')")
            assert http_models.seen[-1]["auth"] == f"Bearer {KEY}"
            assert KEY not in visible()
            for setting, value in [("akidb.http_api_key_file", "'/tmp/k'"), ("akidb.model_path", "'/tmp'"),
                                   ("akidb.onnxruntime_library", "'/tmp/x.so'"), ("akidb.tensorrt_cache_path", "'/tmp'")]:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    plain.execute(f"SET {setting} = {value}")
    finally:
        conn.execute("ALTER SYSTEM RESET akidb.http_api_key_file")
        conn.execute("ALTER SYSTEM RESET akidb.model_path")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("DROP ROLE akidb_plain")
    time.sleep(0.3)
    assert KEY not in server_log()


@pytest.mark.parametrize("case,sqlstate", [("missing", "58P01"), ("world_readable", "F0000"), ("empty", "F0000"),
                                           ("two_lines", "F0000")])
def test_a_bad_key_file_is_a_clear_error_that_shows_no_key(conn, http_models, case, sqlstate):
    content = {"empty": "  \n", "two_lines": KEY + "\n" + KEY + "\n"}.get(case, KEY)
    p = write_key_file(f"bad-key-{case}", content, 0o644 if case == "world_readable" else 0o600)
    if case == "missing":
        os.unlink(p)
    use_key(conn, p)
    code, msg, _ = error_of(conn, "SELECT embed('x', 'remote-openai')")
    assert code == sqlstate and "akidb.http_api_key_file" in msg and KEY not in msg, (code, msg)
    assert http_models.seen == []
    if os.path.exists(p):
        os.unlink(p)
