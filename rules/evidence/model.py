"""The normalized evidence model every source parser produces.

One ``Advisory`` is one vulnerability record for one package in one ecosystem, whatever the source
format (OSV JSON/YAML, RustSec Markdown, Alpine secdb). VEX documents become ``VexStatement``s and
SBOMs become ``SbomComponent``s. Models are immutable pydantic v2 models with ``extra="forbid"``;
``to_canonical()`` gives a plain dict for ``stella_build.engine.encode.canonical_json`` and
``sort_key()`` gives the one canonical ordering.

Conventions (documented for bundle consumers):
- ``ecosystem`` uses OSV's spelling: "PyPI", "Go", "crates.io", "npm", "Maven", and for
  distributions "<Distro>:<release>" exactly as OSV writes it ("Alpine:v3.11"). The base name
  and the release are available as ``ecosystem_name`` / ``ecosystem_release`` properties.
- ``package.name`` is the source's spelling; ``package.normalized`` is the ecosystem's canonical
  form (PyPI: PEP 503; crates.io: lower-case with "_" -> "-"; others unchanged).
  ``trivy_package_name()`` gives Trivy's key spelling, which differs (see the function).
- Timestamps are RFC 3339 UTC strings ending in "Z"; fractional seconds are kept only when
  non-zero, trailing zeros trimmed, so every instant has one spelling.
- Sequences that are sets in meaning (aliases, related, references, cwe_ids, fixed_versions of
  different ranges) are sorted and deduplicated; range events keep their source order.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import re
from typing import Any, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stella_build.rules.evidence.bounded import MAX_JSON_BYTES, DocumentError, load_json, read_capped

__all__ = [
    "EvidenceError",
    "MAX_EVIDENCE_BYTES",
    "SourceInfo",
    "Package",
    "RangeEvent",
    "Range",
    "Severity",
    "Reference",
    "Advisory",
    "VexStatement",
    "SbomComponent",
    "load_json_document",
    "read_evidence_file",
    "read_evidence_input",
    "model_errors",
    "normalize_package_name",
    "trivy_package_name",
    "rfc3339",
    "jsonable",
    "cvss_severity",
    "ecosystem_from_purl_type",
]


class EvidenceError(Exception):
    """Bad evidence input: names the file (``path``), the field and what is wrong.

    ``reason`` is the machine-readable reason the build reports: ``evidence-invalid`` (bad
    syntax, a bad field, a parsing limit of ``evidence.bounded`` exceeded) or
    ``evidence-too-large`` (the file is over its size limit).
    """

    def __init__(self, path: str, field: str, message: str, reason: str = "evidence-invalid") -> None:
        super().__init__(f"{path}: {field}: {message}")
        self.path = path
        self.field = field
        self.message = message
        self.reason = reason

    @classmethod
    def from_document(cls, path: str, exc: DocumentError) -> "EvidenceError":
        """The EvidenceError for a DocumentError of the bounded loaders, naming ``path``."""
        return cls(path, exc.field, exc.message,
                   "evidence-too-large" if exc.too_large else "evidence-invalid")

    def __reduce__(self) -> tuple[Any, ...]:  # keep it picklable across worker processes
        return (EvidenceError, (self.path, self.field, self.message, self.reason))


_FROZEN = ConfigDict(extra="forbid", frozen=True)


class SourceInfo(BaseModel):
    """Where a set of records comes from and the terms it is redistributed under."""

    model_config = _FROZEN
    name: str
    url: Optional[str] = None
    license: Optional[str] = None
    attribution: Optional[str] = None


class Package(BaseModel):
    model_config = _FROZEN
    name: str
    normalized: str
    purl: Optional[str] = None


EventKind = Literal["introduced", "fixed", "last_affected", "limit"]


class RangeEvent(BaseModel):
    model_config = _FROZEN
    kind: EventKind
    version: str


class Range(BaseModel):
    """One OSV range; ``events`` keep the source order (evaluation sorts them itself)."""

    model_config = _FROZEN
    type: Literal["ECOSYSTEM", "SEMVER", "GIT"]
    repo: Optional[str] = None
    events: tuple[RangeEvent, ...]
    database_specific: Optional[dict[str, Any]] = None


SeverityType = Literal["CVSS_V2", "CVSS_V3", "CVSS_V4", "vendor"]


class Severity(BaseModel):
    """A CVSS vector with its computed base score, or a vendor label ("HIGH", "unmaintained")."""

    model_config = _FROZEN
    type: SeverityType
    vector: Optional[str] = None
    score: Optional[float] = None
    label: Optional[str] = None
    source: Optional[str] = None  # who assigned it when not the record's own source


class Reference(BaseModel):
    model_config = _FROZEN
    type: str
    url: str


class Advisory(BaseModel):
    """One vulnerability record for one package (see the module docstring for conventions)."""

    model_config = _FROZEN
    id: str
    aliases: tuple[str, ...] = ()
    related: tuple[str, ...] = ()
    source: SourceInfo
    source_path: str
    ecosystem: str
    package: Package
    ranges: tuple[Range, ...] = ()
    versions: tuple[str, ...] = ()
    fixed_versions: tuple[str, ...] = ()
    severity: tuple[Severity, ...] = ()
    summary: Optional[str] = None
    details: Optional[str] = None
    references: tuple[Reference, ...] = ()
    cwe_ids: tuple[str, ...] = ()
    published: Optional[str] = None
    modified: Optional[str] = None
    withdrawn: Optional[str] = None
    database_specific: dict[str, Any] = Field(default_factory=dict)
    ecosystem_specific: tuple[dict[str, Any], ...] = ()
    affected_database_specific: tuple[dict[str, Any], ...] = ()

    @property
    def ecosystem_name(self) -> str:
        return self.ecosystem.split(":", 1)[0]

    @property
    def ecosystem_release(self) -> Optional[str]:
        _, sep, release = self.ecosystem.partition(":")
        return release if sep else None

    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.ecosystem, self.package.normalized, self.id, self.source_path)

    def to_canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


VexStatus = Literal["known_not_affected", "fixed", "known_affected", "under_investigation"]


class VexStatement(BaseModel):
    """One (vulnerability, product[, component]) status from an OpenVEX or CSAF VEX document."""

    model_config = _FROZEN
    vulnerability: str
    aliases: tuple[str, ...] = ()
    product: str  # purl when the document gives one, else the document's product id / name
    component: Optional[str] = None  # sub-component purl (OpenVEX subcomponents, CSAF relationships)
    status: VexStatus
    justification: Optional[str] = None
    impact: Optional[str] = None
    action: Optional[str] = None
    timestamp: Optional[str] = None
    document_id: Optional[str] = None
    document_format: Literal["openvex", "csaf"]
    source_path: str

    def sort_key(self) -> tuple[str, str, str, str, str]:
        return (self.vulnerability, self.product, self.component or "", self.source_path, self.status)

    def to_canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class SbomComponent(BaseModel):
    """A package found in an SBOM (CycloneDX or SPDX), identified by its purl."""

    model_config = _FROZEN
    subject: Optional[str] = None  # the SBOM's main component / described package
    name: str
    version: Optional[str] = None
    purl: str
    ecosystem: Optional[str] = None  # OSV spelling derived from the purl type
    sbom_format: Literal["cyclonedx", "spdx"]
    source_path: str

    def sort_key(self) -> tuple[str, str, str]:
        return (self.purl, self.subject or "", self.source_path)

    def to_canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- helpers

_PEP503 = re.compile(r"[-_.]+")
# The largest evidence file a source action reads at all (each format then has its own, smaller or
# equal, limit in evidence.bounded).
MAX_EVIDENCE_BYTES = MAX_JSON_BYTES


def load_json_document(data: bytes, path: str) -> Any:
    """Parse a JSON evidence file within the limits of ``evidence.bounded`` (size, nesting, numbers).

    Raises EvidenceError naming ``path``, the field and the position for bad UTF-8 or JSON, NaN or
    Infinity, oversized numbers, nesting deeper than ``MAX_DEPTH`` and files over
    ``MAX_JSON_BYTES`` (reason ``evidence-too-large``).
    """
    try:
        return load_json(data)
    except DocumentError as exc:
        raise EvidenceError.from_document(path, exc) from None


@contextlib.contextmanager
def model_errors(path: str) -> Iterator[None]:
    """Turn a pydantic ValidationError raised while building models from ``path`` into an
    EvidenceError naming the file and the model field (a safety net: parsers check the fields they
    read, so a value the model refuses is still bad evidence, not a bug)."""
    try:
        yield
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "<document>"
        raise EvidenceError(path, field, f"{first.get('msg', 'invalid value')} "
                            f"(got {type(first.get('input')).__name__})") from None


def read_evidence_file(file: str | os.PathLike, path: str, limit: int = MAX_EVIDENCE_BYTES) -> bytes:
    """The bytes of the evidence file ``file`` (logical path ``path``), refused with an
    EvidenceError (reason ``evidence-too-large``) when it is larger than ``limit`` bytes, before
    it is read. Source actions read their inputs through here."""
    try:
        return read_capped(file, limit, "the file")
    except DocumentError as exc:
        raise EvidenceError.from_document(path, exc) from None


def read_evidence_input(actx: Any, name: str, path: str, limit: int = MAX_EVIDENCE_BYTES) -> bytes:
    """``read_evidence_file`` of the action input ``name`` (logical path ``path``) through
    ``actx.read_input``: read from its source and checked against its digest, without a staged
    copy. The same EvidenceError (reason ``evidence-too-large``) past ``limit`` bytes."""
    from stella_build.engine.rule_api import InputTooLarge

    try:
        return actx.read_input(name, limit)
    except InputTooLarge as exc:
        err = DocumentError(f"the file is {exc.size} bytes, more than the {limit} bytes allowed",
                            too_large=True)
        raise EvidenceError.from_document(path, err) from None


def normalize_package_name(ecosystem: str, name: str) -> str:
    """The ecosystem's canonical spelling of a package name (used to match and to key)."""
    base = ecosystem.split(":", 1)[0]
    if base == "PyPI":
        return _PEP503.sub("-", name).lower()
    if base == "crates.io":
        return name.lower().replace("_", "-")
    return name


def trivy_package_name(ecosystem: str, name: str) -> str:
    """Trivy's bucket key spelling (trivy-db ``NormalizePkgName``).

    PyPI: lower-case and "_" -> "-" only (no PEP 503 collapsing of "." or runs). Go module
    paths and Maven coordinates are left as they are; everything else is lower-cased.
    """
    base = ecosystem.split(":", 1)[0]
    if base == "PyPI":
        return name.lower().replace("_", "-")
    if base in ("Go", "Maven"):
        return name
    return name.lower()


_PURL_ECOSYSTEMS = {
    "pypi": "PyPI",
    "golang": "Go",
    "cargo": "crates.io",
    "npm": "npm",
    "maven": "Maven",
    "apk": "Alpine",
    "deb": "Debian",
    "gem": "RubyGems",
    "nuget": "NuGet",
    "composer": "Packagist",
    "hex": "Hex",
    "pub": "Pub",
    "swift": "SwiftURL",
    "rpm": "Red Hat",
}


def ecosystem_from_purl_type(purl_type: str, distro: Optional[str] = None) -> Optional[str]:
    """OSV ecosystem for a purl type; distro packages get ":<release>" when the purl says it."""
    base = _PURL_ECOSYSTEMS.get(purl_type.lower())
    if base is None:
        return None
    if base == "Alpine" and distro:
        release = distro.split("-", 1)[-1] if distro.startswith("alpine-") else distro
        if release and release[0].isdigit():
            release = "v" + ".".join(release.split(".")[:2])
        return f"Alpine:{release}"
    return base


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"\s*(Z|z|[+-]\d{2}:?\d{2})?)?$"
)


def rfc3339(value: Any) -> str:
    """Normalize a timestamp (string, date or datetime) to RFC 3339 UTC with "Z".

    Dates become midnight UTC; naive times are taken as UTC; offsets are converted. Raises
    ValueError for text that is not a timestamp.
    """
    if isinstance(value, _dt.datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
        dt = dt.astimezone(_dt.timezone.utc)
        frac = f"{dt.microsecond:06d}".rstrip("0")
        return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"
    if isinstance(value, _dt.date):
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}T00:00:00Z"
    if not isinstance(value, str):
        raise ValueError(f"expected a timestamp string, got {type(value).__name__}")
    m = _RFC3339.match(value.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    year, month, day = int(y), int(mo), int(d)
    hour, minute, second = int(h or 0), int(mi or 0), int(s or 0)
    digits = (frac or "").rstrip("0")
    # Go's zero time (0001-01-01T00:00:00Z) and similar: format directly, no datetime math.
    if tz in (None, "Z", "z", "+00:00", "-00:00", "+0000", "-0000"):
        _dt.datetime(year, month, day, hour, minute, second)  # validates field ranges
        return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}" + (
            f".{digits}" if digits else ""
        ) + "Z"
    sign = 1 if tz[0] == "+" else -1
    tzd = tz[1:].replace(":", "")
    offset = _dt.timedelta(hours=int(tzd[:2]), minutes=int(tzd[2:]))
    dt = _dt.datetime(year, month, day, hour, minute, second) - sign * offset
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{digits}" if digits else "") + "Z"


def jsonable(value: Any, where: str = "") -> Any:
    """Return ``value`` as plain JSON data (dict/list/str/int/float/bool/None).

    Dates and datetimes become RFC 3339 strings (YAML may produce them); tuples become lists.
    Raises ValueError naming the sub-field for anything else (NaN, bytes, non-string keys...).
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where or 'value'}: non-finite number")
        return value
    if isinstance(value, (_dt.datetime, _dt.date)):
        return rfc3339(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where or 'value'}: non-string key {k!r}")
            out[k] = jsonable(v, f"{where}.{k}" if where else k)
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{where or 'value'}: unsupported type {type(value).__name__}")


def cvss_severity(vector: str, declared_type: Optional[str] = None, source: Optional[str] = None) -> Severity:
    """Severity from a CVSS vector, with base score and rating computed by the ``cvss`` library.

    The version is taken from the vector prefix ("CVSS:3.1/", "CVSS:4.0/", none = v2); a
    ``declared_type`` that disagrees is an error. Raises ValueError for an invalid vector.
    """
    from cvss import CVSS2, CVSS3, CVSS4
    from cvss.exceptions import CVSSError

    text = vector.strip()
    if text.startswith("CVSS:4."):
        kind, cls = "CVSS_V4", CVSS4
    elif text.startswith("CVSS:3."):
        kind, cls = "CVSS_V3", CVSS3
    else:
        kind, cls = "CVSS_V2", CVSS2
    if declared_type and declared_type != kind:
        raise ValueError(f"vector {text!r} is not {declared_type}")
    try:
        c = cls(text)
    except CVSSError as exc:
        raise ValueError(f"invalid {kind} vector {text!r}: {exc}") from None
    if kind == "CVSS_V4":
        score, rating = float(c.base_score), c.severity
    else:
        score, rating = float(c.scores()[0]), c.severities()[0]
    return Severity(type=kind, vector=c.clean_vector(), score=score, label=rating.upper(), source=source)
