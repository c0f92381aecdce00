"""The devportal's pages: Markdown to HTML (markdown-it-py), the offline search index, and the
jinja2 rendering of every page of portal/ and changelog/ (docs/devportal.md).

`render_site(...)` is a pure function: templates, static assets and inputs in, {bundle path: bytes}
out. Pages link to each other with relative URLs only (a `root` prefix from the page's directory
to the bundle root), so the portal works from file:// on any disk; rules/formats/devportal_policy.py
checks that afterwards.

Markdown (CommonMark + tables, raw HTML off, so a document cannot inject markup or scripts):
- headings get GitHub-style ids (`## Running it` → `#running-it`), so `doc.md#section` links work;
- a link to another document of the set becomes a link to its page; a link to anything outside the
  bundle (a URL, a repository file that is not shipped) is kept as text with its target shown
  (class `external`), never as a link: the portal must not lead off the bundle;
- an image that is not in the bundle is an error (`MarkdownProblem`, with the document's line): an
  asset cannot be rendered as text.
"""
from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import jinja2
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from stella_build.rules.devportal_specs import type_html
from stella_build.rules.formats.devportal_policy import is_external

SEARCH_INDEX = "portal/assets/search-index.js"

__all__ = ["SEARCH_INDEX", "MarkdownProblem", "Doc", "render_markdown", "render_site", "slugify", "page_root"]


class MarkdownProblem(ValueError):
    """A Markdown document that cannot become an offline page: `file` and 1-based `line`."""

    def __init__(self, message: str, file: str, line: int):
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line = file, line


@dataclass(frozen=True)
class Doc:
    """One Markdown document of docs/: `name` (file name), `text`, `source` (its logical path)."""

    name: str
    text: str
    source: str


_SLUG_DROP = re.compile(r"[^\w\- ]", re.UNICODE)


def slugify(text: str, seen: dict[str, int]) -> str:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats -1, -2..."""
    base = _SLUG_DROP.sub("", text.strip().lower()).replace(" ", "-") or "section"
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def page_root(page: str) -> str:
    """The relative prefix from `page`'s directory to the bundle root ("../" for portal/x.html)."""
    return "../" * page.count("/")


def _rel(page: str, target: str) -> str:
    return posixpath.relpath(target, posixpath.dirname(page) or ".")


def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "typographer": False}).enable("table")


def render_markdown(text: str, *, source: str, page: str, doc_pages: dict[str, str]) -> tuple[Markup, str, list[dict]]:
    """(HTML, title, headings[{level, text, id}]) of one Markdown document rendered for the bundle
    page `page`. `doc_pages` maps a document's name (`api.md`) to its bundle page path. Raises
    MarkdownProblem for an image that is not in the bundle."""
    md = _markdown()
    tokens = md.parse(text)
    seen: dict[str, int] = {}
    headings: list[dict] = []
    title = ""
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            inline = tokens[i + 1]
            label = "".join(c.content for c in inline.children or [] if c.type in ("text", "code_inline"))
            anchor = slugify(label, seen)
            tok.attrSet("id", anchor)
            headings.append({"level": int(tok.tag[1]), "text": label, "id": anchor})
            if not title and tok.tag == "h1":
                title = label
        if tok.type != "inline" or not tok.children:
            continue
        base_line = (tok.map[0] + 1) if tok.map else 1
        children, external, label = [], None, ""
        for child in tok.children:
            if child.type == "image":
                src = child.attrGet("src") or ""
                line = base_line + tok.content[: max(tok.content.find(src), 0)].count("\n")
                raise MarkdownProblem(f"image {src!r} is not part of the bundle (no-external-assets)", source, line)
            if child.type == "link_open":
                external, label = _rewrite_link(child, page, doc_pages), ""
            elif child.type == "link_close" and external is not None:
                child.tag = "span"
                children.append(child)
                if label.strip() != external:  # show where it pointed, unless the text is the URL
                    children.append(Token("text", "", 0, content=f" ({external})"))
                external = None
                continue
            elif external is not None and child.type in ("text", "code_inline"):
                label += child.content
            children.append(child)
        tok.children = children
    html = md.renderer.render(tokens, md.options, {})
    return Markup(html), title or posixpath.splitext(posixpath.basename(source))[0], headings


def _rewrite_link(tok, page: str, doc_pages: dict[str, str]) -> str | None:
    """Point a link at the page of the document it names; a link to anything outside the bundle
    becomes a <span class="external"> (returns its target, shown after the text), else None."""
    href = tok.attrGet("href") or ""
    parts = urlsplit(href)
    if not is_external(href) and not href.startswith("//"):
        if not parts.path:
            return None  # "#section" of this page
        name = posixpath.normpath(parts.path)
        if name in doc_pages:
            tok.attrSet("href", _rel(page, doc_pages[name]) + (f"#{parts.fragment}" if parts.fragment else ""))
            return None
    tok.attrs = {"class": "external", "title": "not part of this bundle"}
    tok.tag = "span"
    return href


# -- the search index --------------------------------------------------------------------------------

def _entry(title: str, url: str, kind: str, text: str = "") -> dict:
    return {"t": title, "u": url, "k": kind, "s": " ".join(text.split())[:240]}


def search_index(*, api: dict, exportfile: dict, docs: list[dict], sdks: list[dict]) -> list[dict]:
    """Entries {t: title, u: URL relative to portal/, k: kind, s: snippet} of every operation, API
    schema, Exportfile rule and key, document heading and SDK page, in page order."""
    out = [_entry(f"{op['method']} {op['path']}", f"api/{op['slug']}.html", "endpoint",
                  f"{op['summary']} {op['operationId']} " + " ".join(p["name"] for p in op["parameters"]))
           for op in api["operations"]]
    out += [_entry(s["name"], f"api/schemas.html#{s['anchor']}", "schema",
                   s["description"] + " " + " ".join(p["name"] for p in s["properties"])) for s in api["schemas"]]
    for rule in exportfile["rules"]:
        out.append(_entry(f"rule = \"{rule['rule']}\"", f"exportfile.html#{rule['anchor']}", "exportfile rule",
                          " ".join(k["name"] for k in rule["fields"])))
        out += [_entry(f"{rule['rule']}.{k['name']}", f"exportfile.html#{k['anchor']}", "exportfile key",
                       k["description"]) for k in rule["fields"] if k["name"] != "rule"]
    for t in exportfile["types"]:
        out.append(_entry(t["name"], f"exportfile.html#{t['anchor']}", "exportfile type",
                          " ".join(k["name"] for k in t["fields"])))
    for doc in docs:
        out.append(_entry(doc["title"], doc["url"], "format", doc["name"]))
        out += [_entry(f"{doc['title']} › {h['text']}", f"{doc['url']}#{h['id']}", "format")
                for h in doc["headings"] if h["level"] > 1]
    out += [_entry(s["title"], s["url"], "sdk", s["summary"]) for s in sdks]
    return out


def _index_js(entries: list[dict]) -> bytes:
    # A script, not a .json file: browsers refuse fetch()/XHR of file:// URLs, but load scripts.
    body = json.dumps(entries, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return f"/* generated: the devportal's offline search index */\nwindow.STELLA_SEARCH_INDEX = {body};\n".encode()


# -- pages -----------------------------------------------------------------------------------------

def _environment(templates: dict[str, str]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.DictLoader(templates), undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True,
        autoescape=lambda name: bool(name) and name.endswith(".html.j2"))
    return env


def render_site(*, templates: dict[str, str], static: dict[str, bytes], api: dict, exportfile: dict,
                docs: list[Doc], changelog: str, specs: list[dict], sdks: list[dict], shell: list[dict],
                meta: dict) -> tuple[dict[str, bytes], dict[str, tuple[str, list[str]]]]:
    """Every page and asset of portal/ and changelog/ ({bundle path: bytes}), and the search
    index's links ({script: (page they are relative to, [url])}, for the policy check).

    `templates` are the jinja2 templates by name, `static` the files of portal/assets/, `api` and
    `exportfile` the models of rules/devportal_specs.py, `docs` the formats documents, `changelog`
    CHANGELOG.md's text, `specs` [{path, title, description, sha256, size}], `sdks` the SDK pages'
    facts, `shell` the curl functions, `meta` the bundle facts every page shows."""
    env = _environment(templates)
    files: dict[str, bytes] = {f"portal/assets/{name}": data for name, data in static.items()}
    doc_pages = {d.name: f"portal/formats/{posixpath.splitext(d.name)[0]}.html" for d in docs}
    rendered_docs = []
    for d in sorted(docs, key=lambda d: d.name):
        page = doc_pages[d.name]
        html, title, headings = render_markdown(d.text, source=d.source, page=page, doc_pages=doc_pages)
        rendered_docs.append({"name": d.name, "page": page, "url": page.removeprefix("portal/"), "title": title,
                              "html": html, "headings": headings, "source": d.source})
    sdk_pages = [{**s, "page": f"portal/sdks/{s['name']}.html", "url": f"sdks/{s['name']}.html"} for s in sdks]

    def schema_link(page: str):
        def link(ref: str) -> str | None:
            if ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[-1]
                return _rel(page, "portal/api/schemas.html") + "#schema-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name)
            if ref.startswith("#/$defs/"):
                name = ref.rsplit("/", 1)[-1]
                return _rel(page, "portal/exportfile.html") + "#type-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name)
            return None
        return link

    nav = [("portal/index.html", "Home"), ("portal/api/index.html", "HTTP API"),
           ("portal/exportfile.html", "Exportfile"), ("portal/formats/index.html", "Formats"),
           ("portal/specs.html", "Specs"), *((p["page"], p["title"]) for p in sdk_pages),
           ("changelog/CHANGELOG.html", "Changelog"), ("portal/search.html", "Search")]

    def page(path: str, template: str, title: str, **ctx) -> None:
        root = page_root(path)
        link = schema_link(path)
        files[path] = env.get_template(template).render(
            root=root, page=path, title=title, meta=meta, nav=[{"href": root + p, "label": l, "current": p == path}
                                                               for p, l in nav],
            type_html=lambda s: type_html(s, link), api=api, exportfile=exportfile, docs=rendered_docs,
            sdks=sdk_pages, specs=specs, shell=shell, rel=lambda target: _rel(path, target), **ctx).encode("utf-8")

    page("portal/index.html", "index.html.j2", "Developer portal")
    page("portal/api/index.html", "api_index.html.j2", f"{api['info']['title']}: HTTP API")
    for op in api["operations"]:
        page(f"portal/api/{op['slug']}.html", "api_operation.html.j2", f"{op['method']} {op['path']}", op=op)
    page("portal/api/schemas.html", "api_schemas.html.j2", "API schemas")
    page("portal/exportfile.html", "exportfile.html.j2", "Exportfile reference")
    page("portal/formats/index.html", "formats_index.html.j2", "Formats and guides")
    for d in rendered_docs:
        page(d["page"], "doc.html.j2", d["title"], doc=d)
    page("portal/specs.html", "specs.html.j2", "Machine-readable specs")
    for s in sdk_pages:
        page(s["page"], s["template"], s["title"], sdk=s)
    page("portal/search.html", "search.html.j2", "Search")
    html, title, headings = render_markdown(changelog, source="CHANGELOG.md", page="changelog/CHANGELOG.html",
                                            doc_pages=doc_pages)
    page("changelog/CHANGELOG.html", "doc.html.j2", title or "Changelog",
         doc={"html": html, "title": title, "headings": headings, "source": "CHANGELOG.md", "raw": "CHANGELOG.md"})
    files["changelog/CHANGELOG.md"] = changelog.encode("utf-8")
    index = search_index(api=api, exportfile=exportfile, docs=rendered_docs,
                         sdks=[{"title": s["title"], "url": s["url"], "summary": s["summary"]} for s in sdk_pages])
    files[SEARCH_INDEX] = _index_js(index)
    return files, {SEARCH_INDEX: ("portal/search.html", [e["u"] for e in index])}
