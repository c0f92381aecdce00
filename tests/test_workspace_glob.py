"""The hand-written glob matches pathlib's results (it replaces it for speed)."""
from pathlib import Path

import pytest

from stella_build.engine.workspace import _glob_files
from tests.conftest import SHARED_DATA

TREE = ["a.json", "b.yaml", ".hidden.json", "d/x.json", "d/e/y.json", "d/e/f/z.yaml", "g/h.json",
        "weird [1].json", "q?.json"]
PATTERNS = ["*.json", "**/*.json", "d/**/*.json", "d/*/*.json", "*", "?.json",
            "[ab].*", "[!a].json", "d/e/f/*.yaml", "nothing/*.json", "**/e/*"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for rel in TREE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    return root


@pytest.mark.parametrize("pattern", PATTERNS)
def test_same_files_as_pathlib(tree, pattern):
    ours = sorted(rel for rel, _ in _glob_files(tree, pattern))
    ref = sorted(p.relative_to(tree).as_posix() for p in tree.glob(pattern) if p.is_file())
    assert ours == ref


def test_trailing_double_star_means_every_file_below(tree):
    # pathlib yields only directories for a trailing "**"; like Bazel's glob we mean the files
    assert sorted(r for r, _ in _glob_files(tree, "d/**")) == ["d/e/f/z.yaml", "d/e/y.json", "d/x.json"]
    assert len(_glob_files(tree, "**")) == len(TREE)


@pytest.mark.parametrize("pattern", ["osv-pypi/vulns/**/*.yaml", "osv-go/*.json", "rustsec/**/*.md"])
def test_same_files_as_pathlib_on_the_corpora(pattern):
    ours = sorted(rel for rel, _ in _glob_files(SHARED_DATA, pattern))
    ref = sorted(p.relative_to(SHARED_DATA).as_posix() for p in SHARED_DATA.glob(pattern) if p.is_file())
    assert ours == ref and len(ours) > 1000
