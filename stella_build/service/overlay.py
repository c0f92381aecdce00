"""A run's selectors as a workspace overlay.

`POST /runs {profile, selectors}` builds the profile with its `selectors` replaced key by key,
exactly as if the Exportfile said so. The engine's build options carry no selectors (they are
target parameters, part of every action key), so the request is turned into Exportfile text: the
profile's package Exportfile, parsed, with the target's `selectors` table updated, written to a
content-addressed file under the cache, and a `Workspace` whose `exportfile(package)` points there.
Sources, globs and relative paths still resolve in the real package directory (`package_dir` is
unchanged), so the build differs from a CLI build only in the selectors: the same bytes as a CLI
build of a target declaring those selectors.
"""
from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from stella_build.engine.fsutil import write_atomic
from stella_build.engine.workspace import Workspace


@dataclass
class OverlayWorkspace(Workspace):
    """A Workspace reading some packages' Exportfiles from overlay files."""

    overlays: dict[str, Path] = field(default_factory=dict)

    def exportfile(self, package: str) -> Path:
        return self.overlays.get(package) or super().exportfile(package)


def with_selectors(workspace: Workspace, package: str, target: str, selectors: dict,
                   overlay_root: Path) -> tuple[Workspace, str | None]:
    """(workspace to build with, display path of the overlay or None). `selectors` (already
    validated: keys of rule_api.Selectors, None values dropped) override the target's own.
    Without selectors the workspace itself is returned, so a plain run is a plain build."""
    import tomli_w

    selectors = {k: v for k, v in (selectors or {}).items() if v is not None}
    if not selectors:
        return workspace, None
    source = workspace.exportfile(package)
    data = tomllib.loads(source.read_text(encoding="utf-8"))
    table = data.setdefault("targets", {}).setdefault(target, {})
    table["selectors"] = {**(table.get("selectors") or {}), **selectors}
    text = ("# stella-build serve: overlay of " + os.path.relpath(source, workspace.root)
            + f" with the selectors of a run request for //{package}:{target}\n" + tomli_w.dumps(data))
    digest = hashlib.sha256(text.encode()).hexdigest()
    path = Path(overlay_root) / digest[:2] / digest / "Exportfile"
    if not path.is_file():
        write_atomic(path, text.encode())
    ws = OverlayWorkspace(root=workspace.root, external=dict(workspace.external),
                          overlays={package: path})
    return ws, os.path.relpath(path, workspace.root)
