"""What the layered design promises (docs/architecture.md), shown on real builds:

- action keys cover exactly the code an action can run: editing product code re-runs nothing,
  editing a format library re-runs the actions that import it;
- global options work before or after the verb; `--sign`/`--base` reach rules as typed options;
- errors carry a machine-readable `reason` in `--output json`;
- action functions are referenced as objects.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stella_build.engine.errors import UsageError
from stella_build.engine.rule_api import function_reference
from tests.conftest import REPO, assemble_package, make_workspace, output_digests, run_cli
from tests.signed_bundle import PASSWORD, make_keys

def _run_from(code: Path, args: list[str], *, cwd: Path, cache: Path) -> dict:
    """Run the CLI from the package copy at `code` (ahead of the editable install)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLA_") and k != "SOURCE_DATE_EPOCH"}
    env["PYTHONPATH"] = str(code)
    proc = subprocess.run([sys.executable, "-m", "stella_build.cli.entry", "--cache-dir", str(cache),
                           "--output", "json", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json
    return json.loads(proc.stdout)


def _touch(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited by a test\n")


def test_editing_product_code_reruns_no_action(tmp_path):
    code = assemble_package(tmp_path / "code")
    ws = make_workspace(tmp_path / "ws")
    cache = tmp_path / "cache"
    first = _run_from(code, ["//profiles/..."], cwd=ws, cache=cache)
    assert first["actions"]["executed"] == first["actions"]["total"] > 0
    # every layer above the rules: the CLI, verify, mirror apply, keyless signing
    for rel in ("stella_build/cli/main.py", "stella_build/cli/build.py", "stella_build/delivery/verify/core.py",
                "stella_build/delivery/mirror_apply.py", "stella_build/delivery/keyless.py"):
        _touch(code / rel)
    again = _run_from(code, ["//profiles/..."], cwd=ws, cache=cache)
    assert "noop_memo" not in again  # code changed: a real build, not the memo
    assert again["actions"]["executed"] == 0 and again["actions"]["cached"] == again["actions"]["total"]


def test_editing_a_format_library_reruns_exactly_its_importers(tmp_path):
    code = assemble_package(tmp_path / "code")
    ws = make_workspace(tmp_path / "ws")
    cache = tmp_path / "cache"
    _run_from(code, ["//profiles:json-raw", "//profiles:trivy-db"], cwd=ws, cache=cache)
    _touch(code / "stella_build/rules/formats/trivy/bbolt.py")  # the Trivy DB writer only
    again = _run_from(code, ["//profiles:json-raw", "//profiles:trivy-db"], cwd=ws, cache=cache)
    assert 0 < again["actions"]["executed"] < again["actions"]["total"]
    before = output_digests(ws, "profiles", "trivy-db")
    assert before  # and the bytes are the same (the edit is a comment)


@pytest.mark.parametrize("argv", [
    ["build", "-j1", "//profiles:json-raw", "--output", "json"],
    ["build", "//profiles:json-raw", "-j1", "--output=json"],
    ["--output", "json", "build", "//profiles:json-raw", "-q"],
    ["//profiles:json-raw", "--jobs", "1", "--output", "json"],
])
def test_global_options_go_before_or_after_the_verb(sample_ws, tmp_path, argv):
    res = run_cli(argv, cwd=sample_ws, cache=tmp_path / "c")
    assert res.code == 0, res.stderr
    assert res.json()["ok"] is True and res.json()["targets"] == ["//profiles:json-raw"]


def test_global_cache_option_after_the_verb_is_the_cache_used(sample_ws, tmp_path):
    cache = tmp_path / "late-cache"
    res = run_cli(["build", "//profiles:osv-sample", "--cache-dir", str(cache), "-q"], cwd=sample_ws)
    assert res.code == 0, res.stderr
    assert (cache / "cas").is_dir()


def test_sign_before_the_target_without_the_verb(tmp_path):
    """README: `stella-build --sign keys/cosign.key //profiles:trivy-db`."""
    ws = make_workspace(tmp_path / "ws")
    make_keys(ws / "keys")
    res = run_cli(["--sign", "keys/cosign.key", "//profiles:trivy-db", "-q"], cwd=ws, cache=tmp_path / "c",
                  env={"COSIGN_PASSWORD": PASSWORD})
    assert res.code == 0, res.stderr
    out = ws / "stella-out/profiles/trivy-db"
    assert (out / "db.tar.gz.sigstore.json").is_file() and (out / "cosign.pub").is_file()
    # and the environment variable is only a default of the option
    res = run_cli(["//profiles:json-raw", "-q"], cwd=ws, cache=tmp_path / "c",
                  env={"COSIGN_PASSWORD": PASSWORD, "STELLA_SIGN": str(ws / "keys/cosign.key")})
    assert res.code == 0, res.stderr
    assert (ws / "stella-out/profiles/json-raw/cosign.pub").is_file()


def test_build_options_do_not_travel_through_the_environment(sample_ws, tmp_path, monkeypatch):
    """`--base` reaches the rule as a typed option: the process environment is left alone."""
    from stella_build.cli.main import main

    monkeypatch.chdir(sample_ws)
    for var in ("STELLA_MIRROR_BASE", "STELLA_SIGN"):
        monkeypatch.delenv(var, raising=False)
    code = main(["--cache-dir", str(tmp_path / "c"), "-q", "build", "--base", str(tmp_path / "nowhere"),
                 "//profiles:mirror-delta"])
    assert code == 2
    assert "STELLA_MIRROR_BASE" not in os.environ and "STELLA_SIGN" not in os.environ


@pytest.mark.parametrize("args, exit_code, reason", [
    (["//profiles:no-such-target"], 2, "target-missing"),
    (["//nowhere:x"], 2, "package-missing"),
    (["//profiles:bad:label"], 2, "bad-label"),
    (["build", "--base", "/nonexistent/base", "//profiles:mirror-delta"], 2, "base-missing"),
    (["--sign", "/nonexistent/cosign.key", "//profiles:json-raw"], 4, "signing-key-missing"),
    (["--sign", "PUBLIC_KEY", "//profiles:json-raw"], 4, "signing-key-unusable"),
    (["--cache-dir", "/proc/stella-no-such-dir", "//profiles:json-raw"], 1, "io-error"),
])
def test_errors_carry_a_machine_readable_reason(sample_ws, tmp_path, args, exit_code, reason):
    pub = tmp_path / "cosign.pub"  # a public key given to --sign by mistake
    pub.write_text("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n")
    args = [str(pub) if a == "PUBLIC_KEY" else a for a in args]
    res = run_cli(["--output", "json", *args], cwd=sample_ws, cache=tmp_path / "c")
    assert res.code == exit_code, res.stderr
    errors = res.json()["errors"]
    assert errors and errors[0]["reason"] == reason
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args, field", [
    (["build", "--no-such-option", "//profiles:json-raw"], "--no-such-option"),
    (["trivy-db", "patch", "BASE", "/nonexistent/patch", "-o", "OUT"], "PATCH"),
    (["trivy-db", "patch", "BASE", "PATCHDIR", "-o", "A_FILE"], "--out"),
])
def test_usage_errors_are_json_when_json_is_asked_for(tmp_path, args, field):
    """click's own usage errors (unknown option, a path argument that is not there) keep their
    text on stderr and, with --output json, also print the error object CI parses (exit 2)."""
    (tmp_path / "a-file").write_text("x")
    subst = {"BASE": str(tmp_path / "base.db"), "PATCHDIR": str(tmp_path), "OUT": str(tmp_path / "out"),
             "A_FILE": str(tmp_path / "a-file")}
    res = run_cli(["--output", "json", *[subst.get(a, a) for a in args]], cwd=tmp_path, cache=tmp_path / "c")
    assert res.code == 2 and "Error:" in res.stderr, res.stdout + res.stderr
    doc = res.json()
    assert (doc["ok"], doc["exit_code"]) == (False, 2)
    [err] = doc["errors"]
    assert (err["reason"], err["field"]) == ("usage", field), err
    plain = run_cli([*[subst.get(a, a) for a in args]], cwd=tmp_path, cache=tmp_path / "c")
    assert plain.code == 2 and plain.stdout == ""  # text mode: stderr only, as before


def test_cycle_and_unknown_key_reasons(sample_ws, tmp_path):
    ef = sample_ws / "profiles/Exportfile"
    ef.write_text(ef.read_text() + '\n[targets.a]\nrule = "json_raw"\ndeps = [":b"]\n'
                  '\n[targets.b]\nrule = "json_raw"\ndeps = [":a"]\n')
    res = run_cli(["--output", "json", "//profiles:a"], cwd=sample_ws, cache=tmp_path / "c")
    assert res.code == 2 and res.json()["errors"][0]["reason"] == "dependency-cycle"
    assert res.json()["errors"][0]["line"] and res.json()["errors"][0]["field"] == "deps"
    ef.write_text(ef.read_text() + '\n[targets.c]\nrule = "json_raw"\ndeps = [":osv-sample"]\nbogus = 1\n')
    res = run_cli(["--output", "json", "//profiles:c"], cwd=sample_ws, cache=tmp_path / "c")
    assert res.code == 2 and res.json()["errors"][0]["reason"] == "unknown-key"


def test_a_failed_action_has_a_reason(sample_ws, tmp_path):
    bad = sample_ws / "profiles/evidence/osv/zz-broken.json"
    bad.write_text('{"id": 5}')
    # a malformed file is quarantined (exit 0) unless the source is strict (tests/test_quarantine.py)
    exportfile = sample_ws / "profiles/Exportfile"
    block = '[targets.osv-sample]\nrule = "osv_source"\n'
    exportfile.write_text(exportfile.read_text().replace(block, block + "strict = true\n"))
    res = run_cli(["--output", "json", "//profiles:json-raw"], cwd=sample_ws, cache=tmp_path / "c")
    assert res.code == 1
    error = res.json()["errors"][0]
    assert error["reason"] == "evidence-invalid" and error["file"].endswith("zz-broken.json")


def _module_level(actx):
    return None


def test_action_functions_are_referenced_as_objects():
    assert function_reference(_module_level) == "tests.test_architecture:_module_level"
    with pytest.raises(UsageError):
        function_reference(lambda actx: None)

    def nested(actx):
        return None
    with pytest.raises(UsageError):
        function_reference(nested)


def test_no_rule_names_its_action_by_string():
    """Every ctx.action(fn=...) in the built-in rules passes a function object."""
    import re
    for path in sorted((REPO / "rules").rglob("*.py")):
        assert not re.search(r"""fn\s*=\s*["']""", path.read_text()), path
