#!/usr/bin/env bash
# Snakemake runs this once inside each new environment made from lmdlt.yaml (`--sdm conda`):
# it installs the workflow's own lmdlt checkout, editable and without dependencies (lmdlt.yaml
# has them), so a rule's `lmdlt` command is this checkout's code. LMDLT_SOURCE names the
# checkout: workflow/rules/common.smk sets it to the workflow's folder unless it is set.
set -euo pipefail
src="${LMDLT_SOURCE:?LMDLT_SOURCE is not set: the workflow sets it to its lmdlt checkout}"
if [ ! -f "$src/pyproject.toml" ] || ! grep -q '^name = "lmdlt"$' "$src/pyproject.toml"; then
  echo "lmdlt post-deploy: LMDLT_SOURCE=$src is not an lmdlt checkout (no pyproject.toml naming lmdlt)" >&2
  exit 1
fi
python -m pip install --no-deps --no-build-isolation --editable "$src"
