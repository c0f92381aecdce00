"""The local cache: corruption is detected and rebuilt, kill -9 is survivable, maintenance works."""
import json
import os
import shutil
import signal
import subprocess
import time

from tests.conftest import CLI, REPO, make_workspace, output_digests, run_cli

GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())["//profiles:json-raw"]


def _blobs(cache):
    return sorted(p for p in (cache / "cas").rglob("*") if p.is_file())


def _flip(path, offset=None):
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def _set_json_raw_level(ws, level: int) -> None:
    """Give //profiles:json-raw another compression_level: every RawShard re-runs and stages its
    shard inputs again."""
    ef = ws / "profiles" / "Exportfile"
    text = ef.read_text()
    block = text.index("[targets.json-raw]")
    end = text.index('deps = [":osv-sample"]', block) + len('deps = [":osv-sample"]')
    ef.write_text(text[:end] + f"\ncompression_level = {level}" + text[end:])


def test_every_flipped_blob_is_detected_and_rebuilt(sample_ws, tmp_path):
    cache = tmp_path / "c"
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    blobs = _blobs(cache)
    assert len(blobs) >= 9
    import blake3

    final = {blake3.blake3(p.read_bytes()).hexdigest()
             for p in (sample_ws / "stella-out/profiles/json-raw").rglob("*") if p.is_file()}
    # one at a time, each must be caught: every blob served to stella-out, and three of the
    # intermediates (the test below damages every blob at once; one build per blob made this the
    # suite's slowest test)
    intermediates = [b for b in blobs if b.name not in final]
    for blob in [b for b in blobs if b.name in final] + intermediates[:3]:
        _flip(blob)
        shutil.rmtree(sample_ws / "stella-out")
        res = run_cli(["-q", "--output", "json", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
        assert output_digests(sample_ws, "profiles", "json-raw") == GOLDEN, blob.name
        if blob.name in final:  # served to stella-out: caught on copy-out and rebuilt
            assert res.json()["actions"]["executed"] >= 1
        else:  # an intermediate no action read this time: caught by the next reader or verify
            verify = run_cli(["cache", "verify", "--output", "json"], cwd=sample_ws, cache=cache)
            assert verify.json()["corrupt_blobs_removed"] == [blob.name]
            # the shape every command's object has: a damaged cache is not "ok"
            assert (verify.code, verify.json()["ok"], verify.json()["exit_code"]) == (3, False, 3)
            assert [e["reason"] for e in verify.json()["errors"]] == ["cache-blob-corrupt"]


def test_many_damaged_blobs_are_all_repaired_in_one_build(sample_ws, tmp_path):
    """Every blob of the cache damaged at once: one build finds them round after round (each
    round a blob not seen before), rebuilds their producers and ends with the right bytes,
    both when only the outputs are copied out and when every consumer re-reads its inputs."""
    cache = tmp_path / "c"
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    for blob in _blobs(cache):
        _flip(blob)
    shutil.rmtree(sample_ws / "stella-out")
    res = run_cli(["--output", "json", "//profiles:json-raw"], cwd=sample_ws, cache=cache)
    assert res.code == 0 and res.json()["ok"], res.stderr[-2000:]
    assert output_digests(sample_ws, "profiles", "json-raw") == GOLDEN
    assert "damaged cache blob" in res.stderr
    # every producer ran again, in one round or another: the summary counts what every round
    # executed (the last round alone serves most of them from the cache)
    assert res.stderr.count("damaged cache blob(s) found and removed") >= 2
    counts = res.json()["actions"]
    assert counts["executed"] == counts["total"] and counts["cached"] == 0, counts
    # again, with new parameters so every RawShard stages its (damaged) shard inputs
    for blob in _blobs(cache):
        _flip(blob)
    _set_json_raw_level(sample_ws, 18)
    res = run_cli(["--output", "json", "//profiles:json-raw"], cwd=sample_ws, cache=cache)
    assert res.code == 0 and res.json()["ok"], res.stderr[-2000:]
    repaired = output_digests(sample_ws, "profiles", "json-raw")
    shutil.rmtree(sample_ws / "stella-out")
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=tmp_path / "fresh", check=True)
    assert output_digests(sample_ws, "profiles", "json-raw") == repaired


def test_corrupt_intermediate_blob_is_rebuilt_when_a_consumer_reads_it(sample_ws, tmp_path):
    cache = tmp_path / "c"
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    # the OsvShard outputs (records.jsonl) are read by RawShard actions; damage all of them,
    # then change the json-raw parameters so every RawShard must run and stage them again
    index = json.loads(run_cli(["explain", "--output", "json", "//profiles:json-raw"], cwd=sample_ws,
                               cache=cache, check=True).stdout)
    assert index["actions"]
    import blake3
    shard_outputs = set()
    for rec in (cache / "cas").rglob("*"):
        if rec.is_file() and rec.read_bytes().startswith(b'{"document"'):
            shard_outputs.add(rec)
    assert len(shard_outputs) == 4
    for blob in shard_outputs:
        _flip(blob)
    _set_json_raw_level(sample_ws, 18)
    res = run_cli(["-q", "--output", "json", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert res.json()["ok"]
    for blob in shard_outputs:  # rebuilt with the right content
        assert blake3.blake3(blob.read_bytes()).hexdigest() == blob.name


def test_cache_verify_removes_corrupt_blobs(sample_ws, tmp_path):
    cache = tmp_path / "c"
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    clean = run_cli(["cache", "verify", "--output", "json"], cwd=sample_ws, cache=cache)
    assert clean.code == 0 and clean.json()["corrupt_blobs_removed"] == []
    victim = _blobs(cache)[0]
    _flip(victim, 0)
    res = run_cli(["cache", "verify", "--output", "json"], cwd=sample_ws, cache=cache)
    assert res.code == 3 and res.json()["corrupt_blobs_removed"] == [victim.name]
    assert not victim.exists()
    again = run_cli(["-q", "--output", "json", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert again.json()["actions"]["executed"] >= 1


def test_stats_gc_and_clean(sample_ws, tmp_path):
    cache = tmp_path / "c"
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    stats = run_cli(["cache", "stats", "--output", "json"], cwd=sample_ws, cache=cache, check=True).json()
    assert stats["actions"] == 9 and stats["blobs"] >= 9 and stats["blob_bytes"] > 0
    gc = run_cli(["cache", "gc", "--max-size", "0", "--output", "json"], cwd=sample_ws, cache=cache, check=True).json()
    assert gc["evicted_actions"] == 9 and gc["kept_actions"] == 0
    assert run_cli(["cache", "stats", "--output", "json"], cwd=sample_ws, cache=cache, check=True).json()["blobs"] == 0
    res = run_cli(["-q", "--output", "json", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert res.json()["actions"]["executed"] == 9
    packs = sorted((cache / "memo-v1").rglob("*.pack"))
    assert packs and stats["memo_packs"] >= 1 and stats["memo_bytes"] > 0
    old = 30 * 24 * 3600
    os.utime(packs[0], (packs[0].stat().st_atime - old, packs[0].stat().st_mtime - old))
    # temp files of a save killed half-way: an old one goes, a fresh one (a save in progress) stays
    dead_tmp, live_tmp = packs[0].parent / ".tmp-dead", packs[0].parent / ".tmp-live"
    dead_tmp.write_bytes(b"x" * 100)
    live_tmp.write_bytes(b"y")
    os.utime(dead_tmp, (time.time() - 7200, time.time() - 7200))
    keep = run_cli(["cache", "gc", "--max-size", "1G", "--output", "json"], cwd=sample_ws, cache=cache, check=True).json()
    assert keep["evicted_actions"] == 0 and keep["kept_actions"] == 9
    # Memo packs no build rewrote for 14 days go; packs in use stay.
    assert keep["removed_memo_packs"] == 1 and not packs[0].exists() and all(p.exists() for p in packs[1:])
    assert not dead_tmp.exists() and live_tmp.exists()
    blobs = sorted((cache / "cas").rglob("*"))
    for size in ("lots", "-5", "inf", "nan", "1e400"):  # "-5" once evicted the whole cache
        bad = run_cli(["--output", "json", "cache", "gc", "--max-size", size], cwd=sample_ws, cache=cache)
        assert bad.code == 2 and bad.json()["errors"][0]["reason"] == "bad-size", (size, bad.stderr)
        assert "Traceback" not in bad.stderr
    assert sorted((cache / "cas").rglob("*")) == blobs  # nothing evicted
    run_cli(["cache", "clean"], cwd=sample_ws, cache=cache, check=True)
    assert not (cache / "cas").exists() and not (cache / "memo-v1").exists()


def test_kill_9_at_several_points_then_rebuild_is_golden(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    cache = tmp_path / "c"
    # make each action slow enough to be interrupted mid-build: many shards, level-22 zstd
    ef = ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text().replace("shards = 4", "shards = 16"))
    env = dict(os.environ)
    for delay in (0.4, 0.8, 1.2, 1.6):
        proc = subprocess.Popen([CLI, "--cache-dir", str(cache), "-q", "-j2", "//profiles:json-raw"], cwd=ws,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: CLI and its workers
        proc.wait()
    res = run_cli(["-q", "//profiles:json-raw"], cwd=ws, cache=cache, check=True)
    shards_changed = output_digests(ws, "profiles", "json-raw")
    # shard count changes file names, so compare against a clean build with the same Exportfile
    ws2 = make_workspace(tmp_path / "ws2")
    (ws2 / "profiles" / "Exportfile").write_text(ef.read_text())
    run_cli(["-q", "//profiles:json-raw"], cwd=ws2, cache=tmp_path / "c2", check=True)
    assert shards_changed == output_digests(ws2, "profiles", "json-raw")
    assert res.code == 0
    # and the killed cache still serves the unmodified golden build
    ws3 = make_workspace(tmp_path / "ws3")
    run_cli(["-q", "//profiles:json-raw"], cwd=ws3, cache=cache, check=True)
    assert output_digests(ws3, "profiles", "json-raw") == GOLDEN


def test_two_builds_sharing_one_cache_at_once(tmp_path):
    wss = [make_workspace(tmp_path / f"ws{i}") for i in range(2)]
    cache = tmp_path / "shared-cache"
    procs = [subprocess.Popen([CLI, "--cache-dir", str(cache), "-q", "//profiles:json-raw"], cwd=ws,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for ws in wss]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for ws in wss:
        assert output_digests(ws, "profiles", "json-raw") == GOLDEN


def test_failed_action_leaves_no_output_and_no_cache_entry(sample_ws, tmp_path):
    cache = tmp_path / "c"
    bad = sample_ws / "profiles/evidence/osv/ZZZ-broken.json"
    bad.write_text('{"id": "ZZZ-1", "modified": "2024-01-01T00:00:00Z", "affected": [')
    ef = sample_ws / "profiles/Exportfile"  # strict: a bad record fails the build (not quarantined)
    original = ef.read_text()
    ef.write_text(original.replace('[targets.osv-sample]\n', '[targets.osv-sample]\nstrict = true\n', 1))
    res = run_cli(["--output", "json", "//profiles:json-raw"], cwd=sample_ws, cache=cache)
    assert res.code == 1
    err = res.json()["errors"][0]
    assert err["file"] == "profiles/evidence/osv/ZZZ-broken.json" and err["target"] == "//profiles:osv-sample"
    assert "Traceback" not in res.stderr
    assert not (sample_ws / "stella-out/profiles/json-raw").exists()
    bad.unlink()
    ef.write_text(original)
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert output_digests(sample_ws, "profiles", "json-raw") == GOLDEN


# ---- the cache-hit path (docs/engine.md "Performance"): faster, and the same answers ---------------

def test_action_key_bytes_are_exactly_the_json_encoding_whatever_the_input_names():
    """record_bytes builds the inputs with joins; any name JSON would escape (quote, backslash,
    control characters) or any item that is not a pair of str must give the encoder's bytes."""
    import random

    from stella_build.engine.actions import _KEY_ENCODER, _inputs_json, action_key, record_bytes

    import blake3

    names = ["a", 'q"uote', "back\\slash", "tab\t", "nl\n", "nul\x00", "é/ü/日本", "\ud800lone",
             "\u2028", "\x7f", "x" * 300, "[]", '","', ""]
    rng = random.Random(15)
    fast = 0
    for _ in range(2000):
        pairs = [(rng.choice(names) + str(i), rng.choice(["ab" * 32, rng.choice(names)]))
                 for i in range(rng.randint(0, 6))]
        record = {"cache_schema": 1, "fn": rng.choice(["m:f", 'm:"q"']), "implementation": "ff",
                  "inputs": pairs, "params": {"inputs": [], "x": rng.choice(names)}, "python": "3.11"}
        if rng.random() < 0.2:
            record = {"inputs": pairs} if rng.random() < 0.5 else {"inputs": pairs, "zz": [1.5, None]}
        if rng.random() < 0.1:
            record["inputs"] = [list(p) + ["third"] for p in pairs]
        expected = _KEY_ENCODER.encode(record).encode("utf-8", "surrogatepass")
        assert record_bytes(record) == expected, record
        assert action_key(record) == blake3.blake3(expected).hexdigest()
        fast += _inputs_json(record["inputs"]) is not None
    assert 100 < fast < 1900  # both the join path and the encoder fallback were exercised


def test_stat_memo_entries_match_only_their_exact_signature(tmp_path):
    """Source digests are reused only when size, mtime, inode and ctime all match the stored
    entry; a rewrite with the same size and mtime (only ctime moves) is hashed again, and a
    damaged entry is a miss, never an exception."""
    import blake3

    from stella_build.engine.cache.index import Index, _j, stat_match
    from stella_build.engine.scheduler import SourceDigests

    src = tmp_path / "advisory.json"
    src.write_bytes(b"A" * 100)
    past = time.time() - 60  # older than the racy window: the digest is stored in the index
    os.utime(src, (past, past))
    st = os.stat(src)
    raw = _j([st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, "a" * 64, "b" * 64])
    assert stat_match(raw, st) == ("a" * 64, "b" * 64)
    for damaged in (raw[:-1], raw + b" ", raw.replace(b"a" * 64, b"A" * 64), b"", None,
                    raw.replace(b"a" * 64, b"a" * 63 + b"g"), raw.replace(b"b" * 64, b"b" * 63 + b"\xff"),
                    raw.replace(b'a","b', b'a"."b'), raw[:-2] + b'"}', raw.replace(b",", b" ", 1),
                    b'[%d,%d,%d,%d,"x"]' % (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)):
        assert stat_match(damaged, st) is None

    index = Index(tmp_path / "cache")
    try:
        first = SourceDigests(index).digests([src])[str(src)]
        assert first[0] == blake3.blake3(b"A" * 100).hexdigest()
        assert index.get_stats_raw([str(src)])[str(src)] is not None  # memoized for the next build
        assert SourceDigests(index).digests([src])[str(src)] == first
        time.sleep(0.01)
        src.write_bytes(b"B" * 100)  # same size; mtime put back: only ctime tells
        os.utime(src, (past, past))
        assert SourceDigests(index).digests([src])[str(src)][0] == blake3.blake3(b"B" * 100).hexdigest()
        index.put_stats({str(src): ["not", "a", "signature"]})
        assert SourceDigests(index).digests([src])[str(src)][0] == blake3.blake3(b"B" * 100).hexdigest()
    finally:
        index.close()


def test_cache_hit_path_drops_a_wrong_entry_but_leaves_a_malformed_one_a_silent_miss(tmp_path):
    """The scheduler checks a hit once (records.result_problem); an entry listing the wrong
    outputs is dropped with a warning, one the index itself would refuse stays a silent miss."""
    from stella_build.engine.scheduler import Executor

    warnings: list[str] = []

    class Spec:
        id, outputs = "//p:t#A", ["out.json"]

    ex = Executor(tmp_path / "cache", 1, warn=warnings.append)
    try:
        digest = ex.cas.put_bytes(b"{}")
        good = {"path": "out.json", "blake3": digest, "sha256": "0" * 64, "size": 2, "mode": 0o644}
        ex.index.put_result("k1", {"outputs": [good], "stats": {}}, {}, Spec.id)
        assert ex._lookup("k1", Spec)["outputs"] == [good]
        ex.index.put_result("k2", {"outputs": [dict(good, path="other.json")], "stats": {}}, {}, Spec.id)
        assert ex._lookup("k2", Spec) is None and ex.index.get_result("k2") is None  # dropped
        ex.index.put_result("k3", {"outputs": [dict(good, mode=0o777)], "stats": {}}, {}, Spec.id)
        ex.index.put_result("k4", {"outputs": [good], "stats": []}, {}, Spec.id)
        assert ex._lookup("k3", Spec) is None and ex._lookup("k4", Spec) is None
        assert [w.split(":")[0] for w in warnings] == ["dropped the local cache entry of //p"]
    finally:
        ex.close()


def test_hit_path_key_equals_the_key_of_the_full_record_on_random_specs():
    """The scheduler's hit path hashes `action_key_of(spec, names, digests)` without building the
    key record; it must be `action_key(key_record(spec, pairs))` for any names (special
    characters fall back to the encoder), params, outputs and libraries."""
    import random

    from stella_build.engine.actions import action_key, action_key_of, key_record
    from stella_build.engine.labels import parse_label
    from stella_build.engine.rule_api import ActionSpec

    clean = ["a", "é/ü/日本", "\u2028", "x" * 300, "[]", "inputs", "osv/GO-2020-0045.json"]
    special = ['q"uote', "back\\slash", "tab\t", "nul\x00", '","']
    rng = random.Random(15)

    def word():
        return rng.choice(special if rng.random() < 0.01 else clean)

    fast = 0
    for i in range(600):
        names = sorted({word() + str(j) for j in range(rng.randint(0, 40))})
        digests = [rng.choice(["ab" * 32, "0f" * 32]) if rng.random() > 0.01 else word()
                   for _ in names]
        spec = ActionSpec(id=f"//p:t#M/{i}", label=parse_label("//p:t"), rule=rng.choice(["r", 'r"q']),
                          rule_version="1", mnemonic="M", fn=rng.choice(["m:f", 'm:"g"']),
                          inputs={}, params={"inputs": [word()], "n": i, "f": 0.5},
                          outputs=rng.sample(["b", "a/", "c.json"], rng.randint(0, 3)),
                          source_date_epoch=rng.choice([None, 1735689600]),
                          libraries={"zstd": "1.5.7"} if i % 2 else {})
        expected = action_key(key_record(spec, list(zip(names, digests))))
        assert action_key_of(spec, names, digests) == expected, (names, digests)
        if all(len(d) == 64 and set(d) <= set("0123456789abcdef") for d in digests):
            # the scheduler's source-only path: digests known to be hex, only names checked
            assert action_key_of(spec, names, digests, hex_digests=True) == expected, names
        fast += bool(names) and all('"' not in s and "\\" not in s and "\x00" not in s
                                    and "\t" not in s for s in names + digests)
    assert 50 < fast < 550  # both the joined bytes and the encoder fallback were exercised


def test_scheduler_hit_keys_equal_the_keys_of_the_staged_inputs(sample_ws, tmp_path):
    """On a real graph (source-only shards, derived inputs, trees): the key the hit path
    computes from (names, digests) is the key of the record built from `_staged_inputs`, the
    definition a miss uses, and the record a miss stores is that record."""
    from stella_build.engine.actions import action_key, key_record
    from stella_build.engine.analysis import analyze
    from stella_build.engine.scheduler import Executor
    from stella_build.engine.workspace import Workspace

    cache = tmp_path / "cache"
    run_cli(["-q", "//profiles:json-raw", "//profiles:trivy-db"], cwd=sample_ws, cache=cache, check=True)
    graph = analyze(Workspace.find(explicit=sample_ws), ["//profiles:json-raw", "//profiles:trivy-db"])
    actions = graph.actions_for(graph.requested)
    ex = Executor(cache, 1)
    try:
        done = ex.run(actions)
        assert {o.status for o in done.values()} == {"cached"}
        kinds = set()
        for spec in actions:
            staged = ex._staged_inputs(spec, done)
            record = key_record(spec, [(s[0], s[2]) for s in staged])
            assert done[spec.id].key == action_key(record), spec.id
            key, names, digests = ex._key(spec, done, all(a.producer is None for a in spec.inputs.values()))
            assert key == done[spec.id].key and ex._record(spec, names, digests) == record
            assert ex.index.get_key_record(key) == json.loads(json.dumps(record))  # stored on the miss
            kinds.add("derived" if any(s[3] or s[1].startswith(str(cache)) for s in staged) else "sources")
        assert kinds == {"derived", "sources"}
    finally:
        ex.close()


def test_fast_output_check_agrees_with_the_explaining_check():
    """`records._outputs_ok` (every hit) accepts exactly what `outputs_problem` accepts, on
    good records and on records with one field damaged in each way the explaining check names."""
    import random

    from stella_build.engine.cache.records import _outputs_ok, outputs_problem

    rng = random.Random(15)

    def good(path):
        return {"path": path, "blake3": "ab" * 32, "sha256": "0f" * 32, "size": 3, "mode": 0o644}

    damage = [("path", "../x"), ("path", "a//b"), ("path", "a\\b"), ("path", "a\x00"), ("path", ""),
              ("path", 7), ("blake3", "AB" * 32), ("blake3", "ab" * 31), ("blake3", "ab" * 32 + "0"),
              ("sha256", "0f" * 31 + "0g"), ("size", -1), ("size", True), ("size", 3.0),
              ("mode", 0o600), ("mode", 420.0), ("mode", True), ("extra", 1)]
    agree = {True: 0, False: 0}
    for _ in range(3000):
        declared = rng.sample(["a.json", "t/", "b", "out/"], rng.randint(0, 4))
        paths = [d + "m.json" if d.endswith("/") else d for d in declared] + rng.choice(
            [[], ["t/x/y"], ["stray"], ["a.json"]])
        outputs = [good(p) for p in paths if rng.random() > 0.1]
        if outputs and rng.random() < 0.5:
            field, value = rng.choice(damage)
            rng.choice(outputs)[field] = value
        if rng.random() < 0.05:
            outputs = rng.choice([None, {}, "x", [1]])
        ok = _outputs_ok(outputs, declared)
        assert ok == (outputs_problem(outputs, declared) is None), (outputs, declared)
        agree[ok] += 1
    assert min(agree.values()) > 300


def test_import_closure_finds_exactly_what_the_plain_scan_finds():
    """closure.py scans only lines holding "import" and filters each module's names once
    (`_successors`); both must give what the plain definition gives: `_IMPORT.finditer` over the
    whole source, and the walk over every imported name, on every module of the package."""
    import pkgutil

    import stella_build
    import stella_build.engine
    import stella_build.rules
    from stella_build.engine import closure

    def plain_closure(module_name):
        top = module_name.split(".", 1)[0]
        seen, stack = {}, [module_name]
        while stack:
            name = stack.pop()
            if name in seen or not (name == top or name.startswith(top + ".")):
                continue
            found = closure._module_path(name)
            if found is None:
                continue
            seen[name] = found[0]
            parts = name.split(".")
            stack.extend(".".join(parts[:i]) for i in range(1, len(parts)))
            stack.extend(closure._imports_of(name))
        return tuple(sorted(seen.items()))

    modules = sorted({m.name for pkg in (stella_build, stella_build.engine, stella_build.rules)
                      for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")})
    assert len(modules) > 150
    for name in modules:
        assert closure.import_closure(name) == plain_closure(name), name
    tricky = ("import a\nx = 'import b'\nfrom c import (d,\n    e)  # import f\n  from . import g\n"
              's = """\nfrom h import (i\nimport j)\n"""\nimportlib = 1\nimport k, l.m # n\nimport')
    texts = [tricky] + [p.read_text() for p in REPO.rglob("*.py") if ".venv" not in p.parts]
    for text in texts:
        assert ([(m.span(), m.groups()) for m in closure._IMPORT.finditer(text)]
                == [(m.span(), m.groups()) for m in closure._import_statements(text)])


def test_stale_sandboxes_of_dead_builds_are_swept(tmp_path):
    """A build killed with -9 leaves its sandbox; the next build removes it once its process is
    gone and it is older than a day, and never touches a live or recent one, or other names."""
    import subprocess
    import sys

    from stella_build.engine.scheduler import STALE_SANDBOX_SECONDS, sweep_stale_sandboxes

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    root = tmp_path / "sandbox"
    names = {"old-dead": f"{'a' * 20}-build-{dead}-3", "recent-dead": f"{'b' * 20}-check-{dead}-0",
             "old-alive": f"{'c' * 20}-build-{os.getpid()}-1", "odd": "not-a-sandbox"}
    old = time.time() - STALE_SANDBOX_SECONDS - 60
    for label, name in names.items():
        (root / name / "out").mkdir(parents=True)
        (root / name / "out" / "f").write_text("x")
        if label != "recent-dead":
            os.utime(root / name, (old, old))
    assert sweep_stale_sandboxes(tmp_path) == [names["old-dead"]]
    assert sorted(p.name for p in root.iterdir()) == sorted(n for k, n in names.items() if k != "old-dead")
    assert sweep_stale_sandboxes(tmp_path / "missing") == []
