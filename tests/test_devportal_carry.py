"""The developer portal carried by mirror:full and the Offline Kit (issue 19, last item): a
devportal_offline dep whose outputs travel by reference (the DevPortalBundle provider), never
rebuilt, so the carried bytes are the standalone portal's bytes; `mirror verify`, `kit verify` and
verify-kit.sh (under dash) check them; a kit without a portal still verifies.

Built once per module through the real CLI: the profiles' mirror-full and offline-kit (which carry
//profiles:devportal-offline), the portal on its own, and a kit without a portal; then the same
signed with the public test key (tests/signed_bundle.py).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from stella_build.engine.encode import canonical_json
from stella_build.rules.formats import devportal as D
from stella_build.rules.formats import kit as K
from tests.conftest import make_workspace, run_cli
from tests.signed_bundle import PASSWORD, write_public_test_keys

TOP = "stella-offline-kit-20250101"
ARCHIVE = TOP + ".tar.gz"
EPOCH = 1735689600
NO_PORTAL = '\n[targets.kit-no-portal]\nrule = "offline_kit"\ndeps = [":trivy-db", ":trivy-java-db"]\n'
DASH = shutil.which("dash")
PLAIN_PATH = "/usr/bin:/bin"  # coreutils and tar, no cosign
TARGETS = ["//profiles:offline-kit", "//profiles:mirror-full", "//profiles:devportal-offline",
           "//profiles:kit-no-portal"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("carry")
    ws = make_workspace(root / "ws")
    ef = ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text() + NO_PORTAL)
    run_cli(["-q", "build", *TARGETS], cwd=ws, cache=root / "c", check=True)
    key, pub = write_public_test_keys(root / "keys")
    signed = make_workspace(root / "signed")
    run_cli(["-q", "build", *TARGETS[:3]], cwd=signed, cache=root / "c", check=True,
            env={"STELLA_SIGNING_KEY": str(key), "COSIGN_PASSWORD": PASSWORD})
    out, sout = ws / "stella-out/profiles", signed / "stella-out/profiles"
    return {"root": root, "portal": out / "devportal-offline", "mirror": out / "mirror-full",
            "kit": out / "offline-kit", "bare": out / "kit-no-portal", "spub": pub,
            "sportal": sout / "devportal-offline", "smirror": sout / "mirror-full", "skit": sout / "offline-kit"}


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def unpack(archive: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
    return dest / TOP


def flip(path: Path) -> None:
    data = path.read_bytes()
    i = len(data) // 2
    path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])


def cli_json(args: list[str], cwd: Path) -> tuple[int, dict]:
    result = run_cli([*args, "--output", "json"], cwd=cwd)
    return result.code, json.loads(result.stdout)


def dash(script: Path, *args, tmp: Path | None = None) -> subprocess.CompletedProcess:
    if DASH is None:
        pytest.fail("dash is not installed: verify-kit.sh must be shown to run under a POSIX shell")
    return subprocess.run([DASH, str(script), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={"PATH": PLAIN_PATH, "HOME": "/nonexistent",
                               "TMPDIR": str(tmp or script.parent.parent)})


# -- carried, byte for byte --------------------------------------------------------------------------

def test_the_mirror_carries_the_portals_files_byte_for_byte(built):
    standalone = tree_bytes(built["portal"])
    carried = tree_bytes(built["mirror"] / "mirror" / "devportal")
    assert set(carried) == set(standalone)
    assert carried == standalone
    contents = {c["path"]: c for c in json.loads((built["mirror"] / "mirror/export.json").read_bytes())["contents"]}
    for rel, data in standalone.items():
        entry = contents[f"devportal/{rel}"]
        assert (entry["digest"], entry["bytes"]) == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    assert contents["devportal/portal/index.html"]["contentType"] == "text/html"
    assert contents[f"devportal/{D.ARCHIVE}"]["contentType"] == "application/gzip"


def test_the_kit_carries_the_portals_files_byte_for_byte(built, tmp_path):
    standalone = tree_bytes(built["portal"])
    kit = unpack(built["kit"] / ARCHIVE, tmp_path / "u")
    assert tree_bytes(kit / "devportal") == standalone
    manifest = json.loads((kit / K.MANIFEST).read_bytes())
    files = {e["path"]: (e["sha256"], e["size"]) for e in manifest["files"]}
    _, listed = K.parse_checksums((kit / K.CHECKSUMS).read_bytes())
    for rel, data in standalone.items():
        digest = hashlib.sha256(data).hexdigest()
        assert files[f"devportal/{rel}"] == (digest, len(data))
        assert listed[f"devportal/{rel}"] == digest
    export = next(e for e in manifest["exports"] if e["kind"] == "devportal")
    portal_manifest = json.loads(standalone[D.MANIFEST])
    assert export == {"kind": "devportal", "target": "//profiles:devportal-offline", "path": "devportal",
                      "exportId": None, "signed": False, "bundleId": portal_manifest["bundleId"],
                      "artifact": {"path": f"devportal/{D.ARCHIVE}",
                                   "sha256": hashlib.sha256(standalone[D.ARCHIVE]).hexdigest()}}
    # the mirror inside the kit carries the same portal: stored once, as hard links to devportal/
    assert tree_bytes(kit / "mirror/mirror/devportal") == standalone
    assert "devportal/portal/index.html" in (kit / K.README).read_text()


# -- verified -----------------------------------------------------------------------------------------

def test_mirror_verify_and_kit_verify_report_the_portal(built, tmp_path):
    bundle_id = json.loads((built["portal"] / D.MANIFEST).read_bytes())["bundleId"]
    code, report = cli_json(["mirror", "verify", str(built["mirror"])], built["root"])
    assert code == 0, report
    files = len(json.loads((built["portal"] / D.MANIFEST).read_bytes())["entries"]) + 2  # + checksums, manifest
    assert report["devportal"] == {"bundleId": bundle_id, "files": files, "signed": False, "checked": False}
    code, report = cli_json(["kit", "verify", str(built["kit"])], built["root"])
    assert code == 0, report
    assert report["devportal"]["bundleId"] == bundle_id
    assert report["devportal"]["signed"] is False
    assert dash(built["kit"] / K.VERIFY_SCRIPT, built["kit"]).returncode == 0
    # the carried portal's own checker, as shipped in the mirror (a build's output directory)
    shell = dash(built["mirror"] / "mirror/devportal" / D.VERIFY_SCRIPT, tmp=tmp_path)
    assert shell.returncode == 0, shell.stderr
    assert "OK: the bundle is intact" in shell.stdout


def test_a_flipped_byte_in_the_mirrors_portal_is_caught(built, tmp_path):
    copy = shutil.copytree(built["mirror"], tmp_path / "m", symlinks=True)
    flip(copy / "mirror/devportal/portal/index.html")
    code, report = cli_json(["mirror", "verify", str(copy)], tmp_path)
    assert code == 3
    assert report["errors"][0]["reason"] == "digest-mismatch"
    assert report["errors"][0]["file"].endswith("mirror/devportal/portal/index.html")


def test_a_resealed_mirror_is_still_caught_by_the_portals_own_checksums(built, tmp_path):
    """export.json updated to the changed file (a consistent forgery of the mirror's list): the
    portal's checksums.txt still names the file."""
    from stella_build.rules.formats.bundle import rerun_hash

    tree = shutil.copytree(built["mirror"] / "mirror", tmp_path / "mirror")
    page = tree / "devportal/portal/index.html"
    flip(page)
    export = json.loads((tree / "export.json").read_bytes())
    for c in export["contents"]:
        if c["path"] == "devportal/portal/index.html":
            c["digest"] = "sha256:" + hashlib.sha256(page.read_bytes()).hexdigest()
    export["rerunHash"] = rerun_hash(export["contents"])
    (tree / "export.json").write_bytes(canonical_json.dumps(export))
    (tree / "provenance.json").unlink()  # its subject pins the old export.json
    code, report = cli_json(["mirror", "verify", str(tree)], tmp_path)
    assert code == 3, report
    assert report["errors"][0]["reason"] == "digest-mismatch"
    assert report["errors"][0]["file"].endswith("devportal/portal/index.html")
    assert "devportal" in report["errors"][0]["message"]


def test_a_flipped_byte_in_the_kits_portal_is_caught_by_kit_verify_and_verify_kit_sh(built, tmp_path):
    kit = unpack(built["kit"] / ARCHIVE, tmp_path / "u")
    assert dash(kit / K.VERIFY_SCRIPT, kit).returncode == 0
    flip(kit / "devportal/portal/index.html")
    code, report = cli_json(["kit", "verify", str(kit)], tmp_path)
    assert code == 3
    assert (report["errors"][0]["reason"], report["errors"][0]["file"]) == \
        ("kit-checksum-mismatch", "devportal/portal/index.html")
    shell = dash(kit / K.VERIFY_SCRIPT, kit)
    assert shell.returncode == 1
    assert "devportal/portal/index.html" in shell.stderr


def test_a_resealed_kit_is_still_caught_by_the_portals_own_checksums(built, tmp_path):
    """checksums.txt and offline-manifest.json rebuilt over the changed file: the portal's own
    checksums.txt, checked by `kit verify`, still names it."""
    kit = unpack(built["kit"] / ARCHIVE, tmp_path / "u")
    flip(kit / "devportal/portal/index.html")
    manifest = json.loads((kit / K.MANIFEST).read_bytes())
    rels = sorted(p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file())
    files = {rel: K.KitFile.of_file(kit / rel) for rel in rels if rel not in (K.MANIFEST, K.CHECKSUMS)}
    manifest["files"] = K.file_entries({rel: (kf.sha256, kf.size) for rel, kf in files.items()})
    manifest["kitId"] = K.kit_id(manifest["files"])
    files[K.MANIFEST] = K.KitFile.of_bytes(canonical_json.dumps(manifest))
    files[K.CHECKSUMS] = K.KitFile.of_bytes(K.checksums_txt({rel: kf.sha256 for rel, kf in files.items()}))
    dest = tmp_path / "resealed"
    dest.mkdir()
    digest, _ = K.write_kit_archive(dest / ARCHIVE, TOP, files, EPOCH)
    (dest / (ARCHIVE + ".sha256")).write_text(f"{digest}  {ARCHIVE}\n")
    code, report = cli_json(["kit", "verify", str(dest)], tmp_path)
    assert code == 3, report
    assert (report["errors"][0]["reason"], report["errors"][0]["file"]) == \
        ("digest-mismatch", "devportal/portal/index.html")


def test_a_kit_without_the_portal_still_verifies(built, tmp_path):
    code, report = cli_json(["kit", "verify", str(built["bare"])], tmp_path)
    assert code == 0, report
    assert "devportal" not in report
    assert [e["kind"] for e in report["exports"]] == ["trivy-db", "trivy-java-db"]
    kit = unpack(built["bare"] / ARCHIVE, tmp_path / "u")
    assert not (kit / "devportal").exists()
    assert "devportal" not in (kit / K.README).read_text()
    assert dash(kit / K.VERIFY_SCRIPT, kit).returncode == 0


# -- signed ---------------------------------------------------------------------------------------------

def test_signed_carriers_check_the_portals_signature_with_the_key(built, tmp_path):
    pub = str(built["spub"])
    assert tree_bytes(built["smirror"] / "mirror/devportal") == tree_bytes(built["sportal"])
    code, report = cli_json(["kit", "verify", str(built["skit"]), "--key", pub], tmp_path)
    assert code == 0, report
    assert report["devportal"]["signed"] is True and report["devportal"]["checked"] is True
    code, report = cli_json(["mirror", "verify", str(built["smirror"]), "--key", pub], tmp_path)
    assert code == 0, report
    assert report["devportal"]["checked"] is True
    # a portal whose manifest changed after signing, in an unpacked kit: caught by its signature
    kit = unpack(built["skit"] / ARCHIVE, tmp_path / "u")
    manifest = kit / "devportal" / D.MANIFEST
    manifest.write_bytes(manifest.read_bytes().replace(b'"generatedAt":"', b'"generatedAt":"x', 1))
    code, report = cli_json(["kit", "verify", str(kit), "--key", pub], tmp_path)
    assert code == 3
    assert report["errors"][0]["file"] == "devportal/manifest.json"


# -- analysis -------------------------------------------------------------------------------------------

def test_one_portal_per_carrier_and_never_a_kit_of_only_a_portal(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    ef = ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text() + (
        '\n[targets.portal-2]\nrule = "devportal_offline"\nopenapi = "devportal/docs/openapi.json"\n'
        'exportfile_schema = "devportal/exportfile.schema.json"\ndocs = ["devportal/docs/*.md"]\n'
        'changelog = "devportal/CHANGELOG.md"\n'
        '\n[targets.mirror-2]\nrule = "mirror_full"\ndeps = [":osv-sample", ":devportal-offline", ":portal-2"]\n'
        '\n[targets.kit-2]\nrule = "offline_kit"\ndeps = [":devportal-offline"]\n'))
    for target, reason in (("mirror-2", "devportal-dep-duplicate"), ("kit-2", "kit-dep-unsupported")):
        # refused at analysis: exit 2 before any action runs
        result = run_cli(["build", f"//profiles:{target}", "--output", "json"], cwd=ws, cache=tmp_path / "c")
        report = json.loads(result.stdout)
        assert result.code == 2, report
        assert report["errors"][0]["reason"] == reason
        assert report["errors"][0]["field"] == "deps"
        assert not (ws / "stella-out" / "profiles" / target).exists()
