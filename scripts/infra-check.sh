#!/usr/bin/env bash
# Builds and lints infra/ with the real Bicep compiler, restored from NuGet by tools/bicep/bicep.csproj.
# Fails on any error AND any warning: a warning from the compiler is usually a property Azure will
# reject or ignore at deployment time, which is far more expensive to find there.
#
#   bash scripts/infra-check.sh             restore (if needed), build to .tmp/infra/main.json, lint
#   bash scripts/infra-check.sh bicep-path  restore (if needed) and print the compiler's path
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
project="$root/tools/bicep/bicep.csproj"
out_dir="$root/.tmp/infra"

version="$(sed -n 's/.*Include="Azure.Bicep.CommandLine.linux-x64" Version="\[\([^]]*\)\]".*/\1/p' "$project")"
if [[ -z "$version" ]]; then
  echo "infra-check: cannot read the Bicep version from $project (expected Version=\"[x.y.z]\")" >&2
  exit 2
fi
bicep="$root/tools/bicep/packages/azure.bicep.commandline.linux-x64/$version/tools/bicep"

# Test files may ask for the compiler at the same time; one restore at a time.
exec 9>"$root/tools/bicep/.restore.lock"
flock 9
if [[ ! -x "$bicep" ]]; then
  if ! command -v dotnet >/dev/null; then
    echo "infra-check: the Bicep compiler is not restored and dotnet is not on PATH; install the .NET SDK, then run: dotnet restore $project" >&2
    exit 2
  fi
  echo "infra-check: restoring Azure.Bicep.CommandLine.linux-x64 $version from NuGet" >&2
  if ! dotnet restore "$project" --verbosity quiet >&2; then
    echo "infra-check: dotnet restore failed; check that NuGet is reachable and serves Azure.Bicep.CommandLine.linux-x64 $version" >&2
    exit 2
  fi
  # NuGet does not keep the executable bit.
  chmod +x "$bicep"
fi
flock -u 9

if [[ "${1:-}" == "bicep-path" ]]; then
  echo "$bicep"
  exit 0
fi

mkdir -p "$out_dir"
log="$out_dir/check.log"
: >"$log"
failed=0

run() {
  # Diagnostics go to stderr; keep both streams, the exit code, and look for warnings ourselves
  # because the compiler exits 0 when there are only warnings.
  if ! "$bicep" "$@" >>"$log" 2>&1; then failed=1; fi
}

run build "$root/infra/main.bicep" --outfile "$out_dir/main.json"
# One process for every file (modules too, so a module's own warnings are not hidden behind main's).
run lint --pattern "$root/infra/**/*.bicep"
files="$(find "$root/infra" -name '*.bicep' | wc -l)"

problems="$(grep -E ': (Warning|Error) ' "$log" | sort -u || true)"
if [[ -n "$problems" || "$failed" -ne 0 ]]; then
  echo "infra-check: FAILED (Bicep $version)" >&2
  if [[ -n "$problems" ]]; then echo "$problems" >&2; else cat "$log" >&2; fi
  exit 1
fi
echo "infra-check: ok: built infra/main.bicep to .tmp/infra/main.json and linted $files files with Bicep $version: 0 errors, 0 warnings"
