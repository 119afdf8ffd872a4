"""Shared-memory files that ROS 2 middleware leaves in /dev/shm, and their removal.

Two kinds outlive the processes that made them:

- Fast DDS transport files (``fastdds_*``, ``sem.fastdds_*``): a process killed with
  SIGKILL cannot remove its segments and port files;
- LTTng-UST's ``lttng-ust-wait-*``: the tracing library that the rclpy wheels load creates
  them at start and, by design, never removes them.

A file is removed only when no live process maps it (read from ``/proc/*/maps``), so a
running ROS program on the machine is never disturbed. Run ``python -m
ros2_latent_replay.shm_leftovers [--since EPOCH]`` after a run (the demo script does).
No ROS import here.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Set

SHM_DIR = Path('/dev/shm')
FASTDDS_PREFIXES = ('fastdds_', 'sem.fastdds_')
LTTNG_PREFIX = 'lttng-ust-wait-'


def mapped_files(ignore_pids: Iterable[int] = ()) -> Set[str]:
    """Paths under /dev/shm that a live process (other than ``ignore_pids``) maps."""
    ignore = {str(pid) for pid in ignore_pids}
    mapped = set()
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit() or entry.name in ignore:
            continue
        try:
            maps = (entry / 'maps').read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            where = line.find(' /dev/shm/')
            if where >= 0:
                mapped.add(line[where + 1:].removesuffix(' (deleted)'))
    return mapped


def remove_unused(since: Optional[float] = None, ignore_pids: Iterable[int] = (),
                  extra: Sequence[str] = ()) -> List[str]:
    """Remove unmapped leftovers; return the names removed.

    Fast DDS files count only when written at or after ``since`` (all when None), plus any
    name in ``extra`` (e.g. the port files of a domain id only this run used). A lock file
    ``*_el`` goes with the file it locks. LTTng wait files count at any age, and processes
    in ``ignore_pids`` do not count as their users (the caller itself, about to exit: an
    unlinked file stays valid for a process that maps it).
    """
    if not SHM_DIR.is_dir():
        return []
    mapped = mapped_files()
    ignore_pids = list(ignore_pids)
    lttng_mapped = mapped_files(ignore_pids) if ignore_pids else mapped
    removed = []
    for path in SHM_DIR.iterdir():
        name = path.name
        if name.startswith(FASTDDS_PREFIXES):
            try:
                fresh = since is None or path.stat().st_mtime >= since
            except FileNotFoundError:
                continue
            unused = str(path).removesuffix('_el') not in mapped
            if not (name in extra or (fresh and unused)):
                continue
        elif not (name.startswith(LTTNG_PREFIX) and str(path) not in lttng_mapped):
            continue
        try:
            path.unlink()
            removed.append(name)
        except OSError:
            pass
    return sorted(removed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: remove the leftovers, print what was removed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--since', type=float, default=None,
                        help='only Fast DDS files written at or after this time (epoch s)')
    args = parser.parse_args(argv)
    removed = remove_unused(args.since, ignore_pids=[os.getpid()])
    if removed:
        print(f'removed {len(removed)} shared-memory leftover(s) from {SHM_DIR}: '
              f'{", ".join(removed[:8])}{" ..." if len(removed) > 8 else ""}', file=sys.stderr)
    return 0


__all__ = ['mapped_files', 'remove_unused', 'main']

if __name__ == '__main__':
    sys.exit(main())
