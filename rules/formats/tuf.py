"""TUF metadata (root, targets, snapshot, timestamp) over a mirror's files, via python-tuf's Metadata API.

Reproducibility rules:
- Expiry = SOURCE_DATE_EPOCH + a configured duration per role, never the wall clock. python-tuf's
  client (`ngclient`) checks expiry against *now*, so an offline bundle only verifies while
  `epoch + duration` is in the future: long defaults (1 year) are a deliberate trade-off that
  weakens freeze-attack protection; shorten them for online mirrors.
- Signatures are deterministic: Ed25519 is deterministic by construction; ECDSA uses
  `DeterministicEcdsaSigner` (RFC 6979 via cryptography's `deterministic_signing=True`) instead of
  securesystemslib's CryptoSigner, whose ECDSA signatures are randomized.
- Files are canonical JSON (sorted keys, compact); signatures are ordered by keyid.
- `consistent_snapshot` is false: files are `root.json`, `1.root.json`, `targets.json`,
  `snapshot.json`, `timestamp.json`, and targets are fetched by their plain relative path.
- Versions: root is version 1 (no root rotation; a new root means a new trust bootstrap).
  targets, snapshot and timestamp carry the caller's `version`; mirror:full passes
  SOURCE_DATE_EPOCH (`version_for_epoch`), so versions grow with every publication whose epoch
  grows, and equal inputs still give equal bytes. Consumers refuse a mirror whose versions go
  backwards (`mirror apply`: reason `rollback`).
- The root's expiry may be pinned to an absolute time (`root_expires`) so that the root, and so
  the trust anchor, stays byte-identical across builds with different epochs; a delta can only
  be applied when it keeps the base's root.

Private keys come from PEM files (PKCS#8, optionally password-protected); `generate_key` exists for
tests and first-time users. No key is ever embedded.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Sequence
from urllib import parse

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.signer import CryptoSigner, Key, SecretsHandler, Signature, Signer, SSlibKey
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.ngclient import FetcherInterface, Updater

from stella_build.engine.rule_api import canonical_json
from stella_build.engine.rule_api import write_atomic

ROLES = ("root", "targets", "snapshot", "timestamp")
DAY = 86400
DEFAULT_DURATIONS: dict[str, int] = {"root": 365 * DAY, "targets": 365 * DAY, "snapshot": 365 * DAY, "timestamp": 365 * DAY}

_ECDSA_SCHEMES: dict[type[ec.EllipticCurve], tuple[str, hashes.HashAlgorithm]] = {
    ec.SECP256R1: ("ecdsa-sha2-nistp256", hashes.SHA256()),
    ec.SECP384R1: ("ecdsa-sha2-nistp384", hashes.SHA384()),
}


class TufRepoError(ValueError):
    """Bad input for the TUF repository (key file, target path, duration)."""


class DeterministicEcdsaSigner(Signer):
    """securesystemslib Signer producing RFC 6979 deterministic ECDSA signatures (hex DER, like CryptoSigner)."""

    SCHEME = "stella-ecdsa-file"

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, public_key: SSlibKey | None = None) -> None:
        curve = type(private_key.curve)
        if curve not in _ECDSA_SCHEMES:
            raise TufRepoError(f"unsupported ECDSA curve {private_key.curve.name} (use P-256 or P-384)")
        scheme, self._hash = _ECDSA_SCHEMES[curve]
        self._key = private_key
        self._public_key = public_key or SSlibKey.from_crypto(private_key.public_key(), None, scheme)

    @property
    def public_key(self) -> SSlibKey:
        return self._public_key

    def sign(self, payload: bytes) -> Signature:
        der = self._key.sign(payload, ec.ECDSA(self._hash, deterministic_signing=True))
        return Signature(self._public_key.keyid, der.hex())

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key,
                          secrets_handler: SecretsHandler | None = None) -> "DeterministicEcdsaSigner":
        """URI `stella-ecdsa-file:<path to PEM>`; the key must match `public_key`."""
        scheme, _, path = priv_key_uri.partition(":")
        if scheme != cls.SCHEME:
            raise ValueError(f"{cls.__name__} does not support {priv_key_uri}")
        signer = load_signer(Path(path))
        if not isinstance(signer, cls) or signer.public_key.keyval != getattr(public_key, "keyval", None):
            raise ValueError(f"{path}: private key does not match the given public key")
        return signer


def load_signer(path: Path, password: bytes | None = None) -> Signer:
    """Signer for a PEM private key file: Ed25519 → CryptoSigner, ECDSA P-256/384 → deterministic."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TufRepoError(f"cannot read TUF key {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError) as exc:
        raise TufRepoError(f"{path}: not a usable PEM private key ({exc})") from None
    return signer_for_key(key, what=str(path))


def signer_for_key(key: Any, *, what: str = "TUF key") -> Signer:
    """Deterministic Signer for a cryptography private key object (e.g. the cosign key from
    rules/signing_keys.load_private_key): Ed25519 → CryptoSigner, ECDSA P-256/384 → RFC 6979."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return CryptoSigner(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return DeterministicEcdsaSigner(key)
    raise TufRepoError(f"{what}: key type {type(key).__name__} not supported (use Ed25519 or ECDSA P-256)")


def generate_key(path: Path, kind: str = "ed25519", password: bytes | None = None) -> Path:
    """Write a new PKCS#8 PEM private key (mode 0600) and `<path>.pub` (SPKI PEM). Random: not for builds."""
    if kind == "ed25519":
        key: Any = ed25519.Ed25519PrivateKey.generate()
    elif kind in ("ecdsa", "ecdsa-p256"):
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise TufRepoError(f"unknown key kind {kind!r} (ed25519 or ecdsa)")
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    Path(str(path) + ".pub").write_bytes(pub)
    return path


@dataclass
class TufKeys:
    """Signers per top-level role, and thresholds (default 1)."""

    root: list[Signer]
    targets: list[Signer]
    snapshot: list[Signer]
    timestamp: list[Signer]
    thresholds: dict[str, int] = field(default_factory=dict)

    @classmethod
    def single(cls, signer: Signer) -> "TufKeys":
        """One key for every role (simplest offline setup; separate keys are better)."""
        return cls([signer], [signer], [signer], [signer])

    @classmethod
    def from_files(cls, files: Mapping[str, Path | Sequence[Path]], password: bytes | None = None) -> "TufKeys":
        """{role: PEM path or list of paths} for all four roles."""
        missing = [r for r in ROLES if r not in files]
        if missing:
            raise TufRepoError(f"TUF keys: no key file for roles {missing}")
        signers: dict[str, list[Signer]] = {}
        for role in ROLES:
            paths = files[role]
            paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
            signers[role] = [load_signer(Path(p), password) for p in paths]
        return cls(**signers)

    def for_role(self, role: str) -> list[Signer]:
        signers = getattr(self, role)
        if not signers:
            raise TufRepoError(f"TUF keys: role {role!r} has no signer")
        return sorted(signers, key=lambda s: s.public_key.keyid)

    def threshold(self, role: str) -> int:
        t = self.thresholds.get(role, 1)
        if not 1 <= t <= len(self.for_role(role)):
            raise TufRepoError(f"TUF keys: threshold {t} for {role!r} needs 1..{len(self.for_role(role))} keys")
        return t


@dataclass(frozen=True)
class TufRepo:
    """What `build_tuf_repo` wrote: metadata dir, {file name: bytes}, and the bootstrap root bytes."""

    metadata_dir: Path
    files: dict[str, bytes]

    @property
    def root_bytes(self) -> bytes:
        return self.files["1.root.json"]


def _check_target_path(rel: str) -> str:
    p = PurePosixPath(rel)
    if not rel or rel.startswith("/") or "\\" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise TufRepoError(f"TUF target path {rel!r} must be a relative POSIX path without '.'/'..' parts")
    return p.as_posix()


def _target_file(rel: str, source: bytes | Path, custom: Mapping[str, Any] | None) -> TargetFile:
    unrecognized = {"custom": dict(custom)} if custom else None
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        return TargetFile(len(data), {"sha256": hashlib.sha256(data).hexdigest()}, rel, unrecognized)
    path = Path(source)
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        size = path.stat().st_size
    except OSError as exc:
        raise TufRepoError(f"TUF target {rel!r}: cannot read {path}: {exc.strerror or exc}") from None
    return TargetFile(size, {"sha256": digest}, rel, unrecognized)


def _expiry(epoch: int, durations: Mapping[str, int], role: str) -> datetime:
    seconds = int(durations.get(role, DEFAULT_DURATIONS[role]))
    if seconds <= 0:
        raise TufRepoError(f"TUF expiry duration for {role!r} must be positive, got {seconds}")
    return datetime.fromtimestamp(int(epoch) + seconds, tz=timezone.utc)


def version_for_epoch(epoch: int) -> int:
    """The targets/snapshot/timestamp version of a build at SOURCE_DATE_EPOCH `epoch` (seconds):
    the epoch itself (TUF versions are positive integers, so at least 1). Monotonic in the epoch,
    reproducible for equal inputs."""
    return max(1, int(epoch))


def earliest_expiry(epoch: int, durations: Mapping[str, int] | None = None,
                    root_expires: int | None = None) -> int:
    """Unix time at which the first role of a repository built at `epoch` expires (a client
    such as ngclient refuses the whole repository from then on)."""
    durations = dict(durations or {})
    times = {r: int(epoch) + int(durations.get(r, DEFAULT_DURATIONS[r])) for r in ROLES}
    if root_expires is not None:
        times["root"] = int(root_expires)
    return min(times.values())


def _sign(md: Metadata, signers: list[Signer]) -> bytes:
    for s in signers:
        md.sign(s, append=True)
    return canonical_json.dumps(md.to_dict())


def _meta_file(version: int, data: bytes) -> MetaFile:
    return MetaFile(version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()})


def build_tuf_repo(
    out_dir: Path,
    targets: Mapping[str, bytes | Path],
    keys: TufKeys,
    epoch: int,
    durations: Mapping[str, int] | None = None,
    *,
    custom: Mapping[str, Mapping[str, Any]] | None = None,
    version: int = 1,
    root_expires: int | None = None,
) -> TufRepo:
    """Write signed TUF metadata for `targets` ({relative path: bytes or file}) into `out_dir`.

    `epoch` is SOURCE_DATE_EPOCH; `durations` are seconds per role (defaults DEFAULT_DURATIONS).
    `custom` optionally attaches a `custom` object to individual targets (e.g. media types).
    `version` (>= 1) is the version of targets, snapshot and timestamp (root stays version 1);
    `root_expires` (unix seconds, after `epoch`) pins the root's expiry instead of
    `epoch + durations["root"]`.
    """
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TufRepoError(f"TUF version must be a positive integer, got {version!r}")
    if root_expires is not None and int(root_expires) <= int(epoch):
        raise TufRepoError(f"TUF root expiry {root_expires} is not after SOURCE_DATE_EPOCH {epoch}")
    durations = dict(durations or {})
    unknown = set(durations) - set(ROLES)
    if unknown:
        raise TufRepoError(f"TUF durations for unknown roles {sorted(unknown)}")
    custom = custom or {}
    stray = set(custom) - set(targets)
    if stray:
        raise TufRepoError(f"TUF custom metadata for paths that are not targets: {sorted(stray)}")

    target_files = {}
    for rel in sorted(targets):
        path = _check_target_path(rel)
        target_files[path] = _target_file(path, targets[rel], custom.get(rel))

    root_expiry = (datetime.fromtimestamp(int(root_expires), tz=timezone.utc) if root_expires is not None
                   else _expiry(epoch, durations, "root"))
    root = Root(version=1, expires=root_expiry, consistent_snapshot=False)
    for role in ROLES:
        for s in keys.for_role(role):
            root.add_key(s.public_key, role)
        root.roles[role].threshold = keys.threshold(role)

    files: dict[str, bytes] = {}
    files["1.root.json"] = files["root.json"] = _sign(Metadata(root), keys.for_role("root"))
    files["targets.json"] = _sign(
        Metadata(Targets(version=version, expires=_expiry(epoch, durations, "targets"), targets=target_files)),
        keys.for_role("targets"))
    files["snapshot.json"] = _sign(
        Metadata(Snapshot(version=version, expires=_expiry(epoch, durations, "snapshot"),
                          meta={"targets.json": _meta_file(version, files["targets.json"])})),
        keys.for_role("snapshot"))
    files["timestamp.json"] = _sign(
        Metadata(Timestamp(version=version, expires=_expiry(epoch, durations, "timestamp"),
                           snapshot_meta=_meta_file(version, files["snapshot.json"]))),
        keys.for_role("timestamp"))

    _self_check(files)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in sorted(files):
        write_atomic(out_dir / name, files[name])
    return TufRepo(out_dir, files)


def _self_check(files: Mapping[str, bytes]) -> None:
    """Every role verifies against root (catches a key/threshold mix-up before anything ships)."""
    root = Metadata[Root].from_bytes(files["root.json"])
    for role in ROLES:
        root.verify_delegate(role, Metadata.from_bytes(files[f"{role}.json"]))




# -- offline client helpers ---------------------------------------------------------------------

class LocalFetcher(FetcherInterface):
    """ngclient fetcher reading `<prefix><relative path>` URLs from local directories (no network).

    `roots` maps URL prefixes (e.g. "stella://metadata/") to directories. Missing files raise
    DownloadHTTPError 404, which is how ngclient learns there is no newer root.
    """

    def __init__(self, roots: Mapping[str, Path]) -> None:
        self._roots = {prefix: Path(d) for prefix, d in roots.items()}

    def _fetch(self, url: str) -> Iterator[bytes]:
        for prefix, base in self._roots.items():
            if url.startswith(prefix):
                rel = parse.unquote(url[len(prefix):])
                path = base / rel
                if _is_safe(rel) and path.is_file() and not path.is_symlink():
                    return _chunks(path)
                raise DownloadHTTPError(f"{url}: not found under {base}", 404)
        raise DownloadHTTPError(f"{url}: no local directory for this URL", 404)


def _chunks(path: Path, size: int = 1 << 16) -> Iterator[bytes]:
    """A file in chunks: ngclient stops reading once a file exceeds the length its parent role
    (or its configured maximum) allows, so an oversized file is never read whole."""
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def _is_safe(rel: str) -> bool:
    try:
        _check_target_path(rel)
        return True
    except TufRepoError:
        return False


def offline_updater(metadata_dir: Path, targets_dir: Path, cache_dir: Path, root_bytes: bytes) -> Updater:
    """A python-tuf `Updater` over local directories, trusting `root_bytes` (the bootstrap root).

    Note: ngclient checks expiry against the current time (not configurable in tuf 7).
    """
    cache_dir = Path(cache_dir)
    (cache_dir / "metadata").mkdir(parents=True, exist_ok=True)
    (cache_dir / "targets").mkdir(parents=True, exist_ok=True)
    fetcher = LocalFetcher({"stella-local://metadata/": Path(metadata_dir), "stella-local://targets/": Path(targets_dir)})
    return Updater(str(cache_dir / "metadata"), "stella-local://metadata/", str(cache_dir / "targets"),
                   "stella-local://targets/", fetcher, bootstrap=root_bytes)


__all__ = [
    "ROLES", "DEFAULT_DURATIONS", "TufRepoError", "DeterministicEcdsaSigner", "load_signer", "signer_for_key",
    "generate_key", "version_for_epoch", "earliest_expiry",
    "TufKeys", "TufRepo", "build_tuf_repo", "LocalFetcher", "offline_updater",
]
