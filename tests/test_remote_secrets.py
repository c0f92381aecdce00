"""Signing actions on a Dask worker (issue 18): secrets sealed to the worker's age recipient.

An action holding secrets runs on a worker only when its target sets `remote_secrets = true` and the
client knows the recipient (`STELLA_EXECUTOR_RECIPIENT`); the task then carries one age ciphertext
and nothing of the password, the key's bytes or its path. The worker opens it with
`STELLA_WORKER_AGE_IDENTITY` into a private directory removed after the action; a worker without
an identity refuses and the client signs here after one warning (engine/executors/sealed.py).
"""
from __future__ import annotations

import base64
import pickle
import stat
from concurrent.futures import Future
from pathlib import Path

import pyrage
import pytest

from tests.conftest import make_workspace
from tests.test_executor import _FakeDaskFuture as _Done  # a finished dask future
from tests.signed_bundle import PASSWORD, write_public_test_keys


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """(key path, key bytes): the public golden test key, encrypted with PASSWORD."""
    key, _pub = write_public_test_keys(tmp_path_factory.mktemp("keys"))
    return key, key.read_bytes()


@pytest.fixture()
def age_identity(tmp_path):
    """(identity file in age-keygen format, recipient string)."""
    ident = pyrage.x25519.Identity.generate()
    path = tmp_path / "worker.agekey"
    path.write_text(f"# created: for a test\n# public key: {ident.to_public()}\n{ident}\n")
    path.chmod(0o600)
    return path, str(ident.to_public())


def _leaks(blob: bytes, key_path: Path, key_bytes: bytes) -> list[str]:
    """Which secret, in any encoding a careless payload could use, appears in `blob`."""
    found = []
    for what, needle in (("password", PASSWORD.encode()), ("key path", str(key_path).encode()),
                         ("key bytes", key_bytes), ("key base64", base64.b64encode(key_bytes)),
                         ("key body", key_bytes.splitlines()[1])):
        if needle in blob:
            found.append(what)
    return found


# -- sealing and opening ---------------------------------------------------------------------------

def test_seal_open_round_trip_writes_the_key_file_0600_and_removes_it(tmp_path, keys, age_identity):
    from stella_build.engine.executors.sealed import load_identities, open_sealed, parse_recipient, remove_opened, seal

    key_path, key_bytes = keys
    ident_file, recipient = age_identity
    sealed = seal({"key_path": str(key_path), "password": PASSWORD}, parse_recipient(recipient))
    assert _leaks(sealed, key_path, key_bytes) == []
    identities = load_identities({"STELLA_WORKER_AGE_IDENTITY": str(ident_file)})
    where = tmp_path / "worker" / "secrets" / "sandbox-1"
    opened = open_sealed(sealed, identities, where)
    assert opened["password"] == PASSWORD
    copy = Path(opened["key_path"])
    assert copy.parent == where and copy.read_bytes() == key_bytes
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    remove_opened(where)
    assert not where.exists()


def test_a_value_that_is_not_a_file_path_stays_a_value(tmp_path, age_identity):
    from stella_build.engine.executors.sealed import load_identities, open_sealed, parse_recipient, seal

    ident_file, recipient = age_identity
    secrets = {"password": "relative/not-a-file", "missing": str(tmp_path / "absent.key"),
               "dir": str(tmp_path)}
    opened = open_sealed(seal(secrets, parse_recipient(recipient)),
                         load_identities({"STELLA_WORKER_AGE_IDENTITY": str(ident_file)}), tmp_path / "s")
    assert opened == secrets and list((tmp_path / "s").iterdir()) == []


def test_wrong_identity_is_undecryptable_and_leaves_nothing(tmp_path, keys, age_identity):
    from stella_build.engine.executors.sealed import SealError, open_sealed, parse_recipient, seal

    _ident_file, recipient = age_identity
    sealed = seal({"key_path": str(keys[0]), "password": PASSWORD}, parse_recipient(recipient))
    with pytest.raises(SealError) as err:
        open_sealed(sealed, [pyrage.x25519.Identity.generate()], tmp_path / "s")
    assert err.value.reason == "executor-secrets-undecryptable"
    assert not (tmp_path / "s").exists()


def test_identity_file_problems_are_no_identity(tmp_path):
    from stella_build.engine.executors.sealed import SealError, load_identities

    bad = tmp_path / "bad.agekey"
    bad.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    empty = tmp_path / "empty.agekey"
    empty.write_text("# only a comment\n")
    for env in ({}, {"STELLA_WORKER_AGE_IDENTITY": str(tmp_path / "absent")},
                {"STELLA_WORKER_AGE_IDENTITY": str(bad)}, {"STELLA_WORKER_AGE_IDENTITY": str(empty)}):
        with pytest.raises(SealError) as err:
            load_identities(env)
        assert err.value.reason == "executor-secrets-no-identity", env
        assert "NOTAKEY" not in str(err.value)  # a key line is never echoed


def test_bad_recipient_is_a_usage_error():
    from stella_build.engine.errors import UsageError
    from stella_build.engine.executors.sealed import parse_recipient

    assert parse_recipient(None) is None and parse_recipient("  ") is None
    with pytest.raises(UsageError) as err:
        parse_recipient("age1notarecipient")
    info = err.value.errors[0]
    assert (info.reason, info.field, err.value.exit_code) == ("bad-executor-recipient",
                                                              "--executor-recipient", 2)


# -- the Exportfile opt-in -----------------------------------------------------------------------

def test_remote_secrets_reaches_the_action_spec_not_its_key(keys):
    """`remote_secrets = true` marks the target's actions holding secrets (and only those) and
    changes no action key. The engine passes it through AnalysisContext."""
    from stella_build.engine.actions import action_key, key_record
    from stella_build.engine.labels import parse_label
    from stella_build.engine.rule_api import AnalysisContext, BuildOptions, Rule, Selectors

    class R(Rule):
        name = "r"

    def ctx(flag):
        return AnalysisContext(label=parse_label("//p:t"), rule=R, workspace=None, source_date_epoch=0,
                               selectors=Selectors(), deps=[], base_libraries={}, exportfile="p/Exportfile",
                               options=BuildOptions(), remote_secrets=flag)

    specs = {}
    for flag in (False, True):
        c = ctx(flag)
        signing = c.action(mnemonic="Sign", fn="os:getcwd", inputs={}, outputs=["x.sig"],
                           params={"k": 1}, secrets={"key_path": str(keys[0]), "password": PASSWORD})
        plain = c.action(mnemonic="Plain", fn="os:getcwd", inputs={}, outputs=["x"])
        specs[flag] = (signing, plain)
    assert specs[True][0].secrets_remote is True and specs[True][1].secrets_remote is False
    assert specs[False][0].secrets_remote is False
    assert action_key(key_record(specs[True][0], [])) == action_key(key_record(specs[False][0], []))


def test_exportfile_remote_secrets_must_be_a_boolean(tmp_path):
    from tests.conftest import run_cli

    ws = make_workspace(tmp_path / "ws")
    ef = ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text() + '\n[targets.opt-in]\nrule = "json_raw"\ndeps = [":osv-sample"]\n'
                  'remote_secrets = "yes"\n')
    r = run_cli(["build", "//profiles:opt-in", "--output", "json"], cwd=ws, cache=tmp_path / "c")
    assert r.code == 2, r.stdout + r.stderr
    [err] = r.json()["errors"]
    line = ef.read_text().splitlines().index('remote_secrets = "yes"') + 1
    assert (err["reason"], err["field"], err["file"], err["line"]) == (
        "exportfile-invalid", "remote_secrets", "profiles/Exportfile", line)
    assert "true or false" in err["message"]
    ef.write_text(ef.read_text().replace('remote_secrets = "yes"', "remote_secrets = true"))
    r = run_cli(["query", "//profiles:opt-in"], cwd=ws, cache=tmp_path / "c")
    assert r.code == 0, r.stdout + r.stderr


# -- the client: what goes on the wire -------------------------------------------------------------

class _Client:
    """A dask client that pickles each task (as dask would) and either answers it from `answers`
    or, without answers, runs it here with `run_remote_action` (the worker, in-process)."""

    status = "running"

    def __init__(self, answers=None):
        self.answers = list(answers or [])
        self.wire: list[bytes] = []

    def submit(self, fn, payload, **kw):
        self.wire.append(pickle.dumps(payload))
        if self.answers:
            return _Done(self.answers.pop(0))
        return _Done(fn(pickle.loads(self.wire[-1])))


class _Local:
    def __init__(self):
        self.tasks = []

    def submit(self, task, record=None, **kw):
        self.tasks.append(task)
        f = Future()
        f.set_result({"outputs": [], "stats": {}, "seconds": 0})
        return f


def _sign_task(tmp_path, key_path, *, secrets_remote=True):
    """A real Sign action (rules/signing.py sign_bundle) over one manifest file, as the scheduler
    hands it to an executor; and its key record."""
    from stella_build.engine.actions import key_record
    from stella_build.engine.encode.archive import library_versions
    from stella_build.engine.encode.digest import file_digests
    from stella_build.rules.formats.keys import load_private_key, public_key_digest
    from stella_build.rules.signing import SIGN_RULE_VERSION

    manifest = tmp_path / "export.json"
    manifest.write_bytes(b'{"kind":"test manifest"}\n')
    b3 = file_digests(manifest)[0]
    pub = public_key_digest(load_private_key(key_path.read_bytes(), PASSWORD.encode()))
    names = {"manifest_bundle": "export.json.sigstore.json", "manifest_sig": "export.json.sig",
             "public_key": "cosign.pub"}
    params = {"sign_version": SIGN_RULE_VERSION, "public_key_sha256": pub,
              "roles": {"manifest": {"input": "in-manifest", "path": ""}}, "names": names}
    fn = "stella_build.rules.signing:sign_bundle"
    task = {"id": "//p:t#Sign", "label": "//p:t", "fn": fn, "params": params, "source_date_epoch": 0,
            "outputs": sorted(names.values()), "inputs": [["in-manifest", str(manifest), b3, None]],
            "sandbox_name": "sign" * 6, "mode": "build", "cache_dir": str(tmp_path / "c"),
            "expected": {}, "secrets": {"key_path": str(key_path), "password": PASSWORD},
            "secrets_remote": secrets_remote}

    class Spec:
        rule, rule_version, mnemonic, outputs = "r", "1", "Sign", task["outputs"]
        libraries = library_versions()
    Spec.fn, Spec.params, Spec.source_date_epoch = fn, params, 0
    return task, key_record(Spec, [("in-manifest", b3)])


def _executor(tmp_path, *, recipient=None, answers=None):
    from stella_build.engine.cache.cas import Cas
    from stella_build.engine.executors.base import ExecutorConfig
    from stella_build.engine.executors.dask import DaskExecutor

    warnings: list[str] = []
    local = _Local()
    ex = DaskExecutor(ExecutorConfig("dask-local"), cache_dir=tmp_path / "c", jobs=1, remote=None,
                      local=local, cas=Cas(tmp_path / "c"), warn=warnings.append, recipient=recipient)
    ex._client = _Client(answers)
    return ex, local, warnings


def test_without_the_opt_in_signing_stays_on_the_client(tmp_path, keys, age_identity, monkeypatch):
    monkeypatch.delenv("STELLA_EXECUTOR_RECIPIENT", raising=False)
    ex, local, warnings = _executor(tmp_path, recipient=age_identity[1])
    task, record = _sign_task(tmp_path, keys[0], secrets_remote=False)
    ex.submit(task, record, secrets=True).result()
    assert local.tasks == [task] and ex._client.wire == [] and warnings == []
    ex.close()


def test_opt_in_without_a_recipient_stays_here_with_one_warning(tmp_path, keys, monkeypatch):
    monkeypatch.delenv("STELLA_EXECUTOR_RECIPIENT", raising=False)
    ex, local, warnings = _executor(tmp_path)
    task, record = _sign_task(tmp_path, keys[0])
    ex.submit(task, record, secrets=True).result()
    ex.submit(dict(task, id="//p:t#Sign/2"), record, secrets=True).result()
    assert len(local.tasks) == 2 and ex._client.wire == []
    assert len(warnings) == 1 and "STELLA_EXECUTOR_RECIPIENT" in warnings[0], warnings
    ex.close()


def test_recipient_from_the_environment_and_a_bad_one(tmp_path, age_identity, monkeypatch):
    from stella_build.engine.errors import UsageError

    monkeypatch.setenv("STELLA_EXECUTOR_RECIPIENT", age_identity[1])
    ex, _local, _w = _executor(tmp_path)
    assert str(ex.recipient) == age_identity[1]
    ex.close()
    monkeypatch.setenv("STELLA_EXECUTOR_RECIPIENT", "ssh-ed25519 AAAA")
    with pytest.raises(UsageError) as err:
        _executor(tmp_path)
    assert err.value.errors[0].reason == "bad-executor-recipient"


def test_worker_without_identity_refuses_and_the_client_signs_here(tmp_path, keys, age_identity,
                                                                   monkeypatch):
    """The worker's refusal is real (run_remote_action without STELLA_WORKER_AGE_IDENTITY); the
    client warns once, runs the action here, and signs here for the rest of the build."""
    monkeypatch.delenv("STELLA_WORKER_AGE_IDENTITY", raising=False)
    from stella_build.engine.executors.worker import run_remote_action

    ex, local, warnings = _executor(tmp_path, recipient=age_identity[1])
    task, record = _sign_task(tmp_path, keys[0])
    payload = ex._payload(task, record)
    payload["sealed_secrets"] = b"not opened"
    refusal = run_remote_action({k: v for k, v in payload.items() if not k.startswith("_")})
    assert refusal["error"]["reason"] == "executor-secrets-no-identity", refusal
    ex._client.answers = [refusal]
    ex.submit(task, record, secrets=True).result()
    ex.submit(dict(task, id="//p:t#Sign/2"), record, secrets=True).result()
    assert len(ex._client.wire) == 1 and len(local.tasks) == 2
    assert len(warnings) == 1 and "STELLA_WORKER_AGE_IDENTITY" in warnings[0], warnings
    assert ex.remote_executed == 0
    ex.close()


def test_signing_on_the_worker_matches_signing_here_and_the_wire_holds_only_ciphertext(
        tmp_path, keys, age_identity, monkeypatch):
    """The full path with the real Sign action: the client seals, the task is pickled as dask
    would, the worker (in-process, its own cache) opens the secrets, signs in its sandbox and
    uploads; the client adopts outputs byte-identical to a local run (RFC 6979 signatures)."""
    from stella_build.engine.sandbox import run_action

    key_path, key_bytes = keys
    ident_file, recipient = age_identity
    worker_cache = tmp_path / "worker-cache"
    monkeypatch.setenv("STELLA_WORKER_AGE_IDENTITY", str(ident_file))
    monkeypatch.setenv("STELLA_WORKER_CACHE", str(worker_cache))
    monkeypatch.chdir(tmp_path)  # run_action below changes the working directory
    ex, local, warnings = _executor(tmp_path, recipient=recipient)
    task, record = _sign_task(tmp_path, key_path)
    result = ex.submit(task, record, secrets=True).result()
    assert "error" not in result, result
    assert local.tasks == [] and warnings == [] and ex.remote_executed == 1
    [wire] = ex._client.wire
    assert _leaks(wire, key_path, key_bytes) == [] and b"sealed_secrets" in wire
    assert pickle.loads(wire)["sealed_secrets"].startswith(b"age-encryption.org/v1")
    # no decrypted key left on the worker
    assert not any(p.name.startswith("secret-") for p in worker_cache.rglob("*"))

    here = run_action(dict(task, cache_dir=str(tmp_path / "here"), sandbox_name="here"))
    assert "error" not in here, here
    assert {o["path"]: o["blake3"] for o in result["outputs"]} == \
        {o["path"]: o["blake3"] for o in here["outputs"]}
    assert len(result["outputs"]) == 3
    for o in result["outputs"]:
        assert ex.local_cas.has(o["blake3"], o["size"]), o["path"]
    ex.close()


def test_wire_of_a_signing_task_on_a_real_local_cluster(tmp_path, keys, age_identity, monkeypatch):
    """The same on a Dask LocalCluster: its worker processes inherit STELLA_WORKER_AGE_IDENTITY,
    the Sign action runs there (remote_executed 1), and the result matches a local run."""
    from stella_build.engine.cache.cas import Cas
    from stella_build.engine.executors.base import ExecutorConfig
    from stella_build.engine.executors.dask import DaskExecutor
    from stella_build.engine.sandbox import run_action

    ident_file, recipient = age_identity
    monkeypatch.setenv("STELLA_WORKER_AGE_IDENTITY", str(ident_file))
    monkeypatch.setenv("STELLA_WORKER_CACHE", str(tmp_path / "worker-cache"))
    monkeypatch.chdir(tmp_path)
    warnings: list[str] = []
    local = _Local()
    ex = DaskExecutor(ExecutorConfig("dask-local"), cache_dir=tmp_path / "c", jobs=1, remote=None,
                      local=local, cas=Cas(tmp_path / "c"), warn=warnings.append, recipient=recipient)
    try:
        task, record = _sign_task(tmp_path, keys[0])
        result = ex.submit(task, record, secrets=True).result(timeout=120)
    finally:
        ex.close()
    assert "error" not in result, result
    assert result["worker"].startswith("tcp://127.0.0.1:")
    assert local.tasks == [] and warnings == [] and ex.remote_executed == 1
    here = run_action(dict(task, cache_dir=str(tmp_path / "here"), sandbox_name="here"))
    assert sorted((o["path"], o["blake3"]) for o in result["outputs"]) == \
        sorted((o["path"], o["blake3"]) for o in here["outputs"])
    assert not any(p.name.startswith("secret-") for p in (tmp_path / "worker-cache").rglob("*"))
