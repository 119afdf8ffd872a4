"""Shared test setup: an isolated ROS 2 environment, real data, and a leftover check.

Before anything imports rclpy this sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a ROS
domain id of this run's own, a temporary ROS_LOG_DIR and ROS_HOME, and
RMW_IMPLEMENTATION=rmw_fastrtps_cpp. At the end of the session it fails the run if a
process started by the tests is still alive or a replay shared-memory segment
(``/dev/shm/ros2lr_*``) of this run was left behind.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
_TMP = Path(tempfile.mkdtemp(prefix='ros2lr_test_'))
sys.path.insert(0, str(REPO))   # the package, also when not installed

from ros2_latent_replay import ros_env, shm_leftovers  # noqa: E402  (before rclpy loads)

ros_env.isolate(os.environ, log_dir=str(_TMP / 'ros_log'))
os.environ['ROS_HOME'] = str(_TMP / 'ros_home')
os.environ.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
os.environ.pop('FASTRTPS_DEFAULT_PROFILES_FILE', None)

SHM_DIR = Path('/dev/shm')
SHM_PREFIX = 'ros2lr_'
_started_pids = set()
_STARTED = time.time()


def _segments():
    """Replay segments present now."""
    if not SHM_DIR.is_dir():
        return set()
    return {p.name for p in SHM_DIR.iterdir() if p.name.startswith(SHM_PREFIX)}


def _owner(name):
    try:
        return int(name[len(SHM_PREFIX):].split('_', 1)[0])
    except ValueError:
        return None


def _children(pid):
    """Live (non-zombie) direct children of ``pid``, as (pid, command line)."""
    found = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / 'stat').read_text().rsplit(')', 1)[1].split()
            if int(fields[1]) != pid or fields[0] == 'Z':
                continue
            cmdline = (entry / 'cmdline').read_bytes().replace(b'\0', b' ').decode(
                errors='replace').strip()
        except (OSError, IndexError, ValueError):
            continue
        found.append((int(entry.name), cmdline))
    return found


def start_process(args, **kwargs):
    """Start a subprocess in its own process group and remember it for the leftover check."""
    kwargs.setdefault('env', dict(os.environ))
    kwargs.setdefault('start_new_session', True)
    process = subprocess.Popen(args, **kwargs)
    _started_pids.add(process.pid)
    return process


def stop_process(process, timeout=20.0):
    """SIGINT, then SIGKILL the process group if it does not exit; return the exit code."""
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGINT)
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    return process.wait(10)


def _clean_fastdds_leftovers():
    """Remove Fast DDS shared memory that processes killed by the tests left behind.

    ``fastdds shm clean`` removes unlocked segments; port files of this run's own domain id
    (ports 7400 + 250 * id .. + 249, nobody else uses the id) are removed here as well, and
    so is every other Fast DDS file written during this run that no live process maps (the
    shared ports 7000+ that SIGKILLed nodes leave) and LTTng's wait files, which the
    tracing library loaded with rclpy creates and never removes (``shm_leftovers``).
    """
    fastdds = Path(sys.prefix) / 'tools' / 'fastdds' / 'fastdds.py'   # from ros-fastdds
    if fastdds.is_file():
        subprocess.run([sys.executable, str(fastdds), 'shm', 'clean'], capture_output=True,
                       timeout=60, check=False)
    first = 7400 + 250 * int(os.environ['ROS_DOMAIN_ID'])
    ours = [f'{prefix}{port}{suffix}' for port in range(first, first + 250)
            for prefix, suffix in (('fastdds_port', ''), ('fastdds_port', '_el'),
                                   ('sem.fastdds_port', '_mutex'))]
    shm_leftovers.remove_unused(since=_STARTED, ignore_pids=[os.getpid()], extra=ours)


@pytest.fixture(scope='session', autouse=True)
def leftover_check():
    """Fail the session if the tests leave a process or a replay segment behind."""
    before = _segments()
    yield
    problems = []
    ours = {os.getpid()} | _started_pids
    left = sorted(name for name in _segments() - before if _owner(name) in ours)
    if left:
        problems.append(f'shared-memory segments left behind: {", ".join(left)}')
    children = [(pid, cmd) for pid, cmd in _children(os.getpid())
                if 'resource_tracker' not in cmd]
    if children:
        problems.append('processes still running: ' +
                        '; '.join(f'{pid} {cmd[:120]}' for pid, cmd in children))
    _clean_fastdds_leftovers()
    shutil.rmtree(_TMP, ignore_errors=True)
    assert not problems, '; '.join(problems)


@pytest.fixture(scope='session')
def shared_data():
    """Return the real image data folder (``../shared/data``); skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'real image data not found at {SHARED_DATA} (a clone without shared/)')
    return SHARED_DATA


@pytest.fixture()
def work_dir(tmp_path):
    """Return a fresh directory for state files and the like."""
    return tmp_path
