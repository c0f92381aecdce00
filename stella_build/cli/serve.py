"""`stella-build serve`: the Export Center service (stella_build/service/, docs/api.md).

    stella-build serve --workspace DIR [--listen 127.0.0.1:8080] [--database URL] [--config FILE]

Embedded default: SQLite under the cache directory, builds by the engine on this machine, no
tokens (open, loopback only). `--migrate-only` upgrades the database schema and exits (the upgrade
step of docs/operations/runbook.md). Errors before serving (bad config, port taken, database
unreachable) exit 2 with a reason, like every other command.
"""
from __future__ import annotations

import socket

import click

from stella_build.cli.common import CTX, emit
from stella_build.engine.errors import UsageError


@click.command(context_settings=CTX)
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Address to serve on (default: [service] listen of the config, else 127.0.0.1:8080).")
@click.option("--database", default=None, metavar="URL", envvar="STELLA_DATABASE_URL",
              help="SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
                   "(default: SQLite under the cache directory) [env STELLA_DATABASE_URL].")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              envvar="STELLA_SERVICE_CONFIG", help="Service config TOML (tokens, tenants, quotas, "
                                                   "schedules, retention, signing) [env STELLA_SERVICE_CONFIG].")
@click.option("--migrate-only", is_flag=True, help="Upgrade the database schema, print its revision, exit.")
@click.pass_obj
def serve(settings, listen, database, config_path, migrate_only):
    """Serve the Export Center API: profiles, runs, events (SSE), downloads, metrics.

    \b
      stella-build serve --workspace . --listen 127.0.0.1:8080
      stella-build serve --config /etc/stella/service.toml --database postgresql+psycopg://export@db/export
      stella-build serve --migrate-only --database postgresql+psycopg://export@db/export
    """
    from pathlib import Path

    from stella_build.service.config import is_loopback, load_config, parse_listen
    from stella_build.service.db import Database, current_revision, default_url, upgrade
    from stella_build.service.metrics import log, setup_logging

    config = load_config(Path(config_path) if config_path else None)
    listen = listen or config.service.listen
    host, port = parse_listen(listen)
    if not config.tokens and not is_loopback(host):
        raise UsageError(f"refusing to serve on {listen} without tokens: add [[tokens]] to the config "
                         "(docs/api.md \"Access\"), or listen on 127.0.0.1", field="--listen",
                         reason="service-tokens-missing")
    workspace = settings.workspace()
    cache_dir = settings.cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    url = database or config.service.database or default_url(cache_dir)
    setup_logging("warning" if settings.quiet else "info")
    db = None
    try:
        db = Database(url)  # inside the try: a bad URL or a missing driver (mysql://) raises here
        upgrade(db)
        revision = current_revision(db)
    except Exception as exc:  # SQLAlchemy/driver errors: say which database, never a traceback
        raise UsageError(f"database {_redacted(url)} is not usable: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}", field="--database",
                         reason="database-unavailable") from None
    finally:
        if db is not None:
            db.dispose()
    if migrate_only:
        emit(settings, f"database at revision {revision}", {"ok": True, "revision": revision})
        return
    sock = _bind(host, port)
    _run(settings, config, workspace, cache_dir, url, sock, host, port)
    log("bye")


def _redacted(url: str) -> str:
    import re

    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port is a clean exit 2 (reason listen-failed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listening socket says TCP; without it every response waits ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}", field="--listen",
                         reason="listen-failed") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _run(settings, config, workspace, cache_dir, url, sock, host, port) -> None:
    import uvicorn

    from stella_build.service.app import Options, create_app
    from stella_build.service.metrics import log

    node_id = config.service.node_id or f"{socket.gethostname()}:{port}"
    jobs = config.service.jobs or settings.jobs
    app = create_app(Options(workspace=workspace.root, cache_dir=cache_dir, config=config,
                             database_url=url, jobs=jobs, node_id=node_id))
    log("serving", url=f"http://{host}:{port}", node=node_id)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=5, timeout_keep_alive=30))
    server.run(sockets=[sock])
    if not server.started:
        raise UsageError("the service did not start (see the log above)", reason="service-start-failed")
