"""Removal of middleware leftovers in /dev/shm: unmapped files go, mapped or old ones stay."""

import mmap
import os
import subprocess
import sys
import time

import pytest

from ros2_latent_replay.shm_leftovers import SHM_DIR, mapped_files, remove_unused

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir() or not os.path.isdir('/proc'),
                                reason='needs /dev/shm and /proc (Linux)')

HOLD = '''import mmap, sys
with open(sys.argv[1], 'r+b') as handle:
    view = mmap.mmap(handle.fileno(), 4096)
    print('mapped', flush=True)
    sys.stdin.read()
'''


def _make(name, age=0.0):
    path = SHM_DIR / name
    path.write_bytes(b'\0' * 4096)
    if age:
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
    return path


def test_only_unmapped_recent_files_are_removed():
    """Unmapped: removed; mapped by another process, or older than ``since``: kept."""
    tag = f'ros2lr_test_{os.getpid()}'
    since = time.time() - 1.0
    stale = _make(f'fastdds_{tag}_stale')
    lock = _make(f'fastdds_{tag}_stale_el')
    held = _make(f'fastdds_{tag}_held')
    old = _make(f'fastdds_{tag}_old', age=3600)
    wait = _make(f'lttng-ust-wait-{tag}')
    holder = subprocess.Popen([sys.executable, '-c', HOLD, str(held)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'mapped'
        assert str(held) in mapped_files()
        assert str(held) not in mapped_files(ignore_pids=[holder.pid])
        removed = remove_unused(since=since)
        assert {stale.name, lock.name, wait.name} <= set(removed)
        assert not stale.exists() and not lock.exists() and not wait.exists()
        assert held.exists() and old.exists()
        assert held.name not in removed and old.name not in removed
        assert old.name in remove_unused(since=since, extra=[old.name])
    finally:
        holder.stdin.close()
        holder.wait(10)
        for path in (stale, lock, held, old, wait):
            path.unlink(missing_ok=True)


def test_a_process_may_drop_lttng_files_it_maps_itself():
    """``ignore_pids`` lets the caller, about to exit, remove LTTng files it still maps."""
    wait = _make(f'lttng-ust-wait-ros2lr_test_{os.getpid()}_self')
    with open(wait, 'r+b') as handle:
        view = mmap.mmap(handle.fileno(), 4096)
        try:
            assert wait.name not in remove_unused(since=time.time())
            assert wait.name in remove_unused(since=time.time(), ignore_pids=[os.getpid()])
            view[0] = 1                  # the mapping stays valid after the unlink
        finally:
            view.close()
    assert not wait.exists()
