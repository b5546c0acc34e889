#!/usr/bin/env bash
# The function app's deployment package, built on this machine (azd's "local build"): the compiled
# functions, host.json, package.json and the production dependencies only, in .tmp/function-app/, which
# azure.yaml names as the service's dist folder. azd runs it as `npm run package` after `npm run build`.
#
# None of the production dependencies has native code or an install script (test/dependencies.test.ts), so
# the package is the same whichever OS or CPU builds it, and the Linux function app runs it as it is. The
# development dependencies (the compiler, the test tools, the Node 24 binary that npm ci installs for the
# npm scripts) stay out of it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/.tmp/function-app"

if [[ ! -d "$root/dist/src/functions" ]]; then
  echo "function-package: $root/dist/src/functions is missing; run npm run build first" >&2
  exit 1
fi
rm -rf "$out"
mkdir -p "$out/dist"
cp -R "$root/dist/src" "$out/dist/src"
cp "$root/host.json" "$root/package.json" "$root/package-lock.json" "$out/"
# --ignore-scripts: no production dependency needs one, and the package must not depend on what they do.
(cd "$out" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)
echo "function-package: $out ($(du -sh "$out" | cut -f1)) holds the functions and their production dependencies"
