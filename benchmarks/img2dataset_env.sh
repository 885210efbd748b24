#!/usr/bin/env bash
# Creates (once) the benchmark-only environment for img2dataset, the reference of
# benchmarks/ingest_vs_img2dataset.py: benchmarks/.img2dataset-venv.
#
# img2dataset has its own dependency ranges (webdataset<0.3, pandas<3,
# albumentations<2, wandb, opencv) that must not meet the project's .venv, so it
# lives in its own Python 3.11 venv. img2dataset 1.47.0 is the latest release and
# installs as is on Python 3.11; the pins below are the versions its ranges
# resolved to when the benchmark was written, so that later runs measure the same
# reference (opencv does its decode/resize, webdataset and pyarrow its writing).
#
# Usage: bash benchmarks/img2dataset_env.sh   (prints the venv path; rerunning is a no-op)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.img2dataset-venv"
python="${PYTHON:-python3.11}"

packages=(
  "img2dataset==1.47.0"
  "webdataset==0.2.111"
  "opencv-python-headless==4.14.0.94"
  "albumentations==1.4.24"
  "pyarrow==26.0.1"
  "pandas==2.3.3"
  "numpy==2.4.6"
  "fsspec==2026.9.0"
)

stamp="$venv/.installed"
want="$(printf '%s\n' "${packages[@]}")"
if [[ -x "$venv/bin/img2dataset" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$venv"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2
"$venv/bin/img2dataset" --help >/dev/null  # fails here, not mid-benchmark, if the install is broken
printf '%s\n' "$want" >"$stamp"
echo "$venv"
