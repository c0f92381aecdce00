"""Sigstore keyless signing (Fulcio certificate + Rekor entry) of materialized bundles, after the build.

Keyless signing needs the network and an OIDC identity, and its output (an ephemeral key, a
short-lived certificate, a log entry with a timestamp) is never byte-reproducible. So it is not an
action: the hermetic build runs unsigned, and `stella-build build --sign keyless` (or a target with
`sign = { keyless = true }`) then signs the finished files in the main process:

1. analysis records a `PostBuild(kind="keyless-sign")` request on the target; before any action runs
   the caller calls `require_keyless_ready` (no network), which checks that sigstore-python is
   installed and an ambient OIDC identity is visible, else exit 4;
2. after a successful build, `sign_outputs_keyless` signs, for each output directory, the files
   named as subjects in `manifests/provenance.json` (manifest and archive: `messageSignature`
   bundles) and the provenance statement itself (`dsseEnvelope` bundle), writing
   `<file>.keyless.sigstore.json` next to each file. These names are outside the manifest and the
   golden digests, and do not collide with the reproducible key-signed `<file>.sigstore.json`.

sigstore-python (`pip install stella-build[keyless]`) is imported lazily: the product works without it.
Exit codes (design §6): 4 no usable identity or sigstore-python missing · 5 Fulcio, Rekor or the TUF
trust root unreachable · 1 a Sigstore service answered with an error · 3 a file changed since the build.
"""
from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import shutil
import json
import os
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

from stella_build.engine.encode.digest import file_sha256
from stella_build.engine.errors import (BuildFailed, NetworkRequired, TrustMaterialMissing,
                                        VerificationFailed)

KEYLESS_SUFFIX = ".keyless.sigstore.json"
TOKEN_ENV = "SIGSTORE_IDENTITY_TOKEN"  # the variable `python -m sigstore sign` reads as well
PROVENANCE = "manifests/provenance.json"
PRODUCTION_TUF = "https://tuf-repo-cdn.sigstore.dev"
STAGING_TUF = "https://tuf-repo-cdn.sigstage.dev"
HOW_TO_GET_AN_IDENTITY = (
    "in GitHub Actions give the job `permissions: id-token: write`; in GitLab CI declare "
    "`id_tokens: SIGSTORE_ID_TOKEN: aud: sigstore`; elsewhere set SIGSTORE_IDENTITY_TOKEN to an OIDC "
    "token with audience 'sigstore'")

# -- before the build: is keyless possible here? (never touches the network) ----------------------

def require_keyless_ready(*, source: str, field: str | None) -> None:
    """Raise TrustMaterialMissing (exit 4, reason `keyless-unavailable`) unless keyless signing could
    run here."""
    ok, why = keyless_available()
    if not ok:
        raise TrustMaterialMissing(
            f"keyless signing requested ({source}) but not possible here: {why}. To get an identity: "
            f"{HOW_TO_GET_AN_IDENTITY}. Or use a key (sign = {{ key = \"cosign.key\" }} or "
            "STELLA_SIGNING_KEY), see docs/signing.md", field=field, reason="keyless-unavailable")


# -- identity and trust ---------------------------------------------------------------------------

def identity_token() -> Any:
    """The ambient OIDC identity as a `sigstore.oidc.IdentityToken`; TrustMaterialMissing if none.

    SIGSTORE_IDENTITY_TOKEN wins; otherwise sigstore's detectors (GitHub Actions fetches a token from
    ACTIONS_ID_TOKEN_REQUEST_URL, GitLab reads SIGSTORE_ID_TOKEN, GCP, Buildkite, CircleCI)."""
    from sigstore.oidc import IdentityError, IdentityToken, detect_credential

    raw, source = os.environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
    if not raw:
        source = "the CI provider"
        try:
            raw = detect_credential() or ""
        except IdentityError as exc:
            raise TrustMaterialMissing(f"keyless signing: no OIDC identity from the CI provider: "
                                       f"{_first_line(exc)}. {HOW_TO_GET_AN_IDENTITY}") from None
    if not raw:
        raise TrustMaterialMissing(f"keyless signing: no OIDC identity available: {HOW_TO_GET_AN_IDENTITY}")
    try:
        return IdentityToken(raw)
    except IdentityError as exc:
        raise TrustMaterialMissing(f"keyless signing: the OIDC token from {source} is not usable: {exc} "
                                   "(it must be a JWT with iss, sub, iat, exp and aud 'sigstore', "
                                   "not expired)") from None


def trust_config(*, staging: bool = False) -> Any:
    """The Sigstore public-good ClientTrustConfig, refreshed over TUF (needs the network)."""
    from sigstore.errors import Error
    from sigstore.models import ClientTrustConfig

    try:
        return ClientTrustConfig.staging() if staging else ClientTrustConfig.production()
    except Error as exc:
        raise NetworkRequired(f"keyless signing: cannot refresh the Sigstore trust root over TUF "
                              f"({STAGING_TUF if staging else PRODUCTION_TUF}): {_first_line(exc)}") from None


def embedded_trust_config(*, staging: bool = False) -> Any:
    """The trust root and signing config shipped inside sigstore-python, without TUF or network.
    Unrefreshed (it may be stale): for tests and air-gapped inspection, not for production signing."""
    from sigstore.models import ClientTrustConfig

    base = importlib.resources.files("sigstore") / "_store" / quote(STAGING_TUF if staging else PRODUCTION_TUF,
                                                                    safe="")
    doc = {"mediaType": ClientTrustConfig.ClientTrustConfigType.CONFIG_0_1.value,
           "trustedRoot": json.loads((base / "trusted_root.json").read_text()),
           "signingConfig": json.loads((base / "signing_config.v0.2.json").read_text())}
    return ClientTrustConfig.from_json(json.dumps(doc))


# -- signing --------------------------------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _http_detail(exc: BaseException) -> str:
    """'HTTP 401: <server message>' from the requests.HTTPError behind a sigstore client error."""
    import requests

    cause = exc if isinstance(exc, requests.HTTPError) else exc.__cause__
    response = getattr(cause, "response", None)
    if response is None:
        return _first_line(exc)
    try:
        message = response.json().get("message", "")
    except ValueError:
        message = response.text[:200]
    return f"HTTP {response.status_code}" + (f": {message}" if message else "")


@contextlib.contextmanager
def _sigstore_errors(what: str, file: str | None = None) -> Iterator[None]:
    """Turn sigstore/requests exceptions into the CLI's errors (clear message, no traceback)."""
    import requests
    from sigstore._internal.fulcio.client import ExpiredCertificate, FulcioClientError
    from sigstore._internal.rekor import RekorClientError
    from sigstore.errors import Error
    from sigstore.oidc import ExpiredIdentity

    try:
        yield
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise NetworkRequired(f"keyless signing of {what}: a Sigstore service is unreachable "
                              f"({_first_line(exc)}); keyless signing needs the network") from None
    except FulcioClientError as exc:
        raise BuildFailed(f"keyless signing of {what}: Fulcio refused the signing-certificate request: "
                          f"{_http_detail(exc)}", file=file) from None
    except RekorClientError as exc:
        raise BuildFailed(f"keyless signing of {what}: Rekor refused the log entry: {_http_detail(exc)}",
                          file=file) from None
    except (ExpiredIdentity, ExpiredCertificate) as exc:
        raise TrustMaterialMissing(f"keyless signing of {what}: the OIDC identity or its certificate "
                                   f"expired ({type(exc).__name__}); get a fresh token") from None
    except (Error, requests.RequestException) as exc:
        raise BuildFailed(f"keyless signing of {what} failed: {_first_line(exc)}", file=file) from None


def _file_sha256(path: Path) -> bytes:
    return bytes.fromhex(file_sha256(path))


def _is_statement(data: bytes) -> bool:
    from stella_build.rules.formats.signing import STATEMENT_TYPES

    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("_type") in STATEMENT_TYPES


def sign_materialized_keyless(paths: list[Path], *, staging: bool = False, trust: Any = None,
                              token: Any = None) -> list[Path]:
    """Sign each file keyless and write `<file>.keyless.sigstore.json`; return the written paths.

    An in-toto Statement is signed as a DSSE envelope (`sign_dsse`, payload = the file's exact bytes);
    any other file as a `messageSignature` over its SHA-256 (`sign_artifact`). One Fulcio certificate
    (one ephemeral key) signs them all. `trust` defaults to the TUF-refreshed public-good instance."""
    if not paths:
        return []
    from sigstore import dsse
    from sigstore.hashes import Hashed
    from sigstore.sign import SigningContext
    from sigstore_models.common.v1 import HashAlgorithm

    token = token if token is not None else identity_token()
    trust = trust if trust is not None else trust_config(staging=staging)
    written: list[Path] = []
    with _sigstore_errors(f"{len(paths)} file(s) under {os.path.commonpath([str(p) for p in paths])}"):
        context = SigningContext.from_trust_config(trust)
        with context.signer(token, cache=True) as signer:  # one certificate request for every file
            for path in paths:
                with _sigstore_errors(str(path), file=str(path)):
                    data = path.read_bytes() if path.suffix == ".json" else None
                    if data is not None and _is_statement(data):
                        bundle = signer.sign_dsse(dsse.Statement(data))
                    else:
                        bundle = signer.sign_artifact(
                            Hashed(algorithm=HashAlgorithm.SHA2_256, digest=_file_sha256(path)))
                out = path.with_name(path.name + KEYLESS_SUFFIX)
                out.write_text(bundle.to_json(), encoding="utf-8")
                written.append(out)
    return written


def keyless_subjects(bundle_dir: Path) -> list[Path]:
    """The files of a materialized bundle to sign keyless: the provenance subjects (manifest, archive;
    names relative to the bundle directory) and the provenance statement (`manifests/provenance.json`,
    else the first `provenance.json` one level down). Refuses (exit 3) a file whose digest changed."""
    found = [bundle_dir / PROVENANCE, *sorted(bundle_dir.glob("provenance.json")),
             *sorted(bundle_dir.glob("*/provenance.json"))]
    prov = next((p for p in found if p.is_file()), bundle_dir / PROVENANCE)
    try:
        statement = json.loads(prov.read_bytes())
        subjects = [(s["name"], s["digest"]["sha256"]) for s in statement["subject"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildFailed(f"cannot sign keyless: {prov} is missing or not an in-toto statement ({exc})",
                          file=str(prov)) from None
    files = []
    for name, want in subjects:
        path = bundle_dir / name
        if not path.is_file() or _file_sha256(path).hex() != want:
            raise VerificationFailed(f"cannot sign keyless: {path} does not match the provenance subject "
                                     f"digest sha256:{want} (changed since the build?)", file=str(path))
        files.append(path)
    return files + [prov]


def sign_outputs_keyless(out_dirs: list[Path], *, staging: bool = False) -> list[Path]:
    """Sign the materialized outputs of every target that asked for keyless signing (after a
    successful build); returns the signature files written."""
    paths = [p for out_dir in out_dirs for p in keyless_subjects(out_dir)]
    return sign_materialized_keyless(paths, staging=staging)


def _ambient_oidc() -> str | None:
    """Name of an ambient OIDC identity source visible WITHOUT network (the `id` package's detectors)."""
    env = os.environ
    if env.get("SIGSTORE_IDENTITY_TOKEN"):
        return "SIGSTORE_IDENTITY_TOKEN"
    if env.get("GITHUB_ACTIONS") and env.get("ACTIONS_ID_TOKEN_REQUEST_URL") and env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN"):
        return "GitHub Actions (id-token: write)"
    if env.get("GITLAB_CI") and env.get("SIGSTORE_ID_TOKEN"):
        return "GitLab CI (SIGSTORE_ID_TOKEN)"
    if env.get("BUILDKITE") and shutil.which("buildkite-agent"):
        return "Buildkite agent"
    if env.get("CIRCLECI") and shutil.which("circleci"):
        return "CircleCI"
    if env.get("GOOGLE_SERVICE_ACCOUNT_NAME"):
        return "GCP service account impersonation"
    return None


def keyless_available() -> tuple[bool, str]:
    """Whether keyless (Fulcio/Rekor) signing could run here, and why (never touches the network)."""
    if importlib.util.find_spec("sigstore") is None:
        return False, "sigstore-python is not installed (pip install sigstore)"
    source = _ambient_oidc()
    if source is None:
        return False, ("no ambient OIDC identity (set SIGSTORE_IDENTITY_TOKEN, or run in GitHub Actions "
                       "with id-token: write, or GitLab CI with SIGSTORE_ID_TOKEN)")
    return True, f"sigstore-python installed; OIDC identity from {source} (signing needs the network)"
