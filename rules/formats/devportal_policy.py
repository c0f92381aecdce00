"""The `no-external-assets` policy of a devportal bundle: every reference in its HTML, CSS and
JavaScript stays inside the bundle, and every internal one resolves.

`check_references(files)` scans the rendered bundle ({path: bytes}) and returns `Problem`s, each
naming the bundle file and the line:

- `devportal-external-asset`: a URL with a scheme (http:, https:, data:, javascript:, mailto:, ...),
  a scheme-relative `//host/...`, an absolute `/path` (from file:// that is the machine's root),
  a relative path that climbs out of the bundle, or a `<base>` element; found in any attribute
  that loads or links (href, src, srcset, action, poster, ...), inline `style`, `<style>`, CSS
  `url()` / `@import`, and in JavaScript any string that is a URL;
- `devportal-broken-link`: an internal reference whose file is not in the bundle, or whose
  `#fragment` names no element id of that HTML page.

HTML is read with the standard library's HTMLParser (positions from `getpos()`); CSS and
JavaScript, which the bundle only gets from its own templates, with the regular expressions below
(a CSS tokenizer is not a dependency; the expressions over-approximate: any `url(...)`, any quoted
`scheme://` string counts).
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

__all__ = ["Problem", "check_references", "is_external", "scan_html", "scan_css", "scan_js"]

# Attributes whose value is a URL a browser loads or follows.
_URL_ATTRS = frozenset({"href", "src", "action", "formaction", "poster", "data", "background", "cite",
                        "longdesc", "manifest", "icon", "xlink:href", "ping"})
_CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]*)\1\s*\)|@import\s+(['"])([^'"]+)\3""", re.I)
_JS_URL = re.compile(r"""["'`]((?:[a-zA-Z][a-zA-Z0-9+.-]*:)?//[^"'`\s]*)["'`]""")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class Problem:
    """One policy violation: `reason`, the bundle `path` and 1-based `line`, what was found."""

    reason: str
    path: str
    line: int
    message: str


def is_external(url: str) -> bool:
    """Whether `url` leaves the bundle whatever page it is on: it has a scheme, is scheme-relative
    or absolute (a relative path climbing out is decided by `check_references`)."""
    url = url.strip()
    return bool(_SCHEME.match(url)) or url.startswith("/") or url.startswith("\\")


class _Scanner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[int, str, str]] = []  # (line, where, url)
        self.ids: set[str] = set()
        self._style_line: int | None = None

    def handle_starttag(self, tag, attrs):
        self._attrs(tag, attrs)
        if tag == "style":
            self._style_line = self.getpos()[0]

    def handle_startendtag(self, tag, attrs):
        self._attrs(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "style":
            self._style_line = None

    def handle_data(self, data):
        if self._style_line is not None:
            line = self.getpos()[0]
            self.refs += [(line + n, "<style>", url) for n, url in scan_css(data)]

    def _attrs(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        line = self.getpos()[0]
        if tag == "base":
            self.refs.append((line, "<base>", "<base> element"))
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id", "name") and tag != "meta":
                self.ids.add(value)
            if name in _URL_ATTRS:
                self.refs.append((line, f"<{tag} {name}>", value))
            elif name in ("srcset", "imagesrcset"):
                for candidate in value.split(","):
                    if candidate.strip():
                        self.refs.append((line, f"<{tag} {name}>", candidate.strip().split()[0]))
            elif name == "style":
                self.refs += [(line, f"<{tag} style>", url) for _, url in scan_css(value)]
            elif name == "content" and tag == "meta" and "url=" in value.lower():
                self.refs.append((line, "<meta refresh>", value.lower().split("url=", 1)[1].strip()))
            elif name.startswith("on") and _JS_URL.search(value):
                self.refs += [(line, f"<{tag} {name}>", url) for _, url in scan_js(value)]


def scan_html(text: str) -> tuple[list[tuple[int, str, str]], set[str]]:
    """(references as (line, where, url), element ids) of an HTML page; inline <script> bodies are
    scanned as JavaScript."""
    scanner = _Scanner()
    scanner.feed(text)
    scanner.close()
    refs = list(scanner.refs)
    for m in re.finditer(r"<script\b[^>]*>(.*?)</script>", text, re.S | re.I):
        base = text.count("\n", 0, m.start(1))
        refs += [(base + n + 1, "<script>", url) for n, url in scan_js(m.group(1))]
    return refs, scanner.ids


def scan_css(text: str) -> list[tuple[int, str]]:
    """(0-based line offset, url) of every `url(...)` and `@import` in CSS text."""
    out = []
    for m in _CSS_URL.finditer(text):
        url = m.group(2) if m.group(2) is not None else m.group(4)
        out.append((text.count("\n", 0, m.start()), url))
    return out


def scan_js(text: str) -> list[tuple[int, str]]:
    """(0-based line offset, url) of every quoted `scheme://...` or `//host...` string in JS."""
    return [(text.count("\n", 0, m.start()), m.group(1)) for m in _JS_URL.finditer(text)]


def _line(offset_or_line: int, base: int = 1) -> int:
    return offset_or_line + base


def check_references(files: dict[str, bytes], *, data_links: dict[str, tuple[str, list[str]]] | None = None
                     ) -> list[Problem]:
    """Every policy problem of a bundle ({bundle path: bytes}), sorted by path and line.

    `data_links` names scripts that are data (a search index): {script path: (the page its URLs are
    relative to, [URL, ...])}; their URLs are checked as links of that page instead of scanning
    the script's text (whose strings are prose, not references)."""
    pages: dict[str, tuple[list, set[str]]] = {}
    problems: list[Problem] = []
    data_links = data_links or {}
    for path, data in files.items():
        if path in data_links:
            continue
        if path.endswith(".html"):
            pages[path] = scan_html(data.decode("utf-8"))
        elif path.endswith(".css"):
            refs = [(_line(n), "css", url) for n, url in scan_css(data.decode("utf-8"))]
            pages[path] = (refs, set())
        elif path.endswith(".js"):
            pages[path] = ([(_line(n), "js", url) for n, url in scan_js(data.decode("utf-8"))], set())
    checks = [(path, path, line, where, url) for path, (refs, _ids) in sorted(pages.items())
              for line, where, url in refs]
    checks += [(script, page, 1, f"index entry of {page}", url)
               for script, (page, urls) in sorted(data_links.items()) for url in urls]
    for path, page, line, where, url in checks:
        problem = _resolve(page, url, files, pages)
        if problem:
            reason, why = problem
            problems.append(Problem(reason, path, line, f"{where} {url!r}: {why}"))
    return sorted(problems, key=lambda p: (p.path, p.line, p.message))


def _resolve(page: str, url: str, files: dict[str, bytes], pages: dict) -> tuple[str, str] | None:
    if url == "<base> element":
        return "devportal-external-asset", "a <base> element changes where every relative link points"
    if is_external(url) or url.strip().startswith("//"):
        return "devportal-external-asset", "points outside the bundle"
    parts = urlsplit(url.strip())
    if not parts.path:
        target = page
    else:
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(page), unquote(parts.path)))
        if joined == ".." or joined.startswith("../") or joined.startswith("/"):
            return "devportal-external-asset", "climbs out of the bundle"
        target = joined
    if target not in files:
        return "devportal-broken-link", f"{target} is not in the bundle"
    if parts.fragment and target.endswith(".html"):
        ids = pages.get(target, ((), set()))[1]
        if unquote(parts.fragment) not in ids:
            return "devportal-broken-link", f"{target} has no element with id {parts.fragment!r}"
    return None
