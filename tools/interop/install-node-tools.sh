#!/usr/bin/env bash
# Installs the npm packages the interop tests use (sigstore-js verifier, never product code) at pinned
# versions into the tool cache, outside the repository. Re-running is a no-op when they are present.
#
#   STELLA_TOOLS_DIR   tool cache (default: ${XDG_CACHE_HOME:-$HOME/.cache}/stella-build-tools);
#                      packages land in $STELLA_TOOLS_DIR/node/node_modules
#   Needs: node >= 20 and npm (Debian: apt-get install nodejs npm).
set -euo pipefail

TOOLS_DIR="${STELLA_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stella-build-tools}"
NODE_DIR="$TOOLS_DIR/node"
PACKAGES=(
  "@sigstore/verify@4.1.3"
  "@sigstore/bundle@5.0.1"
  "@sigstore/core@4.0.1"
  "@sigstore/protobuf-specs@0.5.2"
)
WANT="${PACKAGES[*]}"
STAMP="$NODE_DIR/.installed"

command -v node >/dev/null || { echo "node not found (apt-get install nodejs npm)" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm not found (apt-get install npm)" >&2; exit 1; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -d "$NODE_DIR/node_modules/@sigstore/verify" ]]; then
  echo "node interop tools: cached ($WANT)"
  exit 0
fi

mkdir -p "$NODE_DIR"
[[ -f "$NODE_DIR/package.json" ]] || echo '{"name":"stella-build-interop-tools","private":true}' > "$NODE_DIR/package.json"
echo "node interop tools: installing $WANT into $NODE_DIR"
npm install --prefix "$NODE_DIR" --save-exact --no-audit --no-fund --loglevel=error "${PACKAGES[@]}"
echo "$WANT" > "$STAMP"
echo "node interop tools in $NODE_DIR/node_modules"
