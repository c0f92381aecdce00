"""Trivy DBs ride along in mirrors: listed, layered in the OCI artifact, verified, delta-applied."""
from __future__ import annotations

import hashlib
import json
import shutil

from tests.conftest import make_workspace, run_cli
from tests.test_mirror import _edit_sample, add_targets, same_tree

TARGETS = ("//profiles:mirror-trivy", "//profiles:trivy-db", "//profiles:trivy-java-db")
EXTRA = '''
[targets.mirror-trivy]
rule = "mirror_full"
deps = [":osv-sample", ":trivy-db", ":trivy-java-db"]

[targets.mirror-trivy-delta]
rule = "mirror_delta"
deps = [":mirror-trivy"]
'''


def test_trivy_dbs_are_shipped_in_the_mirror_and_survive_a_delta(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    add_targets(ws, "profiles", EXTRA)
    cache = tmp_path / "cache"
    run_cli(["-q", *TARGETS], cwd=ws, cache=cache, check=True)
    out = ws / "stella-out/profiles"
    tree = out / "mirror-trivy/mirror"
    export = json.loads((tree / "export.json").read_bytes())
    listed = {c["path"]: c for c in export["contents"]}
    for db, name in (("trivy-db", "db.tar.gz"), ("trivy-java-db", "javadb.tar.gz")):
        for f in (name, "metadata.json"):
            rel = f"trivy/{db}/{f}"
            data = (tree / rel).read_bytes()
            assert data == (out / db / f).read_bytes()  # shipped exactly as built
            assert listed[rel]["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        assert listed[f"trivy/{db}/{name}"]["contentType"].startswith("application/vnd.aquasec.trivy.")
    # every mirror file is a layer of the OCI artifact, titled by its path
    index = json.loads((out / "mirror-trivy/oci/index.json").read_bytes())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((out / "mirror-trivy/oci/blobs/sha256" / manifest_digest).read_bytes())
    titles = {layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]}
    assert {"trivy/trivy-db/db.tar.gz", "trivy/trivy-java-db/javadb.tar.gz"} <= titles
    assert run_cli(["mirror", "verify", str(out / "mirror-trivy")], cwd=tmp_path).code == 0

    v1 = tmp_path / "v1"
    shutil.copytree(out / "mirror-trivy", v1)
    _edit_sample(ws, 2)  # changes one advisory and adds one: the Trivy DB changes too
    run_cli(["-q", "mirror", "delta", "--base", str(v1), "//profiles:mirror-trivy-delta", TARGETS[0]],
            cwd=ws, cache=cache, check=True)
    diff = json.loads((out / "mirror-trivy-delta/delta/manifest.diff.json").read_bytes())
    assert "trivy/trivy-db/db.tar.gz" in {c["path"] for c in diff["changed"]}
    applied = tmp_path / "applied"
    shutil.copytree(v1, applied)
    res = run_cli(["mirror", "apply", str(applied), str(out / "mirror-trivy-delta"), "-o", str(applied)], cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert same_tree(applied, out / "mirror-trivy", ignore=("appliedExportIds.log",)) == []
