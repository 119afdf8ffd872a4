#!/usr/bin/env bash
# The test command: bash scripts/run_tests.sh [pytest arguments]
# Creates or reuses .venv, installs what is needed, runs the whole suite. ROS discovery stays
# on this machine; test/conftest.py also gives the run its own ROS_DOMAIN_ID and log dir.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_venv.sh"
cd "$ROOT"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# glibc malloc returns large torch buffers to the OS on every op; keeping them is 2-3x faster
export MALLOC_MMAP_MAX_="${MALLOC_MMAP_MAX_:-0}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-1073741824}"
exec "$VENV/bin/python" -m pytest "$@"
