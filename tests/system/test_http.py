"""The http provider against a real server on 127.0.0.1 that the test starts: the
OpenAI and TEI shapes, and each way a server fails. The API key reaches the server and
nothing else: not pg_settings, not error messages, not the server log."""
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import psycopg
import pytest

from conftest import add_model, connect, parse_vector, server_log, set_model_path

KEY = "sk-akidb-test-7f3a9c0e5b1d"
DIMS = 8


def fake_vector(text):
    rng = np.random.default_rng(abs(hash(text)) % (2**32))
    return rng.standard_normal(DIMS).round(6).tolist()


class Server:
    """mode: ok | slow | garbage | wrong_dims | status500 | short"""

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


def test_openai_and_tei_shapes(conn, http_models):
    server = http_models
    conn.execute("SET akidb.http_api_key = %s" % ("'" + KEY + "'"))
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
])
def test_each_server_failure_is_a_clear_error_within_the_timeout(conn, http_models, mode, sqlstate, needle):
    http_models.mode = mode
    conn.execute("SET akidb.http_api_key = %s" % ("'" + KEY + "'"))
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


def test_the_key_is_superuser_only_and_never_shown(conn, http_models, model_dir):
    conn.execute("SET akidb.http_api_key = %s" % ("'" + KEY + "'"))
    conn.execute("SELECT embed('x', 'remote-openai')")
    assert conn.execute("SHOW akidb.http_api_key").fetchone()[0] == "********"
    rows = conn.execute("SELECT setting, reset_val, boot_val FROM pg_settings WHERE name = 'akidb.http_api_key'").fetchall()
    assert all(KEY not in str(r) for r in rows)
    assert KEY not in str(conn.execute("SELECT current_setting('akidb.http_api_key')").fetchone())
    everything = conn.execute("SELECT string_agg(name || '=' || coalesce(setting, ''), ',') FROM pg_settings").fetchone()[0]
    assert KEY not in everything
    conn.execute("DROP ROLE IF EXISTS akidb_plain")
    conn.execute("CREATE ROLE akidb_plain LOGIN")
    with connect(user="akidb_plain") as plain:
        plain.execute("SELECT akidb_simd()")  # loads the library, which defines the settings
        for setting, value in [("akidb.http_api_key", "'x'"), ("akidb.model_path", "'/tmp'"),
                               ("akidb.onnxruntime_library", "'/tmp/x.so'"), ("akidb.tensorrt_cache_path", "'/tmp'")]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                plain.execute(f"SET {setting} = {value}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            plain.execute("SHOW akidb.http_api_key")
    conn.execute("DROP ROLE akidb_plain")
    time.sleep(0.3)
    assert KEY not in server_log()
