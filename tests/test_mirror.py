"""mirror:full / mirror:delta through the real CLI: layout, determinism, TUF, deltas, apply, encryption.

Delta economics run on a private, seeded-edited copy of the shared OSV corpora (PyPI + Go)."""
from __future__ import annotations

import filecmp
import hashlib
import json
import random
import shutil
import time
from pathlib import Path

import pytest

from stella_build.rules.mirror_full import chunk_entries
from stella_build.rules.formats.tuf import generate_key
from tests.conftest import SHARED_DATA, make_workspace, output_digests, require_shared_data, run_cli

FULL = "//profiles:mirror-full"


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def same_tree(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """Relative paths that differ (content or presence) between two directory trees."""
    fa = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()} - set(ignore)
    fb = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()} - set(ignore)
    diff = sorted(fa ^ fb)
    diff += [r for r in sorted(fa & fb) if not filecmp.cmp(a / r, b / r, shallow=False)]
    return diff


def add_targets(ws: Path, pkg: str, text: str) -> None:
    path = ws / pkg / "Exportfile"
    path.write_text(path.read_text() + "\n" + text)


# -- the sample workspace ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror-sample")
    ws = make_workspace(root / "ws")
    key = generate_key(root / "keys" / "tuf.pem", "ed25519")
    add_targets(ws, "profiles", f'[targets.mirror-tuf]\nrule = "mirror_full"\ndeps = [":osv-sample"]\n'
                                f'tuf = {{ key = "{key}", expires_days = {{ root = 7300, targets = 7300, snapshot = 7300, timestamp = 3000 }} }}\n')
    run_cli(["-q", FULL, "//profiles:mirror-tuf"], cwd=ws, cache=root / "cache", check=True)
    return ws, root


def test_full_layout_manifest_and_sharding(sample):
    ws, _ = sample
    out = ws / "stella-out/profiles/mirror-full"
    tree = out / "mirror"
    export = json.loads((tree / "export.json").read_bytes())
    assert export["profile"] == {"kind": "mirror", "variant": "full", "name": "mirror-full", "revision": "r1"}
    paths = [c["path"] for c in export["contents"]]
    assert paths == sorted(paths) and "README.md" in paths
    for c in export["contents"]:
        data = (tree / c["path"]).read_bytes()
        assert c["digest"] == "sha256:" + hashlib.sha256(data).hexdigest() and c["bytes"] == len(data)
    assert any(p.startswith("data/raw/advisories/PyPI/") for p in paths)
    assert any(p.startswith("data/policy/") for p in paths)  # from the json-policy dep
    assert {"indexes/raw-advisories.index.json", "indexes/vex.index.json", "indexes/sboms.index.json"} <= set(paths)
    prov = json.loads((tree / "provenance.json").read_bytes())
    assert prov["subject"] == [{"name": "export.json",
                                "digest": {"sha256": hashlib.sha256((tree / "export.json").read_bytes()).hexdigest()}}]
    summary = json.loads((out / "mirror.json").read_bytes())
    assert summary["archiveSha256"] == hashlib.sha256((out / "mirror.tar.zst").read_bytes()).hexdigest()
    # the OCI layout's layers are exactly the mirror files
    index = json.loads((out / "oci/index.json").read_bytes())
    manifest = json.loads((out / "oci/blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    titles = {l["annotations"]["org.opencontainers.image.title"]: l["digest"] for l in manifest["layers"]}
    files = {p.relative_to(tree).as_posix(): p for p in tree.rglob("*") if p.is_file()}
    assert set(titles) == set(files)
    assert manifest["annotations"]["io.stellaops.export.manifest-digest"] == summary["manifestDigest"]
    assert run_cli(["mirror", "verify", str(out)], cwd=ws).code == 0


def test_chunks_are_content_defined():
    """Editing one record changes one chunk; removing one changes at most its chunk and a neighbour."""
    def chunks(entries):
        return {(g, n, json.dumps([e["r"] for e in es])) for g, n, es in chunk_entries(entries, 2)}

    entries = [{"g": "PyPI", "k": ["PyPI", f"p{i:03d}", f"ID-{i}", "x"], "c": f"ID-{i}", "r": {"i": i}}
               for i in range(300)]
    before = chunks(entries)
    assert 100 < len(before) < 200  # about chunk_records=2 records per chunk
    edited = entries[:150] + [dict(entries[150], r={"i": 150, "edited": True})] + entries[151:]
    assert len(before - chunks(edited)) == 1
    removed = entries[:40] + entries[41:]
    assert 1 <= len(before - chunks(removed)) <= 2 and len(chunks(removed) - before) == 1


def test_mirror_is_reproducible_elsewhere(sample, tmp_path):
    ws, _ = sample
    other = make_workspace(tmp_path / "x" / "ws")
    run_cli(["-q", FULL], cwd=other, cache=tmp_path / "c", check=True,
            env={"TZ": "Asia/Tokyo", "PYTHONHASHSEED": "7"})
    assert output_digests(other, "profiles", "mirror-full") == output_digests(ws, "profiles", "mirror-full")


def test_tuf_metadata_covers_every_file_and_verifies(sample):
    from stella_build.delivery.verify.mirror import MirrorError, verify_tuf

    ws, _ = sample
    tree = ws / "stella-out/profiles/mirror-tuf/mirror"
    targets = json.loads((tree / "tuf/targets.json").read_bytes())["signed"]["targets"]
    files = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    assert set(targets) == {f for f in files if not f.startswith("tuf/")}
    ts = json.loads((tree / "tuf/timestamp.json").read_bytes())["signed"]
    from datetime import datetime, timezone
    expected = datetime.fromtimestamp(1735689600 + 3000 * 86400, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ts["expires"] == expected  # SOURCE_DATE_EPOCH + 3000 days, not the wall clock
    assert verify_tuf(tree) == len(targets)
    with pytest.raises(MirrorError):
        bad = tree.parent.parent / "mirror-tuf-bad"
        shutil.copytree(tree, bad / "mirror")
        readme = bad / "mirror/README.md"
        readme.write_bytes(readme.read_bytes() + b"x")
        verify_tuf(bad / "mirror")


def test_missing_base_is_exit_2_with_advice(sample, tmp_path):
    ws, root = sample
    add = '[targets.d-missing]\nrule = "mirror_delta"\ndeps = [":mirror-full"]\n' \
          f'base = {{ export = "{tmp_path}/nope/export.json", sha256 = "{"0" * 64}" }}\n'
    other = make_workspace(tmp_path / "ws")
    add_targets(other, "profiles", add)
    res = run_cli(["//profiles:d-missing"], cwd=other, cache=root / "cache")
    assert res.code == 2 and "ERR_EXPORT_BASE_MISSING" in res.stderr and "full export" in res.stderr
    res = run_cli(["mirror", "delta", "--base", str(tmp_path / "gone"), "//profiles:mirror-delta"],
                  cwd=other, cache=root / "cache")
    assert res.code == 2 and "ERR_EXPORT_BASE_MISSING" in res.stderr


def test_base_of_the_wrong_kind_is_refused_at_analysis(sample, tmp_path):
    """A --base that exists but is no mirror export.json (a trivy.db meant for a trivy_db_patch
    target, any JSON) is refused before anything runs: exit 2, base-invalid, naming --base and
    the file given (not a sandbox path), with the advice that --base is shared by the build."""
    ws, root = sample
    db = tmp_path / "trivy.db"
    db.write_bytes(b"\0" * 8192)
    other_json = tmp_path / "other" / "export.json"
    other_json.parent.mkdir()
    other_json.write_text('{"exportId": 1, "contents": []}')
    huge = tmp_path / "huge" / "export.json"  # sparse: refused by its size before it is read
    huge.parent.mkdir()
    with open(huge, "wb") as f:
        f.truncate(300 << 20)
    for base in (db, other_json.parent, huge):
        res = run_cli(["--output", "json", "build", "--base", str(base), "//profiles:mirror-delta"],
                      cwd=ws, cache=root / "cache")
        assert res.code == 2, res.stdout + res.stderr
        [err] = res.json()["errors"]
        assert (err["reason"], err["field"]) == ("base-invalid", "--base"), err
        assert err["file"] in (str(db), str(other_json), str(huge)) and err.get("line") is None, err
        assert "separate commands" in err["message"] and "Traceback" not in res.stderr


def _edit_sample(ws: Path, version: int) -> None:
    """v2: change one advisory, add one; v3: remove two; v4: change another and add one."""
    osv = ws / "profiles/evidence/osv"
    files = sorted(osv.glob("*.json"))
    if version in (2, 4):
        doc = json.loads(files[version].read_text())
        doc["details"] = (doc.get("details") or "") + f" [edit v{version}]"
        files[version].write_text(json.dumps(doc))
        new = dict(doc, id=f"STELLA-NEW-{version}")
        (osv / f"STELLA-NEW-{version}.json").write_text(json.dumps(new))
    if version == 3:
        for f in files[5:7]:
            f.unlink()


def test_delta_chain_apply_equals_full(sample, tmp_path):
    """apply(full(v1), delta(v1→v2)), then v3 (removals: tombstones), then v4 == full(v4) byte for byte;
    out-of-order and replayed deltas are refused; a delta without tombstones is rejected."""
    _, root = sample
    ws = make_workspace(tmp_path / "ws")
    cache = root / "cache"
    run_cli(["-q", FULL], cwd=ws, cache=cache, check=True)
    mirrors = {1: tmp_path / "full-v1"}
    shutil.copytree(ws / "stella-out/profiles/mirror-full", mirrors[1])
    deltas = {}
    for v in (2, 3, 4):
        _edit_sample(ws, v)
        run_cli(["-q", "mirror", "delta", "--base", str(mirrors[v - 1]), "//profiles:mirror-delta", FULL],
                cwd=ws, cache=cache, check=True)
        mirrors[v] = tmp_path / f"full-v{v}"
        shutil.copytree(ws / "stella-out/profiles/mirror-full", mirrors[v])
        deltas[v] = tmp_path / f"delta-v{v}"
        shutil.copytree(ws / "stella-out/profiles/mirror-delta", deltas[v])
    d3 = json.loads((deltas[3] / "delta/manifest.diff.json").read_bytes())
    assert d3["removed"] and len(d3["tombstones"]) == len(d3["removed"])
    d2 = json.loads((deltas[2] / "delta/manifest.diff.json").read_bytes())
    assert d2["added"] or d2["changed"]
    # only blobs absent from the base
    base_digests = {c["digest"] for c in json.loads((mirrors[1] / "mirror/export.json").read_bytes())["contents"]}
    assert not base_digests & set(d2["blobs"])

    out = tmp_path / "applied"
    shutil.copytree(mirrors[1], out)
    # out of order: v3's delta onto v1
    res = run_cli(["mirror", "apply", str(out), str(deltas[3]), "-o", str(out)], cwd=tmp_path)
    assert res.code == 3 and "out-of-order" in res.stderr
    assert same_tree(out, mirrors[1]) == []  # untouched
    for v in (2, 3, 4):
        res = run_cli(["mirror", "apply", str(out), str(deltas[v]), "-o", str(out)], cwd=tmp_path)
        assert res.code == 0, res.stderr
        assert same_tree(out, mirrors[v], ignore=("appliedExportIds.log",)) == []
    ids = (out / "appliedExportIds.log").read_text().split()
    assert ids == [json.loads((mirrors[v] / "mirror/export.json").read_bytes())["exportId"] for v in (1, 2, 3, 4)]
    res = run_cli(["mirror", "apply", str(out), str(deltas[4]), "-o", str(tmp_path / "again")], cwd=tmp_path)
    assert res.code == 3 and "already applied" in res.stderr

    # a delta whose removals lack tombstones is rejected
    bad = tmp_path / "bad-delta"
    shutil.copytree(deltas[3], bad)
    diff_path = bad / "delta/manifest.diff.json"
    diff = json.loads(diff_path.read_bytes())
    diff["tombstones"] = diff["tombstones"][1:]
    diff_path.write_text(json.dumps(diff))
    res = run_cli(["mirror", "apply", str(mirrors[2]), str(bad), "-o", str(tmp_path / "x")], cwd=tmp_path)
    assert res.code == 3 and "tombstone" in res.stderr and not (tmp_path / "x").exists()
    # a corrupt blob is rejected too
    shutil.copytree(deltas[2], tmp_path / "bad2")
    blob = next((tmp_path / "bad2/delta/blobs/sha256").iterdir())
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    res = run_cli(["mirror", "apply", str(mirrors[1]), str(tmp_path / "bad2"), "-o", str(tmp_path / "y")], cwd=tmp_path)
    assert res.code == 3 and not (tmp_path / "y").exists()


def test_encryption_round_trip_and_wrong_identity(sample, tmp_path):
    import pyrage

    _, root = sample
    ident = pyrage.x25519.Identity.generate()
    other = pyrage.x25519.Identity.generate()
    (tmp_path / "id.txt").write_text(str(ident) + "\n")
    (tmp_path / "wrong.txt").write_text(str(other) + "\n")
    ws = make_workspace(tmp_path / "ws")
    add_targets(ws, "profiles", '[targets.mirror-enc]\nrule = "mirror_full"\n'
                                'deps = [":osv-sample", ":sbom-sample", ":vex-sample", ":json-policy", ":devportal-offline"]\n'
                                f'encryption = {{ recipients = ["{ident.to_public()}"] }}\n')
    run_cli(["-q", FULL, "//profiles:mirror-enc"], cwd=ws, cache=root / "cache", check=True)
    enc = ws / "stella-out/profiles/mirror-enc"
    assert not list((enc / "mirror/data").rglob("*.jsonl.zst")) and list((enc / "mirror/data").rglob("*.enc"))
    assert run_cli(["mirror", "verify", str(enc)], cwd=tmp_path).code == 3
    res = run_cli(["mirror", "decrypt", str(enc), "-i", str(tmp_path / "wrong.txt"), "-o", str(tmp_path / "w")], cwd=tmp_path)
    assert res.code == 3 and "matches none" in res.stderr and not (tmp_path / "w").exists()
    res = run_cli(["mirror", "decrypt", str(enc), "-i", str(tmp_path / "id.txt"), "-o", str(tmp_path / "plain")], cwd=tmp_path)
    assert res.code == 0, res.stderr
    # decrypted mirror == the unencrypted build of the same evidence, except provenance (recipients)
    full = ws / "stella-out/profiles/mirror-full"
    a = json.loads((tmp_path / "plain/mirror/export.json").read_bytes())
    b = json.loads((full / "mirror/export.json").read_bytes())
    assert a["contents"] == b["contents"] and a["rerunHash"] == b["rerunHash"]
    prov = json.loads((tmp_path / "plain/mirror/provenance.json").read_bytes())
    assert prov["predicate"]["buildDefinition"]["externalParameters"]["encryption"]["recipients"] == \
        [{"recipient": str(ident.to_public())}]


# -- delta economics on the shared corpora ---------------------------------------------------------------

CORPUS_EXPORTFILE = """
[package]
source_date_epoch = 1735689600

[targets.osv-pypi]
rule = "osv_source"
srcs = ["@data//osv-pypi/vulns/**/*.yaml"]
shards = 32

[targets.osv-go]
rule = "osv_source"
srcs = ["@data//osv-go/*.json"]
shards = 32

[targets.mirror-full]
rule = "mirror_full"
deps = [":osv-pypi", ":osv-go"]
tuf = {{ key = "{key}", expires_days = {{ root = 7300, targets = 7300, snapshot = 7300, timestamp = 7300 }} }}

[targets.mirror-delta]
rule = "mirror_delta"
deps = [":mirror-full"]
"""


def _change_one_percent(data: Path, seed: int) -> int:
    import yaml

    files = sorted(p for p in data.rglob("*") if p.suffix in (".json", ".yaml") and p.name != "LICENSE")
    chosen = random.Random(seed).sample(files, len(files) // 100)
    for path in chosen:
        if path.suffix == ".json":
            doc = json.loads(path.read_text())
            doc["details"] = (doc.get("details") or "") + f" (edited {seed})"
            doc["modified"] = "2025-06-01T00:00:00Z"
            path.write_text(json.dumps(doc))
        else:
            doc = yaml.safe_load(path.read_text())
            doc["details"] = (doc.get("details") or "") + f" (edited {seed})"
            doc["modified"] = "2025-06-01T00:00:00Z"
            path.write_text(yaml.safe_dump(doc))
    return len(chosen)


@pytest.mark.slow
def test_delta_economics_on_corpora(tmp_path_factory):
    require_shared_data()
    root = tmp_path_factory.mktemp("mirror-corpora")
    data = root / "data"
    shutil.copytree(SHARED_DATA / "osv-pypi", data / "osv-pypi")
    shutil.copytree(SHARED_DATA / "osv-go", data / "osv-go")
    ws = root / "ws"
    (ws / "mirrors").mkdir(parents=True)
    (ws / "stella-workspace.toml").write_text(f'[workspace]\nexternal = {{ data = "{data}" }}\n')
    key = generate_key(root / "tuf.pem", "ed25519")
    (ws / "mirrors/Exportfile").write_text(CORPUS_EXPORTFILE.format(key=key))
    cache = root / "cache"
    t0 = time.perf_counter()
    run_cli(["-q", "-j2", "//mirrors:mirror-full"], cwd=ws, cache=cache, check=True)
    cold = time.perf_counter() - t0
    v1 = root / "v1"
    shutil.copytree(ws / "stella-out/mirrors/mirror-full", v1)
    changed = _change_one_percent(data, seed=20250101)
    t0 = time.perf_counter()
    run_cli(["-q", "-j2", "mirror", "delta", "--base", str(v1), "//mirrors:mirror-delta"], cwd=ws, cache=cache, check=True)
    delta_time = time.perf_counter() - t0
    delta = ws / "stella-out/mirrors/mirror-delta"
    # A delta ships in one of two forms (files, or the OCI artifact `mirror push` uploads): each counts.
    full_bytes, delta_bytes = tree_bytes(v1 / "mirror"), tree_bytes(delta / "delta")
    oci_bytes = tree_bytes(delta / "oci")
    ratio = delta_bytes / full_bytes
    diff = json.loads((delta / "delta/manifest.diff.json").read_bytes())
    print(f"\nmirror economics: {changed} advisories changed (1%), full mirror {full_bytes} B "
          f"({len(json.loads((v1 / 'mirror/export.json').read_bytes())['contents'])} files), delta {delta_bytes} B "
          f"= {ratio:.2%} (OCI form {oci_bytes} B = {oci_bytes / full_bytes:.2%}; {len(diff['changed'])} changed, "
          f"{len(diff['added'])} added files); cold full build {cold:.1f} s, delta build {delta_time:.1f} s "
          f"({delta_time / cold:.0%})")
    assert ratio <= 0.05 and oci_bytes / full_bytes <= 0.05
    # and it applies to exactly the full v2 mirror
    run_cli(["-q", "//mirrors:mirror-full"], cwd=ws, cache=cache, check=True)
    res = run_cli(["mirror", "apply", str(v1), str(delta), "-o", str(root / "applied")], cwd=root)
    assert res.code == 0, res.stderr
    assert same_tree(root / "applied", ws / "stella-out/mirrors/mirror-full", ignore=("appliedExportIds.log",)) == []


def test_default_mirror_matches_golden(sample):
    from tests.conftest import REPO

    golden = json.loads((REPO / "golden" / "digests.json").read_text())
    ws, root = sample
    assert output_digests(ws, "profiles", "mirror-full") == golden["//profiles:mirror-full"]
    # the default delta, against the base pinned in profiles/mirror-base (manifest, blobs, OCI form)
    run_cli(["-q", "//profiles:mirror-delta"], cwd=ws, cache=root / "cache", check=True)
    assert output_digests(ws, "profiles", "mirror-delta") == golden["//profiles:mirror-delta"]
