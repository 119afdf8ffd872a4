#!/usr/bin/env bash
# The demo command: bash scripts/run_demo.sh [--data auto|skimage|coil100] [--objects N]
# Creates or reuses .venv, installs what is needed, starts latent_replay_node as its own
# process, teaches it real photos over ROS 2 topics and services, and prints its accuracy.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_venv.sh"
cd "$ROOT"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export MALLOC_MMAP_MAX_="${MALLOC_MMAP_MAX_:-0}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-1073741824}"
# after the run, remove what the middleware leaves in /dev/shm (see shm_leftovers.py)
since="$(date +%s)"
status=0
"$VENV/bin/python" -m ros2_latent_replay.demo "$@" || status=$?
"$VENV/bin/python" -m ros2_latent_replay.shm_leftovers --since "$since" || true
exit "$status"
