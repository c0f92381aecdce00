"""`stella-build cache stats | gc | verify | push-all | clean`: maintain the local cache
(LMDB index + content-addressed blobs) and seed the remote cache."""
from __future__ import annotations

import sys

import click

from stella_build.cli.common import CTX, emit, output_option
from stella_build.cli.progress import Progress
from stella_build.engine.errors import UsageError


@click.group(context_settings=CTX)
def cache():
    """Inspect and maintain the local cache (LMDB index + content-addressed blobs)."""


def _size(text: str) -> int:
    # one strict parser (digits and a binary unit): "-5" or "inf" used to evict the whole cache
    # or end in an OverflowError traceback
    from stella_build.rules.formats.kit import parse_size
    try:
        return parse_size(text)
    except ValueError:
        raise UsageError(f"bad size '{text}' (examples: 500M, 2G, 1048576)", field="--max-size",
                         reason="bad-size") from None


@cache.command("stats")
@output_option
@click.pass_obj
def cache_stats(settings):
    """Counts and sizes of what the cache holds."""
    from stella_build.engine.cache.maintenance import stats
    data = stats(settings.cache_dir())
    emit(settings, "\n".join(f"{k}: {v}" for k, v in data.items()), data)


@cache.command("gc")
@output_option
@click.option("--max-size", required=True, help="Keep at most this many bytes of blobs (e.g. 2G, 500M).")
@click.pass_obj
def cache_gc(settings, max_size):
    """Evict least recently used results until the blobs fit in --max-size."""
    from stella_build.engine.cache.maintenance import gc
    data = gc(settings.cache_dir(), _size(max_size))
    emit(settings, "\n".join(f"{k}: {v}" for k, v in data.items()), data)


@cache.command("verify")
@output_option
@click.pass_obj
def cache_verify(settings):
    """Check the index and re-hash every blob; a damaged index is replaced by an empty one and
    corrupt blobs are deleted, so their actions rebuild. Exit 3 when anything was damaged."""
    from stella_build.engine.cache.maintenance import verify
    data = verify(settings.cache_dir())
    repaired = data["index"]["repaired"]
    bad = data["bad_results_removed"]
    damage = [{"reason": "cache-blob-corrupt", "message": f"corrupt blob {b} removed"}
              for b in data["corrupt_blobs_removed"]]
    damage += [{"reason": "cache-result-invalid", "message": f"bad action result {r} removed"} for r in bad]
    if repaired:
        damage.append({"reason": "cache-index-damaged", "message": f"index damaged ({repaired}); replaced by an empty index"})
    code = 3 if damage else 0
    emit(settings, f"corrupt blobs removed: {len(data['corrupt_blobs_removed'])}\n"
                   f"bad action results removed: {len(bad)}\n"
                   f"results with missing blobs: {data['results_with_missing_blobs']}\n"
                   + (f"index: damaged ({repaired}); replaced by an empty index"
                      if repaired else "index: ok"), data, exit_code=code, errors=damage)
    sys.exit(code)


@cache.command("push-all")
@click.argument("patterns", nargs=-1, required=True)
@output_option
@click.pass_obj
def cache_push_all(settings, patterns):
    """Seed the remote cache with every action result of LABEL... (builds them locally first).

    Needs --remote-cache (or STELLA_REMOTE_CACHE); with --remote-cache-sign-key the uploaded
    records are signed (docs/remote-cache.md). Exit 1 when any upload fails.

    \b
      stella-build --remote-cache http://cache:8080/ cache push-all //profiles/...
    """
    from stella_build.engine.build import run_build

    remote = settings.remote()
    if remote is None:
        raise UsageError("cache push-all needs --remote-cache URL or STELLA_REMOTE_CACHE", field="--remote-cache")
    if not remote.upload:
        raise UsageError("cache push-all uploads: it cannot run with --remote-upload=false",
                         field="--remote-upload")
    from stella_build.engine.scheduler import Executor
    summary = run_build(settings.workspace(), list(patterns), cache_dir=settings.cache_dir(),
                        jobs=settings.jobs, progress=Progress(quiet=settings.quiet))
    if not summary.ok:
        for err in summary.errors:
            click.echo(f"error: {err}", err=True)
        sys.exit(summary.exit_code)
    executor = Executor(settings.cache_dir(), 1, remote=remote,
                        warn=lambda msg: click.echo(f"warning: {msg}", err=True))
    from stella_build.engine.cache.remote import RemoteCacheError
    from stella_build.engine.errors import BuildFailed
    try:
        remote.required = True  # any failed upload (a 401 on PUT too) fails the command: exit 1
        sent = executor.upload(summary.outcomes, all_cached=True)
    except RemoteCacheError as exc:
        raise BuildFailed(f"remote cache upload failed: {exc}", field="--remote-cache",
                          reason="remote-cache-failed") from None
    finally:
        executor.close()
        remote.close()
    skipped = executor.upload_skipped
    data = {"actions_uploaded": sent, "actions_skipped": skipped, "signed": remote.signer is not None,
            "remote": remote.stats.as_dict()}
    emit(settings, f"uploaded {sent} action results{' (signed)' if remote.signer else ''} "
                   f"({data['remote']['bytes_up']} bytes on the wire)"
                   + (f"; skipped {skipped} adopted from a remote cache without a trusted signature"
                      if skipped else ""), data)


@cache.command("clean")
@output_option
@click.pass_obj
def cache_clean(settings):
    """Delete the whole local cache."""
    from stella_build.engine.cache.maintenance import clean
    data = clean(settings.cache_dir())
    emit(settings, f"cleaned {data['cache_dir']}", data)
