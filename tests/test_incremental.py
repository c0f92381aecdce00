"""Incremental rebuilds (issue 15): a daily change re-runs what it touched, and the work of the
unchanged records inside a touched shard is replayed from the per-record memo
(engine/memo.py), never changing a byte.

A small synthetic corpus (bench/gen_osv_corpus.py) as an osv_source with 4 shards feeding
trivy_db and json_raw; edits are the generator's "next version" of a record.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, output_digests, run_cli

sys.path.insert(0, str(REPO / "bench"))
from gen_osv_corpus import changed, corpus_path, daily_exportfile, encode, generate  # noqa: E402

from stella_build.engine.memo import MEMO_DIR, RecordMemo, memo_root, record_digest  # noqa: E402

COUNT, SHARDS = 48, 4
TARGETS = ["//daily:trivy-db", "//daily:json-raw"]
EXPORTFILE = daily_exportfile("corpus/**/*.json", SHARDS)


def _workspace(root: Path) -> Path:
    (root / "daily").mkdir(parents=True)
    (root / "stella-workspace.toml").write_text("[workspace]\nexternal = {}\n")
    (root / "daily" / "Exportfile").write_text(EXPORTFILE)
    for i, doc in enumerate(generate(COUNT, 7)):
        path = Path(corpus_path(str(root / "daily" / "corpus"), i, doc))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(doc))
    return root


def _edit(ws: Path, indices: list[int]) -> list[str]:
    """Rewrite advisories ``indices`` with their next version; their logical paths."""
    rng = random.Random(3)
    out = []
    for i, doc in enumerate(generate(COUNT, 7)):
        if i in indices:
            path = Path(corpus_path(str(ws / "daily" / "corpus"), i, doc))
            path.write_bytes(encode(changed(doc, rng)))
            out.append(path.relative_to(ws).as_posix())
    return out


def _shard_of(logical: str) -> str:
    from stella_build.rules.sources import shard_of

    return str(shard_of(logical, SHARDS))


def _build(ws: Path, cache: Path, *extra: str) -> dict:
    res = run_cli(["--output", "json", *extra, *TARGETS], cwd=ws, cache=cache)
    assert res.code == 0, res.stdout + res.stderr
    return res.json()


def _digests(ws: Path) -> dict[str, dict[str, str]]:
    return {t: output_digests(ws, "daily", t.split(":")[1]) for t in TARGETS}


def _in_process(ws: Path, cache: Path):
    """A build run in this process, for the per-action stats (memo hits) of the summary."""
    from stella_build.engine.build import run_build
    from stella_build.engine.workspace import Workspace

    summary = run_build(Workspace.find(explicit=ws), TARGETS, cache_dir=cache, jobs=2)
    assert summary.ok, [e.to_json() for e in summary.errors]
    return summary


def _memo_stats(summary, mnemonic: str, key: str = "memo") -> dict[str, dict]:
    """shard id → memo stats (`key` of the action's stats) of the executed actions with this mnemonic."""
    return {o.spec.id.rsplit("/", 1)[1]: o.stats[key] for o in summary.outcomes.values()
            if o.spec.mnemonic == mnemonic and o.status == "executed"}


def _shard_sizes(ws: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for p in (ws / "daily" / "corpus").rglob("*.json"):
        s = _shard_of(f"daily/{p.relative_to(ws / 'daily').as_posix()}")
        sizes[s] = sizes.get(s, 0) + 1
    return sizes


@pytest.fixture
def ws(tmp_path) -> Path:
    return _workspace(tmp_path / "ws")


def test_rebuild_runs_touched_shards_and_replays_unchanged_records(ws, tmp_path):
    cache = tmp_path / "cache"
    cold = _build(ws, cache, "-j2")
    assert cold["actions"]["executed"] == cold["actions"]["total"] == 3 * SHARDS + 2  # Osv, Trivy, Raw shards; TrivyDb, Bundle
    before = _digests(ws)
    edited = _edit(ws, [3, 17])
    touched = {_shard_of(p) for p in edited}
    summary = _in_process(ws, cache)
    counts = summary.counts()
    # per touched shard: OsvShard, TrivyShard, RawShard; plus TrivyDb and the json:raw Bundle
    assert counts["executed"] == 3 * len(touched) + 2
    assert counts["cached"] == counts["total"] - counts["executed"]
    sizes = _shard_sizes(ws)
    for mnemonic, key in (("OsvShard", "memo"), ("TrivyShard", "memo"), ("RawShard", "line_memo")):
        # action ids end in the shard: "3", "osv-3"
        stats = {shard.split("-")[-1]: st for shard, st in _memo_stats(summary, mnemonic, key).items()}
        assert set(stats) == touched
        for shard, st in stats.items():
            edits = sum(1 for p in edited if _shard_of(p) == shard)
            # every line of the shard is looked up: the edited ones miss, the others replay
            assert st == {"hits": sizes[shard] - edits, "misses": edits, "corrupt": 0}, (mnemonic, shard)
    # TrivyDb re-merges only the shared keys whose records changed: the cold build stored every
    # merged value, the rebuild replays the others (the bytes check below covers both)
    [merge] = _memo_stats(summary, "TrivyDb").values()
    assert merge["hits"] > 0 and merge["misses"] < merge["hits"] and merge["corrupt"] == 0, merge
    after = _digests(ws)
    # RawShard memoizes each compressed data file by its JSONL bytes: in a touched shard the
    # files whose bytes did not change are replayed, exactly the changed ones are compressed
    raw = {shard.split("-")[-1]: st for shard, st in _memo_stats(summary, "RawShard").items()}
    assert set(raw) == touched
    for shard, st in raw.items():
        files = [f for f in after["//daily:json-raw"]
                 if f.startswith("data/raw/advisories/") and f.endswith(f"/osv-{shard}.jsonl.zst")]
        changed_files = [f for f in files if before["//daily:json-raw"].get(f) != after["//daily:json-raw"][f]]
        assert files and changed_files, (shard, files)
        assert st == {"hits": len(files) - len(changed_files), "misses": len(changed_files),
                      "corrupt": 0}, (shard, st, changed_files)
    # the same bytes as a cold build of the new input in a fresh cache, and -j1 (one worker)
    # gives the bytes of the -j2 builds above
    fresh = _build(ws, tmp_path / "fresh", "-j1")
    assert fresh["actions"]["executed"] == fresh["actions"]["total"]
    assert _digests(ws) == after
    # and `build --check` re-executes every action with the memo off: no difference
    check = run_cli(["--output", "json", "build", "--check", *TARGETS], cwd=ws, cache=cache)
    assert check.code == 0, check.stdout + check.stderr
    assert check.json()["check"]["differences"] == []


def test_corrupt_memo_is_detected_and_ignored(ws, tmp_path):
    cache = tmp_path / "cache"
    _build(ws, cache)
    packs = sorted((cache / MEMO_DIR).rglob("*.pack"))
    # osv-shard, trivy-shard, raw-shard, raw-line: one pack per shard action; TrivyDb's merge memo
    assert len([p for p in packs if "trivy-db-merge" not in p.parts]) == 4 * SHARDS
    assert len([p for p in packs if "trivy-db-merge" in p.parts]) == 1
    for i, pack in enumerate(packs):  # flip one byte in the middle, or cut the file short
        data = bytearray(pack.read_bytes())
        if i % 2:
            data[len(data) // 2] ^= 0x40
        else:
            del data[len(data) - 7:]
        pack.chmod(0o644)
        pack.write_bytes(bytes(data))
    edited = _edit(ws, [5])
    touched = {_shard_of(p) for p in edited}
    summary = _in_process(ws, cache)
    for mnemonic, key in (("OsvShard", "memo"), ("TrivyShard", "memo"), ("RawShard", "memo"),
                          ("RawShard", "line_memo")):
        stats = _memo_stats(summary, mnemonic, key)
        assert len(stats) == len(touched)
        for st in stats.values():
            assert st["corrupt"] == 1 and st["hits"] == 0
    [merge] = _memo_stats(summary, "TrivyDb", "memo").values()
    assert merge["corrupt"] == 1 and merge["hits"] == 0
    after = _digests(ws)
    _build(ws, tmp_path / "fresh")
    assert _digests(ws) == after


def test_record_memo_roundtrip_scope_and_damage(tmp_path):
    fn = "stella_build.rules.trivy_db:map_shard"
    memo = RecordMemo(tmp_path, "t", fn, {"a": 1}, "slot")
    d1, d2 = record_digest(b"one"), record_digest(b"two")
    assert memo.get(d1) is None
    memo.put(d1, b"v1")
    memo.put(d2, b"")
    memo.save()
    again = RecordMemo(tmp_path, "t", fn, {"a": 1}, "slot")
    assert again.get(d1) == b"v1" and again.get(d2) == b""
    assert again.stats() == {"hits": 2, "misses": 0, "corrupt": 0}
    # other params, another slot or another namespace: a different pack, no hit
    for args in (("t", fn, {"a": 2}, "slot"), ("t", fn, {"a": 1}, "other"), ("u", fn, {"a": 1}, "slot")):
        assert RecordMemo(tmp_path, *args).get(d1) is None
    # other byte-affecting library versions (the action key's, or this process's: a zstandard
    # upgrade changes RawShard's stored zstd bytes): no hit either
    assert RecordMemo(tmp_path, "t", fn, {"a": 1}, "slot", {"zstd": "0.0.1"}).get(d1) is None
    from stella_build.engine import memo as memo_module
    real = memo_module._process_libraries()
    try:
        memo_module._process_libraries.cache_clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(memo_module, "_process_libraries", lambda: {**real, "zstandard": "0.0.1"})
            assert RecordMemo(tmp_path, "t", fn, {"a": 1}, "slot").get(d1) is None
    finally:
        memo_module._process_libraries.cache_clear()
    assert RecordMemo(tmp_path, "t", fn, {"a": 1}, "slot").get(d1) == b"v1"
    # a rewrite keeps only what the run used: d2 is gone after a run that used only d1
    again = RecordMemo(tmp_path, "t", fn, {"a": 1}, "slot")
    again.get(d1)
    again.save()
    assert RecordMemo(tmp_path, "t", fn, {"a": 1}, "slot").get(d2) is None
    # a damaged pack: ignored, counted, deleted
    pack = again.path
    data = bytearray(pack.read_bytes())
    data[-1] ^= 1
    pack.write_bytes(bytes(data))
    damaged = RecordMemo(tmp_path, "t", fn, {"a": 1}, "slot")
    assert damaged.get(d1) is None and damaged.stats()["corrupt"] == 1
    assert not pack.exists()


def test_record_memo_keeps_its_base_frame_for_a_small_change(tmp_path):
    """A daily change: the save copies the base frame's bytes and compresses only the new
    entries; once more than a quarter of the base goes unused the pack is compacted."""
    fn = "stella_build.rules.trivy_db:map_shard"
    digests = [record_digest(b"r%d" % i) for i in range(8)]
    first = RecordMemo(tmp_path, "t", fn, {}, "slot")
    for i, d in enumerate(digests):
        first.put(d, b"value %d" % i)
    first.save()
    base_frame = RecordMemo(tmp_path, "t", fn, {}, "slot")._base_frame
    assert base_frame and base_frame in first.path.read_bytes()
    # one record changed: 7 of 8 hits, one new entry
    run = RecordMemo(tmp_path, "t", fn, {}, "slot")
    assert all(run.get(d) == b"value %d" % i for i, d in enumerate(digests[:7]))
    new = record_digest(b"r8")
    assert run.get(new) is None
    run.put(new, b"value 8")
    run.save()
    again = RecordMemo(tmp_path, "t", fn, {}, "slot")
    assert again._base_frame == base_frame                        # kept as it was, not recompressed
    assert again.get(new) == b"value 8" and again.get(digests[7]) == b"value 7"  # stale but kept
    delta_pack = again.path.read_bytes()  # base + a delta of one entry
    # a run that uses 2 of the 9: compacted to exactly those
    small = RecordMemo(tmp_path, "t", fn, {}, "slot")
    small.get(digests[0]), small.get(new)
    small.save()
    after = RecordMemo(tmp_path, "t", fn, {}, "slot")
    assert after._base_frame != base_frame and after.get(digests[7]) is None
    assert after.get(digests[0]) == b"value 0" and after.get(new) == b"value 8"
    # the delta frame's declared size or length off (checksum recomputed, so only the frame
    # checks can catch it): the whole pack is dropped
    import blake3

    for cut in (len(delta_pack) - 33, 46 + len(base_frame) + 7, 46 + len(base_frame) + 15):
        broken = bytearray(delta_pack)
        broken[cut] ^= 0xFF
        body = bytes(broken[:-32])
        again.path.write_bytes(body + blake3.blake3(body).digest())
        damaged = RecordMemo(tmp_path, "t", fn, {}, "slot")
        assert damaged.stats()["corrupt"] == 1 and damaged.get(new) is None and not again.path.exists()


def test_memo_only_in_build_sandboxes(tmp_path):
    from stella_build.engine.rule_api import ActionContext

    def ctx(cache):
        return ActionContext(action_id="a", label="//x:y", sandbox=tmp_path / "sb", params={},
                             source_date_epoch=None, inputs={}, memo_cache=cache)

    fn = "stella_build.rules.trivy_db:map_shard"
    assert ctx(tmp_path).memo("t", fn).path is not None            # build mode: the engine passes it
    assert ctx(None).memo("t", fn).path is None                     # build --check, or outside the engine
    assert memo_root(tmp_path) == tmp_path and memo_root(None) is None
    (tmp_path / MEMO_DIR).mkdir()
    (tmp_path / MEMO_DIR / "DISABLED").write_text("")
    assert memo_root(tmp_path) is None and ctx(tmp_path).memo("t", fn).path is None
    disabled = RecordMemo(None, "t", "stella_build.rules.trivy_db:map_shard", {}, "slot")
    disabled.put(record_digest(b"x"), b"y")
    disabled.save()
    assert disabled.get(record_digest(b"x")) is None and disabled.path is None


def test_memo_scope_uses_the_action_key_implementation_digest():
    """engine/closure.py (the memo's scope) and engine/actions.py (the action key) agree."""
    from stella_build.engine import actions, closure

    for fn in ("stella_build.rules.trivy_db:map_shard", "stella_build.rules.sources:osv_shard"):
        assert closure.implementation_digest(fn) == actions.implementation_digest(fn)
        assert closure.import_closure(fn.split(":")[0]) == actions.import_closure(fn.split(":")[0])


def _shard_context(tmp_path: Path, tag: str, entries: list, cache: Path):
    from stella_build.engine.rule_api import ActionContext
    from stella_build.engine.sandbox import LazyInputs

    sandbox = tmp_path / tag
    (sandbox / "out").mkdir(parents=True)
    return ActionContext(action_id="//d:osv#OsvShard/0", label="//d:osv", sandbox=sandbox,
                         params={"source": {"name": "S"}, "strict": False}, source_date_epoch=None,
                         inputs=LazyInputs(sandbox, entries, None), memo_cache=cache)


def test_memo_hits_never_stage_or_read_the_unchanged_files(ws, tmp_path):
    """Inputs are staged on first access (engine/sandbox.py LazyInputs) and osv_shard looks a
    file up by the digest its key names: a rebuild reads only the changed files. Shown by
    pointing every unchanged input at a path that does not exist."""
    import blake3

    from stella_build.rules.sources import osv_shard

    files = sorted((ws / "daily" / "corpus").rglob("*.json"))[:12]
    entries = [[f"daily/{p.relative_to(ws / 'daily').as_posix()}", str(p),
                blake3.blake3(p.read_bytes()).hexdigest(), None] for p in files]
    cache = tmp_path / "cache"
    cold = _shard_context(tmp_path, "cold", entries, cache)
    assert osv_shard(cold)["memo"] == {"hits": 0, "misses": 12, "corrupt": 0}
    # read from their sources (actx.read_input, digest-checked): no staged copies at all
    assert not list((cold.sandbox / "in").rglob("*.json"))
    # the second run: entry 4 changed (one more trailing space: other bytes, same document);
    # every other entry names a path that does not exist
    files[4].write_bytes(files[4].read_bytes() + b" ")
    gone = [[name, str(tmp_path / "missing" / str(i)), digest, None] if i != 4
            else [name, src, blake3.blake3(files[4].read_bytes()).hexdigest(), None]
            for i, (name, src, digest, _) in enumerate(entries)]
    warm = _shard_context(tmp_path, "warm", gone, cache)
    stats = osv_shard(warm)
    assert stats["memo"] == {"hits": 11, "misses": 1, "corrupt": 0}  # reading a missing path would fail
    assert not list((warm.sandbox / "in").rglob("*.json"))
    # the replayed lines are those of a cold computation of the same files
    fresh = _shard_context(tmp_path, "fresh", [[n, str(files[i]), d, None] for i, (n, _, d, _) in enumerate(gone)],
                           tmp_path / "fresh-cache")
    osv_shard(fresh)
    assert (warm.sandbox / "out" / "records.jsonl").read_bytes() == (fresh.sandbox / "out" / "records.jsonl").read_bytes()


def test_lazy_staging_checks_digests_and_raises_no_oserror(tmp_path):
    """A staged input is still re-hashed against its key's digest; a vanished or changed source
    fails as InputChanged (not an OSError a rule might catch), a corrupt CAS blob as CorruptInput."""
    from stella_build.engine.sandbox import CorruptInput, InputChanged, LazyInputs, run_action

    src = tmp_path / "a.json"
    src.write_bytes(b"{}")
    import blake3

    good = blake3.blake3(b"{}").hexdigest()
    lazy = LazyInputs(tmp_path / "sb", [["a.json", str(src), good, None],
                                        ["gone.json", str(tmp_path / "nope"), good, None],
                                        ["bad.json", str(src), "0" * 64, None]], None)
    assert list(lazy) == ["a.json", "gone.json", "bad.json"] and len(lazy) == 3
    assert lazy.digest("gone.json") == good and not (tmp_path / "sb" / "in").exists()
    assert lazy["a.json"].read_bytes() == b"{}"
    for name in ("gone.json", "bad.json"):
        with pytest.raises(InputChanged) as info:
            lazy[name]
        assert not isinstance(info.value, OSError)
    cas = tmp_path / "cache" / "cas"
    (cas / "ab").mkdir(parents=True)
    blob = cas / "ab" / ("ab" + "1" * 62)
    blob.write_bytes(b"rotten")
    with pytest.raises(CorruptInput):
        LazyInputs(tmp_path / "sb2", [["c", str(blob), "ab" + "1" * 62, None]], cas)["c"]
    assert not blob.exists()  # never served again
    # through the engine's sandbox: the action fails with reason input-changed, no traceback
    result = run_action({"id": "//x:y#A", "label": "//x:y", "fn": "stella_build.rules.sources:osv_shard",
                         "params": {"source": {"name": "S"}, "strict": False}, "source_date_epoch": None,
                         "outputs": ["records.jsonl", "stats.json"], "cache_dir": str(tmp_path / "cache"),
                         "sandbox_name": "t", "mode": "build", "expected": {},
                         "inputs": [["x/a.json", str(tmp_path / "nope"), good, None]]})
    assert result["error"]["reason"] == "input-changed", result


def test_read_input_checks_digests_without_staging(tmp_path):
    """actx.read_input (LazyInputs.read): the source's bytes once they hash to the key's digest,
    no copy in the sandbox; the same failures as staging (InputChanged for a vanished, changed or
    symlinked source, CorruptInput for a rotten CAS blob, never an OSError); past `limit` bytes
    InputTooLarge, but only after the digest checked (a changed file is InputChanged, not a
    too-large verdict cached under the old digest); trees and undeclared names are ActionErrors."""
    import blake3

    from stella_build.engine.rule_api import ActionContext, ActionError, InputTooLarge
    from stella_build.engine.sandbox import CorruptInput, InputChanged, LazyInputs

    big = b"x" * 5000
    (tmp_path / "a.json").write_bytes(b"{}")
    (tmp_path / "big").write_bytes(big)
    (tmp_path / "link").symlink_to(tmp_path / "a.json")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "m").write_bytes(b"m")
    d = {k: blake3.blake3(v).hexdigest() for k, v in (("a", b"{}"), ("big", big), ("m", b"m"))}
    sb = tmp_path / "sb"
    (sb / "out").mkdir(parents=True)
    lazy = LazyInputs(sb, [["a.json", str(tmp_path / "a.json"), d["a"], None],
                           ["big", str(tmp_path / "big"), d["big"], None],
                           ["bigwrong", str(tmp_path / "big"), d["a"], None],
                           ["gone", str(tmp_path / "nope"), d["a"], None],
                           ["link", str(tmp_path / "link"), d["a"], None],
                           ["changed", str(tmp_path / "a.json"), d["m"], None],
                           ["t/m", str(tmp_path / "tree" / "m"), d["m"], "t"]], None)
    actx = ActionContext(action_id="//x:y#A", label="//x:y", sandbox=sb, params={},
                         source_date_epoch=None, inputs=lazy, memo_cache=None)
    assert actx.read_input("a.json") == b"{}" and actx.read_input("big", 5000) == big
    assert not (sb / "in").exists()  # nothing staged
    (tmp_path / "tree" / "m").write_bytes(b"other")  # a tree member changed under the build
    with pytest.raises(InputChanged):
        actx.read_tree_files("t")
    (tmp_path / "tree" / "m").write_bytes(b"m")
    with pytest.raises(InputTooLarge) as info:
        actx.read_input("big", 4999)
    assert (info.value.size, info.value.limit, info.value.reason) == (5000, 4999, "input-too-large")
    for name in ("bigwrong", "gone", "link", "changed"):
        with pytest.raises(InputChanged) as changed:
            actx.read_input(name, 10)
        assert not isinstance(changed.value, OSError), name
    for name in ("t", "t/m", "undeclared"):
        with pytest.raises(ActionError, match="undeclared input"):
            actx.read_input(name)
    assert actx.read_tree_files("t") == [("m", b"m")]  # a tree's files, read without staging
    for name in ("a.json", "undeclared"):
        with pytest.raises(ActionError, match="not a tree"):
            actx.read_tree_files(name)
    # staged first (actx.input): read_input checks the staged copy, whatever its source does
    assert actx.input("a.json").read_bytes() == b"{}"
    (tmp_path / "a.json").write_bytes(b"{changed}")
    assert actx.read_input("a.json") == b"{}"
    cas = tmp_path / "cache" / "cas"
    (cas / "ab").mkdir(parents=True)
    blob = cas / "ab" / ("ab" + "1" * 62)
    blob.write_bytes(b"rotten")
    with pytest.raises(CorruptInput):
        LazyInputs(tmp_path / "sb2", [["c", str(blob), "ab" + "1" * 62, None]], cas).read("c")
    assert not blob.exists()  # never served again
    # outside the engine (a plain mapping of paths): the same limit
    plain = ActionContext(action_id="//x:y#A", label="//x:y", sandbox=sb, params={},
                          source_date_epoch=None, inputs={"big": tmp_path / "big"}, memo_cache=None)
    assert plain.read_input("big") == big
    with pytest.raises(InputTooLarge):
        plain.read_input("big", 100)


def test_raw_shard_line_memo_replays_canonical_bytes(tmp_path):
    """RawShard's per-record memo (rules/json_raw.py): a line seen before is replayed from its
    digest with the same bytes as decoding and re-encoding it, also when the line was not
    canonical (keys out of order, spaces), withdrawn or filtered out by the selectors."""
    import json

    import blake3

    from stella_build.engine.encode import canonical_json
    from stella_build.engine.encode.archive import unzstd_bytes
    from stella_build.engine.rule_api import ActionContext
    from stella_build.engine.sandbox import LazyInputs
    from stella_build.rules.json_raw import raw_shard

    def rec(i: int, eco: str, withdrawn=None) -> dict:
        return {"id": f"X-{i}", "modified": f"2024-0{1 + i % 9}-01T00:00:00Z", "published": None,
                "withdrawn": withdrawn, "ecosystems": [eco], "packages": [f"p{i}"], "source": "S",
                "path": f"c/{i}.json", "sha256": f"{i:064x}", "document": {"id": f"X-{i}", "n": 1.5}}

    lines = [canonical_json.dumps_line(rec(1, "PyPI")),
             json.dumps(rec(2, "Go"), indent=1).replace("\n", " ").encode() + b"\n",  # not canonical
             canonical_json.dumps_line(rec(3, "PyPI", withdrawn="2024-05-01T00:00:00Z")),
             canonical_json.dumps_line(rec(4, "npm"))]                           # filtered out
    src = tmp_path / "records.jsonl"
    src.write_bytes(b"".join(lines))
    entry = [["records.jsonl", str(src), blake3.blake3(src.read_bytes()).hexdigest(), None]]

    def run(tag: str, cache):
        sandbox = tmp_path / tag
        (sandbox / "out").mkdir(parents=True)
        actx = ActionContext(action_id="//d:raw#RawShard/osv-0", label="//d:raw", sandbox=sandbox,
                             params={"selectors": {"ecosystems": ["PyPI", "Go"]}, "level": 3,
                                     "shard": "osv-0"},
                             source_date_epoch=None, inputs=LazyInputs(sandbox, entry, None),
                             memo_cache=cache)
        stats = raw_shard(actx)
        files = {p.relative_to(sandbox / "out").as_posix(): p.read_bytes()
                 for p in sorted((sandbox / "out").rglob("*")) if p.is_file()}
        return stats, files

    _, plain = run("plain", None)  # memo off: decode and re-encode every line
    cache = tmp_path / "cache"
    cold_stats, cold = run("cold", cache)
    warm_stats, warm = run("warm", cache)
    assert cold_stats["line_memo"] == {"hits": 0, "misses": 4, "corrupt": 0}
    assert warm_stats["line_memo"] == {"hits": 4, "misses": 0, "corrupt": 0}
    assert plain == cold == warm
    go = unzstd_bytes(warm["out/data/raw/advisories/Go/osv-0.jsonl.zst"])
    assert go == canonical_json.dumps_line(rec(2, "Go"))  # the canonical bytes, not the line's
    meta = json.loads(warm["out/meta/osv-0.json"])
    assert meta["withdrawn"] == ["X-3"] and meta["filtered"] == 1
    assert sorted(f.split("/")[4] for f in warm if f.startswith("out/data/")) == ["Go", "PyPI"]


def test_osv_shard_replays_ids_that_need_escaping(tmp_path):
    """OsvShard's memo stores each id as canonical JSON and replays it without a JSON decode when
    it holds no escape: ids with a quote, a backslash, a tab or non-ASCII sort and replay exactly
    as a cold run orders them."""
    import json

    import blake3

    from stella_build.rules.sources import osv_shard

    ids = ['A"1', "B\\2", "C-\u00e9", "D\t", "E-plain", "a-lower"]
    entries = []
    for n, rec_id in enumerate(ids):
        doc = {"schema_version": "1.6.0", "id": rec_id, "modified": "2024-01-01T00:00:00Z",
               "affected": [{"package": {"ecosystem": "PyPI", "name": f"p{n}"},
                             "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.0"}]}]}]}
        src = tmp_path / "src" / f"{n}.json"
        src.parent.mkdir(exist_ok=True)
        src.write_bytes(json.dumps(doc).encode())
        entries.append([f"d/{n}.json", str(src), blake3.blake3(src.read_bytes()).hexdigest(), None])
    cache = tmp_path / "cache"
    cold = _shard_context(tmp_path, "cold", entries, cache)
    assert osv_shard(cold)["memo"]["misses"] == len(ids)
    warm = _shard_context(tmp_path, "warm", entries, cache)
    assert osv_shard(warm)["memo"] == {"hits": len(ids), "misses": 0, "corrupt": 0}
    got = (warm.sandbox / "out" / "records.jsonl").read_bytes()
    assert got == (cold.sandbox / "out" / "records.jsonl").read_bytes()
    assert [json.loads(line)["id"] for line in got.splitlines()] == sorted(ids)


def _read_some(actx) -> dict:
    """An action that reads only the first bytes of its input stream and returns (leaves it open)."""
    stream = actx.open_input("big")
    return {"head": stream.read(3).decode()}


def test_open_input_streams_and_checks_at_the_end(tmp_path):
    """actx.open_input (LazyInputs.open): the bytes as a stream from the source, no staged copy;
    the digest is checked at the end of the stream, at close(), and — for a stream the action
    left half-read — when the action returns, so a changed input fails the action
    (`input-changed`) before anything is recorded."""
    import blake3

    from stella_build.engine.rule_api import ActionContext, ActionError
    from stella_build.engine.sandbox import InputChanged, LazyInputs, run_action

    data = bytes(range(256)) * 4096  # 1 MiB: several buffer fills
    src = tmp_path / "big"
    src.write_bytes(data)
    good = blake3.blake3(data).hexdigest()
    sb = tmp_path / "sb"
    (sb / "out").mkdir(parents=True)
    lazy = LazyInputs(sb, [["big", str(src), good, None], ["bad", str(src), "0" * 64, None]], None)
    actx = ActionContext(action_id="//x:y#A", label="//x:y", sandbox=sb, params={},
                         source_date_epoch=None, inputs=lazy, memo_cache=None)
    with actx.open_input("big") as f:
        assert b"".join(iter(lambda: f.read(70001), b"")) == data
    assert not (sb / "in").exists()
    with pytest.raises(InputChanged):  # read to the end: checked there
        actx.open_input("bad").read()
    half = actx.open_input("bad")
    half.read(10)
    with pytest.raises(InputChanged):  # closed early: the rest is read and checked
        half.close()
    with pytest.raises(ActionError, match="undeclared input"):
        actx.open_input("nope")
    with pytest.raises(InputChanged):  # the failures above are sticky: the action still fails
        lazy.close_all()
    # through the engine: a half-read stream of a changed input fails the action on return
    task = {"id": "//x:y#A", "label": "//x:y", "fn": "tests.test_incremental:_read_some", "params": {},
            "source_date_epoch": None, "outputs": [], "cache_dir": str(tmp_path / "cache"),
            "sandbox_name": "t", "mode": "build", "expected": {}, "inputs": [["big", str(src), good, None]]}
    assert run_action(dict(task))["stats"] == {"head": data[:3].decode("latin-1")}
    src.write_bytes(data[:-1] + b"\x00")
    assert run_action(dict(task, sandbox_name="t2"))["error"]["reason"] == "input-changed"


def _swallow_read(actx) -> dict:
    """An action that catches everything around its read and writes what it got anyway."""
    try:
        data = actx.read_input("a")
    except Exception:  # noqa: BLE001 - the point of the test: a rule swallowing the failure
        data = b"fallback"
    actx.write_output("o", data)
    return {}


def _swallow_open(actx) -> dict:
    """An action that catches the failure of opening its input as a stream and goes on."""
    try:
        with actx.open_input("a") as f:
            data = f.read()
    except Exception:  # noqa: BLE001 - the point of the test: a rule swallowing the failure
        data = b"fallback"
    actx.write_output("o", data)
    return {}


def _read_then_more(actx) -> dict:
    """Reads its stream to the end (checked there), then again after the source grew."""
    with actx.open_input("a") as f:
        data = f.read()
        (Path(actx.params["src"])).write_bytes(data + b"INJECTED")  # the source grows after the check
        data += f.read()
    actx.write_output("o", data)
    return {}


def test_input_failures_are_sticky_and_late_bytes_refused(tmp_path):
    """A changed input fails the action even when the rule swallows the exception; bytes a source
    gains after its stream was checked are refused; a FIFO swapped in for a source fails at once
    instead of blocking the build; a staged tree is read as its declared, checked members only."""
    import os

    import blake3

    from stella_build.engine.sandbox import InputChanged, LazyInputs, run_action

    src = tmp_path / "a"
    src.write_bytes(b"line1\n")
    good = blake3.blake3(b"line1\n").hexdigest()

    def task(fn: str, tag: str) -> dict:
        return {"id": "//x:y#A", "label": "//x:y", "fn": f"tests.test_incremental:{fn}",
                "params": {"src": str(src)}, "source_date_epoch": None, "outputs": ["o"],
                "cache_dir": str(tmp_path / "cache"), "sandbox_name": tag, "mode": "build",
                "expected": {}, "inputs": [["a", str(src), good, None]]}

    assert "error" not in run_action(task("_swallow_read", "t1"))
    src.write_bytes(b"EVIL1\n")
    assert run_action(task("_swallow_read", "t2"))["error"]["reason"] == "input-changed"
    src.write_bytes(b"line1\n")
    assert run_action(task("_read_then_more", "t3"))["error"]["reason"] == "input-changed"
    # opening a stream fails too (the source vanished, or became a FIFO): sticky as well
    src.write_bytes(b"line1\n")  # _read_then_more grew it
    assert "error" not in run_action(task("_swallow_open", "t4"))
    src.unlink()
    assert run_action(task("_swallow_open", "t5"))["error"]["reason"] == "input-changed"
    os.mkfifo(src)
    assert run_action(task("_swallow_open", "t6"))["error"]["reason"] == "input-changed"
    src.unlink()
    src.write_bytes(b"line1\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputChanged, match="regular file"):
        LazyInputs(tmp_path / "sb", [["f", str(fifo), good, None]], None).read("f")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "x").write_bytes(b"x")
    lazy = LazyInputs(tmp_path / "sb2", [["t/x", str(tmp_path / "tree" / "x"),
                                          blake3.blake3(b"x").hexdigest(), "t"]], None)
    staged = lazy["t"]
    (staged / "extra").write_bytes(b"unlisted")
    assert lazy.read_tree("t") == [("x", b"x")]
