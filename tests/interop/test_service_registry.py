"""Real registry clients against the service's /v2/ endpoints on 127.0.0.1.

One server with signed runs of trivy-db and trivy-java-db for tenant acme (the sample evidence plus
a Maven advisory and the GAV of a tiny JAR, as the Offline Kit test uses), `acme/trivy-java-db`
anonymous. Trivy v0.74.0 downloads both DBs with `--db-repository` / `--java-db-repository`
(Basic credentials through the bearer flow for the DB, anonymously for the Java DB) and finds what
stella-build's evidence model says; skopeo copies every artifact into an OCI layout with digests
preserved; oras pulls, lists tags and discovers the signature through the referrers API, and cosign
verifies the fetched Sigstore bundle against the pulled DB archive; `cosign verify-attestation`
finds the SLSA provenance attestation of the DB artifact among its referrers and verifies it offline
with the key (and refuses another key, and a re-signed-nowhere copy with one flipped byte pushed to a
real docker-registry); 10 Trivy clients started together each download the DB exactly once. Missing
tools fail under CI=true (conftest.require_tool).
"""
from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from stella_build.delivery.registry import RegistryClient, push_layout
from stella_build.engine.rule_api import canonical_json
from stella_build.rules.formats.oci import (
    ANNOTATION_BUNDLE_CONTENT, ANNOTATION_CREATED, Descriptor, OciLayoutWriter,
)
from stella_build.rules.formats.trivy.attestation import build_signed_layout

from tests.interop.conftest import require_tool
from tests.interop.test_oci_tools import registry  # noqa: F401  (fixture: a real docker-registry)
from tests.interop.test_offline_kit_trivy import JAR_GAV, MAVEN_ADVISORY, SPEC, model_findings
from tests.interop.test_trivy_scan import _tiny_jar, _typed, write_project
from tests.service.harness import token
from tests.service.test_registry import start_registry_server

pytestmark = pytest.mark.interop

TOKEN = token("acme-ci")
NO_NOTICE = ["--skip-version-check", "--disable-telemetry"]


def _prepare(jar_sha1: str):
    def prepare(ws: Path) -> None:
        group, artifact, version = JAR_GAV
        (ws / "profiles/evidence/maven/registry-test.jsonl").write_text(json.dumps(
            {"group_id": group, "artifact_id": artifact, "version": version, "sha1": jar_sha1}) + "\n")
        (ws / "profiles/evidence/osv/STELLA-KIT-2025-0001-Maven.json").write_text(json.dumps(MAVEN_ADVISORY))
    return prepare


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry-interop")
    jar_dir = root / "jar"
    jar_dir.mkdir()
    sha1 = _tiny_jar(jar_dir / "mystery-core.jar")
    srv, ids, pub = start_registry_server(
        root / "srv", extra='\n[registry]\nanonymous_pull = ["acme/trivy-java-db"]\n', prepare=_prepare(sha1))
    project = write_project(root / "project", SPEC)
    shutil.rmtree(project / "etc")  # no OS packages: the sample evidence has no Alpine advisories
    shutil.rmtree(project / "lib")
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api:
        files = {}
        for (_, profile), (run_id,) in ids.items():
            files[profile] = {f["path"]: f["sha256"] for f in api.get(f"/api/export/runs/{run_id}").json()["outputs"]}
    yield {"srv": srv, "host": srv.url.removeprefix("http://"), "pub": pub, "root": root, "jar_dir": jar_dir,
           "project": project, "files": files, "ws": srv.workspace}
    srv.stop()


def _run(argv: list, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    # HOME: a scratch directory, so no docker/oras/containers credentials of the machine are used
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(home), "TRIVY_NO_PROGRESS": "true",
                               "XDG_RUNTIME_DIR": str(home), "TMPDIR": str(home)})


def _ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"{' '.join(res.args)} exited {res.returncode}\n{res.stderr[-3000:]}"
    return res.stdout


def _sha_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pull_200s(served) -> int:
    text = httpx.get(served["srv"].url + "/metrics", timeout=10).text
    match = re.search(r'^export_http_requests_total\{method="GET",route="/v2/\{path:path\}",status="200"\} (\S+)$',
                      text, re.M)
    return int(float(match[1])) if match else 0


def _manifest(served, repo: str, ref: str) -> httpx.Response:
    r = httpx.get(f"{served['srv'].url}/v2/{repo}/manifests/{ref}", auth=("acme", TOKEN), timeout=30)
    assert r.status_code == 200, r.text
    return r


# -- Trivy ----------------------------------------------------------------------------------------

def test_trivy_downloads_both_dbs_from_the_service_and_finds_what_the_model_expects(served):
    trivy = require_tool("trivy")
    host, root = served["host"], served["root"]
    cache = root / "trivy-cache"
    report = json.loads(_ok(_run([
        trivy, "--cache-dir", cache, "--quiet", "fs", "--db-repository", f"{host}/acme/trivy-db",
        "--username", "acme", "--password", TOKEN, "--skip-java-db-update", *NO_NOTICE,
        "--scanners", "vuln", "--format", "json", served["project"]], root / "home")))
    # the DB Trivy installed is byte for byte the run's trivy.db
    assert _sha_file(cache / "db" / "trivy.db") == served["files"]["//profiles:trivy-db"]["trivy.db"]
    # the Java DB repository is anonymous: no credentials at all
    jar = json.loads(_ok(_run([
        trivy, "--cache-dir", cache, "--quiet", "rootfs", "--skip-db-update",
        "--java-db-repository", f"{host}/acme/trivy-java-db", *NO_NOTICE, "--scanners", "vuln",
        "--format", "json", served["jar_dir"]], root / "home")))
    assert (_sha_file(cache / "java-db" / "trivy-java.db")
            == served["files"]["//profiles:trivy-java-db"]["trivy-java.db"])
    got = set(_typed(report)) | set(_typed(jar))
    want = model_findings(served["ws"])
    assert {k for k, *_ in want} == {"pip", "poetry", "gomod", "cargo", "jar"}
    assert got == want, f"only Trivy: {sorted(got - want)}\nonly model: {sorted(want - got)}"


def test_trivy_without_credentials_gets_no_private_db(served):
    trivy = require_tool("trivy")
    res = _run([trivy, "--cache-dir", served["root"] / "anon-cache", "--quiet", "image", "--download-db-only",
                "--db-repository", f"{served['host']}/acme/trivy-db", *NO_NOTICE], served["root"] / "home")
    assert res.returncode != 0
    assert "DENIED" in res.stderr or "UNAUTHORIZED" in res.stderr or "401" in res.stderr, res.stderr[-2000:]
    assert not (served["root"] / "anon-cache" / "db" / "trivy.db").exists()


def test_ten_trivy_clients_started_together_each_download_the_db_once(served):
    trivy = require_tool("trivy")
    n = 10
    before = _pull_200s(served)
    started = time.monotonic()

    def one(i: int) -> subprocess.CompletedProcess:
        return _run([trivy, "--cache-dir", served["root"] / f"many/{i}", "--quiet", "image", "--download-db-only",
                     "--db-repository", f"{served['host']}/acme/trivy-db", "--username", "acme",
                     "--password", TOKEN, *NO_NOTICE], served["root"] / f"many-home/{i}")

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.monotonic() - started
    for res in results:
        _ok(res)
    want = served["files"]["//profiles:trivy-db"]["trivy.db"]
    assert [_sha_file(served["root"] / f"many/{i}/db/trivy.db") for i in range(n)] == [want] * n
    # one manifest and one blob GET per client: nobody retried, nobody downloaded twice
    assert _pull_200s(served) - before == 2 * n
    print(f"\n{n} Trivy clients downloaded the DB in {wall:.2f} s")


# -- skopeo ---------------------------------------------------------------------------------------

def test_skopeo_copies_every_artifact_with_digests_preserved(served):
    skopeo = require_tool("skopeo")
    host, root = served["host"], served["root"]
    home = root / "skopeo-home"
    creds = ["--src-tls-verify=false", "--src-creds", f"acme:{TOKEN}"]
    listed = json.loads(_ok(_run([skopeo, "list-tags", "--tls-verify=false", "--creds", f"acme:{TOKEN}",
                                  f"docker://{host}/acme/trivy-db"], home)))
    api_tags = httpx.get(f"{served['srv'].url}/v2/acme/trivy-db/tags/list", auth=("acme", TOKEN)).json()["tags"]
    assert listed["Tags"] == api_tags and "2" in api_tags
    artifact = _manifest(served, "acme/trivy-db", "2")
    subject = artifact.headers["docker-content-digest"]
    referrers = httpx.get(f"{served['srv'].url}/v2/acme/trivy-db/referrers/{subject}", auth=("acme", TOKEN)).json()
    refs = [("acme/trivy-db", tag) for tag in api_tags if not re.search(r"-(\d{8}|run-[0-9a-f]{24})$", tag)]
    refs += [("acme/trivy-db", m["digest"]) for m in referrers["manifests"]]
    refs += [("acme/trivy-java-db", "1")]
    assert len(refs) == 5  # the DB, its referrers-tag-schema index, the signature, the attestation, the Java DB
    (root / "skopeo").mkdir()
    for repo, ref in refs:
        expected = _manifest(served, repo, ref)
        layout = root / "skopeo" / re.sub(r"[^a-z0-9]+", "-", f"{repo}-{ref}")
        source = f"docker://{host}/{repo}" + (f"@{ref}" if ref.startswith("sha256:") else f":{ref}")
        _ok(_run([skopeo, "copy", "--all", "--preserve-digests", *creds, source, f"oci:{layout}:copied"], home))
        index = json.loads((layout / "index.json").read_text())
        [entry] = index["manifests"]
        assert entry["digest"] == expected.headers["docker-content-digest"], (repo, ref)
        assert (layout / "blobs/sha256" / entry["digest"][7:]).read_bytes() == expected.content
        for blob in (layout / "blobs/sha256").iterdir():
            assert _sha_file(blob) == blob.name
        doc = expected.json()
        for desc in doc.get("layers", []) + ([doc["config"]] if "config" in doc else []) + doc.get("manifests", []):
            assert (layout / "blobs/sha256" / desc["digest"][7:]).is_file(), (repo, ref, desc)


# -- oras + cosign --------------------------------------------------------------------------------

def test_oras_pulls_and_discovers_the_signature_and_cosign_verifies_it(served):
    oras, cosign = require_tool("oras"), require_tool("cosign")
    host, root = served["host"], served["root"]
    home = root / "oras-home"
    login = ["--plain-http", "-u", "acme", "-p", TOKEN]
    out = root / "oras-db"
    _ok(_run([oras, "pull", *login, "-o", out, f"{host}/acme/trivy-db:2"], home))
    artifact = _manifest(served, "acme/trivy-db", "2")
    layer = artifact.json()["layers"][0]
    assert "sha256:" + _sha_file(out / "db.tar.gz") == layer["digest"]
    assert _sha_file(out / "db.tar.gz") == served["files"]["//profiles:trivy-db"]["db.tar.gz"]
    java = root / "oras-java"  # anonymous
    _ok(_run([oras, "pull", "--plain-http", "-o", java, f"{host}/acme/trivy-java-db:1"], home))
    assert _sha_file(java / "javadb.tar.gz") == served["files"]["//profiles:trivy-java-db"]["javadb.tar.gz"]
    # `oras login` stores the credentials (in the scratch HOME); later commands need no -u/-p
    _ok(_run([oras, "login", *login, host], home))
    tags = _ok(_run([oras, "repo", "tags", "--plain-http", f"{host}/acme/trivy-db"], home)).split()
    assert tags == httpx.get(f"{served['srv'].url}/v2/acme/trivy-db/tags/list", auth=("acme", TOKEN)).json()["tags"]
    found = json.loads(_ok(_run([oras, "discover", *login, "--format", "json", f"{host}/acme/trivy-db:2"], home)))
    assert found["digest"] == artifact.headers["docker-content-digest"]
    assert len(found["referrers"]) == 2  # the archive's signature and the artifact's attestation
    [sig] = [r for r in found["referrers"] if r["annotations"][ANNOTATION_BUNDLE_CONTENT] == "message-signature"]
    assert sig["artifactType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    referrer = json.loads(_ok(_run([oras, "manifest", "fetch", *login, f"{host}/acme/trivy-db@{sig['digest']}"], home)))
    assert referrer["subject"]["digest"] == found["digest"]
    bundle = root / "bundle.sigstore.json"
    _ok(_run([oras, "blob", "fetch", *login, "--output", bundle,
              f"{host}/acme/trivy-db@{referrer['layers'][0]['digest']}"], home))
    res = _run([cosign, "verify-blob", "--key", served["pub"], "--bundle", bundle, "--insecure-ignore-tlog=true",
                out / "db.tar.gz"], home)
    assert res.returncode == 0 and "Verified OK" in res.stderr + res.stdout, res.stderr
    # the same bundle does not verify one flipped byte
    tampered = root / "tampered.tar.gz"
    data = bytearray((out / "db.tar.gz").read_bytes())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    res = _run([cosign, "verify-blob", "--key", served["pub"], "--bundle", bundle, "--insecure-ignore-tlog=true",
                tampered], home)
    assert res.returncode != 0 and "Verified OK" not in res.stderr + res.stdout


# -- cosign verify-attestation ---------------------------------------------------------------------

COSIGN_ATTEST = ["verify-attestation", "--type", "slsaprovenance1", "--insecure-ignore-tlog=true"]


def _statements(stdout: str) -> list[dict]:
    """The in-toto statements cosign printed (one DSSE envelope JSON per line)."""
    return [json.loads(base64.b64decode(json.loads(line)["payload"])) for line in stdout.splitlines() if line.strip()]


def test_cosign_verify_attestation_finds_the_provenance_of_the_db_artifact(served, tmp_path):
    cosign = require_tool("cosign")
    host, home = served["host"], served["root"] / "cosign-home"
    creds = ["--registry-username", "acme", "--registry-password", TOKEN]
    artifact = _manifest(served, "acme/trivy-db", "2").headers["docker-content-digest"]
    res = _run([cosign, *COSIGN_ATTEST, "--key", served["pub"], *creds, f"{host}/acme/trivy-db:2"], home)
    _ok(res)
    assert "The signatures were verified against the specified public key" in res.stderr, res.stderr
    [statement] = _statements(res.stdout)  # the archive's message signature is not an attestation
    assert statement["subject"] == [{"name": "trivy-db", "digest": {"sha256": artifact.removeprefix("sha256:")}}]
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    # its predicate is exactly the build's provenance: with the file subjects, it is provenance.json
    files = served["files"]["//profiles:trivy-db"]
    provenance = {"_type": statement["_type"], "predicateType": statement["predicateType"],
                  "predicate": statement["predicate"],
                  "subject": [{"name": "manifests/export.json", "digest": {"sha256": files["manifests/export.json"]}},
                              {"name": "db.tar.gz", "digest": {"sha256": files["db.tar.gz"]}}]}
    assert hashlib.sha256(canonical_json.dumps(provenance)).hexdigest() == files["manifests/provenance.json"]
    # the Java DB (an anonymous repository) has its own
    java = _ok(_run([cosign, *COSIGN_ATTEST, "--key", served["pub"], f"{host}/acme/trivy-java-db:1"], home))
    [statement] = _statements(java)
    assert statement["subject"][0]["digest"]["sha256"] == \
        _manifest(served, "acme/trivy-java-db", "1").headers["docker-content-digest"].removeprefix("sha256:")
    # another key verifies nothing
    other = tmp_path / "other.pub"
    other.write_bytes(_other_public_key())
    res = _run([cosign, *COSIGN_ATTEST, "--key", other, *creds, f"{host}/acme/trivy-db:2"], home)
    assert res.returncode != 0 and not res.stdout.strip()
    assert "no matching attestations" in res.stderr, res.stderr[-2000:]
    assert "accepted signatures do not match threshold, Found: 0, Expected 1" in res.stderr, res.stderr[-2000:]


def _other_public_key() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    from stella_build.rules.formats.keys import encode_public_key

    return encode_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())


def _copy_from_service(served, root: Path, flip: bool) -> Path:
    """The DB artifact and both referrers fetched from the service, re-assembled as a layout
    (build_signed_layout: the same bytes, so the same digests) - with one bit of the attestation's
    signed statement flipped when `flip` (then the bundle, its referrer and the index get new digests,
    as a registry that substituted the attestation would serve them)."""
    auth = ("acme", TOKEN)
    artifact = _manifest(served, "acme/trivy-db", "2")
    doc = artifact.json()
    base = served["srv"].url + "/v2/acme/trivy-db"
    refs = httpx.get(f"{base}/referrers/{artifact.headers['docker-content-digest']}", auth=auth, timeout=30).json()
    bundles = {}
    for ref in refs["manifests"]:
        manifest = _manifest(served, "acme/trivy-db", ref["digest"]).json()
        blob = httpx.get(f"{base}/blobs/{manifest['layers'][0]['digest']}", auth=auth, timeout=30)
        bundles[ref["annotations"][ANNOTATION_BUNDLE_CONTENT]] = blob.content
    attestation = bundles["dsse-envelope"]
    if flip:
        bundle = json.loads(attestation)
        payload = bytearray(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        at = payload.index(b"buildType") + 8  # "buildType" -> "buildTypd": still valid JSON
        payload[at] ^= 1
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(bytes(payload)).decode()
        attestation = canonical_json.dumps(bundle)
    layer = doc["layers"][0]
    db = root / "db.tar.gz"
    db.write_bytes(httpx.get(f"{base}/blobs/{layer['digest']}", auth=auth, timeout=60).content)
    writer = OciLayoutWriter(root / "oci")
    added = writer.add_blob_file(db, layer["mediaType"], layer["annotations"])
    assert Descriptor.from_json(layer) == added
    got, _ = build_signed_layout(writer, added, bundles["message-signature"], attestation,
                                 doc["annotations"][ANNOTATION_CREATED], java=False)
    assert got.digest == artifact.headers["docker-content-digest"]  # the DB artifact itself is untouched
    return root / "oci"


@pytest.mark.parametrize("flip", [False, True], ids=["as-built", "flipped-bit"])
def test_cosign_verify_attestation_refuses_a_flipped_bit_in_a_real_registry(served, registry, flip,  # noqa: F811
                                                                           tmp_path):
    """docker-registry (distribution 2.8) has no referrers API: cosign finds the attestation through
    the referrers tag schema index `sha256-<hex>` the layout carries."""
    cosign = require_tool("cosign")
    layout = _copy_from_service(served, tmp_path, flip)
    push_layout(layout, RegistryClient(registry, "stella/trivy-db"))
    res = _run([cosign, *COSIGN_ATTEST, "--key", served["pub"],
                f"{registry.removeprefix('http://')}/stella/trivy-db:2"], tmp_path / "home")
    if not flip:
        _ok(res)
        assert len(_statements(res.stdout)) == 1
    else:
        assert res.returncode != 0 and not res.stdout.strip()
        # the DSSE signature no longer covers the statement (sigstore-go's envelope check)
        assert "no matching attestations" in res.stderr, res.stderr[-2000:]
        assert "accepted signatures do not match threshold, Found: 0, Expected 1" in res.stderr, res.stderr[-2000:]
