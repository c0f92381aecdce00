"""trivy_db_patch: ship only the change of a Trivy DB to sites that hold an earlier one.

One ``TrivyDbPatch`` action over the dep's db.tar.gz (TrivyArtifacts) and a base trivy.db pinned
by digest (``base = { db = ..., sha256 = ... }``, or ``build --base PATH``):

    trivy.db.zst     the new trivy.db as one zstd frame against the base trivy.db as a raw-content
                     dictionary (rules/formats/trivy/patch.py; `zstd --patch-from` compatible
                     in spirit, decoded by `stella-build trivy-db patch`)
    metadata.json    the new DB's metadata.json, as is
    patch.json       base sha256 and size, result sha256 and size, patch and metadata digests,
                     format version, compression settings

Sites apply it with `stella-build trivy-db patch BASE PATCHDIR -o OUT` (docs/trivy-db.md "Patches").
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stella_build.engine.rule_api import canonical_json, sha256_hex
from stella_build.engine.rule_api import (
    BASE_OPTION_SCOPE, ActionContext, ActionError, AnalysisContext, Artifact, DefaultOutputs, Rule, TargetParams, UsageError,
)

from stella_build.rules.formats.trivy.patch import SIGNATURE_FILES
from stella_build.rules.providers import TrivyArtifacts
from stella_build.rules.signing import SignParams, add_signing, resolve_signer

BASE_MISSING = "ERR_EXPORT_BASE_MISSING"
BASE_MISMATCH = "ERR_EXPORT_BASE_MISMATCH"


class DbBaseParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    db: str = Field(..., description=("the base trivy.db the sites hold (workspace-relative or absolute), "
                                      "or a directory holding it (a Trivy cache's db/, a trivy_db output)"))
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="pinned sha256 of that trivy.db")


class TrivyDbPatchParams(TargetParams):
    rule: Literal["trivy_db_patch"]
    base: DbBaseParams | None = Field(None, description="the base trivy.db (or `build --base PATH`)")
    compression_level: int = Field(19, ge=1, le=22, description="zstd level of the patch (long-distance "
                                                                "matching is always on)")
    sign: SignParams | None = Field(None, description=(
        "sign patch.json (which names the digests of the patch, metadata.json, the base and the "
        "result) into signatures/ (docs/signing.md); also enabled by --sign and STELLA_SIGNING_KEY. "
        "Sites check it with `trivy-db patch --key cosign.pub`."))


class TrivyDbPatch(Rule):
    name = "trivy_db_patch"
    version = "1"
    doc = "trivy:db patch: the dep's trivy.db as a zstd patch against a pinned base trivy.db, metadata.json, patch.json"
    Params = TrivyDbPatchParams
    accepts = (TrivyArtifacts,)

    def analyze(self, ctx: AnalysisContext, params: TrivyDbPatchParams) -> list:
        dbs = [(lbl, p) for lbl, p in ctx.providers(TrivyArtifacts) if p.kind == "trivy-db"]
        if len(dbs) != 1:
            raise UsageError("trivy_db_patch needs exactly one trivy_db target in deps", field="deps")
        _, new = dbs[0]
        base_path, pinned = _resolve_base(ctx, params)
        spec = ctx.action(
            mnemonic="TrivyDbPatch", fn=trivy_db_patch,
            inputs={"db.tar.gz": new.files["db.tar.gz"], "metadata.json": new.files["metadata.json"],
                    "base/trivy.db": Artifact(logical="trivy-db-base/trivy.db", path=base_path)},
            outputs=["trivy.db.zst", "metadata.json", "patch.json"],
            params={"base_sha256": pinned, "level": params.compression_level})
        files = {name: spec.out(name) for name in ("trivy.db.zst", "metadata.json", "patch.json")}
        files.update(add_signing(ctx, resolve_signer(ctx, params.sign), manifest=spec.out("patch.json"),
                                 archive=None, provenance=None, names=SIGNATURE_FILES))
        return [DefaultOutputs(files=files, primary=("trivy.db.zst", "patch.json"))]


def _locate(path: Path) -> Path:
    for candidate in (path, path / "trivy.db", path / "db" / "trivy.db"):
        if candidate.is_file():
            return candidate
    return path


def _resolve_base(ctx: AnalysisContext, params: TrivyDbPatchParams) -> tuple[Path, str]:
    """(the base trivy.db, its sha256), or exit 2 with reason base-missing / base-mismatch."""
    advice = ("Point the target at the trivy.db the sites hold (base = { db = ..., sha256 = ... } or "
              "`stella-build build --base PATH`), or ship the full db.tar.gz instead.")
    if ctx.options.base is not None:
        path = _locate(Path(str(ctx.options.base)).expanduser())
        if not path.is_file():
            what = ("holds no trivy.db (nor db/trivy.db)" if path.is_dir() else
                    "is not a regular file" if path.exists() else "not found")
            raise UsageError(f"{BASE_MISSING}: base trivy.db {ctx.options.base} (from --base) {what}. "
                             f"{BASE_OPTION_SCOPE} {advice}",
                             file=str(path), field="--base", reason="base-missing")
        _check_bbolt(path, "--base", f"{BASE_OPTION_SCOPE} {advice}")
        return path.resolve(), _sha256_file(path)
    if params.base is None:
        raise UsageError(f"{BASE_MISSING}: no base trivy.db named. {advice}", field="base", reason="base-missing")
    path = Path(params.base.db).expanduser()
    if not path.is_absolute():
        path = ctx.workspace.root / path
    path = _locate(path)
    if not path.is_file():
        raise UsageError(f"{BASE_MISSING}: base trivy.db {path} not found. {advice}", field="base.db",
                         reason="base-missing")
    _check_bbolt(path, "base.db", advice)
    actual = _sha256_file(path)
    if actual != params.base.sha256:
        raise UsageError(f"{BASE_MISMATCH}: base trivy.db {path} has sha256 {actual}, but the target pins "
                         f"{params.base.sha256}: that is not the named base. {advice}", field="base.sha256",
                         reason="base-mismatch")
    return path.resolve(), actual


def _check_bbolt(path: Path, field: str, advice: str) -> None:
    """UsageError (exit 2, `base-invalid`) unless `path` opens as a bbolt DB (`BboltReader`: a
    valid meta page — magic, version, checksum, page size): a patch against any other file
    could never be applied by a site. A `--base` error names the file itself; a `base.db` one
    gets its Exportfile line from analysis."""
    from stella_build.rules.formats.trivy.bbolt import BboltError, BboltReader

    file = str(path) if field.startswith("--") else None

    try:
        with BboltReader(path):
            pass
    except BboltError as exc:
        raise UsageError(f"base {path} is not a bbolt database ({exc}), so it is not a trivy.db. {advice}",
                         file=file, field=field, reason="base-invalid") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{BASE_MISSING}: base trivy.db {path}: {getattr(exc, 'strerror', None) or exc}. "
                         f"{advice}", file=file, field=field, reason="base-missing") from None


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _db_from_archive(archive: Path) -> bytes:
    """trivy.db from our own db.tar.gz (an output of the dep's TrivyDb action, not outside data)."""
    import tarfile  # in the action only: analysis of every build imports this module

    with tarfile.open(archive, "r:gz") as tar:
        member = tar.getmember("trivy.db")
        f = tar.extractfile(member)
        if f is None:
            raise ActionError("db.tar.gz holds no regular trivy.db", file="db.tar.gz", field="trivy.db")
        return f.read()


def trivy_db_patch(actx: ActionContext) -> dict:
    import tarfile

    from stella_build.rules.formats.trivy.patch import PatchError, make_db_patch, manifest

    base = actx.input("base/trivy.db").read_bytes()
    if sha256_hex(base) != actx.params["base_sha256"]:
        raise ActionError(f"{BASE_MISSING}: the base trivy.db changed since analysis", file="base/trivy.db",
                          reason="input-changed")
    try:
        new = _db_from_archive(actx.input("db.tar.gz"))
    except (KeyError, tarfile.TarError, OSError) as exc:
        raise ActionError(f"db.tar.gz: {exc}", file="db.tar.gz") from None
    metadata = actx.input("metadata.json").read_bytes()
    level = actx.params["level"]
    try:
        patch = make_db_patch(base, new, level)
        doc = manifest(base, new, patch, metadata, level)
    except PatchError as exc:
        raise ActionError(str(exc), file="base/trivy.db", reason=exc.reason) from None
    actx.write_output("trivy.db.zst", patch)
    actx.write_output("metadata.json", metadata)
    actx.write_output("patch.json", canonical_json.dumps(doc))
    return {"base_bytes": len(base), "result_bytes": len(new), "patch_bytes": len(patch)}


RULES = (TrivyDbPatch,)
