#!/usr/bin/env bash
# make test-pythons: run `make test` in a fresh virtual environment for every supported CPython found
# on this machine, and print one line per version: pass/fail, tests passed, time (set-up included).
#
#   tools/test_pythons.sh                     # every supported version (3.10 to 3.13)
#   tools/test_pythons.sh 3.10 3.13           # only these
#   tools/test_pythons.sh --fast 3.10 3.13    # `make test-fast` (the fast tier) instead of `make test`
#
# An interpreter is looked up as python3.X on PATH, then in pyenv's versions. The logs of each run are
# kept in $TEST_PYTHONS_LOGS (default: a temporary folder, named at the end). A version that is not on
# the machine gets a "skipped" line. Exit status 1 if any version that was found failed, or if none of
# them was found when no versions were named.
set -uo pipefail
cd "$(dirname "$0")/.."

SUPPORTED=(3.10 3.11 3.12 3.13)
target=test
if [[ ${1:-} == --fast ]]; then target=test-fast; shift; fi
versions=("$@")
named=${#versions[@]}
((named)) || versions=("${SUPPORTED[@]}")
for v in "${versions[@]}"; do
  [[ " ${SUPPORTED[*]} " == *" $v "* ]] || { echo "test-pythons: $v is not a supported version (${SUPPORTED[*]})."; exit 2; }
done

logs=${TEST_PYTHONS_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/test-pythons.XXXXXX")}
mkdir -p "$logs"

find_python() {  # $1 = 3.X -> prints a working interpreter of that version, or nothing
  local v=$1 candidates=("python$v")
  local root; root=$(pyenv root 2>/dev/null) || root=${PYENV_ROOT:-$HOME/.pyenv}
  local dir
  for dir in "$root"/versions/"$v".*; do [[ -x $dir/bin/python$v ]] && candidates+=("$dir/bin/python$v"); done
  local c
  for c in "${candidates[@]}"; do
    if "$c" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" >/dev/null 2>&1; then
      command -v "$c"; return
    fi
  done
}

failed=0 found=0
results=()
for v in "${versions[@]}"; do
  py=$(find_python "$v")
  if [[ -z $py ]]; then
    results+=("python$v: not found on this machine, skipped")
    echo "${results[-1]}"
    continue
  fi
  found=$((found + 1))
  full=$("$py" -c 'import platform; print(platform.python_version())')
  venv=$(mktemp -d "${TMPDIR:-/tmp}/test-pythons-venv-$v.XXXXXX")
  log=$logs/python$v.log
  echo "python$v ($full): make $target in a fresh virtual environment, log in $log ..."
  start=$SECONDS
  # A fresh environment: make creates it with $py and installs requirements.txt and requirements-demo.txt into it.
  rmdir "$venv"
  env -u VIRTUAL_ENV make --no-print-directory "$target" PYTHON="$py" ENV_DIR="$venv" >"$log" 2>&1
  status=$?
  elapsed=$((SECONDS - start))
  summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
  passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+'); passed=${passed:-0}
  if ((status == 0)); then verdict=pass; else verdict=FAIL; failed=1; fi
  [[ -n $summary ]] || summary="no test summary (see the log: the set-up failed?)"
  results+=("python$v ($full): $verdict, $passed tests passed, $((elapsed / 60))m$(printf '%02d' $((elapsed % 60)))s  [$summary]")
  echo "${results[-1]}"
  rm -rf "$venv"
done

echo
echo "test-pythons summary (logs in $logs):"
printf '  %s\n' "${results[@]}"
((found || named)) || { echo "test-pythons: no supported interpreter found."; exit 1; }
exit $failed
