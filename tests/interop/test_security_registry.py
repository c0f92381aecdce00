"""Interop: a real docker-registry (distribution 2.8) stores and serves hostile mirror artifacts as
readily as good ones; `mirror pull` refuses them before laying out a single file.

The in-process fake registry of tests/test_security_mirror.py covers responses no real registry
sends (400 MiB manifests, endless blobs); this file shows that a crafted artifact pushed to a real
registry (a layer titled `../../x`, a layer without a title) reaches the client unchanged and is
refused with the right reason, and that pulling into a user's directory is refused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from stella_build.delivery.registry import RegistryClient
from stella_build.rules.formats.mirror import ARTIFACT_TYPE
from stella_build.rules.formats.oci import MEDIA_TYPE_MANIFEST
from tests.conftest import make_workspace, run_cli

from .test_oci_tools import registry  # noqa: F401  (the docker-registry fixture)

pytestmark = pytest.mark.interop


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_artifact(client: RegistryClient, tmp: Path, layers: list[tuple[bytes, dict | None]], tag: str) -> None:
    empty = b"{}"
    for data in [empty] + [d for d, _ in layers]:
        blob = tmp / _sha(data)[7:]
        blob.write_bytes(data)
        client.upload_blob(blob, _sha(data), len(data))
    descs = []
    for data, notes in layers:
        desc = {"mediaType": "text/markdown", "digest": _sha(data), "size": len(data)}
        if notes is not None:
            desc["annotations"] = notes
        descs.append(desc)
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST, "artifactType": ARTIFACT_TYPE,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": _sha(empty), "size": 2},
                "layers": descs}
    client.put_manifest(json.dumps(manifest, sort_keys=True).encode(), MEDIA_TYPE_MANIFEST, tag)


@pytest.mark.parametrize("notes, reason", [
    ({"org.opencontainers.image.title": "../../x"}, "unsafe-path"),
    (None, "schema-invalid"),
])
def test_real_registry_serves_a_hostile_artifact_and_pull_refuses_it(tmp_path, registry, notes, reason):  # noqa: F811
    client = RegistryClient(registry, "evil/mirror")
    (tmp_path / "blobs").mkdir()
    _push_artifact(client, tmp_path / "blobs", [(b"# readme\n", notes)], "v1")
    work = tmp_path / "work"
    work.mkdir()
    out = work / "site" / "out"
    res = run_cli(["--output", "json", "mirror", "pull", f"{registry.removeprefix('http://')}/evil/mirror:v1",
                   "-o", str(out)], cwd=work)
    assert "Traceback" not in res.stderr
    err = json.loads(res.stdout)["errors"][0]
    assert (res.code, err["reason"]) == (3, reason), res.stdout
    assert not out.exists() and not any(p.name == "x" for p in tmp_path.rglob("*"))


def test_pull_of_a_real_mirror_into_a_user_directory_is_refused(tmp_path, registry):  # noqa: F811
    ws = make_workspace(tmp_path / "ws")
    run_cli(["-q", "//profiles:mirror-full"], cwd=ws, cache=tmp_path / "cache", check=True)
    host = registry.removeprefix("http://")
    assert run_cli(["mirror", "push", str(ws / "stella-out/profiles/mirror-full"), f"{host}/stella/m:v1"],
                   cwd=tmp_path).code == 0
    user = tmp_path / "home"
    user.mkdir()
    (user / "letter.txt").write_text("dear")
    res = run_cli(["--output", "json", "mirror", "pull", f"{host}/stella/m:v1", "-o", str(user)], cwd=tmp_path)
    assert res.code == 2 and json.loads(res.stdout)["errors"][0]["reason"] == "output-not-empty"
    assert [p.name for p in user.iterdir()] == ["letter.txt"]
    res = run_cli(["mirror", "pull", f"{host}/stella/m:v1", "-o", str(user), "--force"], cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert not (user / "letter.txt").exists() and (user / "mirror/export.json").is_file()
