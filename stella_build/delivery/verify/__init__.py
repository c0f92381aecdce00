"""Offline verification of every profile's output: `verify_bundle(location, key=...)`.

The bundle kinds are tried in a fixed order (no registration by import side effect): a mirror
output directory (mirror.py), a signed Trivy DB directory (trivy.py), a JSON bundle directory and a
bundle archive (core.py). A mirror delta directory is recognised first and checked on its own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from stella_build.engine.errors import NetworkRequired, TrustMaterialMissing, UsageError
from stella_build.rules.formats.bundle import PUBLIC_KEY_FILE
from stella_build.rules.formats.keys import SigningKeyError, load_public_key, public_key_digest
from stella_build.delivery.verify.core import (
    _URL, ARCHIVE_SUFFIXES, MANIFEST, MAX_SIGNATURE_BYTES, BundleView, Check, DirectoryView, Report,
    TarballView, _Bad, load_trusted_key, verify_view,
)
from stella_build.delivery.verify.mirror import MirrorView, delta_report
from stella_build.delivery.verify.trivy import TrivyView

__all__ = ["verify_bundle", "open_bundle", "Report", "Check"]


def _open_mirror(path: Path) -> BundleView | None:
    if path.is_dir() and (path / "mirror" / "export.json").is_file() and not (path / MANIFEST).is_file():
        return MirrorView(path)
    return None


def _open_trivy(path: Path) -> BundleView | None:
    if not (path.is_dir() and (path / MANIFEST).is_file() and (path / "oci" / "index.json").is_file()):
        return None
    for java, archive in ((False, "db.tar.gz"), (True, "javadb.tar.gz")):
        if (path / archive).is_file():
            return TrivyView(path, java)
    return None


def _open_directory(path: Path) -> BundleView | None:
    return DirectoryView(path) if path.is_dir() and (path / MANIFEST).is_file() else None


def _open_tarball(path: Path) -> BundleView | None:
    return TarballView(path) if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES) else None


# Tried in this order; each returns a view or None ("not my format").
OPENERS: tuple[Callable[[Path], BundleView | None], ...] = (_open_mirror, _open_trivy, _open_directory,
                                                             _open_tarball)


def open_bundle(location: str | Path) -> BundleView:
    """Open a bundle. Raises UsageError (2) for an unknown thing, NetworkRequired (5) for a URL."""
    text = str(location)
    if _URL.match(text):
        raise NetworkRequired(f"{text} is remote: verify works on local bundles only and never uses the "
                              "network; download the bundle (and its sidecar files) first", field="BUNDLE")
    path = Path(text)
    if not path.exists():
        raise UsageError(f"{text}: no such file or directory", field="BUNDLE")
    for opener in OPENERS:
        view = opener(path)
        if view is not None:
            return view
    hint = ""
    if path.is_dir() and ((path / "trivy.db").is_file() or (path / "trivy-java.db").is_file()):
        hint = ("; an unsigned Trivy DB output has no manifest: build it with --sign to verify it, "
                "or check its structure with `stella-build inspect trivy-db --check`")
    elif path.is_dir() and any(path.glob("stella-offline-kit-*")):
        hint = "; this is an Offline Kit: use `stella-build kit verify`"
    elif path.is_dir() and any(path.glob("devportal-offline-bundle.tar.gz*")):
        hint = "; this is a developer portal: use `stella-build devportal verify`"
    raise UsageError(f"{text} is not a bundle: expected a bundle directory (with {MANIFEST}) or a "
                     f"bundle archive ({', '.join(ARCHIVE_SUFFIXES)}){hint}", field="BUNDLE")


def verify_bundle(location: str | Path, *, key: str | None = None, trust_bundle_key: bool = False,
                  allow_unsigned: bool = False) -> Report:
    """Open and verify a bundle offline. Raises StellaError for usage (2), missing trust (4) and
    network (5) problems; check failures are in the report (exit_code 3)."""
    if key and trust_bundle_key:
        raise UsageError("give either --key or --trust-bundle-key, not both", field="--key")
    if allow_unsigned and (key or trust_bundle_key):
        raise UsageError("--allow-unsigned skips signatures: do not combine it with a key", field="--allow-unsigned")
    if key is not None:
        pub = load_trusted_key(key)  # before opening: a URL key must fail with 5, not read anything
    if Path(location).is_dir() and (Path(location) / "delta" / "manifest.diff.json").is_file():
        return _verify_delta(Path(location), key, trust_bundle_key, allow_unsigned)
    view = open_bundle(location)
    key_info = None
    if key is not None:
        key_info = {"source": key, "sha256": public_key_digest(pub)}
    elif trust_bundle_key:
        if not view.has(PUBLIC_KEY_FILE):
            raise TrustMaterialMissing(f"--trust-bundle-key: the bundle has no {PUBLIC_KEY_FILE}", field="--key")
        try:
            pub = load_public_key(view.read_limited(PUBLIC_KEY_FILE, MAX_SIGNATURE_BYTES), what=PUBLIC_KEY_FILE)
        except (SigningKeyError, _Bad) as exc:
            report = Report(str(location), view.kind, None,
                            list(view.problems) + [Check("bundle-key", False, str(exc), file=PUBLIC_KEY_FILE)])
            return report
        key_info = {"source": f"{PUBLIC_KEY_FILE} in the bundle (--trust-bundle-key: integrity only, "
                              "the origin is not proven)", "sha256": public_key_digest(pub)}
    elif allow_unsigned:
        pub = None
    else:
        raise TrustMaterialMissing("no trust root: pass --key cosign.pub (the signer's public key), or "
                                   "--trust-bundle-key to trust the bundle's own cosign.pub, or "
                                   "--allow-unsigned to check digests only", field="--key")
    return Report(str(location), view.kind, key_info, verify_view(view, pub))


def _verify_delta(path: Path, key: str | None, trust_bundle_key: bool, allow_unsigned: bool) -> Report:
    if trust_bundle_key:
        key = str(path / "delta" / "signatures" / PUBLIC_KEY_FILE)
        if not Path(key).is_file():
            raise TrustMaterialMissing(f"--trust-bundle-key: the delta has no {key}", field="--key")
    elif key is None and not allow_unsigned:
        raise TrustMaterialMissing("no trust root: pass --key cosign.pub, --trust-bundle-key or "
                                   "--allow-unsigned", field="--key")
    info = None
    if key is not None:
        info = {"source": key, "sha256": public_key_digest(load_trusted_key(key))}
    return delta_report(path, key, info)
