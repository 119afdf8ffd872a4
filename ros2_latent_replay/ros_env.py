"""An isolated ROS 2 environment for tests and the demo: localhost discovery, own domain id.

DDS discovery must stay on this machine and concurrent runs must not hear each other, so
every test session and demo run takes a ROS domain id no other run on this machine holds
(an exclusive ``flock`` on a per-id lock file, released when the process exits) and sets
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, a temporary ``ROS_LOG_DIR`` and
``RMW_IMPLEMENTATION=rmw_fastrtps_cpp``. No ROS import here: this runs before rclpy loads.
"""

import fcntl
import os
import random
import tempfile
from typing import IO, Dict, MutableMapping, Optional, Tuple

#: domain ids handed out; 0 (the default every ROS user is on) is never used
DOMAIN_RANGE = (11, 99)
_held = []   # lock files kept open for the life of the process


def lease_domain_id(lock_dir: Optional[str] = None,
                    rng: Optional[random.Random] = None) -> Tuple[int, IO[bytes]]:
    """Return a ROS domain id nobody else on this machine holds, and its open lock file.

    The id stays reserved while the returned file is open (at the latest, until the
    process exits). Raises RuntimeError when every id in :data:`DOMAIN_RANGE` is taken.
    """
    lock_dir = lock_dir or tempfile.gettempdir()
    ids = list(range(DOMAIN_RANGE[0], DOMAIN_RANGE[1] + 1))
    (rng or random.Random()).shuffle(ids)
    for domain_id in ids:
        handle = open(os.path.join(lock_dir, f'ros2lr_domain_{domain_id}.lock'), 'ab')
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return domain_id, handle
    raise RuntimeError(f'every ROS domain id in {DOMAIN_RANGE} is held by another run')


def isolate(environ: Optional[MutableMapping[str, str]] = None,
            log_dir: Optional[str] = None) -> Dict[str, str]:
    """Set the isolation variables in ``environ`` (default ``os.environ``); return them.

    A domain id already leased by this process is reused; ``log_dir`` defaults to a new
    temporary directory.
    """
    environ = os.environ if environ is None else environ
    if not _held:
        _held.append(lease_domain_id())
    domain_id = _held[0][0]
    values = {
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'ROS_DOMAIN_ID': str(domain_id),
        'ROS_LOG_DIR': log_dir or tempfile.mkdtemp(prefix='ros2lr_log_'),
        'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp',
    }
    environ.update(values)
    environ.pop('ROS_LOCALHOST_ONLY', None)
    return values
