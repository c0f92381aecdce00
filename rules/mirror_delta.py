"""mirror:delta: what a site holding a base mirror needs to reach the new one (docs/mirror.md).

    delta/manifest.diff.json        base and new export ids, sorted added/changed/removed, one
                                    tombstone per removal, the metadata patches, expected digests
    delta/blobs/sha256/<hex>        content files whose digest the base lacks
    delta/patches/<path>.zst        every metadata file of the new mirror (export.json, provenance,
                                    tuf/*, signatures/*), zstd against the base's file as dictionary;
                                    and every changed Trivy DB archive (db.tar.gz, javadb.tar.gz)
                                    whose tar patches smaller than the archive: a zstd patch of its
                                    tar against the base archive's tar (`blobPatches[]`)
    delta/signatures/               when signed: manifest.diff.json signed (bundle + legacy .sig)
    oci/                            the delta as one OCI artifact (tag "delta"), layers = delta/ files
                                    but signatures/; when signed the manifest.diff.json bundle is its
                                    referrer, so `mirror push` ships deltas like full mirrors

A signed full mirror's signatures travel as metadata patches, so apply(signed v1, delta) gives the
signed v2 byte for byte. Encrypted mirrors get no deltas: the blobs would be plaintext.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from stella_build.engine.rule_api import canonical_json
from stella_build.engine.rule_api import sha256_hex
from stella_build.engine.rule_api import (
    BASE_OPTION_SCOPE, ActionContext, ActionError, AnalysisContext, Artifact, DefaultOutputs, Rule, TargetParams, UsageError,
)

from stella_build.rules.formats.mirror import MIRROR_TAG, is_db_archive, is_metadata
from stella_build.rules.providers import MirrorTree
from stella_build.rules.signing import SignParams, add_signing, resolve_signer
from stella_build.rules.formats.mirror import DIFF_SCHEMA, DIFF_FILE, DELTA_SIGNATURE_FILES, DELTA_BUNDLE, make_patch, delta_layout

BASE_MISSING = "ERR_EXPORT_BASE_MISSING"


class BaseParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    export: str = Field(..., description="the base mirror's export.json (workspace-relative or absolute)")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="pinned sha256 of that export.json")


class MirrorDeltaParams(TargetParams):
    rule: Literal["mirror_delta"]
    base: BaseParams | None = Field(None, description="the base mirror (or $STELLA_MIRROR_BASE / `mirror delta --base`)")
    compression_level: int = Field(19, ge=1, le=22)
    sign: SignParams | None = Field(None, description=(
        "sign manifest.diff.json into delta/signatures/ (docs/signing.md); also enabled by "
        "STELLA_SIGNING_KEY. The new mirror's own signatures travel in the delta either way."))


class MirrorDelta(Rule):
    name = "mirror_delta"
    version = "1"
    doc = "mirror:delta profile: blobs absent from a named base mirror, manifest.diff.json with tombstones"
    Params = MirrorDeltaParams
    accepts = (MirrorTree,)

    def analyze(self, ctx: AnalysisContext, params: MirrorDeltaParams) -> list:
        trees = ctx.providers(MirrorTree)
        if len(trees) != 1:
            raise UsageError("mirror_delta needs exactly one mirror_full target in deps", field="deps")
        _, new = trees[0]
        if new.encrypted:
            raise UsageError("mirror_delta cannot follow an encrypted mirror_full: the delta's blobs would be "
                             "plaintext. Ship a new encrypted full mirror instead.", field="deps")
        export_path, pinned = _resolve_base(ctx, params)
        inputs: dict[str, Artifact] = {"new": new.tree, "new-summary.json": new.summary,
                                       "base/export.json": Artifact(logical="mirror-base/export.json", path=export_path)}
        inputs.update({f"new-meta/{rel}": art for rel, art in new.signatures})  # rel = signatures/…
        base_dir = export_path.parent
        # Dictionaries for the metadata patches (optional). Not signatures/: signatures do not compress
        # against older ones, and a base pulled from a registry has only the referrer bundle.
        for rel in ("provenance.json", "tuf/root.json", "tuf/1.root.json", "tuf/targets.json",
                    "tuf/snapshot.json", "tuf/timestamp.json"):
            if (base_dir / rel).is_file():
                inputs[f"base/{rel}"] = Artifact(logical=f"mirror-base/{rel}", path=(base_dir / rel).resolve())
        # The base's DB archives: a changed one travels as a patch against it (blobPatches).
        inputs.update({f"base-blob/{rel}": Artifact(logical=f"mirror-base/{rel}", path=path)
                       for rel, path in _base_db_archives(export_path).items()})
        spec = ctx.action(mnemonic="MirrorDelta", fn=mirror_delta, inputs=inputs,
                          outputs=["delta/", "oci/"], params={"base_sha256": pinned, "level": params.compression_level})
        delta, trees_out = spec.out("delta/"), {"delta": spec.out("delta/"), "oci": spec.out("oci/")}
        signatures = add_signing(ctx, resolve_signer(ctx, params.sign), manifest=(delta, DIFF_FILE),
                                 archive=None, provenance=None, names=DELTA_SIGNATURE_FILES)
        if signatures:
            layout = ctx.action(
                mnemonic="MirrorDeltaSignedLayout", fn=delta_signed_layout,
                inputs={"delta": delta, "bundle": signatures[DELTA_SIGNATURE_FILES["manifest_bundle"]]},
                outputs=["oci/"], params={})
            trees_out["oci"] = layout.out("oci/")
        return [DefaultOutputs(files=signatures, trees=trees_out, primary=("delta/manifest.diff.json",))]


def _resolve_base(ctx: AnalysisContext, params: MirrorDeltaParams) -> tuple[Path, str]:
    """(the base export.json, its sha256), or ERR_EXPORT_BASE_MISSING (exit 2)."""
    advice = ("Republish the base mirror there (its mirror/export.json), point the target at an "
              "available base (base = { export = ..., sha256 = ... } or `stella-build mirror delta --base "
              "PATH`), or build a full export (rule mirror_full) instead.")
    if ctx.options.base is not None:
        env = str(ctx.options.base)
        path = Path(env).expanduser()
        for candidate in (path, path / "export.json", path / "mirror" / "export.json"):
            if candidate.is_file():
                path = candidate
                break
        if not path.is_file():
            what = "is not a regular file" if path.exists() and not path.is_dir() else "not found"
            raise UsageError(f"{BASE_MISSING}: base mirror {env} (from --base) {what}. {BASE_OPTION_SCOPE} "
                             f"{advice}", file=env, field="--base", reason="base-missing")
        data = _read_base(path, "--base", f"{BASE_OPTION_SCOPE} {advice}")
        _refuse_non_manifest(data, path, "--base", f"{BASE_OPTION_SCOPE} {advice}")
        return path.resolve(), hashlib.sha256(data).hexdigest()
    if params.base is None:
        raise UsageError(f"{BASE_MISSING}: no base mirror named (set base = {{ export = ..., sha256 = ... }} "
                         f"or pass --base). {advice}", field="base", reason="base-missing")
    path = Path(params.base.export).expanduser()
    if not path.is_absolute():
        path = ctx.workspace.root / path
    if not path.is_file():
        raise UsageError(f"{BASE_MISSING}: base export {path} not found. {advice}", field="base.export", reason="base-missing")
    data = _read_base(path, "base.export", advice)
    actual = hashlib.sha256(data).hexdigest()
    if actual != params.base.sha256:
        raise UsageError(f"{BASE_MISSING}: base export {path} has sha256 {actual}, but the target pins "
                         f"{params.base.sha256}: that is not the named base. {advice}", field="base.sha256", reason="base-mismatch")
    _refuse_non_manifest(data, path, "base.export", advice)
    return path.resolve(), actual


# A mirror's export.json lists one entry per file (~200 bytes each): 256 MiB is over a million files.
MAX_BASE_EXPORT_BYTES = 256 << 20


def _read_base(path: Path, field: str, advice: str) -> bytes:
    """The base export.json's bytes, refused (exit 2, `base-invalid`) past MAX_BASE_EXPORT_BYTES
    before it is read: the base comes from outside the workspace."""
    size = path.stat().st_size
    if size > MAX_BASE_EXPORT_BYTES:
        raise UsageError(f"base {path} has {size} bytes, more than the {MAX_BASE_EXPORT_BYTES} an export.json "
                         f"may have. {advice}", file=str(path) if field.startswith("--") else None,
                         field=field, reason="base-invalid")
    with open(path, "rb") as f:
        data = f.read(MAX_BASE_EXPORT_BYTES + 1)
    if len(data) > MAX_BASE_EXPORT_BYTES:
        raise UsageError(f"base {path} grew past {MAX_BASE_EXPORT_BYTES} bytes while read. {advice}",
                         field=field, reason="base-invalid")
    return data


def _refuse_non_manifest(data: bytes, path: Path, field: str, advice: str) -> None:
    """UsageError (exit 2, `base-invalid`) unless `data` is a mirror export.json (`_base_problem`),
    at analysis, before anything runs. A `--base` error names the file given; a `base.export`
    one gets its Exportfile line from analysis."""
    problem = _base_problem(data)
    if problem is not None:
        raise UsageError(f"base {path} is not a mirror export.json ({problem}). {advice}",
                         file=str(path) if field.startswith("--") else None, field=field,
                         reason="base-invalid")


def _base_db_archives(export_path: Path) -> dict[str, Path]:
    """{path: file} of the DB archives the base export.json lists and its mirror/ tree holds. The
    base comes from outside the workspace: a path that is not a plain relative path inside the
    base's directory is skipped (that archive then travels whole), never opened."""
    base_dir = export_path.parent.resolve()
    try:
        contents = json.loads(export_path.read_bytes()).get("contents")
    except (OSError, ValueError, AttributeError, RecursionError):
        return {}  # the action reports a malformed base (_check_base)
    out = {}
    for c in contents if isinstance(contents, list) else []:
        rel = c.get("path") if isinstance(c, dict) else None
        if not isinstance(rel, str) or not is_db_archive(rel) or "\\" in rel or rel.startswith("/") or \
                any(part in ("", ".", "..") for part in rel.split("/")):
            continue
        path = (base_dir / rel).resolve()
        if path.is_relative_to(base_dir) and path.is_file():
            out[rel] = path
    return out


def _blob_patches(changed: list[dict], base_digests: set[str], base_blobs: Mapping[str, Path],
                  new_files: Mapping[str, Path], level: int) -> tuple[list[dict], dict[str, bytes]]:
    """(blobPatches[], {patches/<path>.zst: bytes}) for the changed DB archives whose patch is
    smaller than the archive. An archive is patched only against the base's own file at its path,
    and only when that file still has the digest the base export.json lists (else it travels whole)."""
    from stella_build.rules.formats.trivy.patch import PatchError, make_archive_patch

    entries, patches, done = [], {}, set()
    for e in changed:
        src = base_blobs.get(e["path"])
        if src is None or not is_db_archive(e["path"]) or e["digest"] in base_digests or e["digest"] in done:
            continue
        base = src.read_bytes()
        if "sha256:" + sha256_hex(base) != e["baseDigest"]:
            continue
        new = new_files[e["path"]].read_bytes()
        try:
            made = make_archive_patch(base, new, level)
        except PatchError:  # not one gzip member of a tar under 2 GiB: ship it whole
            made = None
        if made is None or len(made[0]) >= len(new):
            continue
        patch, desc = made
        name = f"patches/{e['path']}.zst"
        patches[name] = patch
        done.add(e["digest"])
        entries.append({"path": e["path"], "digest": e["digest"], "bytes": e["bytes"],
                        "baseDigest": e["baseDigest"], "baseBytes": len(base), **desc, "patch": name,
                        "patchDigest": "sha256:" + sha256_hex(patch), "patchBytes": len(patch)})
    return entries, patches


def compute_delta(base_export: bytes, new_files: Mapping[str, Path], summary: dict,
                  base_meta: Mapping[str, bytes], level: int,
                  base_blobs: Mapping[str, Path] | None = None) -> tuple[dict, dict[str, bytes], dict[str, Path]]:
    """(manifest.diff.json, {patches/<path>.zst: bytes}, {blobs/sha256/<hex>: source file}).
    `base_blobs` = {path: file} of the base's DB archives: changed ones become blobPatches."""
    base = json.loads(base_export)
    new = json.loads(new_files["export.json"].read_bytes())
    old = {c["path"]: c for c in base["contents"]}
    cur = {c["path"]: c for c in new["contents"]}
    base_digests = {c["digest"] for c in base["contents"]}
    added = [{"path": p, "digest": cur[p]["digest"], "bytes": cur[p]["bytes"]} for p in sorted(cur) if p not in old]
    changed = [{"path": p, "digest": cur[p]["digest"], "bytes": cur[p]["bytes"], "baseDigest": old[p]["digest"]}
               for p in sorted(cur) if p in old and old[p]["digest"] != cur[p]["digest"]]
    removed = sorted(p for p in old if p not in cur)
    blob_patches, patches = _blob_patches(changed, base_digests, base_blobs or {}, new_files, level)
    patched = {e["digest"] for e in blob_patches}
    blobs: dict[str, Path] = {}
    for e in added + changed:
        if e["digest"] not in base_digests and e["digest"] not in patched:
            blobs[f"blobs/sha256/{e['digest'].split(':', 1)[1]}"] = new_files[e["path"]]
    metadata = []
    for rel in sorted(r for r in new_files if is_metadata(r)):
        data = new_files[rel].read_bytes()
        dictionary = base_export if rel == "export.json" else base_meta.get(rel)
        patches[f"patches/{rel}.zst"] = make_patch(data, dictionary, level)
        metadata.append({"path": rel, "digest": "sha256:" + sha256_hex(data), "bytes": len(data),
                         "patch": f"patches/{rel}.zst",
                         "patchBase": ("sha256:" + sha256_hex(dictionary)) if dictionary is not None else None})
    diff = {
        "schema": DIFF_SCHEMA, "mode": "delta",
        "baseExportId": base["exportId"], "baseManifestDigest": "sha256:" + sha256_hex(base_export),
        "exportId": new["exportId"], "manifestDigest": "sha256:" + sha256_hex(new_files["export.json"].read_bytes()),
        "profile": {**new["profile"], "variant": "delta"}, "generatedAt": new["generatedAt"],
        "added": added, "changed": changed, "removed": removed,
        "tombstones": [{"path": p, "baseDigest": old[p]["digest"], "removedIn": new["exportId"]} for p in removed],
        "metadata": metadata, "blobs": sorted("sha256:" + b.rsplit("/", 1)[1] for b in blobs),
        "archive": {"path": "mirror.tar.zst", "sha256": summary["archiveSha256"]},
        "oci": {"tag": MIRROR_TAG, "manifestDigest": summary["ociManifestDigest"],
                "indexSha256": summary["ociIndexSha256"]},
        "resetBaseline": False,
    }
    if blob_patches:  # absent when empty: deltas without DB archives keep their bytes (and goldens)
        diff["blobPatches"] = blob_patches
    return diff, patches, blobs


def _base_problem(base_export: bytes) -> str | None:
    """Why these bytes are not a mirror export.json (exportId, contents[] with path and digest),
    or None. Its paths are only compared, never opened, so their shape does not matter here."""
    try:
        doc = json.loads(base_export)
    except (ValueError, RecursionError):
        return "not JSON"
    try:
        ok = isinstance(doc.get("exportId"), str) and isinstance(doc.get("contents"), list) and all(
            isinstance(c, dict) and isinstance(c.get("path"), str) and isinstance(c.get("digest"), str)
            for c in doc["contents"])
    except AttributeError:
        ok = False
    return None if ok else "not a mirror manifest: exportId, contents[] with path and digest"


def _check_base(base_export: bytes) -> None:
    """The base export.json is read from outside the workspace (a published mirror): a document that
    is not one is an ActionError naming the field, not a rule bug (analysis refuses it first:
    `_refuse_non_manifest`; this is the action's own check of what it reads)."""
    problem = _base_problem(base_export)
    if problem is not None:
        raise ActionError(f"{BASE_MISSING}: the base export.json is {problem}", file="base/export.json",
                          field="contents", reason="base-invalid")


def mirror_delta(actx: ActionContext) -> dict:
    base_export = actx.input("base/export.json").read_bytes()
    if sha256_hex(base_export) != actx.params["base_sha256"]:
        raise ActionError(f"{BASE_MISSING}: base export.json changed since analysis", file="base/export.json")
    _check_base(base_export)
    base_meta = {name[len("base/"):]: actx.input(name).read_bytes() for name in actx.inputs
                 if name.startswith("base/") and name != "base/export.json"}
    new_files = dict(actx.tree_files("new"))
    new_files.update({name[len("new-meta/"):]: actx.input(name) for name in actx.inputs
                      if name.startswith("new-meta/")})
    summary = json.loads(actx.input("new-summary.json").read_bytes())
    base_blobs = {name[len("base-blob/"):]: actx.input(name) for name in actx.inputs if name.startswith("base-blob/")}
    diff, patches, blobs = compute_delta(base_export, new_files, summary, base_meta, actx.params["level"],
                                         base_blobs)
    files: dict[str, bytes | Path] = {DIFF_FILE: canonical_json.dumps(diff), **patches, **blobs}
    for rel, data in files.items():
        actx.write_output(f"delta/{rel}", data if isinstance(data, bytes) else data.read_bytes())
    delta_layout(files, actx.out_dir / "oci")
    return {"added": len(diff["added"]), "changed": len(diff["changed"]), "removed": len(diff["removed"]),
            "blobs": len(blobs), "blobPatches": len(diff.get("blobPatches", ())),
            "blobPatchBytes": sum(e["patchBytes"] for e in diff.get("blobPatches", ()))}


def delta_signed_layout(actx: ActionContext) -> dict:
    files: dict[str, bytes | Path] = dict(actx.tree_files("delta"))
    files[DELTA_BUNDLE] = actx.input("bundle")
    return delta_layout(files, actx.out_dir / "oci")


RULES = (MirrorDelta,)
