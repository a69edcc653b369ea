"""Shared fixtures of the system tests: a running cluster (started by scripts/system.sh,
passed in PG* variables and AKIDB_SERVER_LOG) and a model directory the tests fill."""
import json
import os
import shutil

import psycopg
import psycopg.sql
import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RUN = os.environ.get("AKIDB_RUN", "/tmp/akidb-run")


def connect(**kw):
    return psycopg.connect(dbname=os.environ.get("PGDATABASE", "postgres"), autocommit=True, **kw)


@pytest.fixture(scope="session")
def model_dir():
    """A model path readable by the server: the default model and its 8-bit variant
    (copied), plus whatever the tests write into it."""
    d = os.path.join(RUN, "system-models")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    os.chmod(d, 0o755)
    for name in ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2-q8"):
        src = os.path.join(REPO, "models", name)
        os.makedirs(os.path.join(d, name))
        for f in ("akidb.json", "model.onnx", "tokenizer.json"):
            shutil.copy(os.path.join(src, f), os.path.join(d, name, f))
    for root, dirs, files in os.walk(d):
        for x in dirs + files:
            os.chmod(os.path.join(root, x), 0o755 if x in dirs else 0o644)
    return d


def add_model(model_dir, name, manifest, files=None):
    """Writes model `name` (manifest dict, extra files name -> bytes or source path)."""
    d = os.path.join(model_dir, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with open(os.path.join(d, "akidb.json"), "w") as f:
        f.write(manifest if isinstance(manifest, str) else json.dumps(manifest))
    for fname, content in (files or {}).items():
        p = os.path.join(d, fname)
        if isinstance(content, bytes):
            open(p, "wb").write(content)
        else:
            shutil.copy(content, p)
    for root, dirs, fs in os.walk(d):
        os.chmod(root, 0o755)
        for x in fs:
            os.chmod(os.path.join(root, x), 0o644)
    return d


@pytest.fixture
def conn(model_dir):
    with connect() as c:
        set_model_path(c, model_dir)
        yield c


def set_model_path(c, path):
    c.execute(psycopg.sql.SQL("SET akidb.model_path = {}").format(psycopg.sql.Literal(path)))


def parse_vector(text):
    return [float(x) for x in text.strip("[]").split(",")]


def server_log():
    p = os.environ["AKIDB_SERVER_LOG"]
    return open(p, encoding="utf-8", errors="replace").read()
