"""Fixtures of the service tests: one shared server (module scope) on a warm cache, and fresh
servers for the tests that crash or reconfigure one. See harness.py."""
from __future__ import annotations

import pytest

from tests.service.harness import Server, config_text, make_service_workspace


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A running server with tokens for tenants acme, globex, quota (quota 2) and the sample
    workspace; stopped (SIGTERM, then SIGKILL) at the end of the module."""
    root = tmp_path_factory.mktemp("svc")
    make_service_workspace(root)
    srv = Server(root, config_text(service={"heartbeat_seconds": 0.5}))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path):
    """Factory of servers for one test; every one started is stopped at the end."""
    made: list[Server] = []

    def make(*, slow: bool = False, service: dict | None = None, extra: str = "", database: str | None = None,
             name: str = "srv", jobs: int = 2, env: dict | None = None) -> Server:
        root = tmp_path / name
        make_service_workspace(root, slow=slow)
        srv = Server(root, config_text(service=service, extra=extra), database=database, jobs=jobs, env=env or {})
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()
