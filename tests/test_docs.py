"""The shell commands the docs show are executed, so documented commands cannot rot.

Extraction (`extract`): fenced ```sh / ```bash / ```shell blocks of README.md and docs/*.md, and
unlabelled fenced blocks whose first line starts with a known program. Backslash-continued lines
are joined and trailing `# comments` stripped; a commented alternative such as
`# or unpack the archive: tar -xzf ...` counts as a command. `stella-build cache stats | gc ... |
clean` is shorthand for several subcommands and is expanded; a real pipe (`stella-build query ...
--output graph | dot -Tsvg > deps.svg`) runs its stella-build part, and its consumer is one more
command (run, or allow-listed).

Every extracted command is exactly one of:
- run by this file: `stella-build` lines (and the README's `python3 tools/dev.py build`) that need no
  server, in a fresh workspace per document, in document order, each exiting 0, for documents
  that show no third-party tool line;
- run by tests/interop/test_docs_interop.py: lines that need a third-party tool (cosign, trivy,
  skopeo, bazel-remote, node, tar, ...) or a server (remote cache, registry). That test replays the
  whole document, so it runs that document's lines of the first kind too (and this file does not);
- in ALLOWLIST, with the reason it cannot run here.
`test_every_documented_command_runs_or_is_allowlisted` fails when a new documented command has
neither a runner nor an allow-list entry, and each document's run asserts that it executed exactly
the commands of its class.

Placeholders become real things the tests create (`PLACEHOLDERS`): LABEL, OLD_MIRROR/BASE (a full
mirror built from the sample evidence minus one advisory), DELTA, OUT, DIR (a project for Trivy to
scan), PATH (a trivy-db output directory), keys/cosign.key, keys/cosign.pub and cosign.pub (the
documents' own `keys generate` writes them), `~/.cache/trivy` (a fresh Trivy cache directory for
`kit import`), `http://cache:8080/` (a real bazel-remote on
127.0.0.1) and `registry:5000` / `registry.local` (a real docker-registry on 127.0.0.1).
Glue the documents state in prose but do not show in a fenced block is in `_setup_*` (e.g. the
signed builds signing.md verifies). Caches are temporary; the user's are never touched.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import CLI, REPO, make_workspace, run_cli

DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"sh", "bash", "shell"}
PASSWORD = "docs-test-pw-41d7"  # the $COSIGN_PASSWORD of every documented key

# Programs that start a command line: an unlabelled block whose first line starts with one of
# these is a command block, and so is a commented alternative (`# or ...: tar -xzf ...`).
KNOWN_PROGRAMS = {
    "stella-build", "python", "python3", "pip", "cosign", "trivy", "skopeo", "bazel-remote", "docker",
    "htpasswd", "tar", "cp", "mkdir", "node", "oras", "umoci", "age", "age-keygen", "dot", "curl",
    "find", "nginx", "docker-registry", "openssl", "sha256sum", "sh",
}
# Third-party programs tests/interop/test_docs_interop.py knows how to run.
INTEROP_PROGRAMS = {"cosign", "trivy", "skopeo", "bazel-remote", "node", "tar", "mkdir", "cp", "sh"}
# A stella-build line naming one of these needs a server, so it runs in the interop test.
NEEDS_SERVER = re.compile(r"http://cache:8080/|\bregistry:5000/|\bregistry\.local/")

_KEYLESS = ("verifies a keyless bundle: only an OIDC identity (GitHub Actions) with Fulcio and Rekor "
            "on the network can make one; tests/test_keyless.py covers the offline part")
# Commands that cannot run here: (regex over the whole command, reason). Keep it short and honest.
ALLOWLIST: list[tuple[str, str]] = [
    (r"python3 tools/dev\.py test",
     "runs the whole test suite, this file included (it would recurse)"),
    (r"dot -Tsvg > deps\.svg",
     "graphviz is not installed here nor by .ci/run (not worth it for one example); the DOT text "
     "stella-build pipes into it is parsed by check_dot instead"),
    (r"docker run -d .* buchgr/bazel-remote-cache .*",
     "needs a Docker daemon (none here or in CI); the same bazel-remote flags run natively from the "
     "first example of docs/remote-cache.md"),
    (r"htpasswd -B -c /etc/bazel-remote/htpasswd ci",
     "apache2-utils is not installed; the interop test writes that file with a {SHA} line (which the "
     "comment says works too) for the TLS example after it, which does run"),
    (r"cosign verify-blob bundle\.tar\.gz --bundle bundle\.tar\.gz\.keyless\.sigstore\.json .*", _KEYLESS),
    (r"python -m sigstore verify github .*", _KEYLESS),
    (r"cosign verify-blob-attestation manifests/provenance\.json --bundle "
     r"manifests/provenance\.json\.keyless\.sigstore\.json .*", _KEYLESS),
]
# Documented commands that must exit non-zero: (regex, exit code). None at the moment.
EXPECTED_EXIT: list[tuple[str, int]] = []


# ---- extraction ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DocCommand:
    doc: str                        # "README.md", "docs/signing.md"
    line: int                       # line of the command (its first line when continued)
    text: str                       # continuation joined, trailing comment stripped
    piped_from: str | None = None   # a pipe consumer: the text of the command feeding it

    @property
    def program(self) -> str:
        words = shlex.split(self.text)
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words.pop(0)
        return words[0] if words else ""

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_ALTERNATIVE = re.compile(r"^#\s*(?:or|then)\b[^:]*:\s*(?P<cmd>\S.*)$")


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the first content line, content lines) of every fenced block."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        lang = (m["info"].split() or [""])[0].lower()
        j = i + 1
        while j < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            j += 1
        body = [ln[indent:] if ln[:indent].strip() == "" else ln for ln in lines[i + 1:j]]
        blocks.append((lang, i + 2, body))
        i = j + 1
    return blocks


def _first_word(line: str) -> str:
    words = line.split()
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words.pop(0)
    return words[0] if words else ""


def is_command_block(lang: str, lines: list[str]) -> bool:
    if lang in SHELL_LANGS:
        return True
    if lang:
        return False
    first = next((ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")), "")
    return _first_word(first.removeprefix("$ ")) in KNOWN_PROGRAMS


def _scan(text: str, stop: Callable[[str, int, bool], bool]) -> int | None:
    """Index of the first character outside quotes for which stop(text, i, at_word_start) holds."""
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote = c
        elif c == "\\":
            i += 1
        elif stop(text, i, i == 0 or text[i - 1].isspace()):
            return i
        i += 1
    return None


def strip_comment(line: str) -> str:
    cut = _scan(line, lambda t, i, word_start: t[i] == "#" and word_start)
    return (line if cut is None else line[:cut]).strip()


def split_pipes(text: str) -> list[str]:
    parts = []
    while True:
        cut = _scan(text, lambda t, i, _: t[i] == "|" and t[i + 1:i + 2] != "|" and t[i - 1:i] != "|")
        if cut is None:
            return parts + [text.strip()]
        parts.append(text[:cut].strip())
        text = text[cut + 1:]


def logical_lines(lines: list[str], first_line: int) -> list[tuple[int, str]]:
    """(line number, command) for each command of a block: continuations joined, comments stripped,
    commented alternatives (`# or ...: CMD`) kept."""
    out = []
    buf, start = "", 0
    for n, raw in enumerate(lines, first_line):
        s = raw.rstrip()
        if not buf:
            start = n
            stripped = s.strip().removeprefix("$ ")
            if not stripped:
                continue
            if stripped.startswith("#"):
                m = _ALTERNATIVE.match(stripped)
                if m and _first_word(m["cmd"]) in KNOWN_PROGRAMS:
                    out.append((n, strip_comment(m["cmd"])))
                continue
            s = stripped
        if s.endswith("\\"):
            buf += s[:-1].strip() + " "
            continue
        text = strip_comment(buf + s.strip())
        buf = ""
        if text:
            out.append((start, text))
    return out


def _group_subcommands() -> dict[str, set[str]]:
    import click

    from stella_build.cli.main import main_group
    return {name: set(cmd.commands) for name, cmd in main_group.commands.items() if isinstance(cmd, click.Group)}


def expand(doc: str, line: int, text: str) -> list[DocCommand]:
    """One command line → its commands: `stella-build cache stats | gc ... | clean` lists
    subcommands of one group; any other `|` is a real pipe (producer, then consumers)."""
    parts = split_pipes(text)
    if len(parts) == 1:
        return [DocCommand(doc, line, text)]
    head = shlex.split(parts[0])
    groups = _group_subcommands()
    if (head[0] == "stella-build" and len(head) >= 3 and head[1] in groups and head[2] in groups[head[1]]
            and all(shlex.split(p)[0] in groups[head[1]] for p in parts[1:])):
        return [DocCommand(doc, line, parts[0])] + [DocCommand(doc, line, f"stella-build {head[1]} {p}")
                                                    for p in parts[1:]]
    return [DocCommand(doc, line, parts[0])] + [DocCommand(doc, line, p, piped_from=prev)
                                                for prev, p in zip(parts, parts[1:])]


def extract(doc: str, text: str) -> list[DocCommand]:
    out = []
    for lang, first, lines in fenced_blocks(text):
        if is_command_block(lang, lines):
            for n, cmd in logical_lines(lines, first):
                out += expand(doc, n, cmd)
    return out


def all_commands(docs: list[str] = DOCS) -> list[DocCommand]:
    return [c for d in docs for c in extract(d, (REPO / d).read_text(encoding="utf-8"))]


# ---- classification ------------------------------------------------------------------------------

def allowlisted(cmd: DocCommand) -> str | None:
    return next((why for rx, why in ALLOWLIST if re.fullmatch(rx, cmd.text)), None)


def classify(cmd: DocCommand) -> str:
    """"allowlisted", "local" (run by this file) or "interop" (tests/interop/test_docs_interop.py)."""
    if allowlisted(cmd):
        return "allowlisted"
    prog = cmd.program
    words = shlex.split(cmd.text)
    if prog == "stella-build" or (prog == "python3" and words[1:3] == ["tools/dev.py", "build"]):
        return "interop" if NEEDS_SERVER.search(cmd.text) else "local"
    if prog in INTEROP_PROGRAMS:
        return "interop"
    raise AssertionError(f"{cmd}: no runner for {prog!r}: teach tests/test_docs.py (or the interop "
                         "test) to run it, or add it to ALLOWLIST with the reason it cannot run")


def kind_of(cmd: DocCommand) -> str:
    """classify(), or "unknown" (for collection: test_every_documented_command_runs_or_is_allowlisted
    reports those)."""
    try:
        return classify(cmd)
    except AssertionError:
        return "unknown"


def expected_exit(cmd: DocCommand) -> int:
    return next((code for rx, code in EXPECTED_EXIT if re.fullmatch(rx, cmd.text)), 0)


_DOT_LINE = re.compile(r'\s*(digraph \w+ \{|\}|\w+=\w+;|node \[[^\]]*\];|"[^"]+"( -> "[^"]+")?( \[.*\])?;)')


def check_dot(text: str) -> None:
    """What `dot` would read: one digraph, every statement a node, an edge or an attribute."""
    lines = text.strip().splitlines()
    assert lines and lines[0].startswith("digraph ") and lines[-1] == "}", text
    bad = [ln for ln in lines if not _DOT_LINE.fullmatch(ln)]
    assert not bad, f"not DOT: {bad}"
    assert any(" -> " in ln for ln in lines), text


# ---- running a document --------------------------------------------------------------------------

# (regex, name of the value in DocRun.values); values are created by the document's setup.
PLACEHOLDERS: list[tuple[str, str]] = [
    (r"http://cache:8080/", "remote_cache"),
    (r"(?<![\w.-])registry:5000(?=/)", "registry"),
    (r"(?<![\w.-])registry\.local(?=/)", "registry"),
    (r"(?<![\w/.-])keys/cosign\.key(?![\w.-])", "cosign.key"),
    (r"(?<![\w/.-])(?:keys/)?cosign\.pub(?![\w.-])", "cosign.pub"),
    (r"(?<=COSIGN_PASSWORD=)'…'", "password"),
    (r"…/node_modules", "node_modules"),
    (r"(?<![\w/.-])verify_bundle\.js(?![\w.-])", "verify_bundle.js"),
    (r"pip::…", "pip_bucket"),
    (r"(?<=--listen )127\.0\.0\.1:8080", "listen"),  # `stella-build serve`: a free loopback port
    (r"~/\.cache/trivy", "trivy_cache"),
    *((rf"(?<![\w$/.-]){name}(?![\w=/.-])", name)
      for name in ("OLD_MIRROR", "BASE", "DELTA", "OUT", "LABEL", "DIR", "PATH")),
]
_LEFTOVER = re.compile(r"…|(?<![\w$=-])[A-Z][A-Z_]{2,}(?![\w=-])")


@dataclass
class DocRun:
    """One document's commands, run in order in a fresh workspace under `tmp`."""

    doc: str
    tmp: Path
    interop: bool = False
    ws: Path = None  # type: ignore[assignment]
    values: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    executed: list[DocCommand] = field(default_factory=list)
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    tool_runner: Callable[["DocRun", DocCommand, str], None] | None = None
    last_stdout: str = ""

    def __post_init__(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.env = {"STELLA_CACHE_DIR": str(self.tmp / "cache"), "XDG_CACHE_HOME": str(self.tmp / "xdg"),
                    "COSIGN_PASSWORD": PASSWORD}
        self.values["password"] = shlex.quote(PASSWORD)
        self.values["listen"] = f"127.0.0.1:{_free_port()}"

    def substitute(self, cmd: DocCommand) -> str:
        text = marked = cmd.text
        for rx, name in PLACEHOLDERS:
            if re.search(rx, text):
                assert name in self.values, f"{cmd}: no value for placeholder {name!r} in this document's setup"
                text = re.sub(rx, lambda _m: self.values[name], text)
                marked = re.sub(rx, "x", marked)
        leftover = _LEFTOVER.findall(marked)
        assert not leftover, f"{cmd}: unsubstituted placeholder(s) {leftover}: add them to PLACEHOLDERS"
        return text

    def run_all(self) -> list[DocCommand]:
        setup, hooks = SETUPS.get(self.doc, (_setup_workspace, []))
        setup(self)
        fired = set()
        try:
            for cmd in all_commands([self.doc]):
                kind = classify(cmd)
                if cmd.piped_from:
                    assert self.executed and self.executed[-1].text == cmd.piped_from, f"{cmd}: no producer ran"
                if kind == "allowlisted":
                    if cmd.piped_from and cmd.program == "dot":
                        check_dot(self.last_stdout)
                    continue
                if kind == "interop" and not self.interop:
                    continue
                self.run(cmd)
                self.executed.append(cmd)
                for rx, hook in hooks:
                    if re.search(rx, cmd.text):
                        hook(self)
                        fired.add(rx)
            assert fired == {rx for rx, _ in hooks}, f"{self.doc}: setup hooks never ran: {set(dict(hooks)) - fired}"
        finally:
            for stop in reversed(self.cleanup):
                stop()
        return self.executed

    def run(self, cmd: DocCommand) -> None:
        text = self.substitute(cmd)
        if cmd.program not in ("stella-build", "python3"):
            assert self.tool_runner is not None, f"{cmd}: third-party commands run in the interop test"
            self.tool_runner(self, cmd, text)
            return
        words = shlex.split(text)
        env = dict(self.env)
        while re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        if words[0] == "python3":
            proc = subprocess.run([shutil.which("python3") or "python3", *words[1:]], cwd=self.ws,
                                  env=_hermetic_env(env), capture_output=True, text=True, timeout=180)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        elif words[1] == "serve":
            code, out, err = _serve_briefly(words[1:], cwd=self.ws, env=env)
        else:
            res = run_cli(words[1:], cwd=self.ws, env=env, timeout=180)
            code, out, err = res.code, res.stdout, res.stderr
        want = expected_exit(cmd)
        assert code == want, f"{cmd}\n  ran: {text}\n  exit {code}, expected {want}\n{out[-3000:]}\n{err[-3000:]}"
        if "--output json" in text and want == 0:
            data = json.loads(out)
            assert data.get("ok", True) is True, f"{cmd}: {out[-2000:]}"
        self.last_stdout = out


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_briefly(args: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """A documented `stella-build serve ... --listen HOST:PORT` serves until stopped: start it, wait
    (at most 30 s) until its /readyz answers 200, stop it with SIGTERM; a clean shutdown is exit 0
    (uvicorn re-raises the SIGTERM it handled, so "killed by SIGTERM" after shutdown counts as 0)."""
    import signal
    import time
    import urllib.request

    listen = args[args.index("--listen") + 1]
    proc = subprocess.Popen([CLI, *args], cwd=cwd, env=_hermetic_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ready = False
    deadline = time.monotonic() + 30
    while not ready and time.monotonic() < deadline and proc.poll() is None:
        try:
            ready = urllib.request.urlopen(f"http://{listen}/readyz", timeout=1).status == 200
        except OSError:
            time.sleep(0.1)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    code = 0 if proc.returncode == -signal.SIGTERM else proc.returncode
    return (code if ready else 99), out, err + ("" if ready else "\n(never became ready)")


def _hermetic_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STELLA_") and k not in ("SOURCE_DATE_EPOCH", "COSIGN_PASSWORD")}
    env.update(extra)
    return env


# ---- per-document setup: what the prose says but no fenced block shows ------------------------------

def _setup_readme(run: DocRun) -> None:
    """The README's commands run in a copy of the checkout (profiles/, tools/dev.py and what dev.py
    fingerprints). dev.py's venv is pre-stamped with dev.py's own fingerprint, so it runs the real
    CLI instead of pip-installing (no network). OLD_MIRROR/BASE: a full mirror of the sample
    evidence minus one advisory, so the delta has content."""
    ws = run.ws = make_workspace(run.tmp / "repo")
    for name in ("requirements.lock", "pyproject.toml", "tools/dev.py"):
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, ws / name)
    venv = run.tmp / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "stella-build").symlink_to(CLI)
    python3 = shutil.which("python3")
    assert python3, "python3 (the README's only prerequisite) is not on PATH"
    fingerprint = subprocess.run(
        [python3, "-c", "import sys; sys.path.insert(0, 'tools'); import dev; sys.stdout.write(dev._fingerprint())"],
        cwd=ws, capture_output=True, text=True, check=True, timeout=60).stdout
    (venv / ".stella-bootstrap").write_text(fingerprint)
    run.env["STELLA_VENV"] = str(venv)

    old = make_workspace(run.tmp / "old-ws")
    sorted((old / "profiles" / "evidence" / "osv").glob("*.json"))[-1].unlink()
    run_cli(["-q", "build", "//profiles:mirror-full"], cwd=old, env=run.env, check=True, timeout=180)
    run.values.update({
        "OLD_MIRROR": str(old / "stella-out" / "profiles" / "mirror-full"),
        "BASE": str(old / "stella-out" / "profiles" / "mirror-full"),
        "DELTA": "stella-out/profiles/mirror-delta",   # what `build --base OLD_MIRROR ...` just wrote
        "OUT": str(run.tmp / "mirror-v2"),
        "LABEL": "//profiles:json-raw",
        "cosign.key": str(ws / "keys" / "cosign.key"),  # written by the README's `keys generate`
        "cosign.pub": str(ws / "keys" / "cosign.pub"),
        "trivy_cache": str(run.tmp / "trivy-cache"),    # `kit import --trivy-cache ~/.cache/trivy`
    })


def _setup_signing(run: DocRun) -> None:
    run.ws = make_workspace(run.tmp / "ws")
    run.values.update({"cosign.key": str(run.ws / "keys" / "cosign.key"),
                       "cosign.pub": str(run.ws / "keys" / "cosign.pub")})


def _signed_builds(run: DocRun) -> None:
    """signing.md verifies signed json-raw, trivy-db and mirror-full outputs; it gives the build in its
    key table (`stella-build build --sign /path/cosign.key LABEL…`)."""
    run_cli(["-q", "build", "--sign", "keys/cosign.key", "//profiles:json-raw", "//profiles:trivy-db",
             "//profiles:mirror-full"], cwd=run.ws, env=run.env, check=True, timeout=180)


def _setup_trivy_db(run: DocRun) -> None:
    """The document starts from `stella-build //profiles:trivy-db` (and the Java DB). DIR: a project
    with a vulnerable requirements.txt and a JAR (so `trivy rootfs` needs the Java DB)."""
    import zipfile

    run.ws = make_workspace(run.tmp / "ws")
    run_cli(["-q", "build", "//profiles:trivy-db", "//profiles:trivy-java-db"], cwd=run.ws, env=run.env,
            check=True, timeout=180)
    scan = run.tmp / "project"
    scan.mkdir()
    (scan / "requirements.txt").write_text("requests==2.19.0\n")
    with zipfile.ZipFile(scan / "app.jar", "w") as z:
        z.writestr(zipfile.ZipInfo("META-INF/MANIFEST.MF", (2025, 1, 1, 0, 0, 0)), "Manifest-Version: 1.0\r\n\r\n")
    run.values.update({"DIR": str(scan), "PATH": "stella-out/profiles/trivy-db",
                       "pip_bucket": "pip::stella-build sample advisories"})


def _setup_offline_kit(run: DocRun) -> None:
    """offline-kit.md generates its keys and builds a signed kit itself. ~/.cache/trivy: a fresh
    Trivy cache directory; DIR: a project with a requirements.txt a sample advisory affects."""
    run.ws = make_workspace(run.tmp / "ws")
    scan = run.tmp / "project"
    scan.mkdir()
    (scan / "requirements.txt").write_text("requests==2.19.0\n")
    run.values.update({"cosign.key": str(run.ws / "keys" / "cosign.key"),
                       "cosign.pub": str(run.ws / "keys" / "cosign.pub"),
                       "trivy_cache": str(run.tmp / "trivy-cache"), "DIR": str(scan)})


def _setup_workspace(run: DocRun) -> None:
    run.ws = make_workspace(run.tmp / "ws")


# document → (setup before its first command, [(regex over a command, hook run after it)])
SETUPS: dict[str, tuple[Callable[[DocRun], None], list[tuple[str, Callable[[DocRun], None]]]]] = {
    "README.md": (_setup_readme, []),
    "docs/signing.md": (_setup_signing, [(r"^COSIGN_PASSWORD=\S+ stella-build keys generate", _signed_builds)]),
    "docs/trivy-db.md": (_setup_trivy_db, []),
    "docs/offline-kit.md": (_setup_offline_kit, []),
}  # any other document: a fresh sample workspace


# ---- tests ---------------------------------------------------------------------------------------

def test_extraction_rules():
    md = "\n".join([
        "```sh",
        "stella-build build --check //p:a   # re-run everything",
        "tool-less \\",
        "  continued  # comment",
        "stella-build cache stats | gc --max-size 2G | clean",
        "stella-build query 'deps(//p:a)' --output graph | dot -Tsvg > g.svg",
        "# or do this instead: tar -xzf x.tar.gz -C out",
        "# then: --remote-cache http://host/",
        "```",
        "```",
        "stella-out/<pkg>/<target>/",
        "```",
        "```",
        "COSIGN_PASSWORD=x stella-build keys generate --output-dir k   # unlabelled, starts with a command",
        "```",
        "```toml",
        "[targets.x]",
        "```",
    ])
    got = [(c.line, c.text, c.piped_from) for c in extract("x.md", md)]
    assert got == [
        (2, "stella-build build --check //p:a", None),
        (3, "tool-less continued", None),
        (5, "stella-build cache stats", None),
        (5, "stella-build cache gc --max-size 2G", None),
        (5, "stella-build cache clean", None),
        (6, "stella-build query 'deps(//p:a)' --output graph", None),
        (6, "dot -Tsvg > g.svg", "stella-build query 'deps(//p:a)' --output graph"),
        (7, "tar -xzf x.tar.gz -C out", None),
        (14, "COSIGN_PASSWORD=x stella-build keys generate --output-dir k", None),
    ]
    check_dot('digraph g {\n  rankdir=LR;\n  node [shape=box];\n  "a" [label="a\\n(x)"];\n  "a" -> "b";\n}\n')
    with pytest.raises(AssertionError):
        check_dot("usage: stella-build query ...\n")


def test_every_documented_command_runs_or_is_allowlisted():
    cmds = all_commands()
    kinds = {c: classify(c) for c in cmds}  # raises for a command nobody runs
    assert len(cmds) >= 40, "the extractor lost the docs' commands"
    for rx, why in ALLOWLIST:
        assert any(re.fullmatch(rx, c.text) for c in cmds), f"stale ALLOWLIST entry {rx!r} ({why})"
    for rx, _ in EXPECTED_EXIT:
        assert any(re.fullmatch(rx, c.text) for c in cmds), f"stale EXPECTED_EXIT entry {rx!r}"
    summary = {k: sum(1 for v in kinds.values() if v == k) for k in ("local", "interop", "allowlisted")}
    print(f"\n{len(cmds)} documented commands: {summary}")


def _interop_replays_docs() -> bool:
    """Whether tests/interop/test_docs_interop.py replays the documents that show tool lines: under
    CI=true always (a missing tool fails it), elsewhere when every tool it needs is installed."""
    if os.environ.get("CI") == "true":
        return True
    from tests.interop.conftest import find_tool, tools_dir

    return all(find_tool(p) for p in sorted({*INTEROP_PROGRAMS, "docker-registry"})) and \
        (tools_dir() / "node" / "node_modules" / "@sigstore" / "verify").is_dir()


# A document that also shows third-party tool lines is replayed whole, its stella-build lines
# included, by the interop test; running its stella-build lines here too would only do the same
# work twice. Where that test cannot run (a tool missing, outside CI), they run here.
INTEROP_DOCS = {c.doc for c in all_commands() if kind_of(c) == "interop"}
LOCAL_DOCS = sorted({c.doc for c in all_commands() if kind_of(c) == "local"}
                    - (INTEROP_DOCS if _interop_replays_docs() else set()), key=DOCS.index)


@pytest.mark.parametrize("doc", LOCAL_DOCS)
def test_documented_stella_build_commands_run(doc, tmp_path):
    run = DocRun(doc, tmp_path / "doc")
    executed = run.run_all()
    expected = [c for c in all_commands([doc]) if classify(c) == "local"]
    assert executed == expected
