#!/usr/bin/env bash
# Creates (once) the benchmark-only environment for wikiextractor, the reference of
# benchmarks/wikipedia_ingest.py: benchmarks/.cache/wikiextractor-venv (ignored by git).
#
# wikiextractor is a command-line tool with no dependencies; it lives in its own
# Python 3.11 venv so that nothing of it meets the project's .venv, as
# img2dataset does (img2dataset_env.sh). 3.1.0 is the latest release.
#
# Usage: bash benchmarks/wikiextractor_env.sh   (prints the venv path; rerunning is a no-op)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.cache/wikiextractor-venv"
python="${PYTHON:-python3.11}"
packages=("wikiextractor==3.1.0")

stamp="$venv/.installed"
want="$(printf '%s\n' "${packages[@]}")"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$venv"
  exit 0
fi

mkdir -p "$here/.cache"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2
"$venv/bin/python" -m wikiextractor.WikiExtractor --help >/dev/null  # fails here, not mid-benchmark
printf '%s\n' "$want" >"$stamp"
echo "$venv"
