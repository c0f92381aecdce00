"""A property fuzzer (hypothesis) over every parser of outside data.

Targets mutate real seeds — files of bundles, mirrors, deltas and Trivy DBs this project built, the
sample Exportfile and evidence — with byte-level mutations (flip, truncate, splice, insert) and
structure-aware ones (a JSON value replaced by another type, a hostile path, a huge number, deep
nesting, NaN). Each input goes through what a user runs: the CLI in-process (`verify`, `mirror
verify|apply`, `inspect trivy-db`, `query`) or the evidence parsers the build's actions call.

Properties checked for every input:
- no exception escapes (no traceback): the CLI returns an exit code of its table (0-5) and parsers
  raise only their documented error type;
- nothing is written outside the destination (a sentinel directory and the work root are compared
  before and after; apply/pull write only under their -o directory);
- bounded time (SIGALRM per input) and bounded memory (the runner process runs under RLIMIT_AS;
  a MemoryError is a crash).

`python -m tests.fuzz.harness --examples N [--target T]` runs it and prints, per target, inputs
tried and crashes (with a reproducer); tests/test_fuzz.py runs a short pass in CI, bench/fuzz.py a
long one.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hypothesis import HealthCheck, given, settings, strategies as st

REPO = Path(__file__).resolve().parents[2]
EXIT_CODES = {0, 1, 2, 3, 4, 5}
PER_INPUT_SECONDS = 20
MEMORY_CAP_BYTES = 3 << 30  # address space of the runner process (imports + LMDB-free commands)

HOSTILE_STRINGS = ["../../../victim/pwned", "/tmp/../victim/abs", "..", ".", "", "a/../../b",
                   "signatures/../../../../victim/x", "\x00", "ÿ" * 300, "%2e%2e/x", "C:\\x",
                   "sha256:" + "0" * 64, "sha256:zz", "x" * 5000]
HOSTILE_VALUES = [None, True, 0, -1, 2 ** 64, 10 ** 400, 1.5, "NaN", [], {}, [[[[[]]]]],
                  {"a": {"b": {"c": None}}}, "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]


class Crash(Exception):
    """A property violation: the input, what happened, and how to reproduce."""


# -- mutations -------------------------------------------------------------------------------------

@st.composite
def byte_mutation(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "splice", "zero"]))
        if not out:
            out += draw(st.binary(min_size=1, max_size=64))
            continue
        i = draw(st.integers(0, len(out) - 1))
        if op == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del out[i:]
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=256))
        elif op == "splice":
            j = draw(st.integers(0, len(out) - 1))
            out[i:i] = out[j:j + draw(st.integers(1, 512))]
        else:
            out[i:i + draw(st.integers(1, 64))] = b"\0" * min(64, len(out) - i)
    return bytes(out)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@st.composite
def json_mutation(draw, data: bytes) -> bytes:
    """Replace one value of a JSON document by a hostile one (falls back to bytes for non-JSON)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return draw(byte_mutation(data))
    paths = list(_paths(doc))
    path = draw(st.sampled_from(paths))
    kind = draw(st.sampled_from(["string", "value", "deep", "drop", "dup"]))
    if kind == "string":
        new = draw(st.sampled_from(HOSTILE_STRINGS))
    elif kind == "value":
        new = draw(st.sampled_from(HOSTILE_VALUES))
    elif kind == "deep":
        new = []
        for _ in range(3000):  # built iteratively: json.loads would recurse
            new = [new]
    else:
        new = None
    if not path:
        doc = new
    else:
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        last = path[-1]
        if kind == "drop":
            del parent[last]
        elif kind == "dup" and isinstance(parent, list):
            parent.insert(last, parent[last])
        else:
            parent[last] = new
    text = json.dumps(doc, allow_nan=True) if kind != "deep" else _dump_deep(doc)
    if draw(st.booleans()) and "NaN" in text:
        text = text.replace('"NaN"', "NaN")
    return text.encode()


def _dump_deep(doc) -> str:
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20000))
    try:
        return json.dumps(doc, allow_nan=True)
    finally:
        sys.setrecursionlimit(old)


def mutation(data: bytes, structured: bool):
    return st.one_of(byte_mutation(data), json_mutation(data)) if structured else byte_mutation(data)


# -- running the CLI in-process --------------------------------------------------------------------

def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    """The CLI's exit code and stderr for argv (in this process, so a leak or crash is ours)."""
    from stella_build.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(old)
    return code, err.getvalue()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + dirnames:
            p = Path(dirpath) / n
            try:
                st_ = p.lstat()
            except OSError:
                continue
            out[str(p.relative_to(root))] = (st_.st_size, int(st_.st_mtime_ns))
    return out


@dataclass
class Sandbox:
    """root/ holds work/ (the inputs and the destination) and victim/ (must never change)."""

    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def victim(self) -> Path:
        return self.root / "victim"

    def reset(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        if not self.victim.is_dir():
            self.victim.mkdir(parents=True)
            (self.victim / "keep.txt").write_text("must not change\n")

    def outside(self) -> dict:
        snap = _snapshot(self.root)
        return {k: v for k, v in snap.items() if not (k == "work" or k.startswith("work/"))}


def check_cli(sandbox: Sandbox, argv: list[str], allowed: set[int] = EXIT_CODES) -> int:
    before = sandbox.outside()
    try:
        code, err = run_cli(argv, sandbox.work)
    except SystemExit as exc:  # click may exit directly
        code, err = int(exc.code or 0), ""
    except BaseException as exc:  # noqa: BLE001 - that is the finding
        raise Crash(f"{' '.join(argv)} raised {type(exc).__name__}: {exc}\n{traceback.format_exc()}") from None
    if code not in allowed:
        raise Crash(f"{' '.join(argv)} exited {code}, not one of {sorted(allowed)}\n{err}")
    if "Traceback (most recent call last)" in err:
        raise Crash(f"{' '.join(argv)} printed a traceback\n{err}")
    after = sandbox.outside()
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        raise Crash(f"{' '.join(argv)} wrote outside its destination: {changed[:5]}")
    return code


# -- seeds: real outputs built once --------------------------------------------------------------

@dataclass
class Seeds:
    dir: Path
    cosign_pub: Path
    remote_key: object = None
    registry: object = None

    @property
    def json_raw(self) -> Path:
        return self.dir / "ws/stella-out/profiles/json-raw"

    @property
    def trivy_db(self) -> Path:
        return self.dir / "ws/stella-out/profiles/trivy-db"

    @property
    def mirror(self) -> Path:
        return self.dir / "ws/stella-out/profiles/mirror-full"

    @property
    def delta(self) -> Path:
        return self.dir / "ws/stella-out/profiles/mirror-delta"

    @property
    def base_mirror(self) -> Path:
        return self.dir / "base-mirror"

    @property
    def workspace(self) -> Path:
        return self.dir / "ws"


def build_seeds(directory: Path) -> Seeds:
    """Build signed json-raw, trivy-db, mirror-full, mirror-delta (+ its base) with a test key."""
    sys.path.insert(0, str(REPO))
    from tests.conftest import make_workspace
    from tests.conftest import run_cli as run_subprocess
    from tests.signed_bundle import PASSWORD, make_keys

    ws = make_workspace(directory / "ws")
    key, pub = make_keys(directory / "keys")
    env = {"STELLA_SIGNING_KEY": str(key), "COSIGN_PASSWORD": PASSWORD}
    cache = directory / "cache"
    run_subprocess(["-q", "build", "//profiles:json-raw", "//profiles:trivy-db", "//profiles:mirror-full"],
                   cwd=ws, cache=cache, env=env, check=True)
    # a delta applies to a base mirror: keep v1, change one advisory, build v2's delta against v1
    shutil.copytree(ws / "stella-out/profiles/mirror-full", directory / "delta-base")
    osv = sorted((ws / "profiles/evidence/osv").glob("*.json"))[1]
    doc = json.loads(osv.read_text())
    doc["details"] = (doc.get("details") or "") + " [fuzz seed v2]"
    osv.write_text(json.dumps(doc))
    run_subprocess(["-q", "mirror", "delta", "--base", str(directory / "delta-base"), "//profiles:mirror-delta",
                    "//profiles:mirror-full"], cwd=ws, cache=cache, env=env, check=True)
    return Seeds(directory, pub)


# -- targets -------------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    seeds: Callable[[Seeds], list[tuple[str, bytes, bool]]]   # (relative file, bytes, is JSON)
    run: Callable[[Sandbox, Seeds, str, bytes], None]
    note: str = ""


def _copy_tree(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def _files(root: Path, pred: Callable[[str], bool]) -> list[tuple[str, bytes, bool]]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and pred(rel):
            out.append((rel, p.read_bytes(), rel.endswith(".json")))
    return out


def _exportfile_seeds(s: Seeds):
    return [("profiles/Exportfile", (s.workspace / "profiles/Exportfile").read_bytes(), False)]


def _exportfile_run(box: Sandbox, s: Seeds, rel: str, data: bytes) -> None:
    ws = box.work / "ws"
    (ws / "profiles").mkdir(parents=True)
    (ws / "stella-workspace.toml").write_text("[workspace]\nexternal = {}\n")
    (ws / "profiles/Exportfile").write_bytes(data)
    check_cli(box, ["--workspace", str(ws), "query", "//profiles:all"], {0, 2})


def _evidence_seeds(s: Seeds):
    root = s.workspace / "profiles/evidence"
    return [(rel, data, rel.endswith(".json")) for rel, data, _ in _files(root, lambda r: "." in r.rsplit("/", 1)[-1])]


def _evidence_run(box: Sandbox, s: Seeds, rel: str, data: bytes) -> None:
    """The parsers the source actions call: only their documented error may escape."""
    from stella_build.rules.evidence.model import EvidenceError, SourceInfo
    from stella_build.rules.evidence.sources import alpine, osv, rustsec, sbom, vex

    source = SourceInfo(name="fuzz")
    try:
        if rel.startswith("osv/"):
            osv.normalize_osv(osv.load_osv_document(data, rel), rel, source)
        elif rel.startswith("rustsec/") or rel.endswith(".md"):
            rustsec.normalize_rustsec(data, rel, source)
        elif rel.startswith("alpine/"):
            alpine.normalize_secdb(data, rel, source)
        elif rel.startswith("vex/"):
            vex.load_vex(data, rel)
        elif rel.startswith("sbom/"):
            sbom.load_sbom(data, rel)
        else:
            return
    except EvidenceError:
        return
    except BaseException as exc:  # noqa: BLE001
        raise Crash(f"parser of {rel} raised {type(exc).__name__}: {str(exc)[:300]}\n"
                    f"{traceback.format_exc()[-2000:]}") from None


def _covered(rel: str) -> bool:
    """Files whose every byte a signature covers (not the signature files themselves)."""
    name = rel.rsplit("/", 1)[-1]
    return not (name.endswith((".sigstore.json", ".sig", ".dsse.json", ".pub")) or "/signatures/" in f"/{rel}")


def _bundle_seeds(s: Seeds):
    return _files(s.json_raw, lambda r: not r.startswith("data/"))


def _bundle_run(box: Sandbox, s: Seeds, rel: str, data: bytes) -> None:
    bundle = _copy_tree(s.json_raw, box.work / "bundle")
    (bundle / rel).write_bytes(data)
    code = check_cli(box, ["verify", str(bundle), "--key", str(s.cosign_pub)], {0, 2, 3, 4})
    # what the signatures cover must not change unnoticed; a signature file may be re-encoded
    # (whitespace, an equivalent bundle form) and still verify, as cosign's own files do
    if code == 0 and data != (s.json_raw / rel).read_bytes() and _covered(rel):
        raise Crash(f"verify --key accepted a changed {rel}")
    if rel == "bundle.tar.gz":
        check_cli(box, ["verify", str(bundle / rel), "--allow-unsigned"], {0, 2, 3, 4})


def _trivy_seeds(s: Seeds):
    return _files(s.trivy_db, lambda r: r.startswith("oci/") or r in ("metadata.json", "manifests/export.json"))


def _trivy_run(box: Sandbox, s: Seeds, rel: str, data: bytes) -> None:
    out = _copy_tree(s.trivy_db, box.work / "trivy-db")
    (out / rel).write_bytes(data)
    code = check_cli(box, ["verify", str(out), "--key", str(s.cosign_pub)], {0, 2, 3, 4})
    if code == 0 and data != (s.trivy_db / rel).read_bytes() and _covered(rel):
        raise Crash(f"verify --key accepted a changed {rel}")


def _bbolt_seeds(s: Seeds):
    return [("trivy.db", (s.trivy_db / "trivy.db").read_bytes(), False)]


def _bbolt_run(box: Sandbox, s: Seeds, rel: str, data: bytes) -> None:
    db = box.work / "trivy.db"
    db.write_bytes(data)
    check_cli(box, ["inspect", "trivy-db", str(db), "--check"], {0, 2, 3})
    check_cli(box, ["inspect", "trivy-db", str(db)], {0, 2, 3})
    check_cli(box, ["inspect", "trivy-db", str(db), "--bucket", "vulnerability"], {0, 2, 3})


def _mirror_seeds(s: Seeds):
    return _files(s.mirror, lambda r: r.startswith(("mirror/tuf/", "mirror/export.json", "oci/index.json",
                                                    "mirror.json", "mirror/signatures/")))


def _mirror_run(box: Sandbox, s: Seeds, rel: str, data: bytes) -> None:
    m = _copy_tree(s.mirror, box.work / "mirror")
    (m / rel).write_bytes(data)
    check_cli(box, ["mirror", "verify", str(m)], {0, 2, 3, 4})
    code = check_cli(box, ["mirror", "verify", str(m), "--key", str(s.cosign_pub)], {0, 2, 3, 4})
    if code == 0 and data != (s.mirror / rel).read_bytes() and _covered(rel):
        raise Crash(f"mirror verify --key accepted a changed {rel}")


def _delta_seeds(s: Seeds):
    return _files(s.delta, lambda r: r.startswith("delta/") and not r.startswith("delta/blobs/"))


def _delta_run(box: Sandbox, s: Seeds, rel: str, data: bytes) -> None:
    d = _copy_tree(s.delta, box.work / "delta")
    (d / rel).write_bytes(data)
    base = s.dir / "delta-base"
    check_cli(box, ["mirror", "verify", str(d)], {0, 2, 3, 4})
    if base.is_dir():
        out = box.work / "out"
        check_cli(box, ["mirror", "apply", str(base), str(d), "-o", str(out)], {0, 2, 3, 4})


def _remote_seeds(s: Seeds):
    """A real AC record of this build, signed by a writer key, in its wire form."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from stella_build.engine.cache.records import RecordSigner, to_wire

    key = ed25519.Ed25519PrivateKey.generate()
    result = {"action": "//profiles:json-raw#Bundle", "stats": {"records": 3},
              "outputs": [{"path": "bundle.tar.gz", "blake3": "a" * 64, "sha256": "b" * 64, "size": 10,
                           "mode": 420},
                          {"path": "bundle/manifests/export.json", "blake3": "c" * 64, "sha256": "d" * 64,
                           "size": 5, "mode": 420}]}
    s.remote_key = key
    return [("ac-record", to_wire("e" * 64, result, RecordSigner(key)), True)]


def _remote_run(box: Sandbox, s: Seeds, rel: str, data: bytes) -> None:
    """What a reader does with a remote AC value: parse, check against the declared outputs,
    check the signature. Each step answers (None, a problem, a key id); nothing may raise."""
    from stella_build.engine.cache.records import TrustedKeys, from_wire, outputs_problem

    try:
        parsed = from_wire(data)
        if parsed is None:
            return
        record, signature = parsed
        outputs_problem(record.get("outputs"), ["bundle.tar.gz", "bundle/"])
        TrustedKeys([s.remote_key.public_key()]).verify("e" * 64, record, signature)
    except BaseException as exc:  # noqa: BLE001
        raise Crash(f"remote record handling raised {type(exc).__name__}: {str(exc)[:300]}\n"
                    f"{traceback.format_exc()[-2000:]}") from None


class _Registry:
    """A read-only OCI distribution endpoint on 127.0.0.1 serving one layout, with one document
    replaced by fuzzed bytes (the tag's manifest, or a blob)."""

    def __init__(self, layout: Path, tag: str):
        import http.server
        import threading

        self.layout, self.tag = layout, tag
        self.override: dict[str, bytes] = {}
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes = b"", ctype: str = "application/json", head=False):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if code == 200 and body:
                    import hashlib
                    self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_GET(self, head=False):
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["v2"]:
                    return self._send(200, b"{}", head=head)
                if len(parts) >= 4 and parts[0] == "v2" and parts[-2] in ("manifests", "blobs"):
                    ref = parts[-1]
                    body, ctype = registry.lookup(ref)
                    if body is None:
                        return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', head=head)
                    return self._send(200, body, ctype, head=head)
                return self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}', head=head)

            def do_HEAD(self):
                self.do_GET(head=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.port = self.server.server_address[1]

    def manifest_of_tag(self) -> tuple[str, str]:
        index = json.loads((self.layout / "index.json").read_bytes())
        for m in index["manifests"]:
            if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == self.tag:
                return m["digest"], m["mediaType"]
        raise KeyError(self.tag)

    def lookup(self, ref: str) -> tuple[bytes | None, str]:
        digest, media = self.manifest_of_tag()
        if ref == self.tag:
            ref = digest
        if ref in self.override:
            return self.override[ref], media if ref == digest else "application/octet-stream"
        blob = self.layout / "blobs" / ref.replace(":", "/", 1)
        if ":" in ref and blob.is_file() and "/" not in ref.split(":", 1)[1]:
            return blob.read_bytes(), media if ref == digest else "application/octet-stream"
        return None, ""

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _registry_seeds(s: Seeds):
    layout = s.delta / "oci"
    reg = _Registry(layout, "delta")
    digest, _ = reg.manifest_of_tag()
    reg.close()
    manifest = (layout / "blobs" / digest.replace(":", "/", 1)).read_bytes()
    doc = json.loads(manifest)
    seeds = [(f"manifest {digest}", manifest, True)]
    for layer in doc.get("layers", [])[:3]:
        blob = (layout / "blobs" / layer["digest"].replace(":", "/", 1)).read_bytes()
        seeds.append((f"blob {layer['digest']}", blob, layer.get("mediaType", "").endswith("json")))
    return seeds


def _registry_run(box: Sandbox, s: Seeds, rel: str, data: bytes) -> None:
    reg = getattr(s, "registry", None)
    if reg is None:
        reg = s.registry = _Registry(s.delta / "oci", "delta")
    kind, digest = rel.split(" ", 1)
    reg.override = {digest: data}
    out = box.work / "pulled"
    check_cli(box, ["mirror", "pull", f"127.0.0.1:{reg.port}/fuzz/delta:delta", "-o", str(out)], {0, 1, 2, 3, 4})
    check_cli(box, ["mirror", "pull", f"127.0.0.1:{reg.port}/fuzz/delta:delta", "-o", str(out),
                    "--key", str(s.cosign_pub)], {0, 1, 2, 3, 4})


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("exportfile", _exportfile_seeds, _exportfile_run, "Exportfile TOML → query"),
    Target("evidence", _evidence_seeds, _evidence_run, "OSV/RustSec/Alpine/VEX/SBOM parsers"),
    Target("bundle", _bundle_seeds, _bundle_run, "export.json, provenance, signatures, bundle.tar.gz → verify"),
    Target("oci", _trivy_seeds, _trivy_run, "OCI index/manifests/blobs of a signed trivy-db → verify"),
    Target("trivydb", _bbolt_seeds, _bbolt_run, "trivy.db pages → inspect trivy-db"),
    Target("mirror", _mirror_seeds, _mirror_run, "TUF metadata, export.json, OCI index → mirror verify"),
    Target("delta", _delta_seeds, _delta_run, "manifest.diff.json, patches → mirror verify/apply"),
    Target("remote", _remote_seeds, _remote_run, "remote-cache AC records → parse, declared outputs, signature"),
    Target("registry", _registry_seeds, _registry_run, "registry manifests and blobs → mirror pull"),
]}


# -- the runner ------------------------------------------------------------------------------------

@dataclass
class Report:
    target: str
    inputs: int = 0
    crashes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _alarm(signum, frame):
    raise TimeoutError(f"an input took more than {PER_INPUT_SECONDS} s")


def run_target(target: Target, seeds: Seeds, examples: int, seed: int) -> Report:
    report = Report(target.name)
    samples = target.seeds(seeds)
    if not samples:
        report.crashes.append("no seed files found")
        return report
    box = Sandbox(Path(tempfile.mkdtemp(prefix=f"fuzz-{target.name}-")))
    started = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(st.data())
    def one(data):
        rel, content, structured = data.draw(st.sampled_from(samples))
        mutated = data.draw(mutation(content, structured))
        report.inputs += 1
        box.reset()
        signal.alarm(PER_INPUT_SECONDS)
        try:
            target.run(box, seeds, rel, mutated)
        except TimeoutError as exc:
            raise Crash(f"{target.name} {rel}: {exc}") from None
        except MemoryError:
            raise Crash(f"{target.name} {rel}: MemoryError (over the {MEMORY_CAP_BYTES >> 20} MiB cap)") from None
        finally:
            signal.alarm(0)

    random.seed(seed)
    try:
        one()
    except Crash as exc:
        report.crashes.append(str(exc)[:4000])
    except Exception as exc:  # noqa: BLE001 - a harness failure is reported, not hidden
        report.crashes.append(f"harness error: {type(exc).__name__}: {exc}")
    finally:
        report.seconds = time.perf_counter() - started
        shutil.rmtree(box.root, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=30, help="inputs per target")
    ap.add_argument("--target", action="append", choices=sorted(TARGETS), help="default: all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON report")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as tmp:
        seeds = build_seeds(Path(tmp))  # subprocess builds (LMDB maps a large address range)
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))
        reports = [run_target(TARGETS[name], seeds, args.examples, args.seed)
                   for name in (args.target or sorted(TARGETS))]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.json:
        print(json.dumps({"peak_rss_bytes": peak, "targets": [r.__dict__ for r in reports]}, indent=2))
    else:
        for r in reports:
            print(f"{r.target:<11} {r.inputs:>6} inputs  {len(r.crashes)} crashes  {r.seconds:6.1f} s")
            for c in r.crashes:
                print("  " + c.replace("\n", "\n  ")[:3000])
        print(f"peak RSS {peak / 2**20:.0f} MiB (cap {MEMORY_CAP_BYTES >> 20} MiB address space)")
    return 1 if any(r.crashes for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
