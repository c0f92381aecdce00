import json
import math

import pytest
from hypothesis import given, strategies as st

from stella_build.engine.encode.canonical_json import CanonicalJSONError, dumps, format_number


@pytest.mark.parametrize("value,text", [
    (1.0, "1"), (-0.0, "0"), (7.5, "7.5"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
    (1e-7, "1e-7"), (1e-6, "0.000001"), (0.1, "0.1"), (123e-20, "1.23e-18"),
    (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"),
    (333333333.3333333, "333333333.3333333"), (-2.5e-7, "-2.5e-7"), (4.35, "4.35"),
])
def test_rfc8785_number_vectors(value, text):
    # Vectors follow ECMAScript Number::toString as required by RFC 8785 §3.2.2.3
    assert format_number(value) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_round_trip(x):
    assert float(format_number(x)) == x


def test_sorted_keys_no_whitespace_and_utf8():
    assert dumps({"b": 1, "a": [True, None, "é\u2028<"], "c": {"z": 1.5, "y": 2.0}}) == \
        '{"a":[true,null,"é\u2028<"],"b":1,"c":{"y":2,"z":1.5}}'.encode()


def test_control_characters_are_escaped_like_json_stringify():
    assert dumps("\n\t\x01\"\\") == b'"\\n\\t\\u0001\\"\\\\"'


@pytest.mark.parametrize("bad", [float("nan"), math.inf, {1: 2}, b"x", "\udfff", {"k": "\ud800"}])
def test_values_without_canonical_form_are_rejected(bad):
    with pytest.raises(CanonicalJSONError):
        dumps(bad)


@given(st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text() |
                    st.floats(allow_nan=False, allow_infinity=False),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                    max_leaves=20))
def test_canonical_is_stable_and_parses_back(value):
    try:
        out = dumps(value)
    except CanonicalJSONError:
        return  # lone surrogates in generated text
    assert dumps(json.loads(out)) == out
