#!/usr/bin/env bash
# Rebuilds constraints.txt from a clean install in a throwaway venv, without the old lock, so it lists exactly what
# a fresh install resolves today. Then: review the diff, run `make test`, commit both.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install -q torch==2.13.0
"$pip" install -q -e ".[dev]"
# The references of the LPIPS, Inception and HPSv2.1 ports' tests (see Makefile):
"$pip" install -q --no-deps lpips torch-fidelity open_clip_torch
{
	echo "# The exact versions the test suite runs with: a clean install of torch==2.13.0 (the CPU wheel), '.[dev]'"
	echo "# and lpips, torch-fidelity, open_clip_torch (--no-deps). 'make install' passes this file to pip as constraints,"
	echo "# so every install resolves exactly these versions. Refresh with 'make lock' (scripts/refresh_lock.sh), then run"
	echo "# 'make test'."
	# The local '+cpu' label is dropped: '==2.13.0' still selects the CPU wheel on disk and matches it once installed.
	"$pip" freeze --all --exclude-editable | grep -v "^pip==" | sed -E 's/^(torch==[0-9.]+)\+cpu$/\1/' | LC_ALL=C sort -f
} > constraints.txt
rm -rf "$(dirname "$venv")"
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
