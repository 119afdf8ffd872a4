#!/usr/bin/env bash
# Create or reuse the project's virtual environment at <repo>/.venv and install what the
# project needs into it: the pinned requirements-dev.txt (ROS 2 wheels from PyPI, torch,
# test tools) and this package in editable mode. Sourced by run_demo.sh and run_tests.sh.
# Fast when nothing changed: a stamp of the install inputs is kept in .venv.
# Environment: PYTHON=/path/to/python3.X picks the interpreter (3.10 .. 3.13).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1

_ros2lr_python_ok() {
    "$1" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' \
        2>/dev/null
}

_ros2lr_pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python3.10; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 && _ros2lr_python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "error: need Python 3.10 to 3.13 (the ROS 2 wheels exist for those); set PYTHON=" >&2
    return 1
}

_ros2lr_create_venv() {
    local python
    python="$(_ros2lr_pick_python)" || return 1
    echo "creating $VENV with $python" >&2
    if ! "$python" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        local version
        version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing python${version}-venv with apt-get" >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                "python${version}-venv" >&2 || return 1
            "$python" -m venv "$VENV" || return 1
        else
            echo "error: '$python -m venv' failed; install it first:" \
                 "sudo apt-get install python${version}-venv" >&2
            return 1
        fi
    fi
}

_ros2lr_stamp() {
    (cd "$ROOT" && cat requirements-dev.txt setup.py setup.cfg package.xml \
        && "$VENV/bin/python" -c 'import sys; print(sys.version)' && echo "$ROOT") \
        | sha256sum | cut -d' ' -f1
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ] || ! _ros2lr_python_ok "$VENV/bin/python"; then
        rm -rf "$VENV"
        _ros2lr_create_venv || return 1
    fi
    local stamp_file="$VENV/.ros2_latent_replay-install" stamp
    stamp="$(_ros2lr_stamp)"
    if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
        && "$VENV/bin/python" -c "import sys, ros2_latent_replay, rclpy; sys.exit(not \
ros2_latent_replay.__file__.startswith('$ROOT/'))" 2>/dev/null; then
        return 0
    fi
    echo "installing the project's requirements into $VENV (first time: several minutes)" >&2
    "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-dev.txt" || return 1
    # editable installs and colcon need a setuptools with bdist_wheel built in (>= 70.1)
    "$VENV/bin/python" -c 'import sys, setuptools; sys.exit(tuple(map(int, \
setuptools.__version__.split(".")[:2])) < (70, 1))' 2>/dev/null \
        || "$VENV/bin/python" -m pip install -q 'setuptools>=70.1' || return 1
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" \
        || return 1
    echo "$stamp" > "$stamp_file"
}

ensure_venv || { echo "error: could not set up $VENV" >&2; exit 1; }
