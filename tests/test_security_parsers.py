"""Bounded parsing of outside data: evidence files, bundles and Trivy DBs (security faults 5, 6, 9).

- Memory (5): a YAML "billion laughs" evidence file and gzip bombs in `bundle.tar.gz` run in a
  child under a memory cap and must end with a clean error (exit code + reason), not a MemoryError;
  with a trusted key an archive nobody signed is never decompressed.
- Cycles (6): a bbolt file whose branch page points at itself makes `inspect trivy-db --key` exit
  3 naming the page (it used to loop forever); other impossible page ids, elements and nestings too.
- Tracebacks (9): deep nesting, NaN/Infinity and 100,000-digit integers in every evidence format
  fail the build with exit 1 and reason `evidence-invalid` naming the file; in export.json,
  provenance.json and signature files `verify` fails a check (exit 3) naming the file.

Children are capped with RLIMIT_AS (1 GiB), except a build: the build's LMDB cache index reserves
64 GiB of address space for its map (a file mapping, engine/cache/index.py), so a build runs under
RLIMIT_DATA (private memory: the Python heap of the CLI and of its workers) instead.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import pytest

from stella_build.cli.main import main as cli_main
from stella_build.rules.evidence.model import EvidenceError, SourceInfo
from stella_build.rules.evidence.sources import alpine, osv, rustsec, sbom, vex
from stella_build.rules.formats.trivy.bbolt import BboltError, BboltReader, write_tree

from tests.conftest import CLI, make_workspace, run_cli
from tests.signed_bundle import PASSWORD, make_keys

CAP = 1 << 30  # 1 GiB for every child that parses hostile input
PAGE = 4096


# -- hostile inputs --------------------------------------------------------------------------------

def yaml_bomb(levels: int = 9, width: int = 9) -> bytes:
    """A ~500-byte OSV YAML document whose aliases expand to width**levels strings (387 million)."""
    lines = ["id: BOMB-1", "modified: '2024-01-01T00:00:00Z'", "database_specific:",
             "  a0: &a0 [" + ",".join(['"lol"'] * width) + "]"]
    lines += [f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return ("\n".join(lines) + "\n").encode()


def gzip_tar_bomb(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """A .tar.gz of ~size/1000 bytes holding one tar member `name` of `size` zero bytes (or a header
    of that type and size). Deflate blocks after a full flush do not refer back, so one compressed
    MiB of zeros is repeated instead of compressing gigabytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.type = size, 0, kind
    head = info.tobuf(format=tarfile.USTAR_FORMAT)
    tail = b"\0" * ((-size) % 512 + 1024)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = 1 << 20
    body = [comp.compress(head), comp.flush(zlib.Z_FULL_FLUSH)]
    block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
    n, rest = divmod(size, chunk)
    body += [block * n, comp.compress(bytes(rest) + tail) + comp.flush()]
    crc = zlib.crc32(head)
    zeros = bytes(chunk)
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(bytes(rest) + tail, crc)
    total = len(head) + size + len(tail)
    return (b"\x1f\x8b\x08\x00\0\0\0\0\x02\xff" + b"".join(body)
            + struct.pack("<II", crc & 0xFFFFFFFF, total & 0xFFFFFFFF))


DEEP = b"[" * 100_000
BIG_INT = b"9" * 100_000


# -- running a child under a memory cap ------------------------------------------------------------

_LAUNCHER = """
import json, resource, subprocess, sys, time
kind, cap, report = getattr(resource, sys.argv[1]), int(sys.argv[2]), sys.argv[3]
resource.setrlimit(kind, (cap, cap))
t = time.monotonic()
p = subprocess.run(sys.argv[4:], capture_output=True, text=True, timeout=120)
with open(report, "w") as f:
    json.dump({"code": p.returncode, "stdout": p.stdout, "stderr": p.stderr,
               "seconds": time.monotonic() - t,
               "peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}, f)
"""


def run_capped(argv: list[str], tmp_path: Path, *, limit: str = "RLIMIT_AS", cwd: Path | None = None,
               env: dict | None = None) -> dict:
    """Run argv under `limit` = CAP (set in a launcher, so only this child and its own children
    are measured); returns code, stdout, stderr, seconds and peak_mib (largest RSS among them)."""
    report = tmp_path / f"report-{time.monotonic_ns()}.json"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STELLA_")}
    full_env.update(env or {})
    subprocess.run([sys.executable, "-c", _LAUNCHER, limit, str(CAP), str(report), *argv],
                   cwd=cwd, env=full_env, check=True, timeout=180)
    return json.loads(report.read_text())


def _checks(report: dict, status: str = "failed") -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in report["checks"]:
        if c["status"] == status:
            out.setdefault(c["name"], []).append(c)
    return out


# -- fault 5 / 9: evidence files -------------------------------------------------------------------

RUSTSEC_HEAD = b'```toml\n[advisory]\nid = "RUSTSEC-2099-0001"\npackage = "x"\ndate = "2021-01-01"\n'
SECDB = b'{"distroversion": "v3.20", "reponame": "main", "packages": [{"pkg": {"name": "x", "secfixes": %s}}]}'
# target -> (rule, file name, content, field the error names or None to skip that assertion)
HOSTILE_EVIDENCE = {
    "osv-yaml-bomb": ("osv_source", "bomb.yaml", yaml_bomb(), "<document>"),
    "osv-deep": ("osv_source", "deep.json", DEEP, "<document>"),
    "osv-nan": ("osv_source", "nan.json", b'{"id": "X", "modified": NaN}', "<document>"),
    "osv-infinity": ("osv_source", "inf.json", b'{"id": "X", "score": -Infinity}', "<document>"),
    "osv-overflow": ("osv_source", "overflow.json", b'{"id": "X", "score": 1e999}', "<document>"),
    "osv-bigint": ("osv_source", "bigint.json", b'{"id": "X", "n": ' + BIG_INT + b"}", "<document>"),
    "vex-deep": ("vex_source", "deep.json", b'{"a":' * 100_000, "<document>"),
    "vex-nan": ("vex_source", "nan.json", b'{"@context": "https://openvex.dev/ns/v0.2.0", "x": NaN}',
                "<document>"),
    "vex-bigint": ("vex_source", "bigint.json", b'{"version": ' + BIG_INT + b"}", "<document>"),
    "sbom-deep": ("sbom_source", "deep.json", DEEP, "<document>"),
    "sbom-infinity": ("sbom_source", "inf.json", b'{"bomFormat": "CycloneDX", "x": Infinity}', "<document>"),
    "sbom-bigint": ("sbom_source", "bigint.json", b'{"bomFormat": "CycloneDX", "n": ' + BIG_INT + b"}",
                    "<document>"),
    "rustsec-deep": ("rustsec_source", "RUSTSEC-deep.md", RUSTSEC_HEAD + b"x = " + DEEP + b"\n```\n",
                     "<front matter>"),
    "rustsec-nan": ("rustsec_source", "RUSTSEC-nan.md", RUSTSEC_HEAD + b"x = nan\n```\n", "advisory.x"),
    "rustsec-infinity": ("rustsec_source", "RUSTSEC-inf.md", RUSTSEC_HEAD + b"x = -inf\n```\n", "advisory.x"),
    "rustsec-bigint": ("rustsec_source", "RUSTSEC-big.md", RUSTSEC_HEAD + b"x = " + BIG_INT + b"\n```\n",
                       "<front matter>"),
    "alpine-yaml-bomb": ("alpine_secdb_source", "main.yaml", yaml_bomb(), "<document>"),
    "alpine-deep": ("alpine_secdb_source", "main.json", DEEP, "<document>"),
    "alpine-deep-999": ("alpine_secdb_source", "deep.json", b"[" * 999 + b"]" * 999, None),
    # the base loader keeps every scalar a string: NaN and huge numbers are then just bad ids
    "alpine-nan": ("alpine_secdb_source", "nan.json", SECDB % b'{"1.0-r0": [NaN]}', None),
    "alpine-bigint": ("alpine_secdb_source", "big.json", SECDB % (b'{"1.0-r0": [' + BIG_INT + b"]}"), None),
}


@pytest.fixture(scope="module")
def hostile_build(tmp_path_factory) -> dict:
    """One build of a target per hostile file (plus a 65 MiB file) under the memory cap."""
    root = tmp_path_factory.mktemp("hostile-evidence")
    ws = root / "ws"
    (ws / "ev").mkdir(parents=True)
    (ws / "stella-workspace.toml").write_text("[workspace]\nexternal = {}\n")
    targets = []
    for target, (rule, name, content, _field) in HOSTILE_EVIDENCE.items():
        (ws / "ev" / target).mkdir()
        (ws / "ev" / target / name).write_bytes(content)
        targets.append(f'[targets.{target}]\nrule = "{rule}"\nsrcs = ["{target}/*"]\nshards = 1\nstrict = true\n')
    (ws / "ev" / "too-large").mkdir()
    with open(ws / "ev" / "too-large" / "sbom.json", "wb") as f:  # sparse: no disk, no time
        f.truncate((64 << 20) + 1)
    targets.append('[targets.too-large]\nrule = "sbom_source"\nsrcs = ["too-large/*"]\nshards = 1\nstrict = true\n')
    (ws / "ev" / "Exportfile").write_text("\n".join(targets))
    res = run_capped([CLI, "--cache-dir", str(root / "cache"), "--output", "json", "-j2",
                      *(f"//ev:{t}" for t in [*HOSTILE_EVIDENCE, "too-large"])],
                     root, limit="RLIMIT_DATA", cwd=ws)
    res["json"] = json.loads(res["stdout"])
    res["errors"] = {e["target"].split(":")[1]: e for e in res["json"]["errors"]}
    return res


@pytest.mark.parametrize("target", sorted(HOSTILE_EVIDENCE))
def test_hostile_evidence_fails_its_build_naming_the_file(hostile_build, target):
    _rule, name, _content, field = HOSTILE_EVIDENCE[target]
    assert hostile_build["code"] == 1, hostile_build["stderr"]
    assert "Traceback" not in hostile_build["stderr"]
    err = hostile_build["errors"][target]
    assert err["reason"] == "evidence-invalid", err
    assert err["file"] == f"ev/{target}/{name}"
    if field is not None:
        assert err["field"] == field, err


def test_every_hostile_target_failed_and_memory_stayed_bounded(hostile_build):
    assert set(hostile_build["errors"]) == {*HOSTILE_EVIDENCE, "too-large"}
    assert hostile_build["json"]["actions"]["failed"] == len(HOSTILE_EVIDENCE) + 1
    # the YAML bomb alone used to take 11.7 GB; the cap (1 GiB of heap) would have ended it
    # with a MemoryError, which is reason rule-bug, not evidence-invalid
    assert hostile_build["peak_mib"] < 512, hostile_build["peak_mib"]


def test_evidence_file_over_the_size_limit_is_refused_before_reading(hostile_build):
    err = hostile_build["errors"]["too-large"]
    assert err["reason"] == "evidence-too-large" and err["file"] == "ev/too-large/sbom.json"


SRC = SourceInfo(name="t")
PARSERS = {
    "osv-json": lambda d: osv.normalize_osv(osv.load_osv_document(d, "a.json"), "a.json", SRC),
    "vex": lambda d: vex.load_vex(d, "v.json"),
    "sbom": lambda d: sbom.load_sbom(d, "s.json"),
}


@pytest.mark.parametrize("fmt", sorted(PARSERS))
@pytest.mark.parametrize("content, field", [
    (DEEP, "<document>"),
    (b"[" * 150 + b"]" * 150, "[0][0][0][0][0][0][0][0][0][0][0][0]…(88 more levels)"),  # valid JSON
    (b'{"a": NaN}', "<document>"),
    (b'{"a": [1, Infinity]}', "<document>"),
    (b'{"a": ' + BIG_INT + b"}", "<document>"),
    (b'{"a": -' + b"1" * 1001 + b"}", "<document>"),  # under Python's 4,300 digits, over ours
])
def test_json_parsers_raise_only_evidence_errors(fmt, content, field):
    with pytest.raises(EvidenceError) as info:
        PARSERS[fmt](content)
    assert info.value.reason == "evidence-invalid" and info.value.field == field


def test_yaml_aliases_are_refused_and_plain_anchors_accepted():
    for parse in (lambda d: osv.load_osv_document(d, "a.yaml"), lambda d: alpine.load_secdb(d, "m.yaml")):
        for doc in (yaml_bomb(), b"a: &x [*x]\n", b"a: &x {k: v}\nb: {<<: *x}\n"):
            with pytest.raises(EvidenceError, match="alias") as info:
                parse(doc)
            assert info.value.reason == "evidence-invalid"
    doc = osv.load_osv_document(b"id: X\nmodified: '2024-01-01T00:00:00Z'\nsummary: &s text\n", "a.yaml")
    assert doc["summary"] == "text"


def test_toml_and_yaml_numbers_name_the_field():
    with pytest.raises(EvidenceError) as info:
        rustsec.normalize_rustsec(RUSTSEC_HEAD + b"cvss = nan\n```\n", "r.md", SRC)
    assert info.value.field == "advisory.cvss"
    with pytest.raises(EvidenceError) as info:
        osv.load_osv_document(b"id: X\nmodified: x\ndatabase_specific: {score: .inf}\n", "a.yaml")
    assert info.value.field == "database_specific.score"


def test_secdb_entry_with_unbalanced_parentheses_parses_in_linear_time():
    # the regex this replaced took 14 s on 20,000 "(" (quadratic retries), 50,000 took ~90 s
    entry = "CVE-2020-0001 " + "(" * 50_000
    doc = b'{"distroversion": "v3.20", "reponame": "main", "packages": [{"pkg": {"name": "x", ' \
          b'"secfixes": {"1.0-r0": ["' + entry.encode() + b'", "CVE-2020-0002 (x) y(z"]}}}]}'
    start = time.monotonic()
    out = alpine.normalize_secdb(doc, "main.json", SRC)
    assert time.monotonic() - start < 2
    assert [a.id for a in out] == ["CVE-2020-0001", "CVE-2020-0002"]
    assert alpine.secfix_ids("CVE-2018-14468 (FrameRelay) XSA-1 (a\nb) ZBX-2") == (
        ["CVE-2018-14468"], ["XSA-1", "ZBX-2"])


_PARSE_BOMB = """
import sys
from stella_build.rules.evidence.model import EvidenceError
from stella_build.rules.evidence.sources import alpine, osv
data = sys.stdin.buffer.read()
for parse in (lambda: osv.load_osv_document(data, "b.yaml"), lambda: alpine.load_secdb(data, "m.yaml")):
    try:
        parse()
    except EvidenceError as exc:
        print(exc.reason)
"""


def test_yaml_bomb_parsers_under_an_address_space_cap(tmp_path):
    script = tmp_path / "parse.py"
    script.write_text(_PARSE_BOMB)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_bytes(yaml_bomb())
    res = run_capped(["sh", "-c", f'"{sys.executable}" "{script}" < "{bomb}"'], tmp_path)
    assert res["code"] == 0, res["stderr"]
    assert res["stdout"].split() == ["evidence-invalid", "evidence-invalid"]
    assert res["peak_mib"] < 256, res["peak_mib"]


# -- fault 5: gzip bombs in verify -----------------------------------------------------------------

BOMBS = {
    # manifests/export.json is kept in memory: refused on its tar header (2 GiB of it used to take 4.2 GB)
    "manifest": ("manifests/export.json", 1 << 30, tarfile.REGTYPE),
    # a data member is only hashed: the decompressed-size cap stops it
    "data": ("data/x.jsonl.zst", 1 << 30, tarfile.REGTYPE),
    # a PAX header is read whole by tarfile: refused on its declared size
    "pax-header": ("././@PaxHeader", 1 << 30, tarfile.XHDTYPE),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_gzip_bomb_fails_verify_cleanly_in_bounded_memory(bomb, tmp_path):
    name, size, kind = BOMBS[bomb]
    archive = tmp_path / "bundle.tar.gz"
    archive.write_bytes(gzip_tar_bomb(name, size, kind))
    assert archive.stat().st_size < size // 500
    res = run_capped([CLI, "verify", str(archive), "--allow-unsigned", "--output", "json"], tmp_path)
    assert res["code"] == 3, res["stdout"] + res["stderr"]
    (check,) = _checks(json.loads(res["stdout"]))["archive-readable"]
    assert check["file"] == "bundle.tar.gz"
    assert res["peak_mib"] < 256, res["peak_mib"]
    assert res["seconds"] < 30


def test_unsigned_archive_is_never_unpacked_with_a_key(tmp_path):
    keys = tmp_path / "keys"
    make_keys(keys)
    archive = tmp_path / "bundle.tar.gz"
    archive.write_bytes(gzip_tar_bomb("data/x", 1 << 30))
    res = run_capped([CLI, "verify", str(archive), "--key", str(keys / "cosign.pub"), "--output", "json"],
                     tmp_path)
    assert res["code"] == 3, res["stderr"]
    failed = _checks(json.loads(res["stdout"]))
    assert failed["archive-readable"][0]["file"] == "bundle.tar.gz"
    assert "not unpacked" in failed["archive-readable"][0]["message"]
    assert "archive-signature" in failed
    assert res["seconds"] < 10 and res["peak_mib"] < 256  # 1 GiB of zeros never inflated


# -- fault 9: hostile JSON in bundles ----------------------------------------------------------------

@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> dict:
    """Signed json-raw and trivy-db outputs (throwaway key)."""
    root = tmp_path_factory.mktemp("signed-bounded")
    make_keys(root / "keys")
    ws = make_workspace(root / "ws")
    run_cli(["-q", "build", "//profiles:json-raw", "//profiles:trivy-db"], cwd=ws, cache=root / "cache",
            check=True, env={"COSIGN_PASSWORD": PASSWORD, "STELLA_SIGNING_KEY": str(root / "keys/cosign.key")})
    return {"root": root, "pub": str(root / "keys/cosign.pub"),
            "json-raw": ws / "stella-out/profiles/json-raw", "trivy-db": ws / "stella-out/profiles/trivy-db"}


def _verify(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli_main(["verify", *args, "--output", "json"])  # an escaping exception fails the test
    return code, json.loads(capsys.readouterr().out)


HOSTILE_JSON = {"deep": DEEP, "nan": b'{"contents": NaN}', "bigint": b'{"bytes": ' + BIG_INT + b"}"}
# (profile, file replaced, check that must fail naming that file)
DOCUMENTS = [
    ("json-raw", "manifests/export.json", "manifest"),
    ("json-raw", "manifests/provenance.json", "provenance-subjects"),
    ("json-raw", "manifests/export.json.sigstore.json", "manifest-signature"),
    ("json-raw", "manifests/provenance.dsse.json", "provenance-signature"),
    ("json-raw", "manifests/provenance.sigstore.json", "provenance-signature"),
    ("trivy-db", "manifests/export.json", "manifest"),
]


@pytest.mark.parametrize("kind", sorted(HOSTILE_JSON))
@pytest.mark.parametrize("profile, rel, check", DOCUMENTS)
def test_hostile_json_in_a_bundle_fails_a_check_naming_the_file(signed, tmp_path, capsys, profile, rel,
                                                                  check, kind):
    work = tmp_path / "b"
    shutil.copytree(signed[profile], work)
    (work / rel).write_bytes(HOSTILE_JSON[kind])
    code, report = _verify(capsys, str(work), "--key", signed["pub"])
    assert code == 3
    failed = _checks(report)
    assert any(c["file"] == rel for c in failed[check]), failed
    assert rel in report["failed_files"]


def test_hostile_oci_index_fails_the_referrer_check(signed, tmp_path, capsys):
    work = tmp_path / "t"
    shutil.copytree(signed["trivy-db"], work)
    (work / "oci/index.json").write_bytes(DEEP)
    code, report = _verify(capsys, str(work), "--key", signed["pub"])
    assert code == 3
    failed = _checks(report)
    assert "oci-referrer-signature" in failed and "oci/index.json" in report["failed_files"]


def test_hostile_archive_sidecar_fails_the_archive_signature(signed, tmp_path, capsys):
    work = tmp_path / "b"
    shutil.copytree(signed["json-raw"], work)
    (work / "bundle.tar.gz.sigstore.json").write_bytes(DEEP)
    code, report = _verify(capsys, str(work / "bundle.tar.gz"), "--key", signed["pub"])
    assert code == 3
    failed = _checks(report)
    assert failed["archive-signature"][0]["file"] == "bundle.tar.gz.sigstore.json"
    # signatures/export.sig still vouches for the archive: it is unpacked and its contents checked
    assert "archive-readable" not in failed and "contents" in _checks(report, "passed")
    (work / "signatures/export.sig").unlink()
    code, report = _verify(capsys, str(work / "bundle.tar.gz"), "--key", signed["pub"])
    failed = _checks(report)
    assert code == 3 and "not unpacked" in failed["archive-readable"][0]["message"]
    assert "contents" not in _checks(report, "passed")


@pytest.mark.parametrize("rel, limit, check", [
    ("manifests/export.json", 64 << 20, "manifest"),
    ("manifests/export.json.sigstore.json", 1 << 20, "manifest-signature"),
])
def test_oversized_documents_are_refused_before_reading(signed, tmp_path, capsys, rel, limit, check):
    work = tmp_path / "b"
    shutil.copytree(signed["json-raw"], work)
    with open(work / rel, "r+b") as f:  # sparse: one byte over the limit, no disk used
        f.truncate(limit + 1)
    code, report = _verify(capsys, str(work), "--key", signed["pub"])
    failed = _checks(report)
    assert code == 3 and failed[check][0]["file"] == rel, failed
    assert f"{limit + 1} bytes, more than the {limit}" in failed[check][0]["message"]


def test_a_signed_tarball_still_verifies(signed, capsys):
    code, report = _verify(capsys, str(signed["json-raw"] / "bundle.tar.gz"), "--key", signed["pub"])
    assert code == 0 and report["format"] == "tarball"
    assert {c["name"] for c in report["checks"]} >= {"archive-signature", "contents", "rerun-hash"}


# -- fault 6: bbolt reader -----------------------------------------------------------------------------

def _db(tmp_path: Path, tree: dict, name: str = "ok.db") -> Path:
    path = tmp_path / name
    write_tree(path, tree)
    return path


BIG_BUCKET = {b"vulnerability": {b"CVE-%05d" % i: b'{"Title":"t"}' + b"y" * 80 for i in range(2000)}}


def _self_referencing(tmp_path: Path) -> tuple[Path, int]:
    """BIG_BUCKET with every child of its root branch page pointing at the branch page itself."""
    path = _db(tmp_path, BIG_BUCKET)
    with BboltReader(path) as r:
        branch = r.tree_pages((b"vulnerability",))[0]
    assert branch[2] == "branch"
    pgid = branch[1]
    data = bytearray(path.read_bytes())
    count = struct.unpack_from("<H", data, pgid * PAGE + 10)[0]
    for i in range(count):
        off = pgid * PAGE + 16 + 16 * i
        pos, ks, _child = struct.unpack_from("<IIQ", data, off)
        struct.pack_into("<IIQ", data, off, pos, ks, pgid)
    bad = tmp_path / "cycle" / "trivy.db"
    bad.parent.mkdir()
    bad.write_bytes(bytes(data))
    return bad, pgid


@pytest.mark.parametrize("args", [
    ["--bucket", "vulnerability", "--key", "CVE-01000"],
    ["--bucket", "vulnerability"],
    ["--check"],
])
def test_inspect_a_self_referencing_page_exits_3_naming_it(tmp_path, args):
    db, pgid = _self_referencing(tmp_path)
    res = run_cli(["--output", "json", "inspect", "trivy-db", str(db), *args], cwd=tmp_path, timeout=30)
    assert res.code == 3, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    errors = res.json()["errors"]  # --check: one per structural error; otherwise the one that stopped it
    assert all(e["reason"] == "bbolt-corrupt" and e["file"] == str(db) for e in errors)
    assert any(f"page {pgid}" in e["message"] for e in errors)
    assert len(errors) > 1 if "--check" in args else len(errors) == 1


def test_reader_raises_bbolt_errors_naming_the_page(tmp_path):
    db, pgid = _self_referencing(tmp_path)
    with BboltReader(db) as r:
        for query in (lambda: r.get((b"vulnerability",), b"CVE-00001"),
                      lambda: list(r.items((b"vulnerability",))),
                      lambda: r.tree_pages((b"vulnerability",)),
                      lambda: r.to_tree()):
            with pytest.raises(BboltError, match=f"page {pgid}"):
                query()
        assert any(f"page {pgid}: multiple references" in e for e in r.check())


def test_reader_bounds_page_ids_and_elements(tmp_path):
    path = _db(tmp_path, BIG_BUCKET)
    with BboltReader(path) as r:
        pages = r.tree_pages((b"vulnerability",))
    branch, leaf = pages[0][1], pages[1][1]
    far = bytearray(path.read_bytes())  # a child page id beyond the file
    pos, ks, _child = struct.unpack_from("<IIQ", far, branch * PAGE + 16)
    struct.pack_into("<IIQ", far, branch * PAGE + 16, pos, ks, 10 ** 12)
    (tmp_path / "far.db").write_bytes(far)
    with BboltReader(tmp_path / "far.db") as r:
        with pytest.raises(BboltError, match=f"page {10 ** 12} is out of range"):
            list(r.items((b"vulnerability",)))
        assert any(f"child {10 ** 12} out of range" in e for e in r.check())
    outside = bytearray(path.read_bytes())  # a leaf element whose key lies past its page
    fl, pos, ks, vs = struct.unpack_from("<IIII", outside, leaf * PAGE + 16)
    struct.pack_into("<IIII", outside, leaf * PAGE + 16, fl, 1 << 30, ks, vs)
    (tmp_path / "outside.db").write_bytes(outside)
    with BboltReader(tmp_path / "outside.db") as r:
        with pytest.raises(BboltError, match=f"page {leaf}: element 0 lies outside the page"):
            list(r.items((b"vulnerability",)))
        assert any(f"page {leaf}: element 0 lies outside the page" in e for e in r.check())


def test_a_bucket_pointing_at_its_parent_is_refused(tmp_path):
    path = _db(tmp_path, {b"a": {b"b": {b"k%03d" % i: b"v" * 100 for i in range(100)}, b"c": b"x"}})
    with BboltReader(path) as r:
        a_root = r.tree_pages((b"a",))[0][1]
        b_root = r.tree_pages((b"a", b"b"))[0][1]
    data = bytearray(path.read_bytes())
    header = struct.pack("<QQ", b_root, 0)
    at = data.index(header, a_root * PAGE, (a_root + 1) * PAGE)
    data[at:at + 16] = struct.pack("<QQ", a_root, 0)  # a/b's root is now a's own page
    (tmp_path / "loop.db").write_bytes(data)
    with BboltReader(tmp_path / "loop.db") as r:
        with pytest.raises(BboltError, match="nested deeper than 64"):
            r.to_tree()
        assert any(f"page {a_root}: multiple references" in e for e in r.check())


def test_check_of_very_deep_bucket_nesting_reports_instead_of_recursing(tmp_path):
    tree: dict = {b"k": b"v"}
    for i in range(300):
        tree = {b"n%03d" % i: tree, b"z": b"v"}
    path = _db(tmp_path, {b"top": tree})
    with BboltReader(path) as r:
        assert any("nested deeper than 200 levels" in e for e in r.check())
        with pytest.raises(BboltError, match="nested deeper than 64"):
            r.to_tree()


def test_a_healthy_db_still_reads(tmp_path):
    tree = {b"vulnerability": BIG_BUCKET[b"vulnerability"], b"alpine 3.20": {b"musl": {b"CVE-1": b"{}"}}}
    with BboltReader(_db(tmp_path, tree)) as r:
        assert r.check() == []
        assert r.to_tree() == tree
        assert r.get((b"alpine 3.20", b"musl"), b"CVE-1") == b"{}"


def test_tarfile_bomb_generator_is_a_valid_gzip(tmp_path):
    """Negative control for the bomb tests: the archive is well-formed (only large)."""
    data = gzip_tar_bomb("data/x", 3 << 20)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        (member,) = tar.getmembers()
        assert member.size == 3 << 20 and tar.extractfile(member).read() == bytes(3 << 20)
