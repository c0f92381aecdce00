"""trivy_db_patch and `stella-build trivy-db patch`: ship only the change of a Trivy DB.

Shows: the patch of a DB with ~1 % of advisories changed is ≤ 2 % of db.tar.gz (sample profiles
and a 5k synthetic corpus); the patched DB is byte-identical to the full build; a patch against
the wrong base, a patch whose result is not the promised one, a tampered patch or a bomb frame is
refused with exit 3 and nothing is written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import zstandard

from stella_build.rules.formats.trivy.patch import PatchError, apply_db_patch, make_db_patch
from tests.conftest import REPO, make_workspace, run_cli

PATCH_TARGET = """
[targets.trivy-db-patch]
rule = "trivy_db_patch"
description = "trivy.db as a patch against the base the sites hold"
deps = [":{db}"]
base = {{ db = "{base}", sha256 = "{sha}" }}
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _patched_workspace(ws: Path, cache: Path, package: str, db_target: str, change) -> dict[str, Path]:
    """Build v1, keep its trivy.db as the base, `change()` the evidence, build v2 and its patch."""
    run_cli(["-q", "build", f"//{package}:{db_target}"], cwd=ws, cache=cache, check=True)
    out = ws / "stella-out" / package / db_target
    base = ws / "base" / "trivy.db"
    base.parent.mkdir()
    shutil.copyfile(out / "trivy.db", base)
    change()
    with open(ws / package / "Exportfile", "a") as f:
        f.write(PATCH_TARGET.format(db=db_target, base="base/trivy.db", sha=_sha(base)))
    run_cli(["-q", "build", f"//{package}:{db_target}", f"//{package}:trivy-db-patch"], cwd=ws, cache=cache,
            check=True)
    return {"base": base, "new": out, "patch": ws / "stella-out" / package / "trivy-db-patch"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("patch-sample")
    ws = make_workspace(tmp / "ws")

    def change():  # one of the sample's advisories gets a new summary and fixed version text
        path = ws / "profiles" / "evidence" / "osv" / "STELLA-SAMPLE-2018-0003-PyPI-requests.json"
        doc = json.loads(path.read_text())
        doc["summary"] += " (updated)"
        doc["modified"] = "2025-01-02T00:00:00Z"
        path.write_text(json.dumps(doc, indent=2))

    return {**_patched_workspace(ws, tmp / "cache", "profiles", "trivy-db", change), "ws": ws, "tmp": tmp}


def test_sample_patch_is_small_and_names_both_digests(sample):
    patch, new, base = sample["patch"], sample["new"], sample["base"]
    doc = json.loads((patch / "patch.json").read_bytes())
    size = (patch / "trivy.db.zst").stat().st_size
    assert doc["base"] == {"sha256": _sha(base), "bytes": base.stat().st_size}
    assert doc["result"] == {"path": "trivy.db", "sha256": _sha(new / "trivy.db"),
                             "bytes": (new / "trivy.db").stat().st_size}
    assert doc["patch"]["sha256"] == _sha(patch / "trivy.db.zst") and doc["patch"]["bytes"] == size
    assert doc["formatVersion"] == 1
    assert _sha(base) != _sha(new / "trivy.db")  # the change reached the DB
    assert (patch / "metadata.json").read_bytes() == (new / "metadata.json").read_bytes()
    # measured: 62 bytes against a 6,091-byte db.tar.gz (1.0 %)
    assert size <= 0.02 * (new / "db.tar.gz").stat().st_size, (size, (new / "db.tar.gz").stat().st_size)


def test_sample_patch_applies_byte_identical(sample, tmp_path):
    out = tmp_path / "out"
    r = run_cli(["--output", "json", "trivy-db", "patch", str(sample["base"]), str(sample["patch"]), "-o", str(out)],
                cwd=sample["ws"])
    assert r.code == 0, r.stderr
    assert r.json()["result"] == _sha(sample["new"] / "trivy.db")
    # the keys every command's JSON object has, as an error object has them
    assert (r.json()["ok"], r.json()["exit_code"], r.json()["errors"]) == (True, 0, [])
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "trivy.db"]
    assert (out / "trivy.db").read_bytes() == (sample["new"] / "trivy.db").read_bytes()
    assert (out / "metadata.json").read_bytes() == (sample["new"] / "metadata.json").read_bytes()
    # again into the same OUT: it already holds the result, nothing is written
    before = (out / "trivy.db").stat().st_ino
    r = run_cli(["--output", "json", "trivy-db", "patch", str(sample["base"]), str(sample["patch"]), "-o", str(out)],
                cwd=sample["ws"])
    assert r.code == 0 and r.json()["unchanged"] is True, r.stderr
    assert (out / "trivy.db").stat().st_ino == before
    # an earlier output holding another DB is replaced without --force
    (out / "trivy.db").write_bytes(sample["base"].read_bytes())
    r = run_cli(["--output", "json", "trivy-db", "patch", str(sample["base"]), str(sample["patch"]), "-o", str(out)],
                cwd=sample["ws"])
    assert r.code == 0 and r.json()["unchanged"] is False, r.stderr
    assert (out / "trivy.db").read_bytes() == (sample["new"] / "trivy.db").read_bytes()


def test_in_place_update_of_a_trivy_cache_db_dir(sample, tmp_path):
    db = tmp_path / "cache" / "db"
    db.mkdir(parents=True)
    shutil.copyfile(sample["base"], db / "trivy.db")
    (db / "metadata.json").write_text("{}")
    r = run_cli(["trivy-db", "patch", str(db), str(sample["patch"]), "-o", str(db)], cwd=sample["ws"])
    assert r.code == 0, r.stderr
    assert _sha(db / "trivy.db") == _sha(sample["new"] / "trivy.db")
    assert not [p for p in db.parent.iterdir() if p.name != "db"]  # no leftovers next to it
    # a cron job running the same patch again on the cache it already updated: nothing to do
    again = run_cli(["--output", "json", "trivy-db", "patch", str(db), str(sample["patch"]), "-o", str(db)],
                    cwd=sample["ws"])
    assert again.code == 0, again.stderr
    assert again.json()["unchanged"] is True
    text = run_cli(["trivy-db", "patch", str(db), str(sample["patch"]), "-o", str(db)], cwd=sample["ws"])
    assert text.code == 0 and "already is the patch's result" in text.stdout + text.stderr
    assert "patched trivy.db" not in text.stdout + text.stderr
    assert _sha(db / "trivy.db") == _sha(sample["new"] / "trivy.db")
    # but the result as the base of a patch into another directory is still the wrong base
    _refused(sample, tmp_path, db / "trivy.db", sample["patch"], "base-mismatch")


def _refused(sample, tmp_path, base: Path, patch: Path, reason: str, exit_code: int = 3) -> dict:
    """Refused with `reason` and nothing written; → the JSON error."""
    out = tmp_path / "out"
    r = run_cli(["--output", "json", "trivy-db", "patch", str(base), str(patch), "-o", str(out)], cwd=sample["ws"])
    assert r.code == exit_code, r.stdout + r.stderr
    assert [e["reason"] for e in r.json()["errors"]] == [reason]
    assert "Traceback" not in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [p for p in tmp_path.iterdir() if p.name != "out"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    return r.json()["errors"][0]


def test_wrong_base_is_refused_without_writing(sample, tmp_path):
    _refused(sample, tmp_path, sample["new"] / "trivy.db", sample["patch"], "base-mismatch")


def test_wrong_base_keeps_an_existing_out_untouched(sample, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(sample["base"], out / "trivy.db")
    before = _sha(out / "trivy.db")
    r = run_cli(["--output", "json", "trivy-db", "patch", str(sample["new"] / "trivy.db"), str(sample["patch"]),
                 "-o", str(out)], cwd=sample["ws"])
    assert r.code == 3 and r.json()["errors"][0]["reason"] == "base-mismatch"
    assert sorted(p.name for p in out.iterdir()) == ["trivy.db"] and _sha(out / "trivy.db") == before


def _copy_patch(sample, tmp_path) -> Path:
    dst = tmp_path / "patch-copy"
    shutil.copytree(sample["patch"], dst)
    return dst


def test_result_not_the_promised_one_is_refused(sample, tmp_path):
    patch = _copy_patch(sample, tmp_path)
    doc = json.loads((patch / "patch.json").read_bytes())
    doc["result"]["sha256"] = "0" * 64
    (patch / "patch.json").write_text(json.dumps(doc))
    _refused(sample, tmp_path, sample["base"], patch, "patch-result-mismatch")


@pytest.mark.parametrize("entry,field,value,reason", [
    ("result", "sha256", "upper", "schema-invalid"),       # digests are lowercase hex
    ("patch", "bytes", -1, "schema-invalid"),
    ("patch", "bytes", 2.0, "schema-invalid"),
    ("result", "bytes", 1 << 40, "size-limit"),
])
def test_manifest_errors_name_their_field(sample, tmp_path, entry, field, value, reason):
    patch = _copy_patch(sample, tmp_path)
    doc = json.loads((patch / "patch.json").read_bytes())
    doc[entry][field] = doc[entry][field].upper() if value == "upper" else value
    (patch / "patch.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    r = run_cli(["--output", "json", "trivy-db", "patch", str(sample["base"]), str(patch), "-o", str(out)],
                cwd=sample["ws"])
    assert r.code == 3 and not out.exists(), r.stdout + r.stderr
    [err] = r.json()["errors"]
    assert (err["reason"], err["field"]) == (reason, f"{entry}.{field}")
    text = run_cli(["trivy-db", "patch", str(sample["base"]), str(patch), "-o", str(out)], cwd=sample["ws"])
    assert text.stderr.count("patch.json") == 1, text.stderr  # the file is named once


def test_metadata_that_is_not_trivys_is_refused(sample, tmp_path):
    """An (unsigned) patch whose metadata.json is consistent with patch.json but is not a Trivy
    metadata.json would be written into the site's Trivy cache: refused, nothing written."""
    meta = json.loads((sample["new"] / "metadata.json").read_bytes())
    for bad in (b"not json", json.dumps({**meta, "Version": 1}).encode()):  # 1: a Java DB's schema
        patch = _copy_patch(sample, tmp_path)
        (patch / "metadata.json").write_bytes(bad)
        doc = json.loads((patch / "patch.json").read_bytes())
        doc["metadata"] = {**doc["metadata"], "sha256": hashlib.sha256(bad).hexdigest(), "bytes": len(bad)}
        (patch / "patch.json").write_text(json.dumps(doc))
        _refused(sample, tmp_path, sample["base"], patch, "schema-invalid")
        shutil.rmtree(patch)


def test_symlinked_out_is_refused_and_its_target_untouched(sample, tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    shutil.copyfile(sample["base"], target / "trivy.db")
    link = tmp_path / "link"
    link.symlink_to(target)
    r = run_cli(["--output", "json", "trivy-db", "patch", str(sample["base"]), str(sample["patch"]),
                 "-o", str(link)], cwd=sample["ws"])
    assert r.code == 2 and r.json()["errors"][0]["reason"] == "output-not-empty"
    assert "symbolic link" in r.json()["errors"][0]["message"]
    assert link.is_symlink() and _sha(target / "trivy.db") == _sha(sample["base"])
    # a dangling link: the same refusal; --force replaces the link itself, nothing left beside it
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing")
    r = run_cli(["--output", "json", "trivy-db", "patch", str(sample["base"]), str(sample["patch"]),
                 "-o", str(dangling)], cwd=sample["ws"])
    assert r.code == 2 and "symbolic link" in r.json()["errors"][0]["message"]
    for out in (dangling, link):
        r = run_cli(["trivy-db", "patch", "--force", str(sample["base"]), str(sample["patch"]), "-o", str(out)],
                    cwd=sample["ws"])
        assert r.code == 0, r.stderr
        assert out.is_dir() and not out.is_symlink() and _sha(out / "trivy.db") == _sha(sample["new"] / "trivy.db")
    assert not (tmp_path / "missing").exists() and _sha(target / "trivy.db") == _sha(sample["base"])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_tampered_patch_is_refused(sample, tmp_path):
    patch = _copy_patch(sample, tmp_path)
    (patch / "trivy.db.zst").write_bytes(b"\0" + (patch / "trivy.db.zst").read_bytes()[1:])
    assert _refused(sample, tmp_path, sample["base"], patch, "digest-mismatch")["field"] == "patch.sha256"


def test_a_patch_directory_missing_a_file_says_to_copy_it_whole(sample, tmp_path):
    for name in ("trivy.db.zst", "metadata.json"):
        patch = _copy_patch(sample, tmp_path)
        (patch / name).unlink()
        err = _refused(sample, tmp_path, sample["base"], patch, "missing-file")
        assert name in err["message"] and "copy the whole directory" in err["message"], err
        assert err["field"] == {"trivy.db.zst": "patch.path", "metadata.json": "metadata.path"}[name], err
        shutil.rmtree(patch)


def test_duplicate_keys_in_patch_json_are_refused(sample, tmp_path):
    """A patch.json naming a key twice could be read two ways (Python keeps the last, Go's
    encoding/json v2 refuses it): refused, whichever copy is the honest one."""
    patch = _copy_patch(sample, tmp_path)
    text = (patch / "patch.json").read_text()
    doc = json.loads(text)
    forged = json.dumps({**doc["result"], "sha256": "0" * 64})
    for dup in (text.rstrip()[:-1] + ', "result": ' + forged + "}",          # a second result
                text.replace('"sha256"', '"sha256": "' + "0" * 64 + '", "sha256"', 1)):  # inside one
        assert dup != text
        (patch / "patch.json").write_text(dup)
        err = _refused(sample, tmp_path, sample["base"], patch, "schema-invalid")
        assert "appears twice" in err["message"] and err["field"] in ("result", "sha256"), err


def test_user_directory_is_not_replaced(sample, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = run_cli(["--output", "json", "trivy-db", "patch", str(sample["base"]), str(sample["patch"]), "-o", str(out)],
                cwd=sample["ws"])
    assert r.code == 2 and r.json()["errors"][0]["reason"] == "output-not-empty"
    assert (out / "notes.txt").read_text() == "keep me"


def test_wrong_pinned_base_fails_analysis(sample, tmp_path):
    ws = sample["ws"]
    ef = ws / "profiles" / "Exportfile"
    text = ef.read_text()
    try:
        ef.write_text(text.replace(_sha(sample["base"]), "1" * 64))
        r = run_cli(["--output", "json", "build", "//profiles:trivy-db-patch"], cwd=ws, cache=sample["tmp"] / "cache")
        assert r.code == 2 and r.json()["errors"][0]["reason"] == "base-mismatch"
        assert "ERR_EXPORT_BASE_MISMATCH" in r.json()["errors"][0]["message"]
    finally:
        ef.write_text(text)


def test_a_base_that_is_not_a_bbolt_db_fails_analysis(sample, tmp_path):
    """`build --base` overrides the pinned base: a file that is not a bbolt DB is refused."""
    other = tmp_path / "hostname"
    other.write_bytes(b"ws1\n")
    r = run_cli(["--output", "json", "build", "--base", str(other), "//profiles:trivy-db-patch"],
                cwd=sample["ws"], cache=sample["tmp"] / "cache")
    assert r.code == 2 and r.json()["errors"][0]["reason"] == "base-invalid", r.stdout + r.stderr
    assert "ERR_EXPORT" not in r.json()["errors"][0]["message"]
    # the error names the option and the file given, not a line of the Exportfile
    err = r.json()["errors"][0]
    assert (err["field"], err["file"], err.get("line")) == ("--base", str(other), None), err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = run_cli(["--output", "json", "build", "--base", str(fifo), "//profiles:trivy-db-patch"],
                cwd=sample["ws"], cache=sample["tmp"] / "cache")
    assert r.code == 2 and "is not a regular file" in r.json()["errors"][0]["message"]


# -- the format, directly -----------------------------------------------------------------------

def test_bomb_frame_is_refused_before_decoding():
    base = b"x" * 4096
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (8 << 20))  # declares 8 MiB
    with pytest.raises(PatchError) as exc:
        apply_db_patch(base, bomb, result_size=4096, result_sha256="0" * 64)
    assert exc.value.reason == "size-limit"


def test_frame_without_size_is_bounded_while_decoding():
    base = b"y" * 4096
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = cobj.compress(b"\0" * (4 << 20)) + cobj.flush()
    with pytest.raises(PatchError) as exc:
        apply_db_patch(base, frame, result_size=4096, result_sha256="0" * 64)
    assert exc.value.reason == "size-limit"


def test_patch_against_another_base_fails_the_checksum():
    import os
    base = os.urandom(200_000)
    new = base[:1000] + b"changed" + base[1000:]
    patch = make_db_patch(base, new, 3)
    assert apply_db_patch(base, patch, result_size=len(new), result_sha256=hashlib.sha256(new).hexdigest()) == new
    with pytest.raises(PatchError) as exc:
        apply_db_patch(os.urandom(200_000), patch, result_size=len(new), result_sha256=hashlib.sha256(new).hexdigest())
    assert exc.value.reason in ("patch-invalid", "patch-result-mismatch")


# -- a synthetic corpus with 1 % of advisories changed --------------------------------------------

SYNTH_EXPORTFILE = """[package]
source_date_epoch = 1735689600

[targets.osv]
rule = "osv_source"
srcs = ["osv/**/*.json"]
shards = 4
source = { name = "synthetic", license = "CC0-1.0" }

[targets.trivy-db]
rule = "trivy_db"
deps = [":osv"]
"""


def test_synthetic_one_percent_change(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from gen_osv_corpus import encode, generate
    finally:
        sys.path.pop(0)
    ws = make_workspace(tmp_path / "ws", packages=())
    pkg = ws / "synth"
    (pkg / "osv").mkdir(parents=True)
    (pkg / "Exportfile").write_text(SYNTH_EXPORTFILE)
    docs = list(generate(5000, 1))
    for i, doc in enumerate(docs):
        (pkg / "osv" / f"{i // 500:03d}").mkdir(exist_ok=True)
        (pkg / "osv" / f"{i // 500:03d}" / f"{doc['id']}.json").write_bytes(encode(doc))

    def change():  # every 100th advisory: new summary, modified date and fixed version
        for i, doc in enumerate(docs):
            if i % 100 == 0:
                doc = dict(doc, summary=(doc.get("summary") or "") + " (revised)", modified="2025-01-02T00:00:00Z")
                (pkg / "osv" / f"{i // 500:03d}" / f"{doc['id']}.json").write_bytes(encode(doc))

    paths = _patched_workspace(ws, tmp_path / "cache", "synth", "trivy-db", change)
    size = (paths["patch"] / "trivy.db.zst").stat().st_size
    archive = (paths["new"] / "db.tar.gz").stat().st_size
    assert _sha(paths["base"]) != _sha(paths["new"] / "trivy.db")
    assert size <= 0.02 * archive, f"patch {size} bytes vs db.tar.gz {archive} bytes"
    out = tmp_path / "out"
    r = run_cli(["trivy-db", "patch", str(paths["base"]), str(paths["patch"]), "-o", str(out)], cwd=ws)
    assert r.code == 0, r.stderr
    assert (out / "trivy.db").read_bytes() == (paths["new"] / "trivy.db").read_bytes()


def test_bomb_stays_under_a_memory_cap(tmp_path):
    """A frame without a content size that inflates to 2 GiB, under RLIMIT_AS = 512 MiB: refused
    with size-limit after at most the declared result size + 1 MiB, never a MemoryError."""
    import subprocess

    cobj = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    chunk = b"\0" * (1 << 20)
    bomb = b"".join(cobj.compress(chunk) for _ in range(2048)) + cobj.flush()
    (tmp_path / "bomb.zst").write_bytes(bomb)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))\n"
        "from stella_build.rules.formats.trivy.patch import PatchError, apply_db_patch\n"
        "try:\n"
        f"    apply_db_patch(b'z' * 65536, open({str(tmp_path / 'bomb.zst')!r}, 'rb').read(),\n"
        "                   result_size=1 << 20, result_sha256='0' * 64)\n"
        "except PatchError as exc:\n"
        "    print(exc.reason)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "size-limit"


def test_truncated_patch_is_patch_invalid():
    """A frame cut short decodes to fewer bytes than its header declares: refused as corrupt
    (`patch-invalid`), not reported as a mere result mismatch."""
    import os
    base = os.urandom(100_000)
    new = base[:5000] + b"changed" + base[5000:]
    patch = make_db_patch(base, new, 3)
    with pytest.raises(PatchError) as exc:
        apply_db_patch(base, patch[:-12], result_size=len(new), result_sha256=hashlib.sha256(new).hexdigest())
    assert exc.value.reason == "patch-invalid"


def test_signed_patch_checks_its_origin_before_anything(sample, tmp_path):
    """A trivy_db_patch target built with --sign carries signatures/ over patch.json; `trivy-db
    patch --key` refuses an unsigned patch (exit 4), another key or a patch.json changed after
    signing (exit 3), writing nothing; with the right key it applies byte-identically."""
    from tests.signed_bundle import PASSWORD, make_keys

    key, pub = make_keys(tmp_path / "keys")
    _, other = make_keys(tmp_path / "other")
    ws, cache = sample["ws"], sample["tmp"] / "cache"
    unsigned = tmp_path / "unsigned"
    shutil.copytree(sample["patch"], unsigned)
    run_cli(["-q", "build", "--sign", str(key), "//profiles:trivy-db-patch"], cwd=ws, cache=cache,
            check=True, env={"COSIGN_PASSWORD": PASSWORD})
    signed = tmp_path / "signed"
    shutil.copytree(sample["patch"], signed)
    run_cli(["-q", "build", "//profiles:trivy-db-patch"], cwd=ws, cache=cache, check=True)  # as it was
    assert not (sample["patch"] / "signatures").exists()
    assert sorted(p.name for p in (signed / "signatures").iterdir()) == [
        "cosign.pub", "patch.json.sig", "patch.json.sigstore.json"]
    # the signed build's patch bytes are the unsigned build's: signing only adds signatures/
    for name in ("trivy.db.zst", "metadata.json", "patch.json"):
        assert _sha(signed / name) == _sha(unsigned / name), name
    ok = run_cli(["--output", "json", "trivy-db", "patch", "--key", str(pub), str(sample["base"]), str(signed),
                  "-o", str(tmp_path / "out")], cwd=ws)
    assert ok.code == 0, ok.stderr
    assert ok.json()["signed"] is True and _sha(tmp_path / "out" / "trivy.db") == _sha(sample["new"] / "trivy.db")

    def refused(patch_dir: Path, key_file: Path, code: int, reason: str) -> None:
        out = tmp_path / f"refused-{reason}-{code}"
        r = run_cli(["--output", "json", "trivy-db", "patch", "--key", str(key_file), str(sample["base"]),
                     str(patch_dir), "-o", str(out)], cwd=ws)
        assert r.code == code and r.json()["errors"][0]["reason"] == reason, (r.stdout, r.stderr)
        assert not out.exists() and "Traceback" not in r.stderr

    refused(unsigned, pub, 4, "signature-missing")            # unsigned
    refused(signed, other, 3, "signature-invalid")           # signed by another key
    tampered = tmp_path / "tampered"
    shutil.copytree(signed, tampered)
    doc = json.loads((tampered / "patch.json").read_text())
    doc["result"]["sha256"] = "0" * 64                       # a consistent lie needs the key
    (tampered / "patch.json").write_text(json.dumps(doc))
    refused(tampered, pub, 3, "signature-invalid")
    linked = tmp_path / "linked"
    shutil.copytree(signed, linked, symlinks=True)
    shutil.rmtree(linked / "signatures")
    (linked / "signatures").symlink_to(signed / "signatures")
    refused(linked, pub, 3, "symlink")


def test_an_older_patch_does_not_roll_back_a_newer_db(sample, tmp_path):
    """OUT already holds a DB updated later than the patch's result (metadata.json UpdatedAt): a
    relayed older patch is refused (exit 3, rollback) and OUT is left as it was; --force goes back
    on purpose. A patch whose declared sizes are smaller than its files is refused before reading."""
    out = tmp_path / "site"
    out.mkdir()
    shutil.copyfile(sample["new"] / "trivy.db", out / "trivy.db")
    newer = json.loads((sample["patch"] / "metadata.json").read_text())
    newer["UpdatedAt"] = "2999-01-01T00:00:00Z"
    (out / "metadata.json").write_text(json.dumps(newer))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run_cli(["--output", "json", "trivy-db", "patch", str(sample["base"]), str(sample["patch"]), "-o", str(out)],
                cwd=sample["ws"])
    assert r.code == 3 and r.json()["errors"][0]["reason"] == "rollback", (r.stdout, r.stderr)
    assert "2999-01-01T00:00:00Z" in r.json()["errors"][0]["message"]  # dates as dates, not epoch seconds
    assert r.json()["errors"][0]["field"] == "--out"  # what would be rolled back
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    forced = run_cli(["trivy-db", "patch", "--force", str(sample["base"]), str(sample["patch"]), "-o", str(out)],
                     cwd=sample["ws"])
    assert forced.code == 0, forced.stderr
    assert (out / "metadata.json").read_bytes() == (sample["patch"] / "metadata.json").read_bytes()
    big = _copy_patch(sample, tmp_path)
    with open(big / "trivy.db.zst", "ab") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB declared as a few KiB in patch.json
    assert _refused(sample, tmp_path, sample["base"], big, "size-limit")["field"] == "patch.bytes"
