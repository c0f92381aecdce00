import pytest

from stella_build.engine.errors import UsageError
from stella_build.engine.labels import Label, parse_label, parse_pattern


def test_absolute_and_relative_labels():
    assert parse_label("//profiles:json-raw") == Label("profiles", "json-raw")
    assert parse_label("//a/b") == Label("a/b", "b")
    assert parse_label(":x", "pkg/sub") == Label("pkg/sub", "x")
    assert str(Label("", "t")) == "//:t"


@pytest.mark.parametrize("text", ["profiles:x", "//a::b", "//a:b c", "//../x:y", "//a:", ":x y", "//"])
def test_bad_labels_are_usage_errors(text):
    with pytest.raises(UsageError) as exc:
        parse_label(text, "pkg")
    assert "bad label" in str(exc.value)


def test_relative_label_needs_a_package():
    with pytest.raises(UsageError):
        parse_label(":x")


def test_patterns():
    p = parse_pattern("//profiles/...")
    assert p.recursive and p.matches_package("profiles/sub") and not p.matches_package("profilesx")
    assert parse_pattern("//...").matches_package("anything/at/all")
    allp = parse_pattern("//profiles:all")
    assert allp.name is None and not allp.recursive and allp.matches_package("profiles")
    one = parse_pattern("//profiles:json-raw")
    assert one.name == "json-raw"
