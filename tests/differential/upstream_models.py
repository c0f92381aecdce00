"""Models of the two scanners' own Alpine (apk) version orderings, used only to EXPLAIN a
disagreement, never as a reference.

Both scanners re-implement apk ordering and both differ from apk-tools' src/version.c (the
reference, ported in orderings.py):

- Trivy 0.74 uses github.com/knqyf263/go-apk-version (version.go), a port of apk-tools 2.x: after a
  ``.0`` component its leading-zero path returns without reading the next separator, so a
  pre-release suffix there is not seen as one: ``7.51.0_rc1`` sorts ABOVE ``7.51.0``.
- osv-scanner 2.6 uses github.com/google/osv-scalibr semantic/version-alpine.go, which compares
  number components padded with zeros (``4.0-r9`` == ``4.0.0-r9``, so above ``4.0.0-r0``) and
  treats an unparseable tail leniently.

``explains(model, ...)`` re-runs the spec evaluation with a model ordering: when that reproduces
the scanner's answer, the disagreement is that scanner's ordering, a reviewed upstream behaviour
(see allowlist.py), and the apk-tools answer stays the reference.
"""
from __future__ import annotations

import re

# -- go-apk-version (Trivy) --------------------------------------------------------------------
_TI, _TZ, _TD, _TL, _TS, _TSN, _TR, _TE = range(-1, 7)  # tokenInvalid .. tokenEnd
_PRE = ("alpha", "beta", "pre", "rc", "b")
_POST = ("cvs", "svn", "git", "hg", "p")


class _Reader:
    def __init__(self, s: str) -> None:
        self.s, self.i = s, 0

    def read(self) -> str | None:
        if self.i >= len(self.s):
            return None
        self.i += 1
        return self.s[self.i - 1]

    def unread(self) -> None:
        self.i = max(0, self.i - 1)

    def peek(self, n: int) -> str:
        return self.s[self.i:self.i + n]


def _next_token(rd: _Reader, t: int) -> int:
    n = _TI
    r = rd.read()
    if r is None:
        n = _TE
    if r is not None and t in (_TD, _TZ) and r.islower():
        n = _TL
    elif r is not None and t == _TL and r.isdigit():
        n = _TD
    elif r is not None and t == _TS and r.isdigit():
        n = _TSN
    elif r == ".":
        n = _TZ
    elif r == "_":
        n = _TS
    elif r == "-":
        n = _TI if rd.read() is None else _TR
    if n in (_TE, _TL, _TD, _TSN):
        rd.unread()
    if n < t and not ((n == _TZ and t == _TD) or (n == _TS and t == _TSN) or (n == _TD and t == _TL)):
        return _TI
    return n


def _get_token(rd: _Reader, t: int) -> tuple[int, int]:
    nt, value = _TI, 0
    r = rd.read()
    if t == _TZ and r == "0":
        while True:
            value -= 1
            r2 = rd.read()
            if r2 is None:
                break
            if r2 != "0":
                rd.unread()
                break
        nt = _TD
    elif t in (_TZ, _TD, _TSN, _TR):
        while r is not None and r.isdigit():
            value = value * 10 + int(r)
            r = rd.read()
            if r is None:
                break
        if r is not None:
            rd.unread()
    elif t == _TL:
        value = ord(r) if r else 0
    elif t == _TS:
        rd.unread()
        for k, s in enumerate(_PRE):
            if rd.peek(len(s)) == s:
                value = k - len(_PRE)
                rd.i += len(s)
                break
        if value == 0:
            value = -1
            for k, s in enumerate(_POST):
                if rd.peek(len(s)) == s:
                    value = k
                    rd.i += len(s)
                    break
            if value < 0:
                return -1, _TI
    else:
        return -1, _TI
    if rd.peek(1) == "":
        t = _TE
    elif nt != _TI:
        t = nt
    else:
        t = _next_token(rd, t)
    return value, t


def go_apk_version_cmp(a: str, b: str) -> int:
    """knqyf263/go-apk-version compare(): -1, 0, 1."""
    ra, rb = _Reader(a), _Reader(b)
    at = bt = _TD
    av = bv = 0
    while at == bt and at not in (_TE, _TI) and av == bv:
        av, at = _get_token(ra, at)
        bv, bt = _get_token(rb, bt)
    if av != bv:
        return -1 if av < bv else 1
    if at == bt:
        return 0
    if at == _TS and _get_token(ra, at)[0] < 0:
        return -1
    if bt == _TS and _get_token(rb, bt)[0] < 0:
        return 1
    if at > bt:
        return -1
    return 1 if at < bt else 0


# -- osv-scalibr semantic/version-alpine.go (osv-scanner) ------------------------------------------
_SUPPORTED = ("alpha", "beta", "pre", "rc", "", "cvs", "svn", "git", "hg")


def _scalibr_parse(s: str) -> dict:
    v = {"original": s, "invalid": False, "components": [], "letter": "", "suffixes": [], "build": 0}
    m = re.match(r"^((\d+)\.?)*", s)
    sub = m.group(0) if m else ""
    if sub:
        v["components"] = [(d, int(d or 0), i) for i, d in enumerate(sub.split("."))]
        s = s[len(sub):]
    if re.match(r"^[a-z]", s):
        v["letter"], s = s[0], s[1:]
    for mm in re.finditer(r"_(alpha|beta|pre|rc|cvs|svn|git|hg|p)(\d*)", s):
        weight = _SUPPORTED.index(mm.group(1)) if mm.group(1) in _SUPPORTED else len(_SUPPORTED)
        v["suffixes"].append((weight, int(mm.group(2) or 0)))
        s = s.removeprefix(mm.group(0))  # TrimPrefix: only strips when at the start
    mh = re.match(r"^~([0-9a-f]+)", s)
    if mh:
        s = s[len(mh.group(0)):]
    if s:
        mb = re.match(r"^-r(\d*)", s)
        if mb is None:
            v["invalid"] = True
        else:
            v["build"] = int(mb.group(1) or 0)
            s = s[len(mb.group(0)):]
    v["remainder"] = s
    return v


def _c(x, y) -> int:
    return (x > y) - (x < y)


def osv_scalibr_apk_cmp(a: str, b: str) -> int:
    """osv-scalibr alpineVersion.compare(): -1, 0, 1."""
    va, vb = _scalibr_parse(a), _scalibr_parse(b)
    if va["invalid"] and vb["invalid"]:
        return _c(a, b)
    for i in range(max(len(va["components"]), len(vb["components"]))):
        x = va["components"][i] if i < len(va["components"]) else ("0", 0, 0)  # Fetch(): index 0
        y = vb["components"][i] if i < len(vb["components"]) else ("0", 0, 0)
        if x[2] != 0 and y[2] != 0 and (x[0][:1] == "0" or y[0][:1] == "0"):
            r = _c(x[0], y[0])
        else:
            r = _c(x[1], y[1])
        if r:
            return r
    la, lb = va["letter"], vb["letter"]
    if la != lb:
        return -1 if not la else (1 if not lb else _c(la, lb))
    for i in range(max(len(va["suffixes"]), len(vb["suffixes"]))):
        # fetchSuffix() pads with weight 5 (the weight of "cvs" in its own list), as upstream does
        x = va["suffixes"][i] if i < len(va["suffixes"]) else (5, 0)
        y = vb["suffixes"][i] if i < len(vb["suffixes"]) else (5, 0)
        r = _c(x, y)
        if r:
            return r
    r = _c(va["build"], vb["build"])
    if r:
        return r
    if va["remainder"] == "" and vb["remainder"] != "":
        return 1
    if va["remainder"] != "" and vb["remainder"] == "":
        return -1
    return 0


MODELS = {"trivy": go_apk_version_cmp, "osv-scanner": osv_scalibr_apk_cmp}
