#!/usr/bin/env bash
# What the test suite needs besides its npm packages, checked before every `npm test` (npm runs it as the
# `pretest` script). Run as root on Debian, it installs the missing Debian packages with apt-get; otherwise
# it says in one message what is missing and how to get it, and the tests do not start. Idempotent: when
# everything is there it only looks (a fraction of a second) and installs nothing.
#
#   sqlite3, zstd   the manual-restore test, the zstd-program compression path, the benchmark's shell recipe
#   postgresql      the Postgres drill tests' restored server
#   openssl         test certificates
#   chromium        the status page test (a real browser renders the page)
#   rclone          the benchmark test's replication baseline
#   systemd         systemd-analyze checks the agent's unit file
#   Node >= 24.15   `npm ci` installs it under node_modules/.bin (the `node` devDependency), and npm scripts
#                   run under it whatever Node started npm
#   dotnet          restores the Bicep compiler from NuGet for the infra tests (not a Debian package)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(sqlite3 zstd postgresql openssl ca-certificates chromium rclone systemd)
min_node=24.15

installed() {
  # dpkg -s also succeeds for a removed package whose configuration files are still there.
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

missing=()
if command -v dpkg-query >/dev/null; then
  for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
fi

if ((${#missing[@]})) && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  echo "test set-up: installing ${missing[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  still=()
  for p in "${missing[@]}"; do installed "$p" || still+=("$p"); done
  missing=("${still[@]}")
fi

problems=()
if ((${#missing[@]})); then
  problems+=("Debian packages ${missing[*]}: run as root: apt-get install -y --no-install-recommends ${missing[*]} (or run npm test as root, which installs them)")
fi
if ! command -v dpkg-query >/dev/null; then
  for c in sqlite3 zstd openssl chromium rclone systemd-analyze pg_config; do
    command -v "$c" >/dev/null || problems+=("the $c command: install it with your system's package manager")
  done
fi

node_version="$(node -p 'process.versions.node' 2>/dev/null || echo none)"
if [[ "$node_version" == none ]] || ! node -e "const [a,b]=process.versions.node.split('.').map(Number); process.exit(a > 24 || (a === 24 && b >= 15) ? 0 : 1)"; then
  if [[ -x node_modules/.bin/node ]]; then
    problems+=("Node >= $min_node (npm scripts run $(command -v node || echo no node), version $node_version): run npm ci again, which reinstalls Node 24 under node_modules/.bin")
  else
    problems+=("Node >= $min_node (found $node_version, and node_modules/.bin/node is missing): run npm ci first; it installs Node 24 under node_modules/.bin")
  fi
fi

bicep_restored=$(find tools/bicep/packages -path '*/tools/bicep' -type f 2>/dev/null | head -n 1 || true)
if [[ -z "$bicep_restored" ]] && ! command -v dotnet >/dev/null; then
  problems+=("the .NET SDK (8.0 or later, the dotnet command): the infra tests restore the Bicep compiler from NuGet with it")
fi

if ((${#problems[@]})); then
  {
    echo "test set-up: the tests cannot run here yet; missing:"
    for p in "${problems[@]}"; do echo "  - $p"; done
  } >&2
  exit 1
fi
