#!/usr/bin/env bash
# Create the benchmarks' own venv (Avalanche and its dependencies stay out of .venv).
# Usage: benchmarks/setup_bench_venv.sh [VENV_DIR]   (default: .venv-bench, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-bench}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/pip" install -q -r requirements-bench.txt
"$VENV/bin/python" -c "import avalanche, torch; print('avalanche', avalanche.__version__, 'torch', torch.__version__)"
echo "export BENCH_PYTHON=$PWD/$VENV/bin/python"
