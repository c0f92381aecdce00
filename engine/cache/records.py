"""Action-cache result records: their shape, their check against the action's declared outputs,
and their authentication when they travel through a shared remote cache.

A result record is `{"outputs": [{path, blake3, sha256, size, mode}, ...], "stats": {...},
"action": id}`. Whoever can write a record under an action key chooses which blobs that action
"produced", so every record is checked before it is used (`outputs_problem`), whether it comes
from the remote or from the local index, and remote records can be signed by a writer key and
accepted only from keys the reader trusts (`RecordSigner`, `TrustedKeys`).

What a signature covers: a domain-separation prefix plus the canonical JSON of
`{"action_key": <64 hex>, "record": {"action", "outputs", "stats"}}`, so a signed record cannot be
replayed under another action key, and no field that is used can be changed. What it does not
cover: that the writer computed the outputs honestly; a trusted writer key is as powerful as the
release signing key for anything built from the cache (docs/remote-cache.md, threat model).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

from stella_build.engine.encode import canonical_json
from stella_build.engine.errors import TrustMaterialMissing

_HEX64 = re.compile(r"[0-9a-f]{64}")
_BAD_SEGMENT = frozenset({"", ".", ".."})
_OUTPUT_FIELDS = frozenset({"path", "blake3", "sha256", "size", "mode"})
_MODES = (0o644, 0o755)          # what the sandbox records (executable bit or not), nothing else
_WIRE_FIELDS = frozenset({"outputs", "stats", "action", "signature"})
SIGNATURE_DOMAIN = b"stella-build remote action-cache record v1\n"

# Where a local index entry came from (result["origin"]): executed here, or adopted from a remote
# (then result["signed_by"] is the trusted key id that authenticated it, or None).
ORIGIN_LOCAL = "local"
ORIGIN_REMOTE = "remote"


# ---- shape and declared outputs ----------------------------------------------------------------

def _path_ok(path: Any) -> bool:
    """A normalized relative POSIX path: no empty, `.` or `..` segment, no leading or trailing
    slash, no backslash or NUL (it is joined under the sandbox and stella-out/)."""
    if type(path) is not str or not path or "\\" in path or "\0" in path:
        return False
    return _BAD_SEGMENT.isdisjoint(path.split("/"))


def _output_problem(out: Any) -> str | None:
    if type(out) is not dict or out.keys() != _OUTPUT_FIELDS:
        return "an output entry does not have exactly the fields path, blake3, sha256, size, mode"
    if not _path_ok(out["path"]):
        return f"output path {out['path']!r} is not a normalized relative path"
    for digest in ("blake3", "sha256"):
        if type(out[digest]) is not str or not _HEX64.fullmatch(out[digest]):
            return f"output {out['path']!r}: {digest} is not 64 lowercase hex characters"
    size = out["size"]
    if type(size) is not int or size < 0:  # bool is an int subclass: refuse it explicitly
        return f"output {out['path']!r}: size {size!r} is not a non-negative integer"
    if type(out["mode"]) is not int or out["mode"] not in _MODES:
        return f"output {out['path']!r}: mode {out['mode']!r} is not 0644 or 0755"
    return None


def shape_problem(outputs: Any) -> str | None:
    """Why `outputs` is not a well-formed output list (whatever the action declared), or None."""
    if not isinstance(outputs, list):
        return "outputs is not a list"
    seen: set[str] = set()
    for out in outputs:
        problem = _output_problem(out)
        if problem:
            return problem
        if out["path"] in seen:
            return f"output {out['path']!r} is listed twice"
        seen.add(out["path"])
    return None


def outputs_problem(outputs: Any, declared: Iterable[str]) -> str | None:
    """Why `outputs` (a record's output list) cannot be the result of an action declaring
    `declared` (names; a trailing "/" declares a tree), or None when it can.

    Exactly the declared files, each once; tree members only under their declared prefix (a
    tree may be empty); normalized paths; well-formed digests, sizes and modes. Cheap: it runs on
    every cache hit."""
    problem = shape_problem(outputs)
    if problem is not None:
        return problem
    declared = list(declared)
    files = {d for d in declared if not d.endswith("/")}
    # A normalized path never ends in "/", so starting with "t/" means strictly inside tree t/.
    trees = tuple(d for d in declared if d.endswith("/"))
    seen: set[str] = set()
    for out in outputs:
        path = out["path"]
        seen.add(path)
        if path not in files and not path.startswith(trees):
            return f"output {path!r} was not declared by the action"
    missing = sorted(files - seen)
    if missing:
        return f"declared output {missing[0]!r} is missing"
    return None


_HEX128 = re.compile(r"[0-9a-f]{128}")


def _outputs_ok(outputs: Any, declared: Iterable[str]) -> bool:
    """True only when `outputs_problem(outputs, declared)` is None: the same conditions in one
    loop, one regex per output and no messages (it runs on every cache hit; ~2 µs where the
    explaining check takes ~5). False sends the caller to `outputs_problem` for the reason."""
    if type(outputs) is not list:
        return False
    files = set()
    trees = []
    for d in declared:
        if d.endswith("/"):
            trees.append(d)
        else:
            files.add(d)
    trees = tuple(trees)
    seen: set[str] = set()
    for out in outputs:
        if type(out) is not dict or out.keys() != _OUTPUT_FIELDS:
            return False
        path, b3, sha, size, mode = out["path"], out["blake3"], out["sha256"], out["size"], out["mode"]
        if (type(path) is not str or type(b3) is not str or type(sha) is not str
                or type(size) is not int or type(mode) is not int or size < 0 or mode not in _MODES
                or not path or "\\" in path or "\0" in path or path in seen
                or not _BAD_SEGMENT.isdisjoint(path.split("/"))
                or len(b3) != 64 or not _HEX128.fullmatch(b3 + sha)
                or (path not in files and not path.startswith(trees))):
            return False
        seen.add(path)
    return files <= seen


def result_problem(result: Any, declared: Iterable[str]) -> str | None:
    """`outputs_problem` for a whole local index entry (a dict with "outputs")."""
    if not isinstance(result, dict):
        return "the entry is not an object"
    outputs = result.get("outputs")
    if _outputs_ok(outputs, declared):
        return None
    return outputs_problem(outputs, declared)


def vouchable(result: dict) -> bool:
    """Whether this machine can vouch for a local entry: it executed the action, or a trusted key
    signed the remote record it was adopted from. Entries without an origin (written before
    origins were recorded) or adopted unauthenticated are not."""
    origin = result.get("origin")
    return origin == ORIGIN_LOCAL or (origin == ORIGIN_REMOTE and bool(result.get("signed_by")))


# ---- the wire form ---------------------------------------------------------------------------

MAX_WIRE_BYTES = 64 << 20  # result records are small; the transport caps them too


def _core(result: dict) -> dict:
    return {"action": result.get("action"), "outputs": result["outputs"],
            "stats": result.get("stats") or {}}


def signed_message(action_key: str, result: dict) -> bytes:
    """The bytes a writer signs for `result` under `action_key` (see the module docstring)."""
    return SIGNATURE_DOMAIN + canonical_json.dumps({"action_key": action_key, "record": _core(result)})


def to_wire(action_key: str, result: dict, signer: "RecordSigner | None" = None) -> bytes:
    """The AC value sent to the remote: action, outputs, stats (no local paths, no origin), plus
    a signature when a writer key is configured."""
    body: dict[str, Any] = _core(result)
    if signer is not None:
        body["signature"] = signer.sign(action_key, result)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def from_wire(raw: bytes) -> tuple[dict, dict | None] | None:
    """(record {action, outputs, stats}, signature or None) of a remote AC value, or None when it
    is not a record at all (wrong JSON shape, unknown fields, a stats value with no canonical form).
    Outputs are checked against the action later (`outputs_problem`)."""
    if len(raw) > MAX_WIRE_BYTES:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: not a record
        return None
    if not isinstance(data, dict) or not set(data) <= _WIRE_FIELDS or "outputs" not in data:
        return None
    stats = data.get("stats") or {}
    action = data.get("action")
    signature = data.get("signature")
    if not isinstance(stats, dict) or not (action is None or isinstance(action, str)):
        return None
    if signature is not None and not (isinstance(signature, dict)
                                      and set(signature) == {"alg", "keyid", "sig"}
                                      and all(isinstance(v, str) for v in signature.values())):
        return None
    record = {"action": action, "outputs": data["outputs"], "stats": stats}
    try:
        canonical_json.dumps(record)
    except (canonical_json.CanonicalJSONError, ValueError):
        return None
    return record, signature


# ---- keys --------------------------------------------------------------------------------------

def _key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _algorithm(key: Any) -> str | None:
    """"ed25519" or "ecdsa-p256-sha256" for a supported (private or public) key, else None."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) \
            and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256-sha256"
    return None


class RecordSigner:
    """A writer key (Ed25519 or ECDSA P-256, unencrypted PEM) that signs AC records on upload."""

    def __init__(self, private_key: Any, source: str = "") -> None:
        self._key = private_key
        self.alg = _algorithm(private_key)
        if self.alg is None:
            raise TrustMaterialMissing(f"remote cache signing key {source} is not Ed25519 or ECDSA P-256",
                                       file=source or None, field="--remote-cache-sign-key",
                                       reason="remote-cache-key-unusable")
        self.public_key = private_key.public_key()
        self.keyid = _key_id(self.public_key)

    @classmethod
    def from_file(cls, path: str | Path) -> "RecordSigner":
        """Load a PEM private key. Raises TrustMaterialMissing (exit 4) with reason
        `remote-cache-key-missing` or `remote-cache-key-unusable` naming the file."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization

        path = str(path)
        data = _read_key_file(path, "--remote-cache-sign-key")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise TrustMaterialMissing(f"remote cache signing key {path} is encrypted; it must be an "
                                       "unencrypted PEM (keep it as a CI secret file)", file=path,
                                       field="--remote-cache-sign-key",
                                       reason="remote-cache-key-unusable") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise TrustMaterialMissing(f"remote cache signing key {path} is not a PEM private key: {exc}",
                                       file=path, field="--remote-cache-sign-key",
                                       reason="remote-cache-key-unusable") from None
        return cls(key, path)

    def sign(self, action_key: str, result: dict) -> dict[str, str]:
        """{"alg", "keyid", "sig" (base64)} over `signed_message(action_key, result)`."""
        message = signed_message(action_key, result)
        if self.alg == "ed25519":
            sig = self._key.sign(message)
        else:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import ec
            sig = self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        return {"alg": self.alg, "keyid": self.keyid, "sig": base64.b64encode(sig).decode("ascii")}


class TrustedKeys:
    """The public keys whose AC records a reader accepts, by key id (sha256 of the DER SPKI)."""

    def __init__(self, public_keys: Iterable[Any] = ()) -> None:
        self._keys: dict[str, tuple[str, Any]] = {}
        for key in public_keys:
            self.add(key)

    def add(self, public_key: Any, source: str = "") -> None:
        alg = _algorithm(public_key)
        if alg is None:
            raise TrustMaterialMissing(f"remote cache trust key {source} is not Ed25519 or ECDSA P-256",
                                       file=source or None, field="--remote-cache-trust",
                                       reason="remote-cache-key-unusable")
        self._keys[_key_id(public_key)] = (alg, public_key)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> "TrustedKeys":
        """Load PEM public keys (SubjectPublicKeyInfo, e.g. `openssl pkey -pubout`, a cosign.pub).
        Raises TrustMaterialMissing (exit 4) naming the file."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization

        trusted = cls()
        for path in paths:
            path = str(path)
            data = _read_key_file(path, "--remote-cache-trust")
            try:
                key = serialization.load_pem_public_key(data)
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise TrustMaterialMissing(f"remote cache trust key {path} is not a PEM public key: {exc}",
                                           file=path, field="--remote-cache-trust",
                                           reason="remote-cache-key-unusable") from None
            trusted.add(key, path)
        return trusted

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __contains__(self, keyid: object) -> bool:
        return keyid in self._keys

    @property
    def keyids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, action_key: str, record: dict, signature: dict | None) -> str | None:
        """The key id that signed `record` under `action_key`, when it is a trusted key and the
        signature is valid; None otherwise (unsigned, unknown key, wrong algorithm, bad signature)."""
        from cryptography.exceptions import InvalidSignature

        if not signature or signature.get("keyid") not in self._keys:
            return None
        alg, key = self._keys[signature["keyid"]]
        if signature.get("alg") != alg:
            return None
        try:
            sig = base64.b64decode(signature["sig"], validate=True)
            message = signed_message(action_key, record)
            if alg == "ed25519":
                key.verify(sig, message)
            else:
                from cryptography.hazmat.primitives import hashes
                from cryptography.hazmat.primitives.asymmetric import ec
                key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError, TypeError):
            return None
        return signature["keyid"]


def _read_key_file(path: str, field: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise TrustMaterialMissing(f"remote cache key {path} does not exist", file=path, field=field,
                                   reason="remote-cache-key-missing") from None
    except OSError as exc:
        raise TrustMaterialMissing(f"remote cache key {path} cannot be read: {exc.strerror}", file=path,
                                   field=field, reason="remote-cache-key-missing") from None


# ---- `cache verify` ----------------------------------------------------------------------------

def drop_bad_results(index: Any) -> list[dict]:
    """Find and delete local AC entries that could never be served: not an object, or outputs
    that do not match the declared outputs of the action's stored key record (without a key
    record: malformed outputs). `index` is an engine.cache.index.Index.
    → [{"key", "action", "problem"}] of the deleted entries."""
    bad = []
    for key, result, _used in index.all_results():
        stored = index.get_key_record(key)
        declared = stored.get("outputs") if isinstance(stored, dict) else None
        if isinstance(declared, list) and all(isinstance(d, str) for d in declared):
            problem = result_problem(result, declared)
        elif not isinstance(result, dict):
            problem = "the entry is not an object"
        else:
            problem = shape_problem(result.get("outputs"))
        if problem is not None:
            bad.append({"key": key, "action": result.get("action") if isinstance(result, dict) else None,
                        "problem": problem})
    if bad:
        index.delete_results([b["key"] for b in bad])
    return bad
