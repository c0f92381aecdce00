"""`stella-build inspect trivy-db PATH [--bucket B]... [--key K] [--check]`: look inside a trivy.db.

PATH is a ``trivy.db`` file or a directory holding one (e.g. ``stella-out/profiles/trivy-db``).
Without options it lists the top-level buckets with their entry counts and metadata.json, if one
sits beside the DB. ``--bucket`` (repeat it for nested buckets: ``--bucket 'pip::…' --bucket
werkzeug``) lists that bucket's keys; ``--key`` prints one value (raw JSON bytes). ``--check``
runs the structural checks of bbolt's ``tx.Check`` and exits 3 on any error.

A DB the reader cannot follow (a page id out of range, a cycle, elements outside their page) is
exit 3 with reason ``bbolt-corrupt`` and the page named, whatever the command; JSON (metadata.json,
values shown with ``--output json``) is parsed within the limits of ``evidence.bounded``.

The bbolt reader lives with the Trivy rules (stella_build.rules.formats.trivy.bbolt) and is imported
lazily, so the engine keeps no import-time dependency on a concrete rule.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from stella_build.engine.errors import ErrorInfo, UsageError, VerificationFailed
from stella_build.cli.common import emit
from stella_build.rules.evidence.bounded import DocumentError, load_json, read_capped

_MAX_METADATA_BYTES = 1 << 20  # metadata.json is ~200 bytes

_HELP = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=_HELP)
def inspect():
    """Look inside built outputs."""


def _db_path(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "trivy.db"
    if not p.is_file():
        raise UsageError(f"{path}: no trivy.db there", field="PATH")
    return p


def _decode(b: bytes) -> str:
    return b.decode("utf-8", errors="backslashreplace")


@inspect.command("trivy-db", context_settings=_HELP)
@click.argument("path", type=click.Path(exists=True))
@click.option("--bucket", "buckets", multiple=True, metavar="NAME",
              help="Bucket to list; repeat for nested buckets.")
@click.option("--key", metavar="KEY", help="Print the value of KEY in --bucket.")
@click.option("--check", is_flag=True, help="Run bbolt's structural checks (exit 3 on errors).")
@click.pass_obj
def inspect_trivy_db(settings, path, buckets, key, check):
    """List buckets / keys of a Trivy DB, print a value, or check its structure.

    PATH is a trivy.db or a directory holding one (a trivy-db output, a Trivy cache's db/).
    Repeat --bucket to go down nested buckets; --key prints one value (exit 2 if missing).

    \b
      stella-build inspect trivy-db stella-out/profiles/trivy-db
      stella-build inspect trivy-db stella-out/profiles/trivy-db --bucket vulnerability
      stella-build inspect trivy-db PATH --bucket 'pip::stella-build sample advisories' --bucket flask
      stella-build inspect trivy-db PATH --check
    """
    from stella_build.rules.formats.trivy.bbolt import BboltError, BboltReader

    db = _db_path(path)
    bpath = tuple(b.encode() for b in buckets)
    try:
        reader = BboltReader(db)
    except (BboltError, OSError) as exc:
        raise VerificationFailed(f"not a readable bbolt file: {str(exc).removeprefix(f'{db}: ')}",
                                 file=str(db), field="PATH", reason="bbolt-corrupt") from None
    try:
        with reader:
            _inspect(settings, reader, db, buckets, bpath, key, check)
    except BboltError as exc:  # a page the reader cannot follow; the message names it
        raise VerificationFailed(f"corrupt bbolt file: {str(exc).removeprefix(f'{db}: ')}", file=str(db),
                                 field="PATH",
                                 reason="bbolt-corrupt") from None


def _inspect(settings, reader, db: Path, buckets: tuple[str, ...], bpath: tuple[bytes, ...],
             key: str | None, check: bool) -> None:
    """The body of `inspect trivy-db` on an open reader (BboltError propagates to the caller)."""
    if check:
        errors = reader.check()
        if errors and settings.output == "json":  # one JSON document: the error object, one entry each
            raise VerificationFailed("", errors=[ErrorInfo(e, file=str(db), field="PATH", reason="bbolt-corrupt")
                                                 for e in errors])
        emit(settings, "\n".join(errors) if errors else f"{db}: OK ({reader.meta['hwm']} pages)",
             {"path": str(db), "ok": not errors, "errors": errors})
        if errors:
            raise VerificationFailed(f"{len(errors)} structural error(s)", file=str(db), field="PATH",
                                     reason="bbolt-corrupt")
        return
    if key is not None:
        if not bpath:
            raise UsageError("--key needs --bucket", field="--key")
        value = _get(reader, bpath, key.encode())
        if settings.output == "json":
            emit(settings, None, {"bucket": list(buckets), "key": key, "value": _json_or_text(value)})
        else:
            sys.stdout.write(_decode(value) + "\n")
        return
    rows = _listing(reader, bpath)
    if settings.output == "json":
        emit(settings, None, {"bucket": list(buckets), "entries": rows, **_meta(db, bpath)})
        return
    meta = _meta(db, bpath)
    if "metadata" in meta:
        click.echo("metadata.json: " + json.dumps(meta["metadata"], sort_keys=True))
    for row in rows:
        if row["type"] == "bucket":
            click.echo(f"{row['name']}/\t{row['entries']} entries")
        else:
            click.echo(f"{row['name']}\t{row['bytes']} bytes")


def _get(reader, bpath: tuple[bytes, ...], key: bytes) -> bytes:
    try:
        value = reader.get(bpath, key)
    except KeyError:
        raise UsageError(f"no bucket {'/'.join(_decode(b) for b in bpath)!r}", field="--bucket") from None
    if value is None:
        raise UsageError(f"no key {_decode(key)!r} in bucket {_decode(bpath[-1])!r}", field="--key")
    return value


def _listing(reader, bpath: tuple[bytes, ...]) -> list[dict]:
    try:
        items = list(reader.items(bpath))
    except KeyError:
        raise UsageError(f"no bucket {'/'.join(_decode(b) for b in bpath)!r}", field="--bucket") from None
    rows = []
    for k, v in items:
        if v is None:
            rows.append({"name": _decode(k), "type": "bucket",
                         "entries": sum(1 for _ in reader.items(bpath + (k,)))})
        else:
            rows.append({"name": _decode(k), "type": "key", "bytes": len(v)})
    return rows


def _meta(db: Path, bpath: tuple) -> dict:
    meta = db.parent / "metadata.json"
    if bpath or not meta.is_file():
        return {}
    try:
        return {"metadata": load_json(read_capped(meta, _MAX_METADATA_BYTES), _MAX_METADATA_BYTES)}
    except (OSError, DocumentError):
        return {}


def _json_or_text(value: bytes):
    """A value as JSON when it parses within the bounded loader's limits, else as text."""
    try:
        return load_json(value)
    except DocumentError:
        return _decode(value)
