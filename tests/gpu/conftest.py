"""The GPU tests' cluster: PostgreSQL 16 with akidb and ONNX Runtime's CUDA build, run on
the GPU machine by tests/gpu/run.sh (they need an NVIDIA GPU; `make test` has none).

The server finds the CUDA libraries (cuBLAS, cuDNN, cuFFT, ...) through LD_LIBRARY_PATH,
from $AKIDB_CUDA_LIBS; a test may restart it with another environment (no GPU, a missing
library) and must restore the normal one."""
import os
import sys

import psycopg
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "system"))
from cluster import Cluster, as_postgres  # noqa: E402

MINILM = "all-MiniLM-L6-v2"
PORT = 55490


class GpuCluster(Cluster):
    def start_with(self, **env):
        """Starts the server with the CUDA libraries on its path, plus `env` (a value of
        None removes that variable). Passed through env(1), after runuser."""
        want = {"LD_LIBRARY_PATH": os.environ.get("AKIDB_CUDA_LIBS", ""), **env}
        args = ["env"]
        for k, v in want.items():
            args += ["-u", k] if v is None else [f"{k}={v}"]
        self.stop(check=False)
        as_postgres(*args, f"{os.environ['PGBIN']}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "120", "start",
                    "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=''")
        return self

    def log_text(self):
        return open(self.log, encoding="utf-8", errors="replace").read()


@pytest.fixture(scope="session")
def cluster():
    c = GpuCluster("gpu", PORT).init(shared_buffers="256MB", max_connections="60")
    c.start_with()
    with c.connect() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS akidb")
    yield c
    c.stop(check=False)


@pytest.fixture
def conn(cluster):
    with cluster.connect() as c:
        yield c


def notices_of(conn):
    """A list that collects (message, detail) of the connection's notices."""
    seen = []
    conn.add_notice_handler(lambda d: seen.append((d.message_primary or "", d.message_detail or "")))
    return seen


def error_of(conn, sql, params=()):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, params)
    return e.value.sqlstate, e.value.diag.message_primary or "", e.value.diag.message_hint or ""
