"""The docs' command lines that need a third-party tool or a server, run for real.

tests/test_docs.py extracts every command of README.md and docs/*.md and runs the `stella-build`
ones that need nothing else. This file replays each document that also shows cosign, trivy,
skopeo, bazel-remote, node, tar, ... lines, in document order and in a fresh workspace: its
stella-build lines (they make what the tools check) and its tool lines, with the placeholders
bound to real things on 127.0.0.1: `http://cache:8080/` is a bazel-remote, `registry:5000` and
`registry.local` a docker-registry, and the bazel-remote examples of docs/remote-cache.md start
their own server (loopback address, temporary storage, a generated certificate and htpasswd file
for the TLS one) that a stella-build build then uses the way the document says.

A missing tool skips locally and FAILS under CI=true (tests/interop/conftest.py). Commands that
cannot run here at all are in tests/test_docs.py's ALLOWLIST, with the reason.
"""
from __future__ import annotations

import os
import re
import shlex
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.interop.cache_servers import (  # noqa: F401  (bazel_remote_cache is a fixture)
    _wait_ready,
    bazel_remote_cache,
    free_port,
    htpasswd_sha,
)
from tests.interop.conftest import require_tool, tools_dir
from tests.test_docs import DOCS, DocCommand, DocRun, all_commands, classify, expected_exit, kind_of

from .test_oci_tools import registry  # noqa: F401  (fixture: a real docker-registry on 127.0.0.1)

pytestmark = pytest.mark.interop

INTEROP_DOCS = [d for d in DOCS if any(kind_of(c) == "interop" for c in all_commands([d]))]

# signing.md: "Run these in the bundle directory" — which bundle, by the file a line verifies.
BUNDLE_DIRS = [
    (r"(?<![\w/])db\.tar\.gz\b", "stella-out/profiles/trivy-db"),
    (r"\bmirror\.tar\.zst\b", "stella-out/profiles/mirror-full"),
    (r"\bbundle\.tar\.gz\b|\bmanifests/", "stella-out/profiles/json-raw"),
]


def _fail_or_skip(msg: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def _same_file(a: Path, b: Path) -> None:
    assert a.is_file(), f"{a} missing"
    assert a.read_bytes() == b.read_bytes(), f"{a} differs from {b}"


# (regex over the documented command, check of its result) beyond "exit 0"
def _cosign_ok(run: DocRun, proc: subprocess.CompletedProcess) -> None:
    assert "Verified OK" in proc.stdout + proc.stderr, proc.stderr


def _trivy_found_requests(run: DocRun, proc: subprocess.CompletedProcess) -> None:
    # DIR/requirements.txt pins requests 2.19.0, which a sample advisory affects
    assert re.search(r"requests\b.*\bCVE-\d{4}-\d+", proc.stdout), proc.stdout[-3000:]


def _trivy_pulled_our_db(run: DocRun, proc: subprocess.CompletedProcess) -> None:
    _trivy_found_requests(run, proc)
    _same_file(run.tmp / "home" / ".cache" / "trivy" / "db" / "trivy.db",
               run.ws / "stella-out" / "profiles" / "trivy-db" / "trivy.db")


def _trivy_pulled_our_java_db(run: DocRun, proc: subprocess.CompletedProcess) -> None:
    _same_file(run.tmp / "home" / ".cache" / "trivy" / "java-db" / "trivy-java.db",
               run.ws / "stella-out" / "profiles" / "trivy-java-db" / "trivy-java.db")


def _tar_unpacked_db(run: DocRun, proc: subprocess.CompletedProcess) -> None:
    _same_file(run.ws / "cache" / "db" / "trivy.db", run.ws / "stella-out" / "profiles" / "trivy-db" / "trivy.db")


POST_CHECKS = [
    (r"^cosign verify-blob", _cosign_ok),
    (r"^trivy --cache-dir cache fs ", _trivy_found_requests),
    (r"^trivy --db-repository ", _trivy_pulled_our_db),
    (r"^trivy --java-db-repository ", _trivy_pulled_our_java_db),
    (r"^tar -xzf \S*db\.tar\.gz -C cache/db", _tar_unpacked_db),
]


def _tool_env(run: DocRun, assignments: dict[str, str]) -> dict[str, str]:
    home = run.tmp / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": f"{tools_dir() / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": str(home), "TRIVY_NO_PROGRESS": "true", "TRIVY_SKIP_VERSION_CHECK": "true"}
    if "registry" in run.values:  # skopeo: the loopback registry speaks plain HTTP (per-user config)
        conf = home / ".config" / "containers"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "registries.conf").write_text(f'[[registry]]\nlocation = "{run.values["registry"]}"\ninsecure = true\n')
        (conf / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    env.update(assignments)
    return env


def _programs(text: str) -> tuple[bool, set[str]]:
    """(whether the line needs a shell, the programs it starts)."""
    shell = bool(re.search(r"[&|;<>{}$*]", text))
    segments = re.split(r"&&|\|\||;|\|", text) if shell else [text]
    progs = set()
    for seg in segments:
        words = shlex.split(seg)
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words.pop(0)
        if words:
            progs.add(words[0])
    return shell, progs | ({"bash"} if shell else set())


def _require_tools(cmds: list[DocCommand]) -> None:
    """Every tool the document's lines need, before anything runs (fail under CI=true, else skip)."""
    for cmd in cmds:
        for prog in sorted(_programs(cmd.text)[1]):
            require_tool(prog)
        if cmd.program == "node" and not (tools_dir() / "node" / "node_modules" / "@sigstore" / "verify").is_dir():
            _fail_or_skip("@sigstore/verify is not installed (run tools/interop/install-node-tools.sh)")


def run_tool(run: DocRun, cmd: DocCommand, text: str) -> None:
    """Run one substituted third-party command line; a server (bazel-remote) keeps running until
    the document is done."""
    words = shlex.split(text)
    assignments = {}
    while re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value
    if words[0] == "bazel-remote":
        _bazel_remote(run, cmd, words)
        return
    shell, _ = _programs(text)
    _require_tools([cmd])
    cwd = run.ws
    if words[0] in ("cosign", "node"):
        cwd = next((run.ws / d for rx, d in BUNDLE_DIRS if re.search(rx, cmd.text)), run.ws)
    argv = [require_tool("bash"), "-c", text] if shell else [require_tool(words[0]), *words[1:]]
    piped = {"input": run.last_stdout} if cmd.piped_from else {"stdin": subprocess.DEVNULL}
    proc = subprocess.run(argv, cwd=cwd, env=_tool_env(run, assignments), capture_output=True, text=True,
                          timeout=300, **piped)
    want = expected_exit(cmd)
    assert proc.returncode == want, (f"{cmd}\n  ran: {text}\n  in {cwd}\n  exit {proc.returncode}, expected "
                                     f"{want}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    for rx, check in POST_CHECKS:
        if re.search(rx, cmd.text):
            check(run, proc)
    run.last_stdout = proc.stdout


# ---- docs/remote-cache.md: bazel-remote as documented, then used by stella-build ---------------

def _bazel_remote(run: DocRun, cmd: DocCommand, words: list[str]) -> None:
    binary = require_tool("bazel-remote")
    args = words[1:]
    assert "--dir" in args and "--http_address" in args, f"{cmd}: expected --dir and --http_address to rebind"
    etc = run.tmp / "etc-bazel-remote"  # the document's /etc/bazel-remote/
    etc.mkdir(exist_ok=True)
    port = free_port()
    out: list[str] = []
    it = iter(args)
    for a in it:
        if a == "--dir":
            out += [a, str(run.tmp / f"bazel-remote-{port}")]
            next(it)
        elif a == "--http_address":  # 0.0.0.0:PORT in the document; loopback only in tests
            out += [a, f"127.0.0.1:{port}"]
            next(it)
        else:
            out.append(str(etc / a.removeprefix("/etc/bazel-remote/")) if a.startswith("/etc/bazel-remote/") else a)
    tls = "--tls_cert_file" in out
    password = "docs-ci-pw"
    ctx = None
    if tls:
        from tests.test_remote_cache import _self_signed

        cert, key = _self_signed(etc)
        assert {str(cert), str(key)} == {out[out.index("--tls_cert_file") + 1], out[out.index("--tls_key_file") + 1]}
        ctx = ssl.create_default_context(cafile=str(cert))
    if "--htpasswd_file" in out:  # what the allow-listed `htpasswd -B -c /etc/bazel-remote/htpasswd ci` writes
        Path(out[out.index("--htpasswd_file") + 1]).write_text(htpasswd_sha("ci", password))
    log = run.tmp / f"bazel-remote-{port}.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([binary, *out], stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    run.cleanup.append(stop)
    scheme = "https" if tls else "http"
    _wait_ready(proc, f"{scheme}://127.0.0.1:{port}/status", {200}, log, ctx)

    def build(name: str, url: str, *extra: str, env: dict | None = None, target: str = "//profiles:json-raw") -> dict:
        res = run_cli(["build", "--remote-cache", url, "--output", "json", *extra, target], cwd=run.ws, timeout=180,
                      env={**run.env, "STELLA_CACHE_DIR": str(run.tmp / f"cache-{port}-{name}"), **(env or {})})
        assert res.code == 0, f"{cmd}: stella-build against it failed\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        return {**res.json(), "stderr": res.stderr}

    if not tls:
        # "then: --remote-cache http://cache-host:8080/stella/   (the prefix is optional, any path works)"
        url = f"http://127.0.0.1:{port}/stella/"
        first = build("writer", url)
        assert first["actions"]["executed"] > 0 and first["remote"]["ac_uploads"] > 0, first
        second = build("reader", url)
        assert second["actions"]["remote_hits"] == second["actions"]["total"] > 0, second
        return
    # "Writers then set STELLA_REMOTE_CACHE_USER=ci and STELLA_REMOTE_CACHE_PASSWORD=…; readers need
    # nothing."
    url = f"https://127.0.0.1:{port}/"
    ca = {"STELLA_REMOTE_CACHE_CA": str(etc / "cert.pem")}
    creds = {"STELLA_REMOTE_CACHE_USER": "ci", "STELLA_REMOTE_CACHE_PASSWORD": password}
    writer = build("writer", url, env={**ca, **creds})
    assert writer["remote"]["ac_uploads"] > 0 and "warning" not in writer["stderr"], writer
    reader = build("reader", url, "--remote-upload=false", env=ca)
    assert reader["actions"]["remote_hits"] == reader["actions"]["total"] > 0, reader


# ---- the test ------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", INTEROP_DOCS)
def test_documented_commands_run_with_real_tools(doc, tmp_path, request):
    cmds = all_commands([doc])
    _require_tools([c for c in cmds if classify(c) == "interop" and c.program != "stella-build"])
    text = "\n".join(c.text for c in cmds)
    run = DocRun(doc, tmp_path / "doc", interop=True, tool_runner=run_tool)
    if "http://cache:8080/" in text:
        run.values["remote_cache"] = request.getfixturevalue("bazel_remote_cache").url
    if re.search(r"\bregistry:5000/|\bregistry\.local/", text):
        run.values["registry"] = request.getfixturevalue("registry").removeprefix("http://")
    run.values["node_modules"] = str(tools_dir() / "node" / "node_modules")
    run.values["verify_bundle.js"] = str(REPO / "tests" / "interop" / "js" / "verify_bundle.js")
    executed = run.run_all()
    assert executed == [c for c in all_commands([doc]) if classify(c) in ("local", "interop")]
