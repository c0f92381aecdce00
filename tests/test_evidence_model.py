"""The normalized evidence model: errors, immutability, timestamps, names, canonical form."""
from __future__ import annotations

import datetime as dt
import pickle

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stella_build.engine.encode.canonical_json import dumps
from stella_build.rules.evidence.model import (
    Advisory,
    EvidenceError,
    Package,
    SourceInfo,
    cvss_severity,
    normalize_package_name,
    rfc3339,
    trivy_package_name,
)


def _adv(**kw):
    base = dict(id="X-1", source=SourceInfo(name="s"), source_path="a/b.json", ecosystem="PyPI",
                package=Package(name="Foo", normalized="foo"))
    base.update(kw)
    return Advisory(**base)


def test_error_shape_and_pickle():
    err = EvidenceError("osv/a.json", "affected[0].ranges", "bad")
    assert str(err) == "osv/a.json: affected[0].ranges: bad"
    assert (err.path, err.field, err.message) == ("osv/a.json", "affected[0].ranges", "bad")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.field == err.field


def test_models_are_frozen_and_strict():
    a = _adv()
    with pytest.raises(pydantic.ValidationError):
        a.id = "Y"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        _adv(unknown_field=1)


def test_canonical_form_and_ordering():
    a, b = _adv(id="B"), _adv(id="A", ecosystem="Alpine:v3.18")
    assert sorted([a, b], key=Advisory.sort_key)[0] is b
    assert b.ecosystem_name == "Alpine" and b.ecosystem_release == "v3.18" and a.ecosystem_release is None
    data = a.to_canonical()
    assert data["id"] == "B" and data["aliases"] == [] and data["withdrawn"] is None
    assert dumps(data) == dumps(_adv(id="B").to_canonical())


@pytest.mark.parametrize("given_, want", [
    ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
    ("2024-01-02T03:04:05.120000Z", "2024-01-02T03:04:05.12Z"),
    ("2024-01-02T03:04:05.000Z", "2024-01-02T03:04:05Z"),
    ("2024-01-02T03:04:05+02:00", "2024-01-02T01:04:05Z"),
    ("2024-01-02T23:30:00-01:00", "2024-01-03T00:30:00Z"),
    ("2024-01-02", "2024-01-02T00:00:00Z"),
    ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    (dt.date(2020, 5, 6), "2020-05-06T00:00:00Z"),
    (dt.datetime(2020, 5, 6, 7, 8, 9, tzinfo=dt.timezone(dt.timedelta(hours=1))), "2020-05-06T06:08:09Z"),
])
def test_rfc3339(given_, want):
    assert rfc3339(given_) == want


@given(st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1)))
def test_rfc3339_round_trip(d):
    text = rfc3339(d)
    assert rfc3339(text) == text
    assert dt.datetime.fromisoformat(text.replace("Z", "+00:00")) == d.replace(tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01", "2024-01-01T25:00:00Z", 5])
def test_rfc3339_rejects(bad):
    with pytest.raises(ValueError):
        rfc3339(bad)


def test_package_names():
    assert normalize_package_name("PyPI", "Zope.Interface__x") == "zope-interface-x"
    assert trivy_package_name("PyPI", "Zope.Interface__x") == "zope.interface--x"
    assert normalize_package_name("crates.io", "Serde_JSON") == "serde-json"
    assert trivy_package_name("npm", "@Scope/Pkg") == "@scope/pkg"
    assert trivy_package_name("Go", "github.com/BurntSushi/toml") == "github.com/BurntSushi/toml"


def test_cvss_scores_computed():
    v3 = cvss_severity("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
    assert (v3.type, v3.score, v3.label) == ("CVSS_V3", 9.8, "CRITICAL")
    v2 = cvss_severity("AV:N/AC:L/Au:N/C:P/I:P/A:P")
    assert (v2.type, v2.score, v2.label) == ("CVSS_V2", 7.5, "HIGH")
    v4 = cvss_severity("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N")
    assert (v4.type, v4.score, v4.label) == ("CVSS_V4", 9.3, "CRITICAL")
    with pytest.raises(ValueError):
        cvss_severity("CVSS:3.1/AV:N", "CVSS_V3")
    with pytest.raises(ValueError):
        cvss_severity("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "CVSS_V4")
