"""Tests for rules/trivy/gojson.py against outputs of Go's encoding/json.

The GO_FLOATS / GO_STRINGS tables were produced by Go 1.26.8 (`json.Marshal` of a float64 given
by its IEEE bits, and of a string), not by the code under test; the other expected values come
from trivy-db-format.md §A.4 / §A.7 or from the same Go program.
"""
from __future__ import annotations

import json
import math
import struct
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stella_build.rules.formats.trivy.gojson import (
    ZERO_TIME, GoMap, go_float, go_marshal, go_string, go_time, omit_empty, trivy_metadata_json,
)

# (float64 bits, json.Marshal output) from Go 1.26.8.
GO_FLOATS = [
    ('0x4014000000000000', '5'),
    ('0x401e000000000000', '7.5'),
    ('0x3e7ad7f29abcaf48', '1e-7'),
    ('0x3eb0c6f7a0b5ed8d', '0.000001'),
    ('0x3eb0c2ac1dbbe3d8', '9.99e-7'),
    ('0x444b1ae4d6e2ef50', '1e+21'),
    ('0x444b13f47b891b9e', '999000000000000000000'),
    ('0x4415af1d78b58c40', '100000000000000000000'),
    ('0x3fb999999999999a', '0.1'),
    ('0x3fd3333333333334', '0.30000000000000004'),
    ('0x8000000000000000', '-0'),
    ('0x2b2bff2ee48e0530', '1e-100'),
    ('0x7e41eb2d66005835', '1.5e+300'),
    ('0x3e90c6f7a0b5ed8d', '2.5e-7'),
    ('0x54b249ad2594c37d', '1e+100'),
    ('0x3eb4b3fd5942cd96', '0.000001234'),
    ('0x0000000000000001', '5e-324'),
    ('0x7fefffffffffffff', '1.7976931348623157e+308'),
    ('0x437b69b4ba630f35', '123456789012345680'),
    ('0xbff8000000000000', '-1.5'),
    ('0xbe7ad7f29abcaf48', '-1e-7'),
    ('0xc44b1ae4d6e2ef50', '-1e+21'),
    ('0x4340000000000000', '9007199254740992'),
    ('0x4340000000000001', '9007199254740994'),
    ('0x3fd5555555555555', '0.3333333333333333'),
    ('0x4059000000000000', '100'),
    ('0x40c81cd6c8b43958', '12345.678'),
    ('0x3ee4f8b588e368f1', '0.00001'),
    ('0x3df596be5af73d85', '3.14159e-10'),
    ('0x3b184cd7ff320f24', '5.0251575523125054e-24'),
    ('0xc0561a5ddf72a0ad', '-88.4119795436297'),
    ('0x45843fee214321fa', '7.833733824831903e+26'),
    ('0x40f255e98876368e', '75102.5958158618'),
    ('0x41424e3665974846', '2399340.79367927'),
    ('0xc19a66d27e5c4b08', '-110736543.59012997'),
    ('0xc46e784497cf14fe', '-4.4965483256793635e+21'),
    ('0x447704c27e610ad7', '6.793889426755393e+21'),
    ('0x3c4732af6cec2b34', '2.515131037507791e-18'),
    ('0x45f042747e192724', '8.051359010960496e+28'),
    ('0xc3700e6a6a6c62c4', '-72311197474892860'),
    ('0x3aa1cd3c0e10204a', '2.876019362915143e-26'),
    ('0x3b3de87167905d79', '2.4739301560776413e-23'),
    ('0x42f4aa3c59f14b70', '363542232372407'),
    ('0xbf3a224e6581beae', '-0.00039877332665747944'),
    ('0x41608a7f9a7bd8fe', '8672252.827618118'),
    ('0x3f3a17d26de8f94c', '0.00039814841685261305'),
    ('0x408a63d258fbf755', '844.4777087864737'),
    ('0x411f4ed5ac73d19c', '512949.4184105636'),
    ('0xc43f32e46b808e73', '-575516240481472400000'),
    ('0xc3dc627940a1bf23', '-8181321997112610000'),
    ('0xc304631962fc2183', '-717307527529520.4'),
    ('0x3f22aa9286dffc25', '0.00014241255433941713'),
    ('0xc55191e5b1f2685e', '-8.496287680113406e+25'),
    ('0x3b204dbc02d2ec8f', '6.743031626150461e-24'),
    ('0x42ffd21ace598616', '559796053186657.4'),
    ('0x425fe80cb6711af8', '548148533700.4214'),
    ('0x4232bd8b3dda78b4', '80489430490.4715'),
    ('0x3ec0fd53d0f3a263', '0.0000020253133993129536'),
    ('0x444925229cf8b449', '927688951126681600000'),
    ('0x3b8e5b6ddbe778b4', '8.035469392157256e-22'),
    ('0x45dd134c996e2a25', '3.5993586422137697e+28'),
    ('0x3c298ddfeeea90d0', '6.926479301271524e-19'),
    ('0x3fb4af0abafd5220', '0.0807959276692789'),
    ('0xc0f44c44acfe5dd4', '-83140.29223477031'),
    ('0x3dd9337d1fe5c884', '9.16811695783595e-11'),
    ('0x3aeaaad31d8228a5', '6.893331312873843e-25'),
    ('0x4403a46e10da1236', '45292070449866785000'),
    ('0x3bf8dd4b83d1c454', '8.424397761223791e-20'),
    ('0xbfe4c0e83d10dc7f', '-0.6485482399647394'),
    ('0x4573229d10960562', '3.701287738730202e+26'),
    ('0x3c0599464b27ad92', '1.4635867960300154e-19'),
    ('0xc587d3354fedd8c5', '-9.216862917105828e+26'),
    ('0xbf78fdb73c6254bc', '-0.006101337208879783'),
    ('0xbc01d468ccc772fd', '-1.2081891015972691e-19'),
    ('0x3a152f54aee2c5c2', '6.684771311108873e-29'),
    ('0x41d70fa8f59ef7ab', '1547609046.4838665'),
    ('0x3dd2f5bb0db0af68', '6.897566148673939e-11'),
    ('0xc61b8e58a6d9e848', '-5.4580360817110286e+29'),
    ('0xbfeeaa357e647ddf', '-0.9582774609188468'),
    ('0x451befc55ccfce1a', '8.443320853843484e+24'),
    ('0xc26b36b59dccac8e', '-935055912549.3923'),
    ('0x4406049f90806c9b', '50770189175038890000'),
    ('0xbea17308172d213e', '-5.200309217490835e-7'),
    ('0x3bd0af18c159a246', '1.41318735392727e-20'),
    ('0x3af12c07223ebfd8', '8.877707576262452e-25'),
    ('0x3a4999fb31f9de9c', '6.4627244586797655e-28'),
    ('0xc5a0883c05421052', '-2.558228753796099e+27'),
    ('0x3fe5d973cd36f5b8', '0.6827944763278344'),
    ('0x3f82b7c43382be2f', '0.009139569112760785'),
    ('0x4016dd5edd17d0d2', '5.716182188585849'),
    ('0xc420af525e3a3a9a', '-153890584344132400000'),
    ('0xc07b19b8993eafa4', '-433.6075680206943'),
    ('0x3e048dfecb902b1c', '5.982196050385125e-10'),
    ('0xc293e9a1865829c8', '-5473539560970.445'),
    ('0xba1482f51335f3ca', '-6.472304606546121e-29'),
    ('0xbbf321e4b667ed2b', '-6.48230795150745e-20'),
    ('0xc5e23fb7d999a714', '-4.518208568401282e+28'),
    ('0xc39adbca84711d11', '-483840783766996030'),
    ('0xc272cad4e601d56f', '-1291397783581.3396'),
    ('0xc0888b4587d2aa96', '-785.4089504679021'),
    ('0xc0640c807354e441', '-160.39067999439615'),
    ('0xc4d4a51936bbe62b', '-3.8997143710260764e+23'),
    ('0x3f4c71b27b33c27e', '0.0008680459490318507'),
    ('0x3e892019e8c5d580', '1.8719878304053816e-7'),
    ('0x3beb627d371a8723', '4.639152549028575e-20'),
    ('0x43c3f60ce98c558b', '2876702656425563600'),
    ('0x3beea7f864ca8673', '5.193351096067784e-20'),
    ('0xbf7598a2ea7a85d5', '-0.005272518530234878'),
    ('0x40898137ff4690e7', '816.1523423684092'),
    ('0xc4c87e57b9388603', '-2.313348129757182e+23'),
    ('0x3ab3fb990464ac4d', '6.456792081180374e-26'),
    ('0xbf19327ea8066b95', '-0.00009611986207007227'),
    ('0xbe2e3600b382c85c', '-3.5170172573627932e-9'),
    ('0xc26feccd82f3b3b9', '-1096935020445.6163'),
    ('0x42ff97f3725650bc', '555799758071051.75'),
    ('0xc12163d6089edb07', '-569835.0168369719'),
    ('0x412474c6babde58a', '670307.3647300464'),
    ('0xbb579ee00410645e', '-7.815402840354497e-23'),
    ('0x3aca80e7bd5cbc9f', '1.71275087490944e-25'),
    ('0xc29b9dc9cade7771', '-7591127332765.86'),
    ('0xc336f2d47bf316fe', '-6459443914151678'),
    ('0x3ad56a501db3517f', '2.7678607097348984e-25'),
    ('0xc498a6d72da5e8f4', '-2.910361508415483e+22'),
    ('0xbdbcae822496a188', '-2.6085829925629555e-11'),
    ('0xba74622fbfed2c9e', '-4.11642334360581e-27'),
    ('0x45756e3c5e34d95f', '4.145282578873094e+26'),
    ('0xb97f4cbeccd92d5e', '-9.644991334695653e-32'),
    ('0x39b8f394759078c5', '1.2302031437955895e-30'),
    ('0x4286eadb22b2c3b3', '3149744330328.4624'),
    ('0xbfb7ac66eae4b680', '-0.09247439608290087'),
    ('0xbdd0544ec0f54fd4', '-5.940574442049104e-11'),
    ('0xbf467e790fde5661', '-0.0006864634631138061'),
    ('0x4509beb7bb1a3be4', '3.890473044803842e+24'),
    ('0x45e746e05855d836', '5.763071578284284e+28'),
    ('0x4308f753f838d4b3', '878417432484502.4'),
    ('0x3d54602bf5231954', '2.895556966001289e-13'),
    ('0xc3c49abffc85bfd5', '-2969420236937210400'),
    ('0x3f0eb3df2da61a7f', '0.000058560608255088687'),
    ('0x39c4060d01f170fd', '1.9744829506324854e-30'),
    ('0xba29b08951440e75', '-1.6212413921185055e-28'),
    ('0xbadcdfbc68c536d3', '-3.7318729800596473e-25'),
    ('0x4082a79ef847e4ba', '596.952621995609'),
    ('0x41e5740d756264c6', '2879417259.0748014'),
    ('0xc14b2891418f014e', '-3559714.512176669'),
    ('0x3e900f3ed348255b', '2.39305978839095e-7'),
    ('0xbf1450516594dbfd', '-0.00007749077612549667'),
    ('0xbbf386a0574460f0', '-6.615626865421738e-20'),
    ('0x45f1f4c708b46773', '8.891460765523783e+28'),
    ('0xc3f3cc4bf7ec62ff', '-22825579362632330000'),
    ('0xc12d749a00000000', '-965197'),
    ('0xc11999cc00000000', '-419443'),
    ('0x410076c800000000', '134873'),
    ('0x40b06f0000000000', '4207'),
    ('0xc0fe2fb000000000', '-123643'),
    ('0xc11b444800000000', '-446738'),
    ('0xc114bf7400000000', '-339933'),
    ('0xc125a4be00000000', '-709215'),
    ('0x412de9ba00000000', '980189'),
    ('0x4113314000000000', '314448'),
    ('0x410de77800000000', '244975'),
    ('0xc128cb0200000000', '-812417'),
    ('0x412736bc00000000', '760670'),
    ('0xc1230ad000000000', '-623976'),
    ('0x41037e3800000000', '159687'),
    ('0xc12c15c400000000', '-920290'),
    ('0x4116312c00000000', '363595'),
    ('0x4128ea1c00000000', '816398'),
    ('0x4126346000000000', '727600'),
    ('0x40f30d2000000000', '78034'),
]

# (string, json.Marshal output) from Go 1.26.8.
GO_STRINGS = [
    ('', '""'),
    ('a\x08\x0c\n\r\t\x01\x1f\x7f<>&\u2028\u2029é"\\/', '"a\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\\u003c\\u003e\\u0026\\u2028\\u2029é\\"\\\\/"'),
    ('< 0.15.3', '"\\u003c 0.15.3"'),
    ('é中😀', '"é中😀"'),
    ('plain ASCII text', '"plain ASCII text"'),
    ('tab\there', '"tab\\there"'),
    ('\x00\x0b\x0e', '"\\u0000\\u000b\\u000e"'),
    ('&amp;', '"\\u0026amp;"'),
    ('line\u2028sep', '"line\\u2028sep"'),
    ('\x85\xa0\ufeff', '"\x85\xa0\ufeff"'),
    ("'single'", '"\'single\'"'),
    ('`~!@#$%^*()_+-={}[]|:;?,./', '"`~!@#$%^*()_+-={}[]|:;?,./"'),
    ('\u2028օ\u2029亘', '"\\u2028օ\\u2029亘"'),
    ('֘(\u2028Ĭ\U000ad092', '"֘(\\u2028Ĭ\U000ad092"'),
    ('', '""'),
    ('a殣龼\uf6dc\ue09aۿ', '"a殣龼\uf6dc\ue09aۿ"'),
    ("\u2029\U0007eb0a'⍾\uf642", '"\\u2029\U0007eb0a\'⍾\uf642"'),
    ('?', '"?"'),
    ('\u2029', '"\\u2029"'),
    ('嬳\u2029\uf64eﱄ\u2029ⴶ춽𛇯\u2028떞', '"嬳\\u2029\uf64eﱄ\\u2029ⴶ춽𛇯\\u2028떞"'),
    ('湖\u2029\u2028\u20295ӏ\u2028O\U0006eda2肄', '"湖\\u2029\\u2028\\u20295ӏ\\u2028O\U0006eda2肄"'),
    ('zඒ昗\u2028\ue5ce', '"zඒ昗\\u2028\ue5ce"'),
    ('\u2029\U00046755\uef6aҜͨ', '"\\u2029\U00046755\uef6aҜͨ"'),
    ('\u2029ʾ\uf6d3\u2028갧\u2028\ue952※\uec3e', '"\\u2029ʾ\uf6d3\\u2028갧\\u2028\ue952※\uec3e"'),
    ('\u2028\u2028\u2028\u07fb\u2028ū鐁ੰ\U00059b95\u2028', '"\\u2028\\u2028\\u2028\u07fb\\u2028ū鐁ੰ\U00059b95\\u2028"'),
    ('\ue50b폤\U00033f7d\U000f9f72ӓ\U000661b0\u2028ؼؼ\U0008f99f', '"\ue50b폤\U00033f7d\U000f9f72ӓ\U000661b0\\u2028ؼؼ\U0008f99f"'),
    ('\U00103df0ќ', '"\U00103df0ќ"'),
    ('Ҽ챙\U0007f00a\u2029\x1c\U0006686c', '"Ҽ챙\U0007f00a\\u2029\\u001c\U0006686c"'),
    ('ĭ\u2028\u2028\u2028', '"ĭ\\u2028\\u2028\\u2028"'),
    ('\uf25c', '"\uf25c"'),
    ('\ueab9\uee9c\ue0f7Ї', '"\ueab9\uee9c\ue0f7Ї"'),
    ('즞+', '"즞+"'),
    ('\u2029\uf4a2\u2028\x7f\uef3b\u2028\U000fa970\U000617a8𒂔\uf021\U000f35e4', '"\\u2029\uf4a2\\u2028\x7f\uef3b\\u2028\U000fa970\U000617a8𒂔\uf021\U000f35e4"'),
    ('\u2029', '"\\u2029"'),
    ('쳲ꜿ܋\u2029\ue67f\U0007a532', '"쳲ꜿ܋\\u2029\ue67f\U0007a532"'),
    ('鋽\u2028ﮍ\u2028\u2029\u2029\uee1d\U0008cee0', '"鋽\\u2028ﮍ\\u2028\\u2029\\u2029\uee1d\U0008cee0"'),
    ('͙\u2029(\x15Տ\u2029W\U000be883ſ', '"͙\\u2029(\\u0015Տ\\u2029W\U000be883ſ"'),
    ('wﬓ\u2028\u2028\x11\u0ace\u2029', '"wﬓ\\u2028\\u2028\\u0011\u0ace\\u2029"'),
    ('\uaa3d', '"\uaa3d"'),
    ('엜ꐎ٨豧ݺ\ue7db', '"엜ꐎ٨豧ݺ\ue7db"'),
    ('縶\U000b61cc\u2028䡇\U000a6821촇˦7\u2028ː', '"縶\U000b61cc\\u2028䡇\U000a6821촇˦7\\u2028ː"'),
    ('\x11', '"\\u0011"'),
    ('\ue188^', '"\ue188^"'),
    ('\u2028逸\u2029\U000fc8ac&罠', '"\\u2028逸\\u2029\U000fc8ac\\u0026罠"'),
    ('ઑ弖\ue4aeۊ䢅㣩', '"ઑ弖\ue4aeۊ䢅㣩"'),
    ('\u2029\uee7c\ue9b7툷徭P\u2028', '"\\u2029\uee7c\ue9b7툷徭P\\u2028"'),
    ('\u2028\u2028웳', '"\\u2028\\u2028웳"'),
    ('~\U000920d5\ue52d\ue359%\ue78a\uf1cfŸ\u2028ﮒ', '"~\U000920d5\ue52d\ue359%\ue78a\uf1cfŸ\\u2028ﮒ"'),
    ('\u2029\u2029\u2029\uebf1\U000ae179\u2029', '"\\u2029\\u2029\\u2029\uebf1\U000ae179\\u2029"'),
    ('\u2029\U000d671bnŴ鮾\U00067265\U000fb6b8\u2029D^\u2028', '"\\u2029\U000d671bnŴ鮾\U00067265\U000fb6b8\\u2029D^\\u2028"'),
    ('\U000190e0\u2029', '"\U000190e0\\u2029"'),
    ('㭨\U000afa1f\u2028\ue6ba͘\x07NOѰ\ue53a\u2029\U0010f6d7', '"㭨\U000afa1f\\u2028\ue6ba͘\\u0007NOѰ\ue53a\\u2029\U0010f6d7"'),
]


def _f64(bits: str) -> float:
    return struct.unpack("<d", struct.pack("<Q", int(bits, 16)))[0]


@pytest.mark.parametrize("bits,expected", GO_FLOATS)
def test_float_matches_go(bits: str, expected: str) -> None:
    assert go_float(_f64(bits)) == expected
    assert go_marshal(_f64(bits)) == expected.encode()


@pytest.mark.parametrize("text,expected", GO_STRINGS)
def test_string_matches_go(text: str, expected: str) -> None:
    assert go_string(text) == expected
    assert go_marshal(text) == expected.encode("utf-8")


def test_reference_doc_examples() -> None:
    # trivy-db-format.md §A.3 / §A.4 / §C.1
    assert go_marshal({"PatchedVersions": ["0.15.3"], "VulnerableVersions": ["< 0.15.3"]}) == \
        b'{"PatchedVersions":["0.15.3"],"VulnerableVersions":["\\u003c 0.15.3"]}'
    vuln = {
        "Title": "python-werkzeug: insufficient debugger PIN randomness vulnerability",
        "Severity": "HIGH", "CweIDs": ["CWE-331"],
        "VendorSeverity": GoMap({"ubuntu": 1, "redhat": 2, "nvd": 3, "ghsa": 3}),
        "CVSS": GoMap({"nvd": {"V2Vector": "AV:N/AC:L/Au:N/C:P/I:N/A:N",
                               "V3Vector": "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N",
                               "V2Score": 5.0, "V3Score": 7.5}}),
        "PublishedDate": go_time(datetime(2019, 8, 9, 15, 15, tzinfo=timezone.utc)),
    }
    assert go_marshal(vuln) == (
        b'{"Title":"python-werkzeug: insufficient debugger PIN randomness vulnerability",'
        b'"Severity":"HIGH","CweIDs":["CWE-331"],'
        b'"VendorSeverity":{"ghsa":3,"nvd":3,"redhat":2,"ubuntu":1},'
        b'"CVSS":{"nvd":{"V2Vector":"AV:N/AC:L/Au:N/C:P/I:N/A:N",'
        b'"V3Vector":"CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N","V2Score":5,"V3Score":7.5}},'
        b'"PublishedDate":"2019-08-09T15:15:00Z"}')


def test_struct_then_map_double_marshal_matches_go() -> None:
    adv = {"VendorIDs": ["DSA-4535-1"], "Severity": 1, "FixedVersion": "1.43.4-2+deb9u1",
           "VulnerableVersions": ["< 0.15.3", ">=1.5.0, <1.5.10"], "PatchedVersions": ["0.15.3"],
           "Status": 7}
    assert go_marshal(adv) == (
        b'{"VendorIDs":["DSA-4535-1"],"Severity":1,"FixedVersion":"1.43.4-2+deb9u1",'
        b'"VulnerableVersions":["\\u003c 0.15.3","\\u003e=1.5.0, \\u003c1.5.10"],'
        b'"PatchedVersions":["0.15.3"],"Status":7}')
    assert go_marshal(adv, sort_keys=True, float64_numbers=True) == (
        b'{"FixedVersion":"1.43.4-2+deb9u1","PatchedVersions":["0.15.3"],"Severity":1,'
        b'"Status":7,"VendorIDs":["DSA-4535-1"],'
        b'"VulnerableVersions":["\\u003c 0.15.3","\\u003e=1.5.0, \\u003c1.5.10"]}')
    # Go: map[string]any{"n": float64(1<<60), "i": int64(1<<60)}
    assert go_marshal({"n": 1 << 60, "i": 1 << 60}, sort_keys=True) == \
        b'{"i":1152921504606846976,"n":1152921504606846976}'
    assert go_marshal({"n": 1 << 60}, float64_numbers=True) == b'{"n":1152921504606847000}'


def test_maps_bytes_null_and_int_keys_match_go() -> None:
    # Go: map[string]any{"b": 1, "a": []byte("hi"), "é": nil, "Z": true}
    assert go_marshal({"b": 1, "a": b"hi", "é": None, "Z": True}, sort_keys=True) == \
        '{"Z":true,"a":"aGk=","b":1,"é":null}'.encode()
    # Go: map[int]int{10: 1, 9: 2, -1: 3} (keys sorted as strings)
    assert go_marshal(GoMap({10: 1, 9: 2, -1: 3})) == b'{"-1":3,"10":1,"9":2}'
    assert go_marshal([]) == b"[]" and go_marshal({}) == b"{}"


def test_struct_order_is_insertion_order_unless_sorted() -> None:
    assert go_marshal({"b": 1, "a": 2}) == b'{"b":1,"a":2}'
    assert go_marshal({"b": 1, "a": {"d": 1, "c": 2}}, sort_keys=True) == \
        b'{"a":{"c":2,"d":1},"b":1}'


def test_times_match_go() -> None:
    assert go_time(1565363700) == "2019-08-09T15:15:00Z"
    assert go_time(Decimal("1565363700.123456789")) == "2019-08-09T15:15:00.123456789Z"
    assert go_time(1565363700.1) == "2019-08-09T15:15:00.1Z"
    assert go_time(Decimal("-0.000000001")) == "1969-12-31T23:59:59.999999999Z"
    assert go_time(-62135596800) == ZERO_TIME
    assert go_time(datetime(2019, 8, 9, 17, 15, tzinfo=timezone(timedelta(hours=2)))) == \
        "2019-08-09T15:15:00Z"
    with pytest.raises(ValueError):
        go_time(253402300800)  # year 10000


def test_metadata_json_matches_go_encoder() -> None:
    # json.NewEncoder(os.Stdout).Encode(Metadata{...}) from Go 1.26.8 / trivy-db-format.md §A.7
    assert trivy_metadata_json(2, updated_at=1787295343, next_update=Decimal("1787381743.1")) == \
        (b'{"Version":2,"NextUpdate":"2026-08-22T06:55:43.1Z","UpdatedAt":"2026-08-21T06:55:43Z",'
         b'"DownloadedAt":"0001-01-01T00:00:00Z"}\n')
    assert trivy_metadata_json(1, 1699740800, 1700000000, Decimal("1699740801.000000005")) == \
        (b'{"Version":1,"NextUpdate":"2023-11-14T22:13:20Z","UpdatedAt":"2023-11-11T22:13:20Z",'
         b'"DownloadedAt":"2023-11-11T22:13:21.000000005Z"}\n')
    assert trivy_metadata_json(0, Decimal("-0.000000001"), 0) == \
        (b'{"NextUpdate":"1970-01-01T00:00:00Z","UpdatedAt":"1969-12-31T23:59:59.999999999Z",'
         b'"DownloadedAt":"0001-01-01T00:00:00Z"}\n')


def test_errors() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            go_marshal([bad])
    with pytest.raises(TypeError):
        go_marshal({1.5: 1})
    with pytest.raises(TypeError):
        go_marshal(object())


def test_omit_empty() -> None:
    assert omit_empty({"A": "", "B": 0, "C": [], "D": None, "E": False, "F": {}, "G": "x",
                       "H": 0.0, "I": [0], "J": 1}) == {"G": "x", "I": [0], "J": 1}
    assert list(omit_empty({"Z": 1, "A": 2})) == ["Z", "A"]


# ---- properties --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 63)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _same(parsed, value) -> bool:
    """Equality where a float written without fraction (Go style) may parse back as an int."""
    if isinstance(value, float):
        return float(parsed) == value
    if isinstance(value, list):
        return len(parsed) == len(value) and all(map(_same, parsed, value))
    if isinstance(value, dict):
        return parsed.keys() == value.keys() and all(_same(parsed[k], value[k]) for k in value)
    return parsed == value and type(parsed) is type(value)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_output_is_json_that_round_trips(value) -> None:
    out = go_marshal(value, sort_keys=True)
    text = out.decode("utf-8")
    assert _same(json.loads(text), value)
    assert not any(c in text for c in "<>&\u2028\u2029")
    assert json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False).count(" ") \
        == text.count(" ")  # no structural whitespace
    assert go_marshal(value, sort_keys=True) == out  # deterministic


@settings(max_examples=500, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_round_trips_and_uses_exponent_only_outside_go_range(f: float) -> None:
    s = go_float(f)
    assert float(s) == f
    has_exp = "e" in s
    assert has_exp == (f != 0 and (abs(f) < 1e-6 or abs(f) >= 1e21))
    assert not s.endswith(".0") and "e-0" not in s and "e+0" not in s


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_string_round_trips_non_ascii_raw(s: str) -> None:
    out = go_string(s)
    assert json.loads(out) == s
    for c in s:
        if ord(c) >= 0x80 and c not in "\u2028\u2029":
            assert c in out  # raw UTF-8, not \\uXXXX
