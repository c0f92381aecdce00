"""devportal_offline: the developer portal as one verifiable bundle that works from a USB stick.

    [targets.devportal-offline]
    rule = "devportal_offline"
    openapi = "//docs/openapi.json"                  # the service's OpenAPI document
    exportfile_schema = "//exportfile.schema.json"
    docs = ["//docs/*.md"]                           # the formats and guides (Markdown)
    changelog = "//CHANGELOG.md"
    sign = { key = "keys/cosign.key" }               # optional: manifest.dsse.json (also --sign, STELLA_SIGNING_KEY)

Target outputs (stella-out/<pkg>/<target>/): `devportal-offline-bundle.tar.gz` and its `.sha256`,
`provenance.json` (in-toto/SLSA, subjects the archive and manifest.json), and the bundle's own tree
(the archive's members, no top directory; layout in rules/formats/devportal.py and
docs/devportal.md): manifest.json, checksums.txt, instructions-portable.txt, verify-offline.sh,
portal/ (jinja2 pages, CSS, the search index and its script), specs/ (openapi.json,
exportfile.schema.json, JSON Schemas), sdks/python/ (wheel + sdist built here, byte-reproducible),
sdks/shell/ (curl functions), changelog/ (CHANGELOG.md and its page); signed: cosign.pub and
manifest.dsse.json (DSSE over an in-toto statement whose subject is manifest.json).

One `DevportalAssemble` action renders, packs and (with a key) signs: the DSSE envelope is inside the
archive, so it is signed before the archive is written, with the key passed as an action secret
(RFC 6979 signatures: the same key gives the same bytes). Its inputs are the four sources and every
file of rules/devportal_assets/ (templates, static assets, the SDK's sources): they are package data,
not Python modules, so the engine's implementation digest does not cover them; declaring them as
inputs puts their bytes in the action key. The policy `no-external-assets` is checked on the
rendered bundle (rules/formats/devportal_policy.py): the build fails naming the file and line.
"""
from __future__ import annotations

import json
import posixpath
from importlib import resources
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stella_build.engine.rule_api import canonical_json, gzip_bytes, rfc3339, sha256_hex, tar_bytes
from stella_build.engine.rule_api import (
    ActionContext, ActionError, AnalysisContext, Artifact, DefaultOutputs, Rule, TarEntry, TargetParams,
    UsageError,
)
from stella_build.rules.formats import devportal as D
from stella_build.rules.formats.bundle import BUILDER_ID, builder_version
from stella_build.rules.providers import DevPortalBundle
from stella_build.rules.signing import SignParams, resolve_signer

BUILD_TYPE = "https://stella-build.dev/buildtypes/devportal-offline/v1"
ASSETS = "devportal_assets"
SDK_NAME = "stella-export-client"
SDK_PACKAGE = "stella_export_client"
SDK_SUMMARY = "Typed client of the stella-build Export Center API: submit, watch, download with verification"
SDK_REQUIRES_PYTHON = ">=3.9"
SDK_LICENSE = "Apache-2.0"
SDK_CLASSIFIERS = ["License :: OSI Approved :: Apache Software License", "Programming Language :: Python :: 3",
                   "Typing :: Typed"]
_MAX_INPUT = 64 << 20  # largest source file read whole (an OpenAPI document, a Markdown file)


def _versions(*names: str) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = dist_version(name)
        except Exception:  # not installed as a distribution: the import below fails loudly instead
            out[name] = "unknown"
    return out


class DevportalChecks(BaseModel):
    """`checks = { ... }`: what the bundle promises (the StellaOps draft's `checks` record)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    integrity: Literal["sha256"] = Field("sha256", description="digest of checksums.txt and the manifest")
    policy: Literal["no-external-assets"] = Field(
        "no-external-assets", description="no asset, font, script or link may point outside the bundle")


class DevportalOfflineParams(TargetParams):
    rule: Literal["devportal_offline"]
    openapi: str = Field("//docs/openapi.json", description="the service's OpenAPI 3 document (one file)")
    exportfile_schema: str = Field("//exportfile.schema.json", description="the Exportfile JSON Schema (one file)")
    docs: list[str] = Field(default_factory=lambda: ["//docs/*.md"], min_length=1,
                            description="globs of the Markdown documents rendered as the formats pages")
    changelog: str = Field("//CHANGELOG.md", description="the changelog (Markdown, one file)")
    sdk_version: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)*([ab]|rc)?[0-9]*$",
                                    description="version of the Python SDK; default: stella-build's")
    checks: DevportalChecks = Field(default_factory=DevportalChecks)
    compression_level: int = Field(9, ge=1, le=9, description="gzip level of the bundle archive")
    sign: SignParams | None = Field(None, description=(
        "sign manifest.json (manifest.dsse.json inside the bundle; docs/signing.md); also enabled by "
        "STELLA_SIGNING_KEY and `build --sign`"))


def _one(ctx: AnalysisContext, pattern: str, field: str) -> Artifact:
    found = ctx.glob([pattern])
    if len(found) != 1:
        raise UsageError(f"{field} = {pattern!r} must name exactly one file, it matches {len(found)}",
                         field=field, reason="devportal-input-missing")
    return found[0]


def asset_files() -> dict[str, Path]:
    """rules/devportal_assets/ as {relative path: file}: templates/, static/, sdk/ (package data)."""
    base = Path(str(resources.files("stella_build.rules").joinpath(ASSETS)))
    out = {}
    for path in sorted(base.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            out[path.relative_to(base).as_posix()] = path.resolve()
    return out


class DevportalOffline(Rule):
    name = "devportal_offline"
    version = "1"
    doc = "devportal:offline: the API reference, Exportfile reference, formats, SDKs and changelog as one bundle"
    Params = DevportalOfflineParams
    accepts = ()
    # Libraries whose versions shape the bytes (besides the engine's compressors).
    libraries = _versions("jinja2", "markupsafe", "markdown-it-py", "mdurl")

    def analyze(self, ctx: AnalysisContext, params: DevportalOfflineParams) -> list:
        if ctx.source_date_epoch is None:
            raise UsageError("devportal_offline needs SOURCE_DATE_EPOCH ([package] source_date_epoch): it is "
                             "the bundle's generatedAt and every file's time", field="source_date_epoch",
                             reason="devportal-epoch-missing")
        if ctx.deps:
            raise UsageError("devportal_offline takes no deps: its inputs are files", field="deps",
                             reason="devportal-dep-unsupported")
        inputs: dict[str, Artifact] = {
            "src/openapi.json": _one(ctx, params.openapi, "openapi"),
            "src/exportfile.schema.json": _one(ctx, params.exportfile_schema, "exportfile_schema"),
            "src/CHANGELOG.md": _one(ctx, params.changelog, "changelog"),
        }
        docs: dict[str, str] = {}
        for art in ctx.glob(params.docs):
            name = posixpath.basename(art.logical)
            if not name.endswith(".md"):
                continue
            if name in docs:
                raise UsageError(f"two documents are named {name}: {docs[name]} and {art.logical}", field="docs",
                                 reason="devportal-input-duplicate")
            docs[name] = art.logical
            inputs[f"src/docs/{name}"] = art
        if not docs:
            raise UsageError(f"docs = {params.docs!r} match no Markdown file", field="docs",
                             reason="devportal-input-missing")
        for rel, path in asset_files().items():
            inputs[f"assets/{rel}"] = Artifact(logical=f"devportal-assets/{rel}", path=path)
        signer = resolve_signer(ctx, params.sign)  # exit 4 here on a missing key or password
        outputs = [D.ARCHIVE, D.ARCHIVE + ".sha256", D.PROVENANCE, D.MANIFEST, D.CHECKSUMS, D.INSTRUCTIONS,
                   D.VERIFY_SCRIPT, *(d + "/" for d in D.SECTIONS)]
        if signer is not None:
            outputs += [D.DSSE, D.PUBLIC_KEY]
        spec = ctx.action(
            mnemonic="DevportalAssemble", fn=devportal_assemble, inputs=inputs, outputs=outputs,
            params={"target": str(ctx.label), "docs": {n: docs[n] for n in sorted(docs)},
                    "sources": {k: v.logical for k, v in sorted(inputs.items()) if k.startswith("src/")
                                and not k.startswith("src/docs/")},
                    "builder_version": builder_version(), "sdk_version": params.sdk_version or builder_version(),
                    "level": params.compression_level, "checks": params.checks.model_dump(),
                    "rules": {self.name: self.version},
                    "signer": None if signer is None else signer.provenance_params()},
            secrets={} if signer is None else {"key_path": str(signer.key_path), "password": signer.password})
        files = {n: spec.out(n) for n in outputs if not n.endswith("/")}
        trees = {d: spec.out(d + "/") for d in D.SECTIONS}
        # mirror_full and offline_kit carry the bundle through this provider (docs/devportal.md)
        bundle = DevPortalBundle(files=dict(files), trees=dict(trees), archive=files[D.ARCHIVE],
                                 manifest=files[D.MANIFEST], signed=signer is not None)
        return [bundle, DefaultOutputs(files=files, trees=trees, primary=(D.ARCHIVE,))]


RULES = (DevportalOffline,)


# -- the action ---------------------------------------------------------------------------------------

def _read(actx: ActionContext, name: str, logical: str) -> bytes:
    path = actx.input(name)
    if path.stat().st_size > _MAX_INPUT:
        raise ActionError(f"{logical} is larger than {_MAX_INPUT} bytes", file=logical, reason="devportal-spec-invalid")
    return path.read_bytes()


def _text(data: bytes, logical: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ActionError(f"{logical} is not UTF-8 ({exc})", file=logical, reason="devportal-spec-invalid") from None


def _json(data: bytes, logical: str) -> dict:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ActionError(f"{logical} is not JSON: {exc}", file=logical, reason="devportal-spec-invalid") from None
    if not isinstance(doc, dict):
        raise ActionError(f"{logical} is not a JSON object", file=logical, reason="devportal-spec-invalid")
    return doc


def _assets(actx: ActionContext, prefix: str) -> dict[str, bytes]:
    """{path below `prefix`: bytes} of the declared asset inputs under assets/<prefix>/."""
    head = f"assets/{prefix}/"
    return {name[len(head):]: actx.input(name).read_bytes() for name in sorted(actx.inputs) if name.startswith(head)}


def _pretty(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _build_sdk(templates: dict[str, bytes], *, version: str, api: dict, paths: dict[str, str], epoch: int,
               generator: str) -> dict:
    """The Python SDK rendered from its templates: wheel and sdist bytes, their names."""
    import jinja2

    from stella_build.rules.formats import wheel as W

    env = jinja2.Environment(loader=jinja2.DictLoader({k: v.decode("utf-8") for k, v in templates.items()}),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True, autoescape=False)
    ctx = {"version": version, "api_title": api["info"]["title"], "api_version": api["info"]["version"],
           "paths": paths, "dist_name": SDK_NAME, "summary": SDK_SUMMARY, "requires_python": SDK_REQUIRES_PYTHON,
           "license": SDK_LICENSE, "classifiers": SDK_CLASSIFIERS, "package": SDK_PACKAGE}
    rendered: dict[str, bytes] = {}
    for name, data in templates.items():
        out = name[:-3] if name.endswith(".j2") else name
        rendered[out] = env.get_template(name).render(**ctx).encode("utf-8") if name.endswith(".j2") else data
    for name, data in rendered.items():
        if name.endswith(".py"):
            try:
                compile(data, name, "exec")
            except SyntaxError as exc:
                raise ActionError(f"the SDK template renders invalid Python: {exc}", file=f"sdk/python/{name}",
                                  reason="devportal-sdk-invalid") from None
    package = {k: v for k, v in rendered.items() if k.startswith(SDK_PACKAGE + "/")}
    readme = rendered["README.md"].decode("utf-8")
    meta = W.metadata(name=SDK_NAME, version=version, summary=SDK_SUMMARY, requires_python=SDK_REQUIRES_PYTHON,
                      license=SDK_LICENSE, classifiers=SDK_CLASSIFIERS, readme=readme)
    wheel = W.wheel_bytes(name=SDK_NAME, version=version, files=package, meta=meta, generator=generator, epoch=epoch)
    sdist = W.sdist_bytes(name=SDK_NAME, version=version, pkg_info=meta, epoch=epoch,
                          files={**package, "README.md": rendered["README.md"],
                                 "pyproject.toml": rendered["pyproject.toml"]})
    return {"wheel": (W.wheel_name(SDK_NAME, version), wheel), "sdist": (W.sdist_name(SDK_NAME, version), sdist)}


_SHELL_HEADER = """#!/bin/sh
# stella-export.sh: curl functions for every operation of the stella-build Export Center API
# ({title}, API {version}), generated from specs/openapi.json. Source it from a POSIX shell:
#
#   export STELLA_SERVER=http://127.0.0.1:8080 STELLA_TOKEN=...   # STELLA_TENANT: tokens of several tenants
#   . ./stella-export.sh
#   profiles_api_export_profiles_get
#
# Path parameters are the functions' arguments (URL-encode them: a label //pkg:name may be given as
# pkg:name); a JSON body, when the operation takes one, is the last argument (default: an example).
STELLA_SERVER=${{STELLA_SERVER:-http://127.0.0.1:8080}}

_stella_curl() {{  # curl with the token and tenant headers when they are set
	[ -z "${{STELLA_TENANT:-}}" ] || set -- -H "X-Stella-Tenant: $STELLA_TENANT" "$@"
	[ -z "${{STELLA_TOKEN:-}}" ] || set -- -H "Authorization: Bearer $STELLA_TOKEN" "$@"
	curl -sS "$@"
}}
"""

_SDK_METHODS = [
    ("Client(server, token=None, tenant=None, timeout=60.0)", None, "a client", None),
    ("client.profiles()", "profiles", "list[Profile]", "GET"),
    ("client.profile(label)", "profile", "Profile", "GET"),
    ("client.submit(profile, *, selectors=None, sign=False, idempotency_key=None)", "runs", "RunAccepted", "POST"),
    ("client.run(run_id)", "run", "Run", "GET"),
    ("client.cancel(run_id)", "cancel", "Run", "POST"),
    ("client.events(run_id, last_event_id=None)", "events", "Iterator[Event]", "GET"),
    ("client.wait(run_id, timeout=3600.0)", "events", "Run (final)", "GET"),
    ("client.download(run_id, dest)", "file", "list[Path] (verified)", "GET"),
]


def devportal_assemble(actx: ActionContext) -> dict:
    """Render, check, pack and (with a key) sign the bundle (see the module docstring)."""
    from stella_build.rules.devportal_site import Doc, MarkdownProblem, render_site
    from stella_build.rules.devportal_specs import SpecError, exportfile_model, openapi_model, sdk_paths, shell_examples
    from stella_build.rules.formats.devportal_policy import check_references
    from stella_build.rules.formats.devportal_schemas import schema_documents
    from stella_build.rules.formats.devportal_scripts import instructions, verify_script

    p = actx.params
    epoch = int(actx.source_date_epoch)
    src = p["sources"]
    openapi_bytes = _read(actx, "src/openapi.json", src["src/openapi.json"])
    schema_bytes = _read(actx, "src/exportfile.schema.json", src["src/exportfile.schema.json"])
    changelog = _text(_read(actx, "src/CHANGELOG.md", src["src/CHANGELOG.md"]), src["src/CHANGELOG.md"])
    openapi = _json(openapi_bytes, src["src/openapi.json"])
    try:
        api = openapi_model(openapi)
        paths = sdk_paths(openapi)
    except SpecError as exc:
        raise ActionError(str(exc), file=src["src/openapi.json"], field=exc.field,
                          reason="devportal-spec-invalid") from None
    try:
        exportfile = exportfile_model(_json(schema_bytes, src["src/exportfile.schema.json"]))
    except SpecError as exc:
        raise ActionError(str(exc), file=src["src/exportfile.schema.json"], field=exc.field,
                          reason="devportal-spec-invalid") from None
    docs = [Doc(name, _text(_read(actx, f"src/docs/{name}", logical), logical), logical)
            for name, logical in p["docs"].items()]

    files: dict[str, bytes] = {}
    # specs/
    files["specs/openapi.json"] = openapi_bytes
    files["specs/exportfile.schema.json"] = schema_bytes
    for name, doc in schema_documents().items():
        files[f"specs/{name}"] = _pretty(doc)
    # sdks/
    sdk = _build_sdk(_assets(actx, "sdk/python"), version=p["sdk_version"], api=api, paths=paths, epoch=epoch,
                     generator=f"stella-build ({p['builder_version']})")
    wheel_name, wheel = sdk["wheel"]
    sdist_name, sdist = sdk["sdist"]
    files[f"sdks/python/{wheel_name}"] = wheel
    files[f"sdks/python/{sdist_name}"] = sdist
    shell = shell_examples(openapi, api)
    files["sdks/shell/stella-export.sh"] = (
        _SHELL_HEADER.format(title=api["info"]["title"], version=api["info"]["version"])
        + "".join("\n" + s["code"] for s in shell)).encode("utf-8")
    # root files
    signed = p["signer"] is not None
    key = _load_key(actx) if signed else None
    if key is not None:
        from stella_build.rules.formats.keys import encode_public_key

        files[D.PUBLIC_KEY] = encode_public_key(key.public_key())
    files[D.INSTRUCTIONS] = instructions(signed=signed, sdk_wheel=wheel_name)
    files[D.VERIFY_SCRIPT] = verify_script()
    # portal/ and changelog/
    specs = [{"path": f"specs/{name}", "sha256": sha256_hex(files[f"specs/{name}"]),
              "title": title, "description": desc}
             for name, title, desc in _spec_list(api, exportfile)]
    sdk_pages = [
        {"name": "python", "template": "sdk_python.html.j2", "title": "Python SDK",
         "summary": f"{SDK_NAME} {p['sdk_version']}: a typed client (submit, watch, download with verification)",
         "wheel": f"sdks/python/{wheel_name}", "sdist": f"sdks/python/{sdist_name}",
         "wheelSha256": sha256_hex(wheel), "sdistSha256": sha256_hex(sdist), "requiresPython": SDK_REQUIRES_PYTHON,
         "methods": [{"call": call, "http": f"{method} {paths[op]}" if op else "", "returns": ret,
                      "slug": next((o["slug"] for o in api["operations"]
                                    if op and o["path"] == paths[op] and o["method"] == method), None)}
                     for call, op, ret, method in _SDK_METHODS]},
        {"name": "shell", "template": "sdk_shell.html.j2", "title": "Shell (curl)",
         "summary": f"{len(shell)} curl functions, one per operation, for any POSIX shell",
         "script": "sdks/shell/stella-export.sh"},
    ]
    meta = {"builderVersion": p["builder_version"], "generatedAt": rfc3339(epoch), "target": p["target"]}
    try:
        site, data_links = render_site(templates={k: v.decode("utf-8") for k, v in _assets(actx, "templates").items()},
                           static=_assets(actx, "static"), api=api, exportfile=exportfile, docs=docs,
                           changelog=changelog, specs=specs, sdks=sdk_pages, shell=shell, meta=meta)
    except MarkdownProblem as exc:
        raise ActionError(f"line {exc.line}: {exc}", file=exc.file, reason="devportal-external-asset",
                          extra={"line": exc.line}) from None
    files.update(site)
    problems = check_references(files, data_links=data_links)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ActionError(f"{first.path}:{first.line}: {first.message} [checks.policy = "
                          f"{p['checks']['policy']!r}]{more}", file=first.path, reason=first.reason,
                          extra={"line": first.line})

    # manifest.json, its signature, checksums.txt
    listed = D.entries({path: (sha256_hex(data), len(data)) for path, data in files.items()})
    metadata = {"target": p["target"], "builder": {"id": BUILDER_ID, "version": p["builder_version"]},
                "api": {"title": api["info"]["title"], "version": api["info"]["version"]},
                "sdk": {"python": {"name": SDK_NAME, "version": p["sdk_version"]}},
                "checks": p["checks"], "signed": signed}
    manifest_doc = D.manifest(listed=listed, generated_at=rfc3339(epoch), sdk_names=["python", "shell"],
                              metadata=metadata)
    manifest = canonical_json.dumps(manifest_doc)
    files[D.MANIFEST] = manifest
    if key is not None:
        from stella_build.rules.formats.signing import IN_TOTO_PAYLOAD_TYPE, dsse_envelope

        payload = D.statement_bytes(D.manifest_statement(manifest, manifest_doc))
        files[D.DSSE] = canonical_json.dumps(dsse_envelope(payload, IN_TOTO_PAYLOAD_TYPE, key))
    files[D.CHECKSUMS] = D.checksums_txt({path: sha256_hex(data) for path, data in files.items()})

    entries = [TarEntry(path, data=data, mode=0o755 if path in D.EXECUTABLE else 0o644)
               for path, data in files.items()]
    archive = gzip_bytes(tar_bytes(entries, mtime=epoch), p["level"])
    digest = sha256_hex(archive)
    actx.write_output(D.ARCHIVE, archive)
    actx.write_output(D.ARCHIVE + ".sha256", f"{digest}  {D.ARCHIVE}\n".encode())
    for path, data in files.items():
        out = actx.write_output(path, data)
        if path in D.EXECUTABLE:
            out.chmod(0o755)
    provenance = _provenance(p, epoch, digest, manifest, actx)
    actx.write_output(D.PROVENANCE, canonical_json.dumps(provenance))
    return {"files": len(files), "bytes": len(archive), "pages": sum(1 for f in files if f.endswith(".html"))}


def _spec_list(api: dict, exportfile: dict) -> list[tuple[str, str, str]]:
    from stella_build.rules.formats.devportal_schemas import SCHEMAS

    out = [("openapi.json", f"OpenAPI {api['openapi']}: {api['info']['title']} {api['info']['version']}",
            "the HTTP API of `stella-build serve`, as the service itself serves it at /.well-known/openapi"),
           ("exportfile.schema.json", "JSON Schema of Exportfiles",
            f"{len(exportfile['rules'])} rules; editors validate Exportfiles with it")]
    out += [(name, doc["title"], doc["description"]) for name, doc in SCHEMAS.items()]
    return out


def _load_key(actx: ActionContext):
    """The signing key from the action's secrets, checked against the public key digest of the key."""
    from stella_build.rules.formats.keys import SigningKeyError, load_private_key, public_key_digest

    try:
        key_path, password = actx.secrets["key_path"], actx.secrets["password"]
    except KeyError:
        raise ActionError("the bundle is signed but the action ran without its key (secrets are never cached "
                          "or sent to a remote executor)", reason="signing-key-missing") from None
    try:
        key = load_private_key(Path(key_path).read_bytes(), password.encode("utf-8"), what=key_path)
    except (OSError, SigningKeyError) as exc:
        raise ActionError(f"cannot load the signing key: {exc}", file=key_path, reason="signing-key-unusable") from None
    if public_key_digest(key) != actx.params["signer"]["publicKeySha256"]:
        raise ActionError("the signing key changed between analysis and signing", file=key_path,
                          reason="signing-key-unusable")
    return key


def _provenance(p: dict, epoch: int, archive_sha256: str, manifest: bytes, actx: ActionContext) -> dict:
    from stella_build.engine.rule_api import library_versions
    from stella_build.rules.formats.signing import SLSA_PROVENANCE_V1, in_toto_statement

    deps = [{"name": logical, "digest": {"sha256": sha256_hex(actx.input(name).read_bytes())}}
            for name, logical in sorted({**p["sources"], **{f"src/docs/{n}": l for n, l in p["docs"].items()}}.items())]
    internal = {"sourceDateEpoch": epoch, "rules": p["rules"], "libraries": library_versions()}
    if p["signer"] is not None:
        internal["signer"] = p["signer"]
    predicate = {
        "buildDefinition": {"buildType": BUILD_TYPE,
                            "externalParameters": {"target": p["target"], "checks": p["checks"],
                                                   "sdkVersion": p["sdk_version"]},
                            "internalParameters": internal,
                            "resolvedDependencies": sorted(deps, key=lambda d: d["name"])},
        "runDetails": {"builder": {"id": BUILDER_ID, "version": {"stella-build": p["builder_version"]}},
                       "metadata": {}},
    }
    subjects = sorted([(D.ARCHIVE, archive_sha256), (D.MANIFEST, sha256_hex(manifest))])
    return in_toto_statement(subjects, SLSA_PROVENANCE_V1, predicate)


__all__ = ["DevportalOffline", "DevportalOfflineParams", "RULES", "devportal_assemble", "asset_files"]
