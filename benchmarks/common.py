"""Shared helpers of the benchmark scripts: machine/version records, data, timing, JSON.

Every result file written by :func:`write_result` carries the machine (CPU model, cores,
memory, load average before and after), the versions (python, torch, onnxruntime,
avalanche when importable, the package's git commit) and the process-wide malloc setting,
so numbers from this noisy shared machine can be judged later. Compare numbers as ratios
taken in the same run.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / 'benchmarks' / 'results'
DATA = REPO.parent / 'shared' / 'data'
COIL_IMAGES = DATA / 'coil100' / 'images'
COIL_NIC = DATA / 'coil100' / 'NIC_coil'
CLUTTER_IMAGES = DATA / 'coil100_clutter'
CLUTTER_NIC = DATA / 'coil100_clutter' / 'NIC'

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from ros2_latent_replay.core.host_info import cpu_int8_flags, cpu_model  # noqa: E402


def _default_cut() -> str:
    from ros2_latent_replay.core.config import LearnerConfig
    return LearnerConfig().latent_layer


#: The product's default cut (``LearnerConfig().latent_layer``), so benchmarks follow it.
DEFAULT_CUT = _default_cut()

SCENARIOS = {
    'nic_coil': (COIL_NIC, COIL_IMAGES),
    'clutter': (CLUTTER_NIC, CLUTTER_IMAGES),
}


def memory_total_bytes() -> int:
    """Return MemTotal from /proc/meminfo in bytes (0 when unknown)."""
    try:
        with open('/proc/meminfo', encoding='utf-8') as handle:
            for line in handle:
                if line.startswith('MemTotal:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def git_commit() -> str:
    """Return the package's git commit (with '+dirty' when the tree has changes)."""
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                               cwd=REPO, capture_output=True, text=True,
                               timeout=20).stdout.strip()
        return commit + ('+dirty' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def versions() -> Dict[str, str]:
    """Versions of python, numpy, torch, onnxruntime, avalanche (when importable)."""
    out = {'python': platform.python_version(), 'numpy': np.__version__}
    for module in ('torch', 'torchvision', 'onnxruntime', 'timm', 'avalanche'):
        if module in sys.modules or module in ('torch', 'onnxruntime'):
            try:
                mod = __import__(module)
                out[module] = getattr(mod, '__version__', 'unknown')
            except Exception:  # noqa: B902 - a missing optional peer is just recorded
                out[module] = 'not installed'
    out['package_commit'] = git_commit()
    return out


def machine() -> Dict[str, Any]:
    """CPU model, core count, memory, current load average and the threads in use."""
    info = {'cpu_model': cpu_model(), 'cpu_int8_flags': cpu_int8_flags(),
            'cores': os.cpu_count(),
            'memory_bytes': memory_total_bytes(), 'platform': platform.platform(),
            'load_average': list(os.getloadavg())}
    try:
        import torch
        info['torch_threads'] = torch.get_num_threads()
    except ImportError:
        pass
    info['malloc_env'] = {k: os.environ[k] for k in ('MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_',
                                                     'LD_PRELOAD') if k in os.environ}
    return info


class Recorder:
    """Collects a benchmark's context: machine and load before/after, versions, settings."""

    def __init__(self, name: str, settings: Optional[Dict[str, Any]] = None):
        """Start recording benchmark ``name`` (load average taken now)."""
        self.name = name
        self.settings = dict(settings or {})
        self.machine_before = machine()
        self.started = time.time()

    def result(self, **payload: Any) -> Dict[str, Any]:
        """Return the full record: context plus ``payload``."""
        return {
            'benchmark': self.name,
            'date_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
            'wall_seconds': round(time.time() - self.started, 2),
            'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
            'machine': self.machine_before,
            'load_average_after': list(os.getloadavg()),
            'versions': versions(),
            'malloc_tuned_process_wide': malloc_tuned(),
            'settings': self.settings,
            **payload,
        }

    def write(self, filename: str, **payload: Any) -> Path:
        """Write the record as JSON under benchmarks/results/ and return the path."""
        return write_json(RESULTS / filename, self.result(**payload))


def write_json(path: Path, data: Dict[str, Any]) -> Path:
    """Write ``data`` atomically as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    with open(tmp, 'w', encoding='utf-8') as handle:
        json.dump(data, handle, indent=1, default=_json_default)
        handle.write('\n')
    os.replace(tmp, path)
    print(f'wrote {path}', flush=True)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f'not JSON serialisable: {type(value).__name__}')


def malloc_tuned() -> bool:
    """Return True when the core's glibc malloc tuning was applied in this process."""
    try:
        from ros2_latent_replay.core import malloc_tuning
        return bool(malloc_tuning._applied)
    except ImportError:
        return False


def tune_malloc_now() -> bool:
    """Apply the core's process-wide malloc tuning now, so peers in this process share it."""
    from ros2_latent_replay.core.malloc_tuning import tune_malloc
    return tune_malloc()


def summary(values: Sequence[float]) -> Dict[str, float]:
    """Return n, mean, std, min, median, p99, max of ``values`` (seconds or anything)."""
    vals = [float(v) for v in values]
    if not vals:
        return {'n': 0}
    arr = np.asarray(vals)
    return {'n': len(vals), 'mean': float(arr.mean()),
            'std': float(arr.std(ddof=1)) if len(vals) > 1 else 0.0,
            'min': float(arr.min()), 'p50': float(np.percentile(arr, 50)),
            'p90': float(np.percentile(arr, 90)), 'p99': float(np.percentile(arr, 99)),
            'max': float(arr.max())}


def median(values: Sequence[float]) -> float:
    """Return the median of ``values``."""
    return float(statistics.median(values))


def load_frames(scenario: str, run: int = 0, count: int = 300, offset: int = 0,
                test: bool = False) -> (np.ndarray, np.ndarray):
    """Return ``count`` real training (or test) frames and labels of a scenario, in order."""
    from ros2_latent_replay.core.scenario import read_scenario
    directory, images = SCENARIOS[scenario]
    scen = read_scenario(directory / f'run{run}', images)
    entries = scen.test if test else [e for batch in scen.batches for e in batch]
    entries = entries[offset:offset + count]
    frames = scen.load_images(entries)
    labels = np.asarray([label for _, label in entries], dtype=np.int64)
    return np.asarray(frames), labels


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads (and interop to 1) explicitly."""
    import torch
    torch.set_num_threads(int(threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def parse_common(parser) -> None:
    """Add the flags every benchmark script takes."""
    parser.add_argument('--quick', action='store_true', help='smaller run for a smoke check')
    parser.add_argument('--threads', type=int, default=2, help='torch/ORT threads (explicit)')
    parser.add_argument('--out', default=None, help='result JSON file name (default: per script)')


def rss_bytes(pid: Optional[int] = None) -> int:
    """Resident set size of ``pid`` (default: this process) in bytes."""
    path = f'/proc/{pid or "self"}/status'
    try:
        with open(path, encoding='utf-8') as handle:
            for line in handle:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def thread_cpu_seconds(pid: Optional[int] = None) -> Dict[str, float]:
    """CPU seconds (user + system) per thread name of ``pid``, threads of one name summed.

    The process's first thread is reported as ``main`` (in a ROS node: the thread that spins
    the executor). Read from ``/proc/PID/task/*/stat``; threads that ended are not counted,
    so take the difference of two readings only over a window in which the process keeps
    its threads.
    """
    tick = os.sysconf('SC_CLK_TCK')
    main = str(pid or os.getpid())
    base = f'/proc/{main}/task'
    out: Dict[str, float] = {}
    try:
        tasks = os.listdir(base)
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f'{base}/{task}/stat', encoding='utf-8') as handle:
                text = handle.read()
        except OSError:
            continue
        name = 'main' if task == main else text[text.index('(') + 1:text.rindex(')')]
        fields = text[text.rindex(')') + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        out[name] = out.get(name, 0.0) + seconds
    return out


def cpu_delta(before: Dict[str, float], after: Dict[str, float]) -> Dict[str, float]:
    """Per-thread-name CPU seconds spent between two :func:`thread_cpu_seconds` readings."""
    return {name: round(after[name] - before.get(name, 0.0), 3)
            for name in sorted(after) if after[name] - before.get(name, 0.0) > 0}


def peak_rss_bytes(pid: Optional[int] = None) -> int:
    """Peak resident set size (VmHWM) of ``pid`` in bytes."""
    path = f'/proc/{pid or "self"}/status'
    try:
        with open(path, encoding='utf-8') as handle:
            for line in handle:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def table(rows: List[List[Any]], header: List[str]) -> str:
    """Render a Markdown table."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        lines.append('| ' + ' | '.join(str(c) for c in row) + ' |')
    return '\n'.join(lines)
