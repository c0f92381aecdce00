"""The ``trivy_db`` and ``trivy_java_db`` rules: Trivy's vulnerability DB and Java DB.

trivy_db actions:
- one ``TrivyShard`` per advisory shard of every dep (raw OSV shards are normalized in the same
  action): maps its records to Trivy key/values (``stella_build.rules.formats.trivy.schema``) and writes
  ``kv.jsonl``, lines ``KEY TAB KIND TAB TIEBREAK TAB VALUE TAB MEMBER`` sorted by (sort key,
  tiebreak): KEY and TIEBREAK with backslash, tab and newline escaped (``\\``, ``\t``, ``\n``),
  VALUE the precomputed bbolt value of the key alone, MEMBER the JSON the merge needs when
  several records share the key (compact JSON holds no raw tab or newline, so the split is exact;
  the merge decodes no JSON for a key of one record). The
  sort key is the bucket path and key joined by NUL, so its code-point order is bbolt's byte order.
  Kinds: ``a`` advisory (member: the merge member), ``v`` vulnerability detail (member: the
  detail), ``d`` data source (value: its JSON, no member), ``b`` bucket only. It also writes ``report.json``: the records it could not
  map (ecosystem, reason, ids) and the distribution records Trivy reads approximately.
- one ``TrivyDb`` that k-way merges the sorted shard files (``heapq.merge``), merges the records
  of each key (collisions across shards/sources), streams them into ``BboltWriter`` (memory bounded
  by one key's records plus the writer's open pages), then writes ``metadata.json``,
  ``db.tar.gz``, the OCI layout under ``oci/`` and ``mapping.json`` (keys per top-level bucket,
  the records not mapped grouped by ecosystem and reason, the approximated records): a record
  Trivy cannot read is listed there, never dropped silently.
A changed advisory re-runs its source shard, its TrivyShard and TrivyDb.

trivy_java_db: one ``TrivyJavaDb`` action over a local Maven repository tree of ``*.jar.sha1``
files and/or JSONL lists (``stella_build.rules.formats.trivy.java_db``).

Timestamps come from SOURCE_DATE_EPOCH (``[package] source_date_epoch``) and ``update_interval``,
never from the clock.
"""
from __future__ import annotations

import heapq
import functools
import hashlib
import io
import json
import os
import re
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stella_build.engine.rule_api import canonical_json, rfc3339
from stella_build.engine.rule_api import (
    ActionContext, ActionError, AnalysisContext, DefaultOutputs, Rule, TargetParams, UsageError,
    input_name, record_digest,
)

from stella_build.rules.providers import AdvisorySet, NormalizedAdvisorySet, TrivyArtifacts
from stella_build.rules.signing import SignParams, resolve_signer
from stella_build.rules.formats.trivy.java_db import sqlite_library_version


# Trivy source ids for well-known source names (trivy-db's own ids for these feeds).
KNOWN_SOURCE_IDS = {
    "Python Packaging Advisory Database": "osv",
    "RustSec Advisory Database": "osv",
    "Go Vulnerability Database": "govulndb",
    "The Go Vulnerability Database": "govulndb",
    "GitHub Advisory Database": "ghsa",
}


# Trivy's own data source of the `alpine <release>` buckets (trivy-db pkg/vulnsrc/alpine).
ALPINE_DS = {"id": "alpine", "name": "Alpine Secdb", "url": "https://secdb.alpinelinux.org/"}
MAPPING_SCHEMA = "https://stella-build.dev/schemas/trivy-db-mapping/v1"
# ids listed per not-mapped (ecosystem, code, reason) group in mapping.json; the count is always exact
MAPPING_EXAMPLES = 20


class DataSourceParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., min_length=1, description="Trivy source id (VendorSeverity key), e.g. 'osv'")
    name: str = Field(..., min_length=1, description="data source name; language buckets are '<eco>::<name>'")
    url: str = ""


def _interval(value: str) -> str:
    from stella_build.rules.formats.trivy.interval import parse_interval

    parse_interval(value)  # ValueError → a pydantic error naming the field
    return value


class TrivyDbParams(TargetParams):
    rule: Literal["trivy_db"]
    update_interval: str = Field("24h", description="NextUpdate = SOURCE_DATE_EPOCH + this ('24h', '7d')")
    data_sources: dict[str, DataSourceParams] = Field(default_factory=dict, description=(
        "per dep label (as written in deps): the Trivy data source of its language buckets"))
    sign: SignParams | None = Field(None, description="sign db.tar.gz (docs/signing.md); also enabled by STELLA_SIGNING_KEY")

    @field_validator("update_interval")
    @classmethod
    def _check_interval(cls, value: str) -> str:
        return _interval(value)


class TrivyJavaDbParams(TargetParams):
    rule: Literal["trivy_java_db"]
    srcs: list[str] = Field(..., min_length=1, description=(
        "globs of '*.jar.sha1' files under maven_root and/or '*.jsonl' GAV+sha1 lists"))
    maven_root: str | None = Field(None, description="package-relative root of the Maven repository tree")
    update_interval: str = Field("24h", description="NextUpdate = SOURCE_DATE_EPOCH + this")
    sign: SignParams | None = Field(None, description="sign javadb.tar.gz (docs/signing.md); also enabled by STELLA_SIGNING_KEY")

    @field_validator("update_interval")
    @classmethod
    def _check_interval(cls, value: str) -> str:
        return _interval(value)


_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str) -> str:
    """A data-source id for a source without a known Trivy id ("Foo DB" → "foo-db"). Here, not in
    formats/trivy/schema.py: analysis needs only this, and importing the schema module (evidence
    models, version orders, semver, packaging) cost ~19 ms of every build's analysis."""
    return _SLUG.sub("-", text.lower()).strip("-") or "source"


def _data_source(label, provider, override: DataSourceParams | None) -> dict:
    if override is not None:
        return override.model_dump()
    meta = provider.source
    sid = KNOWN_SOURCE_IDS.get(meta.name)
    if sid is None:
        sid = "alpine" if provider.format == "alpine" else slug(meta.name)
    return {"id": sid, "name": meta.name, "url": meta.url or ""}


def _resolve_data_sources(ctx: AnalysisContext, given: dict) -> dict[str, "DataSourceParams"]:
    """``data_sources`` keys (labels as written in deps) → canonical dep label strings."""
    deps = {str(lbl) for lbl, _ in ctx.deps}
    out = {}
    for key, value in given.items():
        label = f"//{ctx.package}{key}" if key.startswith(":") else key
        if label not in deps:
            raise UsageError(f"data_sources names {key!r}, which is not a dep of this target",
                             field="data_sources")
        out[label] = value
    return out


class TrivyDb(Rule):
    name = "trivy_db"
    version = "2"
    doc = "trivy:db profile: trivy.db (bbolt, schema v2), metadata.json, db.tar.gz and its OCI layout"
    Params = TrivyDbParams
    accepts = (AdvisorySet, NormalizedAdvisorySet)

    def analyze(self, ctx: AnalysisContext, params: TrivyDbParams) -> list:
        overrides = _resolve_data_sources(ctx, params.data_sources)
        shard_outputs = {}
        evidence = {}  # what the provenance lists as materials: the records naming every source file
        index = 0
        names = [lbl.name for lbl, _ in ctx.deps]
        for dep_label, providers in ctx.deps:
            override = overrides.get(str(dep_label))
            # action ids name the dep; two deps with one name (//a:osv, //b:osv) get the position
            dep_id = dep_label.name if names.count(dep_label.name) == 1 else f"{index}-{dep_label.name}"
            for prov in providers:
                if isinstance(prov, AdvisorySet):
                    fmt = "osv-raw"
                    if prov.format != "osv":
                        raise UsageError(f"{dep_label} provides {prov.format!r} records; trivy_db reads OSV",
                                         field="deps")
                elif isinstance(prov, NormalizedAdvisorySet):
                    fmt = "normalized"
                else:
                    continue
                ds = _data_source(dep_label, prov, override)
                os_ds = ds if override is not None else ALPINE_DS
                stats = dict(getattr(prov, "stats", ()))
                for shard, art in prov.shards:
                    if fmt == "osv-raw":  # raw records carry each file's logical path and sha256
                        evidence[f"records/{index:04d}-{dep_id}-{shard}.jsonl"] = art
                    elif shard in stats:  # normalized shards list their files in stats.json
                        evidence[f"stats/{index:04d}-{dep_id}-{shard}.json"] = stats[shard]
                    # the source shard's stats.json lists its quarantined files (mapping.json)
                    shard_stats = {"stats.json": stats[shard]} if shard in stats else {}
                    spec = ctx.action(
                        mnemonic="TrivyShard", id=f"{dep_id}-{shard}", fn=map_shard,
                        inputs={"records.jsonl": art, **shard_stats}, outputs=["kv.jsonl", "report.json"],
                        params={"format": fmt, "dep": index, "data_source": ds, "os_data_source": os_ds,
                                "override": override is not None, "source": prov.source.to_json(),
                                **({"strict": True} if getattr(prov, "strict", False) else {})})
                    shard_outputs[f"kv/{index:04d}-{dep_id}-{shard}.jsonl"] = spec.out("kv.jsonl")
                    shard_outputs[f"report/{index:04d}-{dep_id}-{shard}.json"] = spec.out("report.json")
                index += 1
        if not shard_outputs:
            raise UsageError("trivy_db needs at least one advisory dep (osv_source, rustsec_source, "
                             "alpine_secdb_source, osv_normalize)", field="deps")
        signer = resolve_signer(ctx, params.sign)  # exit 4 here on a missing key or password
        db = ctx.action(mnemonic="TrivyDb", fn=build_db, inputs=shard_outputs,
                        outputs=["trivy.db", "metadata.json", "db.tar.gz", "oci/", "mapping.json"],
                        params={"update_interval": params.update_interval})
        files = {name: db.out(name) for name in ("trivy.db", "metadata.json", "db.tar.gz", "mapping.json")}
        oci = db.out("oci/")
        if signer is not None:  # only adds actions: the unsigned outputs keep their bytes
            added, oci = _sign(ctx, signer, False, files, evidence, self.version)
            files.update(added)
        # mapping.json (what was mapped, what was not and why) is listed with the primary outputs
        # so the build summary names it; it is not part of the DB archive, and a signed build lists
        # it in manifests/export.json (rules/trivy_signed.py) so `stella-build verify` covers it.
        primary: tuple[str, ...] = ("db.tar.gz", "mapping.json")
        return [DefaultOutputs(files=files, trees={"oci": oci}, primary=primary),
                TrivyArtifacts("trivy-db", {n: files[n] for n in ("db.tar.gz", "metadata.json")})]


class TrivyJavaDb(Rule):
    name = "trivy_java_db"
    version = "1"
    doc = "trivy:java-db profile: trivy-java.db (SQLite), metadata.json, javadb.tar.gz and its OCI layout"
    Params = TrivyJavaDbParams
    libraries = {"sqlite": sqlite_library_version()}

    def analyze(self, ctx: AnalysisContext, params: TrivyJavaDbParams) -> list:
        files = ctx.glob(params.srcs)
        if not files:
            raise UsageError(f"srcs {params.srcs} matched no files", field="srcs")
        root = None
        if params.maven_root:
            root = (f"{ctx.package}/{params.maven_root}" if ctx.package else params.maven_root).strip("/")
        inputs, kinds = {}, {}
        for art in files:
            name = input_name(art)
            if name.endswith(".jsonl"):
                kinds[name] = "jsonl"
            elif name.endswith(".jar.sha1"):
                if root is None or not name.startswith(root + "/"):
                    raise UsageError(f"{art.logical} is a .jar.sha1 file outside maven_root "
                                     f"({params.maven_root!r})", field="maven_root")
                kinds[name] = name[len(root) + 1:]
            else:
                raise UsageError(f"{art.logical}: expected *.jar.sha1 or *.jsonl", field="srcs")
            inputs[name] = art
        signer = resolve_signer(ctx, params.sign)
        spec = ctx.action(mnemonic="TrivyJavaDb", fn=build_java_db_action, inputs=inputs,
                          outputs=["trivy-java.db", "metadata.json", "javadb.tar.gz", "oci/"],
                          params={"kinds": kinds, "update_interval": params.update_interval})
        out = {name: spec.out(name) for name in ("trivy-java.db", "metadata.json", "javadb.tar.gz")}
        oci = spec.out("oci/")
        if signer is not None:
            added, oci = _sign(ctx, signer, True, out, {f"files/{n}": a for n, a in inputs.items()},
                               self.version)
            out.update(added)
        return [DefaultOutputs(files=out, trees={"oci": oci}, primary=("javadb.tar.gz",)),
                TrivyArtifacts("trivy-java-db", {n: out[n] for n in ("javadb.tar.gz", "metadata.json")})]


def _sign(ctx: AnalysisContext, signer, java: bool, files: dict, materials: dict, version: str):
    from stella_build.rules.formats.bundle import builder_version
    from stella_build.rules.trivy_signed import add_trivy_signing

    rule = "trivy_java_db" if java else "trivy_db"
    return add_trivy_signing(ctx, signer, java=java, files=files, materials=materials,
                             rules={rule: version}, builder_version=builder_version())


RULES: tuple[type[Rule], ...] = (TrivyDb, TrivyJavaDb)


# -- TrivyShard ------------------------------------------------------------------------------

def _line_advisories(actx: ActionContext, line: bytes) -> list:
    """The normalized advisories of one records.jsonl line (raw OSV lines are normalized here;
    withdrawn raw records give none). Raises EvidenceError for a raw document that does not
    normalize."""
    from stella_build.rules.evidence.model import Advisory, SourceInfo

    if actx.params["format"] == "normalized":
        return [Advisory.model_validate(json.loads(line))]
    from stella_build.rules.evidence.sources.osv import normalize_osv

    raw = json.loads(line)
    if raw.get("withdrawn"):
        return []
    return normalize_osv(raw["document"], raw["path"], SourceInfo(**actx.params["source"]))


def _check_name(text: str, what: str, adv) -> None:
    if "\0" in text or not text:
        raise ActionError(f"{what} {text!r} is empty or contains NUL", file=adv.source_path,
                          field="id" if what == "vulnerability id" else "package")


def _distro_ds(distro, ds, override: bool):
    """The data source of a distribution bucket: the dep's ``data_sources`` override when given,
    else the distribution's own (its trivy-db source id, so Trivy's severity selection reads the
    VendorSeverity these records carry)."""
    from stella_build.rules.formats.trivy.distros import OS_DATA_SOURCES
    from stella_build.rules.formats.trivy.schema import DataSource

    if override:
        return ds
    sid, name, url = OS_DATA_SOURCES[distro.base]
    return DataSource(sid, name, url)


def _map_record(actx: ActionContext, advisories: list) -> bytes:
    """The mapping of one records.jsonl line's advisories, as the bytes ``map_shard`` replays
    (and memoizes: a pure function of the line and the action params).

    Two parts, so a replay decodes only a small header (the kv lines, most of the bytes, are
    never JSON-escaped inside JSON: decoding them cost ~30 µs a record, half of a replay):

    - line 1, a JSON list with one event per advisory: ``["x", ecosystem, code, reason, id]`` not
      mapped, ``["s"]`` nothing to write, or ``["e", approximation note | null, bucket, data
      source JSON, tiebreak, items]`` where items are ``["a", sort key]`` (an advisory entry) and
      ``["v", vulnerability id, sha256 of the detail JSON]`` (a vulnerability detail, sort key
      ``vulnerability\0<id>``, written once per (id, detail) in the shard, so the advisory's
      repeats for other packages are left out here already);
    - then the kv line of every item, in item order, each ending in a newline (kv lines never
      hold a raw newline: ``_kv_line`` escapes the names, compact JSON escapes control
      characters)."""
    from stella_build.rules.formats.trivy.schema import (
        DataSource, NotMappable, dumps_member, merge_advisories, merge_vulnerability, record_entries,
        trivy_route, vulnerability_detail,
    )

    dep = actx.params["dep"]
    ds = DataSource(**actx.params["data_source"])
    alpine_ds = DataSource(**actx.params["os_data_source"])
    override = actx.params.get("override", False)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    events: list = []
    texts: list[str] = []
    for adv in advisories:
        try:
            kind, where, distro = trivy_route(adv.ecosystem)
            if kind == "alpine":
                bucket, bucket_ds = where, alpine_ds
            elif kind == "lang":
                bucket, bucket_ds = f"{where}::{ds.name}", ds
            else:
                bucket, bucket_ds = where, _distro_ds(distro, ds, override)
            entries, note = record_entries(adv, bucket, distro)
        except NotMappable as exc:
            # kept in json:raw; listed in mapping.json with the ecosystem and the reason
            events.append(["x", adv.ecosystem, exc.code, str(exc), adv.id])
            continue
        if not entries:
            events.append(["s"])
            continue
        approx = [adv.id, adv.ecosystem, adv.package.name, adv.source_path, note] if note is not None else None
        tiebreak = f"{dep:04d}\0{adv.id}\0{adv.source_path}"
        detail = vulnerability_detail(adv, bucket_ds.id)
        # what a detail is written once per: its digest, not its text (the text is in the kv line
        # already; a third copy made the memo entries a third larger and slower to replay)
        detail_text = hashlib.sha256(dumps_member(detail).encode("utf-8", "surrogatepass")).hexdigest()
        items: list = []
        vids: set[str] = set()
        for bucket_name, pkg, vid, member in entries:
            _check_name(pkg, "package name", adv)
            _check_name(vid, "vulnerability id", adv)
            value = merge_advisories([member]).decode()
            key = f"{bucket_name}\0{pkg}\0{vid}"
            items.append(["a", key])
            texts.append(_kv_line(dumps, key, "a", tiebreak, value, dumps(member)))
            if vid in vids:  # the same line again (same id, detail, tiebreak): replay drops it
                continue
            vids.add(vid)
            vline = _kv_line(dumps, f"vulnerability\0{vid}", "v", tiebreak,
                             merge_vulnerability(vid, [detail]).decode(), dumps(detail))
            items.append(["v", vid, detail_text])
            texts.append(vline)
        events.append(["e", approx, bucket, bucket_ds.to_json_bytes().decode(), tiebreak, items])
    texts.append("")
    # the kv lines strictly (kv.jsonl is UTF-8: a lone surrogate fails here, as writing it would)
    return dumps(events).encode("utf-8", "surrogatepass") + b"\n" + "\n".join(texts).encode("utf-8")


# one decoder for every replayed header: json.loads(bytes) re-detects the encoding each call
_decode_json = json.JSONDecoder().decode


def map_shard(actx: ActionContext) -> dict:
    """One shard's records → sorted Trivy key/value lines and the shard's mapping report (see
    the module docstring). Each line's mapping is computed by ``_map_record`` or replayed from
    the per-record memo (docs/engine.md "Incremental rebuilds"); both go through the same
    replay below, so a memo hit cannot produce other bytes than a fresh computation."""
    from stella_build.rules.evidence.model import EvidenceError

    dep = actx.params["dep"]
    memo = actx.memo("trivy-shard", map_shard)
    lines: list[tuple[str, str, bytes]] = []  # (sort key, tiebreak, kv line as UTF-8)
    sources: dict[str, str] = {}
    stats = {"records": 0, "entries": 0, "skipped": 0, "not_mapped": 0, "approximated": 0}
    not_mapped: dict[tuple[str, str, str], list[str]] = {}
    approximated: list[list[str]] = []
    details_seen: set[tuple[str, str]] = set()
    late_quarantined: list[dict] = []  # raw OSV documents that do not normalize
    # read, not staged: a 2–10 MB copy per shard is a file creation plus a write for nothing
    with io.BytesIO(actx.read_input("records.jsonl")) as f:
        for line in f:
            digest = record_digest(line)
            mapped = memo.get(digest)
            if mapped is None:
                try:
                    advisories = _line_advisories(actx, line)
                except EvidenceError as exc:  # never memoized: re-checked every run
                    if actx.params.get("strict"):
                        raise ActionError(exc.message, file=exc.path, field=exc.field,
                                          reason=exc.reason) from None
                    late_quarantined.append({"path": exc.path, "field": exc.field,
                                             "reason": exc.reason, "message": exc.message})
                    continue
                mapped = _map_record(actx, advisories)
                memo.put(digest, mapped)
            texts = mapped.split(b"\n")  # [header, kv line, ..., b""]: written as they are
            pos = 1
            for event in _decode_json(texts[0].decode("utf-8", "surrogatepass")):
                stats["records"] += 1
                if event[0] == "x":
                    not_mapped.setdefault((event[1], event[2], event[3]), []).append(event[4])
                    stats["not_mapped"] += 1
                    continue
                if event[0] == "s":
                    stats["skipped"] += 1
                    continue
                _, approx, bucket, bucket_ds, tiebreak, items = event
                if approx is not None:
                    approximated.append(approx)
                    stats["approximated"] += 1
                sources.setdefault(bucket, bucket_ds)
                for item in items:
                    text = texts[pos]
                    pos += 1
                    if item[0] == "a":
                        lines.append((item[1], tiebreak, text))
                        stats["entries"] += 1
                    elif (item[1], item[2]) not in details_seen:
                        details_seen.add((item[1], item[2]))
                        lines.append(("vulnerability\0" + item[1], tiebreak, text))
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    for bucket, src in sources.items():
        key = f"data-source\0{bucket}"
        lines.append((key, f"{dep:04d}", _kv_line(dumps, key, "d", f"{dep:04d}", src, "").encode()))
    lines.sort(key=itemgetter(0, 1))  # stable: equal (key, tiebreak) keep their record order
    with open(actx.output("kv.jsonl"), "wb") as out:
        out.write(b"".join(text + b"\n" for _, _, text in lines))
    report = {"records": stats["records"],
              "not_mapped": [[eco, code, reason, sorted(ids)]
                             for (eco, code, reason), ids in sorted(not_mapped.items())],
              "approximated": sorted(approximated)}
    source_quarantined = (json.loads(actx.input("stats.json").read_bytes()).get("quarantined") or []
                          if "stats.json" in actx.inputs else [])
    if source_quarantined or late_quarantined:  # only then: clean shards keep their bytes
        report["quarantined"] = sorted(source_quarantined + late_quarantined,
                                       key=lambda q: (q["path"], q["field"]))
    actx.write_output("report.json", canonical_json.dumps(report))
    memo.save()
    stats["memo"] = memo.stats()
    if late_quarantined:  # the source shard already warned about its own quarantined files
        stats["quarantined"] = len(late_quarantined)
        stats["warnings"] = [{"file": q["path"], "field": q["field"], "reason": q["reason"],
                              "message": f"quarantined (skipped): {q['message']}"} for q in late_quarantined]
    return stats


# -- TrivyDb ----------------------------------------------------------------------------------

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n"})
_UNESCAPE = re.compile(r"\\(.)")
_UNESCAPED = {"\\": "\\", "t": "\t", "n": "\n"}


def _kv_line(dumps, key: str, kind: str, tiebreak: str, value: str, member: str) -> str:
    """One kv.jsonl line (module docstring). Names may hold any character but NUL, so the key
    and tiebreak escape backslash, tab and newline; compact JSON never holds a raw tab or newline.
    (A JSON header cost 6 µs a line to decode in the merge, a third of its time.)"""
    return f"{key.translate(_ESCAPES)}\t{kind}\t{tiebreak.translate(_ESCAPES)}\t{value}\t{member}"


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], text) if "\\" in text else text


_KINDS = {b"a": "a", b"v": "v", b"d": "d", b"b": "b"}


def _read_lines(path: Path | Callable[[], BinaryIO]) -> Iterator[tuple[str, str, bytes, bytes, bytes]]:
    """(sort key, kind, tiebreak as written — escaped UTF-8 —, value bytes, member JSON bytes)
    of each kv.jsonl line (`path`, or an opener of the stream, e.g. ``actx.open_input``). The
    tiebreak is only decoded (``_tiebreak``) when several records share a key: most keys have
    one, and this loop runs once per key of the DB."""
    with (path() if callable(path) else open(path, "rb")) as f:
        for line in f:
            key, kind, tiebreak, value, member = line.rstrip(b"\n").split(b"\t")
            text = key.decode("utf-8")
            yield (_unescape(text) if "\\" in text else text, _KINDS.get(kind, kind.decode("utf-8", "replace")),
                   tiebreak, value, member)


def _tiebreak(raw: bytes) -> str:
    return _unescape(raw.decode("utf-8"))


def _payload(item: tuple) -> object:
    """The record's payload as one object (what a key's records are ordered and merged by)."""
    kind, value, member = item[1], item[3], item[4]
    if kind == "a":
        return {"m": json.loads(member), "v": value.decode()}
    if kind == "v":
        return {"d": json.loads(member), "v": value.decode()}
    return value.decode() if kind == "d" else None


def _group_record(group: list[tuple]) -> bytes:
    """The bytes a merged key's value is a function of: its records' lines (sort key, kind,
    tiebreak, value, member), sorted (the merge's result does not depend on the shards'
    order). What the merge memo is keyed by."""
    return b"\n".join(sorted(b"\t".join((g[0].encode("utf-8", "surrogatepass"), g[1].encode(), g[2], g[3], g[4]))
                             for g in group))


def _merged_items(paths: list[Path | Callable[[], BinaryIO]], memo=None) -> Iterator[tuple[list[str], str | None, bytes | None]]:
    """(bucket path, key or None, value) in bbolt order, one per distinct key. A key of one
    record takes its precomputed value as is; only keys shared by several records decode
    their payloads to merge them (the same vulnerability's details from several advisories:
    ~4k of the 280k keys at 100k advisories, yet ~40 % of the merge's time). `memo` (the
    action's ``RecordMemo``, or None): such a merged value is looked up by the digest of its
    records (`_group_record`) and stored when computed, so a rebuild merges only the keys
    whose records changed; a hit and a computation give the same bytes (a pure function of
    those records and the code, which scopes the memo)."""
    from stella_build.rules.formats.trivy.schema import merge_advisories, merge_vulnerability

    streams = [_read_lines(p) for p in paths]
    streams.append(iter([("vulnerability", "b", b"", b"", b"")]))  # Trivy needs this bucket
    for sort_key, group in groupby(heapq.merge(*streams, key=itemgetter(0)), key=itemgetter(0)):
        group = list(group)
        parts = sort_key.split("\0")
        kind = group[0][1]
        if kind == "b":
            yield parts, None, None
            continue
        if kind not in ("a", "v", "d"):
            raise ActionError(f"unknown record kind {kind!r} in shard output")
        if len(group) == 1:
            yield parts[:-1], parts[-1], group[0][3]
            continue
        digest = record_digest(_group_record(group)) if memo is not None else None
        if digest is not None:
            value = memo.get(digest)
            if value is not None:
                yield parts[:-1], parts[-1], value
                continue
        payloads = sorted(((_tiebreak(g[2]), json.dumps(p, sort_keys=True), p) for g in group
                           for p in (_payload(g),)), key=lambda t: (t[0], t[1]))
        if kind == "a":
            value = merge_advisories([p["m"] for _, _, p in payloads])
        elif kind == "v":
            details = list({json.dumps(p["d"], sort_keys=True): p["d"] for _, _, p in payloads}.values())
            value = (payloads[0][2]["v"].encode() if len(details) == 1
                     else merge_vulnerability(parts[-1], details))
        else:
            value = payloads[0][2].encode()
        if digest is not None:
            memo.put(digest, value)
        yield parts[:-1], parts[-1], value


def write_trivy_db(dest: Path, paths: list[Path | Callable[[], BinaryIO]], per_bucket: dict | None = None,
                   memo=None) -> dict:
    """Stream the merged shard files into a bbolt file at ``dest``; returns counts.

    ``per_bucket``, when given, receives ``{top-level bucket: {"packages": n, "keys": n}}``
    (packages: second-level buckets; keys: every key below the bucket). ``memo``: the merge
    memo of `_merged_items` (None: every shared key merged)."""
    from stella_build.rules.formats.trivy.bbolt import BboltWriter

    stats = {"keys": 0, "buckets": 0}
    with open(dest, "wb") as f:
        w = BboltWriter(f)
        current: list[str] = []
        for path, key, value in _merged_items(paths, memo):
            if path == current and key is not None:  # most keys: same bucket as the one before
                if per_bucket is not None:
                    per_bucket[path[0]]["keys"] += 1
                w.put(key.encode(), value)
                stats["keys"] += 1
                continue
            if per_bucket is not None:
                top = per_bucket.setdefault(path[0], {"packages": 0, "keys": 0})
                if len(path) > 1 and (len(current) < 2 or current[:2] != path[:2]):
                    top["packages"] += 1
                if key is not None:
                    top["keys"] += 1
            common = 0
            while common < min(len(current), len(path)) and current[common] == path[common]:
                common += 1
            for _ in range(len(current) - common):
                w.end_bucket()
            for name in path[common:]:
                w.begin_bucket(name.encode())
                stats["buckets"] += 1
            current = list(path)
            if key is not None:
                w.put(key.encode(), value)
                stats["keys"] += 1
        w.close()
        f.flush()
        os.fsync(f.fileno())
    stats["pages"] = os.path.getsize(dest) // 4096
    return stats


def _epoch(actx: ActionContext) -> int:
    if actx.source_date_epoch is None:
        raise ActionError("trivy DBs need SOURCE_DATE_EPOCH ([package] source_date_epoch) for "
                          "metadata.json", field="source_date_epoch")
    return int(actx.source_date_epoch)


def _metadata(actx: ActionContext, version: int) -> bytes:
    from stella_build.rules.formats.trivy.packaging import metadata_json, parse_interval

    return metadata_json(version, _epoch(actx), parse_interval(actx.params["update_interval"]))


def _package(actx: ActionContext, db_name: str, archive: str, version: int, java: bool,
             ahead=None) -> None:
    from stella_build.rules.formats.trivy.packaging import write_db_archive, write_oci_layout

    epoch = _epoch(actx)
    meta = _metadata(actx, version)
    actx.write_output("metadata.json", meta)
    db_path = actx.output(db_name)
    arc = actx.output(archive)
    write_db_archive(arc, {db_name: db_path, "metadata.json": meta}, epoch, ahead=ahead)
    write_oci_layout(actx.output("oci/"), arc, rfc3339(epoch), java=java)


def build_db(actx: ActionContext) -> dict:
    from stella_build.rules.formats.trivy.bbolt import DEFAULT_PAGE_SIZE, HEAD_PAGES
    from stella_build.rules.formats.trivy.packaging import start_ahead

    # streamed from the cache, checked as read: staging copies of the shard files (~150 MB at
    # 100k advisories) would be written and hashed once more in this serial step
    paths = [functools.partial(actx.open_input, name) for name in sorted(actx.inputs) if name.startswith("kv/")]
    per_bucket: dict[str, dict] = {}
    # the values of keys several records share, by the digest of those records (a rebuild
    # re-merges only the keys whose records changed)
    memo = actx.memo("trivy-db-merge", build_db)
    # db.tar.gz's blocks are deflated by a child process on the other core while this one merges
    # and writes the DB (gzip_ahead.py); the archive's bytes do not depend on it
    db_path = actx.output("trivy.db")
    ahead = start_ahead({"metadata.json": _metadata(actx, 2)}, _epoch(actx), "trivy.db", db_path,
                        HEAD_PAGES * DEFAULT_PAGE_SIZE)
    try:
        stats = write_trivy_db(db_path, paths, per_bucket, memo)
    finally:
        if ahead is not None:
            ahead.stop()
    memo.save()
    stats["memo"] = memo.stats()
    _package(actx, "trivy.db", "db.tar.gz", 2, java=False, ahead=ahead)
    mapping = mapping_report([actx.input(n) for n in sorted(actx.inputs) if n.startswith("report/")], per_bucket)
    actx.write_output("mapping.json", canonical_json.dumps(mapping))
    stats["not_mapped"] = sum(g["records"] for g in mapping["notMapped"])
    stats["approximated"] = len(mapping["approximated"])
    return stats


def mapping_report(reports: list[Path], per_bucket: dict[str, dict]) -> dict:
    """mapping.json: the DB's top-level buckets with their package and key counts; the records
    no bucket holds, grouped by (ecosystem, code, reason) with an exact count and the first
    ``MAPPING_EXAMPLES`` ids (sorted); the distribution records Trivy reads approximately."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    approximated: list[list[str]] = []
    quarantined: dict[tuple[str, str], dict] = {}
    records = 0
    for path in reports:
        report = json.loads(path.read_bytes())
        records += report["records"]
        quarantined.update({(q["path"], q["field"]): q for q in report.get("quarantined", ())})
        for eco, code, reason, ids in report["not_mapped"]:
            groups.setdefault((eco, code, reason), []).extend(ids)
        approximated += report["approximated"]
    return {
        "schema": MAPPING_SCHEMA,
        "records": records,
        "buckets": {name: per_bucket[name] for name in sorted(per_bucket)},
        "notMapped": [{"ecosystem": eco, "code": code, "reason": reason, "records": len(ids),
                       "ids": sorted(set(ids))[:MAPPING_EXAMPLES]}
                      for (eco, code, reason), ids in sorted(groups.items())],
        "approximated": [dict(zip(("id", "ecosystem", "package", "path", "note"), a))
                         for a in sorted(approximated)],
        # malformed input files left out of the DB; the key is absent when there are none
        **({"quarantined": [quarantined[k] for k in sorted(quarantined)]} if quarantined else {}),
    }


# -- TrivyJavaDb ------------------------------------------------------------------------------

def _java_entries(actx: ActionContext) -> Iterator:
    from stella_build.rules.formats.trivy.java_db import JavaDbInputError, parse_jsonl, parse_maven_repo

    kinds: dict[str, str] = actx.params["kinds"]
    maven = sorted((n, rel) for n, rel in kinds.items() if rel != "jsonl")
    try:
        if maven:
            for other, _ in maven:  # the walk below reads the staged tree: stage every file first
                actx.input(other)
            name, rel = maven[0]
            root = actx.input(name).parents[len(Path(rel).parts) - 1]
            yield from parse_maven_repo(root)
        for name in sorted(n for n, k in kinds.items() if k == "jsonl"):
            yield from parse_jsonl(actx.input(name))
    except JavaDbInputError as exc:
        raise ActionError(str(exc)) from None


def build_java_db_action(actx: ActionContext) -> dict:
    from stella_build.rules.formats.trivy.java_db import JavaDbInputError, build_java_db

    try:
        stats = build_java_db(actx.output("trivy-java.db"), _java_entries(actx))
    except JavaDbInputError as exc:
        raise ActionError(str(exc)) from None
    _package(actx, "trivy-java.db", "javadb.tar.gz", 1, java=True)
    return stats
