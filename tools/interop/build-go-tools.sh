#!/usr/bin/env bash
# Builds the Go-based interop test tools (never product code) once per machine into a tool cache
# outside the repository, at pinned versions. Re-running is a no-op when the binaries are present.
#
#   STELLA_TOOLS_DIR   where binaries go (default: ${XDG_CACHE_HOME:-$HOME/.cache}/stella-build-tools)
#   tools/interop/build-go-tools.sh [trivy|cosign|bbolt|bazel-remote]...   (default: all)
set -euo pipefail

TOOLS_DIR="${STELLA_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stella-build-tools}"
mkdir -p "$TOOLS_DIR/bin"

declare -A MODULES=(
  [trivy]="github.com/aquasecurity/trivy/cmd/trivy@v0.74.0"
  [cosign]="github.com/sigstore/cosign/v3/cmd/cosign@v3.1.2"
  [bbolt]="go.etcd.io/bbolt/cmd/bbolt@v1.5.0"
  [bazel-remote]="github.com/buchgr/bazel-remote/v2@v2.6.2"
)

build_one() {
  local name="$1" mod="${MODULES[$1]}"
  local stamp="$TOOLS_DIR/bin/.$name.version"
  if [[ -x "$TOOLS_DIR/bin/$name" && -f "$stamp" && "$(cat "$stamp")" == "$mod" ]]; then
    echo "interop tool $name: cached ($mod)"
    return 0
  fi
  echo "interop tool $name: building $mod"
  # CGO off: static binaries that do not depend on the host's C libraries.
  CGO_ENABLED=0 GOBIN="$TOOLS_DIR/bin" GOFLAGS=-trimpath go install "$mod"
  echo "$mod" > "$stamp"
}

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(bbolt cosign bazel-remote trivy)
for n in "${names[@]}"; do
  [[ -n "${MODULES[$n]:-}" ]] || { echo "unknown tool: $n" >&2; exit 2; }
  build_one "$n"
done
echo "interop tools in $TOOLS_DIR/bin"
