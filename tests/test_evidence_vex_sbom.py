"""VEX (OpenVEX 0.2, CSAF 2.0) and SBOM (CycloneDX 1.5/1.6, SPDX 2.3) ingestion."""
from __future__ import annotations

import copy
import json

import pytest

from stella_build.rules.evidence.model import EvidenceError
from stella_build.rules.evidence.sources.sbom import load_sbom
from stella_build.rules.evidence.sources.vex import load_vex

OPENVEX = {
    "@context": "https://openvex.dev/ns/v0.2.0",
    "@id": "https://example.com/vex/2024-001",
    "author": "Example Security",
    "timestamp": "2024-03-01T10:00:00+01:00",
    "version": 1,
    "statements": [
        {
            "vulnerability": {"name": "CVE-2024-0001", "aliases": ["GHSA-aaaa-bbbb-cccc"]},
            "products": [{"@id": "pkg:oci/app@sha256:abc", "subcomponents": [
                {"@id": "pkg:pypi/jinja2@3.1.2"}, {"@id": "pkg:pypi/markupsafe@2.1.0"}]}],
            "status": "not_affected",
            "justification": "vulnerable_code_not_in_execute_path",
        },
        {
            "vulnerability": {"name": "CVE-2024-0002"},
            "products": [{"@id": "pkg:oci/app@sha256:abc"}],
            "status": "affected",
            "action_statement": "upgrade to 2.0",
            "timestamp": "2024-03-02T00:00:00Z",
        },
    ],
}

CSAF = {
    "document": {
        "category": "csaf_vex", "csaf_version": "2.0", "title": "t",
        "publisher": {"category": "vendor", "name": "Example", "namespace": "https://example.com"},
        "tracking": {"id": "EX-2024-01", "current_release_date": "2024-04-01T12:00:00Z", "status": "final",
                     "version": "1", "initial_release_date": "2024-04-01T12:00:00Z", "revision_history": []},
    },
    "product_tree": {
        "branches": [{"category": "vendor", "name": "Example", "branches": [
            {"category": "product_version", "name": "app 1.0",
             "product": {"name": "app 1.0", "product_id": "APP-1.0",
                         "product_identification_helper": {"purl": "pkg:oci/app@sha256:abc"}}},
            {"category": "product_version", "name": "openssl 3.0.1",
             "product": {"name": "openssl 3.0.1", "product_id": "OPENSSL-3.0.1",
                         "product_identification_helper": {"purl": "pkg:apk/alpine/openssl@3.0.1-r0"}}},
        ]}],
        "relationships": [{"category": "default_component_of", "product_reference": "OPENSSL-3.0.1",
                           "relates_to_product_reference": "APP-1.0",
                           "full_product_name": {"name": "openssl in app", "product_id": "APP-1.0:OPENSSL"}}],
    },
    "vulnerabilities": [
        {"cve": "CVE-2024-1111",
         "product_status": {"known_not_affected": ["APP-1.0:OPENSSL"], "fixed": ["APP-1.0"]},
         "flags": [{"label": "vulnerable_code_not_present", "product_ids": ["APP-1.0:OPENSSL"]}],
         "remediations": [{"category": "vendor_fix", "details": "update", "product_ids": ["APP-1.0"]}]},
        {"ids": [{"system_name": "GHSA", "text": "GHSA-xxxx-yyyy-zzzz"}],
         "product_status": {"under_investigation": ["APP-1.0"]}},
    ],
}


def test_openvex_statements():
    out = load_vex(json.dumps(OPENVEX).encode(), "vex/app.openvex.json")
    assert [(s.vulnerability, s.product, s.component, s.status) for s in out] == [
        ("CVE-2024-0001", "pkg:oci/app@sha256:abc", "pkg:pypi/jinja2@3.1.2", "known_not_affected"),
        ("CVE-2024-0001", "pkg:oci/app@sha256:abc", "pkg:pypi/markupsafe@2.1.0", "known_not_affected"),
        ("CVE-2024-0002", "pkg:oci/app@sha256:abc", None, "known_affected"),
    ]
    assert out[0].justification == "vulnerable_code_not_in_execute_path"
    assert out[0].aliases == ("GHSA-aaaa-bbbb-cccc",)
    assert out[0].timestamp == "2024-03-01T09:00:00Z"  # document timestamp, in UTC
    assert out[2].timestamp == "2024-03-02T00:00:00Z" and out[2].action == "upgrade to 2.0"
    assert {s.document_format for s in out} == {"openvex"}


def test_csaf_vex_statements():
    out = load_vex(json.dumps(CSAF).encode(), "vex/app.csaf.json")
    got = sorted(((s.vulnerability, s.product, s.component, s.status, s.justification, s.action) for s in out),
                 key=lambda t: tuple(x or "" for x in t))
    assert got == [
        ("CVE-2024-1111", "pkg:oci/app@sha256:abc", None, "fixed", None, "update"),
        ("CVE-2024-1111", "pkg:oci/app@sha256:abc", "pkg:apk/alpine/openssl@3.0.1-r0", "known_not_affected",
         "vulnerable_code_not_present", None),
        ("GHSA-xxxx-yyyy-zzzz", "pkg:oci/app@sha256:abc", None, "under_investigation", None, None),
    ]
    assert {s.document_id for s in out} == {"EX-2024-01"}


def _broken(doc, mutate):
    doc = copy.deepcopy(doc)
    mutate(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("data, field", [
    (b'{"@context": "https://openvex.dev/ns/v0.2.0", "statements": [', "<document>"),
    (b'{"hello": 1}', "<document>"),
    (_broken(OPENVEX, lambda d: d["statements"][0].update(status="maybe")), "statements[0].status"),
    (_broken(OPENVEX, lambda d: d["statements"][0].pop("justification")), "statements[0].justification"),
    (_broken(OPENVEX, lambda d: d["statements"][1].pop("vulnerability")), "statements[1].vulnerability"),
    (_broken(OPENVEX, lambda d: d["statements"][1].update(products=[])), "statements[1].products"),
    (_broken(OPENVEX, lambda d: d["statements"][1].update(timestamp="soon")), "statements[1].timestamp"),
    (_broken(CSAF, lambda d: d["vulnerabilities"][0]["product_status"].update(fixed=["NOPE"])),
     "vulnerabilities[0].product_status.fixed[0]"),
    (_broken(CSAF, lambda d: d["vulnerabilities"][0].pop("flags")),
     "vulnerabilities[0].product_status.known_not_affected[0]"),
    (_broken(CSAF, lambda d: d["vulnerabilities"][1].pop("product_status")), "vulnerabilities[1].product_status"),
])
def test_vex_errors_name_file_and_field(data, field):
    with pytest.raises(EvidenceError) as info:
        load_vex(data, "vex/doc.json")
    assert (info.value.path, info.value.field) == ("vex/doc.json", field)


CYCLONEDX = {
    "bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
    "metadata": {"component": {"type": "application", "name": "app", "version": "1.0",
                               "purl": "pkg:oci/app@sha256:abc"}},
    "components": [
        {"type": "library", "name": "Jinja2", "version": "3.1.2", "purl": "pkg:pypi/jinja2@3.1.2",
         "components": [{"type": "library", "name": "markupsafe", "version": "2.1.0",
                         "purl": "pkg:pypi/markupsafe@2.1.0"}]},
        {"type": "library", "name": "musl", "version": "1.2.4-r2",
         "purl": "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64&distro=3.18.4"},
        {"type": "library", "name": "serde", "version": "1.0.0", "purl": "pkg:cargo/serde@1.0.0"},
        {"type": "file", "name": "no-purl"},
        {"type": "library", "name": "x/net", "purl": "pkg:golang/golang.org/x/net@v0.17.0"},
    ],
}

SPDX = {
    "spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT", "name": "app", "dataLicense": "CC0-1.0",
    "documentNamespace": "https://example.com/spdx/app",
    "documentDescribes": ["SPDXRef-app"],
    "packages": [
        {"SPDXID": "SPDXRef-app", "name": "app", "versionInfo": "1.0"},
        {"SPDXID": "SPDXRef-log4j", "name": "log4j-core", "versionInfo": "2.14.1",
         "externalRefs": [{"referenceCategory": "SECURITY", "referenceType": "cpe23Type", "referenceLocator": "cpe:2.3:a:apache:log4j:2.14.1:*:*:*:*:*:*:*"},
                          {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                           "referenceLocator": "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1"}]},
        {"SPDXID": "SPDXRef-lodash", "name": "lodash", "versionInfo": "4.17.20",
         "externalRefs": [{"referenceCategory": "PACKAGE_MANAGER", "referenceType": "purl",
                           "referenceLocator": "pkg:npm/lodash@4.17.20"}]},
    ],
}


def test_cyclonedx_components():
    out = load_sbom(json.dumps(CYCLONEDX).encode(), "sbom/app.cdx.json")
    assert [(c.name, c.version, c.ecosystem) for c in out] == [
        ("Jinja2", "3.1.2", "PyPI"), ("markupsafe", "2.1.0", "PyPI"), ("musl", "1.2.4-r2", "Alpine:v3.18"),
        ("serde", "1.0.0", "crates.io"), ("x/net", "v0.17.0", "Go"),
    ]
    assert {c.subject for c in out} == {"pkg:oci/app@sha256:abc"}


def test_spdx_packages():
    out = load_sbom(json.dumps(SPDX).encode(), "sbom/app.spdx.json")
    assert [(c.name, c.purl, c.ecosystem) for c in out] == [
        ("log4j-core", "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1", "Maven"),
        ("lodash", "pkg:npm/lodash@4.17.20", "npm"),
    ]
    assert {c.subject for c in out} == {"app@1.0"}


@pytest.mark.parametrize("data, field", [
    (b'{"bomFormat": "CycloneDX", "specVersion": "1.6", "components": [{"purl": ', "<document>"),
    (_broken(CYCLONEDX, lambda d: d.update(specVersion="1.1")), "specVersion"),
    (_broken(CYCLONEDX, lambda d: d["components"][0]["components"][0].update(purl="not a purl")),
     "components[0].components[0].purl"),
    (_broken(SPDX, lambda d: d["packages"][2]["externalRefs"][0].update(referenceLocator="pkg:")),
     "packages[2].externalRefs[0].referenceLocator"),
    (_broken(SPDX, lambda d: d.update(spdxVersion="SPDX-3.0")), "spdxVersion"),
])
def test_sbom_errors_name_file_and_field(data, field):
    with pytest.raises(EvidenceError) as info:
        load_sbom(data, "sbom/doc.json")
    assert (info.value.path, info.value.field) == ("sbom/doc.json", field)
