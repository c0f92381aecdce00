"""devportal:offline: `//profiles:devportal-offline` (rules/devportal.py and its libraries),
`verify-offline.sh` under dash, `stella-build devportal verify` (stella_build/delivery/devportal.py),
the Python SDK (wheel and sdist: pip into a fresh venv, against a running service) and the curl
functions. The browser side is tests/interop/test_devportal_chromium.py.

Bundles are built once per module through the real CLI: the default target unsigned, and signed
with the public test key of tests/signed_bundle.py. "Resealed" bundles (a changed file with
consistent checksums and manifest, as an attacker or a bug would make) are made with the format
library itself.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from stella_build.rules.formats import devportal as D
from stella_build.rules.formats.devportal_policy import check_references
from tests.conftest import REPO, make_workspace, output_digests, run_cli
from tests.signed_bundle import PASSWORD, make_keys, write_public_test_keys

LABEL = "//profiles:devportal-offline"
GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text()).get(LABEL)
SIGNED_GOLDEN = json.loads((REPO / "golden" / "signed.json").read_text()).get(LABEL)
DASH = shutil.which("dash")
PLAIN_PATH = "/usr/bin:/bin"
EPOCH = 1735689600
WHEEL = "stella_export_client-0.1.0-py3-none-any.whl"
SDIST = "stella_export_client-0.1.0.tar.gz"
STALE = ("differs from golden: if docs/*.md, docs/openapi.json, exportfile.schema.json or CHANGELOG.md changed, "
         "refresh with python3 tools/golden.py --update")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("devportal")
    ws = make_workspace(root / "ws")
    run_cli(["-q", "build", LABEL], cwd=ws, cache=root / "c", check=True)
    key, pub = write_public_test_keys(root / "keys")
    signed = make_workspace(root / "signed")
    run_cli(["-q", "build", LABEL], cwd=signed, cache=root / "c", check=True,
            env={"STELLA_SIGNING_KEY": str(key), "COSIGN_PASSWORD": PASSWORD})
    return {"root": root, "ws": ws, "out": ws / "stella-out/profiles/devportal-offline",
            "signed": signed / "stella-out/profiles/devportal-offline", "signed_ws": signed, "key": key, "pub": pub}


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def unpack(archive: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
    return dest


def dash(script: Path, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    if DASH is None:
        pytest.fail("dash is not installed: verify-offline.sh must be shown to run under a POSIX shell")
    return subprocess.run([DASH, str(script), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PATH": PLAIN_PATH, "HOME": "/nonexistent", "TMPDIR": tempfile.gettempdir()})


def verify(*args, cwd: Path) -> tuple[int, dict]:
    """`stella-build devportal verify ARGS --output json` in this process (the CLI's own main; a
    subprocess per case would cost a second each): (exit code, its JSON)."""
    from stella_build.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["devportal", "verify", *map(str, args), "--output", "json"])
    return code, json.loads(out.getvalue()) if out.getvalue().strip() else {"stderr": err.getvalue()}


def reseal(tree: Path) -> None:
    """Make checksums.txt and manifest.json consistent with the files of an unpacked bundle again
    (what someone tampering with it would do); the signature, if any, is left as it was."""
    files = {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    doc = json.loads(files[D.MANIFEST])
    listed = D.entries({p: (hashlib.sha256(b).hexdigest(), len(b)) for p, b in files.items()})
    manifest = json.dumps(D.manifest(listed=listed, generated_at=doc["generatedAt"], sdk_names=doc["sources"]["sdkNames"],
                                     metadata=doc["metadata"]), sort_keys=True, separators=(",", ":")).encode()
    (tree / D.MANIFEST).write_bytes(manifest)
    files[D.MANIFEST] = manifest
    (tree / D.CHECKSUMS).write_bytes(D.checksums_txt({p: hashlib.sha256(b).hexdigest() for p, b in files.items()
                                                      if p != D.CHECKSUMS}))


def flip(path: Path) -> bytes:
    data = path.read_bytes()
    i = len(data) // 2
    path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])
    return data


# -- the target ---------------------------------------------------------------------------------------

def test_outputs_match_golden(built):
    assert GOLDEN is not None and SIGNED_GOLDEN is not None, "run tools/golden.py --update"
    # The bundle renders the repository's docs/*.md, docs/openapi.json, exportfile.schema.json and
    # CHANGELOG.md: after editing one of them, `python3 tools/golden.py --update` (only these change).
    assert output_digests(built["ws"], "profiles", "devportal-offline") == GOLDEN, STALE
    assert output_digests(built["signed_ws"], "profiles", "devportal-offline") == SIGNED_GOLDEN, STALE
    assert {D.DSSE, D.PUBLIC_KEY} <= set(SIGNED_GOLDEN) and not {D.DSSE, D.PUBLIC_KEY} & set(GOLDEN)


def test_layout_manifest_and_checksums(built):
    out = built["out"]
    inside = members(out / D.ARCHIVE)
    tree = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert set(tree) - set(inside) == {D.ARCHIVE, D.ARCHIVE + ".sha256", D.PROVENANCE}
    assert all(tree[p] == inside[p] for p in inside)  # the tree is the archive unpacked
    with tarfile.open(out / D.ARCHIVE, "r:gz") as tar:
        infos = tar.getmembers()
    assert [m.name for m in infos] == sorted(m.name for m in infos)  # sorted, no top directory, no dirs
    assert all(m.isfile() and m.mtime == EPOCH and m.uid == m.gid == 0 and m.uname == "" for m in infos)
    assert {m.name: m.mode for m in infos}[D.VERIFY_SCRIPT] == 0o755
    assert {m.mode for m in infos if m.name != D.VERIFY_SCRIPT} == {0o644}
    for top in ("portal/index.html", "portal/api/index.html", "portal/api/schemas.html", "portal/exportfile.html",
                "portal/search.html", "portal/assets/search-index.js", "specs/openapi.json",
                "specs/exportfile.schema.json", "specs/export.schema.json", "specs/provenance.schema.json",
                "specs/offline-manifest.schema.json", f"sdks/python/{WHEEL}", f"sdks/python/{SDIST}",
                "sdks/shell/stella-export.sh", "changelog/CHANGELOG.md", "changelog/CHANGELOG.html",
                D.INSTRUCTIONS, D.VERIFY_SCRIPT):
        assert top in inside, top
    assert inside["specs/openapi.json"] == (REPO / "docs" / "openapi.json").read_bytes()
    assert inside["changelog/CHANGELOG.md"] == (REPO / "CHANGELOG.md").read_bytes()
    root, listed = D.parse_checksums(inside[D.CHECKSUMS])
    assert inside[D.CHECKSUMS].startswith(f"root {root}\n".encode())
    assert set(listed) == set(inside) - {D.CHECKSUMS}
    assert all(hashlib.sha256(inside[p]).hexdigest() == d for p, d in listed.items())
    manifest = D.check_manifest(json.loads(inside[D.MANIFEST]))
    assert manifest["version"] == "devportal-offline/v1"
    assert manifest["generatedAt"] == "2025-01-01T00:00:00Z"
    assert manifest["sources"] == {"portalIncluded": True, "specsIncluded": True, "sdkNames": ["python", "shell"],
                                   "changelogIncluded": True}
    entries = manifest["entries"]
    assert [e["path"] for e in entries] == sorted(set(inside) - D.UNLISTED)
    assert manifest["totals"] == {"entryCount": len(entries), "totalSizeBytes": sum(len(inside[e["path"]]) for e in entries)}
    by_path = {e["path"]: e for e in entries}
    assert by_path["portal/index.html"]["category"] == "portal"
    assert by_path[f"sdks/python/{WHEEL}"]["contentType"] == "application/zip"
    assert by_path[D.VERIFY_SCRIPT]["category"] == "bundle"
    assert all(e["sha256"] == hashlib.sha256(inside[e["path"]]).hexdigest() for e in entries)
    # bundleId is a function of the content only: recompute it
    assert manifest["bundleId"] == D.bundle_id(entries)
    assert (out / (D.ARCHIVE + ".sha256")).read_text() == \
        f"{hashlib.sha256((out / D.ARCHIVE).read_bytes()).hexdigest()}  {D.ARCHIVE}\n"
    prov = json.loads((out / D.PROVENANCE).read_bytes())
    assert {s["name"]: s["digest"]["sha256"] for s in prov["subject"]} == {
        D.ARCHIVE: hashlib.sha256((out / D.ARCHIVE).read_bytes()).hexdigest(),
        D.MANIFEST: hashlib.sha256(inside[D.MANIFEST]).hexdigest()}


def test_api_reference_covers_every_path_parameter_schema_and_code(built):
    out = built["out"]
    api = json.loads((out / "specs/openapi.json").read_bytes())
    index = (out / "portal/api/index.html").read_text()
    pages = {p.name: p.read_text() for p in (out / "portal/api").glob("*.html")}
    for path, item in api["paths"].items():
        assert f">{path}</a>" in index, path
        for method, op in item.items():
            page = pages[f"{op['operationId']}.html"]
            assert f'<code class="path">{path}</code>' in page and f">{method.upper()}<" in page
            for p in op.get("parameters", []):
                assert f'id="param-{p["in"]}-{p["name"]}"' in page, (path, p["name"])
            for code in op["responses"]:
                assert f'id="response-{code}"' in page, (path, code)
                assert f'id="status-{code}"' in index
    schemas = pages["schemas.html"]
    for name, schema in api["components"]["schemas"].items():
        assert f'id="schema-{name}"' in schemas, name
        for prop in schema.get("properties", {}):
            assert f"<code>{prop}</code>" in schemas.split(f'id="schema-{name}"', 1)[1], (name, prop)


def test_exportfile_reference_covers_every_rule_and_key(built):
    out = built["out"]
    schema = json.loads((out / "specs/exportfile.schema.json").read_bytes())
    page = (out / "portal/exportfile.html").read_text()
    rules = 0
    for name, model in schema["$defs"].items():
        rule = model.get("properties", {}).get("rule", {}).get("const")
        if rule is None:
            assert f'id="type-{name}"' in page
            continue
        rules += 1
        section = page.split(f'id="rule-{rule}"', 1)[1].split("<section", 1)[0]
        for key in model["properties"]:
            assert f'id="{rule}-{key}"' in section and f"<code>{key}</code>" in section, (rule, key)
    assert rules >= 12


def test_markdown_links_stay_inside_and_external_ones_become_text(built):
    out = built["out"]
    api_doc = (out / "portal/formats/api.html").read_text()
    # docs/api.md links operations/runbook.md, which is not shipped: text (here the target itself), no link
    assert '<span class="external" title="not part of this bundle">operations/runbook.md</span>' in api_doc
    assert 'href="operations/runbook.md"' not in api_doc
    assert 'id="errors"' in api_doc  # GitHub-style heading anchors
    index = (out / "portal/assets/search-index.js").read_text()
    assert index.startswith("/* generated") and "window.STELLA_SEARCH_INDEX = [" in index


def test_the_shipped_json_schemas_accept_real_outputs_and_reject_broken_ones(built, tmp_path):
    jsonschema = pytest.importorskip("jsonschema") if os.environ.get("CI") != "true" else __import__("jsonschema")
    specs = built["out"] / "specs"
    schemas = {n: json.loads((specs / n).read_bytes()) for n in ("export.schema.json", "provenance.schema.json",
                                                                 "devportal-manifest.schema.json",
                                                                 "offline-manifest.schema.json")}
    for s in schemas.values():
        jsonschema.Draft202012Validator.check_schema(s)
    ws = make_workspace(tmp_path / "ws")
    run_cli(["-q", "build", "//profiles:json-raw", "//profiles:json-policy"], cwd=ws, cache=built["root"] / "c",
            check=True)
    base = ws / "stella-out/profiles"
    docs = {
        "export.schema.json": [base / "json-raw/manifests/export.json", base / "json-policy/manifests/export.json"],
        "provenance.schema.json": [base / "json-raw/manifests/provenance.json", base / "json-policy/manifests/provenance.json",
                                   built["out"] / D.PROVENANCE],
        "devportal-manifest.schema.json": [built["out"] / D.MANIFEST, built["signed"] / D.MANIFEST],
    }
    for name, paths in docs.items():
        validator = jsonschema.Draft202012Validator(schemas[name])
        for path in paths:
            errors = [e.message for e in validator.iter_errors(json.loads(path.read_bytes()))]
            assert errors == [], (name, path, errors)
    # offline-manifest.json: the format library's own document (the kit target is tested elsewhere)
    from stella_build.rules.formats import kit as K
    kit_doc = K.offline_manifest(name="stella-offline-kit-20250101", generated_at="2025-01-01T00:00:00Z",
                                 files=[{"path": "README.md", "sha256": "0" * 64, "size": 1}], exports=[],
                                 trivy={}, relations=[], trust={}, signer=None)
    assert list(jsonschema.Draft202012Validator(schemas["offline-manifest.schema.json"]).iter_errors(kit_doc)) == []
    # ... and they are not vacuous
    export = json.loads((base / "json-raw/manifests/export.json").read_bytes())
    export["contents"][0]["digest"] = export["contents"][0]["digest"].removeprefix("sha256:")
    assert not jsonschema.Draft202012Validator(schemas["export.schema.json"]).is_valid(export)
    manifest = json.loads((built["out"] / D.MANIFEST).read_bytes())
    manifest["entries"][0]["category"] = "elsewhere"
    assert not jsonschema.Draft202012Validator(schemas["devportal-manifest.schema.json"]).is_valid(manifest)


# -- the SDK ------------------------------------------------------------------------------------------

def test_wheel_and_sdist_are_well_formed(built):
    wheel = built["out"] / "sdks/python" / WHEEL
    with zipfile.ZipFile(wheel) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names[-1] == "stella_export_client-0.1.0.dist-info/RECORD"
        assert {i.date_time for i in infos} == {(2025, 1, 1, 0, 0, 0)}
        assert {i.external_attr >> 16 for i in infos} == {0o100644}
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        record = zf.read(names[-1]).decode().splitlines()
        import base64
        for line in record[:-1]:
            path, digest, size = line.rsplit(",", 2)
            data = zf.read(path)
            assert int(size) == len(data)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert sorted(l.split(",")[0] for l in record) == sorted(names)
        assert "stella_export_client/py.typed" in names
        meta = zf.read("stella_export_client-0.1.0.dist-info/METADATA").decode()
        assert "Name: stella-export-client\nVersion: 0.1.0\n" in meta
        client = zf.read("stella_export_client/client.py").decode()
    api = json.loads((built["out"] / "specs/openapi.json").read_bytes())
    assert '"run": "/api/export/runs/{run_id}"' in client and "/api/export/runs/{run_id}" in api["paths"]
    with tarfile.open(built["out"] / "sdks/python" / SDIST, "r:gz") as tar:
        snames = tar.getnames()
    assert {"stella_export_client-0.1.0/PKG-INFO", "stella_export_client-0.1.0/pyproject.toml",
            "stella_export_client-0.1.0/stella_export_client/client.py"} <= set(snames)


@pytest.fixture(scope="module")
def sdk_venv(built, tmp_path_factory) -> Path:
    """A fresh venv (no pip of its own: ensurepip costs seconds) with only the SDK wheel, installed
    offline (--no-index) by pip pointed at it (`pip --python`)."""
    venv = tmp_path_factory.mktemp("sdk") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "--no-index",
                          "--disable-pip-version-check", str(built["out"] / "sdks/python" / WHEEL)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return venv


def test_the_wheel_installs_and_the_sdist_builds_the_same_package(built, sdk_venv, tmp_path):
    py = str(sdk_venv / "bin/python")
    res = subprocess.run([py, "-c", "import stella_export_client as s, importlib.resources as r; "
                                    "print(s.__version__, s.API_VERSION, r.files(s).joinpath('py.typed').is_file())"],
                         capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["0.1.0", "v1", "True"], res.stderr
    # the sdist carries the same package files and metadata, and a pyproject.toml whose [project]
    # says the same (building it needs setuptools with bdist_wheel, which this venv need not have)
    import tomllib

    top = "stella_export_client-0.1.0/"
    with tarfile.open(built["out"] / "sdks/python" / SDIST, "r:gz") as tar:
        sdist = {m.name[len(top):]: tar.extractfile(m).read() for m in tar}
    with zipfile.ZipFile(built["out"] / "sdks/python" / WHEEL) as zf:
        wheel = {n: zf.read(n) for n in zf.namelist()}
    assert {k: v for k, v in sdist.items() if k.startswith("stella_export_client/")} == \
        {k: v for k, v in wheel.items() if k.startswith("stella_export_client/")}
    assert sdist["PKG-INFO"] == wheel["stella_export_client-0.1.0.dist-info/METADATA"]
    project = tomllib.loads(sdist["pyproject.toml"].decode())["project"]
    assert (project["name"], project["version"]) == ("stella-export-client", "0.1.0")
    assert f"Requires-Python: {project['requires-python']}" in sdist["PKG-INFO"].decode()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from tests.service.harness import Server, config_text, make_service_workspace

    root = tmp_path_factory.mktemp("svc")
    make_service_workspace(root)
    srv = Server(root, config_text(service={"heartbeat_seconds": 0.5}))
    srv.start()
    yield srv
    srv.stop()


def test_the_installed_sdk_talks_to_a_running_service(built, sdk_venv, service, tmp_path):
    """submit → wait (SSE) → download with verification, from the pip-installed wheel; the files are
    the golden json-raw outputs; a wrong token is an ApiError with the service's code."""
    from tests.service.harness import token

    script = tmp_path / "use_sdk.py"
    script.write_text(
        "import json, sys\n"
        "from stella_export_client import ApiError, Client\n"
        "c = Client(sys.argv[1], token=sys.argv[2], timeout=30)\n"
        "labels = [p['label'] for p in c.profiles()]\n"
        "run = c.wait(c.submit('//profiles:json-raw')['runId'], timeout=120)\n"
        "files = c.download(run['runId'], sys.argv[3])\n"
        "try:\n"
        "    Client(sys.argv[1], token='wrong').profiles()\n"
        "    denied = None\n"
        "except ApiError as e:\n"
        "    denied = [e.status, e.code, e.reasons]\n"
        "print(json.dumps({'labels': labels, 'status': run['status'], 'files': len(files), 'denied': denied}))\n")
    dest = tmp_path / "dl"
    res = subprocess.run([str(sdk_venv / "bin/python"), str(script), service.url, token("acme-ci"), str(dest)],
                         capture_output=True, text=True, timeout=300, env={"PATH": PLAIN_PATH})
    assert res.returncode == 0, res.stderr + service.log.read_text()[-3000:]
    got = json.loads(res.stdout)
    assert LABEL in got["labels"] and "//profiles:json-raw" in got["labels"]
    assert got["status"] == "succeeded"
    assert got["denied"] == [401, "ERR_EXPORT_UNAUTHENTICATED", ["token-invalid"]]
    golden = json.loads((REPO / "golden" / "digests.json").read_text())["//profiles:json-raw"]
    downloaded = {p.relative_to(dest).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in dest.rglob("*") if p.is_file()}
    assert downloaded == golden and got["files"] == len(golden)


def test_the_curl_functions_talk_to_a_running_service(built, service):
    """sdks/shell/stella-export.sh sourced by dash: the profiles function lists the profiles."""
    from tests.service.harness import token

    script = built["out"] / "sdks/shell/stella-export.sh"
    assert subprocess.run([DASH or "sh", "-n", str(script)], timeout=30).returncode == 0
    res = subprocess.run([DASH or "sh", "-c", f". {script} && profiles_api_export_profiles_get && echo && "
                                              "healthz_healthz_get"],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": PLAIN_PATH, "STELLA_SERVER": service.url, "STELLA_TOKEN": token("acme-ci")})
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.strip().split("\n", 1)
    assert LABEL in [p["label"] for p in json.loads(first)["items"]]
    assert json.loads(second)


# -- verify-offline.sh ----------------------------------------------------------------------------------

def test_verify_offline_sh_accepts_every_form_under_dash(built, tmp_path):
    out = built["out"]
    for target in (out, out / D.ARCHIVE, unpack(out / D.ARCHIVE, tmp_path / "u")):
        res = dash(out / D.VERIFY_SCRIPT, target)
        assert res.returncode == 0, (target, res.stdout, res.stderr)
        assert "OK: the bundle is intact" in res.stdout
    tree = tmp_path / "u"
    res = dash(tree / D.VERIFY_SCRIPT)  # no argument: the directory holding the script
    assert res.returncode == 0, res.stderr


def test_verify_offline_sh_names_a_flipped_byte_in_any_file(built, tmp_path):
    script = tmp_path / "verify-offline.sh"
    shutil.copy(built["out"] / D.VERIFY_SCRIPT, script)  # a pristine copy checks the tree
    tree = unpack(built["out"] / D.ARCHIVE, tmp_path / "t")
    files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    assert len(files) > 40
    for rel in files:
        path = tree / rel
        if path.stat().st_size == 0:
            continue
        original = flip(path)
        res = dash(script, tree)
        path.write_bytes(original)
        assert res.returncode == 1, rel
        assert rel in res.stderr, (rel, res.stderr)
    # the archive itself, and a file that is not listed
    work = tmp_path / "a"
    work.mkdir()
    shutil.copy(built["out"] / D.ARCHIVE, work)
    flip(work / D.ARCHIVE)
    res = dash(script, work / D.ARCHIVE)
    assert res.returncode == 1 and D.ARCHIVE in res.stderr
    (tree / "portal" / "extra.html").write_text("<p>x</p>")
    res = dash(script, tree)
    assert res.returncode == 1 and "portal/extra.html is not listed" in res.stderr
    (tree / "portal" / "extra.html").unlink()
    os.symlink("/etc/passwd", tree / "portal" / "link.html")
    res = dash(script, tree)
    assert res.returncode == 1 and "portal/link.html" in res.stderr


# -- stella-build devportal verify --------------------------------------------------------------------

def test_devportal_verify_accepts_every_form_with_and_without_key(built, tmp_path):
    for target in (built["out"], built["out"] / D.ARCHIVE, unpack(built["out"] / D.ARCHIVE, tmp_path / "u")):
        code, report = verify(target, cwd=tmp_path)
        assert code == 0, report
        assert report["signature"] == {"checked": False, "signed": False}
    code, report = verify(built["signed"], "--key", built["pub"], cwd=tmp_path)
    assert code == 0, report
    assert report["forms"] == ["archive", "build-tree"] and report["signature"]["checked"] is True
    res = run_cli(["devportal", "verify", str(built["signed"] / D.ARCHIVE), "--output", "json"], cwd=tmp_path)
    assert res.code == 0 and list(json.loads(res.stdout)) == sorted(json.loads(res.stdout))  # sorted keys
    code, report = verify(built["out"], "--key", built["pub"], cwd=tmp_path)
    assert code == 4 and report["errors"][0]["reason"] == "devportal-unsigned"
    code, report = verify(built["signed"], "--key", tmp_path / "missing.pub", cwd=tmp_path)
    assert code == 4


def test_devportal_verify_refuses_a_wrong_key_and_a_changed_manifest(built, tmp_path):
    _, other_pub = make_keys(tmp_path / "other")
    code, report = verify(built["signed"] / D.ARCHIVE, "--key", other_pub, cwd=tmp_path)
    assert code == 3 and report["errors"][0]["reason"] == "signature-invalid", report
    # a changed manifest, resealed so that checksums and entries agree: only the signature catches it
    tree = unpack(built["signed"] / D.ARCHIVE, tmp_path / "t")
    (tree / "portal" / "index.html").write_text("<!DOCTYPE html><p>replaced</p>")
    reseal(tree)
    code, report = verify(tree, cwd=tmp_path)
    assert code == 0, report  # integrity alone cannot tell: that is what the key is for
    code, report = verify(tree, "--key", built["pub"], cwd=tmp_path)
    assert code == 3 and report["errors"][0]["reason"] == "devportal-signature-subject", report
    assert report["errors"][0]["file"] == D.DSSE


@pytest.mark.parametrize("case, reason", [
    ("flip", "digest-mismatch"), ("extra", "devportal-file-unlisted"), ("missing", "devportal-file-missing"),
    ("checksums", "devportal-checksums-invalid"), ("manifest-entry", "devportal-manifest-mismatch"),
])
def test_devportal_verify_names_what_is_wrong_in_a_tree(case, reason, built, tmp_path):
    tree = unpack(built["out"] / D.ARCHIVE, tmp_path / "t")
    target = "portal/api/index.html"
    if case == "flip":
        flip(tree / target)
    elif case == "extra":
        (tree / "portal/evil.html").write_text("<script src='https://example.com/x.js'></script>")
        target = "portal/evil.html"
    elif case == "missing":
        (tree / target).unlink()
    elif case == "checksums":
        target = D.CHECKSUMS
        flip(tree / target)
    elif case == "manifest-entry":  # checksums agree with the files, the manifest does not
        (tree / "portal/api/index.html").write_text("changed")
        reseal(tree)
        doc = json.loads((tree / D.MANIFEST).read_bytes())
        doc["entries"] = [dict(e, sha256="0" * 64) if e["path"] == target else e for e in doc["entries"]]
        doc["bundleId"] = D.bundle_id(doc["entries"])
        (tree / D.MANIFEST).write_bytes(json.dumps(doc).encode())
        (tree / D.CHECKSUMS).unlink()
        reseal_checksums_only(tree)
    code, report = verify(tree, cwd=tmp_path)
    assert code == 3, report
    assert report["errors"][0]["reason"] == reason
    assert report["errors"][0]["file"].endswith(target)


def reseal_checksums_only(tree: Path) -> None:
    files = {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    (tree / D.CHECKSUMS).write_bytes(D.checksums_txt({p: hashlib.sha256(b).hexdigest() for p, b in files.items()}))


def _hostile(path: Path, add) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zlib.compress(buf.getvalue(), 9, wbits=31))
    return path


@pytest.mark.parametrize("name, reason", [("symlink", "devportal-member-invalid"), ("dotdot", "unsafe-path"),
                                          ("absolute", "unsafe-path"), ("duplicate", "path-collision")])
def test_hostile_archives_are_refused(name, reason, tmp_path):
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo({"dotdot": "../escape", "absolute": "/etc/x"}.get(name, "checksums.txt"))
        if name == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
            return
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
        if name == "duplicate":
            tar.addfile(info, io.BytesIO(b"y"))
    archive = _hostile(tmp_path / name / D.ARCHIVE, add)
    code, report = verify(archive, cwd=tmp_path)
    assert code == 3 and report["errors"][0]["reason"] == reason, report
    assert not (tmp_path / "escape").exists()


def _capped(args: list[str], cap_mib: int) -> subprocess.CompletedProcess:
    """`stella-build ARGS` in a child limited to `cap_mib` MiB of address space; prints its peak RSS."""
    code = ("import resource, sys\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({cap_mib << 20}, {cap_mib << 20}))\n"
            "from stella_build.cli.main import main\n"
            "code = main(sys.argv[1:])\n"
            "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]\n"
            "print('peak-rss-kib', hwm, file=sys.stderr)\n"
            "sys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_gzip_and_pax_header_bombs_fail_fast_in_bounded_memory(tmp_path):
    """A 2 GiB PAX header, a 256 MiB member followed by one that would pass the 1 GiB limit, and a
    member declaring 8 GiB, all gzip bombs of a few MiB: refused under a 512 MiB address-space cap,
    within seconds, with a small peak RSS (the member is hashed in 1 MiB reads, never held)."""
    def bomb(path: Path, *parts: tuple[tarfile.TarInfo, int]) -> None:
        """gzip header, then per part a tar header and `mib` MiB of zeros, no trailer. After a full
        flush deflate starts afresh, so each further MiB of zeros compresses to the same ~1 KiB."""
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = comp.compress(bytes(1 << 20)) + comp.flush(zlib.Z_FULL_FLUSH)
        out = bytearray(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
        for header, mib in parts:
            fmt = tarfile.GNU_FORMAT if header.size >= 8 << 30 else tarfile.USTAR_FORMAT  # base-256 size field
            out += comp.compress(header.tobuf(fmt)) + comp.flush(zlib.Z_FULL_FLUSH) + block * mib
        path.parent.mkdir(parents=True)
        path.write_bytes(bytes(out))

    def info(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        header = tarfile.TarInfo(name)
        header.type, header.size = kind, size
        return header

    pax = tmp_path / "pax" / D.ARCHIVE
    bomb(pax, (info("././@PaxHeader", 2 << 30, tarfile.XHDTYPE), 64))
    big = tmp_path / "big" / D.ARCHIVE  # 256 MiB streamed (hashed, never held), then one more than fits
    bomb(big, (info("portal/a.html", 256 << 20), 256), (info("portal/b.html", 800 << 20), 800))
    lying = tmp_path / "lying" / D.ARCHIVE  # declares 8 GiB: refused before a byte of it is read
    bomb(lying, (info("portal/index.html", 8 << 30), 4))
    assert max(p.stat().st_size for p in (pax, big, lying)) < 4 << 20
    for path, words in ((pax, "a tar header of"), (big, "portal/b.html declares"), (lying, "declares")):
        start = time.monotonic()
        res = _capped(["devportal", "verify", str(path), "--output", "json"], 512)
        elapsed = time.monotonic() - start
        assert res.returncode == 3, res.stderr
        err = json.loads(res.stdout)["errors"][0]
        assert err["reason"] == "size-limit" and words in err["message"], err
        peak = int(next(l for l in res.stderr.splitlines() if l.startswith("peak-rss-kib")).split()[1]) >> 10
        assert peak < 256, peak
        assert elapsed < 30, elapsed
        print(f"\n{path.parent.name}: refused in {elapsed:.1f} s, {peak} MiB peak RSS")


# -- the policy and the rule's errors -------------------------------------------------------------------

def test_policy_finds_every_kind_of_external_reference_with_its_line():
    page = (b"<!DOCTYPE html>\n<html><head>\n<link rel=stylesheet href=\"https://fonts.example/css\">\n"
            b"<style>\nbody { background: url('//cdn.example/bg.png') }\n</style>\n</head><body>\n"
            b"<img srcset=\"a.png 1x, http://x.example/b.png 2x\">\n<a href=\"/etc/passwd\">abs</a>\n"
            b"<a href=\"../../outside.html\">up</a>\n<a href=\"missing.html\">gone</a>\n<a href=\"#nowhere\">frag</a>\n"
            b"<base href=\"http://evil.example/\">\n<script>fetch('https://api.example/x')</script>\n"
            b"<a href=\"ok.html#here\">fine</a><img src=\"a.png\"></body></html>\n")
    files = {"portal/p.html": page, "portal/ok.html": b"<p id=\"here\">x</p>", "portal/a.png": b"",
             "portal/s.css": b"@import 'https://x.example/y.css';\n.a{}\n"}
    got = [(p.reason, p.path, p.line) for p in check_references(files)]
    assert got == [
        ("devportal-external-asset", "portal/p.html", 3),   # <link href>
        ("devportal-external-asset", "portal/p.html", 5),   # <style> url()
        ("devportal-external-asset", "portal/p.html", 8),   # srcset
        ("devportal-external-asset", "portal/p.html", 9),   # absolute path
        ("devportal-external-asset", "portal/p.html", 10),  # climbs out
        ("devportal-broken-link", "portal/p.html", 11),
        ("devportal-broken-link", "portal/p.html", 12),
        ("devportal-external-asset", "portal/p.html", 13),  # <base href>
        ("devportal-external-asset", "portal/p.html", 13),  # <base> itself
        ("devportal-external-asset", "portal/p.html", 14),  # script string
        ("devportal-external-asset", "portal/s.css", 1),    # @import
    ]


def _portal_workspace(tmp_path: Path, doc: str | None = None, target_extra: str = "") -> Path:
    ws = make_workspace(tmp_path / "ws")
    if doc is not None:
        docs = ws / "profiles/devportal/docs"
        (docs / "zz-extra.md").write_text(doc)
    ef = ws / "profiles/Exportfile"
    ef.write_text(ef.read_text() + target_extra)
    return ws


def test_an_external_image_in_a_document_fails_the_build_with_file_and_line(tmp_path):
    ws = _portal_workspace(tmp_path, "# Extra\n\nSome text.\n\nMore text with ![logo](https://example.com/logo.png)\n")
    res = run_cli(["build", "--output", "json", LABEL], cwd=ws, cache=tmp_path / "c")
    assert res.code == 1, res.stdout + res.stderr
    err = res.json()["errors"][0]
    assert err["reason"] == "devportal-external-asset"
    assert err["file"] == "profiles/devportal/docs/zz-extra.md"
    assert "line 5" in err["message"] and "https://example.com/logo.png" in err["message"]


def test_a_link_to_a_missing_heading_fails_the_build(tmp_path):
    ws = _portal_workspace(tmp_path, "# Extra\n\nSee [the API errors](api.md#no-such-section).\n")
    res = run_cli(["build", "--output", "json", LABEL], cwd=ws, cache=tmp_path / "c")
    assert res.code == 1
    err = res.json()["errors"][0]
    assert err["reason"] == "devportal-broken-link" and err["file"] == "portal/formats/zz-extra.html"


def test_web_links_in_documents_are_text_not_links(tmp_path):
    ws = _portal_workspace(tmp_path, "# Extra\n\nRead [SLSA](https://slsa.dev/spec) and <https://example.com/x>.\n")
    run_cli(["-q", "build", LABEL], cwd=ws, cache=tmp_path / "c", check=True)
    html = (ws / "stella-out/profiles/devportal-offline/portal/formats/zz-extra.html").read_text()
    assert "https://slsa.dev/spec" in html and 'href="https://' not in html
    assert '<span class="external" title="not part of this bundle">SLSA</span> (https://slsa.dev/spec)' in html


@pytest.mark.parametrize("extra, reason, code", [
    ('\n[targets.d2]\nrule = "devportal_offline"\nopenapi = "devportal/docs/nothing.json"\n'
     'exportfile_schema = "devportal/exportfile.schema.json"\ndocs = ["devportal/docs/*.md"]\n'
     'changelog = "devportal/CHANGELOG.md"\n', "devportal-input-missing", 2),
    ('\n[targets.d2]\nrule = "devportal_offline"\nopenapi = "devportal/CHANGELOG.md"\n'
     'exportfile_schema = "devportal/exportfile.schema.json"\ndocs = ["devportal/docs/*.md"]\n'
     'changelog = "devportal/CHANGELOG.md"\n', "devportal-spec-invalid", 1),
    ('\n[targets.d2]\nrule = "devportal_offline"\ndeps = [":json-raw"]\n', "devportal-dep-unsupported", 2),
    ('\n[targets.d2]\nrule = "devportal_offline"\nchecks = { policy = "anything-goes" }\n', "exportfile-invalid", 2),
])
def test_rule_errors(extra, reason, code, tmp_path):
    ws = _portal_workspace(tmp_path, target_extra=extra)
    res = run_cli(["build", "--output", "json", "//profiles:d2"], cwd=ws, cache=tmp_path / "c")
    assert res.code == code, res.stdout + res.stderr
    assert res.json()["errors"][0]["reason"] == reason


def test_every_asset_is_an_input_of_the_action(tmp_path):
    """Templates, static files and SDK sources are package data, not modules, so the engine's
    implementation digest does not see them: each one must be a declared source input of the action
    (its digest is then part of the action key), read from the installed package."""
    from stella_build.engine.analysis import analyze
    from stella_build.engine.workspace import Workspace
    from stella_build.rules.devportal import ASSETS

    base = REPO / "rules" / ASSETS
    on_disk = {p.relative_to(base).as_posix(): p.resolve() for p in base.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert len(on_disk) >= 15 and any(r.endswith(".py.j2") for r in on_disk)
    ws = make_workspace(tmp_path / "ws")
    graph = analyze(Workspace.find(explicit=ws), [LABEL])
    (spec,) = [a for a in graph.actions.values() if a.mnemonic == "DevportalAssemble"]
    declared = {name[len("assets/"):]: art.path for name, art in spec.inputs.items() if name.startswith("assets/")}
    assert declared == on_disk
    assert {"jinja2", "markdown-it-py", "markupsafe"} <= set(spec.libraries)  # their versions are in the key


def test_bytes_survive_time_zone_umask_jobs_and_path(tmp_path):
    assert GOLDEN is not None, "run tools/golden.py --update"
    ws = make_workspace(tmp_path / "some" / "deeper" / "place")
    env = {"TZ": "Pacific/Kiritimati", "LC_ALL": "POSIX", "LANG": "de_DE.UTF-8", "PYTHONHASHSEED": "4242"}
    old = os.umask(0o077)
    try:
        run_cli(["-q", "-j1", "build", LABEL], cwd=ws, cache=tmp_path / "cold", env=env, check=True)
    finally:
        os.umask(old)
    assert output_digests(ws, "profiles", "devportal-offline") == GOLDEN, STALE
    res = run_cli(["-q", "--output", "json", "build", "--check", LABEL], cwd=ws, cache=tmp_path / "cold", check=True)
    assert res.json()["check"]["differences"] == []


@pytest.mark.interop
def test_cosign_verifies_the_manifest_signature(built, tmp_path):
    from tests.interop.conftest import require_tool

    cosign = require_tool("cosign")
    env = {"PATH": PLAIN_PATH, "HOME": str(tmp_path)}

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([cosign, "verify-blob-attestation", "--key", str(args[0]), "--signature", D.DSSE,
                               "--type", D.PREDICATE_TYPE, "--insecure-ignore-tlog=true", D.MANIFEST],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    ok = run(built["pub"], cwd=built["signed"])
    assert ok.returncode == 0 and "Verified OK" in ok.stdout + ok.stderr, ok.stderr
    _, other = make_keys(tmp_path / "other")
    assert run(other, cwd=built["signed"]).returncode != 0
    tree = unpack(built["signed"] / D.ARCHIVE, tmp_path / "t")
    (tree / D.MANIFEST).write_bytes((tree / D.MANIFEST).read_bytes().replace(b'"signed":true', b'"signed":false'))
    assert run(built["pub"], cwd=tree).returncode != 0
