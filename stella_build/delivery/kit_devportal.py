"""The developer portal an Offline Kit carries (`devportal/`, docs/offline-kit.md), checked by
`stella-build kit verify|import` after the kit's own lists.

The kit's checksums.txt and offline-manifest.json already pin every byte of `devportal/`; these
checks add what the portal promises on its own, so a kit never carries a portal that
`stella-build devportal verify` or `verify-offline.sh` would refuse once unpacked:

- the archive `devportal-offline-bundle.tar.gz` against its `.sha256` sidecar;
- the unpacked bundle beside it: its checksums.txt (root line, every file, nothing missing or
  unlisted) and manifest.json entries, with the same code as `devportal verify`
  (stella_build/delivery/devportal.py `check_files`), over the digests of the kit's one streamed
  pass (nothing is read twice);
- offline-manifest.json's export entry: the portal's bundleId;
- with `--key`: manifest.dsse.json verifies with the key (`check_signature`); an unpacked kit (no
  archive signature covering every byte) must carry it (exit 4, `kit-unsigned`).

Failures are KitErrors with the portal's reasons (`devportal-*`, `digest-mismatch`,
`signature-invalid`) and the kit path of the file at fault.
"""
from __future__ import annotations

from stella_build.delivery import devportal as DV
from stella_build.delivery.kit_scan import KitError, Scan
from stella_build.delivery.untrusted import MirrorError
from stella_build.rules.formats import devportal as D

__all__ = ["check_devportal"]

SECTION = "devportal"  # rules/formats/kit.py SECTIONS["devportal"]; the scan keeps its top files


def _kit_error(exc: MirrorError) -> KitError:
    """The devportal check's error, naming the file by its path in the kit."""
    file = exc.file  # "<where>:<path in the bundle>" → "devportal/<path>"
    if file is not None:
        file = file.replace(":", "/", 1) if file.startswith(SECTION + ":") else f"{SECTION}/{file}"
    return KitError(str(exc), exc.exit_code, exc.reason, file=file, field=exc.field)


def check_devportal(export: dict, scan: Scan, pub, unpacked: bool) -> dict:
    """Check the portal of one `devportal` export of a verified kit's manifest (see the module
    docstring). `pub`: the trusted key or None. Returns {"bundleId", "files", "signed", "checked"}."""
    section = export["path"]
    prefix = section + "/"
    digests = {rel[len(prefix):]: d for rel, d in scan.members.items() if rel.startswith(prefix)}
    kept = {rel[len(prefix):]: data for rel, data in scan.kept.items() if rel.startswith(prefix)}
    if D.ARCHIVE not in digests:
        raise KitError(f"{prefix}{D.ARCHIVE} is missing", reason="kit-file-missing", file=prefix + D.ARCHIVE)
    sidecar = kept.get(D.ARCHIVE + ".sha256")
    if sidecar is not None and sidecar.decode("ascii", "replace").strip() != f"{digests[D.ARCHIVE][0]}  {D.ARCHIVE}":
        raise KitError(f"{prefix}{D.ARCHIVE} does not match {D.ARCHIVE}.sha256", reason="devportal-archive-digest",
                       file=prefix + D.ARCHIVE)
    if D.CHECKSUMS not in kept:
        raise KitError(f"{prefix}{D.CHECKSUMS} is missing: the portal cannot be checked",
                       reason="devportal-file-missing", file=prefix + D.CHECKSUMS)
    tree = {rel: d for rel, d in digests.items()
            if rel not in DV.BESIDE and not rel.endswith(".keyless.sigstore.json")}
    try:
        checked = DV.check_files(tree, {k: v for k, v in kept.items() if k in DV.KEPT}, section)
    except MirrorError as exc:
        raise _kit_error(exc) from None
    bundle_id = checked["manifest"]["bundleId"]
    if export.get("bundleId") != bundle_id:
        raise KitError(f"offline-manifest.json names the portal {export.get('bundleId')!r}, its manifest.json "
                       f"says {bundle_id}", reason="kit-manifest-mismatch", file="offline-manifest.json",
                       field="exports")
    signed = D.DSSE in kept
    report = {"bundleId": bundle_id, "files": checked["files"], "signed": signed, "checked": False}
    if pub is not None and (signed or unpacked):
        if not signed:
            raise KitError(f"{section} is not signed: with --key an unpacked kit must carry a signed portal "
                           "(or verify the signed archive instead)", 4, "kit-unsigned", file=section)
        try:
            DV.check_signature(kept, pub, section)
        except MirrorError as exc:
            raise _kit_error(exc) from None
        report["checked"] = True
    return report
