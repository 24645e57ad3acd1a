#!/usr/bin/env bash
# The abTEM environment of the multislice benchmark (abTEM is GPL-3 and needs
# numpy>=2; the package pins numpy<2 through py4DSTEM, so it never imports it).
# Usage: bash benchmarks/multislice/make_venv.sh [VENV_DIR]   (default benchmarks/multislice/.venv)
# then:  ABTEM_PYTHON=VENV_DIR/bin/python python benchmarks/multislice.py generate
set -euo pipefail
venv="${1:-$(dirname "$0")/.venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install "abtem==1.0.11"
"$venv/bin/python" -c "import abtem, ase, numpy; print('abTEM', abtem.__version__)"
