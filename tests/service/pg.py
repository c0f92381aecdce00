"""A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries (initdb, pg_ctl) on a
temporary port and data directory, as the `postgres` user when we are root (PostgreSQL refuses to
run as root), listening on 127.0.0.1 only, fsync off, stopped (immediate) and removed at the end.
Startup is bounded (pg_ctl -w -t 30)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.service.harness import free_port


def find_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class Postgres:
    def __init__(self):
        self.initdb, self.pg_ctl, self.psql = find_bin("initdb"), find_bin("pg_ctl"), find_bin("psql")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="stella-pg-"))
        self.data = self.dir / "data"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *argv, timeout=60):
        return subprocess.run(self.as_user + list(argv), check=True, capture_output=True, text=True, timeout=timeout)

    def start(self) -> "Postgres":
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        self._run(self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "-t", "30", "start")
        return self

    def create_database(self) -> str:
        """A fresh database; its SQLAlchemy URL."""
        name = "t" + uuid.uuid4().hex[:12]
        self._run(self.psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
