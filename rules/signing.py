"""Signing wired into the bundle rules: the Exportfile `sign` table, key resolution, one Sign action.

    [targets.json-raw]
    rule = "json_raw"
    sign = { key = "keys/cosign.key" }          # or: sign = {} and STELLA_SIGNING_KEY=path

A target is signed when it has a `sign` table, when `STELLA_SIGNING_KEY` is set (every signable
target), or when the build request says so (`ctx.options.sign`: `build --sign KEY|keyless`). The key is
*referenced*, never embedded: it is resolved and decrypted at ANALYSIS time in the main process, so a
missing key, a missing password or a wrong password fails before any work with exit 4, naming the
Exportfile field. The action gets the key path and password only through `secrets` (never part of the
action key or the cache); its params carry the public key digest, so the key's identity is in the key.

What the Sign action writes next to the bundle (file names shared with rules/verify.py):
    <manifest>.sigstore.json            Sigstore bundle v0.3, messageSignature over manifests/export.json
    <archive>.sigstore.json             the same over the archive (bundle.tar.gz)
    manifests/provenance.dsse.json      DSSE envelope over manifests/provenance.json (in-toto Statement)
    manifests/provenance.sigstore.json  the same envelope as a Sigstore bundle (dsseEnvelope)
    signatures/manifest.sig             legacy base64 DER signature over manifests/export.json
    signatures/export.sig               legacy base64 DER signature over the archive
    cosign.pub                          the public key (PEM SubjectPublicKeyInfo)
Every signature is RFC 6979 deterministic, so a signed bundle is byte-reproducible.
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stella_build.engine.rule_api import canonical_json
from stella_build.engine.rule_api import file_sha256
from stella_build.engine.rule_api import TrustMaterialMissing
from stella_build.engine.rule_api import ActionContext, ActionError, AnalysisContext, Artifact, PostBuild
from stella_build.rules.formats.bundle import PUBLIC_KEY_FILE, PROVENANCE_DSSE, PROVENANCE_SIGSTORE, SIGSTORE_SUFFIX, DEFAULT_SIG_NAMES

SIGN_RULE_VERSION = "1"
KEY_ENV = "STELLA_SIGNING_KEY"
KEYLESS = "keyless-sign"  # PostBuild kind: Sigstore keyless signing of the materialized outputs
DEFAULT_PASSWORD_ENV = "COSIGN_PASSWORD"


class SignParams(BaseModel):
    """Exportfile `sign = { ... }`: how to sign this target's bundle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = Field(
        None, description="path of a cosign.key (ENCRYPTED SIGSTORE PRIVATE KEY), workspace-relative or "
                          "absolute; default: $STELLA_SIGNING_KEY. Never embed key material here.")
    password_env: str = Field(DEFAULT_PASSWORD_ENV, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                              description="environment variable holding the key's password")
    keyless: bool = Field(False, description="sign keyless (Fulcio + Rekor via sigstore-python); "
                                             "needs the network and an OIDC identity")

    @model_validator(mode="after")
    def _one_mode(self) -> "SignParams":
        if self.keyless and self.key:
            raise ValueError("give either 'key' or 'keyless = true', not both")
        return self


@dataclass(frozen=True)
class Signer:
    """A signing key resolved at analysis. `password` and `key_path` only ever travel as secrets."""

    key_path: Path
    password: str = field(repr=False)
    public_key_sha256: str  # hex sha256 of the DER SubjectPublicKeyInfo
    source: str             # where the key came from, for messages

    def provenance_params(self) -> dict:
        """What the bundle's provenance records about the signer (no secret, no path)."""
        return {"publicKeySha256": self.public_key_sha256, "signVersion": SIGN_RULE_VERSION}


# -- resolution at analysis -------------------------------------------------------------------

_LOADED: dict[tuple[str, str, int, int], str] = {}  # (path, password, mtime_ns, size) → pubkey digest


def _key_fingerprint(path: Path, password: str, *, field: str | None, source: str) -> str:
    """Decrypt the key once per process (scrypt is slow) and return its public key digest."""
    from stella_build.rules.formats.keys import SigningKeyError, load_private_key, public_key_digest

    st = path.stat()
    memo = (str(path), password, st.st_mtime_ns, st.st_size)
    if memo in _LOADED:
        return _LOADED[memo]
    try:
        key = load_private_key(path.read_bytes(), password.encode("utf-8"), what=str(path))
    except SigningKeyError as exc:
        raise TrustMaterialMissing(f"signing key from {source} is not usable: {exc}", field=field, reason="signing-key-unusable") from None
    from cryptography.hazmat.primitives.asymmetric import ec
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
        raise TrustMaterialMissing(
            f"signing key {path} is a {type(key).__name__}: stella-build signs with ECDSA P-256 keys "
            "(`stella-build keys generate` or `cosign generate-key-pair`)", field=field, reason="signing-key-unsupported")
    _LOADED[memo] = public_key_digest(key)
    return _LOADED[memo]


def _keyless(ctx: AnalysisContext, field: str | None, source: str) -> None:
    """Keyless signing is never a hermetic action (it needs the network and is not reproducible):
    ask the caller to sign this target's materialized outputs after the build; the caller checks,
    before any action runs, that an identity is available (exit 4 otherwise)."""
    ctx.post_build(PostBuild(kind=KEYLESS, source=source, field=field))


def resolve_signer(ctx: AnalysisContext, sign: SignParams | None) -> Signer | None:
    """The signer of this target, or None for an unsigned build. Raises TrustMaterialMissing (exit 4).

    Precedence: `--sign` on the command line, then the target's `sign` table, then STELLA_SIGNING_KEY.
    """
    cli = (ctx.options.sign or "").strip()
    env_key = os.environ.get(KEY_ENV, "").strip()
    password_env = sign.password_env if sign else DEFAULT_PASSWORD_ENV
    if cli == "keyless":
        _keyless(ctx, None, "--sign keyless")
        return None  # signed after the build (PostBuild)
    if cli:
        path, source, field = Path(cli).expanduser(), f"--sign {cli}", None
    elif sign is not None and sign.keyless:
        _keyless(ctx, "sign.keyless", "sign.keyless = true")
        return None  # signed after the build (PostBuild)
    elif sign is not None and sign.key:
        path, source, field = Path(sign.key).expanduser(), f"sign.key = {sign.key!r}", "sign.key"
        if not path.is_absolute():
            path = ctx.workspace.root / path
    elif env_key:
        path, source, field = Path(env_key).expanduser(), f"{KEY_ENV}={env_key}", None
    elif sign is not None:
        raise TrustMaterialMissing(f"the target has a `sign` table but no key: set sign.key, or "
                                   f"{KEY_ENV} to the path of a cosign.key", field="sign.key", reason="signing-key-missing")
    else:
        return None
    path = path.resolve()
    if not path.is_file():
        raise TrustMaterialMissing(f"signing key {path} (from {source}) does not exist", field=field, reason="signing-key-missing")
    if path.read_bytes()[:64].lstrip().startswith(b"-----BEGIN PUBLIC KEY-----"):
        raise TrustMaterialMissing(f"signing key {path} (from {source}) is a public key: signing needs "
                                   "the private cosign.key", field=field, reason="signing-key-unusable")
    password = os.environ.get(password_env)
    if password is None:
        raise TrustMaterialMissing(f"{password_env} is not set: it must hold the password of the signing "
                                   f"key {path} (from {source})", field=field and "sign.password_env", reason="signing-password-missing")
    digest = _key_fingerprint(path, password, field=field, source=source)
    return Signer(key_path=path, password=password, public_key_sha256=digest, source=source)


# -- declaring the Sign action ---------------------------------------------------------------

ArtifactRef = Artifact | tuple[Artifact, str]  # a file artifact, or (tree artifact, path inside it)


def _ref(ref: ArtifactRef) -> tuple[Artifact, str]:
    return ref if isinstance(ref, tuple) else (ref, "")


# Output roles per signed input role (the manifest is always signed, with the public key beside it).
ROLE_OUTPUTS = {"manifest": ("manifest_bundle", "manifest_sig", "public_key"),
                "archive": ("archive_bundle", "archive_sig"),
                "provenance": ("provenance_dsse", "provenance_bundle")}


def sign_outputs(manifest_path: str, archive_name: str, sig_names: dict[str, str] | None = None) -> dict[str, str]:
    """Role → bundle-relative file name of every file the Sign action writes."""
    sig_names = {**DEFAULT_SIG_NAMES, **(sig_names or {})}
    return {"manifest_bundle": manifest_path + SIGSTORE_SUFFIX,
            "archive_bundle": archive_name + SIGSTORE_SUFFIX,
            "provenance_dsse": PROVENANCE_DSSE, "provenance_bundle": PROVENANCE_SIGSTORE,
            "manifest_sig": sig_names["manifest"], "archive_sig": sig_names["archive"],
            "public_key": PUBLIC_KEY_FILE}


def add_signing(ctx: AnalysisContext, signer: Signer | None, *, manifest: ArtifactRef,
                archive: ArtifactRef | None, provenance: ArtifactRef | None,
                manifest_path: str = "manifests/export.json",
                archive_name: str = "bundle.tar.gz",
                sig_names: dict[str, str] | None = None,
                names: dict[str, str] | None = None) -> dict[str, Artifact]:
    """Declare the one `Sign` action of a bundle; returns {bundle-relative path: artifact} to merge
    into the target's outputs (empty when `signer` is None, so unsigned outputs are unchanged).

    `manifest`, `archive`, `provenance` are file artifacts or (tree artifact, path inside the tree);
    `archive`/`provenance` may be None (e.g. a mirror delta signs only its manifest.diff.json).
    `names` overrides output names per role (see `sign_outputs`), e.g. to keep them in one folder."""
    if signer is None:
        return {}
    refs = {"manifest": manifest, "archive": archive, "provenance": provenance}
    wanted = {out for role, ref in refs.items() if ref is not None for out in ROLE_OUTPUTS[role]}
    names = {role: name for role, name in {**sign_outputs(manifest_path, archive_name, sig_names),
                                            **(names or {})}.items() if role in wanted}
    inputs: dict[str, Artifact] = {}
    roles: dict[str, dict] = {}
    for role, ref in refs.items():
        if ref is None:
            continue
        art, inner = _ref(ref)
        if inner:  # stage just that file, not the whole tree
            art, inner = art.child(inner), ""
        name = next((n for n, a in inputs.items() if a == art), f"in-{role}")
        inputs[name] = art
        roles[role] = {"input": name, "path": inner}
    spec = ctx.action(
        mnemonic="Sign", fn=sign_bundle, inputs=inputs,
        outputs=sorted(names.values()),
        params={"sign_version": SIGN_RULE_VERSION, "public_key_sha256": signer.public_key_sha256,
                "roles": roles, "names": names},
        secrets={"key_path": str(signer.key_path), "password": signer.password})
    return {path: spec.out(path) for path in names.values()}


# -- the action ---------------------------------------------------------------------------------

def _role_path(actx: ActionContext, role: dict) -> Path:
    base = actx.input(role["input"])
    return base / role["path"] if role["path"] else base


def _file_sha256(path: Path) -> bytes:
    return bytes.fromhex(file_sha256(path))


def sign_bundle(actx: ActionContext) -> dict:
    """Write every signature file of one bundle (see the module docstring)."""
    from stella_build.rules.formats import signing
    from stella_build.rules.formats.keys import SigningKeyError, encode_public_key, load_private_key, public_key_digest

    p, names = actx.params, actx.params["names"]
    try:
        key_path, password = actx.secrets["key_path"], actx.secrets["password"]
    except KeyError:
        raise ActionError("the Sign action ran without its key (secrets are never cached or sent to "
                          "a remote executor)") from None
    try:
        key = load_private_key(Path(key_path).read_bytes(), password.encode("utf-8"), what=key_path)
    except (OSError, SigningKeyError) as exc:
        raise ActionError(f"cannot load the signing key: {exc}", file=key_path) from None
    if public_key_digest(key) != p["public_key_sha256"]:
        raise ActionError("the signing key changed between analysis and signing", file=key_path)

    manifest = _role_path(actx, p["roles"]["manifest"]).read_bytes()
    out = {"manifest_bundle": signing.sign_blob_sigstore_bundle(manifest, key),
           "manifest_sig": signing.legacy_signature(manifest, key),
           "public_key": encode_public_key(key.public_key())}
    if "archive" in p["roles"]:
        archive_digest = _file_sha256(_role_path(actx, p["roles"]["archive"]))
        out["archive_bundle"] = signing.sign_digest_sigstore_bundle(archive_digest, key)
        out["archive_sig"] = signing.legacy_signature_digest(archive_digest, key)
    if "provenance" in p["roles"]:
        provenance = _role_path(actx, p["roles"]["provenance"]).read_bytes()
        attestation = signing.sign_attestation_bundle(json.loads(provenance), key)
        envelope = json.loads(attestation)["dsseEnvelope"]
        if base64.b64decode(envelope["payload"]) != provenance:
            raise ActionError("provenance is not canonical JSON, so its DSSE payload would differ from "
                              "the file", file=p["roles"]["provenance"]["path"] or None)
        out["provenance_dsse"] = canonical_json.dumps(envelope)
        out["provenance_bundle"] = attestation
    for role, data in out.items():
        actx.write_output(names[role], data)
    return {"signature_files": len(out)}
