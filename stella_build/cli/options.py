"""The command line's option tables, as plain data: one definition used by click (main.py, build.py)
and by the no-op fast path (entry.py), which must answer without importing click.

Global options are accepted before or after the verb, as in Bazel: `stella-build -j1 build //x`,
`stella-build build //x -j1` and `stella-build build -j1 //x` mean the same. `hoist_globals`
moves them in front of the verb before click parses the line.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptionSpec:
    """One option: its spellings, whether it takes a value, its environment variable and help.

    `kind` selects the click type in common.py: "text", "dir", "path", "paths" (repeatable),
    "seconds", "output", "jobs", "bool", "flag". `memo` says whether the value is part of the
    no-op memo's identity (entry.py)."""

    flags: tuple[str, ...]
    dest: str
    kind: str
    help: str
    envvar: str | None = None
    metavar: str | None = None
    memo: bool = True

    @property
    def takes_value(self) -> bool:
        return self.kind != "flag"


# Where a build's cache misses run (engine/executors/, docs/scale-out.md): global options like the
# rest. Not part of the no-op memo: where actions would run does not change what a no-op prints.
EXECUTOR_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(("--executor",), "executor", "text",
               "Where actions that miss the caches run: local (this machine's process pool, the "
               "default), dask-local (a Dask LocalCluster on this machine) or dask://HOST:PORT (a Dask "
               "scheduler; needs --remote-cache) [env STELLA_EXECUTOR].",
               envvar="STELLA_EXECUTOR", metavar="local|dask-local|dask://HOST:PORT", memo=False),
    OptionSpec(("--executor-fallback",), "executor_fallback", "text",
               "local: when the Dask scheduler cannot be reached, run the actions here after one "
               "warning (default: exit 5, reason executor-unreachable) [env STELLA_EXECUTOR_FALLBACK].",
               envvar="STELLA_EXECUTOR_FALLBACK", metavar="local|none", memo=False),
    OptionSpec(("--executor-recipient",), "executor_recipient", "text",
               "The Dask workers' age X25519 recipient: actions of targets with remote_secrets = true "
               "(signing) then run on the workers, their secrets sealed to it; without it they run "
               "here [env STELLA_EXECUTOR_RECIPIENT].",
               envvar="STELLA_EXECUTOR_RECIPIENT", metavar="age1…", memo=False),
)

GLOBAL_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(("--workspace",), "workspace", "dir",
               "Workspace root (default: found from the current directory)."),
    OptionSpec(("--cache-dir",), "cache_dir", "dir",
               "Local cache directory [env STELLA_CACHE_DIR; default $XDG_CACHE_HOME/stella-build].",
               envvar="STELLA_CACHE_DIR"),
    OptionSpec(("--remote-cache",), "remote_cache", "text",
               "HTTP remote cache (Bazel /ac /cas layout) [env STELLA_REMOTE_CACHE].",
               envvar="STELLA_REMOTE_CACHE", metavar="URL"),
    OptionSpec(("--remote-upload",), "remote_upload", "bool",
               "Upload results to the remote cache (--remote-upload=false: read-only)."),
    OptionSpec(("--remote-required",), "remote_required", "flag",
               "Fail the build instead of degrading when the remote cache fails."),
    OptionSpec(("--remote-cache-sign-key",), "remote_cache_sign_key", "path",
               "Sign the action results this run uploads to the remote cache with this Ed25519 or "
               "ECDSA P-256 private key (unencrypted PEM; writers such as CI) "
               "[env STELLA_REMOTE_CACHE_SIGN_KEY].",
               envvar="STELLA_REMOTE_CACHE_SIGN_KEY", metavar="PATH"),
    OptionSpec(("--remote-cache-trust",), "remote_cache_trust", "paths",
               "Accept remote cache results only when signed by one of these PEM public keys "
               "(repeatable or comma-separated). Without any, unsigned builds use unauthenticated "
               "results with a warning and signing builds use none [env STELLA_REMOTE_CACHE_TRUST].",
               metavar="PUBKEY[,PUBKEY...]"),
    OptionSpec(("--remote-cache-timeout",), "remote_cache_timeout", "seconds",
               "Remote cache connect and read timeout, and the total deadline of one small request; "
               "blob transfers get 1 s more per MiB (default 10) [env STELLA_REMOTE_CACHE_TIMEOUT].",
               envvar="STELLA_REMOTE_CACHE_TIMEOUT", metavar="SECONDS"),
    OptionSpec(("-j", "--jobs"), "jobs", "jobs", "Parallel actions (default: number of CPUs).",
               memo=False),
    OptionSpec(("--output",), "output", "output", "Result format on stdout (text or json)."),
    OptionSpec(("-q", "--quiet"), "quiet", "flag", "No progress lines.", memo=False),
    OptionSpec(("--debug",), "debug", "flag", "Show Python tracebacks for errors."),
) + EXECUTOR_OPTIONS

# Options of `build` that change what is built (not how it is shown): the fast path keys its memo
# on them; any other build option (--check) means a real build.
BUILD_MEMO_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(("--sign",), "sign", "text",
               "Sign every signable target with this cosign.key (password in $COSIGN_PASSWORD), or "
               "'keyless' (Sigstore: OIDC identity from the CI, Fulcio + Rekor, after the build; exit 4 "
               "without an identity) [env STELLA_SIGN].", envvar="STELLA_SIGN", metavar="KEY|keyless"),
    OptionSpec(("--base",), "base", "path",
               "Base for mirror_delta targets (a mirror's export.json, mirror/ tree or output "
               "directory) and trivy_db_patch targets (the sites' trivy.db, or the directory holding "
               "it); overrides the Exportfile's `base` [env STELLA_MIRROR_BASE].",
               envvar="STELLA_MIRROR_BASE", metavar="PATH"),
)

HELP_FLAGS = ("-h", "--help")


def _index(specs) -> dict[str, OptionSpec]:
    return {flag: s for s in specs for flag in s.flags}


GLOBAL_BY_FLAG = _index(GLOBAL_OPTIONS)


def _split(token: str, known: dict[str, OptionSpec]) -> tuple[OptionSpec | None, bool]:
    """The option a token spells (`--x`, `--x=v`, `-j`, `-j4`) and whether its value is attached."""
    if token.startswith("--"):
        name, eq, _ = token.partition("=")
        return known.get(name), bool(eq)
    if token.startswith("-") and len(token) >= 2:
        spec = known.get(token[:2])
        return spec, bool(spec and len(token) > 2 and spec.takes_value)
    return None, False


def hoist_globals(args: list[str], own_options: dict[str, OptionSpec] | None = None) -> list[str]:
    """Move global options (and their values) found after the verb to the front of `args`.

    An option the command itself also defines (`own_options`, e.g. `build --output`) stays where it
    is; nothing after `--` moves; help flags never move."""
    own = own_options or {}
    front: list[str] = []
    rest: list[str] = []
    i = 0
    seen_verb = False
    while i < len(args):
        tok = args[i]
        if tok == "--":
            rest.extend(args[i:])
            break
        spec, attached = _split(tok, GLOBAL_BY_FLAG)
        own_spec, own_attached = _split(tok, own)
        if own_spec is not None and seen_verb:
            rest.append(tok)
            if own_spec.takes_value and not own_attached and i + 1 < len(args):
                rest.append(args[i + 1])
                i += 1
        elif spec is not None:
            front.append(tok)
            if spec.takes_value and not attached and i + 1 < len(args):
                front.append(args[i + 1])
                i += 1
        else:
            if not tok.startswith("-"):
                seen_verb = True
            rest.append(tok)
        i += 1
    return front + rest


def parse_plain_build(argv: list[str], verbs: frozenset[str] = frozenset()) -> dict | None:
    """For a plain build command line (`[build] [global options] [--sign K] [--base P] PATTERN...`),
    {"patterns", "globals": {dest: value}, "build": {dest: value}}; None for anything else (another
    verb, --check, --help, an unknown option), which then takes the normal path."""
    known = {**GLOBAL_BY_FLAG, **_index(BUILD_MEMO_OPTIONS)}
    build_flags = {f for s in BUILD_MEMO_OPTIONS for f in s.flags}
    glob: dict[str, str | bool] = {}
    build: dict[str, str] = {}
    patterns: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        spec, attached = _split(tok, known)
        if spec is not None:
            if spec.takes_value:
                if attached:
                    value = tok.partition("=")[2] if tok.startswith("--") else tok[2:]
                elif i + 1 < len(argv):
                    value = argv[i + 1]
                    i += 1
                else:
                    return None
            else:
                value = True
            (build if spec.flags[0] in build_flags else glob)[spec.dest] = value
        elif tok == "build" and not patterns:
            pass
        elif tok.startswith("//") or tok.startswith(":"):
            patterns.append(tok)
        else:
            return None
        i += 1
    if not patterns or glob.get("output", "text") not in ("text", "json") or glob.get("debug"):
        return None
    return {"patterns": patterns, "globals": glob, "build": build}
