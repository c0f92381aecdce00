#!/usr/bin/env bash
# Builds the Go-based interop test tools (never product code) once per machine into a tool cache
# outside the repository, at pinned versions. Re-running is a no-op when the binaries are present.
#
#   STELLA_TOOLS_DIR   where binaries go (default: ${XDG_CACHE_HOME:-$HOME/.cache}/stella-build-tools)
#   tools/interop/build-go-tools.sh [trivy|cosign|bbolt|bazel-remote|osv-scanner|oras]...   (default: all)
set -euo pipefail

TOOLS_DIR="${STELLA_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stella-build-tools}"
mkdir -p "$TOOLS_DIR/bin"

# name → "module@version package-dir-inside-the-module"
declare -A MODULES=(
  [trivy]="github.com/aquasecurity/trivy@v0.74.0 ./cmd/trivy"
  [cosign]="github.com/sigstore/cosign/v3@v3.1.2 ./cmd/cosign"
  [bbolt]="go.etcd.io/bbolt@v1.5.0 ./cmd/bbolt"
  [bazel-remote]="github.com/buchgr/bazel-remote/v2@v2.6.2 ."
  [osv-scanner]="github.com/google/osv-scanner/v2@v2.6.0 ./cmd/osv-scanner"
  [oras]="oras.land/oras@v1.3.6 ./cmd/oras"
)

# name → Go toolchain, for modules whose go.mod needs a newer Go than the installed one (fetched
# once from the module proxy as golang.org/toolchain). go1.27.3 is the one approved newer toolchain.
# osv-scanner v2.6.0's go.mod says `go 1.27.0`.
declare -A TOOLCHAINS=(
  [osv-scanner]="go1.27.3"
)

build_one() {
  local name="$1" mod="${MODULES[$1]}" toolchain="${TOOLCHAINS[$1]:-}"
  local stamp="$TOOLS_DIR/bin/.$name.version" want="$mod${toolchain:+ $toolchain}"
  if [[ -x "$TOOLS_DIR/bin/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "interop tool $name: cached ($want)"
    return 0
  fi
  echo "interop tool $name: building $want"
  local modver="${mod% *}" pkg="${mod#* }" dir
  # Both `go mod download` and `go build` refuse a module whose go.mod needs a newer Go.
  [[ -n "$toolchain" ]] && export GOTOOLCHAIN="$toolchain"
  # Download the module and build inside it with its own go.mod (what `go install m@v` does, minus
  # the proxy's deprecation lookup, which the registry here refuses for some modules).
  dir=$(go mod download -json "$modver" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  # CGO off: static binaries that do not depend on the host's C libraries.
  # Trivy's own build (magefiles/magefile.go) sets GOEXPERIMENT=jsonv2: it imports encoding/json/v2.
  local experiment=""
  [[ "$name" == trivy ]] && experiment="jsonv2"
  (cd "$dir" && CGO_ENABLED=0 GOEXPERIMENT="$experiment" GOFLAGS="-trimpath -mod=mod" \
     go build -o "$TOOLS_DIR/bin/$name.tmp" "$pkg")
  mv "$TOOLS_DIR/bin/$name.tmp" "$TOOLS_DIR/bin/$name"
  echo "$want" > "$stamp"
}

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(bbolt cosign bazel-remote trivy osv-scanner oras)
# go mod download needs a module context only for its cache; run from a scratch directory.
cd "$(mktemp -d)"
for n in "${names[@]}"; do
  [[ -n "${MODULES[$n]:-}" ]] || { echo "unknown tool: $n" >&2; exit 2; }
  # Subshell: a per-tool GOTOOLCHAIN does not leak into the next tool.
  (build_one "$n")
done
echo "interop tools in $TOOLS_DIR/bin"
