"""Hostile deltas, mirrors and registries on the consumer side (docs/security.md).

Each test feeds `mirror verify|apply|decrypt|pull` and `verify` what an attacker (or an accident)
can put in a mirror, a delta or a registry response, and asserts the refusal a consumer must see:
the exit code, the machine-readable `reason` (and the file/field at fault), nothing written outside
the output directory, the output directory untouched, memory bounded. Fault kinds:

1. paths from outside data (`../`, absolute, symlinks, hard links, layer titles, encryption records);
2. output directories that are not ours (`output-not-empty`, `output-overlaps-input`, `--force`);
4. rollback (TUF versions from SOURCE_DATE_EPOCH, generatedAt, the applied history);
5. unbounded memory (zstd patch bombs in a signed delta, huge registry manifests and blobs);
9. malformed documents (wrong types, TUF lengths, missing annotations) and the kill-safe swap.

Builds share one module-scoped workspace and cache; most checks call the delivery functions
directly (they raise MirrorError with the reason the CLI prints), a few go through the CLI with
`--output json`. The registry is an in-process fake on 127.0.0.1 that serves a real layout, or
hostile bytes.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from stella_build.delivery.mirror_apply import apply_delta, decrypt_mirror
from stella_build.delivery.outdir import OutputDir, _exchange, recover
from stella_build.delivery.untrusted import MirrorError
from stella_build.delivery.verify.mirror import verify_delta_dir, verify_mirror
from stella_build.rules.formats.mirror import unpatch
from stella_build.rules.formats.tuf import generate_key
from tests.conftest import CLI, make_workspace, run_cli
from tests.test_mirror import FULL, _edit_sample, add_targets, same_tree

DELTA = "//profiles:mirror-delta"
E1, E2 = 1735689600, 1738368000  # 2025-01-01, 2025-02-01 (SOURCE_DATE_EPOCH of two publications)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canon(doc) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _json_error(res) -> dict:
    """The first error of a failed `--output json` command."""
    assert "Traceback" not in res.stderr, res.stderr
    return json.loads(res.stdout)["errors"][0]


def _refused(fn, *args, reason: str, code: int = 3, **kwargs) -> MirrorError:
    with pytest.raises(MirrorError) as info:
        fn(*args, **kwargs)
    assert (info.value.reason, info.value.exit_code) == (reason, code), str(info.value)
    return info.value


# -- builds ------------------------------------------------------------------------------------------

@dataclass
class World:
    root: Path
    v1: Path      # full mirror, sample evidence
    v2: Path      # full mirror after one edit and one new advisory
    d12: Path     # delta v1 → v2
    d21: Path     # delta v2 → v1 (the pristine sample built against base v2)
    enc: Path     # encrypted full mirror
    identity: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    import pyrage

    root = tmp_path_factory.mktemp("security")
    cache = root / "cache"
    ident = pyrage.x25519.Identity.generate()
    (root / "age.txt").write_text(f"{ident}\n")
    ws = make_workspace(root / "ws")
    add_targets(ws, "profiles", '[targets.mirror-enc]\nrule = "mirror_full"\ndeps = [":osv-sample"]\n'
                                f'encryption = {{ recipients = ["{ident.to_public()}"] }}\n')
    run_cli(["-q", FULL, "//profiles:mirror-enc"], cwd=ws, cache=cache, check=True)
    v1 = _copy(ws / "stella-out/profiles/mirror-full", root / "v1")
    enc = _copy(ws / "stella-out/profiles/mirror-enc", root / "enc")
    _edit_sample(ws, 2)
    run_cli(["-q", "mirror", "delta", "--base", str(v1), DELTA, FULL], cwd=ws, cache=cache, check=True)
    v2 = _copy(ws / "stella-out/profiles/mirror-full", root / "v2")
    d12 = _copy(ws / "stella-out/profiles/mirror-delta", root / "d12")
    back = make_workspace(root / "ws-back")
    run_cli(["-q", "mirror", "delta", "--base", str(v2), DELTA], cwd=back, cache=cache, check=True)
    d21 = _copy(back / "stella-out/profiles/mirror-delta", root / "d21")
    return World(root, v1, v2, d12, d21, enc, root / "age.txt")


# -- forging deltas ------------------------------------------------------------------------------------

def _diff(delta: Path) -> dict:
    return json.loads((delta / "delta/manifest.diff.json").read_bytes())


def _save_diff(delta: Path, diff: dict) -> None:
    (delta / "delta/manifest.diff.json").write_bytes(_canon(diff))
    shutil.rmtree(delta / "oci", ignore_errors=True)  # the OCI form would pin the old bytes


def _forge(world: World, name: str, src: Path | None = None) -> Path:
    """A copy of a real delta (d12 by default) to tamper with."""
    import tempfile

    (world.root / "forged").mkdir(exist_ok=True)
    return _copy(src or world.d12, Path(tempfile.mkdtemp(prefix=name + "-", dir=world.root / "forged")) / "d")


def _set_metadata(delta: Path, base: Path, path: str, edit) -> None:
    """Replace metadata file `path` of the new mirror: decode its patch, edit(bytes) → bytes,
    store it as a plain zstd patch, and fix manifest.diff.json (and manifestDigest for export.json)."""
    diff = _diff(delta)
    m = next(m for m in diff["metadata"] if m["path"] == path)
    dictionary = (base / "mirror" / path).read_bytes() if m["patchBase"] else None
    data = edit(unpatch((delta / "delta" / m["patch"]).read_bytes(), dictionary, max_size=m["bytes"]))
    (delta / "delta" / m["patch"]).write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    m.update(digest=_sha(data), bytes=len(data), patchBase=None)
    if path == "export.json":
        diff["manifestDigest"] = _sha(data)
    _save_diff(delta, diff)


def _outside(world: World, name: str = "x") -> list[Path]:
    """Files named `name` anywhere under the test root: where an escaping path would land."""
    return [p for p in world.root.rglob(name) if p.is_file()]


# == 1. paths from outside data ============================================================================

def test_delta_content_path_escaping_the_output_is_refused_everywhere(world, tmp_path):
    d = _forge(world, "content-escape")
    diff = _diff(d)
    blob = (d / "delta/blobs/sha256" / diff["blobs"][0].split(":")[1]).read_bytes()
    diff["added"].insert(0, {"path": "../../../x", "digest": _sha(blob), "bytes": len(blob)})
    _save_diff(d, diff)
    out = tmp_path / "site" / "out"
    res = run_cli(["--output", "json", "mirror", "apply", str(world.v1), str(d), "-o", str(out)], cwd=tmp_path)
    err = _json_error(res)
    assert res.code == 3 and err["reason"] == "unsafe-path" and err["field"] == "added[0].path"
    assert err["file"].endswith("delta/manifest.diff.json")
    assert not out.exists() and _outside(world) == []
    # and neither verifier calls it OK any more
    assert _json_error(run_cli(["--output", "json", "mirror", "verify", str(d)], cwd=tmp_path))["reason"] == "unsafe-path"
    res = run_cli(["--output", "json", "verify", "--allow-unsigned", str(d)], cwd=tmp_path)
    assert res.code == 3 and not json.loads(res.stdout)["ok"]


@pytest.mark.parametrize("hostile", ["../../../x", "/tmp/stella-abs-x", "data/./x", "data//x", "data\\..\\x"])
def test_a_path_only_in_the_new_export_json_is_refused_before_writing(world, tmp_path, hostile):
    """The new export.json travels as a patch: its paths are checked once decoded, before any write."""
    d = _forge(world, f"export-{hashlib.sha1(hostile.encode()).hexdigest()[:8]}")

    def add_entry(data: bytes) -> bytes:
        doc = json.loads(data)
        doc["contents"].append({"path": hostile, "digest": doc["contents"][0]["digest"],
                                "bytes": doc["contents"][0]["bytes"]})
        return _canon(doc)

    _set_metadata(d, world.v1, "export.json", add_entry)
    out = tmp_path / "out"
    err = _refused(apply_delta, world.v1, d, out, reason="unsafe-path")
    assert err.field.startswith("contents[") and err.field.endswith("].path")
    assert not out.exists() and _outside(world) == [] and not Path("/tmp/stella-abs-x").exists()


def test_a_metadata_path_escaping_the_output_is_refused(world, tmp_path):
    d = _forge(world, "meta-escape")
    diff = _diff(d)
    evil = zstandard.ZstdCompressor().compress(b"pwned")
    (d / "delta/patches/evil.zst").write_bytes(evil)
    diff["metadata"].append({"path": "signatures/../../../../x", "digest": _sha(b"pwned"), "bytes": 5,
                             "patch": "patches/signatures/../../../../x.zst", "patchBase": None})
    _save_diff(d, diff)
    out = tmp_path / "out"
    res = run_cli(["--output", "json", "mirror", "apply", str(world.v1), str(d), "-o", str(out)], cwd=tmp_path)
    err = _json_error(res)
    assert (res.code, err["reason"], err["field"]) == (3, "unsafe-path", f"metadata[{len(diff['metadata']) - 1}].path")
    assert not out.exists() and _outside(world) == []


def test_symlinked_and_hardlinked_inputs_are_refused(world, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # a content file of the base replaced by a symlink to identical bytes elsewhere
    m = _copy(world.v1, tmp_path / "m-symlink")
    victim = next((m / "mirror/data").rglob("*.jsonl.zst"))
    shutil.copyfile(victim, outside / "same")
    victim.unlink()
    victim.symlink_to(outside / "same")
    assert _refused(verify_mirror, m, reason="symlink").file == str(victim)
    _refused(apply_delta, m, world.d12, tmp_path / "o1", reason="symlink")
    res = run_cli(["--output", "json", "verify", "--allow-unsigned", str(m)], cwd=tmp_path)
    assert res.code == 3 and victim.relative_to(m).as_posix() in json.loads(res.stdout)["failed_files"]
    # a hard-linked content file
    h = _copy(world.v1, tmp_path / "m-hardlink")
    victim = next((h / "mirror/data").rglob("*.jsonl.zst"))
    os.link(victim, outside / "linked")
    assert _refused(verify_mirror, h, reason="hardlink").file == str(victim)
    # mirror/ itself a symlink to a good tree
    s = tmp_path / "m-dirlink"
    s.mkdir()
    (s / "mirror").symlink_to(world.v1 / "mirror")
    _refused(verify_mirror, s, reason="symlink")
    # a blob of the delta replaced by a symlink
    d = _forge(world, "blob-symlink")
    blob = next((d / "delta/blobs/sha256").iterdir())
    shutil.copyfile(blob, outside / "blob")
    blob.unlink()
    blob.symlink_to(outside / "blob")
    _refused(verify_delta_dir, d, reason="symlink")
    _refused(apply_delta, world.v1, d, tmp_path / "o2", reason="symlink")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_stray_and_missing_delta_files_are_refused(world, tmp_path):
    d = _forge(world, "stray")
    (d / "delta/blobs/sha256/extra").write_bytes(b"not listed")
    _refused(verify_delta_dir, d, reason="stray-file")
    d = _forge(world, "no-patch")
    (d / "delta" / _diff(d)["metadata"][0]["patch"]).unlink()
    shutil.rmtree(d / "oci")
    _refused(verify_delta_dir, d, reason="missing-file")


def test_decrypt_refuses_an_escaping_encryption_record(world, tmp_path):
    m = _copy(world.enc, tmp_path / "enc")
    rec_path = m / "mirror/encryption.json"
    rec = json.loads(rec_path.read_bytes())
    rec["files"][0]["path"] = "../../x"
    rec["files"][0]["encryptedPath"] = "../../x.enc"
    rec_path.write_bytes(_canon(rec))
    out = tmp_path / "out"
    err = _refused(decrypt_mirror, m, world.identity, out, reason="unsafe-path")
    assert err.field == "files[0].path" and not out.exists() and _outside(world) == []


# == 2. output directories that are not ours ==================================================================

def test_apply_refuses_a_directory_that_is_not_a_mirror_unless_forced(world, tmp_path):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "precious.jpg").write_bytes(b"irreplaceable")
    res = run_cli(["--output", "json", "mirror", "apply", str(world.v1), str(world.d12), "-o", str(user)], cwd=tmp_path)
    err = _json_error(res)
    assert (res.code, err["reason"], err["field"]) == (2, "output-not-empty", "--out")
    assert (user / "precious.jpg").read_bytes() == b"irreplaceable"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no temporary directory left
    res = run_cli(["mirror", "apply", str(world.v1), str(world.d12), "-o", str(user), "--force"], cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert same_tree(user, world.v2, ignore=("appliedExportIds.log",)) == []


def test_dot_as_output(world, tmp_path):
    """`-o .` in a user's directory is refused (exit 2, no traceback); in an empty one it works."""
    user = tmp_path / "home"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    res = run_cli(["--output", "json", "mirror", "apply", str(world.v1), str(world.d12), "-o", "."], cwd=user)
    assert res.code == 2 and _json_error(res)["reason"] == "output-not-empty"
    assert (user / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli(["mirror", "apply", str(world.v1), str(world.d12), "-o", "."], cwd=empty)
    assert res.code == 0, res.stderr
    assert same_tree(empty, world.v2, ignore=("appliedExportIds.log",)) == []


def test_decrypt_and_pull_guard_their_output_too(world, tmp_path, fake_registry):
    user = tmp_path / "docs"
    user.mkdir()
    (user / "thesis.tex").write_text("x")
    err = _refused(decrypt_mirror, world.enc, world.identity, user, reason="output-not-empty", code=2)
    assert err.field == "--out"
    url = fake_registry.serve_layout("stella/m", world.v1 / "oci", "v1")
    res = run_cli(["--output", "json", "mirror", "pull", f"{url}/stella/m:v1", "-o", str(user)], cwd=tmp_path)
    assert res.code == 2 and _json_error(res)["reason"] == "output-not-empty"
    assert [p.name for p in user.iterdir()] == ["thesis.tex"]
    # an earlier output of the command is replaced: pull into a mirror output directory
    site = _copy(world.v2, tmp_path / "site")
    res = run_cli(["mirror", "pull", f"{url}/stella/m:v1", "-o", str(site)], cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert same_tree(site, world.v1) == []


def test_output_inside_an_input_is_refused(world, tmp_path):
    base = _copy(world.v1, tmp_path / "base")
    _refused(apply_delta, base, world.d12, base / "mirror", reason="output-overlaps-input", code=2)
    _refused(apply_delta, base, world.d12, tmp_path, reason="output-overlaps-input", code=2, force=True)
    assert same_tree(base, world.v1) == []


# == 4. rollback ===================================================================================================

def test_a_delta_back_to_an_applied_export_is_a_rollback(world, tmp_path):
    site = _copy(world.v1, tmp_path / "site")
    assert apply_delta(site, world.d12, site)["applied"][-1] == _diff(world.d12)["exportId"]
    log = (site / "appliedExportIds.log").read_text()
    res = run_cli(["--output", "json", "mirror", "apply", str(site), str(world.d21), "-o", str(site)], cwd=tmp_path)
    assert res.code == 3 and _json_error(res)["reason"] == "rollback"
    assert (site / "appliedExportIds.log").read_text() == log and same_tree(site, world.v2, ignore=("appliedExportIds.log",)) == []
    _refused(apply_delta, site, world.d12, tmp_path / "again", reason="replay")


TUF_PACKAGE = """
[package]
source_date_epoch = {epoch}

[targets.mirror]
rule = "mirror_full"
deps = ["//profiles:osv-sample"]
tuf = {{ key = "{key}", root_expires = "2045-01-01T00:00:00Z", expires_days = {{ targets = 7300, snapshot = 7300, timestamp = 7300 }} }}

[targets.delta]
rule = "mirror_delta"
deps = [":mirror"]

[targets.mirror-default-expiry]
rule = "mirror_full"
deps = ["//profiles:osv-sample"]
tuf = {{ key = "{key}" }}
"""


def _tuf_workspace(root: Path, key: Path, epoch: int) -> Path:
    ws = make_workspace(root)
    (ws / "tufpkg").mkdir()
    (ws / "tufpkg/Exportfile").write_text(TUF_PACKAGE.format(epoch=epoch, key=key))
    return ws


@pytest.fixture(scope="module")
def tuf_world(world):
    """TUF mirrors A (sample, SOURCE_DATE_EPOCH E1) and B (edited, E2 > E1) with the root pinned,
    deltas A → B and B → A (the pristine sample at E1 against base B)."""
    root = world.root / "tuf"
    key = generate_key(root / "tuf.pem", "ed25519")
    cache = world.root / "cache"
    ws = _tuf_workspace(root / "ws", key, E1)
    build_stderr = run_cli(["-q", "//tufpkg:mirror", "//tufpkg:mirror-default-expiry"], cwd=ws, cache=cache,
                           check=True).stderr
    a = _copy(ws / "stella-out/tufpkg/mirror", root / "A")
    _edit_sample(ws, 2)
    (ws / "tufpkg/Exportfile").write_text(TUF_PACKAGE.format(epoch=E2, key=key))
    run_cli(["-q", "mirror", "delta", "--base", str(a), "//tufpkg:delta", "//tufpkg:mirror"], cwd=ws, cache=cache,
            check=True)
    b = _copy(ws / "stella-out/tufpkg/mirror", root / "B")
    dab = _copy(ws / "stella-out/tufpkg/delta", root / "dAB")
    back = _tuf_workspace(root / "ws-back", key, E1)
    run_cli(["-q", "mirror", "delta", "--base", str(b), "//tufpkg:delta"], cwd=back, cache=cache, check=True)
    dba = _copy(back / "stella-out/tufpkg/delta", root / "dBA")
    return {"A": a, "B": b, "AB": dab, "BA": dba, "build_stderr": build_stderr, "key": key}


def _versions(mirror: Path) -> dict[str, int]:
    return {r: json.loads((mirror / f"mirror/tuf/{r}.json").read_bytes())["signed"]["version"]
            for r in ("root", "targets", "snapshot", "timestamp")}


def test_tuf_versions_follow_source_date_epoch(tuf_world):
    assert _versions(tuf_world["A"]) == {"root": 1, "targets": E1, "snapshot": E1, "timestamp": E1}
    assert _versions(tuf_world["B"]) == {"root": 1, "targets": E2, "snapshot": E2, "timestamp": E2}
    # the pinned root is the same trust anchor in both publications
    assert (tuf_world["A"] / "mirror/tuf/root.json").read_bytes() == (tuf_world["B"] / "mirror/tuf/root.json").read_bytes()


def test_tuf_mirror_forward_applies_and_backward_is_refused(tuf_world, tmp_path):
    site = _copy(tuf_world["A"], tmp_path / "site")
    res = run_cli(["mirror", "apply", str(site), str(tuf_world["AB"]), "-o", str(site)], cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert same_tree(site, tuf_world["B"], ignore=("appliedExportIds.log",)) == []
    fresh = _copy(tuf_world["B"], tmp_path / "fresh-b")  # no history: only the versions can tell
    res = run_cli(["--output", "json", "mirror", "apply", str(fresh), str(tuf_world["BA"]), "-o", str(fresh)],
                  cwd=tmp_path)
    assert res.code == 3 and _json_error(res)["reason"] == "rollback"
    assert same_tree(fresh, tuf_world["B"]) == []


def test_tuf_version_going_back_is_a_rollback_even_at_the_same_time(tuf_world, tmp_path):
    """Versions are compared on their own: B's content and generatedAt with A's (older) TUF files."""
    from stella_build.delivery.mirror_apply import _check_not_rollback

    b, a = tuf_world["B"] / "mirror", tuf_world["A"] / "mirror"
    export = json.loads((b / "export.json").read_bytes())
    base_files = {rel: b / rel for rel in ("tuf/root.json", "tuf/targets.json", "tuf/snapshot.json",
                                           "tuf/timestamp.json")}
    meta = {rel: (a / rel).read_bytes() for rel in base_files}
    with pytest.raises(MirrorError) as info:
        _check_not_rollback(export, export | {"exportId": "exp-other"}, base_files, meta, tmp_path)
    assert info.value.reason == "rollback" and "TUF" in str(info.value)
    # and dropping TUF altogether is refused too
    with pytest.raises(MirrorError) as info:
        _check_not_rollback(export, export | {"exportId": "exp-other"}, base_files, {}, tmp_path)
    assert info.value.reason == "tuf-removed"


def test_tuf_repo_versions_and_pinned_root_verify_with_ngclient(tmp_path):
    """build_tuf_repo's `version` and `root_expires`, checked by python-tuf's client itself."""
    from tuf.api.metadata import Metadata

    from stella_build.rules.formats.tuf import TufKeys, TufRepoError, build_tuf_repo, load_signer, offline_updater

    keys = TufKeys.single(load_signer(generate_key(tmp_path / "k.pem")))
    targets = {"data/a": b"a"}
    days = {r: 86400 * 7300 for r in ("targets", "snapshot", "timestamp")}
    repo = build_tuf_repo(tmp_path / "r", targets, keys, E2, days, version=E2, root_expires=E2 + 86400 * 7300)
    assert [Metadata.from_bytes(repo.files[f"{r}.json"]).signed.version for r in ("root", "targets", "snapshot",
                                                                              "timestamp")] == [1, E2, E2, E2]
    other = build_tuf_repo(tmp_path / "r1", targets, keys, E1, days, version=E1, root_expires=E2 + 86400 * 7300)
    assert other.files["root.json"] == repo.files["root.json"]  # the pinned root does not move with the epoch
    (tmp_path / "t/data").mkdir(parents=True)
    (tmp_path / "t/data/a").write_bytes(b"a")
    updater = offline_updater(tmp_path / "r", tmp_path / "t", tmp_path / "cache", repo.root_bytes)
    updater.refresh()
    assert updater.get_targetinfo("data/a").length == 1
    for bad in ({"version": 0}, {"version": True}, {"root_expires": E2}):
        with pytest.raises(TufRepoError):
            build_tuf_repo(tmp_path / "bad", targets, keys, E2, **bad)


def test_a_signed_tuf_target_path_escaping_the_tree_is_refused(tuf_world, tmp_path):
    """Even TUF metadata signed with the right key may not name a target outside the tree."""
    from tuf.api.metadata import Metadata, MetaFile, TargetFile

    from stella_build.rules.formats.tuf import load_signer

    m = _copy(tuf_world["A"], tmp_path / "m")
    tuf, signer = m / "mirror/tuf", load_signer(tuf_world["key"])

    def resign(name: str, edit) -> bytes:
        md = Metadata.from_bytes((tuf / name).read_bytes())
        edit(md.signed)
        md.signatures.clear()
        md.sign(signer)
        data = _canon(md.to_dict())
        (tuf / name).write_bytes(data)
        return data

    targets = resign("targets.json", lambda t: t.targets.__setitem__(
        "../x", TargetFile(1, {"sha256": hashlib.sha256(b"x").hexdigest()}, "../x")))
    snapshot = resign("snapshot.json", lambda s: s.meta.__setitem__(
        "targets.json", MetaFile(s.meta["targets.json"].version, len(targets), {"sha256": hashlib.sha256(targets).hexdigest()})))
    resign("timestamp.json", lambda t: setattr(t, "snapshot_meta", MetaFile(
        t.snapshot_meta.version, len(snapshot), {"sha256": hashlib.sha256(snapshot).hexdigest()})))
    err = _refused(verify_mirror, m, reason="unsafe-path")
    assert err.field == "signed.targets['../x']" and err.file.endswith("tuf/targets.json")


def test_build_warns_when_tuf_metadata_is_already_expired(tuf_world):
    warnings = [line for line in tuf_world["build_stderr"].splitlines() if line.startswith("warning:")]
    # 2025-01-01 + the default 365 days is in the past; 20-year expiries and a pinned root are not
    assert len(warnings) == 1, tuf_world["build_stderr"]
    assert warnings[0].startswith("warning: //tufpkg:mirror-default-expiry: ") and "already expired" in warnings[0]


# == 5. unbounded memory =============================================================================================

_RUN_CAPPED = r"""
import json, resource, subprocess, sys, time
cap = int(sys.argv[1])
def limit():
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
t0 = time.monotonic()
p = subprocess.run(sys.argv[2:], preexec_fn=limit, capture_output=True, text=True, timeout=120)
print(json.dumps({"code": p.returncode, "stdout": p.stdout, "stderr": p.stderr, "seconds": time.monotonic() - t0,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""
CAP = 512 << 20


def _run_capped(args: list[str], cwd: Path) -> dict:
    """Run the CLI under RLIMIT_AS = 512 MiB in a wrapper process that reports its peak RSS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLA_")}
    proc = subprocess.run([sys.executable, "-c", _RUN_CAPPED, str(CAP), CLI, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)
    out = json.loads(proc.stdout)
    assert "Traceback" not in out["stderr"] and "MemoryError" not in out["stderr"], out["stderr"]
    print(f"\n{' '.join(args[:3])}: exit {out['code']} in {out['seconds']:.2f} s, peak RSS {out['maxrss_mib']:.0f} MiB")
    return out


def _sign_delta(delta: Path, tmp: Path) -> Path:
    """Sign the delta's (forged) manifest.diff.json with a fresh key the consumer then trusts."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from stella_build.rules.formats import keys, signing

    key = ec.generate_private_key(ec.SECP256R1())
    sigs = delta / "delta/signatures"
    shutil.rmtree(sigs, ignore_errors=True)
    sigs.mkdir()
    data = (delta / "delta/manifest.diff.json").read_bytes()
    (sigs / "manifest.diff.json.sigstore.json").write_bytes(signing.sign_blob_sigstore_bundle(data, key))
    pub = tmp / "trusted.pub"
    pub.write_bytes(keys.encode_public_key(key.public_key()))
    return pub


@pytest.mark.parametrize("declares_size", [True, False])
def test_zstd_bomb_in_a_correctly_signed_delta_stays_small(world, tmp_path, declares_size):
    """A 64 KiB patch that inflates to 2 GB (the frame header saying so, or not): refused within
    the declared size, under a 512 MiB address-space cap, before its digest is even computed."""
    d = _forge(world, f"bomb-{declares_size}")
    diff = _diff(d)
    m = next(m for m in diff["metadata"] if m["path"] == "export.json")
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=declares_size)
    with cctx.stream_writer(open(d / "delta" / m["patch"], "wb"), size=(2000 << 20) if declares_size else -1) as w:
        zero = bytes(8 << 20)
        for _ in range(250):
            w.write(zero)
    assert (d / "delta" / m["patch"]).stat().st_size < 128 << 10
    m["patchBase"] = None
    _save_diff(d, diff)
    pub = _sign_delta(d, tmp_path)
    out = _run_capped(["--output", "json", "mirror", "apply", str(world.v1), str(d), "-o", str(tmp_path / "o"),
                       "--key", str(pub)], tmp_path)
    err = json.loads(out["stdout"])["errors"][0]
    assert (out["code"], err["reason"], err["field"]) == (3, "size-limit", "metadata[0].bytes")
    assert out["maxrss_mib"] < 200 and out["seconds"] < 30 and not (tmp_path / "o").exists()


def test_an_archive_bomb_in_an_encrypted_mirror_is_cut_off(world, tmp_path):
    """`verify` reads an encrypted mirror's archive member by member; a member that claims 1 GiB
    is read only as far as the tree can account for."""
    import tarfile

    m = _copy(world.enc, tmp_path / "enc")
    info = tarfile.TarInfo("mirror/README.md")
    info.size = 1 << 30
    with zstandard.ZstdCompressor(level=1).stream_writer(open(m / "mirror.tar.zst", "wb")) as w:
        w.write(info.tobuf(format=tarfile.PAX_FORMAT))
        zero = bytes(8 << 20)
        for _ in range(128):
            w.write(zero)
    t0 = time.monotonic()
    res = run_cli(["--output", "json", "verify", "--allow-unsigned", str(m)], cwd=tmp_path)
    assert res.code == 3 and "Traceback" not in res.stderr
    check = next(c for c in json.loads(res.stdout)["checks"] if c["name"] == "archive-tree")
    assert "more than the mirror tree can account for" in check["message"]
    assert time.monotonic() - t0 < 20


def test_declared_metadata_size_beyond_the_patch_ratio_is_refused(world, tmp_path):
    d = _forge(world, "declared-huge")
    diff = _diff(d)
    diff["metadata"][0]["bytes"] = 200 << 20
    _save_diff(d, diff)
    err = _refused(apply_delta, world.v1, d, tmp_path / "o", reason="size-limit")
    assert err.field == "metadata[0].bytes"


# -- a fake registry -------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes: dict = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        route = self.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body, headers = route
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        if isinstance(body, bytes):
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Connection", "close")  # streamed: the body ends when the connection does
        self.end_headers()
        try:
            for chunk in body():
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    do_HEAD = do_GET


class FakeRegistry:
    """An OCI distribution API on 127.0.0.1 serving chosen responses; `routes` maps a path to
    (bytes or a generator function, headers)."""

    def __init__(self) -> None:
        self.routes: dict = {}
        handler = type("H", (_Handler,), {"routes": self.routes})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def manifest(self, repo: str, ref: str, body, media_type: str = "application/vnd.oci.image.manifest.v1+json",
                 length: int | None = None) -> None:
        headers = {"Content-Type": media_type}
        if length is not None:
            headers["Content-Length"] = str(length)
        self.routes[f"/v2/{repo}/manifests/{ref}"] = (body, headers)

    def blob(self, repo: str, digest: str, body) -> None:
        self.routes[f"/v2/{repo}/blobs/{digest}"] = (body, {"Content-Type": "application/octet-stream"})

    def serve_layout(self, repo: str, layout: Path, tag: str) -> str:
        """Serve every blob of an OCI layout, and its `mirror`/`delta` manifest as `tag`."""
        index = json.loads((layout / "index.json").read_bytes())
        for blob in (layout / "blobs/sha256").iterdir():
            data = blob.read_bytes()
            digest = "sha256:" + blob.name
            self.blob(repo, digest, data)
            try:
                media = json.loads(data).get("mediaType", "")
            except (ValueError, AttributeError):
                media = ""
            if media.endswith(("manifest.v1+json", "index.v1+json")):
                self.manifest(repo, digest, data, media)
        main = next(m for m in index["manifests"]
                    if m["annotations"]["org.opencontainers.image.ref.name"] in ("mirror", "delta"))
        self.manifest(repo, tag, (layout / "blobs/sha256" / main["digest"][7:]).read_bytes(), main["mediaType"])
        return self.url

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_registry():
    reg = FakeRegistry()
    yield reg
    reg.close()


def _hostile_manifest(reg: FakeRegistry, world: World, layers: list[dict]) -> None:
    """A mirror artifact manifest with the given layers (their blobs served from v1's layout)."""
    from stella_build.rules.formats.mirror import ARTIFACT_TYPE

    reg.serve_layout("evil/m", world.v1 / "oci", "real")
    empty = b"{}"
    reg.blob("evil/m", _sha(empty), empty)
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "artifactType": ARTIFACT_TYPE,
           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": _sha(empty), "size": 2},
           "layers": layers}
    reg.manifest("evil/m", "v1", _canon(doc))


def _a_layer(world: World, title: str | None) -> dict:
    data = (world.v1 / "mirror/README.md").read_bytes()
    layer = {"mediaType": "text/markdown", "digest": _sha(data), "size": len(data)}
    if title is not None:
        layer["annotations"] = {"org.opencontainers.image.title": title}
    return layer


@pytest.mark.parametrize("title, reason, field", [
    ("../../x", "unsafe-path", "layers[0].annotations[org.opencontainers.image.title]"),
    ("/tmp/stella-pull-x", "unsafe-path", "layers[0].annotations[org.opencontainers.image.title]"),
    ("signatures/export.json.sigstore.json", "unsafe-path", "layers[0].annotations"),
    ("README.md/x", "path-collision", "layers"),
    (None, "schema-invalid", "layers[0].annotations"),
])
def test_pulled_layer_titles_are_checked_before_anything_is_laid_out(world, tmp_path, fake_registry, title, reason,
                                                                      field):
    from stella_build.delivery.mirror_pull import pull_mirror
    from stella_build.delivery.registry import RegistryClient

    layers = [_a_layer(world, title)] + ([_a_layer(world, "README.md")] if reason == "path-collision" else [])
    _hostile_manifest(fake_registry, world, layers)
    out = tmp_path / "out"
    if title is None:  # once through the CLI: a layer without annotations, exit 3 and no traceback
        res = run_cli(["--output", "json", "mirror", "pull", f"{fake_registry.url}/evil/m:v1", "-o", str(out)],
                      cwd=tmp_path)
        err = _json_error(res)
        assert (res.code, err["reason"], err["field"]) == (3, reason, field)
    else:
        client = RegistryClient(f"http://{fake_registry.url}", "evil/m")
        assert _refused(pull_mirror, client, "v1", out, reason=reason).field == field
    assert not out.exists() and _outside(world) == [] and not Path("/tmp/stella-pull-x").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary directory left either


@pytest.mark.parametrize("with_length", [True, False])
def test_a_400_mib_registry_manifest_is_never_read_whole(world, tmp_path, fake_registry, with_length):
    size = 400 << 20

    def body():
        chunk = b" " * (1 << 20)
        for _ in range(size >> 20):
            yield chunk

    fake_registry.manifest("big/m", "v1", body, length=size if with_length else None)
    out = _run_capped(["--output", "json", "mirror", "pull", f"{fake_registry.url}/big/m:v1", "-o",
                       str(tmp_path / "o")], tmp_path)
    err = json.loads(out["stdout"])["errors"][0]
    assert (out["code"], err["reason"]) == (1, "pull-failed") and "larger than" in err["message"]
    assert out["maxrss_mib"] < 200 and out["seconds"] < 30 and not (tmp_path / "o").exists()


def test_a_blob_longer_than_its_descriptor_is_cut_off(world, tmp_path, fake_registry):
    url = fake_registry.serve_layout("long/m", world.v1 / "oci", "v1")
    index = json.loads((world.v1 / "oci/index.json").read_bytes())
    main = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "mirror")
    layer = json.loads((world.v1 / "oci/blobs/sha256" / main["digest"][7:]).read_bytes())["layers"][0]

    def endless():
        for _ in range(1 << 14):  # up to 16 GiB: far more than anyone should download
            yield bytes(1 << 20)

    fake_registry.blob("long/m", layer["digest"], endless)
    out = _run_capped(["--output", "json", "mirror", "pull", f"{url}/long/m:v1", "-o", str(tmp_path / "o")], tmp_path)
    err = json.loads(out["stdout"])["errors"][0]
    assert (out["code"], err["reason"]) == (1, "pull-failed") and f"{layer['size']} bytes" in err["message"]
    assert out["seconds"] < 30 and not (tmp_path / "o").exists()


def test_layers_that_do_not_fit_on_the_disk_are_not_fetched(world, tmp_path, fake_registry):
    layer = _a_layer(world, "README.md") | {"size": 1 << 50}
    _hostile_manifest(fake_registry, world, [layer])
    t0 = time.monotonic()
    res = run_cli(["--output", "json", "mirror", "pull", f"{fake_registry.url}/evil/m:v1", "-o", str(tmp_path / "o")],
                  cwd=tmp_path)
    err = _json_error(res)
    assert (res.code, err["reason"]) == (1, "pull-failed") and "space" in err["message"]
    assert time.monotonic() - t0 < 30


# == 9. malformed documents, no tracebacks ================================================================================

@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(added="data/x"), "added"),
    (lambda d: d["blobs"].__setitem__(0, 12345), "blobs[0]"),
    (lambda d: d["added"][0].update(digest=7), "added[0].digest"),
    (lambda d: d["added"][0].update(bytes="1002"), "added[0].bytes"),
    (lambda d: d["added"][0].update(bytes=True), "added[0].bytes"),
    (lambda d: d["metadata"][0].update(bytes=-1), "metadata[0].bytes"),
    (lambda d: d["metadata"][0].update(patch="patches/other.zst"), "metadata[0].patch"),
    (lambda d: d.pop("exportId"), "exportId"),
    (lambda d: d.update(tombstones={}), "tombstones"),
    (lambda d: d.update(removed=[None]), "removed[0]"),
])
def test_wrong_types_in_manifest_diff_json_name_the_field(world, tmp_path, edit, field):
    d = _forge(world, f"types-{field.replace('[', '-').replace(']', '').replace('.', '-')}")
    diff = _diff(d)
    edit(diff)
    _save_diff(d, diff)
    for fn, args in ((verify_delta_dir, (d,)), (apply_delta, (world.v1, d, tmp_path / "o"))):
        err = _refused(fn, *args, reason="unsafe-path" if field == "metadata[0].patch" else "schema-invalid")
        assert err.field == field and err.file.endswith("manifest.diff.json")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text", [b"[1, 2]", b'{"added": NaN}', b"{" * 100000, b"\xff\xfe"])
def test_manifest_diff_json_that_is_no_object_is_a_clean_error(world, tmp_path, text):
    d = _forge(world, f"junk-{hashlib.sha1(text).hexdigest()[:8]}")
    (d / "delta/manifest.diff.json").write_bytes(text)
    res = run_cli(["--output", "json", "mirror", "apply", str(world.v1), str(d), "-o", str(tmp_path / "o")],
                  cwd=tmp_path)
    assert res.code == 3 and _json_error(res)["reason"] == "schema-invalid"


def test_export_json_with_wrong_types_is_a_clean_error(world, tmp_path):
    m = _copy(world.v1, tmp_path / "m")
    doc = json.loads((m / "mirror/export.json").read_bytes())
    doc["contents"][3]["bytes"] = str(doc["contents"][3]["bytes"])
    (m / "mirror/export.json").write_bytes(_canon(doc))
    res = run_cli(["--output", "json", "mirror", "verify", str(m)], cwd=tmp_path)
    err = _json_error(res)
    assert (res.code, err["reason"], err["field"]) == (3, "schema-invalid", "contents[3].bytes")
    res = run_cli(["--output", "json", "verify", "--allow-unsigned", str(m)], cwd=tmp_path)
    assert res.code == 3 and "Traceback" not in res.stderr


@pytest.mark.parametrize("rel, reason", [("mirror.json", "digest-mismatch"), ("oci/index.json", "oci-layout-mismatch"),
                                         ("mirror/provenance.json", "schema-invalid")])
def test_mirror_verify_checks_every_file_of_the_output(world, tmp_path, rel, reason):
    """`mirror verify` (no key) checks mirror.json and oci/ like `verify` does; deep JSON nesting is
    a clean error."""
    m = _copy(world.v1, tmp_path / "m")
    (m / rel).write_bytes(b"[" * 100000)
    err = _refused(verify_mirror, m, reason=reason)
    assert err.file.endswith(rel)


@pytest.mark.parametrize("length", [13, "12", None])
def test_a_changed_length_in_tuf_targets_json_is_a_clean_error(tuf_world, tmp_path, length):
    m = _copy(tuf_world["A"], tmp_path / "m")
    path = m / "mirror/tuf/targets.json"
    doc = json.loads(path.read_bytes())
    target = sorted(doc["signed"]["targets"])[0]
    if length is None:
        del doc["signed"]["targets"][target]["length"]
    else:
        doc["signed"]["targets"][target]["length"] = length
    path.write_bytes(_canon(doc))
    assert _refused(verify_mirror, m, reason="tuf-failed").file == str(m / "mirror/tuf")
    if length == 13:  # and once through both CLI verifiers
        res = run_cli(["--output", "json", "mirror", "verify", str(m)], cwd=tmp_path)
        assert res.code == 3 and _json_error(res)["reason"] == "tuf-failed"
        res = run_cli(["--output", "json", "verify", "--allow-unsigned", str(m)], cwd=tmp_path)
        assert res.code == 3 and "Traceback" not in res.stderr
        assert {c["name"] for c in json.loads(res.stdout)["checks"] if not c["ok"]} >= {"tuf"}


# -- the swap ------------------------------------------------------------------------------------------

def test_exchange_swaps_two_directories_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("A")
    (b / "f").write_text("B")
    if not _exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here: the two-rename path is tested below")
    assert ((a / "f").read_text(), (b / "f").read_text()) == ("B", "A")


@pytest.mark.parametrize("left, state", [(("new", "old"), "forward"), (("old",), "back"), (("tmp",), None)])
def test_recover_repairs_a_killed_swap(tmp_path, left, state):
    out = tmp_path / "site"
    for kind in left:
        d = tmp_path / f".site.{kind}-4242"
        d.mkdir()
        (d / "who").write_text(kind)
    assert recover(out) == state
    if state:
        assert (out / "who").read_text() == {"forward": "new", "back": "old"}[state]
    assert [p.name for p in tmp_path.iterdir() if p.name != "site"] == []


def test_apply_completes_after_a_kill_between_the_two_renames(world, tmp_path, monkeypatch):
    """Without RENAME_EXCHANGE the swap is two renames; a kill between them leaves OUT missing and
    `.OUT.new-<pid>` complete. The next command rolls it forward and goes on."""
    import stella_build.delivery.outdir as outdir

    site = _copy(world.v1, tmp_path / "site")
    monkeypatch.setattr(outdir, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        real_rename(src, dst)
        if Path(src) == site and Path(dst).name.startswith(".site.old-"):
            raise KeyboardInterrupt  # "killed" right after the first rename of the swap

    monkeypatch.setattr(outdir.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        apply_delta(site, world.d12, site)
    monkeypatch.setattr(outdir.os, "rename", real_rename)
    assert not site.exists() and len(list(tmp_path.glob(".site.new-*"))) == 1
    res = run_cli(["--output", "json", "mirror", "apply", str(site), str(world.d12), "-o", str(site)], cwd=tmp_path)
    assert res.code == 3 and _json_error(res)["reason"] == "replay"  # recovered to v2, which has it
    assert same_tree(site, world.v2, ignore=("appliedExportIds.log",)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_output_dir_refuses_the_file_system_root(tmp_path):
    with pytest.raises(MirrorError) as info:
        OutputDir(Path("/"), kinds=("mirror",))
    assert info.value.exit_code == 2
