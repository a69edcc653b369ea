"""Throwaway PostgreSQL clusters for the tests that need their own: crash (kill -9),
streaming standby. Run as the postgres user (PostgreSQL refuses root)."""
import os
import shutil
import signal
import subprocess
import time

import psycopg

RUN = os.environ.get("AKIDB_RUN", "/tmp/akidb-run")
PGBIN = os.environ["PGBIN"]


def as_postgres(*cmd, check=True, **kw):
    if os.geteuid() == 0:
        cmd = ("runuser", "-u", "postgres", "--") + cmd
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class Cluster:
    def __init__(self, name, port):
        self.name, self.port = name, port
        self.dir = os.path.join(RUN, name)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")

    def init(self, **conf):
        self.stop(check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        as_postgres(f"{PGBIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres")
        self.configure(**conf)
        return self

    def configure(self, **conf):
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = '{v}'\n")

    def start(self):
        as_postgres(f"{PGBIN}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "120", "start",
                    "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=''")
        return self

    def stop(self, check=True):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            as_postgres(f"{PGBIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=check)

    def kill9(self):
        """A crash: SIGKILL to the postmaster and every process it started."""
        pid = int(open(os.path.join(self.data, "postmaster.pid")).readline())
        children = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    stat = open(f"/proc/{p}/stat").read()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(p))
                except (OSError, ValueError, IndexError):
                    pass
        for p in [pid] + children:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in [pid] + children):
            time.sleep(0.05)

    def connect(self, **kw):
        return psycopg.connect(host=self.dir, port=self.port, user="postgres", dbname="postgres", autocommit=True, **kw)


# The signals PostgreSQL handles: INT QUIT USR1 USR2 ALRM TERM CHLD URG.
HANDLED_SIGNALS = [2, 3, 10, 12, 14, 15, 17, 23]


def threads_blocking_signals(pid):
    """{(tid, name): whether that thread of process `pid` blocks every handled signal}, from
    /proc's SigBlk."""
    seen = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        status = open(f"/proc/{pid}/task/{tid}/status").read()
        name = status.split("Name:\t")[1].split("\n")[0]
        blk = int(status.split("SigBlk:\t")[1].split("\n")[0], 16)
        seen[(int(tid), name)] = all(blk >> (s - 1) & 1 for s in HANDLED_SIGNALS)
    return seen
