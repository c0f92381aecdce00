"""Keyless (Sigstore) signing, offline: the missing-identity failure, the Fulcio request our flow sends
(intercepted at the HTTP adapter, with every socket refused), and how service failures are reported."""
from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from stella_build.cli.main import main as cli_main
from stella_build.engine.errors import BuildFailed, NetworkRequired, TrustMaterialMissing, VerificationFailed
from stella_build.delivery import keyless

from tests.conftest import run_cli

TARGET = "//profiles:json-raw"
OUT = Path("stella-out/profiles/json-raw")
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
SUBJECT = "repo:example/stella-build:ref:refs/heads/main"
_OIDC_ENV = ["SIGSTORE_IDENTITY_TOKEN", "GITHUB_ACTIONS", "ACTIONS_ID_TOKEN_REQUEST_URL",
             "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "GITLAB_CI", "SIGSTORE_ID_TOKEN", "BUILDKITE", "CIRCLECI",
             "GOOGLE_SERVICE_ACCOUNT_NAME"]


def _b64url(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def fake_jwt(**claims) -> str:
    """A well-formed OIDC JWT (sigstore-python never verifies its signature: Fulcio does)."""
    now = int(time.time())
    payload = {"iss": GITHUB_ISSUER, "sub": SUBJECT, "aud": "sigstore", "iat": now, "exp": now + 600,
               "email": "ci@example.invalid", **claims}
    return f"{_b64url({'alg': 'RS256', 'typ': 'JWT'})}.{_b64url(payload)}.c2lnbmF0dXJl"


@pytest.fixture
def offline(monkeypatch):
    """No OIDC environment, and any attempt to open a network connection fails the test loudly."""
    for name in _OIDC_ENV:
        monkeypatch.delenv(name, raising=False)
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture
def fake_fulcio(monkeypatch, offline):
    """Answer every HTTP request at the requests adapter (below the sigstore clients) with a Fulcio
    error; record the prepared requests."""
    seen: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):
        seen.append(request)
        resp = requests.Response()
        resp.status_code = 401
        resp._content = json.dumps({"code": 16, "message": "error processing the identity token"}).encode()
        resp.headers["Content-Type"] = "application/json"
        resp.url, resp.request = request.url, request
        return resp

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    monkeypatch.setattr(keyless, "trust_config", lambda staging=False: keyless.embedded_trust_config(staging=staging))
    return seen


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """An unsigned json-raw bundle, built once."""
    from tests.conftest import make_workspace

    ws = make_workspace(tmp_path_factory.mktemp("kl") / "ws")
    run_cli(["-q", TARGET], cwd=ws, cache=ws.parent / "c", check=True)
    return ws


def _keyless_files(ws: Path) -> list[Path]:
    return sorted((ws / OUT).rglob("*" + keyless.KEYLESS_SUFFIX))


# -- no identity -----------------------------------------------------------------------------------

def test_no_identity_fails_at_analysis_with_exit_4(built, tmp_path):
    res = run_cli(["build", "--sign", "keyless", TARGET], cwd=built, cache=built.parent / "c",
                  env={name: "" for name in _OIDC_ENV})
    assert res.code == 4, res.stderr
    assert "keyless signing requested (--sign keyless)" in res.stderr
    assert "id-token: write" in res.stderr and "SIGSTORE_ID_TOKEN" in res.stderr
    assert "SIGSTORE_IDENTITY_TOKEN" in res.stderr and "Traceback" not in res.stderr
    assert _keyless_files(built) == []


def test_identity_token_without_any_source_is_exit_4(offline):
    with pytest.raises(TrustMaterialMissing) as err:
        keyless.identity_token()
    assert err.value.exit_code == 4 and "id-token: write" in str(err.value)
    assert offline == []  # detecting the ambient credential opened no connection


def test_github_actions_without_id_token_permission_is_exit_4(offline, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")  # but no ACTIONS_ID_TOKEN_REQUEST_* variables
    with pytest.raises(TrustMaterialMissing) as err:
        keyless.identity_token()
    assert "GitHub" in str(err.value) and "id-token: write" in str(err.value)


@pytest.mark.parametrize("claims, needle", [
    ({"exp": int(time.time()) - 60}, "not usable"),
    ({"aud": "not-sigstore"}, "not usable"),
])
def test_unusable_token_is_exit_4(offline, monkeypatch, claims, needle):
    monkeypatch.setenv("SIGSTORE_IDENTITY_TOKEN", fake_jwt(**claims))
    with pytest.raises(TrustMaterialMissing) as err:
        keyless.identity_token()
    assert needle in str(err.value) and "SIGSTORE_IDENTITY_TOKEN" in str(err.value)


# -- the request sent to Fulcio ------------------------------------------------------------------

def test_fulcio_signing_certificate_request_shape(built, fake_fulcio, offline, monkeypatch):
    token = fake_jwt()
    monkeypatch.setenv("SIGSTORE_IDENTITY_TOKEN", token)
    paths = keyless.keyless_subjects(built / OUT)
    assert [p.relative_to(built / OUT).as_posix() for p in paths] == [
        "manifests/export.json", "bundle.tar.gz", "manifests/provenance.json"]
    with pytest.raises(BuildFailed) as err:
        keyless.sign_materialized_keyless(paths)
    # exactly one certificate request (one ephemeral key signs every file), then we stopped
    assert len(fake_fulcio) == 1
    req = fake_fulcio[0]
    assert req.method == "POST" and req.url == "https://fulcio.sigstore.dev/api/v2/signingCert"
    assert req.headers["Authorization"] == f"Bearer {token}"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Accept"] == "application/pem-certificate-chain"
    body = json.loads(req.body)
    assert set(body) == {"certificateSigningRequest"}
    csr = x509.load_pem_x509_csr(base64.b64decode(body["certificateSigningRequest"]))
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    # proof of possession: the CSR is signed by the ephemeral private key of the key it carries
    assert csr.is_signature_valid
    key.verify(csr.signature, csr.tbs_certrequest_bytes, ec.ECDSA(hashes.SHA256()))
    assert list(csr.subject) == []  # the identity comes from the token, not the CSR
    bc = csr.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    # the refusal is reported clearly, with the server's message, as a failed step (exit 1)
    assert err.value.exit_code == 1
    assert "Fulcio refused the signing-certificate request: HTTP 401: error processing the identity token" \
        in str(err.value)
    assert offline == [] and _keyless_files(built) == []


def test_cli_reports_fulcio_refusal_with_exit_1_and_no_traceback(built, fake_fulcio, offline, monkeypatch,
                                                                 capsys):
    monkeypatch.setenv("SIGSTORE_IDENTITY_TOKEN", fake_jwt())
    monkeypatch.chdir(built)
    code = cli_main(["--cache-dir", str(built.parent / "c"), "build", "--sign", "keyless", TARGET])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "error: " in err and "Fulcio refused the signing-certificate request: HTTP 401" in err
    assert "Traceback" not in err
    assert len(fake_fulcio) == 1 and offline == []
    assert (built / OUT / "manifests/export.json").is_file()  # the (unsigned) build itself succeeded
    assert _keyless_files(built) == []


def test_unreachable_sigstore_is_exit_5(built, offline, monkeypatch):
    monkeypatch.setenv("SIGSTORE_IDENTITY_TOKEN", fake_jwt())
    paths = keyless.keyless_subjects(built / OUT)
    with pytest.raises(NetworkRequired) as err:
        keyless.sign_materialized_keyless(paths, trust=keyless.embedded_trust_config())
    assert err.value.exit_code == 5 and "unreachable" in str(err.value)
    assert offline, "the request must have been attempted (and refused) at the socket layer"


def test_changed_file_is_not_signed(built, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(built / OUT, copy)
    archive = copy / "bundle.tar.gz"
    archive.write_bytes(archive.read_bytes() + b"\0")
    with pytest.raises(VerificationFailed) as err:
        keyless.keyless_subjects(copy)
    assert err.value.exit_code == 3 and "bundle.tar.gz" in str(err.value)


def test_embedded_trust_config_needs_no_network(offline):
    for staging, host in ((False, "sigstore.dev"), (True, "sigstage.dev")):
        cfg = keyless.embedded_trust_config(staging=staging)
        assert host in cfg.signing_config.get_fulcio().url
    assert offline == []
