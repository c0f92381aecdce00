"""The Offline Kit: `//profiles:offline-kit` (rules/offline_kit.py, rules/formats/kit.py), its shell
scripts under dash, and `stella-build kit verify|import` (stella_build/delivery/kit.py).

Kits are built once per module through the real CLI: the default target unsigned, a split copy
(parts of 32 KiB) and a signed copy (the public test key of tests/signed_bundle.py). Hostile kits
are made here with tarfile; "resealed" kits (a changed file with a consistent manifest and
checksums, as an attacker or a bug would make) with the format library itself.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import pytest

from stella_build.delivery.kit import KitError, import_kit, verify_kit
from stella_build.engine.encode import canonical_json
from stella_build.rules.formats import kit as K
from tests.conftest import REPO, make_workspace, output_digests, run_cli
from tests.signed_bundle import PASSWORD, make_keys, write_public_test_keys

EPOCH = 1735689600
TOP = "stella-offline-kit-20250101"
ARCHIVE = TOP + ".tar.gz"
GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())["//profiles:offline-kit"]
SIGNED_GOLDEN = json.loads((REPO / "golden" / "signed.json").read_text())["//profiles:offline-kit"]
KIT_DEPS = 'deps = [":trivy-db", ":trivy-java-db", ":mirror-full"]\n'
SPLIT_TARGET = (f'\n[targets.kit-split]\nrule = "offline_kit"\n{KIT_DEPS}split_size = "32K"\n'
                '\n[targets.kit-delta]\nrule = "offline_kit"\ndeps = [":trivy-db", ":mirror-delta"]\n')
DASH = shutil.which("dash")
PLAIN_PATH = "/usr/bin:/bin"  # coreutils and tar; no cosign (the interop test runs it with cosign)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("kits")
    ws = make_workspace(root / "ws")
    ef = ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text() + SPLIT_TARGET)
    exports = ["//profiles:trivy-db", "//profiles:trivy-java-db", "//profiles:mirror-full"]
    run_cli(["-q", "build", "//profiles:offline-kit", "//profiles:kit-split", "//profiles:kit-delta", *exports],
            cwd=ws, cache=root / "c", check=True)
    key, pub = write_public_test_keys(root / "keys")
    signed = make_workspace(root / "signed")
    run_cli(["-q", "build", "//profiles:offline-kit", *exports], cwd=signed, cache=root / "c", check=True,
            env={"STELLA_SIGNING_KEY": str(key), "COSIGN_PASSWORD": PASSWORD})
    return {"ws": ws, "out": ws / "stella-out/profiles/offline-kit", "split": ws / "stella-out/profiles/kit-split",
            "signed_ws": signed, "signed": signed / "stella-out/profiles/offline-kit", "key": key, "pub": pub,
            "root": root}


def unpack(archive: Path, dest: Path) -> Path:
    """The kit as `tar -xzf` unpacks it (hard links included)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
    return dest / TOP


def files_of(tree: Path) -> list[str]:
    return sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())


def dash(script: Path, *args, cwd: Path | None = None, path: str = PLAIN_PATH) -> subprocess.CompletedProcess:
    if DASH is None:
        pytest.fail("dash is not installed: verify-kit.sh must be shown to run under a POSIX shell")
    return subprocess.run([DASH, str(script), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PATH": path, "HOME": "/nonexistent", "TMPDIR": str(script.parent.parent)})


def refused(fn, *args, **kwargs) -> KitError:
    with pytest.raises(KitError) as info:
        fn(*args, **kwargs)
    return info.value


def flip(path: Path) -> bytes:
    """Flip one bit of the middle byte; returns the original bytes (to restore)."""
    data = path.read_bytes()
    i = len(data) // 2
    path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])
    return data


# -- the target ---------------------------------------------------------------------------------------

def test_kit_outputs_match_golden(built):
    assert output_digests(built["ws"], "profiles", "offline-kit") == GOLDEN
    assert output_digests(built["signed_ws"], "profiles", "offline-kit") == SIGNED_GOLDEN
    assert set(GOLDEN) == {ARCHIVE, ARCHIVE + ".sha256", "offline-manifest.json", "provenance.json", "verify-kit.sh"}
    assert {ARCHIVE + ".sig", ARCHIVE + ".sigstore.json", "cosign.pub"} <= set(SIGNED_GOLDEN)


def test_kit_layout_and_manifest(built, tmp_path):
    tree = unpack(built["out"] / ARCHIVE, tmp_path)
    files = files_of(tree)
    for must in ("trivy/db/db.tar.gz", "trivy/db/metadata.json", "trivy/db/oci/index.json",
                 "trivy/java-db/javadb.tar.gz", "trivy/java-db/oci/index.json", "mirror/mirror/export.json",
                 "mirror/mirror.tar.zst", "mirror/oci/index.json", "attestations/mirror/statement.json",
                 "attestations/checksums.txt", "attestations/verify-attestations.sh", "checksums.txt",
                 "offline-manifest.json", "signatures.txt", "verify-kit.sh", "import-kit.sh", "README.md"):
        assert must in files, must
    assert "trivy/db/trivy.db" not in files and "trivy/java-db/trivy-java.db" not in files  # inside the archives
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]
            for m in json.loads((tree / "trivy/db/oci/index.json").read_bytes())["manifests"]}
    assert tags == {"2"}
    manifest = json.loads((tree / "offline-manifest.json").read_bytes())
    assert manifest["kitVersion"] == "20250101" and manifest["archive"] == ARCHIVE
    assert manifest["generatedAt"] == "2025-01-01T00:00:00Z"
    mirror_id = json.loads((tree / "mirror/mirror/export.json").read_bytes())["exportId"]
    assert manifest["exportIds"] == [mirror_id]  # unsigned Trivy DBs have no export manifest, so no id
    assert "stella-build kit verify " + ARCHIVE in manifest["cliExample"]
    assert "stella-build kit import " + ARCHIVE in manifest["importExample"]
    described = {e["path"]: (e["sha256"], e["size"]) for e in manifest["files"]}
    assert set(described) == set(files) - {"offline-manifest.json", "checksums.txt"}
    for rel, (sha, size) in described.items():
        data = (tree / rel).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (sha, size), rel
    db = (built["ws"] / "stella-out/profiles/trivy-db/trivy.db").read_bytes()
    assert manifest["trivy"]["trivy-db"]["members"]["trivy.db"] == {"sha256": hashlib.sha256(db).hexdigest(),
                                                                   "size": len(db)}
    lines = (tree / "checksums.txt").read_text().splitlines()
    assert lines[0] == "root " + hashlib.sha256("".join(l + "\n" for l in lines[1:]).encode()).hexdigest()
    assert [l.split("  ", 1)[1] for l in lines[1:]] == sorted(set(files) - {"checksums.txt"})
    # the same bytes travel once: the OCI layer blob is a hard link to db.tar.gz
    with tarfile.open(built["out"] / ARCHIVE) as tar:
        layer = hashlib.sha256((tree / "trivy/db/db.tar.gz").read_bytes()).hexdigest()
        blob = tar.getmember(f"{TOP}/trivy/db/oci/blobs/sha256/{layer}")
        assert blob.islnk() and blob.linkname == f"{TOP}/trivy/db/db.tar.gz"
        assert tar.getmember(f"{TOP}/verify-kit.sh").mode == 0o755
        assert {m.mtime for m in tar.getmembers()} == {EPOCH} and {m.uid for m in tar.getmembers()} == {0}
    assert (built["out"] / "verify-kit.sh").read_bytes() == (tree / "verify-kit.sh").read_bytes()
    assert (built["out"] / "offline-manifest.json").read_bytes() == (tree / "offline-manifest.json").read_bytes()
    assert (built["out"] / (ARCHIVE + ".sha256")).read_text() == \
        f"{hashlib.sha256((built['out'] / ARCHIVE).read_bytes()).hexdigest()}  {ARCHIVE}\n"


def test_a_kit_can_carry_a_mirror_delta(built, tmp_path):
    out = built["ws"] / "stella-out/profiles/kit-delta"
    tree = unpack(out / ARCHIVE, tmp_path)
    diff = json.loads((tree / "mirror-delta/delta/manifest.diff.json").read_bytes())
    manifest = json.loads((tree / "offline-manifest.json").read_bytes())
    assert [e["kind"] for e in manifest["exports"]] == ["trivy-db", "mirror-delta"]
    assert manifest["exportIds"] == [diff["exportId"]] and "mirror-delta/oci/index.json" in files_of(tree)
    assert verify_kit(out).report["kit"] == TOP


def test_signed_kit_copies_attestations_unchanged(built, tmp_path):
    tree = unpack(built["signed"] / ARCHIVE, tmp_path)
    trivy = built["signed_ws"] / "stella-out/profiles/trivy-db"
    mirror = built["signed_ws"] / "stella-out/profiles/mirror-full/mirror"
    same = {"attestations/trivy-db/attestation.dsse.json": trivy / "manifests/provenance.dsse.json",
            "attestations/trivy-db/attestation.sigstore.json": trivy / "manifests/provenance.sigstore.json",
            "attestations/trivy-db/statement.json": trivy / "manifests/provenance.json",
            "attestations/mirror/attestation.dsse.json": mirror / "signatures/provenance.dsse.json",
            "attestations/mirror/statement.json": mirror / "provenance.json",
            "trivy/db/db.tar.gz.sigstore.json": trivy / "db.tar.gz.sigstore.json",
            "trust/cosign.pub": built["pub"]}
    for rel, src in same.items():
        assert (tree / rel).read_bytes() == src.read_bytes(), rel
    relations = (tree / "signatures.txt").read_text().splitlines()
    assert "bundle trivy/db/db.tar.gz.sigstore.json trivy/db/db.tar.gz" in relations
    assert "attestation mirror/mirror/signatures/provenance.sigstore.json mirror/mirror/export.json" in relations
    manifest = json.loads((tree / "offline-manifest.json").read_bytes())
    assert len(manifest["exportIds"]) == 3 and all(e["signed"] for e in manifest["exports"])
    assert manifest["trust"]["cosignPub"] == "trust/cosign.pub"
    report = verify_kit(built["signed"], str(built["pub"])).report
    assert report["signatures"]["archive"] == 2 and report["signatures"]["checked"] == len(relations)


# -- verify-kit.sh under dash ---------------------------------------------------------------------------

def test_verify_kit_sh_accepts_every_form_under_dash(built, tmp_path):
    out = built["out"]
    for target in ([], [out], [out / ARCHIVE]):
        res = dash(out / "verify-kit.sh", *target)
        assert res.returncode == 0 and res.stdout.endswith("verify-kit: OK\n"), res.stderr
        assert "files match checksums.txt" in res.stdout
    res = dash(out / "verify-kit.sh", "-o", tmp_path / "kept", out)
    assert res.returncode == 0, res.stderr
    tree = tmp_path / "kept" / TOP
    assert dash(tree / "verify-kit.sh").returncode == 0  # the copy inside checks the unpacked kit
    assert dash(tree / "attestations/verify-attestations.sh").returncode == 0
    media = tmp_path / "media"  # what travels on removable media: the parts, not the archive
    shutil.copytree(built["split"] / "parts", media / "parts")
    for name in ("verify-kit.sh", ARCHIVE + ".sha256"):
        shutil.copy(built["split"] / name, media / name)
    parts = sorted((media / "parts").glob(ARCHIVE + ".part-*"))
    assert len(parts) >= 3
    res = dash(media / "verify-kit.sh")
    assert res.returncode == 0 and f"{len(parts)} parts match" in res.stdout, res.stderr
    res = dash(media / "verify-kit.sh", media / "parts" / (ARCHIVE + ".parts"))
    assert res.returncode == 0, res.stderr


def _victims(files: list[str]) -> list[str]:
    """Every top-level file (the lists, the manifest, the scripts), trust material, the DB archives,
    and the first file of every other directory: each way a file is checked, at least once.
    (`kit verify` is checked on every single file below; one dash run per file takes ~30 s here.)"""
    seen, out = set(), []
    for rel in files:
        directory = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if directory in ("", "trust") or rel.endswith(".tar.gz") or directory not in seen:
            out.append(rel)
        seen.add(directory)
    return out


def test_verify_kit_sh_with_a_key_requires_checked_signatures(built, tmp_path):
    """`-k KEY` asks for origin, not only integrity: an unsigned kit (a swapped-in build), or a
    signed one whose signatures cannot be checked (no cosign on the PATH), fails instead of
    printing OK; without -k the same kits pass on checksums, saying so."""
    unsigned = built["out"]
    res = dash(unsigned / "verify-kit.sh", "-k", built["pub"], unsigned)
    assert res.returncode != 0 and "verify-kit: OK" not in res.stdout, res.stdout
    assert "-k was given but" in res.stdout + res.stderr
    assert dash(unsigned / "verify-kit.sh", unsigned).returncode == 0
    signed = built["signed"]
    res = dash(signed / "verify-kit.sh", "-k", built["pub"], signed)  # PLAIN_PATH: no cosign
    assert res.returncode != 0 and "cosign is not on the PATH" in res.stdout + res.stderr, res.stdout


def test_verify_kit_sh_catches_a_flipped_byte_in_any_file(built, tmp_path):
    tree = unpack(built["signed"] / ARCHIVE, tmp_path)
    script = tmp_path / "verify-kit.sh"  # run a pristine copy: the kit's own copy is among the victims
    shutil.copy(tree / "verify-kit.sh", script)
    victims = _victims(files_of(tree))
    assert {"checksums.txt", "verify-kit.sh", "offline-manifest.json", "trust/cosign.pub",
            "trivy/db/db.tar.gz", "trivy/java-db/javadb.tar.gz"} <= set(victims) and len(victims) > 30
    missed = []
    for rel in victims:
        original = flip(tree / rel)
        res = dash(script, tree)
        (tree / rel).write_bytes(original)
        if res.returncode != 1 or "FAIL" not in res.stderr:
            missed.append(rel)
    lines = (tree / "checksums.txt").read_bytes()
    (tree / "checksums.txt").write_bytes(lines.replace(b"root ", b"root 0", 1)[:-1])  # the root line itself
    assert dash(script, tree).returncode == 1
    (tree / "checksums.txt").write_bytes(lines)
    assert missed == []
    assert dash(script, tree).returncode == 0  # restored


def test_kit_verify_names_a_flipped_byte_in_any_file(built, tmp_path):
    tree = unpack(built["signed"] / ARCHIVE, tmp_path)
    inodes: dict[int, set[str]] = {}
    for rel in files_of(tree):
        inodes.setdefault((tree / rel).stat().st_ino, set()).add(rel)
    for rel in files_of(tree):
        original = flip(tree / rel)
        try:
            exc = refused(verify_kit, tree)
        finally:
            (tree / rel).write_bytes(original)
        assert exc.exit_code == 3, rel
        if rel == "checksums.txt":
            assert exc.reason == "kit-checksums-invalid"
        else:  # the file itself (or a hard-linked name of the same bytes) is blamed
            assert exc.reason == "kit-checksum-mismatch" and exc.file in inodes[(tree / rel).stat().st_ino], (rel, exc)
    verify_kit(tree, str(built["pub"]))  # restored, and signed


def test_changed_archive_is_refused(built, tmp_path):
    for name in (ARCHIVE, ARCHIVE + ".sha256", "verify-kit.sh"):
        shutil.copy(built["out"] / name, tmp_path / name)
    flip(tmp_path / ARCHIVE)
    res = dash(tmp_path / "verify-kit.sh")
    assert res.returncode == 1 and f"{ARCHIVE} does not match {ARCHIVE}.sha256" in res.stderr
    exc = refused(verify_kit, tmp_path)
    assert (exc.exit_code, exc.reason, exc.file) == (3, "kit-archive-digest", ARCHIVE)
    (tmp_path / (ARCHIVE + ".sha256")).unlink()
    assert refused(verify_kit, tmp_path / ARCHIVE).reason in ("kit-archive-invalid", "kit-checksum-mismatch")


def test_missing_changed_and_reordered_parts_are_caught(built, tmp_path):
    def media(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(built["split"] / "parts", d / "parts")
        for f in ("verify-kit.sh", ARCHIVE + ".sha256"):
            shutil.copy(built["split"] / f, d / f)
        return d

    parts = lambda d: sorted((d / "parts").glob(ARCHIVE + ".part-*"))  # noqa: E731
    missing = media("missing")
    parts(missing)[1].unlink()
    res = dash(missing / "verify-kit.sh")
    assert res.returncode == 1 and f"part {ARCHIVE}.part-001 is missing" in res.stderr
    exc = refused(verify_kit, missing)
    assert (exc.exit_code, exc.reason) == (3, "kit-part-missing") and exc.file.endswith(".part-001")

    swapped = media("swapped")  # two parts' files exchanged
    a, b = parts(swapped)[0], parts(swapped)[1]
    tmp = a.with_name("tmp")
    a.rename(tmp), b.rename(a), tmp.rename(b)
    res = dash(swapped / "verify-kit.sh")
    assert res.returncode == 1 and f"part {ARCHIVE}.part-000 does not match" in res.stderr
    exc = refused(verify_kit, swapped)
    assert (exc.reason, Path(exc.file).name) == ("kit-part-mismatch", f"{ARCHIVE}.part-000")

    reordered = media("reordered")  # the list's lines reordered
    listing = reordered / "parts" / (ARCHIVE + ".parts")
    lines = listing.read_text().splitlines(keepends=True)
    listing.write_text("".join([lines[1], lines[0], *lines[2:]]))
    res = dash(reordered / "verify-kit.sh")
    assert res.returncode == 1 and "out of order" in res.stderr
    assert refused(verify_kit, reordered).reason == "kit-parts-invalid"

    extra = media("extra")
    shutil.copy(parts(extra)[0], extra / "parts" / f"{ARCHIVE}.part-999")
    assert dash(extra / "verify-kit.sh").returncode == 1
    assert refused(verify_kit, extra).reason == "kit-part-unlisted"
    assert verify_kit(media("intact")).report["archive"]["parts"] == len(parts(missing)) + 1


# -- stella-build kit verify ------------------------------------------------------------------------------

def test_kit_verify_cli_with_and_without_key(built, tmp_path):
    res = run_cli(["kit", "verify", str(built["signed"]), "--key", str(built["pub"]), "--output", "json"], cwd=tmp_path)
    assert res.code == 0, res.stderr
    data = res.json()
    assert res.stdout == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert data["ok"] and data["kit"] == TOP and data["signatures"]["trusted"]["source"] == str(built["pub"])
    assert verify_kit(built["out"]).report["signatures"]["trusted"] is None  # integrity only
    assert refused(verify_kit, tmp_path / "nothing").exit_code == 2

    _, other = make_keys(tmp_path / "other")
    res = run_cli(["kit", "verify", str(built["signed"]), "--key", str(other), "--output", "json"], cwd=tmp_path)
    assert res.code == 3 and res.json()["errors"][0]["reason"] == "kit-signature-invalid"
    res = run_cli(["kit", "verify", str(built["out"]), "--key", str(built["pub"]), "--output", "json"], cwd=tmp_path)
    assert res.code == 4 and res.json()["errors"][0]["reason"] == "kit-unsigned"
    assert "Traceback" not in res.stderr

    copy = tmp_path / "copy"
    shutil.copytree(built["signed"], copy)
    flip(copy / (ARCHIVE + ".sig"))
    exc = refused(verify_kit, copy, str(built["pub"]))
    assert (exc.reason, Path(exc.file).name) == ("kit-signature-invalid", ARCHIVE + ".sig")
    # an unpacked kit with another key shipped in trust/: refused with --key
    tree = unpack(built["signed"] / ARCHIVE, tmp_path / "tree")
    exc = refused(verify_kit, tree, str(other))
    assert (exc.reason, exc.file) == ("kit-key-mismatch", "trust/cosign.pub")


# -- hostile kits ---------------------------------------------------------------------------------------

def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue(), mtime=0)


def _info(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


HOSTILE = {
    "traversal": [(_info(f"{TOP}/../../escaped"), b"x")],
    "absolute": [(_info("/tmp/escaped-kit-file"), b"x")],
    "outside-top": [(_info("other-dir/README.md"), b"x")],
    "symlink": [(_info(f"{TOP}/README.md", tarfile.SYMTYPE, "/etc/passwd"), None)],
    "hardlink-outside": [(_info(f"{TOP}/README.md", tarfile.LNKTYPE, "/etc/passwd"), None)],
    "hardlink-forward": [(_info(f"{TOP}/a", tarfile.LNKTYPE, f"{TOP}/b"), None), (_info(f"{TOP}/b"), b"x")],
    "fifo": [(_info(f"{TOP}/README.md", tarfile.FIFOTYPE), None)],
    "device": [(_info(f"{TOP}/README.md", tarfile.CHRTYPE), None)],
    "directory": [(_info(f"{TOP}/dir", tarfile.DIRTYPE), None)],
    "duplicate": [(_info(f"{TOP}/README.md"), b"x"), (_info(f"{TOP}/README.md"), b"y")],
    "unsorted": [(_info(f"{TOP}/b"), b"x"), (_info(f"{TOP}/a"), b"y")],
    "file-and-dir": [(_info(f"{TOP}/a"), b"x"), (_info(f"{TOP}/a/b"), b"y")],
    "dotdot-segment": [(_info(f"{TOP}/trivy/../README.md"), b"x")],
    "backslash": [(_info(f"{TOP}/a\\..\\b"), b"x")],
}


def _imported(built: dict) -> Path:
    cache = built["root"] / "imported-cache"
    if not cache.is_dir():
        import_kit(built["out"], cache)
    return cache


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_before_anything_is_written(case, built, tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    data = _tar_gz(HOSTILE[case])
    (dist / ARCHIVE).write_bytes(data)
    (dist / (ARCHIVE + ".sha256")).write_text(f"{hashlib.sha256(data).hexdigest()}  {ARCHIVE}\n")
    cache = tmp_path / "cache"  # a Trivy cache the sample kit was imported into
    shutil.copytree(_imported(built), cache)
    before = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    exc = refused(import_kit, dist, cache)
    assert (exc.exit_code, exc.reason) == (3, "kit-member-invalid"), exc
    assert {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in cache.iterdir()) == ["db", "java-db"]  # no staging left behind
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped-kit-file").exists()
    res = dash(built["out"] / "verify-kit.sh", dist)
    assert res.returncode != 0


def test_pax_header_and_gzip_bombs_fail_fast_in_bounded_memory(tmp_path):
    """A 2 GiB PAX header and a 4 GiB member, both gzip bombs of a few MiB: refused under a 512 MiB
    address-space cap, quickly."""
    def bomb(path: Path, header: tarfile.TarInfo, mib: int) -> None:
        """gzip header + the tar header + `mib` MiB of zeros, no trailer (never reached). After a
        full flush deflate starts afresh, so each further MiB of zeros compresses to the same ~1 KiB."""
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        head = comp.compress(header.tobuf(tarfile.USTAR_FORMAT)) + comp.flush(zlib.Z_FULL_FLUSH)
        block = comp.compress(bytes(1 << 20)) + comp.flush(zlib.Z_FULL_FLUSH)
        path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head + block * mib)

    pax = tmp_path / "pax" / ARCHIVE
    pax.parent.mkdir()
    header = _info(f"{TOP}/././@PaxHeader", tarfile.XHDTYPE)
    header.size = 2 << 30
    bomb(pax, header, 64)
    big = tmp_path / "big" / ARCHIVE
    big.parent.mkdir()
    header = _info(f"{TOP}/README.md")
    header.size = 4 << 30
    bomb(big, header, 4096)
    assert big.stat().st_size < 8 << 20  # 4 GiB of zeros
    for path, extra, reason in ((pax, [], "kit-member-invalid"), (big, ["--max-size", "256M"], "kit-too-large")):
        (path.parent / (ARCHIVE + ".sha256")).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {ARCHIVE}\n")
        start = time.monotonic()
        res = _capped(["kit", "verify", str(path.parent), "--output", "json", *extra], 512)
        elapsed = time.monotonic() - start
        assert res.returncode == 3, res.stderr
        assert json.loads(res.stdout)["errors"][0]["reason"] == reason
        assert elapsed < 20, elapsed
        print(f"\n{path.parent.name}: refused in {elapsed:.1f} s, {_peak(res)} MiB peak RSS")


def _capped(args: list[str], cap_mib: int) -> subprocess.CompletedProcess:
    """`stella-build ARGS` in a child limited to `cap_mib` MiB of address space; prints its peak RSS."""
    code = ("import resource, sys\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({cap_mib << 20}, {cap_mib << 20}))\n"
            "from stella_build.cli.main import main\n"
            "code = main(sys.argv[1:])\n"
            # VmHWM, not ru_maxrss: ru_maxrss survives execve, so it would report pytest's own size
            "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]\n"
            "print('peak-rss-kib', hwm, file=sys.stderr)\n"
            "sys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def _peak(res: subprocess.CompletedProcess) -> int:
    line = next(l for l in res.stderr.splitlines() if l.startswith("peak-rss-kib"))
    return int(line.split()[1]) >> 10


# -- resealed kits: a changed file with a consistent manifest and checksums ------------------------------

def reseal(tree: Path, dest: Path) -> Path:
    """Rebuild offline-manifest.json, checksums.txt, the archive and its .sha256 from a changed tree."""
    manifest = json.loads((tree / K.MANIFEST).read_bytes())
    files = {rel: K.KitFile.of_file(tree / rel) for rel in files_of(tree) if rel not in (K.MANIFEST, K.CHECKSUMS)}
    for kind, db in manifest["trivy"].items():
        with tarfile.open(tree / db["archive"]) as tar:
            db["members"] = {m.name: {"sha256": hashlib.file_digest(tar.extractfile(m), "sha256").hexdigest(),
                                      "size": m.size} for m in tar}
    manifest["files"] = K.file_entries({rel: (kf.sha256, kf.size) for rel, kf in files.items()})
    manifest["kitId"] = K.kit_id(manifest["files"])
    files[K.MANIFEST] = K.KitFile.of_bytes(canonical_json.dumps(manifest))
    files[K.CHECKSUMS] = K.KitFile.of_bytes(K.checksums_txt({rel: kf.sha256 for rel, kf in files.items()}))
    dest.mkdir(parents=True, exist_ok=True)
    digest, _ = K.write_kit_archive(dest / ARCHIVE, TOP, files, EPOCH)
    (dest / (ARCHIVE + ".sha256")).write_text(f"{digest}  {ARCHIVE}\n")
    return dest


def _db_archive(dest: Path, members: dict[str, Path | bytes], level: int = 9) -> None:
    """A Trivy DB archive as the trivy rules write it (write_db_archive), at any gzip level."""
    from stella_build.engine.rule_api import TarEntry, write_tar
    from stella_build.rules.formats.trivy.packaging import GzipWriter

    with open(dest, "wb") as raw:
        gz = GzipWriter(raw, level)
        write_tar(gz, [TarEntry(n, data=v) if isinstance(v, bytes) else TarEntry(n, source=v)
                       for n, v in members.items()], EPOCH)
        gz.close()


def test_db_archive_with_an_extra_member_is_refused(built, tmp_path):
    tree = unpack(built["out"] / ARCHIVE, tmp_path / "tree")
    meta = (tree / "trivy/db/metadata.json").read_bytes()
    _db_archive(tree / "trivy/db/db.tar.gz", {"trivy.db": b"x", "metadata.json": meta, "../../escape": b"x"})
    dist = reseal(tree, tmp_path / "dist")
    exc = refused(import_kit, dist, tmp_path / "cache")
    assert (exc.reason, exc.file) == ("kit-db-invalid", "trivy/db/db.tar.gz")
    assert sorted(os.listdir(tmp_path / "cache")) == [] and not (tmp_path / "escape").exists()


def test_import_streams_a_large_db_in_bounded_memory(built, tmp_path):
    """A 320 MiB trivy.db imported by a process capped at 192 MiB of address space."""
    size = 320 << 20
    tree = unpack(built["out"] / ARCHIVE, tmp_path / "tree")
    db = tmp_path / "trivy.db"
    with open(db, "wb") as f:
        f.truncate(size)  # sparse zeros: cheap to make, 320 MiB to read
    _db_archive(tree / "trivy/db/db.tar.gz", {"trivy.db": db, "metadata.json": (tree / "trivy/db/metadata.json").read_bytes()},
                level=1)
    db.unlink()
    dist = reseal(tree, tmp_path / "dist")
    shutil.rmtree(tree)
    start = time.monotonic()
    res = _capped(["kit", "import", str(dist), "--trivy-cache", str(tmp_path / "cache"), "--output", "json"], 192)
    elapsed = time.monotonic() - start
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["installed"] == {"db": "installed", "java-db": "installed"}
    installed = tmp_path / "cache" / "db" / "trivy.db"
    assert installed.stat().st_size == size
    with open(installed, "rb") as f:
        assert not any(chunk.strip(b"\0") for chunk in iter(lambda: f.read(1 << 20), b""))
    print(f"\n320 MiB DB imported in {elapsed:.1f} s, {_peak(res)} MiB peak RSS (cap: 192 MiB of address space)")
    assert _peak(res) < 96


# -- stella-build kit import ---------------------------------------------------------------------------

def test_import_installs_trivy_cache_layout_idempotently(built, tmp_path):
    cache = tmp_path / "cache"
    res = run_cli(["kit", "import", str(built["signed"]), "--trivy-cache", str(cache), "--key", str(built["pub"]),
                   "--output", "json"], cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert res.json()["installed"] == {"db": "installed", "java-db": "installed"}
    trivy = built["signed_ws"] / "stella-out/profiles"
    for rel, src in {"db/trivy.db": trivy / "trivy-db/trivy.db", "db/metadata.json": trivy / "trivy-db/metadata.json",
                     "java-db/trivy-java.db": trivy / "trivy-java-db/trivy-java.db",
                     "java-db/metadata.json": trivy / "trivy-java-db/metadata.json"}.items():
        assert (cache / rel).read_bytes() == src.read_bytes(), rel
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")) == [
        "db", "db/metadata.json", "db/trivy.db", "java-db", "java-db/metadata.json", "java-db/trivy-java.db"]
    meta = json.loads((cache / "db/metadata.json").read_bytes())
    assert meta["Version"] == 2 and meta["DownloadedAt"] != "0001-01-01T00:00:00Z"
    stat = (cache / "db/trivy.db").stat()
    again = run_cli(["kit", "import", str(built["signed"]), "--trivy-cache", str(cache), "--output", "json"], cwd=tmp_path)
    assert again.code == 0 and again.json()["installed"] == {"db": "unchanged", "java-db": "unchanged"}
    assert (cache / "db/trivy.db").stat().st_ino == stat.st_ino  # untouched


def test_import_refuses_a_downgrade_unless_allowed(built, tmp_path):
    tree = unpack(built["out"] / ARCHIVE, tmp_path / "tree")  # the same kit with a DB updated a month later
    meta = (tree / "trivy/db/metadata.json").read_bytes().replace(b'"UpdatedAt":"2025-01-01', b'"UpdatedAt":"2025-02-01')
    (tree / "trivy/db/metadata.json").write_bytes(meta)
    _db_archive(tree / "trivy/db/db.tar.gz", {"trivy.db": built["ws"] / "stella-out/profiles/trivy-db/trivy.db",
                                              "metadata.json": meta})
    newer = reseal(tree, tmp_path / "newer")
    cache = tmp_path / "cache"
    assert import_kit(newer, cache)["installed"] == {"db": "installed", "java-db": "installed"}
    res = run_cli(["kit", "import", str(built["out"]), "--trivy-cache", str(cache), "--output", "json"], cwd=tmp_path)
    assert res.code == 3 and res.json()["errors"][0]["reason"] == "kit-downgrade"
    assert res.json()["errors"][0]["file"] == str(cache / "db" / "metadata.json")
    assert (cache / "db/metadata.json").read_bytes() == meta  # nothing installed, java-db included
    res = run_cli(["kit", "import", str(built["out"]), "--trivy-cache", str(cache), "--allow-downgrade",
                   "--output", "json"], cwd=tmp_path)
    assert res.code == 0 and res.json()["installed"] == {"db": "installed", "java-db": "unchanged"}
    assert (cache / "db/metadata.json").read_bytes() == (built["out"].parent / "trivy-db/metadata.json").read_bytes()


def test_import_refuses_a_foreign_destination_unless_forced(built, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    res = run_cli(["kit", "import", str(built["out"]), "--trivy-cache", str(home), "--output", "json"], cwd=tmp_path)
    assert res.code == 2 and res.json()["errors"][0]["reason"] == "destination-not-trivy-cache"
    assert sorted(os.listdir(home)) == ["notes.txt"]
    res = run_cli(["kit", "import", str(built["out"]), "--trivy-cache", str(home), "--force"], cwd=tmp_path)
    assert res.code == 0 and sorted(os.listdir(home)) == ["db", "java-db", "notes.txt"]
    fanal = tmp_path / "trivy-cache"  # a real Trivy cache (scan cache beside the DBs) is not foreign
    (fanal / "fanal").mkdir(parents=True)
    assert import_kit(built["out"], fanal)["installed"]["db"] == "installed"


def test_failed_import_leaves_the_cache_untouched(built, tmp_path):
    cache = tmp_path / "cache"
    import_kit(built["out"], cache)
    before = {p.relative_to(cache): p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    tree = unpack(built["out"] / ARCHIVE, tmp_path / "tree")
    flip(tree / "trivy/java-db/javadb.tar.gz")  # db/ would install fine; java-db/ does not verify
    exc = refused(import_kit, tree, cache, allow_downgrade=True)
    assert (exc.reason, exc.file) == ("kit-checksum-mismatch", "trivy/java-db/javadb.tar.gz")
    assert {p.relative_to(cache): p.read_bytes() for p in cache.rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(cache)) == ["db", "java-db"]


def test_import_kit_sh_under_dash(built, tmp_path):
    tree = unpack(built["out"] / ARCHIVE, tmp_path / "tree")
    cache = tmp_path / "cache"
    res = dash(tree / "import-kit.sh", cache)
    assert res.returncode == 0, res.stderr
    assert (cache / "db/trivy.db").read_bytes() == (built["ws"] / "stella-out/profiles/trivy-db/trivy.db").read_bytes()
    assert (cache / "java-db/metadata.json").is_file()
    res = dash(tree / "import-kit.sh", cache)
    assert res.returncode == 0 and "db: already installed" in res.stdout
    meta = cache / "db/metadata.json"
    meta.write_text(meta.read_text().replace("2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z"))
    res = dash(tree / "import-kit.sh", cache)
    assert res.returncode == 1 and "older than the installed one" in res.stderr
    assert dash(tree / "import-kit.sh", "-d", cache).returncode == 0
    flip(tree / "trivy/db/db.tar.gz")
    res = dash(tree / "import-kit.sh", tmp_path / "other")
    assert res.returncode == 1 and not (tmp_path / "other" / "db").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    assert dash(unpack(built["out"] / ARCHIVE, tmp_path / "t2") / "import-kit.sh", foreign).returncode == 1


# -- determinism and the rule's errors --------------------------------------------------------------------

def test_kit_bytes_survive_time_zone_umask_jobs_and_path(built, tmp_path):
    """A cold build elsewhere, under another time zone, locale, umask, hash seed and -j1, gives the
    kit the module built (and test_kit_outputs_match_golden holds that one to the golden digests)."""
    ws = make_workspace(tmp_path / "some" / "deeper" / "place")
    env = {"TZ": "Pacific/Kiritimati", "LC_ALL": "POSIX", "LANG": "de_DE.UTF-8", "PYTHONHASHSEED": "4242"}
    old = os.umask(0o077)
    try:
        run_cli(["-q", "-j1", "build", "//profiles:offline-kit"], cwd=ws, cache=tmp_path / "cold", env=env, check=True)
    finally:
        os.umask(old)
    assert output_digests(ws, "profiles", "offline-kit") == output_digests(built["ws"], "profiles", "offline-kit")
    res = run_cli(["-q", "--output", "json", "build", "--check", "//profiles:offline-kit"], cwd=ws,
                  cache=tmp_path / "cold", check=True)
    assert res.json()["check"]["differences"] == []


def _kit_workspace(tmp_path: Path, target: str) -> Path:
    ws = make_workspace(tmp_path / "ws")
    ef = ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text() + target)
    return ws


@pytest.mark.parametrize("target, reason", [
    ('\n[targets.k]\nrule = "offline_kit"\ndeps = [":json-raw"]\n', "kit-dep-unsupported"),
    ('\n[targets.t2]\nrule = "trivy_db"\ndeps = [":osv-sample"]\n'
     '\n[targets.k]\nrule = "offline_kit"\ndeps = [":trivy-db", ":t2"]\n', "kit-dep-duplicate"),
    ('\n[targets.k]\nrule = "offline_kit"\ndeps = []\n', "kit-dep-unsupported"),
    ('\n[targets.k]\nrule = "offline_kit"\ndeps = [":trivy-db"]\nsplit_size = "10"\n', "exportfile-invalid"),
])
def test_rule_usage_errors(target, reason, tmp_path):
    ws = _kit_workspace(tmp_path, target)
    res = run_cli(["build", "--output", "json", "//profiles:k"], cwd=ws, cache=tmp_path / "c")
    assert res.code == 2, res.stdout + res.stderr
    assert res.json()["errors"][0]["reason"] == reason


def test_kit_needs_source_date_epoch(tmp_path):
    ws = _kit_workspace(tmp_path, "")
    (ws / "kit").mkdir()
    (ws / "kit" / "Exportfile").write_text('[targets.k]\nrule = "offline_kit"\ndeps = ["//profiles:mirror-full"]\n')
    res = run_cli(["build", "--output", "json", "//kit:k"], cwd=ws, cache=tmp_path / "c")
    assert res.code == 2 and res.json()["errors"][0]["reason"] == "kit-epoch-missing"


def test_kit_refuses_exports_signed_with_another_key(built, tmp_path):
    """One trust root per kit: trivy-db signed with one key and the kit with another fail the build."""
    ws = _kit_workspace(tmp_path, "")
    make_keys(ws / "keys")
    other_key, _ = make_keys(tmp_path / "other")
    ef = ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text().replace('update_interval = "24h"\n', 'update_interval = "24h"\n'
                                         'sign = { key = "keys/cosign.key" }\n', 1)
                  + f'\n[targets.k]\nrule = "offline_kit"\n{KIT_DEPS}sign = {{ key = "{other_key}" }}\n')
    res = run_cli(["build", "--output", "json", "//profiles:k"], cwd=ws, cache=built["root"] / "c",
                  env={"COSIGN_PASSWORD": PASSWORD})
    assert res.code == 1 and res.json()["errors"][0]["reason"] == "kit-mixed-keys", res.stdout


def test_keyless_kits_ship_the_sigstore_trusted_root(tmp_path):
    from stella_build.engine.analysis import analyze
    from stella_build.engine.errors import TrustMaterialMissing
    from stella_build.engine.rule_api import BuildOptions
    from stella_build.engine.workspace import Workspace

    ws = _kit_workspace(tmp_path, "")
    graph = analyze(Workspace.find(explicit=ws), ["//profiles:offline-kit"], BuildOptions(sign="keyless"))
    spec = next(a for a in graph.actions.values() if a.mnemonic == "KitAssemble")
    root = spec.inputs["trust/sigstore-trusted-root.json"]
    assert root.path.name == "trusted_root.json" and json.loads(root.path.read_bytes())["mediaType"].startswith(
        "application/vnd.dev.sigstore.trustedroot")
    assert spec.params["keyless"] is True
    ef = ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text() + '\n[targets.k]\nrule = "offline_kit"\n' + KIT_DEPS
                  + 'sigstore_trusted_root = "no/such/trusted_root.json"\nsign = { keyless = true }\n')
    with pytest.raises(TrustMaterialMissing) as info:
        analyze(Workspace.find(explicit=ws), ["//profiles:k"], BuildOptions())
    assert info.value.reason == "kit-trusted-root-missing"


# -- the format library -------------------------------------------------------------------------------

def test_format_lists_are_strict():
    text = K.checksums_txt({"b": "1" * 64, "a/c": "2" * 64})
    assert K.parse_checksums(text) == (text.split(b"\n")[0][5:].decode(), {"a/c": "2" * 64, "b": "1" * 64})
    body = text.split(b"\n", 1)[1]
    for bad in (text.replace(b"root ", b"rot "), text[:-1], b"root " + b"0" * 64 + b"\n" + body,
                K.checksums_txt({"a": "1" * 64}).replace(b"  a", b"  ../a")):
        with pytest.raises(K.KitFormatError):
            K.parse_checksums(bad)
    swapped = b"".join(reversed(body.splitlines(keepends=True)))
    with pytest.raises(K.KitFormatError, match="out of order"):
        K.parse_checksums(b"root " + hashlib.sha256(swapped).hexdigest().encode() + b"\n" + swapped)
    parts = K.parts_list([(K.part_name(ARCHIVE, 0), "a" * 64), (K.part_name(ARCHIVE, 1), "b" * 64)])
    assert len(K.parse_parts_list(parts, ARCHIVE, "x")) == 2
    with pytest.raises(K.KitFormatError, match="out of order"):
        K.parse_parts_list(b"".join(reversed(parts.splitlines(keepends=True))), ARCHIVE, "x")
    assert [K.parse_size(s) for s in ("700M", "4G", "64K", "65536", "1GiB")] == [700 << 20, 4 << 30, 64 << 10, 65536, 1 << 30]
    for path in ("", "/a", "a/../b", "a//b", "a/./b", "a\\b", "a b", "a/", "é"):
        assert not K.is_safe_path(path), path
    assert K.is_safe_path("mirror/mirror/data/raw/advisories/crates.io/0f3a.jsonl.zst")


def test_db_archives_are_never_stored_as_hard_links(tmp_path):
    """A mirror that ships the same db.tar.gz (mirror_full with a trivy_db dep) sorts first; the kit's
    own trivy/db/db.tar.gz must still be a regular member, and later copies link to the first."""
    same = K.KitFile.of_bytes(b"gzip bytes of a DB")
    files = {"mirror/mirror/trivy/trivy-db/db.tar.gz": same, "trivy/db/db.tar.gz": same,
             f"trivy/db/oci/blobs/sha256/{same.sha256}": same}
    K.write_kit_archive(tmp_path / ARCHIVE, TOP, files, EPOCH)
    with tarfile.open(tmp_path / ARCHIVE) as tar:
        kinds = {m.name[len(TOP) + 1:]: (m.type, m.linkname) for m in tar}
    assert kinds["trivy/db/db.tar.gz"] == (tarfile.REGTYPE, "")
    assert kinds[f"trivy/db/oci/blobs/sha256/{same.sha256}"] == (
        tarfile.LNKTYPE, f"{TOP}/mirror/mirror/trivy/trivy-db/db.tar.gz")


def test_install_swaps_the_db_directory_in_one_step(tmp_path, monkeypatch):
    from stella_build.delivery import kit as delivery

    for exchange in (True, False):  # renameat2(RENAME_EXCHANGE), and the two-rename fallback
        if not exchange:
            monkeypatch.setattr(delivery, "_exchange", lambda a, b: False)
        dest, staged = tmp_path / f"db-{exchange}", tmp_path / f"staged-{exchange}"
        dest.mkdir()
        (dest / "trivy.db").write_bytes(b"old")
        staged.mkdir()
        (staged / "trivy.db").write_bytes(b"new")
        delivery._install(staged, dest)
        assert (dest / "trivy.db").read_bytes() == b"new" and not staged.exists()
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no old copy left
