"""Local attack surface of a build: sources that leave the workspace, a damaged cache, a full
disk, and Exportfile/label inputs that used to end in a traceback instead of an error.

Each test asserts the machine-readable outcome (exit code, `reason`, file/line/field in
`--output json`) and that the bad input left nothing behind: no traceback, no half-written
output, no `.tmp-*`/`.old-*` directory in stella-out/, no poisoned cache entry.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3
import lmdb
import pytest

from stella_build.engine.cache.cas import Cas, CorruptBlob
from stella_build.engine.cache.index import Index
from stella_build.engine.cache.storage import StorageError
from stella_build.engine.errors import UsageError
from stella_build.engine.labels import Label
from stella_build.engine.materialize import materialize
from stella_build.engine.workspace import Workspace, _glob_files
from tests.conftest import CLI, REPO, Result, make_workspace, output_digests, run_cli

GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())["//profiles:json-raw"]
TARGET = "//profiles:json-raw"


def _leftovers(ws: Path) -> list[str]:
    """`.tmp-*` / `.old-*` entries anywhere in stella-out/."""
    out = ws / "stella-out"
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name) \
        if out.exists() else []


def _error(res) -> dict:
    assert "Traceback" not in res.stderr, res.stderr
    return res.json()["errors"][0]


# ---- 7. sources stay inside their root ------------------------------------------------------

def test_evidence_symlink_to_a_file_outside_the_workspace_is_refused(sample_ws, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"id": "SECRET-1", "modified": "2024-01-01T00:00:00Z", "summary": "private"}')
    link = sample_ws / "profiles/evidence/osv/ZZZ-link.json"
    link.symlink_to(secret)
    res = run_cli(["--output", "json", TARGET], cwd=sample_ws, cache=tmp_path / "c")
    assert res.code == 2
    err = _error(res)
    assert err["reason"] == "source-symlink"
    assert err["file"] == "profiles/Exportfile" and err["field"] == "srcs" and err["line"] == 11
    assert "profiles/evidence/osv/ZZZ-link.json" in err["message"]
    assert not (sample_ws / "stella-out").exists()  # nothing built, so nothing leaked


def test_a_literal_directory_that_links_outside_the_workspace_is_refused(sample_ws, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(sample_ws / "profiles/evidence/osv", outside)
    shutil.rmtree(sample_ws / "profiles/evidence/osv")
    (sample_ws / "profiles/evidence/osv").symlink_to(outside, target_is_directory=True)
    res = run_cli(["--output", "json", TARGET], cwd=sample_ws, cache=tmp_path / "c")
    assert res.code == 2
    err = _error(res)
    assert err["reason"] == "source-symlink" and "profiles/evidence/osv" in err["message"]


@pytest.fixture
def linked_tree(tmp_path) -> tuple[Workspace, Path]:
    """A workspace with every kind of link: inside, outside, dangling, loops, directory links."""
    root = tmp_path / "ws"
    (root / "pkg/data/sub").mkdir(parents=True)
    (root / "stella-workspace.toml").write_text("[workspace]\n")
    (root / "pkg/data/a.json").write_text("a")
    (root / "pkg/data/sub/b.json").write_text("b")
    (root / "other").mkdir()
    (root / "other/c.json").write_text("c")
    (root / "pkg/data/loop").symlink_to(root / "pkg/data", target_is_directory=True)  # a cycle
    (root / "pkg/data/up").symlink_to(root, target_is_directory=True)  # into the root: still not walked
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.json").write_text("x")
    (root / "pkg/data/ext").symlink_to(outside, target_is_directory=True)
    return Workspace.find(explicit=root), tmp_path


def test_wildcards_never_descend_into_directory_symlinks(linked_tree):
    ws, _ = linked_tree
    started = time.perf_counter()
    files = ws.glob(["data/**"], "pkg")
    assert time.perf_counter() - started < 5  # the loop is not followed, so no hang
    assert [logical for logical, _ in files] == ["pkg/data/a.json", "pkg/data/sub/b.json"]


def test_a_file_symlink_inside_the_root_is_followed_to_its_target(linked_tree):
    ws, _ = linked_tree
    (ws.root / "pkg/data/c-link.json").symlink_to(ws.root / "other/c.json")
    files = dict(ws.glob(["data/*.json"], "pkg"))
    assert files["pkg/data/c-link.json"] == str(ws.root / "other/c.json")  # what will be read
    assert Path(files["pkg/data/c-link.json"]).read_text() == "c"


@pytest.mark.parametrize("make", ["outside", "dangling", "loop", "fifo-target"])
def test_file_symlinks_that_are_not_regular_files_in_the_root_are_refused(linked_tree, make):
    ws, tmp = linked_tree
    link = ws.root / "pkg/data/z.json"
    if make == "outside":
        link.symlink_to(tmp / "outside/x.json")
    elif make == "dangling":
        link.symlink_to(ws.root / "pkg/data/missing.json")
    elif make == "loop":
        link.symlink_to(ws.root / "pkg/data/z2.json")
        (ws.root / "pkg/data/z2.json").symlink_to(link)
    else:
        os.mkfifo(ws.root / "pkg/fifo")
        link.symlink_to(ws.root / "pkg/fifo")
    with pytest.raises(UsageError) as exc:
        ws.glob(["data/*.json"], "pkg")
    assert exc.value.reason == "source-symlink" and exc.value.errors[0].field == "srcs"
    assert "pkg/data/z" in exc.value.errors[0].message


def test_an_external_root_link_must_stay_in_that_external_root(tmp_path):
    root = tmp_path / "ws"
    (root / "shared").mkdir(parents=True)
    (root / "stella-workspace.toml").write_text('[workspace]\nexternal = { data = "shared" }\n')
    (root / "private.json").write_text("{}")
    (root / "shared/ok.json").write_text("{}")
    (root / "shared/sneaky.json").symlink_to(root / "private.json")  # in the workspace, not in @data
    ws = Workspace.find(explicit=root)
    with pytest.raises(UsageError) as exc:
        ws.glob(["@data//*.json"], "")
    assert exc.value.reason == "source-symlink" and "@data//sneaky.json" in exc.value.errors[0].message


def test_many_double_stars_are_collapsed_and_too_many_wildcards_refused(tmp_path):
    deep = tmp_path.joinpath(*"abcdefghijklmnop")
    deep.mkdir(parents=True)
    (deep / "f.json").write_text("{}")
    started = time.perf_counter()
    assert _glob_files(tmp_path, "**/" * 200 + "*.json") == _glob_files(tmp_path, "**/*.json")
    assert time.perf_counter() - started < 2
    ws_root = tmp_path / "w"
    ws_root.mkdir()
    (ws_root / "stella-workspace.toml").write_text("[workspace]\n")
    with pytest.raises(UsageError) as exc:
        Workspace.find(explicit=ws_root).glob(["*a" * 40 + ".json"], "")
    assert exc.value.reason == "glob-invalid"


# ---- 8. the local cache: damaged index, corrupt blobs, full disk ------------------------------

def _index_file(cache: Path) -> Path:
    return cache / "index-v1" / "data.mdb"


def _damage(path: Path, how: str) -> None:
    if how == "truncated-16k":
        os.truncate(path, 16384)
    elif how == "truncated-odd":
        os.truncate(path, 3 * 4096 + 100)
    elif how == "truncated-tiny":
        os.truncate(path, 100)
    elif how == "bad-magic":
        with open(path, "r+b") as f:
            f.seek(16)
            f.write(b"\0\0\0\0")
    elif how == "zeroed-metas":
        with open(path, "r+b") as f:
            f.write(b"\0" * 8192)


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> tuple[Path, Path]:
    """(workspace, cache) after one golden build; tests copy the cache before damaging it."""
    base = tmp_path_factory.mktemp("built")
    ws = make_workspace(base / "ws")
    run_cli(["-q", TARGET], cwd=ws, cache=base / "c", check=True)
    return ws, base / "c"


@pytest.mark.parametrize("how", ["truncated-16k", "truncated-odd", "truncated-tiny", "bad-magic", "zeroed-metas"])
def test_a_damaged_index_is_detected_before_mapping_and_replaced(built_cache, tmp_path, how):
    _ws, good = built_cache
    cache = tmp_path / "c"
    shutil.copytree(good, cache)
    blobs_before = sorted(p.name for p in (cache / "cas").rglob("*") if p.is_file())
    _damage(_index_file(cache), how)
    # In a child process: if the check missed, LMDB's SIGBUS must fail this test, not kill pytest.
    code = ("from pathlib import Path; import json, sys\n"
            "from stella_build.engine.cache.index import Index\n"
            "i = Index(Path(sys.argv[1]), warn=lambda m: None)\n"
            "print(json.dumps({'repaired': i.repaired, 'counts': i.counts()}))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(cache)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)  # -7 would be SIGBUS
    data = json.loads(proc.stdout)
    assert data["repaired"] and data["counts"] == {"actions": 0, "key_records": 0, "file_digests": 0}
    assert sorted(p.name for p in (cache / "cas").rglob("*") if p.is_file()) == blobs_before  # blobs kept
    assert not list(cache.glob("index-v1.damaged-*"))


def test_build_on_a_truncated_index_warns_rebuilds_and_is_golden(built_cache, tmp_path):
    _ws, good = built_cache
    cache = tmp_path / "c"
    shutil.copytree(good, cache)
    ws = make_workspace(tmp_path / "ws")
    _damage(_index_file(cache), "truncated-16k")
    res = run_cli(["--output", "json", TARGET], cwd=ws, cache=cache)
    assert res.code == 0, res.stderr  # not 135/-7 (SIGBUS)
    assert res.json()["actions"]["executed"] == 9  # results were lost with the index...
    assert "cache index" in res.stderr and "was damaged" in res.stderr
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN  # ...and rebuilt, blobs re-adopted
    again = run_cli(["--output", "json", TARGET], cwd=ws, cache=cache, check=True)
    assert again.json()["actions"]["cached"] == 9 and "warning" not in again.stderr


def test_cache_verify_on_a_truncated_index_reports_and_repairs(built_cache, tmp_path):
    ws, good = built_cache
    cache = tmp_path / "c"
    shutil.copytree(good, cache)
    ok = run_cli(["cache", "verify", "--output", "json"], cwd=ws, cache=cache)
    assert ok.code == 0 and ok.json()["index"] == {"repaired": None, "problems": []}
    _damage(_index_file(cache), "truncated-16k")
    res = run_cli(["cache", "verify", "--output", "json"], cwd=ws, cache=cache)
    assert res.code == 3, res.stderr
    assert "Traceback" not in res.stderr
    assert "refers to" in res.json()["index"]["repaired"]
    assert run_cli(["cache", "verify", "--output", "json"], cwd=ws, cache=cache).code == 0


def test_interior_damage_is_found_by_cache_verify_structure_walk(tmp_path):
    cache = tmp_path / "c"
    index = Index(cache, warn=lambda m: None)
    for i in range(400):
        index.put_stats({f"/src/{i:04d}.json": [1, 2, 3, 4, "a" * 64, "b" * 64]})
    index.close()
    data = bytearray(_index_file(cache).read_bytes())
    for page in range(2, len(data) // 4096):  # every page now claims a wrong page number
        data[page * 4096: page * 4096 + 8] = (page + 1000).to_bytes(8, sys.byteorder)
    _index_file(cache).write_bytes(bytes(data))
    index = Index(cache, warn=lambda m: None)
    try:
        problems = index.verify_structure()
        assert problems and index.repaired
        assert index.counts()["file_digests"] == 0
    finally:
        index.close()


@pytest.mark.parametrize("value", [
    b"{" * 100000,                                                   # nesting deeper than json allows
    b'{"outputs": [], "stats": {"n": ' + b"9" * 100000 + b"}}",      # beyond int() digit limit
    b'{"outputs": "nope"}',
    b'{"outputs": [{"path": "../../../escape", "blake3": "' + b"0" * 64 + b'", "sha256": "' + b"0" * 64
    + b'", "size": 1, "mode": 420}]}',
    b"\xff\xfe",
])
def test_malformed_index_records_are_misses_not_exceptions(tmp_path, value):
    cache = tmp_path / "c"
    index = Index(cache, warn=lambda m: None)
    try:
        with index.env.begin(write=True) as txn:
            txn.put(b"k" * 64, value, db=index.ac)
            txn.put(b"/src/a.json", value, db=index.stat)
            txn.put(b"//p:a#X", value, db=index.last)
        assert index.get_result("k" * 64) is None
        assert index.get_results(["k" * 64]) == {}
        assert index.get_stats(["/src/a.json"]) == {}
        assert index.last_keys("//p:a#X") == {}
        assert index.all_results() == []
        assert [b["key"] for b in index.drop_malformed_results()] == ["k" * 64]  # as cache verify does
        with index.env.begin() as txn:
            assert txn.get(b"k" * 64, db=index.ac) is None
    finally:
        index.close()


def test_a_poisoned_result_cannot_make_materialize_write_outside(built_cache, tmp_path):
    _ws, good = built_cache
    cache = tmp_path / "c"
    shutil.copytree(good, cache)
    ws = make_workspace(tmp_path / "ws")
    blob = next(p for p in (cache / "cas").rglob("*") if p.is_file())
    env = lmdb.open(str(cache / "index-v1"), max_dbs=8, map_size=1 << 36)
    ac = env.open_db(b"ac")
    bad = {"outputs": [{"path": "../../../../escaped", "blake3": blob.name, "size": blob.stat().st_size,
                        "sha256": "0" * 64, "mode": 0o644}], "stats": {}}
    with env.begin(write=True) as txn:
        for key, _ in list(txn.cursor(db=ac)):
            txn.put(key, json.dumps(bad).encode(), db=ac)
    env.close()
    res = run_cli(["--output", "json", TARGET], cwd=ws, cache=cache, check=True)
    assert res.json()["actions"]["executed"] == 9  # every poisoned record was a miss
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN
    assert not list(tmp_path.rglob("escaped"))


def test_a_flipped_output_blob_rebuilds_its_producer_and_leaves_no_temp_dirs(built_cache, tmp_path):
    _ws, good = built_cache
    cache = tmp_path / "c"
    shutil.copytree(good, cache)
    ws = make_workspace(tmp_path / "ws")
    run_cli(["-q", TARGET], cwd=ws, cache=cache, check=True)
    digest = blake3.blake3((ws / "stella-out/profiles/json-raw/bundle.tar.gz").read_bytes()).hexdigest()
    blob = cache / "cas" / digest[:2] / digest
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    shutil.rmtree(ws / "stella-out/profiles/json-raw")
    res = run_cli(["--output", "json", TARGET], cwd=ws, cache=cache)
    assert res.code == 0, res.stderr
    assert res.json()["actions"]["executed"] >= 1
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN
    assert _leftovers(ws) == []


def test_materialize_cleans_up_on_a_corrupt_blob_and_keeps_the_previous_output(tmp_path):
    cas = Cas(tmp_path / "c")
    good, bad = cas.put_bytes(b"good"), cas.put_bytes(b"will rot")
    root = tmp_path / "ws"
    label = Label("pkg", "t")
    files = {"a.txt": {"blake3": good, "size": 4, "mode": 0o644, "src": None}}
    materialize(root, label, files, cas)
    # a killed process's leftovers (pid 1 is alive, so use a pid that is not)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (root / "stella-out/pkg" / f".t.tmp-{dead.pid}").mkdir()
    os.chmod(cas.path(bad), 0o644)
    cas.path(bad).write_bytes(b"rotten!!")
    files2 = {"a.txt": files["a.txt"], "b/c.txt": {"blake3": bad, "size": 8, "mode": 0o644, "src": None}}
    with pytest.raises(CorruptBlob):
        materialize(root, label, files2, cas)
    assert (root / "stella-out/pkg/t/a.txt").read_bytes() == b"good"  # previous output intact
    assert not (root / "stella-out/pkg/t/b").exists()
    assert _leftovers(root) == []


def test_materialize_refuses_output_paths_that_leave_the_directory(tmp_path):
    cas = Cas(tmp_path / "c")
    digest = cas.put_bytes(b"x")
    with pytest.raises(Exception) as exc:
        materialize(tmp_path / "ws", Label("pkg", "t"),
                    {"../../evil": {"blake3": digest, "size": 1, "mode": 0o644, "src": None}}, cas)
    assert getattr(exc.value, "reason", None) == "output-path-invalid"
    assert not (tmp_path / "evil").exists() and not (tmp_path / "ws/evil").exists()


@contextlib.contextmanager
def small_fs(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (unmounted afterwards), or None where mounting is not
    allowed: the caller then limits file sizes with RLIMIT_FSIZE instead (EFBIG, same reason)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


def _no_mount() -> None:
    """Tests that need a real small filesystem: fail on CI (it must be able to mount), say why
    elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail("this test needs to mount a tmpfs (run as root or with CAP_SYS_ADMIN)")
    pytest.skip("no permission to mount a tmpfs")


def _fill(directory: Path, leave: int) -> Path:
    """Fill the filesystem of `directory` until about `leave` bytes are free."""
    filler = directory / "filler"
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(0, free - leave))
    return filler


def _fsize_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _run_limited(args, cwd, cache, limit):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLA_")}
    proc = subprocess.run([CLI, "--cache-dir", str(cache), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, preexec_fn=_fsize_limit(limit))
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("leave_kib", [0, 48, 120, 200])
def test_a_full_cache_disk_is_a_clear_error_and_poisons_nothing(tmp_path, leave_kib):
    ws = make_workspace(tmp_path / "ws")
    with small_fs(tmp_path / "fs", "1m") as fs:
        if fs is None:  # no mount permission: the file size limit plays the full disk
            cache = tmp_path / "c"
            # every limit is below the index file's 144 KiB, so some write must fail
            res = _run_limited(["--output", "json", TARGET], ws, cache, 4096 + leave_kib * 512)
        else:
            cache = fs / "c"
            filler = _fill(fs, leave_kib * 1024)
            res = run_cli(["--output", "json", TARGET], cwd=ws, cache=cache)
        assert res.code == 1, (res.code, res.stderr)
        err = _error(res)
        assert err["reason"] == "disk-full", err
        assert err["file"] and err["file"].startswith(str(cache)), err
        assert not (ws / "stella-out/profiles/json-raw").exists() and _leftovers(ws) == []
        if fs is not None:
            filler.unlink()
        ok = run_cli(["--output", "json", TARGET], cwd=ws, cache=cache, check=True)
        assert output_digests(ws, "profiles", "json-raw") == GOLDEN  # no poisoned entry served


def test_index_write_on_a_full_disk_names_the_index_and_keeps_no_entry(tmp_path):
    with small_fs(tmp_path / "fs", "256k") as fs:
        if fs is None:
            _no_mount()
        index = Index(fs / "c", warn=lambda m: None)
        try:
            filler = _fill(fs, 0)
            big = {"outputs": [], "stats": {"pad": "x" * 4000}}
            with pytest.raises(StorageError) as exc:
                for i in range(200):
                    index.put_result(f"{i:064x}", big, {"pad": "y" * 4000}, f"//p:t#A/{i}")
            assert exc.value.reason == "disk-full"
            assert exc.value.errors[0].file.startswith(str(fs / "c" / "index-v1"))
            failed = f"{i:064x}"
            assert index.get_result(failed) is None  # the aborted transaction left nothing
            filler.unlink()
            index.put_result(failed, big, {}, "//p:t#A/x")
            assert index.get_result(failed) == big
        finally:
            index.close()


def test_a_full_output_disk_keeps_the_previous_output_and_leaves_no_temp_dirs(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    cache = tmp_path / "c"
    with small_fs(ws / "stella-out", "160k") as fs:
        if fs is None:
            _no_mount()
        run_cli(["-q", TARGET], cwd=ws, cache=cache, check=True)
        assert output_digests(ws, "profiles", "json-raw") == GOLDEN
        # new output bytes: the whole new tree must be assembled beside the previous one
        adv = sorted((ws / "profiles/evidence/osv").glob("*.json"))[0]
        adv.write_text(adv.read_text().replace('"summary": "', '"summary": "Edited: ', 1))
        _fill(fs, 8 * 1024)
        res = run_cli(["--output", "json", TARGET], cwd=ws, cache=cache)
        assert res.code == 1, res.stderr
        err = _error(res)
        assert err["reason"] == "disk-full" and err["file"].startswith(str(ws / "stella-out")), err
        assert output_digests(ws, "profiles", "json-raw") == GOLDEN  # the previous output, untouched
        assert _leftovers(ws) == []


# ---- 9. inputs that used to be tracebacks -----------------------------------------------------

def _exportfile_ws(tmp_path: Path, exportfile: str) -> Path:
    (tmp_path / "stella-workspace.toml").write_text("[workspace]\n")
    (tmp_path / "p/adv").mkdir(parents=True)
    (tmp_path / "p/Exportfile").write_text(exportfile)
    (tmp_path / "p/adv/A-1.json").write_text('{"id": "A-1", "modified": "2024-01-01T00:00:00Z"}')
    return tmp_path


_SRC = 'rule = "osv_source"\nsrcs = ["adv/*.json"]\n'
EXPORTFILE_CASES = {
    # name: (Exportfile, reason, line, field)
    "250-character target name": (f"[targets.{'a' * 250}]\n{_SRC}", "bad-target-name", 1, None),
    "[z-a] glob": ('[targets.a]\nrule = "osv_source"\nsrcs = ["adv/[z-a].json"]\n', "glob-invalid", 3, "srcs"),
    "5,000-deep array": ("[targets.a]\nrule = \"osv_source\"\nsrcs = " + "[" * 5000 + "]" * 5000 + "\n",
                         "toml-invalid", 3, "srcs"),
    "5,000-deep inline table": ("[package]\ndescription = " + "{a=" * 5000 + "1" + "}" * 5000 + "\n",
                                "toml-invalid", 2, "package.description"),
    "100,000-digit integer": (f"[targets.a]\n{_SRC}shards = {'7' * 100000}\n", "toml-invalid", 4, "shards"),
    "integer beyond 64 bits": (f"[targets.a]\n{_SRC}shards = {'7' * 25}\n", "exportfile-invalid", 4, "shards"),
    "nan": (f'[targets.a]\n{_SRC}source = {{ name = "x", license = nan }}\n', "exportfile-invalid", 4,
            "source.license"),
    "inf": (f"[package]\nsource_date_epoch = inf\n[targets.a]\n{_SRC}", "exportfile-invalid", 2,
            "package.source_date_epoch"),
    "NUL in a glob": ('[targets.a]\nrule = "osv_source"\nsrcs = ["adv/\\u0000.json"]\n', "glob-invalid", 3, "srcs"),
}


@pytest.mark.parametrize("case", sorted(EXPORTFILE_CASES))
def test_hostile_exportfiles_are_exit_2_with_file_line_and_field(tmp_path, case):
    text, reason, line, fld = EXPORTFILE_CASES[case]
    ws = _exportfile_ws(tmp_path, text)
    res = run_cli(["--output", "json", "//p:all"], cwd=ws, cache=tmp_path / "cache")
    assert res.code == 2, res.stderr
    err = _error(res)
    assert (err["reason"], err["file"], err["line"]) == (reason, "p/Exportfile", line), err
    if fld:
        assert err["field"] == fld, err
    assert res.stderr.startswith(f"error: p/Exportfile:{line}:")
    assert len(res.stdout) < 10_000  # a huge value is not echoed back
    assert not (ws / "stella-out").exists()


@pytest.mark.parametrize("label", ["//p:" + "a" * 250, "//" + "a" * 300 + ":a", "//" + "a/" * 2500 + "a:a",
                                   "//p:" + "a" * 5000])
def test_overlong_labels_are_exit_2(tmp_path, label):
    ws = _exportfile_ws(tmp_path, f"[targets.a]\n{_SRC}")
    res = run_cli(["--output", "json", label], cwd=ws, cache=tmp_path / "cache")
    assert res.code == 2
    err = _error(res)
    assert err["reason"] == "bad-label"
    assert "too long" in err["message"] or "characters long" in err["message"]
    assert len(err["message"]) < 300


def test_a_200_character_target_name_builds(tmp_path):
    name = "t" * 200
    ws = _exportfile_ws(tmp_path, f"[targets.{name}]\n{_SRC}")
    res = run_cli(["--output", "json", f"//p:{name}"], cwd=ws, cache=tmp_path / "cache")
    assert res.code == 0, res.stderr
    assert (ws / "stella-out/p" / name).is_dir() and _leftovers(ws) == []


def test_a_file_size_limit_is_reported_as_a_full_disk(tmp_path):
    # RLIMIT_FSIZE (SIGXFSZ ignored) makes writes fail with EFBIG, or as a short write that LMDB
    # reports as EIO: both are the same "no room" to the user.
    ws = make_workspace(tmp_path / "ws")
    res = _run_limited(["--output", "json", TARGET], ws, tmp_path / "c", 28672)
    assert res.code == 1
    err = _error(res)
    assert err["reason"] == "disk-full" and err["file"].startswith(str(tmp_path / "c"))
    assert "file size limit" in err["message"]
    run_cli(["-q", TARGET], cwd=ws, cache=tmp_path / "c", check=True)
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN
