"""The devportal in a real browser: Debian's headless Chromium, driven by Playwright (the Python
package, pointed at /usr/bin/chromium with `executable_path`: it downloads no browser), opens
`portal/index.html` of the unpacked bundle from file:// with the network blocked three ways (an
offline browser context, host resolution mapped to nothing, and every non-file: request aborted and
recorded), then:

- crawls every link of every page (a, link, script, img, form) and loads every HTML page it finds:
  no request leaves file://, none fails, no script error, every internal link resolves (its file
  exists in the bundle, its #fragment names an element), and every page of portal/ and changelog/
  is reached;
- checks that the API reference lists every path of specs/openapi.json;
- searches (typing into the search page) for a known endpoint and a known Exportfile key and follows
  the result;
- keeps screenshots of the home page and one API page (the directory is printed; also copied to
  $STELLA_TEST_ARTIFACTS when set).

Chromium and Playwright are interop tools: missing, they skip this test on a developer machine and
FAIL it when CI=true (.ci/run installs Debian's chromium; playwright is in the test extra).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import deque
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import make_workspace, run_cli

from .conftest import require_tool

pytestmark = pytest.mark.interop

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND"]
LINKS_JS = """() => Array.from(document.querySelectorAll('a[href], link[href], script[src], img[src], form[action]'))
    .map(e => e.href || e.src || e.action)"""


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        msg = "the playwright package is not installed (pip install -e '.[test]')"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return sync_playwright


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The bundle as a user has it: the built archive, unpacked."""
    root = tmp_path_factory.mktemp("devportal-browser")
    ws = make_workspace(root / "ws")
    run_cli(["-q", "build", "//profiles:devportal-offline"], cwd=ws, cache=root / "c", check=True)
    tree = root / "bundle"
    tree.mkdir()
    subprocess.run(["tar", "-xzf", str(ws / "stella-out/profiles/devportal-offline/devportal-offline-bundle.tar.gz"),
                    "-C", str(tree)], check=True, timeout=60)
    return tree


@pytest.fixture(scope="module")
def browser(bundle, tmp_path_factory):
    chromium = require_tool("chromium")
    sync_playwright = _playwright()
    profile = tmp_path_factory.mktemp("chromium-profile")  # a new, empty --user-data-dir
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True, args=FLAGS, offline=True,
            viewport={"width": 1280, "height": 900})
        log = {"external": [], "failed": [], "errors": []}

        def route(r):
            if r.request.url.startswith("file://"):
                r.continue_()
            else:
                log["external"].append(r.request.url)
                r.abort()
        context.route("**/*", route)
        context.on("requestfailed", lambda req: log["failed"].append((req.url, req.failure)))
        page = context.pages[0] if context.pages else context.new_page()
        page.on("pageerror", lambda exc: log["errors"].append(str(exc)))
        page.set_default_timeout(15_000)
        yield page, log
        context.close()


def _artifacts(tmp_path: Path) -> Path:
    out = tmp_path / "screenshots"
    out.mkdir(exist_ok=True)
    return out


def _keep(shots: list[Path]) -> None:
    dest = os.environ.get("STELLA_TEST_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, Path(dest) / shot.name)
    print(f"\nscreenshots: {', '.join(str(s) for s in shots)}" + (f" (copied to {dest})" if dest else ""))


def test_every_page_loads_offline_and_every_link_resolves(bundle, browser, tmp_path):
    page, log = browser
    root = bundle.resolve()
    start = (root / "portal/index.html").as_uri()
    queue, seen, fragments, links = deque([start]), set(), [], 0
    while queue:
        url = queue.popleft()
        if url in seen:
            continue
        seen.add(url)
        response = page.goto(url, wait_until="load")
        assert response is None or response.ok, url
        for href in page.evaluate(LINKS_JS):
            links += 1
            parts = urlsplit(href)
            assert parts.scheme == "file", f"{url} links outside the bundle: {href}"
            target = Path(unquote(parts.path)).resolve()
            assert target.is_relative_to(root), f"{url} links out of the bundle: {href}"
            assert target.is_file(), f"{url}: broken link {href}"
            if target.suffix == ".html":
                queue.append(target.as_uri())
                if parts.fragment:
                    fragments.append((target.as_uri(), unquote(parts.fragment), url))
    for target, fragment, source in fragments:
        if page.url != target:
            page.goto(target, wait_until="load")
        assert page.evaluate("id => document.getElementById(id) !== null", fragment), \
            f"{source}: #{fragment} names no element of {target}"
    pages = {p.resolve().as_uri() for p in root.rglob("*.html")}
    assert pages <= seen, f"pages no link reaches: {sorted(pages - seen)}"
    assert log == {"external": [], "failed": [], "errors": []}, log
    print(f"\ncrawled {len(seen)} pages, {links} links, {len(fragments)} fragments: no request left file://")


def test_api_reference_lists_every_openapi_path(bundle, browser):
    page, log = browser
    api = json.loads((bundle / "specs/openapi.json").read_bytes())
    page.goto((bundle / "portal/api/index.html").resolve().as_uri(), wait_until="load")
    listed = page.eval_on_selector_all("table.ops a.path", "els => els.map(e => e.textContent)")
    assert sorted(set(listed)) == sorted(api["paths"])
    operations = sum(1 for item in api["paths"].values() for m in item if m in ("get", "post", "put", "delete", "patch"))
    assert len(listed) == operations
    assert log["external"] == [] and log["failed"] == []


def test_search_finds_an_endpoint_and_an_exportfile_key(bundle, browser, tmp_path):
    page, log = browser
    page.goto((bundle / "portal/index.html").resolve().as_uri(), wait_until="load")
    shots = [_artifacts(tmp_path) / "devportal-home.png"]
    page.screenshot(path=str(shots[0]), full_page=True)
    # the header's search box on the home page → search.html?q=...
    page.fill("header form.search input[name=q]", "submit run")
    page.press("header form.search input[name=q]", "Enter")
    page.wait_for_selector("#search-results li")
    titles = page.eval_on_selector_all("#search-results li a", "els => els.map(e => e.textContent)")
    assert titles[0] == "POST /api/export/runs", titles[:5]
    page.click("#search-results li a >> nth=0")
    page.wait_for_load_state("load")
    assert page.url.endswith("/portal/api/submit_api_export_runs_post.html")
    assert "Submit a run" in page.inner_text("main")
    shots.append(_artifacts(tmp_path) / "devportal-api-submit.png")
    page.screenshot(path=str(shots[1]), full_page=True)
    # an Exportfile key, typed into the search page itself
    page.goto((bundle / "portal/search.html").resolve().as_uri(), wait_until="load")
    page.fill("#search-input", "update_interval")
    page.wait_for_selector("#search-results li")
    titles = page.eval_on_selector_all("#search-results li a", "els => els.map(e => e.textContent)")
    assert "trivy_db.update_interval" in titles, titles
    page.click("#search-results li a:text-is('trivy_db.update_interval')")
    page.wait_for_load_state("load")
    assert page.url.endswith("/portal/exportfile.html#trivy_db-update_interval")
    assert page.is_visible("#trivy_db-update_interval")
    _keep(shots)
    for shot in shots:
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank image
    assert log == {"external": [], "failed": [], "errors": []}, log
